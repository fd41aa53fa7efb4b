/* Control API: the HTTP parser (framing, limits, every refusal), request routing and JSON bodies,
 * and the state machine. */
#include <stdio.h>
#include <string.h>

#include "base/err.h"
#include "tap.h"
#include "vmm/api/api.h"
#include "vmm/api/http.h"

static ssize_t parse(const char *s, struct http_request *req, struct http_error *e)
{
	return http_parse_request(s, strlen(s), req, e);
}

/* The status an input gets (0 = incomplete, 1 = complete). */
static int status_of(const char *s)
{
	struct http_request req;
	struct http_error e;
	ssize_t n = parse(s, &req, &e);
	return n < 0 ? e.status : n == 0 ? 0 : 1;
}

static void test_http(void)
{
	struct http_request req;
	struct http_error e;
	const char *get = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
	ssize_t n = parse(get, &req, &e);
	TAP_OK(n == (ssize_t)strlen(get), "GET / parses whole (%zd)", n);
	TAP_STREQ(req.method, "GET", "method");
	TAP_STREQ(req.path, "/", "path");
	TAP_OK(req.keep_alive && req.minor == 1, "HTTP/1.1 keeps the connection by default");

	const char *put = "PUT /vm HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloGET";
	n = parse(put, &req, &e);
	TAP_OK(n == (ssize_t)strlen(put) - 3, "PUT spans head + Content-Length body, not the pipelined rest");
	TAP_OK(req.body_len == 5 && !memcmp(req.body, "hello", 5), "body");
	TAP_OK(!req.keep_alive, "Connection: close");

	TAP_OK(parse("PUT /vm HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel", &req, &e) == 0 && req.headers_done,
	       "partial body: need more, headers done");
	TAP_OK(parse("PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", &req, &e) == 0 &&
		       req.expect_continue && req.headers_done, "Expect: 100-continue seen before the body");
	TAP_OK(status_of("GET / HT") == 0, "partial request line: need more");
	TAP_OK(status_of("GET / HTTP/1.1\r") == 0, "CR at the end: need more");
	TAP_OK(status_of("GET / HTTP/1.0\r\n\r\n") == 1, "HTTP/1.0 accepted");
	parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &req, &e);
	TAP_OK(req.keep_alive, "HTTP/1.0 keep-alive on request");
	TAP_OK(status_of("\r\n\r\nGET / HTTP/1.1\r\n\r\n") == 1, "leading empty lines ignored");

	struct {
		const char *in;
		int status;
		const char *what;
	} bad[] = {
		{ "get / HTTP/1.1\r\n\r\n", 400, "lower-case method" },
		{ "GET  / HTTP/1.1\r\n\r\n", 400, "two spaces" },
		{ "GET x HTTP/1.1\r\n\r\n", 400, "target not a path" },
		{ "GET /?a=1 HTTP/1.1\r\n\r\n", 400, "query string" },
		{ "GET / HTTP/2.0\r\n\r\n", 505, "HTTP/2.0" },
		{ "GET / HTTP/1.1 \r\n\r\n", 400, "trailing space after the version" },
		{ "GET / FTP/1.1\r\n\r\n", 400, "not HTTP" },
		{ "GET / HTTP/1.1\n\n", 400, "bare LF" },
		{ "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "lone CR" },
		{ "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "space before the colon" },
		{ "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "folded header" },
		{ "GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400, "header without colon" },
		{ "GET / HTTP/1.1\r\nX: \x01\r\n\r\n", 400, "control byte" },
		{ "GET / HTTP/1.1\r\nX: \xc3\xa9\r\n\r\n", 400, "non-ASCII byte" },
		{ "GET /\x00 HTTP/1.1\r\n\r\n", 400, "NUL in the path" },
		{ "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "negative Content-Length" },
		{ "PUT / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400, "junk Content-Length" },
		{ "PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "conflicting lengths" },
		{ "PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413, "body over 64 KiB" },
		{ "PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413, "huge length" },
		{ "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "chunked" },
		{ "PUT / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417, "unknown Expect" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* the NUL case needs its real length */
		size_t len = strlen(bad[i].in);
		if (strstr(bad[i].what, "NUL"))
			len = sizeof("GET /\x00 HTTP/1.1\r\n\r\n") - 1;
		n = http_parse_request(bad[i].in, len, &req, &e);
		TAP_OK(n == -1 && e.status == bad[i].status && e.reason[0], "%s -> %d (%s)", bad[i].what, bad[i].status,
		       e.reason);
	}
	TAP_OK(status_of("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx") == 1,
	       "repeated equal Content-Length is fine");

	/* limits */
	char big[HTTP_MAX_HEADER + 64];
	int off = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX: ");
	memset(big + off, 'a', sizeof(big) - (size_t)off - 1);
	big[sizeof(big) - 1] = 0;
	TAP_OK(status_of(big) == 431, "header section over 8 KiB without an end -> 431");
	char path[400] = "GET /";
	memset(path + 5, 'a', 300);
	strcpy(path + 305, " HTTP/1.1\r\n\r\n");
	TAP_OK(status_of(path) == 414, "long path -> 414");
	char many[4096] = "GET / HTTP/1.1\r\n";
	for (int i = 0; i < 40; i++)
		strcat(many, "X-A: b\r\n");
	strcat(many, "\r\n");
	TAP_OK(status_of(many) == 431, "more than 32 headers -> 431");

	char head[256];
	int h = http_format_head(head, sizeof(head), 204, 0, true);
	TAP_OK(h > 0 && strstr(head, "HTTP/1.1 204 No Content\r\n") && !strstr(head, "Content-Length"),
	       "204 has no Content-Length");
	h = http_format_head(head, sizeof(head), 409, 12, false);
	TAP_OK(h > 0 && strstr(head, "Content-Length: 12\r\n") && strstr(head, "Connection: close\r\n") &&
		       !strcmp(head + h - 4, "\r\n\r\n"), "409 with length and close");
	TAP_OK(http_format_head(head, 10, 200, 1, true) == -1, "head that does not fit -> -1");
}

/* Routes + parses a request given as method, path and body; returns the status (0 = ok). */
static int api(const char *method, const char *path, const char *body, struct api_action *a, struct cella_err *err)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s %s HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s", method, path,
		 body ? strlen(body) : 0, body ? body : "");
	struct http_request req;
	struct http_error e;
	if (http_parse_request(buf, strlen(buf), &req, &e) <= 0)
		return -1;
	cella_err_clear(err);
	return api_parse(&req, a, err);
}

static void test_requests(void)
{
	struct api_action a;
	struct cella_err err = { 0 };
	TAP_OK(api("GET", "/", NULL, &a, &err) == 0 && a.kind == API_GET_INFO, "GET /");
	TAP_OK(api("GET", "/metrics", NULL, &a, &err) == 0 && a.kind == API_GET_METRICS, "GET /metrics");
	TAP_OK(api("GET", "/nope", NULL, &a, &err) == 404, "unknown path -> 404");
	TAP_OK(api("DELETE", "/", NULL, &a, &err) == 405, "DELETE / -> 405");
	TAP_OK(api("PUT", "/", "{}", &a, &err) == 405 && strstr(err.msg, "allowed: GET"), "PUT / -> 405: %s", err.msg);
	TAP_OK(api("PUT", "/actions", NULL, &a, &err) == 400 && strstr(err.msg, "JSON body is required"),
	       "PUT without a body -> 400");
	TAP_OK(api("PUT", "/actions", "{\"action_type\": ", &a, &err) == 400 && strstr(err.msg, "body:"),
	       "truncated JSON -> 400: %s", err.msg);
	TAP_OK(api("PUT", "/actions", "[1]", &a, &err) == 400, "array body -> 400: %s", err.msg);
	TAP_OK(api("PUT", "/actions", "{\"action_type\":\"InstanceStart\"}", &a, &err) == 0 &&
		       a.kind == API_INSTANCE_START, "InstanceStart");
	TAP_OK(api("PUT", "/actions", "{\"action_type\":\"SendCtrlAltDel\"}", &a, &err) == 0 &&
		       a.kind == API_SEND_CTRL_ALT_DEL, "SendCtrlAltDel");
	TAP_OK(api("PUT", "/actions", "{\"action_type\":\"Explode\"}", &a, &err) == 400, "unknown action -> 400");
	TAP_OK(api("PUT", "/actions", "{\"action_type\":\"InstanceStart\",\"x\":1}", &a, &err) == 400 &&
		       strstr(err.msg, "actions.x: unknown field"), "unknown field named: %s", err.msg);
	TAP_OK(api("PUT", "/actions", "{\"action_type\":\"InstanceStart\",\"action_type\":\"SendCtrlAltDel\"}", &a,
		   &err) == 400, "duplicate key -> 400");
	TAP_OK(api("PATCH", "/vm", "{\"state\":\"Paused\"}", &a, &err) == 0 && a.kind == API_PAUSE, "Paused");
	TAP_OK(api("PATCH", "/vm", "{\"state\":\"Resumed\"}", &a, &err) == 0 && a.kind == API_RESUME, "Resumed");
	TAP_OK(api("PATCH", "/vm", "{\"state\":\"Sleeping\"}", &a, &err) == 400, "bad vm state -> 400");

	TAP_OK(api("PUT", "/boot-source", "{\"kernel_image_path\":\"/k\",\"boot_args\":\"console=ttyS0\"}", &a, &err) ==
		       0 && !strcmp(a.boot.kernel, "/k") && !strcmp(a.boot.cmdline, "console=ttyS0") && !a.boot.initrd,
	       "boot-source");
	api_action_free(&a);
	TAP_OK(api("PUT", "/boot-source", "{\"boot_args\":\"x\"}", &a, &err) == 400 &&
		       strstr(err.msg, "kernel_image_path: required"), "boot-source without kernel: %s", err.msg);
	TAP_OK(api("PUT", "/machine-config", "{\"vcpu_count\":2,\"mem_size_mib\":64}", &a, &err) == 0 &&
		       a.machine.cpus == 2 && a.machine.mem_mib == 64, "machine-config");
	TAP_OK(api("PUT", "/machine-config", "{\"vcpu_count\":\"2\",\"mem_size_mib\":64}", &a, &err) == 400 &&
		       strstr(err.msg, "vcpu_count"), "vcpu_count as a string: %s", err.msg);
	TAP_OK(api("PUT", "/machine-config", "{\"vcpu_count\":-1,\"mem_size_mib\":64}", &a, &err) == 400,
	       "negative vcpu_count");
	TAP_OK(api("PUT", "/machine-config", "{\"vcpu_count\":1,\"mem_size_mib\":64,\"smt\":true}", &a, &err) == 400,
	       "smt true refused");

	TAP_OK(api("PUT", "/drives/rootfs", "{\"drive_id\":\"rootfs\",\"path_on_host\":\"/d\",\"is_root_device\":true,"
		   "\"is_read_only\":false,\"rate_limiter\":{\"bandwidth\":{\"size\":1000,\"refill_time\":100}}}", &a,
		   &err) == 0 && a.kind == API_PUT_DRIVE && !strcmp(a.id, "rootfs") && a.drive.root &&
		       a.drive.rl.bandwidth.set && a.drive.rl.bandwidth.size == 1000 && !a.drive.rl.ops.set,
	       "PUT /drives/rootfs with a rate limiter");
	api_action_free(&a);
	TAP_OK(api("PUT", "/drives/rootfs", "{\"drive_id\":\"other\",\"path_on_host\":\"/d\"}", &a, &err) == 400 &&
		       strstr(err.msg, "does not match"), "drive_id differs from the path: %s", err.msg);
	TAP_OK(api("PUT", "/drives/a.b", "{}", &a, &err) == 404, "bad id in the path -> 404");
	TAP_OK(api("PUT", "/drives/", "{}", &a, &err) == 404, "empty id -> 404");
	TAP_OK(api("PATCH", "/drives/d", "{\"drive_id\":\"d\",\"rate_limiter\":{\"ops\":{\"size\":10,\"refill_time\":0}}}",
		   &a, &err) == 400 && strstr(err.msg, "refill_time"), "size without refill_time: %s", err.msg);
	TAP_OK(api("PATCH", "/drives/d", "{\"drive_id\":\"d\",\"rate_limiter\":{\"ops\":{\"size\":10,\"refill_time\":1,"
		   "\"burst\":1}}}", &a, &err) == 400 && strstr(err.msg, "rate_limiter.ops.burst: unknown field"),
	       "unknown bucket field: %s", err.msg);
	TAP_OK(api("PATCH", "/drives/d", "{\"drive_id\":\"d\"}", &a, &err) == 400, "PATCH drive needs a limiter");
	TAP_OK(api("PUT", "/network-interfaces/eth0", "{\"iface_id\":\"eth0\",\"host_dev_name\":\"tap0\","
		   "\"guest_mac\":\"06:00:AC:10:00:02\"}", &a, &err) == 0 && !strcmp(a.net.host_dev, "tap0"),
	       "PUT /network-interfaces/eth0");
	api_action_free(&a);
	TAP_OK(api("PUT", "/network-interfaces/eth0", "{\"iface_id\":\"eth0\",\"host_dev_name\":\"tap0\","
		   "\"guest_mac\":\"06:00:AC:10:00\"}", &a, &err) == 400 && strstr(err.msg, "guest_mac"), "bad MAC");
	TAP_OK(api("PATCH", "/network-interfaces/eth0", "{\"iface_id\":\"eth0\",\"tx_rate_limiter\":{\"bandwidth\":"
		   "{\"size\":1,\"refill_time\":1}}}", &a, &err) == 0 && a.kind == API_PATCH_NET && a.net.tx.set,
	       "PATCH /network-interfaces/eth0");
	TAP_OK(api("PUT", "/vsock", "{\"guest_cid\":3,\"uds_path\":\"/tmp/v.sock\"}", &a, &err) == 0 &&
		       a.vsock.guest_cid == 3, "PUT /vsock");
	api_action_free(&a);
	TAP_OK(api("PUT", "/vsock", "{\"guest_cid\":2,\"uds_path\":\"/tmp/v.sock\"}", &a, &err) == 400, "cid 2 reserved");
	TAP_OK(api("PUT", "/snapshot/create", "{\"snapshot_path\":\"/s\",\"mem_file_path\":\"/m\",\"snapshot_type\":"
		   "\"Full\"}", &a, &err) == 0 && !strcmp(a.snap.mem_path, "/m"), "snapshot/create");
	api_action_free(&a);
	TAP_OK(api("PUT", "/snapshot/create", "{\"snapshot_path\":\"/s\",\"mem_file_path\":\"/m\",\"snapshot_type\":"
		   "\"Diff\"}", &a, &err) == 400, "Diff snapshots refused");
	TAP_OK(api("PUT", "/snapshot/load", "{\"snapshot_path\":\"/s\",\"mem_backend\":{\"backend_type\":\"File\","
		   "\"backend_path\":\"/m\"},\"resume_vm\":true}", &a, &err) == 0 && !strcmp(a.snap.mem_path, "/m") &&
		       a.snap.resume, "snapshot/load with mem_backend");
	api_action_free(&a);
	TAP_OK(api("PUT", "/snapshot/load", "{\"snapshot_path\":\"/s\"}", &a, &err) == 400 &&
		       strstr(err.msg, "mem_backend"), "snapshot/load without memory: %s", err.msg);
	TAP_OK(api("PUT", "/snapshot/load", "{\"snapshot_path\":\"/s\",\"mem_file_path\":\"/m\",\"mem_backend\":"
		   "{\"backend_type\":\"File\",\"backend_path\":\"/m\"}}", &a, &err) == 400, "both memory forms refused");

	/* restore overrides: Firecracker's network_overrides / vsock_override, cella's drive_overrides */
#define LOAD "{\"snapshot_path\":\"/s\",\"mem_file_path\":\"/m\","
	TAP_OK(api("PUT", "/snapshot/load", LOAD "\"network_overrides\":[{\"iface_id\":\"eth0\",\"host_dev_name\":"
		   "\"tap7\"},{\"iface_id\":\"eth1\",\"host_dev_name\":\"tap8\"}],\"vsock_override\":{\"uds_path\":"
		   "\"/tmp/c2.sock\"},\"drive_overrides\":[{\"drive_id\":\"root\",\"path_on_host\":\"/d2.img\"}]}", &a,
		   &err) == 0, "snapshot/load with overrides: %s", err.msg);
	TAP_OK(a.snap.nnets == 2 && !strcmp(a.snap.nets[0].id, "eth0") && !strcmp(a.snap.nets[0].value, "tap7") &&
		       !strcmp(a.snap.nets[1].id, "eth1") && !strcmp(a.snap.nets[1].value, "tap8"), "network_overrides");
	TAP_OK(a.snap.ndrives == 1 && !strcmp(a.snap.drives[0].id, "root") && !strcmp(a.snap.drives[0].value, "/d2.img"),
	       "drive_overrides");
	TAP_OK(a.snap.vsock_uds && !strcmp(a.snap.vsock_uds, "/tmp/c2.sock"), "vsock_override");
	api_action_free(&a);
	TAP_OK(api("PUT", "/snapshot/load", LOAD "\"network_overrides\":[]}", &a, &err) == 0 && a.snap.nnets == 0 &&
		       !a.snap.vsock_uds, "empty override list");
	api_action_free(&a);
	struct {
		const char *body, *want;
	} bad_ov[] = {
		{ LOAD "\"network_overrides\":[{\"iface_id\":\"eth0\",\"host_dev_name\":\"t\",\"guest_mac\":\"x\"}]}",
		  "guest_mac" },
		{ LOAD "\"network_overrides\":[{\"iface_id\":\"eth0\"}]}", "host_dev_name" },
		{ LOAD "\"network_overrides\":[{\"iface_id\":\"eth0\",\"host_dev_name\":\"\"}]}", "empty" },
		{ LOAD "\"network_overrides\":{\"iface_id\":\"eth0\",\"host_dev_name\":\"t\"}}", "network_overrides" },
		{ LOAD "\"network_overrides\":[\"eth0\"]}", "network_overrides[0]" },
		{ LOAD "\"network_overrides\":[{\"iface_id\":\"e\",\"host_dev_name\":\"t\"},{\"iface_id\":\"e\","
		       "\"host_dev_name\":\"u\"}]}", "twice" },
		{ LOAD "\"vsock_override\":{\"uds_path\":\"/x\",\"guest_cid\":3}}", "guest_cid" },
		{ LOAD "\"vsock_override\":{}}", "uds_path" },
		{ LOAD "\"vsock_override\":{\"uds_path\":\"\"}}", "vsock_override.uds_path: must not be empty" },
		{ LOAD "\"vsock_override\":\"/x\"}", "vsock_override" },
		{ LOAD "\"drive_overrides\":[{\"drive_id\":\"d\",\"path_on_host\":\"/x\",\"is_read_only\":true}]}",
		  "is_read_only" },
		{ LOAD "\"drive_overrides\":[{\"path_on_host\":\"/x\"}]}", "drive_id" },
		{ LOAD "\"disk_overrides\":[]}", "disk_overrides" },
		{ LOAD "\"drive_overrides\":[{\"drive_id\":\"1\",\"path_on_host\":\"/x\"},{\"drive_id\":\"2\",\"path_on_host\":"
		       "\"/x\"},{\"drive_id\":\"3\",\"path_on_host\":\"/x\"},{\"drive_id\":\"4\",\"path_on_host\":\"/x\"},"
		       "{\"drive_id\":\"5\",\"path_on_host\":\"/x\"},{\"drive_id\":\"6\",\"path_on_host\":\"/x\"},"
		       "{\"drive_id\":\"7\",\"path_on_host\":\"/x\"},{\"drive_id\":\"8\",\"path_on_host\":\"/x\"},"
		       "{\"drive_id\":\"9\",\"path_on_host\":\"/x\"}]}", "at most" },
	};
#undef LOAD
	for (size_t i = 0; i < sizeof(bad_ov) / sizeof(bad_ov[0]); i++) {
		cella_err_clear(&err);
		int st = api("PUT", "/snapshot/load", bad_ov[i].body, &a, &err);
		TAP_OK(st == 400 && strstr(err.msg, bad_ov[i].want), "bad override %zu refused naming %s: %d %s", i,
		       bad_ov[i].want, st, err.msg);
		api_action_free(&a);
	}

	char *f = api_fault_json("say \"hi\"");
	TAP_STREQ(f, "{\"fault_message\":\"say \\\"hi\\\"\"}", "fault JSON escapes");
	free(f);
}

static void test_state_machine(void)
{
	struct cella_err err = { 0 };
	struct api_action a = { 0 };
	struct {
		enum api_kind kind;
		unsigned allowed; /* bit per state: not started, running, paused, ended */
	} table[] = {
		{ API_GET_INFO, 0xf },         { API_GET_METRICS, 0xf },       { API_PUT_BOOT_SOURCE, 0x1 },
		{ API_PUT_MACHINE_CONFIG, 0x1 }, { API_PUT_DRIVE, 0x1 },       { API_PUT_NET, 0x1 },
		{ API_PUT_VSOCK, 0x1 },        { API_INSTANCE_START, 0x1 },    { API_SNAPSHOT_LOAD, 0x1 },
		{ API_SEND_CTRL_ALT_DEL, 0x2 }, { API_PAUSE, 0x6 },            { API_RESUME, 0x6 },
		{ API_SNAPSHOT_CREATE, 0x4 },  { API_PATCH_DRIVE, 0x6 },       { API_PATCH_NET, 0x6 },
	};
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		for (int s = 0; s < 4; s++) {
			a.kind = table[i].kind;
			cella_err_clear(&err);
			int st = api_check_state((enum api_state)s, &a, &err);
			bool want = table[i].allowed & (1u << s);
			TAP_OK(want ? st == 0 : st == 409 && err.msg[0], "%s in %s: %s", api_kind_name(a.kind),
			       api_state_name((enum api_state)s), want ? "allowed" : err.msg);
		}
}

int main(void)
{
	test_http();
	test_requests();
	test_state_machine();
	return tap_done();
}
