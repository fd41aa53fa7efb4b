/* libFuzzer target: the control API's request path exactly as the API thread runs it — the HTTP
 * parser over a byte stream holding any number of pipelined requests, fed in two pieces (a split at
 * a fuzzer-chosen point, as recv may deliver it), then routing + the JSON body into a typed action,
 * the state machine in every state, and the reply head. Checks the parser's own promises: a complete
 * request spans no more than the input, its body lies inside it, an error carries a 4xx/5xx. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "vmm/api/api.h"
#include "vmm/api/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_request(const struct http_request *req)
{
	struct cella_err err = { 0 };
	struct api_action a;
	int status = api_parse(req, &a, &err);
	if (status) {
		if (status < 400 || status > 599 || !err.msg[0])
			abort();
		return;
	}
	for (int s = API_STATE_NOT_STARTED; s <= API_STATE_ENDED; s++) {
		cella_err_clear(&err);
		int st = api_check_state((enum api_state)s, &a, &err);
		if (st != 0 && (st != 409 || !err.msg[0]))
			abort();
	}
	char *fault = api_fault_json(err.msg);
	free(fault);
	api_action_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > HTTP_MAX_HEADER + HTTP_MAX_BODY)
		return 0;
	/* byte 0: where the first recv would have ended */
	size_t split = data[0] * (size - 1) / 255;
	const char *buf = (const char *)data + 1;
	size_t len = size - 1;
	struct http_request req;
	struct http_error e;
	ssize_t n = http_parse_request(buf, split, &req, &e);
	if (n > (ssize_t)split)
		abort();
	size_t off = 0;
	while (off < len) {
		n = http_parse_request(buf + off, len - off, &req, &e);
		if (n < 0) {
			if (e.status < 400 || e.status > 599 || !e.reason[0])
				abort();
			break;
		}
		if (n == 0)
			break;
		if ((size_t)n > len - off || req.body_len > (size_t)n ||
		    (req.body_len && (req.body < buf + off || req.body + req.body_len > buf + off + n)))
			abort();
		one_request(&req);
		char head[256];
		if (http_format_head(head, sizeof(head), 200, req.body_len, req.keep_alive) < 0)
			abort();
		off += (size_t)n;
	}
	return 0;
}
