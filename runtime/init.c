/* The container init: runs in the cloned child, sets everything up, waits for `start` on
 * exec.fifo, and execs process.args. Any failure goes back to the runtime as SYNC_ERROR. */
#include "runtime/init.h"

#include "base/err.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/harden.h"
#include "runtime/hooks.h"
#include "runtime/seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

_Noreturn static void fail(struct init_args *a, struct cella_err *err)
{
	sync_send(a->sync_fd, SYNC_ERROR, err->code ? err->code : EIO, 0, err->msg[0] ? err->msg : "setup failed");
	_exit(1);
}

/* Waits for one message of type want; anything else (or EOF: the runtime died) ends the child. */
static void expect(struct init_args *a, int want)
{
	struct sync_msg m;
	if (sync_recv(a->sync_fd, &m) < 0 || m.type != want)
		_exit(1);
}

static int join_namespaces(struct init_args *a, bool user_first, struct cella_err *err)
{
	if (user_first && a->ns_fds[OCI_NS_USER] >= 0 && setns(a->ns_fds[OCI_NS_USER], CLONE_NEWUSER) < 0)
		return cella_err_sys(err, errno, "join user namespace %s",
				     oci_config_namespace(a->cfg, OCI_NS_USER)->path);
	for (int t = 0; t < OCI_NS_COUNT; t++) {
		if (t == OCI_NS_USER || a->ns_fds[t] < 0)
			continue;
		if (setns(a->ns_fds[t], oci_ns_clone_flag((enum oci_ns_type)t)) < 0)
			return cella_err_sys(err, errno, "join %s namespace %s", oci_ns_type_name((enum oci_ns_type)t),
					     oci_config_namespace(a->cfg, (enum oci_ns_type)t)->path);
	}
	return 0;
}

/* Staged setup (some namespace is joined by path): setns, unshare, and fork when a pid namespace
 * must take effect. Returns in the process that becomes the init. */
static int staged_namespaces(struct init_args *a, struct cella_err *err)
{
	const struct oci_config *cfg = a->cfg;
	bool new_user = oci_config_has_namespace(cfg, OCI_NS_USER) && a->ns_fds[OCI_NS_USER] < 0;
	int r;
	if (a->ns_fds[OCI_NS_USER] >= 0) {
		r = join_namespaces(a, true, err);
	} else {
		/* Join the others while still privileged in the host's user namespace. */
		r = join_namespaces(a, false, err);
	}
	if (r < 0)
		return r;
	if (a->ns_fds[OCI_NS_USER] >= 0 && (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0))
		return cella_err_sys(err, errno, "become root in the joined user namespace");
	if (new_user) {
		if (unshare(CLONE_NEWUSER) < 0)
			return cella_err_sys(err, errno, "unshare user namespace");
		sync_send(a->sync_fd, SYNC_USERMAP, 0, 0, NULL);
		expect(a, SYNC_USERMAP_ACK);
		if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
			return cella_err_sys(err, errno, "become root in the user namespace");
	}
	unsigned long flags = 0;
	for (size_t i = 0; i < cfg->linux_.n_namespaces; i++) {
		const struct oci_namespace *ns = &cfg->linux_.namespaces[i];
		if ((ns->path && *ns->path) || ns->type == OCI_NS_USER || ns->type == OCI_NS_CGROUP)
			continue;
		flags |= (unsigned long)oci_ns_clone_flag(ns->type);
	}
	if (flags && unshare((int)flags) < 0)
		return cella_err_sys(err, errno, "unshare namespaces 0x%lx", flags);
	a->clone_flags = flags | (new_user ? CLONE_NEWUSER : 0);
	if (oci_config_has_namespace(cfg, OCI_NS_PID) || oci_config_has_namespace(cfg, OCI_NS_TIME)) {
		/* A new or joined pid (or time) namespace applies to children only. */
		pid_t pid = fork();
		if (pid < 0)
			return cella_err_sys(err, errno, "fork the init");
		if (pid > 0) {
			sync_send(a->sync_fd, SYNC_PID, 0, pid, NULL);
			_exit(0);
		}
	}
	return 0;
}

/* Loads the seccomp filter; a notify listener fd goes to the runtime at once (a later syscall of
 * ours may be one the listener must answer). */
static int load_filter(struct init_args *a, struct cella_seccomp *filter, struct cella_err *err)
{
	int notify_fd = -1;
	int r = cella_seccomp_load(filter, &notify_fd, err);
	if (r < 0 || notify_fd < 0)
		return r;
	sync_send(a->sync_fd, SYNC_SECCOMP, 0, 0, NULL);
	r = terminal_send_fd(a->sync_fd, notify_fd, "seccomp", err);
	close(notify_fd);
	return r;
}

_Noreturn void container_init(struct init_args *a)
{
	struct cella_err err = { 0 };
	const struct oci_config *cfg = a->cfg;
	const struct oci_process *p = &cfg->process;
	int r;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* First, so that everything the setup uses is accounted to the container. */
	if (a->cgroup_join && cgroup_join_self(a->cgroup_join, &err) < 0)
		fail(a, &err);
	if (a->staged) {
		r = staged_namespaces(a, &err);
		if (r < 0)
			fail(a, &err);
	}
	expect(a, SYNC_GO);
	char *state = NULL;
	if (hooks_init_needs_state(&cfg->hooks) && !(state = hooks_recv_state(a->sync_fd))) {
		cella_err_set(&err, EPROTO, "receive the state for the hooks");
		fail(a, &err);
	}
	if (a->clone_flags & CLONE_NEWUSER) {
		if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) {
			cella_err_sys(&err, errno, "become root in the user namespace");
			fail(a, &err);
		}
	}
	/* The runtime has moved us into the cgroup: a new cgroup namespace is rooted there. */
	const struct oci_namespace *cgns = oci_config_namespace(cfg, OCI_NS_CGROUP);
	if (cgns && !(cgns->path && *cgns->path)) {
		if (unshare(CLONE_NEWCGROUP) < 0) {
			cella_err_sys(&err, errno, "unshare cgroup namespace");
			fail(a, &err);
		}
		a->clone_flags |= CLONE_NEWCGROUP;
	}
	if (setsid() < 0) {
		cella_err_sys(&err, errno, "setsid");
		fail(a, &err);
	}
	/* The host's /proc/self/fd, kept across pivot_root to reopen exec.fifo for writing. */
	int procfd = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (procfd < 0) {
		cella_err_sys(&err, errno, "open /proc/self/fd");
		fail(a, &err);
	}

	if (rootfs_prepare(a, &err) < 0)
		fail(a, &err);
	if (hooks_count(&cfg->hooks, HOOK_PRESTART) || hooks_count(&cfg->hooks, HOOK_CREATE_RUNTIME)) {
		/* prestart/createRuntime run in the runtime namespace, now that our mounts exist. */
		sync_send(a->sync_fd, SYNC_HOOKS, 0, 0, NULL);
		expect(a, SYNC_HOOKS_DONE);
	}
	/* In the container's mount namespace, before pivot_root. */
	if (hooks_run(&cfg->hooks, HOOK_CREATE_CONTAINER, state, &err) < 0)
		fail(a, &err);
	if (rootfs_pivot(a, &err) < 0)
		fail(a, &err);
	if (p->terminal && terminal_setup(p, a->console_fd, false, &err) < 0)
		fail(a, &err);
	if (a->console_fd >= 0)
		close(a->console_fd);
	if (rootfs_finalize(a, &err) < 0)
		fail(a, &err);
	if (process_rlimits(p, &err) < 0)
		fail(a, &err);

	if (harden_chdir(p->cwd ? p->cwd : "/", "process.cwd", &err) < 0)
		fail(a, &err);
	umask(p->user.umask.set ? (mode_t)p->user.umask.v : 0022);
	char **env = process_env(p);
	char *exe = process_find_exec(p->args[0], env, &err);
	if (!env || !exe)
		fail(a, &err);
	/* seccomp: built now (errors still reach the runtime); without no_new_privs it must be loaded
	 * while we still hold CAP_SYS_ADMIN, else as late as possible (right before execve). */
	struct cella_seccomp *filter = NULL;
	if (cfg->linux_.seccomp && cella_seccomp_build(cfg->linux_.seccomp, &filter, &err) < 0)
		fail(a, &err);
	/* A notify listener fd must reach the runtime before READY: no waiting for execve then. */
	bool late = filter && p->no_new_privileges && !cella_seccomp_wants_notify(filter);
	if (filter && !p->no_new_privileges && load_filter(a, filter, &err) < 0)
		fail(a, &err);
	if (process_user_caps(p, &err) < 0)
		fail(a, &err);
	if (p->no_new_privileges && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		cella_err_sys(&err, errno, "process.noNewPrivileges");
		fail(a, &err);
	}
	if (filter && p->no_new_privileges && !late && load_filter(a, filter, &err) < 0)
		fail(a, &err);
	/* Only stdio and --preserve-fds survive exec. */
	syscall(SYS_close_range, 3 + a->preserve_fds, ~0U, CLOSE_RANGE_CLOEXEC);

	/* The runtime exits right after SYNC_ACK: stop tying our life to it first. If it dies before
	 * the ACK, expect() sees EOF and we exit. */
	prctl(PR_SET_PDEATHSIG, 0);
	sync_send(a->sync_fd, SYNC_READY, 0, 0, NULL);
	expect(a, SYNC_ACK);
	close(a->sync_fd);

	/* Blocks until `start` opens the fifo for reading. */
	char name[16];
	snprintf(name, sizeof(name), "%d", a->fifo_fd);
	int wfd;
	do
		wfd = openat(procfd, name, O_WRONLY | O_CLOEXEC);
	while (wfd < 0 && errno == EINTR);
	if (wfd < 0 || write(wfd, "0", 1) != 1) {
		dprintf(STDERR_FILENO, "cella: container init: open exec.fifo: %s\n", strerror(errno));
		_exit(1);
	}
	/* `start` returns as soon as it reads the byte, and a client may look at our fds before the
	 * execve below: hold nothing beyond stdio and --preserve-fds from here on. */
	close(wfd);
	close(procfd);
	close(a->fifo_fd);

	/* Started: startContainer hooks run in the container, before the process. */
	if (hooks_count(&cfg->hooks, HOOK_START_CONTAINER)) {
		json_t *j = json_loads(state, 0, NULL);
		json_object_set_new(j, "status", json_string("running"));
		char *running = j ? json_dumps(j, JSON_COMPACT) : NULL;
		json_decref(j);
		if (hooks_run(&cfg->hooks, HOOK_START_CONTAINER, running ? running : state, &err) < 0) {
			dprintf(STDERR_FILENO, "cella: container init: %s\n", err.msg);
			_exit(1);
		}
		free(running);
	}
	free(state);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (late && cella_seccomp_load(filter, NULL, &err) < 0) {
		dprintf(STDERR_FILENO, "cella: container init: %s\n", err.msg);
		_exit(1);
	}
	execve(exe, p->args, env);
	dprintf(STDERR_FILENO, "cella: exec %s: %s\n", exe, strerror(errno));
	_exit(127);
}
