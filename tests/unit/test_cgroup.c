/* Cgroup manager against fake cgroupfs trees (v1, v2, hybrid) built in a temp dir: detection,
 * path computation, every resource -> file translation, conversions, device rules and the v2
 * device BPF program (run by a small interpreter here), cleanup on failure, destroy, state. */
#include "base/err.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/cgroup_internal.h"
#include "runtime/config.h"
#include "tap.h"
#include "cgtest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdarg.h>
#include <sys/stat.h>

static char base_dir[] = "/tmp/cella-cgtest-XXXXXX";

/* ---------- fake tree helpers ---------- */

struct fake_ctl {
	const char *dir;   /* under cg/ */
	const char *opts;  /* v1 super options */
	const char *files; /* "name=value;name=value" */
};

static const struct fake_ctl v1_ctls[] = {
	{ "cpu,cpuacct", "rw,cpu,cpuacct",
	  "cgroup.procs=;cpu.shares=1024;cpu.cfs_quota_us=-1;cpu.cfs_period_us=100000;cpu.rt_period_us=1000000;"
	  "cpu.rt_runtime_us=0;cpu.idle=0;cpuacct.usage=0" },
	{ "cpuset", "rw,cpuset", "cgroup.procs=;cpuset.cpus=0-3;cpuset.mems=0" },
	{ "memory", "rw,memory",
	  "cgroup.procs=;memory.limit_in_bytes=;memory.soft_limit_in_bytes=;memory.memsw.limit_in_bytes=;"
	  "memory.swappiness=60;memory.oom_control=;memory.kmem.tcp.limit_in_bytes=;memory.use_hierarchy=1" },
	{ "devices", "rw,devices", "cgroup.procs=;devices.allow=;devices.deny=;devices.list=" },
	{ "freezer", "rw,freezer", "cgroup.procs=;freezer.state=THAWED" },
	{ "blkio", "rw,blkio",
	  "cgroup.procs=;blkio.weight=;blkio.leaf_weight=;blkio.weight_device=;blkio.leaf_weight_device=;"
	  "blkio.throttle.read_bps_device=;blkio.throttle.write_bps_device=;blkio.throttle.read_iops_device=;"
	  "blkio.throttle.write_iops_device=" },
	{ "pids", "rw,pids", "cgroup.procs=;pids.max=" },
	{ "hugetlb", "rw,hugetlb", "cgroup.procs=;hugetlb.2MB.limit_in_bytes=;hugetlb.1GB.limit_in_bytes=" },
	{ "systemd", "rw,xattr,name=systemd", "cgroup.procs=" },
};

static const char v2_files[] =
	"cgroup.procs=;cgroup.subtree_control=;cgroup.freeze=;cgroup.events=;cgroup.max.depth=max;"
	"memory.max=;memory.low=;memory.high=;memory.swap.max=;cpu.weight=;cpu.max=;cpu.idle=;"
	"cpuset.cpus=;cpuset.mems=;pids.max=;io.weight=;io.max=;hugetlb.2MB.max=";

static void make_files(const char *dir, const char *spec)
{
	_cleanup_free_ char *copy = strdup(spec);
	char *save = NULL;
	for (char *t = strtok_r(copy, ";", &save); t; t = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(t, '=');
		*eq = '\0';
		put(dir, t, eq + 1);
	}
}

enum layout { L_V1, L_V2, L_HYBRID };

struct fake {
	char root[512];        /* .../NAME/cg */
	char mountinfo[512];
	char proc_cgroup[512];
	struct cgroup_manager *mgr;
};

/* Builds NAME/cg with the layout, plus mountinfo and a /proc/self/cgroup imitation. */
static void fake_build(struct fake *f, const char *name, enum layout l, const char *skip_file)
{
	char top[512];
	snprintf(top, sizeof(top), "%s/%s", base_dir, name);
	snprintf(f->root, sizeof(f->root), "%s/cg", top);
	snprintf(f->mountinfo, sizeof(f->mountinfo), "%s/mountinfo", top);
	snprintf(f->proc_cgroup, sizeof(f->proc_cgroup), "%s/cgroup", top);
	cella_mkdir_p(f->root, 0755, NULL);
	char mi[8192] = "22 1 0:20 / /sys rw - sysfs sysfs rw\n";
	char pc[2048] = "";
	int id = 30;
	if (l != L_V2) {
		size_t n = ARRAY_SIZE(v1_ctls) - (l == L_HYBRID ? 0 : 0);
		for (size_t i = 0; i < n; i++) {
			if (l == L_HYBRID && strcmp(v1_ctls[i].dir, "hugetlb") == 0)
				continue; /* hybrid: hugetlb lives in v2 only */
			char *d = pathf("%s/%s", f->root, v1_ctls[i].dir);
			mkdir(d, 0755);
			make_files(d, v1_ctls[i].files);
			size_t len = strlen(mi);
			snprintf(mi + len, sizeof(mi) - len, "%d 29 0:%d / %s rw,relatime - cgroup cgroup %s\n", id, id,
				 d, v1_ctls[i].opts);
			len = strlen(pc);
			const char *ctl = strchr(v1_ctls[i].opts, ',') + 1;
			if (strncmp(ctl, "xattr,", 6) == 0)
				ctl += 6;
			/* The runtime's own memory cgroup is nested, the others are the root. */
			snprintf(pc + len, sizeof(pc) - len, "%d:%s:%s\n", id, ctl,
				 strcmp(v1_ctls[i].dir, "memory") == 0 ? "/user.slice/me" : "/");
			id++;
		}
	}
	if (l == L_V2) {
		make_files(f->root, v2_files);
		put(f->root, "cgroup.controllers", "cpuset cpu io memory hugetlb pids");
		size_t len = strlen(mi);
		snprintf(mi + len, sizeof(mi) - len, "%d 22 0:%d / %s rw - cgroup2 cgroup2 rw,nsdelegate\n", id, id,
			 f->root);
		len = strlen(pc);
		snprintf(pc + len, sizeof(pc) - len, "0::/user.slice/me\n");
	} else if (l == L_HYBRID) {
		char *d = pathf("%s/unified", f->root);
		mkdir(d, 0755);
		make_files(d, "cgroup.procs=;cgroup.subtree_control=;cgroup.max.depth=max;hugetlb.2MB.max=;"
			      "hugetlb.1GB.max=");
		put(d, "cgroup.controllers", "hugetlb\n");
		size_t len = strlen(mi);
		snprintf(mi + len, sizeof(mi) - len, "%d 29 0:%d / %s rw - cgroup2 cgroup2 rw\n", id, id, d);
		len = strlen(pc);
		snprintf(pc + len, sizeof(pc) - len, "0::/\n");
	}
	if (skip_file) {
		/* e.g. "memory/memory.memsw.limit_in_bytes": a kernel without that file */
		unlink(pathf("%s/%s", f->root, skip_file));
	}
	/* A mount outside the root that must be ignored. */
	size_t len = strlen(mi);
	snprintf(mi + len, sizeof(mi) - len, "99 22 0:99 / /elsewhere/cg rw - cgroup cgroup rw,cpu\n");
	put(top, "mountinfo", mi);
	put(top, "cgroup", pc);
	struct cgroup_manager_opts o = { .mountinfo = f->mountinfo, .proc_cgroup = f->proc_cgroup,
					 .root = f->root, .fake = true };
	struct cella_err err = { 0 };
	f->mgr = NULL;
	if (cgroup_manager_open(&o, &f->mgr, &err) < 0)
		printf("# manager open failed: %s\n", err.msg);
}

/* Counts directories below the fake root (all hierarchies) other than the hierarchy roots. */
static int count_dirs(const char *dir, int depth)
{
	DIR *dp = opendir(dir);
	if (!dp)
		return 0;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(dp))) {
		if (de->d_type != DT_DIR || !strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char *sub = pathf("%s/%s", dir, de->d_name);
		char copy[1024];
		snprintf(copy, sizeof(copy), "%s", sub);
		n += (depth > 0 ? 1 : 0) + count_dirs(copy, depth + 1);
	}
	closedir(dp);
	return n;
}

static int count_container_dirs(const struct fake *f, enum layout l)
{
	/* v2: every directory below the root; v1/hybrid: below each hierarchy root. */
	return l == L_V2 ? count_dirs(f->root, 1) : count_dirs(f->root, 0);
}

/* ---------- resources ---------- */

static struct oci_device_cgroup dev_rules[] = {
	{ .allow = true, .type = 'c', .major = 4, .minor = -1, .access = "rw" },
	{ .allow = false, .type = 'b', .major = 8, .minor = 0, .access = "w" },
};
static struct oci_blkio_weight_device wdev[] = {
	{ .major = 8, .minor = 0, .weight = { true, 300 }, .leaf_weight = { true, 200 } },
};
static struct oci_blkio_throttle rbps[] = { { 8, 0, 1048576 } };
static struct oci_blkio_throttle wiops[] = { { 8, 16, 100 } };
static struct oci_hugepage_limit huge[] = { { (char *)"2MB", 4194304 } };

static void full_resources(struct oci_resources *r)
{
	memset(r, 0, sizeof(*r));
	r->has_memory = true;
	r->memory.limit = (struct oci_opt_i64){ true, 1048576 };
	r->memory.reservation = (struct oci_opt_i64){ true, 524288 };
	r->memory.swap = (struct oci_opt_i64){ true, 2097152 };
	r->memory.swappiness = (struct oci_opt_u64){ true, 10 };
	r->memory.has_disable_oom_killer = true;
	r->memory.disable_oom_killer = true;
	r->has_cpu = true;
	r->cpu.shares = (struct oci_opt_u64){ true, 512 };
	r->cpu.quota = (struct oci_opt_i64){ true, 50000 };
	r->cpu.period = (struct oci_opt_u64){ true, 100000 };
	r->cpu.cpus = (char *)"0-1";
	r->cpu.mems = (char *)"0";
	r->has_pids = true;
	r->pids.limit = (struct oci_opt_i64){ true, 100 };
	r->devices = dev_rules;
	r->n_devices = ARRAY_SIZE(dev_rules);
	r->has_blkio = true;
	r->blkio.weight = (struct oci_opt_u64){ true, 500 };
	r->blkio.leaf_weight = (struct oci_opt_u64){ true, 400 };
	r->blkio.weight_device = wdev;
	r->blkio.n_weight_device = 1;
	r->blkio.throttle_read_bps = rbps;
	r->blkio.n_throttle_read_bps = 1;
	r->blkio.throttle_write_iops = wiops;
	r->blkio.n_throttle_write_iops = 1;
	r->hugepage_limits = huge;
	r->n_hugepage_limits = 1;
}

static const char default_allow[] = "c *:* m\nb *:* m\nc 1:3 rwm\nc 1:8 rwm\nc 1:7 rwm\nc 5:0 rwm\nc 1:5 rwm\n"
				    "c 1:9 rwm\nc 5:1 rwm\nc 136:* rwm\nc 5:2 rwm\nc 10:200 rwm";

/* ---------- tests ---------- */

static void test_conversions(void)
{
	static const unsigned long long shares[][2] = {
		{ 0, 0 }, { 1, 1 }, { 2, 1 }, { 3, 1 }, { 512, 20 }, { 1024, 39 }, { 2048, 79 },
		{ 10000, 382 }, { 262144, 10000 }, { 1000000, 10000 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(shares); i++)
		TAP_OK(cgroup_shares_to_weight(shares[i][0]) == shares[i][1], "shares %llu -> weight %llu (got %llu)",
		       shares[i][0], shares[i][1], cgroup_shares_to_weight(shares[i][0]));

	static const struct { long long swap, limit, want; int rc; } sw[] = {
		{ 0, 1048576, CGROUP_SWAP_UNSET, 0 }, { -1, 1048576, -1, 0 }, { 0, -1, -1, 0 },
		{ 2097152, 1048576, 1048576, 0 }, { 1048576, 1048576, 0, 0 }, { 0, 0, CGROUP_SWAP_UNSET, 0 },
		{ 524288, 1048576, 0, -EINVAL }, { 1048576, 0, 0, -EINVAL }, { 1048576, -1, 0, -EINVAL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(sw); i++) {
		long long out = 12345;
		struct cella_err err = { 0 };
		int rc = cgroup_swap_to_v2(sw[i].swap, sw[i].limit, &out, &err);
		TAP_OK(rc == sw[i].rc && (rc < 0 || out == sw[i].want), "swap %lld limit %lld -> %lld rc %d (got %lld rc %d %s)",
		       sw[i].swap, sw[i].limit, sw[i].want, sw[i].rc, out, rc, err.msg);
	}
	struct cella_err err = { 0 };
	cgroup_swap_to_v2(524288, 1048576, &(long long){ 0 }, &err);
	TAP_STREQ(err.msg, "linux.resources.memory.swap: memory+swap limit 524288 is below the memory limit 1048576",
		  "swap below limit message");

	static const char *good[] = { "0", "0-3", "0,2,4-7", "0-15:2/4", "", NULL };
	static const char *bad[] = { "a-b", "3-1", "1,", ",1", "1 2", "-1", "0-", "1-2:3", NULL };
	for (size_t i = 0; good[i]; i++)
		TAP_OK(cgroup_validate_cpu_list(good[i], "x", NULL) == 0, "cpu list \"%s\" valid", good[i]);
	for (size_t i = 0; bad[i]; i++)
		TAP_OK(cgroup_validate_cpu_list(bad[i], "x", NULL) == -EINVAL, "cpu list \"%s\" invalid", bad[i]);
	cgroup_validate_cpu_list("a-b", "linux.resources.cpu.cpus", &err);
	TAP_STREQ(err.msg, "linux.resources.cpu.cpus: invalid cpu list \"a-b\"", "cpu list message");
}

static void test_detect(void)
{
	struct fake v1, v2, hy;
	fake_build(&v1, "detect-v1", L_V1, NULL);
	fake_build(&v2, "detect-v2", L_V2, NULL);
	fake_build(&hy, "detect-hy", L_HYBRID, NULL);
	TAP_OK(v1.mgr && cgroup_manager_mode(v1.mgr) == CGROUP_MODE_V1, "v1 layout detected");
	TAP_OK(v2.mgr && cgroup_manager_mode(v2.mgr) == CGROUP_MODE_V2, "v2 layout detected");
	TAP_OK(hy.mgr && cgroup_manager_mode(hy.mgr) == CGROUP_MODE_HYBRID, "hybrid layout detected");
	TAP_STREQ(cgroup_mode_name(CGROUP_MODE_HYBRID), "hybrid", "mode name");

	struct cgroup_manager_opts o = { .mountinfo = v1.mountinfo, .proc_cgroup = v1.proc_cgroup,
					 .root = "/nonexistent", .fake = true };
	struct cgroup_manager *m = NULL;
	struct cella_err err = { 0 };
	TAP_OK(cgroup_manager_open(&o, &m, &err) == -ENOENT, "no hierarchy under root -> ENOENT");
	TAP_STREQ(err.msg, "cgroup: no cgroup hierarchy mounted under /nonexistent", "no hierarchy message");

	struct cgroup_instance *inst = NULL;
	TAP_OK(cgroup_instance_lookup(hy.mgr, NULL, "c1", &inst, &err) == 0, "lookup on hybrid");
	TAP_OK(inst && cgroup_instance_count(inst) == 9, "hybrid: 8 v1 hierarchies + unified (got %zu)",
	       inst ? cgroup_instance_count(inst) : 0);
	struct cgroup_dir_info info;
	bool saw_co = false, saw_named = false, saw_v2 = false;
	for (size_t i = 0; inst && i < cgroup_instance_count(inst); i++) {
		cgroup_instance_dir(inst, i, &info);
		saw_co |= !strcmp(info.controllers, "cpu,cpuacct") && !info.v2;
		saw_named |= !strcmp(info.controllers, "name=systemd");
		saw_v2 |= info.v2 && !strcmp(info.controllers, "hugetlb") &&
			  !strcmp(info.path, pathf("%s/unified/c1", hy.root));
	}
	TAP_OK(saw_co && saw_named && saw_v2, "co-mounted cpu,cpuacct, name=systemd and the v2 dir are listed");
	TAP_STREQ(cgroup_instance_path(inst, "memory"), pathf("%s/memory/c1", hy.root), "memory routes to v1");
	TAP_STREQ(cgroup_instance_path(inst, "cpuacct"), pathf("%s/cpu,cpuacct/c1", hy.root),
		  "cpuacct routes to the co-mount");
	TAP_STREQ(cgroup_instance_path(inst, "hugetlb"), pathf("%s/unified/c1", hy.root),
		  "hugetlb routes to v2 on hybrid");
	TAP_OK(cgroup_instance_path(inst, "rdma") == NULL, "unknown controller -> NULL");
	cgroup_instance_free(inst);
	cgroup_manager_free(v1.mgr);
	cgroup_manager_free(v2.mgr);
	cgroup_manager_free(hy.mgr);
}

static void test_paths(void)
{
	struct fake f, g;
	fake_build(&f, "paths", L_V1, NULL);
	fake_build(&g, "paths-v2", L_V2, NULL);
	struct cella_err err = { 0 };
	struct cgroup_instance *i = NULL;

	TAP_OK(cgroup_instance_lookup(f.mgr, NULL, "abc", &i, &err) == 0, "default path");
	TAP_STREQ(cgroup_instance_path(i, "pids"), pathf("%s/pids/abc", f.root), "NULL -> /<id> (as crun)");
	TAP_STREQ(cgroup_instance_path(i, "memory"), pathf("%s/memory/abc", f.root),
		  "NULL is absolute (not below own cgroup)");
	cgroup_instance_free(i);

	TAP_OK(cgroup_instance_lookup(f.mgr, "/a/b/../c/./d", "x", &i, &err) == 0, "absolute path");
	TAP_STREQ(cgroup_instance_path(i, "cpu"), pathf("%s/cpu,cpuacct/a/c/d", f.root), "absolute cleaned");
	cgroup_instance_free(i);

	TAP_OK(cgroup_instance_lookup(f.mgr, "/../../etc", "x", &i, &err) == 0, "absolute with ..");
	TAP_STREQ(cgroup_instance_path(i, "cpu"), pathf("%s/cpu,cpuacct/etc", f.root), ".. never climbs above root");
	cgroup_instance_free(i);

	TAP_OK(cgroup_instance_lookup(f.mgr, "pods/x", "x", &i, &err) == 0, "relative path");
	TAP_STREQ(cgroup_instance_path(i, "memory"), pathf("%s/memory/user.slice/me/pods/x", f.root),
		  "relative -> below own cgroup (memory)");
	TAP_STREQ(cgroup_instance_path(i, "pids"), pathf("%s/pids/pods/x", f.root),
		  "relative -> below own cgroup (pids at root)");
	cgroup_instance_free(i);

	TAP_OK(cgroup_instance_lookup(f.mgr, "../../x", "x", &i, &err) == 0, "relative with ..");
	TAP_STREQ(cgroup_instance_path(i, "memory"), pathf("%s/memory/user.slice/me/x", f.root),
		  "relative .. stays below own cgroup");
	cgroup_instance_free(i);

	TAP_OK(cgroup_instance_lookup(g.mgr, "k8s/pod1", "x", &i, &err) == 0, "relative on v2");
	TAP_STREQ(cgroup_instance_path(i, "memory"), pathf("%s/user.slice/me/k8s/pod1", g.root),
		  "v2 relative uses 0:: line");
	cgroup_instance_free(i);

	i = NULL;
	TAP_OK(cgroup_instance_lookup(f.mgr, "system.slice:cella:abc", "abc", &i, &err) == -EINVAL && !i,
	       "systemd form rejected");
	TAP_OK(strstr(err.msg, "systemd cgroup driver is not supported") != NULL, "systemd message: %s", err.msg);
	TAP_OK(cgroup_instance_lookup(f.mgr, "/", "abc", &i, &err) == -EINVAL, "root path rejected");
	TAP_STREQ(err.msg, "linux.cgroupsPath: \"/\" names the root cgroup itself", "root path message");
	TAP_OK(cgroup_instance_lookup(f.mgr, NULL, "a/b", &i, &err) == -EINVAL, "id with slash rejected");

	/* A mount whose root is not "/" (inside a cgroup namespace or bind mount). */
	char mi[1024];
	snprintf(mi, sizeof(mi), "40 30 0:40 /user.slice %s/memory rw - cgroup cgroup rw,memory\n", f.root);
	put(pathf("%s/..", f.root), "mountinfo2", mi);
	struct cgroup_manager_opts o = { .mountinfo = pathf("%s/../mountinfo2", f.root),
					 .proc_cgroup = f.proc_cgroup, .root = f.root, .fake = true };
	struct cgroup_manager *m = NULL;
	TAP_OK(cgroup_manager_open(&o, &m, &err) == 0, "manager with nested mount root");
	TAP_OK(m && cgroup_instance_lookup(m, "sub", "x", &i, &err) == 0, "relative on nested mount root");
	TAP_STREQ(i ? cgroup_instance_path(i, "memory") : NULL, pathf("%s/memory/me/sub", f.root),
		  "mount root is stripped from own cgroup");
	cgroup_instance_free(i);
	cgroup_manager_free(m);
	cgroup_manager_free(f.mgr);
	cgroup_manager_free(g.mgr);
}

static void test_v1(void)
{
	struct fake f;
	fake_build(&f, "v1", L_V1, NULL);
	struct oci_resources r;
	full_resources(&r);
	struct oci_device devs[] = { { .path = (char *)"/dev/fuse", .type = 'c', .major = 10, .minor = 229 },
				     { .path = (char *)"/dev/fifo", .type = 'p' } };
	/* A parent that does not exist yet: made (cpuset copied from the root) and removed again. */
	struct cgroup_params p = { .id = "c1", .cgroups_path = "/cella/c1", .resources = &r, .devices = devs,
				   .n_devices = 2 };
	struct cgroup_instance *i = NULL;
	struct cella_err err = { 0 };
	int rc = cgroup_create(f.mgr, &p, 4242, &i, &err);
	TAP_OK(rc == 0, "v1 create: %s", err.msg);
	if (rc < 0)
		return;
	struct cgroup_join join = CGROUP_JOIN_INIT;
	TAP_OK(cgroup_join_open(i, &join, &err) == 0 && join.v2_fd < 0 && !join.fds,
	       "fake tree: no self-join, the runtime enters by cgroup.procs");
	cgroup_join_close(&join);
	char mem[1024];
	snprintf(mem, sizeof(mem), "%s/memory/cella/c1", f.root);
	TAP_STREQ(get(mem, "memory.limit_in_bytes"), "1048576", "memory.limit_in_bytes");
	TAP_STREQ(get(mem, "memory.soft_limit_in_bytes"), "524288", "reservation -> soft_limit");
	TAP_STREQ(get(mem, "memory.memsw.limit_in_bytes"), "2097152", "swap -> memsw");
	TAP_STREQ(get(mem, "memory.swappiness"), "10", "swappiness");
	TAP_STREQ(get(mem, "memory.oom_control"), "1", "disableOOMKiller -> oom_control");
	TAP_STREQ(get(mem, "cgroup.procs"), "4242", "pid moved into memory");
	const char *cpu = pathf("%s/cpu,cpuacct/cella/c1", f.root);
	TAP_STREQ(get(cpu, "cpu.shares"), "512", "cpu.shares");
	TAP_STREQ(get(cpu, "cpu.cfs_period_us"), "100000", "cfs_period_us");
	TAP_STREQ(get(cpu, "cpu.cfs_quota_us"), "50000", "cfs_quota_us");
	TAP_STREQ(get(cpu, "cpu.rt_runtime_us"), "", "rt untouched when unset");
	const char *cs = pathf("%s/cpuset/cella/c1", f.root);
	TAP_STREQ(get(pathf("%s/cpuset/cella", f.root), "cpuset.cpus"), "0-3", "cpuset parent copied from root");
	TAP_STREQ(get(pathf("%s/cpuset/cella", f.root), "cpuset.mems"), "0", "cpuset.mems parent copied");
	TAP_STREQ(get(cs, "cpuset.cpus"), "0-3\n0-1", "cpuset.cpus: inherited, then the config value");
	TAP_STREQ(get(cs, "cpuset.mems"), "0\n0", "cpuset.mems: inherited, then the config value");
	TAP_STREQ(get(pathf("%s/pids/cella/c1", f.root), "pids.max"), "100", "pids.max");
	const char *dv = pathf("%s/devices/cella/c1", f.root);
	TAP_STREQ(get(dv, "devices.deny"), "a *:* rwm\nb 8:0 w", "devices.deny: all first, then config denies");
	char want[1024];
	snprintf(want, sizeof(want), "c 4:* rw\n%s\nc 10:229 rwm", default_allow);
	TAP_STREQ(get(dv, "devices.allow"), want, "devices.allow: config, defaults, linux.devices");
	const char *bl = pathf("%s/blkio/cella/c1", f.root);
	TAP_STREQ(get(bl, "blkio.weight"), "500", "blkio.weight");
	TAP_STREQ(get(bl, "blkio.leaf_weight"), "400", "blkio.leaf_weight");
	TAP_STREQ(get(bl, "blkio.weight_device"), "8:0 300", "blkio.weight_device");
	TAP_STREQ(get(bl, "blkio.leaf_weight_device"), "8:0 200", "blkio.leaf_weight_device");
	TAP_STREQ(get(bl, "blkio.throttle.read_bps_device"), "8:0 1048576", "throttle read bps");
	TAP_STREQ(get(bl, "blkio.throttle.write_iops_device"), "8:16 100", "throttle write iops");
	TAP_STREQ(get(pathf("%s/hugetlb/cella/c1", f.root), "hugetlb.2MB.limit_in_bytes"), "4194304", "hugetlb");
	TAP_STREQ(get(pathf("%s/systemd/cella/c1", f.root), "cgroup.procs"), "4242", "pid in name=systemd");

	pid_t *pids = NULL;
	size_t n = 0;
	TAP_OK(cgroup_get_pids(i, &pids, &n, &err) == 0 && n == 1 && pids[0] == 4242, "get_pids deduplicates");
	free(pids);
	TAP_OK(cgroup_enter(i, 77, &err) == 0, "enter");
	mkdir(pathf("%s/freezer/cella/c1/nested", f.root), 0755);
	put(pathf("%s/freezer/cella/c1/nested", f.root), "cgroup.procs", "99\n");
	TAP_OK(cgroup_get_pids(i, &pids, &n, &err) == 0 && n == 3 && pids[0] == 77 && pids[1] == 99 &&
		       pids[2] == 4242,
	       "get_pids includes entered and nested pids, sorted (n=%zu)", n);
	free(pids);
	TAP_OK(cgroup_freeze(i, true, &err) == 0, "freeze (v1 freezer.state): %s", err.msg);
	TAP_STREQ(get(pathf("%s/freezer/cella/c1", f.root), "freezer.state"), "FROZEN", "FROZEN written");
	TAP_OK(cgroup_freeze(i, false, &err) == 0, "thaw");

	/* state round trip, then destroy from the loaded copy */
	_cleanup_free_ char *saved = cgroup_instance_save(i);
	TAP_OK(saved && strstr(saved, "\"mode\":\"v1\""), "save: %s", saved ? saved : "(null)");
	struct cgroup_instance *j = NULL;
	TAP_OK(cgroup_instance_load(f.mgr, saved, &j, &err) == 0, "load: %s", err.msg);
	TAP_STREQ(j ? cgroup_instance_path(j, "memory") : NULL, mem, "loaded paths match");
	TAP_OK(cgroup_destroy(j, &err) == 0, "destroy: %s", err.msg);
	TAP_OK(count_container_dirs(&f, L_V1) == 0, "nothing left in any hierarchy (incl. nested and /cella)");
	TAP_OK(cgroup_destroy(i, &err) == 0, "destroy again: already gone is fine");
	cgroup_instance_free(i);
	cgroup_instance_free(j);

	TAP_OK(cgroup_instance_load(f.mgr, "{\"mode\":\"v1\",\"dirs\":[{\"type\":\"v1\",\"controllers\":\"memory\","
					   "\"mount\":\"/etc\",\"path\":\"/etc/x\",\"rel\":\"/x\",\"created\":1}]}",
				    &j, &err) == -EINVAL,
	       "load rejects a path outside the cgroup mounts");
	TAP_OK(strstr(err.msg, "is not a cgroup directory of this host") != NULL, "load message: %s", err.msg);
	TAP_OK(cgroup_instance_load(f.mgr, "{\"dirs\": 3}", &j, &err) < 0, "load rejects bad JSON shape");
	cgroup_manager_free(f.mgr);
}

static void test_v1_memory_cases(void)
{
	struct fake f, g;
	fake_build(&f, "v1mem", L_V1, NULL);
	fake_build(&g, "v1nosw", L_V1, "memory/memory.memsw.limit_in_bytes");
	struct oci_resources r;
	memset(&r, 0, sizeof(r));
	r.has_memory = true;
	r.memory.limit = (struct oci_opt_i64){ true, -1 };
	struct cgroup_params p = { .id = "m1", .resources = &r, .skip_devices = true };
	struct cgroup_instance *i = NULL;
	struct cella_err err = { 0 };
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == 0, "limit -1");
	const char *mem = pathf("%s/memory/m1", f.root);
	TAP_STREQ(get(mem, "memory.limit_in_bytes"), "-1", "limit -1 written as -1");
	TAP_STREQ(get(mem, "memory.memsw.limit_in_bytes"), "-1", "unlimited memory makes swap unlimited (first)");
	TAP_STREQ(get(mem, "cgroup.procs"), "", "pid 0: nobody moved");
	TAP_STREQ(get(pathf("%s/devices/m1", f.root), "devices.deny"), "", "skip_devices leaves devices alone");
	cgroup_destroy(i, NULL);
	cgroup_instance_free(i);

	/* no swap accounting: swap == limit is fine, a real swap limit is an error */
	r.memory.limit = (struct oci_opt_i64){ true, 1048576 };
	r.memory.swap = (struct oci_opt_i64){ true, 1048576 };
	TAP_OK(cgroup_create(g.mgr, &p, 0, &i, &err) == 0, "no memsw file, swap == limit: ok (%s)", err.msg);
	cgroup_destroy(i, NULL);
	cgroup_instance_free(i);
	r.memory.swap = (struct oci_opt_i64){ true, 4194304 };
	i = NULL;
	TAP_OK(cgroup_create(g.mgr, &p, 0, &i, &err) == -ENOTSUP && !i, "no memsw file, real swap limit: error");
	TAP_OK(strstr(err.msg, "linux.resources.memory.swap: swap limit not supported") != NULL, "message: %s",
	       err.msg);
	TAP_OK(count_container_dirs(&g, L_V1) == 0, "failed create left nothing");

	/* validation happens before anything is created */
	r.memory.swap = (struct oci_opt_i64){ true, 1000 };
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == -EINVAL, "swap below limit rejected");
	r.memory.swap.set = false;
	r.memory.swappiness = (struct oci_opt_u64){ true, 101 };
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == -EINVAL, "swappiness 101 rejected");
	TAP_STREQ(err.msg, "linux.resources.memory.swappiness: invalid value 101 (must be 0 to 100)", "swappiness msg");
	r.memory.swappiness.set = false;
	r.memory.limit = (struct oci_opt_i64){ true, -5 };
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == -EINVAL, "limit -5 rejected");
	TAP_STREQ(err.msg, "linux.resources.memory.limit: invalid value -5 (use -1 for unlimited)", "limit msg");
	memset(&r, 0, sizeof(r));
	r.has_cpu = true;
	r.cpu.cpus = (char *)"a-b";
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == -EINVAL, "bad cpus rejected");
	TAP_STREQ(err.msg, "linux.resources.cpu.cpus: invalid cpu list \"a-b\"", "cpus message");
	r.cpu.cpus = NULL;
	r.cpu.quota = (struct oci_opt_i64){ true, -1 };
	r.cpu.period = (struct oci_opt_u64){ true, 20000 };
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == 0, "quota -1");
	TAP_STREQ(get(pathf("%s/cpu,cpuacct/m1", f.root), "cpu.cfs_quota_us"), "-1", "quota -1 -> -1");
	cgroup_destroy(i, NULL);
	cgroup_instance_free(i);
	memset(&r, 0, sizeof(r));
	r.n_unified = 1;
	struct oci_kv kv = { (char *)"memory.high", (char *)"1000" };
	r.unified = &kv;
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == -ENOTSUP, "unified on pure v1 rejected");
	TAP_STREQ(err.msg, "linux.resources.unified: cgroup v2 is not available on this host", "unified v1 message");
	TAP_OK(count_container_dirs(&f, L_V1) == 0, "nothing left after the failures");
	cgroup_manager_free(f.mgr);
	cgroup_manager_free(g.mgr);
}

static void test_cleanup_on_failure(void)
{
	struct fake f;
	fake_build(&f, "fail", L_V1, NULL);
	/* Replace memory.limit_in_bytes in the hierarchy root by a directory: the new cgroup has no
	 * such file, so the write fails after several hierarchies were created. */
	char mroot[1024];
	snprintf(mroot, sizeof(mroot), "%s/memory", f.root);
	unlink(pathf("%s/memory.limit_in_bytes", mroot));
	mkdir(pathf("%s/memory.limit_in_bytes", mroot), 0755);
	mkdir(pathf("%s/cpu,cpuacct/pods", f.root), 0755); /* a pre-existing parent */
	struct oci_resources r;
	full_resources(&r);
	struct cgroup_params p = { .id = "bad", .cgroups_path = "/pods/bad", .resources = &r };
	struct cgroup_instance *i = NULL;
	struct cella_err err = { 0 };
	int rc = cgroup_create(f.mgr, &p, 1, &i, &err);
	TAP_OK(rc == -ENOENT && !i, "write failure fails create (rc %d)", rc);
	char want[1024];
	snprintf(want, sizeof(want),
		 "cgroup v1 memory: write memory.limit_in_bytes=1048576 in %s/memory/pods/bad: No such file or directory",
		 f.root);
	TAP_STREQ(err.msg, want, "error names controller, file, value and directory");
	TAP_OK(!exists(pathf("%s/memory/pods", f.root)) && !exists(pathf("%s/pids/pods", f.root)) &&
		       !exists(pathf("%s/systemd/pods", f.root)),
	       "created dirs (and parents we made) removed in every hierarchy");
	TAP_OK(exists(pathf("%s/cpu,cpuacct/pods", f.root)) && !exists(pathf("%s/cpu,cpuacct/pods/bad", f.root)),
	       "pre-existing parent kept, our leaf removed");
	rmdir(pathf("%s/cpu,cpuacct/pods", f.root));
	p.cgroups_path = NULL;
	rmdir(pathf("%s/memory.limit_in_bytes", mroot));
	put(mroot, "memory.limit_in_bytes", "");

	/* A later failure: unsupported huge page size after memory/cpu/pids were written. */
	static struct oci_hugepage_limit h4[] = { { (char *)"4MB", 4194304 } };
	r.hugepage_limits = h4;
	rc = cgroup_create(f.mgr, &p, 1, &i, &err);
	TAP_OK(rc == -ENOTSUP, "unsupported page size fails");
	TAP_OK(strstr(err.msg, "linux.resources.hugepageLimits[0].pageSize: page size \"4MB\" is not supported") != NULL,
	       "page size message: %s", err.msg);
	TAP_OK(count_container_dirs(&f, L_V1) == 0, "nothing left after the late failure");

	/* Two containers at the default paths: destroying one leaves the other alone. */
	struct cgroup_params pa = { .id = "a" }, pb = { .id = "b" };
	struct cgroup_instance *a = NULL, *b = NULL;
	TAP_OK(cgroup_create(f.mgr, &pa, 0, &a, &err) == 0 && cgroup_create(f.mgr, &pb, 0, &b, &err) == 0,
	       "two containers");
	TAP_OK(cgroup_destroy(a, &err) == 0 && !exists(pathf("%s/pids/a", f.root)) && exists(pathf("%s/pids/b", f.root)),
	       "destroy a keeps b");
	TAP_OK(cgroup_destroy(b, &err) == 0 && count_container_dirs(&f, L_V1) == 0, "destroy b: nothing left");
	cgroup_instance_free(a);
	cgroup_instance_free(b);

	/* lookup (delete --force after a crash) finds and removes what create made */
	TAP_OK(cgroup_create(f.mgr, &pa, 0, &a, &err) == 0, "create again");
	cgroup_instance_free(a); /* the runtime "crashed": no saved state */
	TAP_OK(cgroup_instance_lookup(f.mgr, NULL, "a", &a, &err) == 0 && cgroup_destroy(a, &err) == 0,
	       "lookup + destroy");
	TAP_OK(count_container_dirs(&f, L_V1) == 0, "nothing left after lookup + destroy");
	cgroup_instance_free(a);
	cgroup_manager_free(f.mgr);
}

static void test_v2(void)
{
	struct fake f;
	fake_build(&f, "v2", L_V2, NULL);
	struct oci_resources r;
	full_resources(&r);
	struct oci_kv kv[] = { { (char *)"memory.high", (char *)"900000" }, { (char *)"cgroup.max.depth", (char *)"3" } };
	r.unified = kv;
	r.n_unified = 2;
	struct cgroup_params p = { .id = "c2", .cgroups_path = "/cella/c2", .resources = &r };
	struct cgroup_instance *i = NULL;
	struct cella_err err = { 0 };
	int rc = cgroup_create(f.mgr, &p, 4242, &i, &err);
	TAP_OK(rc == 0, "v2 create: %s", err.msg);
	if (rc < 0)
		return;
	const char *d = pathf("%s/cella/c2", f.root);
	TAP_STREQ(get(d, "memory.max"), "1048576", "memory.max");
	TAP_STREQ(get(d, "memory.low"), "524288", "reservation -> memory.low");
	TAP_STREQ(get(d, "memory.swap.max"), "1048576", "memory.swap.max = swap - limit");
	TAP_STREQ(get(d, "memory.high"), "900000", "unified key written verbatim");
	TAP_STREQ(get(d, "cgroup.max.depth"), "3", "unified cgroup.* key");
	TAP_STREQ(get(d, "cpu.weight"), "20", "shares 512 -> cpu.weight 20");
	TAP_STREQ(get(d, "cpu.max"), "50000 100000", "cpu.max quota period");
	TAP_STREQ(get(d, "cpuset.cpus"), "0-1", "cpuset.cpus");
	TAP_STREQ(get(d, "cpuset.mems"), "0", "cpuset.mems");
	TAP_STREQ(get(d, "pids.max"), "100", "pids.max");
	TAP_STREQ(get(d, "io.weight"), "default 4950\n8:0 2930", "blkio weight 500 -> io.weight 4950, device 300 -> 2930");
	TAP_STREQ(get(d, "io.max"), "8:0 rbps=1048576\n8:16 wiops=100", "throttles -> io.max");
	TAP_STREQ(get(d, "hugetlb.2MB.max"), "4194304", "hugetlb.2MB.max");
	TAP_STREQ(get(d, "cgroup.procs"), "4242", "pid moved");
	TAP_OK(strstr(get(f.root, "cgroup.subtree_control"), "+memory") &&
		       strstr(get(f.root, "cgroup.subtree_control"), "+cpuset") &&
		       strstr(get(pathf("%s/cella", f.root), "cgroup.subtree_control"), "+pids"),
	       "controllers enabled in root and /cella");
	TAP_STREQ(get(d, "cgroup.subtree_control"), "", "leaf subtree_control untouched");
	TAP_OK(cgroup_freeze(i, true, &err) == 0 && !strcmp(get(d, "cgroup.freeze"), "1"), "v2 freeze writes 1");
	TAP_OK(cgroup_destroy(i, &err) == 0, "v2 destroy");
	TAP_OK(count_container_dirs(&f, L_V2) == 0, "v2: nothing left");
	cgroup_instance_free(i);

	/* cpu.max formats and the -1 forms */
	static const struct { bool qs; long long q; bool ps; unsigned long long per; const char *want; } cm[] = {
		{ true, 25000, false, 0, "25000 100000" }, { true, -1, false, 0, "max 100000" },
		{ false, 0, true, 20000, "max 20000" }, { true, -1, true, 50000, "max 50000" },
		{ true, 1000, true, 10000, "1000 10000" },
	};
	for (size_t k = 0; k < ARRAY_SIZE(cm); k++) {
		memset(&r, 0, sizeof(r));
		r.has_cpu = true;
		r.cpu.quota = (struct oci_opt_i64){ cm[k].qs, cm[k].q };
		r.cpu.period = (struct oci_opt_u64){ cm[k].ps, cm[k].per };
		struct cgroup_params q = { .id = "c3", .resources = &r, .skip_devices = true };
		rc = cgroup_create(f.mgr, &q, 0, &i, &err);
		TAP_STREQ(rc == 0 ? get(pathf("%s/c3", f.root), "cpu.max") : err.msg, cm[k].want, "cpu.max \"%s\"",
			  cm[k].want);
		if (rc == 0) {
			cgroup_destroy(i, NULL);
			cgroup_instance_free(i);
		}
	}
	memset(&r, 0, sizeof(r));
	r.has_memory = true;
	r.memory.limit = (struct oci_opt_i64){ true, -1 };
	r.memory.reservation = (struct oci_opt_i64){ true, -1 };
	r.has_pids = true;
	r.pids.limit = (struct oci_opt_i64){ true, -1 };
	struct cgroup_params q = { .id = "c4", .resources = &r };
	TAP_OK(cgroup_create(f.mgr, &q, 0, &i, &err) == 0, "unlimited values");
	d = pathf("%s/c4", f.root);
	TAP_STREQ(get(d, "memory.max"), "max", "limit -1 -> max");
	TAP_STREQ(get(d, "memory.low"), "max", "reservation -1 -> max");
	TAP_STREQ(get(d, "memory.swap.max"), "max", "limit -1 and no swap -> swap max");
	TAP_STREQ(get(d, "pids.max"), "max", "pids -1 -> max");
	cgroup_destroy(i, NULL);
	cgroup_instance_free(i);
	r.pids.limit = (struct oci_opt_i64){ true, 0 };
	r.has_memory = false;
	TAP_OK(cgroup_create(f.mgr, &q, 0, &i, &err) == 0 && !strcmp(get(d, "pids.max"), "max"), "pids 0 -> max");
	cgroup_destroy(i, NULL);
	cgroup_instance_free(i);

	/* bad input */
	memset(&r, 0, sizeof(r));
	r.has_cpu = true;
	r.cpu.realtime_runtime = (struct oci_opt_i64){ true, 1000 };
	TAP_OK(cgroup_create(f.mgr, &q, 0, &i, &err) == -ENOTSUP, "realtime on v2 rejected");
	TAP_OK(strstr(err.msg, "not supported on cgroup v2") != NULL, "realtime message: %s", err.msg);
	static const char *bad_keys[] = { "../memory.max", "cgroup.procs", "memory", ".hidden", "cgroup.subtree_control",
					  "a/b.c", NULL };
	for (size_t k = 0; bad_keys[k]; k++) {
		memset(&r, 0, sizeof(r));
		struct oci_kv bk = { (char *)bad_keys[k], (char *)"1" };
		r.unified = &bk;
		r.n_unified = 1;
		TAP_OK(cgroup_create(f.mgr, &q, 0, &i, &err) == -EINVAL, "unified key \"%s\" rejected: %s", bad_keys[k],
		       err.msg);
	}
	memset(&r, 0, sizeof(r));
	struct oci_kv nk = { (char *)"rdma.max", (char *)"1" };
	r.unified = &nk;
	r.n_unified = 1;
	TAP_OK(cgroup_create(f.mgr, &q, 0, &i, &err) == -ENOENT, "unified key without file rejected");
	TAP_OK(strstr(err.msg, "linux.resources.unified.\"rdma.max\": no such file") != NULL, "message: %s", err.msg);
	TAP_OK(count_container_dirs(&f, L_V2) == 0, "v2: nothing left after failures");
	cgroup_manager_free(f.mgr);
}

static void test_hybrid(void)
{
	struct fake f;
	fake_build(&f, "hybrid", L_HYBRID, NULL);
	struct oci_resources r;
	full_resources(&r);
	struct oci_kv kv = { (char *)"hugetlb.1GB.max", (char *)"0" };
	r.unified = &kv;
	r.n_unified = 1;
	struct cgroup_params p = { .id = "h1", .resources = &r };
	struct cgroup_instance *i = NULL;
	struct cella_err err = { 0 };
	int rc = cgroup_create(f.mgr, &p, 4242, &i, &err);
	TAP_OK(rc == 0, "hybrid create: %s", err.msg);
	if (rc < 0)
		return;
	const char *u = pathf("%s/unified/h1", f.root);
	TAP_STREQ(get(pathf("%s/memory/h1", f.root), "memory.limit_in_bytes"), "1048576", "memory via v1");
	TAP_STREQ(get(pathf("%s/cpu,cpuacct/h1", f.root), "cpu.shares"), "512", "cpu via v1");
	TAP_STREQ(get(pathf("%s/pids/h1", f.root), "pids.max"), "100", "pids via v1");
	TAP_OK(strstr(get(pathf("%s/devices/h1", f.root), "devices.allow"), "c 1:3 rwm") != NULL,
	       "devices via v1");
	TAP_STREQ(get(u, "hugetlb.2MB.max"), "4194304", "hugetlb (v2 only) via v2");
	TAP_STREQ(get(u, "hugetlb.1GB.max"), "0", "unified key for a v2-only controller");
	TAP_STREQ(get(u, "cgroup.procs"), "4242", "pid also in the v2 dir");
	TAP_STREQ(get(pathf("%s/unified", f.root), "cgroup.subtree_control"), "+hugetlb",
		  "only the needed v2 controller enabled in the unified root");
	TAP_OK(cgroup_destroy(i, &err) == 0 && count_container_dirs(&f, L_HYBRID) == 0,
	       "hybrid destroy removes v1 dirs and the v2 dir");
	cgroup_instance_free(i);

	memset(&r, 0, sizeof(r));
	struct oci_kv mk = { (char *)"memory.high", (char *)"1" };
	r.unified = &mk;
	r.n_unified = 1;
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == -ENOTSUP, "unified key for a v1 controller rejected");
	TAP_STREQ(err.msg,
		  "linux.resources.unified.\"memory.high\": the memory controller is managed by cgroup v1 on this "
		  "(hybrid) host",
		  "hybrid unified message");
	memset(&r, 0, sizeof(r));
	p.resources = NULL;
	TAP_OK(cgroup_create(f.mgr, &p, 0, &i, &err) == 0, "no resources: only default device rules");
	TAP_STREQ(get(pathf("%s/unified", f.root), "cgroup.subtree_control"), "+hugetlb",
		  "nothing more enabled without a need");
	cgroup_destroy(i, NULL);
	cgroup_instance_free(i);
	TAP_OK(count_container_dirs(&f, L_HYBRID) == 0, "hybrid: nothing left");
	cgroup_manager_free(f.mgr);
}

/* ---------- v2 device program ---------- */

/* Runs the device program for (type, access, major, minor); returns r0 or -1 on a bad program. */
static int bpf_run(const struct bpf_insn *p, size_t n, unsigned type, unsigned access, unsigned major, unsigned minor)
{
	uint32_t ctx[3] = { (access << 16) | type, major, minor };
	uint64_t r[11] = { 0 };
	for (size_t pc = 0, steps = 0; pc < n && steps < 10000; pc++, steps++) {
		const struct bpf_insn *i = &p[pc];
		switch (i->code) {
		case BPF_LDX | BPF_MEM | BPF_W:
			if (i->src_reg != 1 || i->off < 0 || i->off > 8 || i->off % 4)
				return -1;
			r[i->dst_reg] = ctx[i->off / 4];
			break;
		case BPF_ALU64 | BPF_AND | BPF_K: r[i->dst_reg] &= (uint64_t)(int64_t)i->imm; break;
		case BPF_ALU64 | BPF_RSH | BPF_K: r[i->dst_reg] >>= i->imm; break;
		case BPF_ALU64 | BPF_MOV | BPF_X: r[i->dst_reg] = r[i->src_reg]; break;
		case BPF_ALU64 | BPF_MOV | BPF_K: r[i->dst_reg] = (uint64_t)(int64_t)i->imm; break;
		case BPF_JMP | BPF_JNE | BPF_K:
			if (r[i->dst_reg] != (uint64_t)(int64_t)i->imm)
				pc += (size_t)i->off;
			break;
		case BPF_JMP | BPF_EXIT: return (int)r[0];
		default: return -1;
		}
	}
	return -1;
}

static void test_bpf(void)
{
	struct oci_resources r;
	memset(&r, 0, sizeof(r));
	r.devices = dev_rules; /* allow c 4:* rw, deny b 8:0 w */
	r.n_devices = ARRAY_SIZE(dev_rules);
	struct cgroup_params p = { .id = "x", .resources = &r };
	struct cg_dev_rule *rules = NULL;
	size_t n = 0;
	TAP_OK(cg_device_rules(&p, &rules, &n, NULL) == 0 && n == 1 + 2 + 12, "rule list: deny-all + 2 + 12 defaults");
	char s[64];
	cg_dev_rule_string(&rules[0], s, sizeof(s));
	TAP_STREQ(s, "a *:* rwm", "first rule denies all");
	struct bpf_insn *prog = NULL;
	size_t len = 0;
	TAP_OK(cg_bpf_build(rules, n, &prog, &len, NULL) == 0 && len > 10, "program built (%zu insns)", len);
	enum { B = BPF_DEVCG_DEV_BLOCK, C = BPF_DEVCG_DEV_CHAR, M = BPF_DEVCG_ACC_MKNOD, R = BPF_DEVCG_ACC_READ,
	       W = BPF_DEVCG_ACC_WRITE };
	static const struct { unsigned t, a, maj, min; int want; const char *what; } cases[] = {
		{ C, R | W, 1, 3, 1, "/dev/null rw allowed" },   { C, R, 1, 9, 1, "/dev/urandom r allowed" },
		{ C, M, 7, 7, 1, "mknod any char allowed" },      { B, M, 8, 0, 1, "mknod any block allowed" },
		{ B, R, 8, 0, 0, "block read denied" },           { C, R | W, 4, 1, 1, "config allow c 4:* rw" },
		{ C, M | R, 4, 1, 0, "c 4:* lacks m: read+mknod must use the mknod rule... denied as a whole" },
		{ C, R, 136, 5, 1, "pts allowed" },               { C, R | W, 10, 200, 1, "tun allowed" },
		{ C, R, 10, 201, 0, "misc 10:201 denied" },       { C, W, 2, 0, 0, "unknown char denied" },
	};
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++)
		TAP_OK(bpf_run(prog, len, cases[k].t, cases[k].a, cases[k].maj, cases[k].min) == cases[k].want, "bpf: %s",
		       cases[k].what);
	free(prog);
	free(rules);

	/* Later rules win: deny after allow, allow-all at the end */
	struct cg_dev_rule two[] = { { false, 'a', -1, -1, "rwm" }, { true, 'c', 1, 3, "rwm" },
				     { false, 'c', 1, 3, "w" } };
	TAP_OK(cg_bpf_build(two, 3, &prog, &len, NULL) == 0, "build small");
	TAP_OK(bpf_run(prog, len, C, R, 1, 3) == 1 && bpf_run(prog, len, C, W, 1, 3) == 0, "later deny w wins over allow");
	free(prog);
	struct cg_dev_rule all[] = { { false, 'a', -1, -1, "rwm" }, { true, 'a', -1, -1, "rwm" } };
	TAP_OK(cg_bpf_build(all, 2, &prog, &len, NULL) == 0 && len == 6 + 2, "allow-all ends the search (nothing unreachable)");
	TAP_OK(bpf_run(prog, len, B, W, 8, 0) == 1, "allow-all allows");
	free(prog);
}

/* update and stats (runtime/cgroup_ctl.c) on v1 and v2 fakes. */
static void test_update_stats(void)
{
	struct fake f1, f2;
	fake_build(&f1, "upd-v1", L_V1, NULL);
	fake_build(&f2, "upd-v2", L_V2, NULL);
	struct cella_err err = { 0 };
	struct cgroup_params p = { .id = "u1", .skip_devices = true };
	struct cgroup_instance *i1 = NULL, *i2 = NULL;
	TAP_OK(f1.mgr && cgroup_create(f1.mgr, &p, 0, &i1, &err) == 0, "update: v1 create (%s)", err.msg);
	TAP_OK(f2.mgr && cgroup_create(f2.mgr, &p, 0, &i2, &err) == 0, "update: v2 create (%s)", err.msg);
	if (!i1 || !i2)
		return;
	struct oci_resources r;
	memset(&r, 0, sizeof(r));
	r.has_memory = true;
	r.memory.limit = (struct oci_opt_i64){ true, 1 << 20 };
	r.has_pids = true;
	r.pids.limit = (struct oci_opt_i64){ true, 5 };
	r.has_cpu = true;
	r.cpu.quota = (struct oci_opt_i64){ true, 20000 };
	r.cpu.shares = (struct oci_opt_u64){ true, 512 };
	TAP_OK(cgroup_update(i1, &r, &err) == 0, "update v1 (%s)", err.msg);
	const char *mem = cgroup_instance_path(i1, "memory"), *cpu = cgroup_instance_path(i1, "cpu");
	TAP_STREQ(get(mem, "memory.limit_in_bytes"), "1048576", "update v1: memory.limit_in_bytes");
	TAP_STREQ(get(cgroup_instance_path(i1, "pids"), "pids.max"), "5", "update v1: pids.max");
	TAP_STREQ(get(cpu, "cpu.cfs_quota_us"), "20000", "update v1: cpu.cfs_quota_us");
	TAP_STREQ(get(cpu, "cpu.shares"), "512", "update v1: cpu.shares");
	TAP_OK(cgroup_update(i2, &r, &err) == 0, "update v2 (%s)", err.msg);
	const char *v2 = cgroup_instance_path(i2, "memory");
	TAP_STREQ(get(v2, "memory.max"), "1048576", "update v2: memory.max");
	TAP_STREQ(get(v2, "pids.max"), "5", "update v2: pids.max");
	TAP_STREQ(get(v2, "cpu.max"), "20000 100000", "update v2: quota alone keeps the default period");
	char w[32];
	snprintf(w, sizeof(w), "%llu", cgroup_shares_to_weight(512));
	TAP_STREQ(get(v2, "cpu.weight"), w, "update v2: shares -> cpu.weight");
	memset(&r, 0, sizeof(r));
	r.has_cpu = true;
	r.cpu.cpus = (char *)"x";
	TAP_OK(cgroup_update(i1, &r, &err) == -EINVAL, "update: bad cpu list rejected");

	/* stats */
	put(cpu, "cpuacct.usage", "12345");
	put(cpu, "cpuacct.usage_percpu", "12000 345 ");
	put(cpu, "cpu.stat", "nr_periods 4\nnr_throttled 1\nthrottled_time 99\n");
	put(mem, "memory.usage_in_bytes", "4096");
	put(mem, "memory.stat", "cache 10\nrss 20\n");
	put(cgroup_instance_path(i1, "pids"), "pids.current", "3");
	put(cgroup_instance_path(i1, "pids"), "pids.max", "max");
	json_t *s = NULL;
	TAP_OK(cgroup_stats(i1, &s, &err) == 0 && s, "stats v1");
	TAP_OK(json_integer_value(json_object_get(json_object_get(json_object_get(s, "cpu"), "usage"), "total")) == 12345,
	       "stats v1: cpu.usage.total from cpuacct.usage");
	TAP_OK(json_array_size(json_object_get(json_object_get(json_object_get(s, "cpu"), "usage"), "percpu")) == 2,
	       "stats v1: percpu");
	TAP_OK(json_integer_value(json_object_get(json_object_get(json_object_get(s, "cpu"), "throttling"),
						  "throttledPeriods")) == 1, "stats v1: throttling");
	TAP_OK(json_integer_value(json_object_get(json_object_get(json_object_get(s, "memory"), "usage"), "usage")) == 4096,
	       "stats v1: memory usage");
	TAP_OK(json_integer_value(json_object_get(json_object_get(json_object_get(s, "memory"), "raw"), "rss")) == 20,
	       "stats v1: memory raw");
	TAP_OK(json_integer_value(json_object_get(json_object_get(s, "pids"), "current")) == 3 &&
		       json_integer_value(json_object_get(json_object_get(s, "pids"), "limit")) == 0,
	       "stats v1: pids (max -> 0, as runc)");
	json_decref(s);
	put(v2, "cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 0\n");
	put(v2, "memory.current", "8192");
	put(v2, "memory.max", "max");
	put(v2, "memory.stat", "file 7\nanon 9\n");
	s = NULL;
	TAP_OK(cgroup_stats(i2, &s, &err) == 0 && s, "stats v2");
	json_t *u = json_object_get(json_object_get(s, "cpu"), "usage");
	TAP_OK(json_integer_value(json_object_get(u, "total")) == 5000 &&
		       json_integer_value(json_object_get(u, "user")) == 3000 &&
		       json_integer_value(json_object_get(u, "kernel")) == 2000,
	       "stats v2: cpu.stat usec -> ns");
	json_t *m = json_object_get(s, "memory");
	TAP_OK(json_integer_value(json_object_get(json_object_get(m, "usage"), "usage")) == 8192 &&
		       json_integer_value(json_object_get(json_object_get(m, "usage"), "limit")) == INT64_MAX &&
		       json_integer_value(json_object_get(m, "cache")) == 7,
	       "stats v2: memory.current, max, file -> cache");
	json_decref(s);
	cgroup_destroy(i1, NULL);
	cgroup_destroy(i2, NULL);
	cgroup_instance_free(i1);
	cgroup_instance_free(i2);
	cgroup_manager_free(f1.mgr);
	cgroup_manager_free(f2.mgr);
}

int main(void)
{
	if (!mkdtemp(base_dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_conversions();
	test_detect();
	test_paths();
	test_v1();
	test_v1_memory_cases();
	test_cleanup_on_failure();
	test_v2();
	test_hybrid();
	test_bpf();
	test_update_stats();
	cella_rm_rf(base_dir, NULL);
	return tap_done();
}
