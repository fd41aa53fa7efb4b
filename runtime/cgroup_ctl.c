/* Live operations on an existing instance: update (linux.resources applied again, only what is
 * set) and stats (runc's events.Stats from the v1 or v2 files). */
#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup_internal.h"
#include "runtime/config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------- update ---------- */

static int route(struct cgroup_instance *inst, const char *ctrl, const char *what, struct cg_dir **out,
		 struct cella_err *err)
{
	*out = cg_route(inst, ctrl);
	if (!*out)
		return cella_err_set(err, ENOTSUP, "%s: the %s cgroup controller is not available on this host", what,
				     ctrl);
	return 0;
}

/* Current value of a v2 "max"-style file: -1 for "max", else the number; fallback if unreadable. */
static long long v2_current(const struct cg_dir *d, const char *file, long long fallback)
{
	_cleanup_free_ char *s = NULL;
	if (cg_read(d, file, &s, NULL) < 0)
		return fallback;
	if (!strncmp(s, "max", 3))
		return -1;
	return strtoll(s, NULL, 10);
}

int cgroup_update(struct cgroup_instance *inst, const struct oci_resources *res, struct cella_err *err)
{
	int r = cg_validate_resources(res, err);
	if (r < 0)
		return r;
	struct oci_resources x = *res; /* shallow: only scalars are adjusted */
	struct cg_dir *d;
	const struct oci_memory *m = &x.memory;
	if (x.has_memory && (m->limit.set || m->reservation.set || m->swap.set)) {
		if ((r = route(inst, "memory", "memory", &d, err)) < 0)
			return r;
		if (d->v2) {
			/* memory.swap.max is derived from memory+swap and the limit: use the current limit
			 * when only swap changes. */
			if (m->swap.set && !m->limit.set) {
				long long cur = v2_current(d, "memory.max", -1);
				x.memory.limit.set = true;
				x.memory.limit.v = cur;
				r = cg_v2_memory(d, &x, err);
			} else {
				r = cg_v2_memory(d, &x, err);
			}
		} else {
			r = cg_v1_memory(d, &x, err);
		}
		if (r < 0)
			return r;
	}
	const struct oci_cpu *c = &x.cpu;
	if (x.has_cpu && (c->shares.set || c->quota.set || c->period.set || c->realtime_period.set ||
			  c->realtime_runtime.set || c->idle.set)) {
		if ((r = route(inst, "cpu", "cpu", &d, err)) < 0)
			return r;
		if (d->v2) {
			/* cpu.max holds both: keep the half that is not being changed. */
			_cleanup_free_ char *cur = NULL;
			if ((c->quota.set != c->period.set) && cg_read(d, "cpu.max", &cur, NULL) == 0) {
				char q[32] = "max";
				unsigned long long per = 100000;
				sscanf(cur, "%31s %llu", q, &per);
				if (!c->period.set) {
					x.cpu.period.set = true;
					x.cpu.period.v = per;
				} else {
					x.cpu.quota.set = true;
					x.cpu.quota.v = strcmp(q, "max") ? strtoll(q, NULL, 10) : -1;
				}
			}
			r = cg_v2_cpu(d, &x, err);
		} else {
			r = cg_v1_cpu(d, &x, err);
		}
		if (r < 0)
			return r;
	}
	if (x.has_cpu && ((c->cpus && *c->cpus) || (c->mems && *c->mems))) {
		if ((r = route(inst, "cpuset", "cpuset", &d, err)) < 0 || (r = cg_cpuset(d, &x, err)) < 0)
			return r;
	}
	if (x.has_pids && x.pids.limit.set) {
		if ((r = route(inst, "pids", "pids", &d, err)) < 0 || (r = cg_pids(d, &x, err)) < 0)
			return r;
	}
	if (x.has_blkio && (x.blkio.weight.set || x.blkio.n_weight_device || x.blkio.n_throttle_read_bps ||
			    x.blkio.n_throttle_write_bps || x.blkio.n_throttle_read_iops ||
			    x.blkio.n_throttle_write_iops)) {
		d = cg_route(inst, "blkio");
		if (!d && (r = route(inst, "io", "blkio", &d, err)) < 0)
			return r;
		if ((r = d->v2 ? cg_v2_io(d, &x, err) : cg_v1_blkio(d, &x, err)) < 0)
			return r;
	}
	if (x.n_unified) {
		d = cg_v2_dir(inst);
		if (!d)
			return cella_err_set(err, ENOTSUP, "unified: cgroup v2 is not available on this host");
		if ((r = cg_v2_unified(d, &x, err)) < 0)
			return r;
	}
	return 0;
}

/* ---------- stats ---------- */

/* A number from a file (first token); "max" gives max_val; missing gives 0. */
static unsigned long long num(const struct cg_dir *d, const char *file, unsigned long long max_val)
{
	_cleanup_free_ char *s = NULL;
	if (!d || cg_read(d, file, &s, NULL) < 0)
		return 0;
	if (!strncmp(s, "max", 3))
		return max_val;
	return strtoull(s, NULL, 10);
}

static bool has(const struct cg_dir *d, const char *file)
{
	return d && cg_has_file(d, file);
}

/* "key value" lines as an object (memory.stat, cpu.stat). */
static json_t *kv_file(const struct cg_dir *d, const char *file)
{
	json_t *o = json_object();
	_cleanup_free_ char *s = NULL;
	if (!d || cg_read(d, file, &s, NULL) < 0)
		return o;
	char *save = NULL;
	for (char *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		char key[128];
		unsigned long long v;
		if (sscanf(l, "%127s %llu", key, &v) == 2)
			json_object_set_new(o, key, json_integer((json_int_t)v));
	}
	return o;
}

static unsigned long long kv_get(json_t *o, const char *key)
{
	return (unsigned long long)json_integer_value(json_object_get(o, key));
}

static json_t *num_list(const struct cg_dir *d, const char *file)
{
	json_t *a = json_array();
	_cleanup_free_ char *s = NULL;
	if (!d || cg_read(d, file, &s, NULL) < 0)
		return a;
	char *save = NULL;
	for (char *t = strtok_r(s, " \n", &save); t; t = strtok_r(NULL, " \n", &save))
		json_array_append_new(a, json_integer((json_int_t)strtoull(t, NULL, 10)));
	return a;
}

#define J(v) json_integer((json_int_t)(v))
/* "max" (unlimited): runc reports MaxUint64; jansson integers are signed 64-bit, so INT64_MAX. */
#define MAXU ((unsigned long long)INT64_MAX)

static json_t *cpu_stats(struct cgroup_instance *inst)
{
	struct cg_dir *d = cg_route(inst, "cpu"), *acct = cg_route(inst, "cpuacct");
	json_t *usage = json_object(), *thr = json_object();
	if (d && d->v2) {
		json_t *st = kv_file(d, "cpu.stat");
		json_object_set_new(usage, "total", J(kv_get(st, "usage_usec") * 1000));
		json_object_set_new(usage, "kernel", J(kv_get(st, "system_usec") * 1000));
		json_object_set_new(usage, "user", J(kv_get(st, "user_usec") * 1000));
		json_object_set_new(thr, "periods", J(kv_get(st, "nr_periods")));
		json_object_set_new(thr, "throttledPeriods", J(kv_get(st, "nr_throttled")));
		json_object_set_new(thr, "throttledTime", J(kv_get(st, "throttled_usec") * 1000));
		json_decref(st);
	} else {
		json_object_set_new(usage, "total", J(num(acct, "cpuacct.usage", 0)));
		json_object_set_new(usage, "percpu", num_list(acct, "cpuacct.usage_percpu"));
		/* cpuacct.stat is in USER_HZ ticks; runc reports nanoseconds. */
		json_t *st = kv_file(acct, "cpuacct.stat");
		long hz = sysconf(_SC_CLK_TCK);
		unsigned long long ns = hz > 0 ? 1000000000ULL / (unsigned long long)hz : 10000000ULL;
		json_object_set_new(usage, "kernel", J(kv_get(st, "system") * ns));
		json_object_set_new(usage, "user", J(kv_get(st, "user") * ns));
		json_decref(st);
		json_t *cs = kv_file(d, "cpu.stat");
		json_object_set_new(thr, "periods", J(kv_get(cs, "nr_periods")));
		json_object_set_new(thr, "throttledPeriods", J(kv_get(cs, "nr_throttled")));
		json_object_set_new(thr, "throttledTime", J(kv_get(cs, "throttled_time")));
		json_decref(cs);
	}
	return json_pack("{s:o, s:o}", "usage", usage, "throttling", thr);
}

static json_t *mem_entry(const struct cg_dir *d, const char *usage, const char *max, const char *failcnt,
			 const char *limit)
{
	return json_pack("{s:o, s:o, s:o, s:o}", "usage", J(num(d, usage, MAXU)), "max",
			 J(max ? num(d, max, MAXU) : 0), "failcnt", J(failcnt ? num(d, failcnt, 0) : 0), "limit",
			 J(num(d, limit, MAXU)));
}

static json_t *memory_stats(struct cgroup_instance *inst)
{
	struct cg_dir *d = cg_route(inst, "memory");
	json_t *o = json_object();
	if (!d)
		return o;
	json_t *raw = kv_file(d, "memory.stat");
	if (d->v2) {
		json_object_set_new(o, "cache", J(kv_get(raw, "file")));
		json_object_set_new(o, "usage", mem_entry(d, "memory.current", has(d, "memory.peak") ? "memory.peak" : NULL,
							  NULL, "memory.max"));
		if (has(d, "memory.swap.current"))
			json_object_set_new(o, "swap", mem_entry(d, "memory.swap.current", NULL, NULL, "memory.swap.max"));
	} else {
		json_object_set_new(o, "cache", J(kv_get(raw, "cache")));
		json_object_set_new(o, "usage", mem_entry(d, "memory.usage_in_bytes", "memory.max_usage_in_bytes",
							  "memory.failcnt", "memory.limit_in_bytes"));
		if (has(d, "memory.memsw.usage_in_bytes"))
			json_object_set_new(o, "swap",
					    mem_entry(d, "memory.memsw.usage_in_bytes", "memory.memsw.max_usage_in_bytes",
						      "memory.memsw.failcnt", "memory.memsw.limit_in_bytes"));
		if (has(d, "memory.kmem.usage_in_bytes"))
			json_object_set_new(o, "kernel",
					    mem_entry(d, "memory.kmem.usage_in_bytes", "memory.kmem.max_usage_in_bytes",
						      "memory.kmem.failcnt", "memory.kmem.limit_in_bytes"));
		if (has(d, "memory.kmem.tcp.usage_in_bytes"))
			json_object_set_new(o, "kernelTCP",
					    mem_entry(d, "memory.kmem.tcp.usage_in_bytes", "memory.kmem.tcp.max_usage_in_bytes",
						      "memory.kmem.tcp.failcnt", "memory.kmem.tcp.limit_in_bytes"));
	}
	json_object_set_new(o, "raw", raw);
	return o;
}

static json_t *pids_stats(struct cgroup_instance *inst)
{
	struct cg_dir *d = cg_route(inst, "pids");
	/* runc: "max" is reported as 0 (no limit). */
	return json_pack("{s:o, s:o}", "current", J(num(d, "pids.current", 0)), "limit", J(num(d, "pids.max", 0)));
}

/* blkio (v1 "MAJ:MIN Op value" lines) or io.stat (v2 "MAJ:MIN rbytes=.. wbytes=.."). */
static json_t *blkio_stats(struct cgroup_instance *inst)
{
	json_t *o = json_object(), *bytes = json_array(), *ios = json_array();
	struct cg_dir *d = cg_route(inst, "blkio");
	_cleanup_free_ char *s = NULL;
	char *save = NULL;
	if (d && !d->v2) {
		const char *f = has(d, "blkio.throttle.io_service_bytes_recursive") ? "blkio.throttle.io_service_bytes_recursive"
										   : "blkio.throttle.io_service_bytes";
		for (int pass = 0; pass < 2; pass++) {
			free(s);
			s = NULL;
			if (pass == 1)
				f = has(d, "blkio.throttle.io_serviced_recursive") ? "blkio.throttle.io_serviced_recursive"
										   : "blkio.throttle.io_serviced";
			if (cg_read(d, f, &s, NULL) < 0)
				continue;
			for (char *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
				unsigned maj, min;
				char op[32];
				unsigned long long v;
				if (sscanf(l, "%u:%u %31s %llu", &maj, &min, op, &v) == 4)
					json_array_append_new(pass ? ios : bytes,
							      json_pack("{s:I, s:I, s:s, s:I}", "major", (json_int_t)maj, "minor",
									(json_int_t)min, "op", op, "value", (json_int_t)v));
			}
		}
	} else if ((d = cg_route(inst, "io")) && cg_read(d, "io.stat", &s, NULL) == 0) {
		for (char *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
			unsigned maj, min;
			int off = 0;
			if (sscanf(l, "%u:%u%n", &maj, &min, &off) != 2)
				continue;
			static const struct { const char *key, *op; bool io; } keys[] = {
				{ "rbytes", "Read", false }, { "wbytes", "Write", false },
				{ "rios", "Read", true },    { "wios", "Write", true },
			};
			for (size_t k = 0; k < ARRAY_SIZE(keys); k++) {
				char pat[32];
				snprintf(pat, sizeof(pat), " %s=", keys[k].key);
				char *p = strstr(l + off, pat);
				if (p)
					json_array_append_new(keys[k].io ? ios : bytes,
							      json_pack("{s:I, s:I, s:s, s:I}", "major", (json_int_t)maj, "minor",
									(json_int_t)min, "op", keys[k].op, "value",
									(json_int_t)strtoull(p + strlen(pat), NULL, 10)));
			}
		}
	}
	json_object_set_new(o, "ioServiceBytesRecursive", bytes);
	json_object_set_new(o, "ioServicedRecursive", ios);
	return o;
}

int cgroup_stats(struct cgroup_instance *inst, json_t **out, struct cella_err *err)
{
	/* runc's types.Stats field names. */
	json_t *o = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:n}", "cpu", cpu_stats(inst), "memory",
			      memory_stats(inst), "pids", pids_stats(inst), "blkio", blkio_stats(inst), "hugetlb",
			      json_object(), "intel_rdt", json_object(), "network_interfaces");
	if (!o)
		return cella_err_set(err, ENOMEM, "cgroup stats");
	*out = o;
	return 0;
}
