/* HTTP/1.1 request parsing for the control API: line by line over what has arrived, so a request
 * that is wrong from its first line is refused at once instead of after HTTP_MAX_HEADER bytes. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "vmm/api/http.h"

static ssize_t fail(struct http_error *e, int status, int line, const char *msg)
{
	e->status = status;
	if (line > 0)
		snprintf(e->reason, sizeof(e->reason), "header line %d: %s", line, msg);
	else
		snprintf(e->reason, sizeof(e->reason), "%s", msg);
	return -1;
}
#define FAIL(status, msg) fail(e, status, 0, msg)
#define FAIL_LINE(status, msg, line) fail(e, status, line, msg)

static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* Case-insensitive compare of [s, s+n) with a NUL-terminated word. */
static bool eq_word(const char *s, size_t n, const char *word)
{
	return strlen(word) == n && strncasecmp(s, word, n) == 0;
}

static ssize_t parse_request_line(const char *s, size_t n, struct http_request *req, struct http_error *e)
{
	size_t i = 0;
	while (i < n && s[i] >= 'A' && s[i] <= 'Z')
		i++;
	if (i == 0 || i >= sizeof(req->method) || i >= n || s[i] != ' ')
		return FAIL(400, "request line: expected \"METHOD /path HTTP/1.1\" (method in capitals, one space)");
	memcpy(req->method, s, i);
	req->method[i] = 0;
	size_t p = ++i;
	while (i < n && s[i] != ' ')
		i++;
	size_t plen = i - p;
	if (plen == 0 || s[p] != '/')
		return FAIL(400, "request line: the target must be a path starting with /");
	if (plen >= sizeof(req->path))
		return FAIL(414, "request line: path longer than 255 bytes");
	if (memchr(s + p, '?', plen) || memchr(s + p, '#', plen))
		return FAIL(400, "request line: query strings and fragments are not supported");
	memcpy(req->path, s + p, plen);
	req->path[plen] = 0;
	if (i >= n || n - i - 1 != 8 || memcmp(s + i + 1, "HTTP/", 5) != 0 || s[i + 7] != '.')
		return FAIL(400, "request line: expected \"HTTP/1.1\" after the path (one space)");
	const char *v = s + i + 1;
	if (v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9')
		return FAIL(400, "request line: malformed HTTP version");
	if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
		return FAIL(505, "only HTTP/1.0 and HTTP/1.1 are supported");
	req->minor = v[7] - '0';
	req->keep_alive = req->minor == 1;
	return 0;
}

static ssize_t parse_header(const char *s, size_t n, int line, struct http_request *req, bool *have_len,
			    struct http_error *e)
{
	if (is_ows(s[0]))
		return FAIL_LINE(400, "folded (obs-fold) header lines are not supported", line);
	size_t i = 0;
	while (i < n && is_tchar((unsigned char)s[i]))
		i++;
	if (i == 0 || i >= n || s[i] != ':')
		return FAIL_LINE(400, "expected \"Name: value\"", line);
	const char *name = s;
	size_t nlen = i++;
	while (i < n && is_ows(s[i]))
		i++;
	size_t end = n;
	while (end > i && is_ows(s[end - 1]))
		end--;
	const char *val = s + i;
	size_t vlen = end - i;

	if (eq_word(name, nlen, "Content-Length")) {
		if (vlen == 0)
			return FAIL_LINE(400, "Content-Length: expected a number", line);
		size_t v = 0;
		for (size_t k = 0; k < vlen; k++) {
			if (val[k] < '0' || val[k] > '9')
				return FAIL_LINE(400, "Content-Length: expected a number", line);
			if (v > HTTP_MAX_BODY)
				break; /* already too big: no overflow */
			v = v * 10 + (size_t)(val[k] - '0');
		}
		if (v > HTTP_MAX_BODY)
			return FAIL(413, "body larger than 65536 bytes");
		if (*have_len && v != req->content_length)
			return FAIL_LINE(400, "Content-Length given twice with different values", line);
		*have_len = true;
		req->content_length = v;
	} else if (eq_word(name, nlen, "Transfer-Encoding")) {
		return FAIL(501, "Transfer-Encoding is not supported: send the body with a Content-Length");
	} else if (eq_word(name, nlen, "Connection")) {
		/* a comma-separated token list */
		size_t k = 0;
		while (k < vlen) {
			while (k < vlen && (val[k] == ',' || is_ows(val[k])))
				k++;
			size_t t = k;
			while (k < vlen && val[k] != ',' && !is_ows(val[k]))
				k++;
			if (eq_word(val + t, k - t, "close"))
				req->keep_alive = false;
			else if (eq_word(val + t, k - t, "keep-alive") && req->minor == 0)
				req->keep_alive = true;
		}
	} else if (eq_word(name, nlen, "Expect")) {
		if (!eq_word(val, vlen, "100-continue"))
			return FAIL(417, "Expect: only 100-continue is supported");
		req->expect_continue = true;
	}
	return 0;
}

ssize_t http_parse_request(const char *buf, size_t len, struct http_request *req, struct http_error *e)
{
	memset(req, 0, sizeof(*req));
	e->status = 0;
	e->reason[0] = 0;
	bool have_len = false;
	size_t pos = 0;
	int line = 0; /* 0 = request line */

	/* RFC 9112 2.2: ignore empty lines before the request line (stray CRLF after a body). */
	while (pos + 1 < len && buf[pos] == '\r' && buf[pos + 1] == '\n' && pos < HTTP_MAX_HEADER)
		pos += 2;
	size_t start = pos;
	for (;;) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t avail_end = nl ? (size_t)(nl - buf) : len;
		/* Every byte seen so far must be printable ASCII or HT; CR only right before LF. */
		for (size_t k = pos; k < avail_end; k++) {
			unsigned char c = (unsigned char)buf[k];
			if (c == '\r') {
				bool before_lf = nl && k + 1 == avail_end;
				bool last = !nl && k + 1 == len; /* the LF may still come */
				if (!before_lf && !last)
					return FAIL(400, "CR not followed by LF");
				continue;
			}
			if ((c < 0x20 && c != '\t') || c >= 0x7f)
				return FAIL(400, "control or non-ASCII byte in the request head");
		}
		if (avail_end - start + 1 > HTTP_MAX_HEADER)
			return FAIL(431, "request line and headers larger than 8192 bytes");
		if (!nl)
			return 0;
		size_t lend = avail_end;
		if (lend == pos || buf[lend - 1] != '\r')
			return FAIL(400, "lines must end in CRLF (bare LF)");
		lend--;
		const char *s = buf + pos;
		size_t n = lend - pos;
		pos = avail_end + 1;
		if (line == 0) {
			if (parse_request_line(s, n, req, e) < 0)
				return -1;
		} else if (n == 0) {
			break;
		} else {
			if (line > HTTP_MAX_HEADERS)
				return FAIL(431, "more than 32 header lines");
			if (parse_header(s, n, line, req, &have_len, e) < 0)
				return -1;
		}
		line++;
	}
	req->headers_done = true;
	if (len - pos < req->content_length)
		return 0;
	req->body = buf + pos;
	req->body_len = req->content_length;
	return (ssize_t)(pos + req->content_length);
}

const char *http_status_text(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	}
	return "Unknown";
}

int http_format_head(char *out, size_t cap, int status, size_t body_len, bool keep_alive)
{
	int n;
	if (status < 200)
		n = snprintf(out, cap, "HTTP/1.1 %d %s\r\n\r\n", status, http_status_text(status));
	else if (status == 204)
		n = snprintf(out, cap, "HTTP/1.1 204 No Content\r\nServer: cella-vmm\r\n%s\r\n",
			     keep_alive ? "" : "Connection: close\r\n");
	else
		n = snprintf(out, cap,
			     "HTTP/1.1 %d %s\r\nServer: cella-vmm\r\nContent-Type: application/json\r\n"
			     "Content-Length: %zu\r\n%s\r\n",
			     status, http_status_text(status), body_len, keep_alive ? "" : "Connection: close\r\n");
	return n < 0 || (size_t)n >= cap ? -1 : n;
}
