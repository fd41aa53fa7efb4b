/* cgroup v2 backend: linux.resources -> unified hierarchy files, with the conversions runc and
 * crun use (shares -> cpu.weight, memory+swap -> memory.swap.max, blkio weight -> io.weight). */
#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup_internal.h"
#include "runtime/config.h"

#include <errno.h>
#include <string.h>

static int write_limit(const struct cg_dir *d, const char *file, long long v, struct cella_err *err)
{
	if (v < 0)
		return cg_write(d, file, "max", err);
	return cg_writef(d, file, err, "%lld", v);
}

int cg_v2_memory(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	const struct oci_memory *m = &res->memory;
	long long limit = m->limit.set ? m->limit.v : 0, swap = m->swap.set ? m->swap.v : 0, swap2;
	int r = cgroup_swap_to_v2(swap, limit, &swap2, err);
	if (r < 0)
		return r;
	/* Swap first: memory.swap.max is independent of memory.max on v2, order only matters for
	 * error reporting (the swap error is the more specific one). */
	if (swap2 != CGROUP_SWAP_UNSET) {
		if (!cg_has_file(d, "memory.swap.max")) {
			if (swap2 != -1)
				return cella_err_set(err, ENOTSUP,
						     "linux.resources.memory.swap: swap limit not supported: no "
						     "memory.swap.max in %s (kernel without swap accounting)",
						     d->path);
		} else if ((r = write_limit(d, "memory.swap.max", swap2, err)) < 0) {
			return r;
		}
	}
	if (limit != 0 && (r = write_limit(d, "memory.max", limit, err)) < 0)
		return r;
	if (m->reservation.set && m->reservation.v != 0 &&
	    (r = write_limit(d, "memory.low", m->reservation.v, err)) < 0)
		return r;
	if (m->swappiness.set || m->kernel.set || m->kernel_tcp.set || m->has_disable_oom_killer)
		log_debug("cgroup: memory swappiness/kernel/kernelTCP/disableOOMKiller have no cgroup v2 "
			  "equivalent; ignored");
	return 0;
}

int cg_v2_cpu(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	const struct oci_cpu *c = &res->cpu;
	int r;
	if ((c->realtime_period.set && c->realtime_period.v) || (c->realtime_runtime.set && c->realtime_runtime.v))
		return cella_err_set(err, ENOTSUP,
				     "linux.resources.cpu.realtimeRuntime: realtime scheduling limits are not "
				     "supported on cgroup v2");
	if (c->shares.set && c->shares.v &&
	    (r = cg_writef(d, "cpu.weight", err, "%llu", cgroup_shares_to_weight(c->shares.v))) < 0)
		return r;
	long long quota = c->quota.set ? c->quota.v : 0;
	unsigned long long period = c->period.set ? c->period.v : 0;
	if (quota != 0 || period != 0) {
		char buf[64];
		if (period == 0)
			period = 100000; /* the kernel's default */
		if (quota > 0)
			snprintf(buf, sizeof(buf), "%lld %llu", quota, period);
		else
			snprintf(buf, sizeof(buf), "max %llu", period);
		if ((r = cg_write(d, "cpu.max", buf, err)) < 0)
			return r;
	}
	if (c->idle.set && (r = cg_writef(d, "cpu.idle", err, "%lld", (long long)c->idle.v)) < 0)
		return r;
	return 0;
}

/* blkio weight [10, 1000] -> io.weight [1, 10000] (runc's ConvertBlkIOToIOWeightValue). */
static unsigned long long blkio_to_io_weight(unsigned long long w)
{
	if (w < 10)
		w = 10;
	if (w > 1000)
		w = 1000;
	return 1 + (w - 10) * 9999 / 990;
}

static int write_io_max(const struct cg_dir *d, const char *key, const struct oci_blkio_throttle *t, size_t n,
			struct cella_err *err)
{
	for (size_t i = 0; i < n; i++) {
		int r = cg_writef(d, "io.max", err, "%lld:%lld %s=%llu", (long long)t[i].major, (long long)t[i].minor,
				  key, (unsigned long long)t[i].rate);
		if (r < 0)
			return r;
	}
	return 0;
}

int cg_v2_io(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	const struct oci_blkio *b = &res->blkio;
	/* With BFQ, io.bfq.weight takes the blkio value range directly; else convert for io.weight. */
	bool bfq = cg_has_file(d, "io.bfq.weight");
	int r;
	if (b->weight.set) {
		if (bfq)
			r = cg_writef(d, "io.bfq.weight", err, "%llu", (unsigned long long)b->weight.v);
		else
			r = cg_writef(d, "io.weight", err, "default %llu", blkio_to_io_weight(b->weight.v));
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < b->n_weight_device; i++) {
		const struct oci_blkio_weight_device *w = &b->weight_device[i];
		if (!w->weight.set)
			continue;
		if (bfq)
			r = cg_writef(d, "io.bfq.weight", err, "%lld:%lld %llu", (long long)w->major, (long long)w->minor,
				      (unsigned long long)w->weight.v);
		else
			r = cg_writef(d, "io.weight", err, "%lld:%lld %llu", (long long)w->major, (long long)w->minor,
				      blkio_to_io_weight(w->weight.v));
		if (r < 0)
			return r;
	}
	if (b->leaf_weight.set)
		log_debug("cgroup: linux.resources.blockIO.leafWeight has no cgroup v2 equivalent; ignored");
	if ((r = write_io_max(d, "rbps", b->throttle_read_bps, b->n_throttle_read_bps, err)) < 0 ||
	    (r = write_io_max(d, "wbps", b->throttle_write_bps, b->n_throttle_write_bps, err)) < 0 ||
	    (r = write_io_max(d, "riops", b->throttle_read_iops, b->n_throttle_read_iops, err)) < 0 ||
	    (r = write_io_max(d, "wiops", b->throttle_write_iops, b->n_throttle_write_iops, err)) < 0)
		return r;
	return 0;
}

int cg_v2_unified(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	for (size_t i = 0; i < res->n_unified; i++) {
		const struct oci_kv *kv = &res->unified[i];
		if (!cg_has_file(d, kv->key)) {
			char ctrl[64];
			const char *dot = strchr(kv->key, '.');
			snprintf(ctrl, sizeof(ctrl), "%.*s", dot ? (int)(dot - kv->key) : 0, kv->key);
			return cella_err_set(err, ENOENT,
					     "linux.resources.unified.\"%s\": no such file in %s (is the %s controller "
					     "available?)",
					     kv->key, d->path, ctrl);
		}
		int r = cg_write(d, kv->key, kv->value, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Is ctrl listed (space separated) in file of dir? */
static bool listed(const struct cg_dir *dir, const char *file, const char *ctrl)
{
	_cleanup_free_ char *s = NULL;
	if (cg_read(dir, file, &s, NULL) < 0)
		return false;
	char *save = NULL;
	for (char *t = strtok_r(s, " \n", &save); t; t = strtok_r(NULL, " \n", &save)) {
		if (t[0] == '+')
			t++;
		if (strcmp(t, ctrl) == 0)
			return true;
	}
	return false;
}

int cg_v2_enable(const struct cg_dir *d, const char *controllers, bool required, struct cella_err *err)
{
	/* Ancestors from the hierarchy root down to the container's parent. */
	_cleanup_free_ char *rel = strdup(d->rel);
	if (!rel)
		return cella_err_set(err, ENOMEM, "out of memory");
	char *last = strrchr(rel, '/');
	if (!last)
		return 0;
	*last = '\0';
	char *end = rel + strlen(rel);
	for (char *s = rel;; s++) {
		if (s != rel && *s != '/' && s != end)
			continue;
		char saved = *s;
		*s = '\0';
		_cleanup_free_ char *dir = rel[0] ? cella_path_join(d->mount, rel) : strdup(d->mount);
		*s = saved;
		if (!dir)
			return cella_err_set(err, ENOMEM, "out of memory");
		struct cg_dir level = *d;
		level.path = dir;
		_cleanup_free_ char *list = strdup(controllers);
		char *save = NULL;
		for (char *c = list ? strtok_r(list, ",", &save) : NULL; c; c = strtok_r(NULL, ",", &save)) {
			if (listed(&level, "cgroup.subtree_control", c))
				continue;
			char buf[80];
			snprintf(buf, sizeof(buf), "+%s", c);
			struct cella_err e2 = { 0 };
			int r = cg_write(&level, "cgroup.subtree_control", buf, &e2);
			if (r < 0 && required) {
				if (err)
					*err = e2;
				return cella_err_wrap(err, "cgroup v2: enable the %s controller for %s", c, d->path);
			}
		}
		if (s == end)
			break;
	}
	return 0;
}
