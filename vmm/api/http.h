/* A small, strict HTTP/1.1 request parser and response writer for the control API (no I/O here, so
 * it is unit-tested and fuzzed on its own).
 *
 * Accepted: "METHOD SP /origin-path SP HTTP/1.x CRLF", header lines "Name: value CRLF" (tokens as in
 * RFC 9110), an empty line, and a body framed by Content-Length. Refused with a status and a one-line
 * reason: bare LF line ends, folded header lines, a query or fragment, Transfer-Encoding (chunked
 * bodies), conflicting Content-Length, headers over HTTP_MAX_HEADER bytes, bodies over
 * HTTP_MAX_BODY bytes, any control byte. Content-Type is not looked at (curl -d says form data): the
 * body must parse as JSON whatever it claims. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define HTTP_MAX_HEADER 8192   /* request line + headers + blank line */
#define HTTP_MAX_BODY 65536
#define HTTP_MAX_PATH 256
#define HTTP_MAX_HEADERS 32

struct http_request {
	char method[16];
	char path[HTTP_MAX_PATH];
	int minor;             /* HTTP/1.<minor>: 0 or 1 */
	bool keep_alive;       /* 1.1 default, or "Connection: keep-alive" on 1.0; "close" turns it off */
	bool expect_continue;  /* "Expect: 100-continue" */
	bool headers_done;     /* set even when the body is still incomplete (for 100 Continue) */
	size_t content_length;
	const char *body;      /* points into the parsed buffer; body_len bytes, not NUL-terminated */
	size_t body_len;
};

struct http_error {
	int status;       /* 400, 413, 414, 417, 431, 501, 505 */
	char reason[160]; /* "header line 3: no colon" */
};

/* Parses one request from the start of buf. Returns the number of bytes it spans (> 0) when complete,
 * 0 when more bytes are needed (req->headers_done tells whether the headers are in), or -1 with e
 * filled. After an error the connection's framing is lost: reply and close. */
ssize_t http_parse_request(const char *buf, size_t len, struct http_request *req, struct http_error *e);

const char *http_status_text(int status);

/* Formats a response head into out (cap bytes): status line, Server, Content-Type when body_len > 0
 * or the status is not 204, Content-Length (except for 1xx and 204), "Connection: close" when
 * !keep_alive, blank line. Returns its length, or -1 if it does not fit. */
int http_format_head(char *out, size_t cap, int status, size_t body_len, bool keep_alive);
