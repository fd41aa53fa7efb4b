/* Cgroup manager on the real host (root only): a forked sleeping child gets a cgroup with memory,
 * pids, cpu quota and cpuset limits; the files are checked in every hierarchy; destroy (with the
 * child still alive) kills it and leaves nothing behind. On a v2 or hybrid host the v2 device
 * BPF program is also loaded and checked against real opens. */
#include "base/err.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/cgroup_internal.h"
#include "runtime/config.h"
#include "runtime/init.h"
#include "tap.h"
#include "cgtest.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* The trimmed content of the file the format names. */
#define readf(...) read_trimmed(pathf(__VA_ARGS__))

static pid_t spawn_sleeper(void)
{
	pid_t pid = fork();
	if (pid == 0) {
		for (;;)
			pause();
	}
	return pid;
}

static void test_lifecycle(struct cgroup_manager *mgr)
{
	char id[64], pidbuf[32];
	snprintf(id, sizeof(id), "cella-host-test-%d", (int)getpid());
	struct oci_resources r;
	memset(&r, 0, sizeof(r));
	r.has_memory = true;
	r.memory.limit = (struct oci_opt_i64){ true, 64 << 20 };
	r.has_pids = true;
	r.pids.limit = (struct oci_opt_i64){ true, 50 };
	r.has_cpu = true;
	r.cpu.quota = (struct oci_opt_i64){ true, 50000 };
	r.cpu.period = (struct oci_opt_u64){ true, 100000 };
	r.cpu.shares = (struct oci_opt_u64){ true, 512 };
	r.cpu.cpus = (char *)"0";
	r.cpu.mems = (char *)"0";
	struct cgroup_params p = { .id = id, .resources = &r };
	pid_t child = spawn_sleeper();
	snprintf(pidbuf, sizeof(pidbuf), "%d", (int)child);
	struct cgroup_instance *inst = NULL;
	struct cella_err err = { 0 };
	int rc = cgroup_create(mgr, &p, child, &inst, &err);
	TAP_OK(rc == 0, "create for child %d: %s", (int)child, err.msg);
	if (rc < 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		return;
	}
	enum cgroup_mode mode = cgroup_manager_mode(mgr);
	const char *mem = cgroup_instance_path(inst, "memory");
	const char *pids = cgroup_instance_path(inst, "pids");
	const char *cpu = cgroup_instance_path(inst, "cpu");
	const char *cpuset = cgroup_instance_path(inst, "cpuset");
	TAP_OK(mem && pids && cpu && cpuset, "memory, pids, cpu, cpuset routed");
	if (mode == CGROUP_MODE_V2) {
		TAP_STREQ(readf("%s/memory.max", mem), "67108864", "memory.max");
		TAP_STREQ(readf("%s/cpu.max", cpu), "50000 100000", "cpu.max");
		TAP_STREQ(readf("%s/cpu.weight", cpu), "20", "cpu.weight");
	} else {
		TAP_STREQ(readf("%s/memory.limit_in_bytes", mem), "67108864", "memory.limit_in_bytes");
		TAP_STREQ(readf("%s/cpu.cfs_quota_us", cpu), "50000", "cpu.cfs_quota_us");
		TAP_STREQ(readf("%s/cpu.cfs_period_us", cpu), "100000", "cpu.cfs_period_us");
		TAP_STREQ(readf("%s/cpu.shares", cpu), "512", "cpu.shares");
		const char *dev = cgroup_instance_path(inst, "devices");
		const char *list = dev ? readf("%s/devices.list", dev) : NULL;
		TAP_OK(list && has_line(list, "c 1:3 rwm") && has_line(list, "c 136:* rwm") && !has_line(list, "a *:* rwm"),
		       "devices.list holds the default allow list only");
	}
	TAP_STREQ(readf("%s/pids.max", pids), "50", "pids.max");
	TAP_STREQ(readf("%s/cpuset.cpus", cpuset), "0", "cpuset.cpus");
	TAP_STREQ(readf("%s/cpuset.mems", cpuset), "0", "cpuset.mems");
	size_t n = cgroup_instance_count(inst);
	size_t in = 0;
	bool v2_seen = false;
	for (size_t i = 0; i < n; i++) {
		struct cgroup_dir_info info;
		cgroup_instance_dir(inst, i, &info);
		const char *procs = readf("%s/cgroup.procs", info.path);
		in += procs && has_line(procs, pidbuf);
		v2_seen |= info.v2;
	}
	TAP_OK(in == n, "child in cgroup.procs of all %zu directories", n);
	TAP_OK(mode == CGROUP_MODE_V1 || v2_seen, "a v2 directory exists (%s host)", cgroup_mode_name(mode));
	const char *selfcg = readf("/proc/%d/cgroup", (int)child);
	char want[128];
	snprintf(want, sizeof(want), ":/%s\n", id);
	TAP_OK(selfcg && strstr(selfcg, want), "/proc/PID/cgroup names /<id>");

	pid_t *list = NULL;
	size_t nl = 0;
	TAP_OK(cgroup_get_pids(inst, &list, &nl, &err) == 0 && nl == 1 && list[0] == child, "get_pids = [child]");
	free(list);
	const char *fz = cgroup_instance_path(inst, "freezer");
	if (fz) {
		TAP_OK(cgroup_freeze(inst, true, &err) == 0, "freeze: %s", err.msg);
		const char *st = readf("%s/freezer.state", fz);
		TAP_STREQ(st, "FROZEN", "freezer.state FROZEN");
		TAP_OK(cgroup_freeze(inst, false, &err) == 0, "thaw: %s", err.msg);
		TAP_STREQ(readf("%s/freezer.state", fz), "THAWED", "freezer.state THAWED");
	} else {
		TAP_OK(cgroup_freeze(inst, true, &err) == 0 && cgroup_freeze(inst, false, &err) == 0, "v2 freeze/thaw: %s",
		       err.msg);
	}

	/* state round trip as `delete` from another process would do it */
	_cleanup_free_ char *saved = cgroup_instance_save(inst);
	struct cgroup_instance *loaded = NULL;
	TAP_OK(saved && cgroup_instance_load(mgr, saved, &loaded, &err) == 0, "save/load: %s", err.msg);

	/* destroy with the child still running: it gets SIGKILL */
	uint64_t t0 = cella_now_ns();
	rc = cgroup_destroy(loaded, &err);
	TAP_OK(rc == 0, "destroy with a live task: %s (%.1f ms)", err.msg, (double)(cella_now_ns() - t0) / 1e6);
	int status = 0;
	TAP_OK(waitpid(child, &status, 0) == child && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	       "child was killed by SIGKILL");
	bool left = false;
	for (size_t i = 0; i < n; i++) {
		struct cgroup_dir_info info;
		cgroup_instance_dir(inst, i, &info);
		if (exists(info.path)) {
			printf("# left behind: %s\n", info.path);
			left = true;
		}
	}
	TAP_OK(!left, "nothing remains in any hierarchy (v2 dir included)");
	cgroup_instance_free(loaded);
	cgroup_instance_free(inst);
}

static void test_host_error(struct cgroup_manager *mgr)
{
	char id[64];
	snprintf(id, sizeof(id), "cella-host-bad-%d", (int)getpid());
	struct oci_resources r;
	memset(&r, 0, sizeof(r));
	r.has_cpu = true;
	r.cpu.cpus = (char *)"1023"; /* valid syntax, no such cpu */
	struct cgroup_params p = { .id = id, .resources = &r };
	struct cgroup_instance *inst = NULL;
	struct cella_err err = { 0 };
	TAP_OK(cgroup_create(mgr, &p, 0, &inst, &err) < 0 && !inst, "cpuset 1023 refused by the kernel");
	TAP_OK(strstr(err.msg, "write cpuset.cpus=1023 in ") != NULL, "message names file and value: %s", err.msg);
	struct cgroup_instance *look = NULL;
	bool left = false;
	if (cgroup_instance_lookup(mgr, NULL, id, &look, NULL) == 0) {
		for (size_t i = 0; i < cgroup_instance_count(look); i++) {
			struct cgroup_dir_info info;
			cgroup_instance_dir(look, i, &info);
			left |= exists(info.path);
		}
		cgroup_instance_free(look);
	}
	TAP_OK(!left, "failed create left nothing");
}

/* The fast way in: a child cloned into the v2 directory that moves its own thread into each v1
 * one, through files the parent opened (as create and exec do). */
static void test_self_join(struct cgroup_manager *mgr)
{
	char id[64];
	snprintf(id, sizeof(id), "cella-host-join-%d", (int)getpid());
	struct cgroup_params p = { .id = id, .skip_devices = true };
	struct cgroup_instance *inst = NULL;
	struct cella_err err = { 0 };
	if (cgroup_create(mgr, &p, 0, &inst, &err) < 0) {
		TAP_OK(false, "create for the join test: %s", err.msg);
		return;
	}
	struct cgroup_join j = CGROUP_JOIN_INIT;
	TAP_OK(cgroup_join_open(inst, &j, &err) == 1, "join files opened: %s", err.msg);
	bool has_v2 = false;
	for (size_t i = 0; i < cgroup_instance_count(inst); i++) {
		struct cgroup_dir_info info;
		cgroup_instance_dir(inst, i, &info);
		has_v2 |= info.v2;
	}
	int pfd[2];
	TAP_OK(pipe(pfd) == 0, "pipe");
	bool in_v2 = false;
	pid_t c = ns_clone(0, j.v2_fd, &in_v2);
	if (c == 0) {
		close(pfd[0]);
		char r = cgroup_join_self(&j, &err) == 0 ? 'y' : 'n';
		if (write(pfd[1], &r, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pfd[1]);
	cgroup_join_close(&j);
	char r = 0;
	TAP_OK(c > 0 && read(pfd[0], &r, 1) == 1 && r == 'y', "child joined its v1 cgroups itself");
	close(pfd[0]);
	TAP_OK(in_v2 == has_v2, "born in the v2 directory (clone3 CLONE_INTO_CGROUP): %s", in_v2 ? "yes" : "no v2 here");
	const char *cg = c > 0 ? readf("/proc/%d/cgroup", (int)c) : NULL;
	char want[128];
	snprintf(want, sizeof(want), ":/%s", id);
	size_t lines = 0, ours = 0;
	for (const char *l = cg; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l)) {
		lines++;
		const char *e = strchr(l, '\n');
		size_t len = e ? (size_t)(e - l) : strlen(l);
		ours += len >= strlen(want) && !strncmp(l + len - strlen(want), want, strlen(want));
	}
	TAP_OK(lines > 0 && ours == cgroup_instance_count(inst), "every hierarchy lists /%s (%zu of %zu lines)", id, ours,
	       lines);
	int status = 0;
	TAP_OK(cgroup_destroy(inst, &err) == 0 && waitpid(c, &status, 0) == c && WIFSIGNALED(status),
	       "destroy kills the joined child: %s", err.msg);
	cgroup_instance_free(inst);
}

/* The v2 device program, attached to a real cgroup2 directory: /dev/null opens, /dev/zero not. */
static void test_bpf_devices(struct cgroup_manager *mgr)
{
	const char *mount = NULL;
	for (size_t i = 0; i < mgr->n; i++)
		if (mgr->h[i].v2)
			mount = mgr->h[i].mount;
	if (!mount) {
		printf("# skip v2 device program: no cgroup2 mount\n");
		return;
	}
	char dir[512], rel[128];
	snprintf(rel, sizeof(rel), "/cella-bpf-test-%d", (int)getpid());
	snprintf(dir, sizeof(dir), "%s%s", mount, rel);
	TAP_OK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
	struct cg_dir d = { .v2 = true, .controllers = (char *)"", .mount = (char *)mount, .path = dir, .rel = rel };
	struct cg_dev_rule rules[] = { { false, 'a', -1, -1, "rwm" }, { true, 'c', 1, 3, "rwm" },
				       { true, 'c', 1, 9, "r" } };
	struct cella_err err = { 0 };
	int rc = cg_v2_devices(&d, false, rules, ARRAY_SIZE(rules), &err);
	TAP_OK(rc == 0, "load + attach device program: %s", err.msg);
	int pfd[2];
	if (rc == 0 && pipe(pfd) == 0) {
		pid_t c = fork();
		if (c == 0) {
			char b = 0;
			if (read(pfd[0], &b, 1) != 1)
				_exit(100);
			int res = 0;
			int fd = open("/dev/null", O_RDWR);
			res |= fd >= 0 ? 1 : 0;
			if (fd >= 0)
				close(fd);
			fd = open("/dev/zero", O_RDONLY);
			res |= fd < 0 && errno == EPERM ? 2 : 0;
			fd = open("/dev/urandom", O_RDONLY);
			res |= fd >= 0 ? 4 : 0;
			fd = open("/dev/urandom", O_WRONLY);
			res |= fd < 0 && errno == EPERM ? 8 : 0;
			_exit(res);
		}
		char pid[32];
		snprintf(pid, sizeof(pid), "%d", (int)c);
		_cleanup_free_ char *procs = cella_path_join(dir, "cgroup.procs");
		TAP_OK(cella_write_file(procs, pid, strlen(pid), 0644, &err) == 0, "child moved into the v2 dir");
		close(pfd[0]);
		TAP_OK(write(pfd[1], "x", 1) == 1, "child released");
		close(pfd[1]);
		int st = 0;
		waitpid(c, &st, 0);
		int res = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		TAP_OK(res & 1, "/dev/null allowed (c 1:3 rwm)");
		TAP_OK(res & 2, "/dev/zero denied with EPERM");
		TAP_OK(res & 4, "/dev/urandom read allowed (c 1:9 r)");
		TAP_OK(res & 8, "/dev/urandom write denied");
	}
	TAP_OK(rmdir(dir) == 0, "rmdir %s (program goes with it)", dir);
}

/* Hybrid: hugetlb lives only in the cgroup2 mount; the limit must land there. */
static void test_hybrid_hugetlb(struct cgroup_manager *mgr)
{
	if (cgroup_manager_mode(mgr) != CGROUP_MODE_HYBRID || access("/sys/kernel/mm/hugepages/hugepages-2048kB", F_OK) < 0) {
		printf("# skip hybrid hugetlb: not a hybrid host with 2MB pages\n");
		return;
	}
	const char *mount = NULL, *ctrls = NULL;
	for (size_t i = 0; i < mgr->n; i++)
		if (mgr->h[i].v2) {
			mount = mgr->h[i].mount;
			ctrls = mgr->h[i].controllers;
		}
	if (!mount || !cg_list_has(ctrls, "hugetlb")) {
		printf("# skip hybrid hugetlb: hugetlb is not a v2 controller here\n");
		return;
	}
	char sc[512];
	snprintf(sc, sizeof(sc), "%s/cgroup.subtree_control", mount);
	const char *before = readf("%s", sc);
	bool was_enabled = before && strstr(before, "hugetlb");
	char id[64];
	snprintf(id, sizeof(id), "cella-host-huge-%d", (int)getpid());
	struct oci_hugepage_limit h = { (char *)"2MB", 4 << 20 };
	struct oci_resources r;
	memset(&r, 0, sizeof(r));
	r.hugepage_limits = &h;
	r.n_hugepage_limits = 1;
	struct cgroup_params p = { .id = id, .resources = &r };
	struct cgroup_instance *inst = NULL;
	struct cella_err err = { 0 };
	int rc = cgroup_create(mgr, &p, 0, &inst, &err);
	TAP_OK(rc == 0, "hybrid create with a hugetlb limit: %s", err.msg);
	if (rc == 0) {
		const char *hp = cgroup_instance_path(inst, "hugetlb");
		TAP_OK(hp && strncmp(hp, mount, strlen(mount)) == 0, "hugetlb routed to the cgroup2 mount: %s", hp);
		TAP_STREQ(hp ? readf("%s/hugetlb.2MB.max", hp) : NULL, "4194304", "hugetlb.2MB.max in the v2 dir");
		TAP_OK(cgroup_destroy(inst, &err) == 0 && !exists(hp), "destroyed");
		cgroup_instance_free(inst);
	}
	if (!was_enabled)
		cella_write_file(sc, "-hugetlb", 8, 0644, NULL); /* leave the host as we found it */
}

int main(void)
{
	if (geteuid() != 0)
		TAP_SKIP_ALL("needs root to create cgroups");
	if (access("/sys/fs/cgroup", F_OK) < 0)
		TAP_SKIP_ALL("no /sys/fs/cgroup");
	struct cgroup_manager *mgr = NULL;
	struct cella_err err = { 0 };
	if (cgroup_manager_open(NULL, &mgr, &err) < 0) {
		printf("# %s\n", err.msg);
		TAP_SKIP_ALL("no cgroup hierarchy on this host");
	}
	printf("# host cgroup mode: %s\n", cgroup_mode_name(cgroup_manager_mode(mgr)));
	test_lifecycle(mgr);
	test_host_error(mgr);
	test_self_join(mgr);
	test_hybrid_hugetlb(mgr);
	test_bpf_devices(mgr);
	cgroup_manager_free(mgr);
	return tap_done();
}
