/* exec: a new process inside a running container.
 *
 * The runtime forks C1, moves it into every cgroup directory of the container, and lets it go;
 * C1 joins the init's namespaces through /proc/<init>/ns (user first: then it holds every
 * capability over the others) and forks C2, which the pid and time namespaces apply to. C1
 * reports C2's host pid and exits; C2 applies the process settings and execs. Its end of the
 * sync socket is close-on-exec, so EOF tells the runtime that the exec happened; anything before
 * that arrives as SYNC_ERROR. The runtime is a subreaper, so the orphaned C2 becomes its child. */
#include "runtime/container_ctl.h"

#include "base/err.h"
#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/config.h"
#include "runtime/container.h"
#include "runtime/init.h"
#include "runtime/names.h"
#include "runtime/harden.h"
#include "runtime/seccomp.h"
#include "runtime/state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* /proc/PID/ns entries in join order: user first, mount last (the others' files are open). */
static const struct {
	const char *name;
	int flag;
} ns_order[] = {
	{ "user", CLONE_NEWUSER }, { "ipc", CLONE_NEWIPC },   { "uts", CLONE_NEWUTS },
	{ "net", CLONE_NEWNET },   { "pid", CLONE_NEWPID },   { "cgroup", CLONE_NEWCGROUP },
	{ "time", CLONE_NEWTIME }, { "mnt", CLONE_NEWNS },
};
#define N_NS ARRAY_SIZE(ns_order)

struct exec_ctx {
	struct container_state *st;
	struct oci_config *cfg;
	struct oci_process proc;
	bool proc_set;
	struct cgroup_manager *mgr;
	struct cgroup_instance *cg;
	struct cgroup_join join;
	int ns_fds[N_NS];
	int console_fd; /* --console-socket, or our end of the foreground tty socketpair's peer */
	int tty_recv;   /* foreground tty: we receive the master here */
	int sync_fd;
	int sigfd;
	pid_t c1, proc_pid;
};

static void ctx_free(struct exec_ctx *c)
{
	for (size_t i = 0; i < N_NS; i++)
		if (c->ns_fds[i] >= 0)
			close(c->ns_fds[i]);
	if (c->console_fd >= 0)
		close(c->console_fd);
	if (c->tty_recv >= 0)
		close(c->tty_recv);
	if (c->sync_fd >= 0)
		close(c->sync_fd);
	if (c->sigfd >= 0)
		close(c->sigfd);
	cgroup_join_close(&c->join);
	if (c->cg)
		cgroup_instance_free(c->cg);
	if (c->mgr)
		cgroup_manager_free(c->mgr);
	if (c->proc_set)
		oci_process_clear(&c->proc);
	oci_config_free(c->cfg);
	state_free(c->st);
}

/* The process document: --process FILE, or config.json's process with the command-line overrides
 * (as runc's getProcess). Parsed by the same code as config.json, so names are validated there. */
static int build_process(struct exec_ctx *c, const struct container_exec_opts *o, struct cella_err *err)
{
	json_t *doc = NULL;
	const char *what = "process";
	if (o->process_file) {
		json_error_t je;
		doc = json_load_file(o->process_file, 0, &je);
		if (!doc)
			return cella_err_set(err, EINVAL, "%s: %s (line %d)", o->process_file, je.text, je.line);
		what = "";
	} else {
		json_t *p = json_object_get(c->cfg->json, "process");
		doc = p ? json_deep_copy(p) : json_object();
		if (!doc)
			return cella_err_set(err, ENOMEM, "exec: process");
		if (!o->args || !o->args[0]) {
			json_decref(doc);
			return cella_err_set(err, EINVAL, "exec: args must not be empty");
		}
		json_t *args = json_array();
		for (char *const *a = o->args; *a; a++)
			json_array_append_new(args, json_string(*a));
		json_object_set_new(doc, "args", args);
		json_object_set_new(doc, "terminal", json_boolean(o->tty));
		if (o->cwd)
			json_object_set_new(doc, "cwd", json_string(o->cwd));
		if (o->n_env) {
			json_t *env = json_object_get(doc, "env");
			if (!json_is_array(env)) {
				env = json_array();
				json_object_set_new(doc, "env", env);
			}
			for (size_t i = 0; i < o->n_env; i++)
				json_array_append_new(env, json_string(o->env[i]));
		}
		json_t *user = json_object_get(doc, "user");
		if (!json_is_object(user)) {
			user = json_object();
			json_object_set_new(doc, "user", user);
		}
		if (o->has_user) {
			json_object_set_new(user, "uid", json_integer(o->uid));
			json_object_set_new(user, "gid", json_integer(o->has_gid ? o->gid : 0));
		}
		if (o->n_additional_gids) {
			json_t *g = json_array();
			for (size_t i = 0; i < o->n_additional_gids; i++)
				json_array_append_new(g, json_integer(o->additional_gids[i]));
			json_object_set_new(user, "additionalGids", g);
		}
		if (o->n_caps) {
			json_t *caps = json_object_get(doc, "capabilities");
			if (!json_is_object(caps)) {
				caps = json_object();
				json_object_set_new(doc, "capabilities", caps);
			}
			static const char *const sets[] = { "bounding", "effective", "permitted" };
			for (size_t s = 0; s < ARRAY_SIZE(sets); s++) {
				json_t *arr = json_object_get(caps, sets[s]);
				if (!json_is_array(arr)) {
					arr = json_array();
					json_object_set_new(caps, sets[s], arr);
				}
				for (size_t i = 0; i < o->n_caps; i++)
					json_array_append_new(arr, json_string(o->caps[i]));
			}
		}
		if (o->no_new_privs)
			json_object_set_new(doc, "noNewPrivileges", json_true());
	}
	int r = oci_process_parse(doc, what, &c->proc, err);
	c->proc_set = true;
	json_decref(doc);
	if (r < 0)
		return o->process_file ? cella_err_wrap(err, "%s", o->process_file) : r;
	r = harden_check_caps(&c->proc, "process", err);
	if (r < 0)
		return r;
	return 0;
}

/* Opens the init's namespaces that differ from ours (joining one's own user namespace fails). */
static int open_namespaces(struct exec_ctx *c, struct cella_err *err)
{
	for (size_t i = 0; i < N_NS; i++) {
		char path[64], self[64];
		snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)c->st->pid, ns_order[i].name);
		snprintf(self, sizeof(self), "/proc/self/ns/%s", ns_order[i].name);
		struct stat a, b;
		if (stat(path, &a) < 0) {
			if (errno == ENOENT && strcmp(ns_order[i].name, "time") == 0)
				continue; /* kernel without time namespaces */
			return cella_err_sys(err, errno, "exec: %s", path);
		}
		if (stat(self, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
			continue;
		c->ns_fds[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (c->ns_fds[i] < 0)
			return cella_err_sys(err, errno, "exec: open %s", path);
	}
	return 0;
}

/* ---------- the child side ---------- */

_Noreturn static void child_fail(int sync_fd, struct cella_err *err)
{
	sync_send(sync_fd, SYNC_ERROR, err->code ? err->code : EIO, 0, err->msg[0] ? err->msg : "exec setup failed");
	_exit(1);
}

/* C2: in every namespace and cgroup; sets up the process and execs. */
_Noreturn static void exec_process(struct exec_ctx *c, unsigned preserve_fds)
{
	struct cella_err err = { 0 };
	const struct oci_process *p = &c->proc;
	int sfd = c->sync_fd;

	if (p->terminal && terminal_setup(p, c->console_fd, true, &err) < 0)
		child_fail(sfd, &err);
	if (c->console_fd >= 0)
		close(c->console_fd);
	if (p->oom_score_adj.set) {
		char val[32];
		int n = snprintf(val, sizeof(val), "%lld", (long long)p->oom_score_adj.v);
		_cleanup_close_ int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
		if (fd >= 0 && write(fd, val, (size_t)n) != n)
			log_debug("exec: oomScoreAdj %s not applied", val);
	}
	if (process_rlimits(p, &err) < 0)
		child_fail(sfd, &err);
	const char *cwd = p->cwd ? p->cwd : "/";
	if (chdir(cwd) < 0) {
		cella_err_sys(&err, errno, "chdir to cwd (\"%s\") set in config.json failed", cwd);
		child_fail(sfd, &err);
	}
	if (harden_cwd_inside_root(cwd, "cwd", &err) < 0) /* CVE-2024-21626 */
		child_fail(sfd, &err);
	umask(p->user.umask.set ? (mode_t)p->user.umask.v : 0022);
	char **env = process_env(p);
	char *exe = process_find_exec(p->args[0], env, &err);
	if (!env || !exe) {
		cella_err_wrap(&err, "unable to start container process");
		child_fail(sfd, &err);
	}
	/* The container's seccomp filter, as the init loads it: while still privileged without
	 * no_new_privs, else right before execve. */
	struct cella_seccomp *filter = NULL;
	if (c->cfg->linux_.seccomp && cella_seccomp_build(c->cfg->linux_.seccomp, &filter, &err) < 0)
		child_fail(sfd, &err);
	/* SCMP_ACT_NOTIFY: the listener fd goes to the runtime (for listenerPath) before execve. */
	bool late = filter && p->no_new_privileges && !cella_seccomp_wants_notify(filter);
	int notify_fd = -1;
	if (filter && !p->no_new_privileges && cella_seccomp_load(filter, &notify_fd, &err) < 0)
		child_fail(sfd, &err);
	if (process_user_caps(p, &err) < 0)
		child_fail(sfd, &err);
	if (p->no_new_privileges && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		cella_err_sys(&err, errno, "noNewPrivileges");
		child_fail(sfd, &err);
	}
	if (filter && p->no_new_privileges && !late && cella_seccomp_load(filter, &notify_fd, &err) < 0)
		child_fail(sfd, &err);
	if (notify_fd >= 0) {
		sync_send(sfd, SYNC_SECCOMP, 0, 0, NULL);
		if (terminal_send_fd(sfd, notify_fd, "seccomp", &err) < 0)
			child_fail(sfd, &err);
		close(notify_fd);
	}
	syscall(SYS_close_range, 3 + preserve_fds, ~0U, CLOSE_RANGE_CLOEXEC);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (late && cella_seccomp_load(filter, NULL, &err) < 0)
		child_fail(sfd, &err);
	execve(exe, p->args, env);
	cella_err_sys(&err, errno, "unable to start container process: exec %s", exe);
	child_fail(sfd, &err);
}

/* C1: joins the cgroups (itself, or waits until the runtime has moved it), joins the namespaces,
 * forks C2 and reports its pid. */
_Noreturn static void exec_child(struct exec_ctx *c, bool self_join, unsigned preserve_fds)
{
	struct cella_err err = { 0 };
	struct sync_msg m;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (self_join && cgroup_join_self(&c->join, &err) < 0)
		child_fail(c->sync_fd, &err);
	if (sync_recv(c->sync_fd, &m) < 0 || m.type != SYNC_GO)
		_exit(1);
	for (size_t i = 0; i < N_NS; i++) {
		if (c->ns_fds[i] < 0)
			continue;
		if (setns(c->ns_fds[i], ns_order[i].flag) < 0) {
			cella_err_sys(&err, errno, "exec: join the container's %s namespace", ns_order[i].name);
			child_fail(c->sync_fd, &err);
		}
		close(c->ns_fds[i]);
		c->ns_fds[i] = -1;
		if (ns_order[i].flag == CLONE_NEWUSER && (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)) {
			cella_err_sys(&err, errno, "exec: become root in the container's user namespace");
			child_fail(c->sync_fd, &err);
		}
	}
	pid_t pid = fork();
	if (pid < 0) {
		cella_err_sys(&err, errno, "exec: fork");
		child_fail(c->sync_fd, &err);
	}
	if (pid == 0)
		exec_process(c, preserve_fds);
	sync_send(c->sync_fd, SYNC_PID, 0, pid, NULL);
	_exit(0);
}

/* ---------- the runtime side ---------- */

static int load_cgroup(struct exec_ctx *c, struct cella_err *err)
{
	int r = cgroup_manager_open(NULL, &c->mgr, err);
	if (r < 0)
		return r;
	if (c->st->cgroup)
		return cgroup_instance_from_json(c->mgr, c->st->cgroup, &c->cg, err);
	return cgroup_instance_lookup(c->mgr, c->st->cgroups_path, c->st->id, &c->cg, err);
}

static int do_exec(const struct cella_runtime *rt, const struct container_exec_opts *o, struct exec_ctx *c,
		   int *exit_status, struct cella_err *err)
{
	int r = state_load(rt, o->id, &c->st, err);
	if (r < 0)
		return r;
	switch (state_status(c->st)) {
	case STATUS_CREATED:
	case STATUS_RUNNING:
		if (state_paused(c->st))
			return cella_err_set(err, EBUSY, "cannot exec in a paused state");
		break;
	default:
		return cella_err_set(err, EINVAL, "cannot exec in a %s state", state_status_name(state_status(c->st)));
	}
	_cleanup_free_ char *config = cella_path_join(c->st->bundle ? c->st->bundle : ".", "config.json");
	if (!config)
		return cella_err_set(err, ENOMEM, "exec");
	if ((r = oci_config_load(config, &c->cfg, err)) < 0 || (r = build_process(c, o, err)) < 0)
		return r;
	bool tty = c->proc.terminal;
	if (o->detach && tty && !o->console_socket)
		return cella_err_set(err, EINVAL, "cannot allocate tty if cella will detach without setting console socket");
	if ((!o->detach || !tty) && o->console_socket)
		return cella_err_set(err, EINVAL, "cannot use console socket if cella will not detach or allocate tty");
	if ((r = open_namespaces(c, err)) < 0 || (r = load_cgroup(c, err)) < 0)
		return r;
	if (o->console_socket) {
		c->console_fd = console_connect(o->console_socket, err);
		if (c->console_fd < 0)
			return c->console_fd;
	} else if (tty) {
		int sp[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
			return cella_err_sys(err, errno, "socketpair");
		c->tty_recv = sp[0];
		c->console_fd = sp[1];
	}
	sigset_t all;
	sigfillset(&all);
	static const int sync_sigs[] = { SIGILL, SIGFPE, SIGSEGV, SIGBUS, SIGTRAP, SIGABRT, SIGKILL, SIGSTOP };
	for (size_t i = 0; i < ARRAY_SIZE(sync_sigs); i++)
		sigdelset(&all, sync_sigs[i]);
	if (!o->detach) {
		prctl(PR_SET_CHILD_SUBREAPER, 1);
		c->sigfd = signalfd(-1, &all, SFD_CLOEXEC);
		if (c->sigfd < 0)
			return cella_err_sys(err, errno, "signalfd");
	}
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
		return cella_err_sys(err, errno, "socketpair");
	c->sync_fd = sp[0];
	int self_join = cgroup_join_open(c->cg, &c->join, err);
	if (self_join < 0)
		return cella_err_wrap(err, "exec");
	fflush(NULL);
	bool in_v2 = false;
	pid_t pid = ns_clone(0, c->join.v2_fd, &in_v2);
	if (pid < 0) {
		int e = errno;
		close(sp[1]);
		return cella_err_sys(err, e, "exec: fork");
	}
	if (pid == 0) {
		close(sp[0]);
		c->sync_fd = sp[1];
		exec_child(c, self_join, o->preserve_fds);
	}
	close(sp[1]);
	cgroup_join_close(&c->join);
	c->c1 = pid;
	if (c->console_fd >= 0 && !o->console_socket) {
		close(c->console_fd);
		c->console_fd = -1;
	}
	r = cgroup_join_finish(c->cg, self_join, in_v2, pid, err);
	if (r < 0)
		return cella_err_wrap(err, "exec");
	sync_send(c->sync_fd, SYNC_GO, 0, 0, NULL);
	/* C1 sends the pid, C2 an error if it fails before exec (in either order); EOF once C1 has
	 * exited and C2 has exec'd (its end is close-on-exec) or died. */
	struct sync_msg m;
	bool failed = false;
	int code = 0;
	char msg[sizeof(m.msg)] = "";
	int notify_fd = -1;
	bool notify_done = false;
	while ((r = sync_recv(c->sync_fd, &m)) == 0) {
		if (m.type == SYNC_PID && m.pid > 0) {
			c->proc_pid = m.pid;
		} else if (m.type == SYNC_SECCOMP && notify_fd < 0 && !notify_done) {
			notify_fd = terminal_recv_fd(c->sync_fd, err);
		} else if (m.type == SYNC_ERROR && !failed) {
			failed = true;
			code = m.code ? m.code : EIO;
			snprintf(msg, sizeof(msg), "%s", m.msg);
		}
		/* The listener gets the fd at once: the process may block in a notified syscall (even
		 * execve) before the EOF this loop waits for. */
		if (notify_fd >= 0 && c->proc_pid > 0) {
			json_t *state = failed ? NULL : state_to_oci(c->st, state_status(c->st));
			struct cella_err e = { 0 };
			if (!failed &&
			    (!state || cella_seccomp_notify_send(c->cfg->linux_.seccomp, notify_fd, c->proc_pid, state, &e) < 0)) {
				failed = true;
				code = e.code ? e.code : ENOMEM;
				snprintf(msg, sizeof(msg), "%s", e.msg);
				kill(c->proc_pid, SIGKILL);
			}
			json_decref(state);
			close(notify_fd);
			notify_fd = -1;
			notify_done = true;
		}
	}
	while (waitpid(c->c1, NULL, 0) < 0 && errno == EINTR)
		;
	c->c1 = 0;
	if (notify_fd >= 0)
		close(notify_fd);
	if (failed || c->proc_pid <= 0) {
		if (c->proc_pid > 0 && !o->detach)
			while (waitpid(c->proc_pid, NULL, 0) < 0 && errno == EINTR)
				;
		c->proc_pid = 0;
		if (failed)
			return cella_err_set(err, code, "%s", msg);
		return cella_err_set(err, EPIPE, "exec: the setup process died");
	}
	if (o->pid_file && (r = state_write_pid_file(o->pid_file, c->proc_pid, err)) < 0)
		return r;
	if (o->detach) {
		c->proc_pid = 0;
		return 0;
	}
	struct tty_proxy t = { .master = -1 };
	if (c->tty_recv >= 0) {
		struct cella_err e = { 0 };
		int master = terminal_recv_fd(c->tty_recv, &e);
		if (master >= 0)
			tty_proxy_start(&t, master);
	}
	*exit_status = tty_proxy_wait(c->proc_pid, c->sigfd, &t);
	tty_proxy_stop(&t);
	c->proc_pid = 0;
	return 0;
}

int container_exec(const struct cella_runtime *rt, const struct container_exec_opts *opts, int *exit_status,
		   struct cella_err *err)
{
	struct exec_ctx c;
	memset(&c, 0, sizeof(c));
	for (size_t i = 0; i < N_NS; i++)
		c.ns_fds[i] = -1;
	c.console_fd = c.tty_recv = c.sync_fd = c.sigfd = -1;
	c.join = (struct cgroup_join)CGROUP_JOIN_INIT;
	*exit_status = 0;

	sigset_t all, old;
	sigfillset(&all);
	static const int sync_sigs[] = { SIGILL, SIGFPE, SIGSEGV, SIGBUS, SIGTRAP, SIGABRT, SIGKILL, SIGSTOP };
	for (size_t i = 0; i < ARRAY_SIZE(sync_sigs); i++)
		sigdelset(&all, sync_sigs[i]);
	if (!opts->detach)
		sigprocmask(SIG_BLOCK, &all, &old);
	int r = do_exec(rt, opts, &c, exit_status, err);
	if (c.c1 > 0) {
		kill(c.c1, SIGKILL);
		while (waitpid(c.c1, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (c.proc_pid > 0) {
		kill(c.proc_pid, SIGKILL);
		if (!opts->detach)
			while (waitpid(c.proc_pid, NULL, 0) < 0 && errno == EINTR)
				;
	}
	ctx_free(&c);
	if (!opts->detach)
		sigprocmask(SIG_SETMASK, &old, NULL);
	return r;
}
