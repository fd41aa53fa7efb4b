/* Resource validation, device rule lists and the pieces shared by the v1 and v2 backends. */
#include "base/err.h"
#include "base/util.h"
#include "runtime/cgroup_internal.h"
#include "runtime/config.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>

unsigned long long cgroup_shares_to_weight(unsigned long long shares)
{
	if (shares == 0)
		return 0;
	/* crun's linear map of [2, 262144] onto [1, 10000]; out-of-range shares are clamped. */
	if (shares < 2)
		shares = 2;
	if (shares > 262144)
		shares = 262144;
	return 1 + ((shares - 2) * 9999) / 262142;
}

int cgroup_swap_to_v2(long long swap, long long limit, long long *out, struct cella_err *err)
{
	/* As runc: memory unlimited and swap unset means both unlimited. */
	if (limit == -1 && swap == 0) {
		*out = -1;
		return 0;
	}
	if (swap == 0) {
		*out = CGROUP_SWAP_UNSET;
		return 0;
	}
	if (swap == -1) {
		*out = -1;
		return 0;
	}
	if (swap < -1)
		return cella_err_set(err, EINVAL, "linux.resources.memory.swap: invalid value %lld", swap);
	if (limit == 0 || limit == -1)
		return cella_err_set(err, EINVAL,
				     "linux.resources.memory.swap: cannot set a swap limit without a memory limit");
	if (limit < 0)
		return cella_err_set(err, EINVAL, "linux.resources.memory.limit: invalid value %lld", limit);
	if (swap < limit)
		return cella_err_set(err, EINVAL,
				     "linux.resources.memory.swap: memory+swap limit %lld is below the memory limit %lld",
				     swap, limit);
	*out = swap - limit;
	return 0;
}

static bool parse_num(const char **s, unsigned long *v)
{
	if (!isdigit((unsigned char)**s))
		return false;
	unsigned long n = 0;
	while (isdigit((unsigned char)**s)) {
		n = n * 10 + (unsigned long)(**s - '0');
		if (n > 1u << 22)
			return false;
		(*s)++;
	}
	*v = n;
	return true;
}

int cgroup_validate_cpu_list(const char *list, const char *path, struct cella_err *err)
{
	/* Kernel list format: "N", "N-M" or "N-M:used/group", comma separated. */
	const char *s = list;
	if (!*s)
		return 0;
	for (;;) {
		unsigned long a, b, u, g;
		if (!parse_num(&s, &a))
			goto bad;
		b = a;
		if (*s == '-') {
			s++;
			if (!parse_num(&s, &b) || b < a)
				goto bad;
			if (*s == ':') {
				s++;
				if (!parse_num(&s, &u) || *s != '/')
					goto bad;
				s++;
				if (!parse_num(&s, &g) || u == 0 || g == 0 || u > g)
					goto bad;
			}
		}
		if (*s == '\0')
			return 0;
		if (*s != ',')
			goto bad;
		s++;
	}
bad:
	return cella_err_set(err, EINVAL, "%s: invalid cpu list \"%s\"", path, list);
}

static int check_i64_limit(const struct oci_opt_i64 *o, const char *path, struct cella_err *err)
{
	if (o->set && o->v < -1)
		return cella_err_set(err, EINVAL, "%s: invalid value %lld (use -1 for unlimited)", path,
				     (long long)o->v);
	return 0;
}

static bool valid_page_size(const char *s)
{
	if (!s || !isdigit((unsigned char)s[0]))
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s))
			return false;
	return true;
}

static int check_unified_key(const char *key, size_t i, struct cella_err *err)
{
	static const char *const forbidden[] = { "cgroup.procs", "cgroup.threads", "cgroup.subtree_control",
						 "cgroup.kill", "cgroup.type", "tasks", NULL };
	const char *dot = strchr(key, '.');
	if (!key[0] || strchr(key, '/') || key[0] == '.' || !dot || dot == key || !dot[1] || strlen(key) > 255)
		return cella_err_set(err, EINVAL, "linux.resources.unified.\"%s\": not a cgroup interface file name",
				     key);
	for (size_t k = 0; forbidden[k]; k++)
		if (strcmp(key, forbidden[k]) == 0)
			return cella_err_set(err, EINVAL,
					     "linux.resources.unified.\"%s\": may not be set through unified", key);
	(void)i;
	return 0;
}

int cg_validate_resources(const struct oci_resources *r, struct cella_err *err)
{
	int ret;
	if (!r)
		return 0;
	if (r->has_memory) {
		const struct oci_memory *m = &r->memory;
		if ((ret = check_i64_limit(&m->limit, "linux.resources.memory.limit", err)) < 0 ||
		    (ret = check_i64_limit(&m->reservation, "linux.resources.memory.reservation", err)) < 0 ||
		    (ret = check_i64_limit(&m->swap, "linux.resources.memory.swap", err)) < 0 ||
		    (ret = check_i64_limit(&m->kernel_tcp, "linux.resources.memory.kernelTCP", err)) < 0)
			return ret;
		if (m->swappiness.set && m->swappiness.v > 100)
			return cella_err_set(err, EINVAL,
					     "linux.resources.memory.swappiness: invalid value %llu (must be 0 to 100)",
					     (unsigned long long)m->swappiness.v);
		long long limit = m->limit.set ? m->limit.v : 0, swap = m->swap.set ? m->swap.v : 0;
		if (swap > 0 && limit > 0 && swap < limit)
			return cella_err_set(err, EINVAL,
					     "linux.resources.memory.swap: memory+swap limit %lld is below the memory limit %lld",
					     swap, limit);
	}
	if (r->has_cpu) {
		if (r->cpu.cpus && (ret = cgroup_validate_cpu_list(r->cpu.cpus, "linux.resources.cpu.cpus", err)) < 0)
			return ret;
		if (r->cpu.mems && (ret = cgroup_validate_cpu_list(r->cpu.mems, "linux.resources.cpu.mems", err)) < 0)
			return ret;
		if (r->cpu.idle.set && r->cpu.idle.v != 0 && r->cpu.idle.v != 1)
			return cella_err_set(err, EINVAL, "linux.resources.cpu.idle: invalid value %lld (must be 0 or 1)",
					     (long long)r->cpu.idle.v);
	}
	for (size_t i = 0; i < r->n_devices; i++) {
		const struct oci_device_cgroup *d = &r->devices[i];
		if (d->type != 'a' && d->type != 'b' && d->type != 'c')
			return cella_err_set(err, EINVAL, "linux.resources.devices[%zu].type: invalid type \"%c\"", i,
					     d->type);
		if (strspn(d->access, "rwm") != strlen(d->access))
			return cella_err_set(err, EINVAL, "linux.resources.devices[%zu].access: invalid access \"%s\"",
					     i, d->access);
		if (d->major < -1 || d->minor < -1)
			return cella_err_set(err, EINVAL, "linux.resources.devices[%zu]: invalid device number", i);
	}
	for (size_t i = 0; i < r->n_hugepage_limits; i++)
		if (!valid_page_size(r->hugepage_limits[i].page_size))
			return cella_err_set(err, EINVAL,
					     "linux.resources.hugepageLimits[%zu].pageSize: invalid page size \"%s\"", i,
					     r->hugepage_limits[i].page_size ? r->hugepage_limits[i].page_size : "");
	for (size_t i = 0; i < r->n_unified; i++)
		if ((ret = check_unified_key(r->unified[i].key, i, err)) < 0)
			return ret;
	return 0;
}

/* ---------- devices ---------- */

/* runc's default allow list (libcontainer/specconv AllowedDevices) plus /dev/console. */
static const struct cg_dev_rule default_rules[] = {
	{ true, 'c', -1, -1, "m" },   { true, 'b', -1, -1, "m" },    { true, 'c', 1, 3, "rwm" },
	{ true, 'c', 1, 8, "rwm" },   { true, 'c', 1, 7, "rwm" },    { true, 'c', 5, 0, "rwm" },
	{ true, 'c', 1, 5, "rwm" },   { true, 'c', 1, 9, "rwm" },    { true, 'c', 5, 1, "rwm" },
	{ true, 'c', 136, -1, "rwm" }, { true, 'c', 5, 2, "rwm" },   { true, 'c', 10, 200, "rwm" },
};

bool cg_devices_default_only(const struct cgroup_params *p)
{
	const struct oci_resources *r = p->resources;
	for (size_t i = 0; r && i < r->n_devices; i++) {
		const struct oci_device_cgroup *d = &r->devices[i];
		if (d->allow || d->type != 'a' || d->major != -1 || d->minor != -1)
			return false;
	}
	for (size_t i = 0; i < p->n_devices; i++)
		if (p->devices[i].type != 'p')
			return false;
	return true;
}

int cg_device_rules(const struct cgroup_params *p, struct cg_dev_rule **out, size_t *n_out, struct cella_err *err)
{
	const struct oci_resources *r = p->resources;
	size_t cap = 1 + (r ? r->n_devices : 0) + ARRAY_SIZE(default_rules) + p->n_devices, n = 0;
	struct cg_dev_rule *rules = calloc(cap, sizeof(*rules));
	if (!rules)
		return cella_err_set(err, ENOMEM, "out of memory");
	rules[n++] = (struct cg_dev_rule){ false, 'a', -1, -1, "rwm" };
	for (size_t i = 0; r && i < r->n_devices; i++) {
		const struct oci_device_cgroup *d = &r->devices[i];
		struct cg_dev_rule *x = &rules[n++];
		x->allow = d->allow;
		x->type = d->type ? d->type : 'a';
		x->major = d->major;
		x->minor = d->minor;
		snprintf(x->access, sizeof(x->access), "%s", d->access[0] ? d->access : "rwm");
	}
	for (size_t i = 0; i < ARRAY_SIZE(default_rules); i++)
		rules[n++] = default_rules[i];
	for (size_t i = 0; i < p->n_devices; i++) {
		const struct oci_device *d = &p->devices[i];
		if (d->type == 'p')
			continue; /* FIFOs are not policed by the device cgroup */
		rules[n++] = (struct cg_dev_rule){ true, d->type == 'b' ? 'b' : 'c', d->major, d->minor, "rwm" };
	}
	*out = rules;
	*n_out = n;
	return 0;
}

void cg_dev_rule_string(const struct cg_dev_rule *r, char *buf, size_t cap)
{
	char maj[24], min[24];
	if (r->major < 0)
		snprintf(maj, sizeof(maj), "*");
	else
		snprintf(maj, sizeof(maj), "%lld", r->major);
	if (r->minor < 0)
		snprintf(min, sizeof(min), "*");
	else
		snprintf(min, sizeof(min), "%lld", r->minor);
	snprintf(buf, cap, "%c %s:%s %s", r->type, maj, min, r->access);
}

/* ---------- shared by v1 and v2 ---------- */

int cg_cpuset(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err)
{
	int ret;
	/* mems first: on v1 a cgroup with cpus but no mems cannot take tasks either way. */
	if (r->cpu.mems && r->cpu.mems[0] && (ret = cg_write(d, "cpuset.mems", r->cpu.mems, err)) < 0)
		return ret;
	if (r->cpu.cpus && r->cpu.cpus[0] && (ret = cg_write(d, "cpuset.cpus", r->cpu.cpus, err)) < 0)
		return ret;
	return 0;
}

int cg_pids(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err)
{
	if (r->pids.limit.v <= 0)
		return cg_write(d, "pids.max", "max", err);
	return cg_writef(d, "pids.max", err, "%lld", (long long)r->pids.limit.v);
}
