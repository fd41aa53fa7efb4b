/* cgroup v1 backend: linux.resources -> v1 controller files (runc's semantics). */
#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup_internal.h"
#include "runtime/config.h"

#include <errno.h>
#include <string.h>

static int write_i64(const struct cg_dir *d, const char *file, long long v, struct cella_err *err)
{
	return cg_writef(d, file, err, "%lld", v);
}

int cg_v1_memory(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	const struct oci_memory *m = &res->memory;
	long long limit = m->limit.set ? m->limit.v : 0, swap = m->swap.set ? m->swap.v : 0;
	bool has_memsw = cg_has_file(d, "memory.memsw.limit_in_bytes");
	int r;

	/* Unlimited memory with swap unset: make swap unlimited too (if the kernel accounts it). */
	if (limit == -1 && swap == 0 && has_memsw)
		swap = -1;
	if (swap != 0 && !has_memsw) {
		/* No swap accounting: only a request that actually limits swap is an error. */
		if (swap != -1 && swap != limit)
			return cella_err_set(err, ENOTSUP,
					     "linux.resources.memory.swap: swap limit not supported: no "
					     "memory.memsw.limit_in_bytes in %s (kernel without swap accounting)",
					     d->path);
		swap = 0;
	}
	bool swap_first = false;
	if (limit != 0 && swap != 0) {
		/* memsw must stay >= the memory limit at every step: raise before lower. */
		_cleanup_free_ char *cur = NULL;
		uint64_t curv;
		if (swap == -1)
			swap_first = true;
		else if (cg_read(d, "memory.limit_in_bytes", &cur, NULL) == 0 && cella_parse_uint64(cur, &curv) == 0)
			swap_first = curv < (uint64_t)swap;
	}
	if (swap_first && (r = write_i64(d, "memory.memsw.limit_in_bytes", swap, err)) < 0)
		return r;
	if (limit != 0 && (r = write_i64(d, "memory.limit_in_bytes", limit, err)) < 0)
		return r;
	if (!swap_first && swap != 0 && (r = write_i64(d, "memory.memsw.limit_in_bytes", swap, err)) < 0)
		return r;
	if (m->reservation.set && m->reservation.v != 0 &&
	    (r = write_i64(d, "memory.soft_limit_in_bytes", m->reservation.v, err)) < 0)
		return r;
	if (m->kernel.set)
		log_debug("cgroup: linux.resources.memory.kernel is deprecated and ignored");
	if (m->kernel_tcp.set && (r = write_i64(d, "memory.kmem.tcp.limit_in_bytes", m->kernel_tcp.v, err)) < 0)
		return r;
	if (m->swappiness.set &&
	    (r = cg_writef(d, "memory.swappiness", err, "%llu", (unsigned long long)m->swappiness.v)) < 0)
		return r;
	if (m->has_disable_oom_killer && m->disable_oom_killer && (r = cg_write(d, "memory.oom_control", "1", err)) < 0)
		return r;
	if (m->has_use_hierarchy &&
	    (r = cg_write(d, "memory.use_hierarchy", m->use_hierarchy ? "1" : "0", err)) < 0)
		return r;
	return 0;
}

int cg_v1_cpu(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	const struct oci_cpu *c = &res->cpu;
	int r;
	if (c->shares.set && c->shares.v &&
	    (r = cg_writef(d, "cpu.shares", err, "%llu", (unsigned long long)c->shares.v)) < 0)
		return r;
	long long quota = c->quota.set ? c->quota.v : 0;
	if (quota < 0)
		quota = -1;
	if (c->period.set && c->period.v) {
		r = cg_writef(d, "cpu.cfs_period_us", err, "%llu", (unsigned long long)c->period.v);
		if (r == -EINVAL && quota != 0) {
			/* The new period conflicts with the current quota: set the quota first (runc). */
			if ((r = write_i64(d, "cpu.cfs_quota_us", quota, err)) < 0)
				return r;
			r = cg_writef(d, "cpu.cfs_period_us", err, "%llu", (unsigned long long)c->period.v);
		}
		if (r < 0)
			return r;
	}
	if (quota != 0 && (r = write_i64(d, "cpu.cfs_quota_us", quota, err)) < 0)
		return r;
	if (c->realtime_period.set && c->realtime_period.v &&
	    (r = cg_writef(d, "cpu.rt_period_us", err, "%llu", (unsigned long long)c->realtime_period.v)) < 0)
		return r;
	if (c->realtime_runtime.set && c->realtime_runtime.v &&
	    (r = write_i64(d, "cpu.rt_runtime_us", c->realtime_runtime.v, err)) < 0)
		return r;
	if (c->idle.set && (r = write_i64(d, "cpu.idle", c->idle.v, err)) < 0)
		return r;
	return 0;
}

/* A new v1 cpuset has empty cpus/mems and refuses tasks: copy them from the parent at every
 * level of the path that is still empty. */
int cg_v1_cpuset_init(const struct cg_dir *d, struct cella_err *err)
{
	static const char *const files[] = { "cpuset.cpus", "cpuset.mems" };
	_cleanup_free_ char *rel = strdup(d->rel);
	if (!rel)
		return cella_err_set(err, ENOMEM, "out of memory");
	/* Levels: mount/a, mount/a/b, ... mount/rel. */
	for (char *s = rel + 1;; s++) {
		bool end = *s == '\0';
		if (*s != '/' && !end)
			continue;
		char saved = *s;
		*s = '\0';
		_cleanup_free_ char *dir = cella_path_join(d->mount, rel);
		char *slash = dir ? strrchr(dir, '/') : NULL;
		if (!dir || !slash)
			return cella_err_set(err, ENOMEM, "out of memory");
		_cleanup_free_ char *parent = strndup(dir, (size_t)(slash - dir));
		if (!parent)
			return cella_err_set(err, ENOMEM, "out of memory");
		struct cg_dir level = *d, up = *d;
		level.path = dir;
		up.path = parent;
		for (size_t i = 0; i < 2; i++) {
			_cleanup_free_ char *cur = NULL, *pv = NULL;
			int r = cg_read(&level, files[i], &cur, err);
			if (r < 0)
				return r;
			if (cur[0])
				continue;
			if ((r = cg_read(&up, files[i], &pv, err)) < 0)
				return r;
			if (pv[0] && (r = cg_write(&level, files[i], pv, err)) < 0)
				return r;
		}
		*s = saved;
		if (end)
			break;
	}
	return 0;
}

static int write_weight_file(const struct cg_dir *d, const char *file, const char *bfq_file, const char *value,
			     struct cella_err *err)
{
	/* Kernels with BFQ only offer blkio.bfq.weight*. */
	if (!cg_has_file(d, file) && cg_has_file(d, bfq_file))
		file = bfq_file;
	return cg_write(d, file, value, err);
}

static int write_throttle(const struct cg_dir *d, const char *file, const struct oci_blkio_throttle *t, size_t n,
			  struct cella_err *err)
{
	for (size_t i = 0; i < n; i++) {
		int r = cg_writef(d, file, err, "%lld:%lld %llu", (long long)t[i].major, (long long)t[i].minor,
				  (unsigned long long)t[i].rate);
		if (r < 0)
			return r;
	}
	return 0;
}

int cg_v1_blkio(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	const struct oci_blkio *b = &res->blkio;
	char buf[64];
	int r;
	if (b->weight.set) {
		snprintf(buf, sizeof(buf), "%llu", (unsigned long long)b->weight.v);
		if ((r = write_weight_file(d, "blkio.weight", "blkio.bfq.weight", buf, err)) < 0)
			return r;
	}
	if (b->leaf_weight.set &&
	    (r = cg_writef(d, "blkio.leaf_weight", err, "%llu", (unsigned long long)b->leaf_weight.v)) < 0)
		return r;
	for (size_t i = 0; i < b->n_weight_device; i++) {
		const struct oci_blkio_weight_device *w = &b->weight_device[i];
		if (w->weight.set) {
			snprintf(buf, sizeof(buf), "%lld:%lld %llu", (long long)w->major, (long long)w->minor,
				 (unsigned long long)w->weight.v);
			if ((r = write_weight_file(d, "blkio.weight_device", "blkio.bfq.weight_device", buf, err)) < 0)
				return r;
		}
		if (w->leaf_weight.set &&
		    (r = cg_writef(d, "blkio.leaf_weight_device", err, "%lld:%lld %llu", (long long)w->major,
				   (long long)w->minor, (unsigned long long)w->leaf_weight.v)) < 0)
			return r;
	}
	if ((r = write_throttle(d, "blkio.throttle.read_bps_device", b->throttle_read_bps, b->n_throttle_read_bps,
				err)) < 0 ||
	    (r = write_throttle(d, "blkio.throttle.write_bps_device", b->throttle_write_bps,
				b->n_throttle_write_bps, err)) < 0 ||
	    (r = write_throttle(d, "blkio.throttle.read_iops_device", b->throttle_read_iops,
				b->n_throttle_read_iops, err)) < 0 ||
	    (r = write_throttle(d, "blkio.throttle.write_iops_device", b->throttle_write_iops,
				b->n_throttle_write_iops, err)) < 0)
		return r;
	return 0;
}

static int write_hugetlb(const struct cg_dir *d, const struct oci_resources *res, const char *suffix,
			 struct cella_err *err)
{
	for (size_t i = 0; i < res->n_hugepage_limits; i++) {
		const struct oci_hugepage_limit *h = &res->hugepage_limits[i];
		char file[128];
		snprintf(file, sizeof(file), "hugetlb.%s.%s", h->page_size, suffix);
		if (!cg_has_file(d, file))
			return cella_err_set(err, ENOTSUP,
					     "linux.resources.hugepageLimits[%zu].pageSize: page size \"%s\" is not "
					     "supported (no %s in %s)",
					     i, h->page_size, file, d->path);
		int r = cg_writef(d, file, err, "%llu", (unsigned long long)h->limit);
		if (r < 0)
			return r;
	}
	return 0;
}

int cg_v1_hugetlb(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	return write_hugetlb(d, res, "limit_in_bytes", err);
}

int cg_v2_hugetlb(const struct cg_dir *d, const struct oci_resources *res, struct cella_err *err)
{
	return write_hugetlb(d, res, "max", err);
}

int cg_v1_devices(const struct cg_dir *d, const struct cg_dev_rule *rules, size_t n, struct cella_err *err)
{
	_cleanup_close_ int allow_fd = -1, deny_fd = -1;
	for (size_t i = 0; i < n; i++) {
		char buf[64];
		cg_dev_rule_string(&rules[i], buf, sizeof(buf));
		int r = rules[i].allow ? cg_write_keep(d, &allow_fd, "devices.allow", buf, err)
				       : cg_write_keep(d, &deny_fd, "devices.deny", buf, err);
		if (r < 0)
			return r;
	}
	return 0;
}
