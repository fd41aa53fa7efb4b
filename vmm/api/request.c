/* Control API requests: routing, strict JSON bodies (unknown fields are errors naming the field), and
 * the state machine. Nothing here touches a VM. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/json.h"
#include "base/util.h"
#include "vmm/api/api.h"

const char *api_state_name(enum api_state s)
{
	switch (s) {
	case API_STATE_NOT_STARTED: return "Not started";
	case API_STATE_RUNNING: return "Running";
	case API_STATE_PAUSED: return "Paused";
	case API_STATE_ENDED: return "Ended";
	}
	return "unknown";
}

const char *api_kind_name(enum api_kind k)
{
	static const char *const names[API_KIND_COUNT] = {
		[API_GET_INFO] = "GET /",
		[API_GET_METRICS] = "GET /metrics",
		[API_PUT_BOOT_SOURCE] = "PUT /boot-source",
		[API_PUT_MACHINE_CONFIG] = "PUT /machine-config",
		[API_PUT_DRIVE] = "PUT /drives",
		[API_PUT_NET] = "PUT /network-interfaces",
		[API_PUT_VSOCK] = "PUT /vsock",
		[API_INSTANCE_START] = "InstanceStart",
		[API_SEND_CTRL_ALT_DEL] = "SendCtrlAltDel",
		[API_PAUSE] = "pausing (PATCH /vm Paused)",
		[API_RESUME] = "resuming (PATCH /vm Resumed)",
		[API_SNAPSHOT_CREATE] = "PUT /snapshot/create",
		[API_SNAPSHOT_LOAD] = "PUT /snapshot/load",
		[API_PATCH_DRIVE] = "PATCH /drives",
		[API_PATCH_NET] = "PATCH /network-interfaces",
	};
	return (unsigned)k < API_KIND_COUNT ? names[k] : "unknown request";
}

void api_action_free(struct api_action *a)
{
	free(a->boot.kernel);
	free(a->boot.initrd);
	free(a->boot.cmdline);
	free(a->drive.path);
	free(a->net.host_dev);
	free(a->net.guest_mac);
	free(a->vsock.uds_path);
	free(a->snap.state_path);
	free(a->snap.mem_path);
	for (unsigned i = 0; i < a->snap.ndrives; i++) {
		free(a->snap.drives[i].id);
		free(a->snap.drives[i].value);
	}
	for (unsigned i = 0; i < a->snap.nnets; i++) {
		free(a->snap.nets[i].id);
		free(a->snap.nets[i].value);
	}
	free(a->snap.vsock_uds);
	memset(a, 0, sizeof(*a));
}

char *api_fault_json(const char *msg)
{
	_cleanup_json_ json_t *j = json_pack("{s:s}", "fault_message", msg);
	return j ? cj_dump(j, JSON_COMPACT) : NULL;
}

/* --- routing --- */

enum { M_GET = 1, M_PUT = 2, M_PATCH = 4 };

static int method_bit(const char *m)
{
	return !strcmp(m, "GET") ? M_GET : !strcmp(m, "PUT") ? M_PUT : !strcmp(m, "PATCH") ? M_PATCH : 0;
}

/* An id in a path: 1..63 of [A-Za-z0-9_-] (Firecracker's ids are the same alphabet). */
static bool valid_id(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n >= API_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '_' || s[i] == '-'))
			return false;
	return true;
}

/* Which resource, with the methods it accepts; sets a->kind for the given method. 0 or 404/405. */
static int route(const char *path, int m, struct api_action *a, struct cella_err *err)
{
	static const struct {
		const char *path; /* exact, or a prefix ending in '/' followed by an id */
		int get, put, patch; /* kinds + 1, 0 = not allowed */
	} table[] = {
		{ "/", API_GET_INFO + 1, 0, 0 },
		{ "/metrics", API_GET_METRICS + 1, 0, 0 },
		{ "/boot-source", 0, API_PUT_BOOT_SOURCE + 1, 0 },
		{ "/machine-config", 0, API_PUT_MACHINE_CONFIG + 1, 0 },
		{ "/drives/", 0, API_PUT_DRIVE + 1, API_PATCH_DRIVE + 1 },
		{ "/network-interfaces/", 0, API_PUT_NET + 1, API_PATCH_NET + 1 },
		{ "/vsock", 0, API_PUT_VSOCK + 1, 0 },
		{ "/actions", 0, API_INSTANCE_START + 1, 0 }, /* the body picks the action */
		{ "/vm", 0, 0, API_PAUSE + 1 },               /* the body picks pause or resume */
		{ "/snapshot/create", 0, API_SNAPSHOT_CREATE + 1, 0 },
		{ "/snapshot/load", 0, API_SNAPSHOT_LOAD + 1, 0 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(table); i++) {
		size_t n = strlen(table[i].path);
		bool with_id = n > 1 && table[i].path[n - 1] == '/';
		if (with_id ? strncmp(path, table[i].path, n) != 0 : strcmp(path, table[i].path) != 0)
			continue;
		if (with_id && !valid_id(path + n))
			return cella_err_set(err, ENOENT, "%s: expected %s{id} with an id of 1..63 letters, digits, _ or -",
					     path, table[i].path), 404;
		int kind = m == M_GET ? table[i].get : m == M_PUT ? table[i].put : m == M_PATCH ? table[i].patch : 0;
		if (!kind) {
			const char *sep = "";
			char allow[32] = "";
			if (table[i].get)
				strcat(allow, "GET"), sep = ", ";
			if (table[i].put)
				strcat(allow, sep), strcat(allow, "PUT"), sep = ", ";
			if (table[i].patch)
				strcat(allow, sep), strcat(allow, "PATCH");
			return cella_err_set(err, EINVAL, "%s: method not allowed (allowed: %s)", path, allow), 405;
		}
		a->kind = (enum api_kind)(kind - 1);
		if (with_id)
			snprintf(a->id, sizeof(a->id), "%s", path + n);
		return 0;
	}
	return cella_err_set(err, ENOENT, "%s: no such resource", path), 404;
}

/* --- bodies --- */

/* A required string must not be empty either. */
static int dup_string(const json_t *j, const char *path, const char *key, bool required, char **out,
		      struct cella_err *err)
{
	int r = cj_get_strdup(j, path, key, required, out, err);
	if (r > 0 && required && !**out)
		return cella_err_set(err, EINVAL, "%s.%s: must not be empty", path, key);
	return r;
}

static int parse_bucket(const json_t *rl, const char *path, const char *key, struct api_bucket *b,
			struct cella_err *err)
{
	static const char *const known[] = { "size", "one_time_burst", "refill_time", NULL };
	json_t *j;
	char sub[CJ_PATH_MAX];
	int r = cj_get_object(rl, path, key, false, &j, err);
	if (r <= 0)
		return r;
	cj_subpath(sub, sizeof(sub), path, key);
	if ((r = cj_reject_unknown(j, sub, known, err)) < 0 ||
	    (r = cj_get_uint64(j, sub, "size", true, &b->size, err)) < 0 ||
	    (r = cj_get_uint64(j, sub, "one_time_burst", false, &b->one_time_burst, err)) < 0 ||
	    (r = cj_get_uint64(j, sub, "refill_time", true, &b->refill_time_ms, err)) < 0)
		return r;
	if (b->size && !b->refill_time_ms)
		return cella_err_set(err, EINVAL, "%s.refill_time: must be positive when size is", sub);
	b->set = true;
	return 1;
}

static int parse_limiter(const json_t *obj, const char *path, const char *key, struct api_rate_limiter *rl,
			 struct cella_err *err)
{
	static const char *const known[] = { "bandwidth", "ops", NULL };
	json_t *j;
	char sub[CJ_PATH_MAX];
	int r = cj_get_object(obj, path, key, false, &j, err);
	if (r <= 0)
		return r;
	cj_subpath(sub, sizeof(sub), path, key);
	if ((r = cj_reject_unknown(j, sub, known, err)) < 0 ||
	    (r = parse_bucket(j, sub, "bandwidth", &rl->bandwidth, err)) < 0 ||
	    (r = parse_bucket(j, sub, "ops", &rl->ops, err)) < 0)
		return r;
	rl->set = true;
	return 1;
}

/* The body's drive_id / iface_id must repeat the path's. */
static int match_id(const json_t *j, const char *what, const char *key, const char *id, struct cella_err *err)
{
	const char *s;
	int r = cj_get_string(j, what, key, true, &s, err);
	if (r < 0)
		return r;
	if (strcmp(s, id))
		return cella_err_set(err, EINVAL, "%s.%s: \"%s\" does not match the path's id \"%s\"", what, key, s, id);
	return 0;
}

/* "aa:bb:cc:dd:ee:ff" in hex, either case. */
static bool valid_mac(const char *s)
{
	if (strlen(s) != 17)
		return false;
	for (int i = 0; i < 17; i++) {
		char c = s[i];
		bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
		if (i % 3 == 2 ? c != ':' : !hex)
			return false;
	}
	return true;
}

/* A snapshot-load override list: [{id_key: ..., value_key: ...}, ...], each id once. */
static int parse_overrides(const json_t *j, const char *key, const char *id_key, const char *value_key,
			   struct api_override *out, unsigned *n, struct cella_err *err)
{
	char w[64];
	snprintf(w, sizeof(w), "snapshot-load.%s", key);
	json_t *list;
	int r = cj_get_array(j, "snapshot-load", key, false, &list, err);
	if (r <= 0)
		return r;
	if (json_array_size(list) > API_MAX_OVERRIDES)
		return cella_err_set(err, E2BIG, "%s: %zu entries, at most %d", w, json_array_size(list), API_MAX_OVERRIDES);
	const char *const known[] = { id_key, value_key, NULL };
	size_t i;
	json_t *o;
	json_array_foreach(list, i, o) {
		char wi[80];
		snprintf(wi, sizeof(wi), "%s[%zu]", w, i);
		struct api_override *ov = &out[*n];
		(*n)++; /* its strings are the action's from here (api_action_free) */
		if ((r = cj_expect_object(o, wi, err)) < 0 || (r = cj_reject_unknown(o, wi, known, err)) < 0 ||
		    (r = dup_string(o, wi, id_key, true, &ov->id, err)) < 0 ||
		    (r = dup_string(o, wi, value_key, true, &ov->value, err)) < 0)
			return r;
		for (unsigned k = 0; k + 1 < *n; k++)
			if (!strcmp(out[k].id, ov->id))
				return cella_err_set(err, EINVAL, "%s: %s \"%s\" is overridden twice", w, id_key, ov->id);
	}
	return 0;
}

static int parse_body(const json_t *j, struct api_action *a, struct cella_err *err)
{
	int r;
	const char *s;
	switch (a->kind) {
	case API_PUT_BOOT_SOURCE: {
		static const char *const known[] = { "kernel_image_path", "boot_args", "initrd_path", NULL };
		const char *w = "boot-source";
		if ((r = cj_reject_unknown(j, w, known, err)) < 0 ||
		    (r = dup_string(j, w, "kernel_image_path", true, &a->boot.kernel, err)) < 0 ||
		    (r = dup_string(j, w, "boot_args", false, &a->boot.cmdline, err)) < 0 ||
		    (r = dup_string(j, w, "initrd_path", false, &a->boot.initrd, err)) < 0)
			return r;
		return 0;
	}
	case API_PUT_MACHINE_CONFIG: {
		static const char *const known[] = { "vcpu_count", "mem_size_mib", "smt", NULL };
		const char *w = "machine-config";
		bool smt = false;
		if ((r = cj_reject_unknown(j, w, known, err)) < 0 ||
		    (r = cj_get_uint32(j, w, "vcpu_count", true, &a->machine.cpus, err)) < 0 ||
		    (r = cj_get_uint64(j, w, "mem_size_mib", true, &a->machine.mem_mib, err)) < 0 ||
		    (r = cj_get_bool(j, w, "smt", false, &smt, err)) < 0)
			return r;
		if (smt)
			return cella_err_set(err, EINVAL, "machine-config.smt: simultaneous multithreading is not supported");
		return 0;
	}
	case API_PUT_DRIVE: {
		static const char *const known[] = { "drive_id", "path_on_host", "is_root_device", "is_read_only",
						     "rate_limiter", NULL };
		const char *w = "drive";
		if ((r = cj_reject_unknown(j, w, known, err)) < 0 || (r = match_id(j, w, "drive_id", a->id, err)) < 0 ||
		    (r = dup_string(j, w, "path_on_host", true, &a->drive.path, err)) < 0 ||
		    (r = cj_get_bool(j, w, "is_root_device", false, &a->drive.root, err)) < 0 ||
		    (r = cj_get_bool(j, w, "is_read_only", false, &a->drive.read_only, err)) < 0 ||
		    (r = parse_limiter(j, w, "rate_limiter", &a->drive.rl, err)) < 0)
			return r;
		return 0;
	}
	case API_PATCH_DRIVE: {
		static const char *const known[] = { "drive_id", "rate_limiter", NULL };
		const char *w = "drive";
		if ((r = cj_reject_unknown(j, w, known, err)) < 0 || (r = match_id(j, w, "drive_id", a->id, err)) < 0 ||
		    (r = parse_limiter(j, w, "rate_limiter", &a->drive.rl, err)) < 0)
			return r;
		if (!a->drive.rl.set)
			return cella_err_set(err, EINVAL, "drive.rate_limiter: required (the only field PATCH changes)");
		return 0;
	}
	case API_PUT_NET:
	case API_PATCH_NET: {
		static const char *const known_put[] = { "iface_id", "host_dev_name", "guest_mac", "rx_rate_limiter",
							 "tx_rate_limiter", NULL };
		static const char *const known_patch[] = { "iface_id", "rx_rate_limiter", "tx_rate_limiter", NULL };
		const char *w = "network-interface";
		bool put = a->kind == API_PUT_NET;
		if ((r = cj_reject_unknown(j, w, put ? known_put : known_patch, err)) < 0 ||
		    (r = match_id(j, w, "iface_id", a->id, err)) < 0 ||
		    (put && (r = dup_string(j, w, "host_dev_name", true, &a->net.host_dev, err)) < 0) ||
		    (put && (r = dup_string(j, w, "guest_mac", false, &a->net.guest_mac, err)) < 0) ||
		    (r = parse_limiter(j, w, "rx_rate_limiter", &a->net.rx, err)) < 0 ||
		    (r = parse_limiter(j, w, "tx_rate_limiter", &a->net.tx, err)) < 0)
			return r;
		if (a->net.guest_mac && !valid_mac(a->net.guest_mac))
			return cella_err_set(err, EINVAL, "%s.guest_mac: expected aa:bb:cc:dd:ee:ff, got \"%s\"", w,
					     a->net.guest_mac);
		if (!put && !a->net.rx.set && !a->net.tx.set)
			return cella_err_set(err, EINVAL, "%s: rx_rate_limiter or tx_rate_limiter required", w);
		return 0;
	}
	case API_PUT_VSOCK: {
		static const char *const known[] = { "guest_cid", "uds_path", "vsock_id", NULL };
		const char *w = "vsock";
		if ((r = cj_reject_unknown(j, w, known, err)) < 0 ||
		    (r = cj_get_uint32(j, w, "guest_cid", true, &a->vsock.guest_cid, err)) < 0 ||
		    (r = dup_string(j, w, "uds_path", true, &a->vsock.uds_path, err)) < 0 ||
		    (r = cj_get_string(j, w, "vsock_id", false, &s, err)) < 0)
			return r;
		if (a->vsock.guest_cid < 3)
			return cella_err_set(err, EINVAL, "vsock.guest_cid: %u is reserved (0..2); use 3 or more",
					     a->vsock.guest_cid);
		return 0;
	}
	case API_INSTANCE_START: { /* PUT /actions */
		static const char *const known[] = { "action_type", NULL };
		if ((r = cj_reject_unknown(j, "actions", known, err)) < 0 ||
		    (r = cj_get_string(j, "actions", "action_type", true, &s, err)) < 0)
			return r;
		if (!strcmp(s, "InstanceStart"))
			a->kind = API_INSTANCE_START;
		else if (!strcmp(s, "SendCtrlAltDel"))
			a->kind = API_SEND_CTRL_ALT_DEL;
		else
			return cella_err_set(err, EINVAL,
					     "actions.action_type: \"%s\" is not InstanceStart or SendCtrlAltDel", s);
		return 0;
	}
	case API_PAUSE: { /* PATCH /vm */
		static const char *const known[] = { "state", NULL };
		if ((r = cj_reject_unknown(j, "vm", known, err)) < 0 ||
		    (r = cj_get_string(j, "vm", "state", true, &s, err)) < 0)
			return r;
		if (!strcmp(s, "Paused"))
			a->kind = API_PAUSE;
		else if (!strcmp(s, "Resumed"))
			a->kind = API_RESUME;
		else
			return cella_err_set(err, EINVAL, "vm.state: \"%s\" is not Paused or Resumed", s);
		return 0;
	}
	case API_SNAPSHOT_CREATE: {
		static const char *const known[] = { "snapshot_path", "mem_file_path", "snapshot_type", NULL };
		const char *w = "snapshot-create";
		if ((r = cj_reject_unknown(j, w, known, err)) < 0 ||
		    (r = dup_string(j, w, "snapshot_path", true, &a->snap.state_path, err)) < 0 ||
		    (r = dup_string(j, w, "mem_file_path", true, &a->snap.mem_path, err)) < 0 ||
		    (r = cj_get_string(j, w, "snapshot_type", false, &s, err)) < 0)
			return r;
		if (r > 0 && strcmp(s, "Full"))
			return cella_err_set(err, EINVAL, "%s.snapshot_type: \"%s\": only Full snapshots are supported", w, s);
		return 0;
	}
	case API_SNAPSHOT_LOAD: {
		static const char *const known[] = { "snapshot_path", "mem_file_path", "mem_backend", "resume_vm",
						     "enable_diff_snapshots", "network_overrides", "vsock_override",
						     "drive_overrides", NULL };
		static const char *const known_vsock[] = { "uds_path", NULL };
		static const char *const known_backend[] = { "backend_type", "backend_path", NULL };
		const char *w = "snapshot-load";
		json_t *backend;
		bool diff = false;
		if ((r = cj_reject_unknown(j, w, known, err)) < 0 ||
		    (r = dup_string(j, w, "snapshot_path", true, &a->snap.state_path, err)) < 0 ||
		    (r = dup_string(j, w, "mem_file_path", false, &a->snap.mem_path, err)) < 0 ||
		    (r = cj_get_bool(j, w, "resume_vm", false, &a->snap.resume, err)) < 0 ||
		    (r = cj_get_bool(j, w, "enable_diff_snapshots", false, &diff, err)) < 0 ||
		    (r = cj_get_object(j, w, "mem_backend", false, &backend, err)) < 0)
			return r;
		if (diff)
			return cella_err_set(err, EINVAL, "%s.enable_diff_snapshots: diff snapshots are not supported", w);
		if (r > 0) {
			const char *bw = "snapshot-load.mem_backend";
			if (a->snap.mem_path)
				return cella_err_set(err, EINVAL, "%s: give mem_file_path or mem_backend, not both", w);
			if ((r = cj_reject_unknown(backend, bw, known_backend, err)) < 0 ||
			    (r = cj_get_string(backend, bw, "backend_type", true, &s, err)) < 0)
				return r;
			if (strcmp(s, "File"))
				return cella_err_set(err, EINVAL, "%s.backend_type: \"%s\": only File is supported", bw, s);
			if ((r = dup_string(backend, bw, "backend_path", true, &a->snap.mem_path, err)) < 0)
				return r;
		}
		if (!a->snap.mem_path)
			return cella_err_set(err, EINVAL, "%s: mem_backend (or mem_file_path) required", w);
		json_t *vsock;
		if ((r = parse_overrides(j, "drive_overrides", "drive_id", "path_on_host", a->snap.drives,
					 &a->snap.ndrives, err)) < 0 ||
		    (r = parse_overrides(j, "network_overrides", "iface_id", "host_dev_name", a->snap.nets,
					 &a->snap.nnets, err)) < 0 ||
		    (r = cj_get_object(j, w, "vsock_override", false, &vsock, err)) < 0)
			return r;
		if (r > 0) {
			const char *vw = "snapshot-load.vsock_override";
			if ((r = cj_reject_unknown(vsock, vw, known_vsock, err)) < 0 ||
			    (r = dup_string(vsock, vw, "uds_path", true, &a->snap.vsock_uds, err)) < 0)
				return r;
		}
		return 0;
	}
	default:
		return 0;
	}
}

int api_parse(const struct http_request *req, struct api_action *a, struct cella_err *err)
{
	memset(a, 0, sizeof(*a));
	int m = method_bit(req->method);
	int status = route(req->path, m, a, err);
	if (status) {
		if (status == 405 && !m)
			cella_err_set(err, EINVAL, "%s: method %s not supported (GET, PUT or PATCH)", req->path,
				      req->method);
		return status;
	}
	if (m == M_GET)
		return 0; /* a body on GET is ignored */
	if (req->body_len == 0)
		return cella_err_set(err, EINVAL, "%s %s: a JSON body is required", req->method, req->path), 400;
	_cleanup_json_ json_t *j = NULL;
	if (cj_load_string(req->body, req->body_len, "body", &j, err) < 0)
		return 400;
	if (cj_expect_object(j, "body", err) < 0 || parse_body(j, a, err) < 0) {
		api_action_free(a);
		return 400;
	}
	return 0;
}

/* --- the state machine --- */

#define S(x) (1u << API_STATE_##x)
static const unsigned allowed_in[API_KIND_COUNT] = {
	[API_GET_INFO] = S(NOT_STARTED) | S(RUNNING) | S(PAUSED) | S(ENDED),
	[API_GET_METRICS] = S(NOT_STARTED) | S(RUNNING) | S(PAUSED) | S(ENDED),
	/* configuration is fixed once the VM exists */
	[API_PUT_BOOT_SOURCE] = S(NOT_STARTED),
	[API_PUT_MACHINE_CONFIG] = S(NOT_STARTED),
	[API_PUT_DRIVE] = S(NOT_STARTED),
	[API_PUT_NET] = S(NOT_STARTED),
	[API_PUT_VSOCK] = S(NOT_STARTED),
	[API_INSTANCE_START] = S(NOT_STARTED),
	[API_SNAPSHOT_LOAD] = S(NOT_STARTED),
	/* keys reach a guest that runs */
	[API_SEND_CTRL_ALT_DEL] = S(RUNNING),
	/* pausing a paused VM (or resuming a running one) is a no-op, as in Firecracker */
	[API_PAUSE] = S(RUNNING) | S(PAUSED),
	[API_RESUME] = S(RUNNING) | S(PAUSED),
	/* a consistent snapshot needs stopped vCPUs */
	[API_SNAPSHOT_CREATE] = S(PAUSED),
	[API_PATCH_DRIVE] = S(RUNNING) | S(PAUSED),
	[API_PATCH_NET] = S(RUNNING) | S(PAUSED),
};
#undef S

int api_check_state(enum api_state s, const struct api_action *a, struct cella_err *err)
{
	if ((unsigned)a->kind < API_KIND_COUNT && (allowed_in[a->kind] & (1u << s)))
		return 0;
	if (s == API_STATE_ENDED)
		return cella_err_set(err, EBUSY, "%s: the VM has ended", api_kind_name(a->kind)), 409;
	const char *hint = "";
	if (s == API_STATE_NOT_STARTED)
		hint = " (start it with PUT /actions InstanceStart)";
	else if (a->kind == API_SNAPSHOT_CREATE)
		hint = " (pause it first with PATCH /vm Paused)";
	else if (a->kind == API_INSTANCE_START)
		hint = " (a VM starts once)";
	else if (allowed_in[a->kind] == (1u << API_STATE_NOT_STARTED))
		hint = " (configuration is fixed once the VM started)";
	return cella_err_set(err, EBUSY, "%s is not allowed while the VM is %s%s", api_kind_name(a->kind),
			     api_state_name(s), hint), 409;
}
