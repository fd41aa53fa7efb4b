/* create, start and run: the runtime side of the container init (see init.c for the child). */
#include "runtime/container.h"

#include "base/err.h"
#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/config.h"
#include "runtime/harden.h"
#include "runtime/hooks.h"
#include "runtime/init.h"
#include "runtime/seccomp.h"
#include "runtime/state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <termios.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

int container_validate_id(const char *id, struct cella_err *err)
{
	if (!id || !*id)
		return cella_err_set(err, EINVAL, "container id cannot be empty");
	if (!strcmp(id, ".") || !strcmp(id, "..") || strlen(id) > 1024)
		return cella_err_set(err, EINVAL, "invalid container ID format");
	for (const char *p = id; *p; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
		      c == '+' || c == '-' || c == '.'))
			return cella_err_set(err, EINVAL, "invalid container ID format");
	}
	return 0;
}

/* Everything one create holds; torn down in reverse on failure. */
struct create_ctx {
	struct container_state *st;
	struct oci_config *cfg;
	struct cgroup_manager *mgr;
	struct cgroup_instance *cg;
	struct cgroup_join join;
	int ns_fds[OCI_NS_COUNT];
	int console_fd;
	int fifo_fd;
	int sync_fd;
	pid_t child;     /* our direct child (the init, or the intermediate in staged mode) */
	pid_t init;      /* the container init */
	bool dir_made;
	char *bundle;
	char *rootfs;
};

static void ctx_init(struct create_ctx *c)
{
	memset(c, 0, sizeof(*c));
	for (int i = 0; i < OCI_NS_COUNT; i++)
		c->ns_fds[i] = -1;
	c->console_fd = c->fifo_fd = c->sync_fd = -1;
	c->join = (struct cgroup_join)CGROUP_JOIN_INIT;
}

/* Releases memory and fds (not the container). */
static void ctx_free(struct create_ctx *c)
{
	ns_close_joined(c->ns_fds);
	if (c->console_fd >= 0)
		close(c->console_fd);
	if (c->fifo_fd >= 0)
		close(c->fifo_fd);
	if (c->sync_fd >= 0)
		close(c->sync_fd);
	cgroup_join_close(&c->join);
	if (c->cg)
		cgroup_instance_free(c->cg);
	if (c->mgr)
		cgroup_manager_free(c->mgr);
	oci_config_free(c->cfg);
	state_free(c->st);
	free(c->bundle);
	free(c->rootfs);
	ctx_init(c);
}

/* Undoes a failed create: kills the children, removes the cgroups and the state dir. */
static void ctx_rollback(struct create_ctx *c)
{
	if (c->init > 0 && c->init != c->child)
		kill(c->init, SIGKILL);
	if (c->child > 0) {
		kill(c->child, SIGKILL);
		while (waitpid(c->child, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (c->cg) {
		struct cella_err e = { 0 };
		if (cgroup_destroy(c->cg, &e) < 0)
			log_warn("cleanup: %s", e.msg);
	}
	if (c->dir_made && c->st) {
		struct cella_err e = { 0 };
		if (cella_rm_rf(c->st->dir, &e) < 0)
			log_warn("cleanup: %s", e.msg);
	}
}

/* Host uid/gid that container root maps to (for files the init must open), or 0. */
static void root_host_ids(const struct oci_config *cfg, uid_t *uid, gid_t *gid)
{
	*uid = 0;
	*gid = 0;
	for (size_t i = 0; i < cfg->linux_.n_uid_mappings; i++)
		if (cfg->linux_.uid_mappings[i].container_id == 0)
			*uid = cfg->linux_.uid_mappings[i].host_id;
	for (size_t i = 0; i < cfg->linux_.n_gid_mappings; i++)
		if (cfg->linux_.gid_mappings[i].container_id == 0)
			*gid = cfg->linux_.gid_mappings[i].host_id;
}

/* Checks that need the filesystem; the parser has done the rest. */
static int validate(struct create_ctx *c, const struct container_create_opts *o, struct cella_err *err)
{
	const struct oci_config *cfg = c->cfg;
	_cleanup_free_ char *root = cfg->root.path[0] == '/' ? strdup(cfg->root.path)
							      : cella_path_join(c->bundle, cfg->root.path);
	if (!root)
		return cella_err_set(err, ENOMEM, "root.path");
	char real[PATH_MAX];
	if (!realpath(root, real))
		return cella_err_sys(err, errno, "config.json: root.path: %s", root);
	struct stat sb;
	if (stat(real, &sb) < 0 || !S_ISDIR(sb.st_mode))
		return cella_err_set(err, ENOTDIR, "config.json: root.path: %s is not a directory", root);
	c->rootfs = strdup(real);
	if (!cfg->process.args || !cfg->process.args[0])
		return cella_err_set(err, EINVAL, "config.json: process.args: must not be empty");
	if (harden_check_caps(&cfg->process, "config.json: process", err) < 0)
		return -EPERM;
	if (!oci_config_has_namespace(cfg, OCI_NS_MOUNT))
		return cella_err_set(err, EINVAL,
				     "config.json: linux.namespaces: a mount namespace is required (cella never "
				     "mounts on the host)");
	if (cfg->process.terminal && !o->console_socket && o->console_fd <= 0)
		return cella_err_set(err, EINVAL, "cannot allocate tty if cella will detach without setting console socket");
	if (!cfg->process.terminal && o->console_socket)
		return cella_err_set(err, EINVAL, "cannot use console socket if cella will not detach or allocate tty");
	const struct oci_cpu *cpu = &cfg->linux_.resources.cpu;
	if (cfg->linux_.has_resources && cpu->cpus && *cpu->cpus &&
	    cgroup_validate_cpu_list(cpu->cpus, "config.json: linux.resources.cpu.cpus", err) < 0)
		return -EINVAL;
	if (cfg->linux_.has_resources && cpu->mems && *cpu->mems &&
	    cgroup_validate_cpu_list(cpu->mems, "config.json: linux.resources.cpu.mems", err) < 0)
		return -EINVAL;
	return ns_open_joined(cfg, c->ns_fds, err);
}

/* Receives one message from the child, turning SYNC_ERROR and EOF into errors. */
static int child_msg(struct create_ctx *c, struct sync_msg *m, struct cella_err *err)
{
	int r = sync_recv(c->sync_fd, m);
	if (r == -EPIPE) {
		int status = 0;
		if (c->child > 0 && waitpid(c->child, &status, WNOHANG) == c->child) {
			c->child = 0;
			if (WIFSIGNALED(status))
				return cella_err_set(err, EPIPE, "container init killed by signal %d during setup",
						     WTERMSIG(status));
		}
		return cella_err_set(err, EPIPE, "container init exited during setup");
	}
	if (r < 0)
		return cella_err_sys(err, -r, "sync with container init");
	if (m->type == SYNC_ERROR)
		return cella_err_set(err, m->code ? m->code : EIO, "container init: %s", m->msg);
	return 0;
}

/* The init's seccomp notify fd goes on to linux.seccomp.listenerPath with the state. */
static int seccomp_listener(struct create_ctx *c, struct cella_err *err)
{
	int fd = terminal_recv_fd(c->sync_fd, err);
	if (fd < 0)
		return cella_err_wrap(err, "receive the seccomp notify fd");
	json_t *state = state_to_oci(c->st, STATUS_CREATING);
	int r = state ? cella_seccomp_notify_send(c->cfg->linux_.seccomp, fd, c->init, state, err)
		      : cella_err_set(err, ENOMEM, "state");
	json_decref(state);
	close(fd);
	return r;
}

/* prestart (deprecated) then createRuntime, in the runtime namespace. */
static int run_create_hooks(struct create_ctx *c, struct cella_err *err)
{
	const struct oci_hooks *hs = &c->cfg->hooks;
	if (!hooks_count(hs, HOOK_PRESTART) && !hooks_count(hs, HOOK_CREATE_RUNTIME))
		return 0;
	_cleanup_free_ char *state = hooks_state_json(c->st, "creating");
	if (!state)
		return cella_err_set(err, ENOMEM, "state");
	int r = hooks_run(hs, HOOK_PRESTART, state, err);
	if (r == 0)
		r = hooks_run(hs, HOOK_CREATE_RUNTIME, state, err);
	return r;
}

static int do_create(const struct cella_runtime *rt, const struct container_create_opts *o, struct create_ctx *c,
		     struct cella_err *err)
{
	int r = container_validate_id(o->id, err);
	if (r < 0)
		return r;
	char real[PATH_MAX];
	const char *bundle = o->bundle && *o->bundle ? o->bundle : ".";
	if (!realpath(bundle, real))
		return cella_err_sys(err, errno, "bundle %s", bundle);
	c->bundle = strdup(real);
	_cleanup_free_ char *config_path = cella_path_join(c->bundle, "config.json");
	if (!c->bundle || !config_path)
		return cella_err_set(err, ENOMEM, "bundle");
	r = oci_config_load(config_path, &c->cfg, err);
	if (r < 0)
		return r;
	r = validate(c, o, err);
	if (r < 0)
		return r;
	r = cgroup_manager_open(NULL, &c->mgr, err);
	if (r < 0)
		return r;
	if (o->console_socket) {
		c->console_fd = console_connect(o->console_socket, err);
		if (c->console_fd < 0)
			return c->console_fd;
	} else if (o->console_fd > 0 && c->cfg->process.terminal) {
		c->console_fd = fcntl(o->console_fd, F_DUPFD_CLOEXEC, 3);
		if (c->console_fd < 0)
			return cella_err_sys(err, errno, "dup console socket");
	}

	/* From here on host resources appear: the state dir comes first so that a runtime killed at
	 * any later point leaves something `delete --force` can find. */
	const char *root = state_root(rt);
	r = cella_mkdir_p(root, 0700, err);
	if (r < 0)
		return r;
	c->st = calloc(1, sizeof(*c->st));
	if (!c->st)
		return cella_err_set(err, ENOMEM, "state");
	struct container_state *st = c->st;
	st->id = strdup(o->id);
	st->dir = state_dir(rt, o->id);
	if (!st->id || !st->dir)
		return cella_err_set(err, ENOMEM, "state");
	if (mkdir(st->dir, 0711) < 0) {
		if (errno == EEXIST)
			return cella_err_set(err, EEXIST, "container with given ID already exists: %s", o->id);
		return cella_err_sys(err, errno, "mkdir %s", st->dir);
	}
	c->dir_made = true;
	st->creator = getpid();
	proc_stat(st->creator, &st->creator_start, NULL);
	st->bundle = strdup(c->bundle);
	st->rootfs = strdup(c->rootfs);
	st->created = rfc3339_now();
	st->owner = geteuid();
	st->cgroups_path = c->cfg->linux_.cgroups_path ? strdup(c->cfg->linux_.cgroups_path) : NULL;
	st->pid_ns_shared = !oci_config_has_namespace(c->cfg, OCI_NS_PID);
	if (c->cfg->n_annotations) {
		st->annotations = json_object();
		for (size_t i = 0; i < c->cfg->n_annotations; i++)
			json_object_set_new(st->annotations, c->cfg->annotations[i].key,
					    json_string(c->cfg->annotations[i].value));
	}
	r = state_save(st, err);
	if (r < 0)
		return r;

	_cleanup_free_ char *fifo = cella_path_join(st->dir, EXEC_FIFO);
	if (!fifo || mkfifo(fifo, 0622) < 0)
		return cella_err_sys(err, errno, "mkfifo %s", fifo ? fifo : EXEC_FIFO);
	/* Not subject to the umask: the init may run as any user by the time it opens it. */
	if (chmod(fifo, 0622) < 0)
		return cella_err_sys(err, errno, "chmod %s", fifo);
	uid_t ruid;
	gid_t rgid;
	root_host_ids(c->cfg, &ruid, &rgid);
	if ((ruid || rgid) && chown(fifo, ruid, rgid) < 0)
		return cella_err_sys(err, errno, "chown %s", fifo);
	c->fifo_fd = open(fifo, O_PATH | O_CLOEXEC);
	if (c->fifo_fd < 0)
		return cella_err_sys(err, errno, "open %s", fifo);
	r = hooks_save(c->cfg, st->dir, err);
	if (r < 0)
		return r;

	const struct oci_linux *l = &c->cfg->linux_;
	struct cgroup_params params = {
		.id = o->id,
		.cgroups_path = l->cgroups_path,
		.resources = l->has_resources ? &l->resources : NULL,
		.devices = l->devices,
		.n_devices = l->n_devices,
	};
	r = cgroup_create(c->mgr, &params, 0, &c->cg, err);
	if (r < 0)
		return r;
	st->cgroup = cgroup_instance_to_json(c->cg);
	r = state_save(st, err);
	if (r < 0)
		return r;
	int self_join = cgroup_join_open(c->cg, &c->join, err);
	if (self_join < 0)
		return self_join;

	/* The child. Joining any namespace by path needs the staged path (setns/unshare/fork in the
	 * child); otherwise one clone creates every namespace at once. */
	bool staged = false;
	unsigned long flags = 0;
	for (size_t i = 0; i < l->n_namespaces; i++) {
		/* CLONE_NEWTIME shares its bit with the clone exit signal: unshare it in staged mode. */
		if ((l->namespaces[i].path && *l->namespaces[i].path) || l->namespaces[i].type == OCI_NS_TIME)
			staged = true;
		else if (l->namespaces[i].type != OCI_NS_CGROUP)
			flags |= (unsigned long)oci_ns_clone_flag(l->namespaces[i].type);
	}
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
		return cella_err_sys(err, errno, "socketpair");
	c->sync_fd = sp[0];
	struct init_args a = {
		.cfg = c->cfg,
		.bundle = c->bundle,
		.rootfs = c->rootfs,
		.sync_fd = sp[1],
		.console_fd = c->console_fd,
		.fifo_fd = c->fifo_fd,
		.clone_flags = staged ? 0 : flags,
		.staged = staged,
		.no_pivot = o->no_pivot,
		.preserve_fds = o->preserve_fds,
		.in_userns = oci_config_has_namespace(c->cfg, OCI_NS_USER),
		.cgroup = c->cg,
		.cgroup_join = self_join ? &c->join : NULL,
	};
	memcpy(a.ns_fds, c->ns_fds, sizeof(a.ns_fds));
	fflush(NULL);
	bool in_v2 = false;
	pid_t pid = ns_clone(a.clone_flags, c->join.v2_fd, &in_v2);
	if (pid < 0) {
		int e = errno;
		close(sp[1]);
		return cella_err_sys(err, e, "clone container init (flags 0x%lx)", a.clone_flags);
	}
	if (pid == 0) {
		close(sp[0]);
		container_init(&a);
	}
	close(sp[1]);
	cgroup_join_close(&c->join);
	c->child = c->init = pid;
	/* Recorded with READY: until then a `delete --force` finds the child through the cgroups,
	 * and the child dies with us (PR_SET_PDEATHSIG, or EOF on the sync socket). */
	st->pid = pid;
	proc_stat(pid, &st->pid_start, NULL);

	if (!staged && (flags & CLONE_NEWUSER)) {
		r = ns_write_id_maps(pid, c->cfg, err);
		if (r < 0)
			return r;
	}
	if (staged) {
		bool need_pid = oci_config_has_namespace(c->cfg, OCI_NS_PID) ||
				oci_config_has_namespace(c->cfg, OCI_NS_TIME);
		bool need_map = oci_config_has_namespace(c->cfg, OCI_NS_USER) && c->ns_fds[OCI_NS_USER] < 0;
		while (need_pid || need_map) {
			struct sync_msg m;
			r = child_msg(c, &m, err);
			if (r < 0)
				return r;
			if (m.type == SYNC_USERMAP && need_map) {
				r = ns_write_id_maps(pid, c->cfg, err);
				if (r < 0)
					return r;
				need_map = false;
				sync_send(c->sync_fd, SYNC_USERMAP_ACK, 0, 0, NULL);
			} else if (m.type == SYNC_PID && need_pid) {
				c->init = m.pid;
				need_pid = false;
				while (waitpid(c->child, NULL, 0) < 0 && errno == EINTR)
					;
				c->child = 0;
			} else {
				return cella_err_set(err, EPROTO, "container init: unexpected message %d", m.type);
			}
		}
		st->pid = c->init;
		proc_stat(c->init, &st->pid_start, NULL);
	}
	r = cgroup_join_finish(c->cg, self_join, in_v2, c->init, err);
	if (r < 0)
		return r;
	if (c->cfg->process.oom_score_adj.set) {
		char path[64], val[32];
		snprintf(path, sizeof(path), "/proc/%d/oom_score_adj", (int)c->init);
		int n = snprintf(val, sizeof(val), "%lld", (long long)c->cfg->process.oom_score_adj.v);
		_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, val, (size_t)n) != n)
			return cella_err_sys(err, errno, "process.oomScoreAdj: write %s to %s", val, path);
	}
	sync_send(c->sync_fd, SYNC_GO, 0, 0, NULL);
	if (hooks_init_needs_state(&c->cfg->hooks)) {
		_cleanup_free_ char *state = hooks_state_json(st, "creating");
		r = state ? hooks_send_state(c->sync_fd, state, err) : cella_err_set(err, ENOMEM, "state");
		if (r < 0)
			return r;
	}
	/* Until READY the init may ask for the runtime-namespace hooks (namespaces and mounts exist,
	 * the root is not pivoted yet) and hand over a seccomp listener fd. */
	struct sync_msg m;
	for (;;) {
		r = child_msg(c, &m, err);
		if (r == 0 && m.type == SYNC_SECCOMP)
			r = seccomp_listener(c, err);
		else if (r == 0 && m.type == SYNC_HOOKS && (r = run_create_hooks(c, err)) == 0)
			sync_send(c->sync_fd, SYNC_HOOKS_DONE, 0, 0, NULL);
		else
			break;
		if (r < 0)
			return r;
	}
	if (r < 0)
		return r;
	if (m.type != SYNC_READY)
		return cella_err_set(err, EPROTO, "container init: unexpected message %d", m.type);
	if (o->pid_file) {
		r = state_write_pid_file(o->pid_file, c->init, err);
		if (r < 0)
			return r;
	}
	st->ready = true;
	st->creator = 0;
	st->creator_start = 0;
	r = state_save(st, err);
	if (r < 0)
		return r;
	sync_send(c->sync_fd, SYNC_ACK, 0, 0, NULL);
	return 0;
}

int container_create(const struct cella_runtime *rt, const struct container_create_opts *opts,
		     struct cella_err *err)
{
	struct create_ctx c;
	ctx_init(&c);
	int r = do_create(rt, opts, &c, err);
	if (r < 0)
		ctx_rollback(&c);
	ctx_free(&c);
	return r;
}

/* Opens exec.fifo for reading: the blocked init's open() returns, it writes one byte and execs. */
static int start_state(struct container_state *st, struct cella_err *err)
{
	switch (state_status(st)) {
	case STATUS_CREATED:
		break;
	case STATUS_RUNNING:
		return cella_err_set(err, EINVAL, "cannot start an already running container");
	case STATUS_STOPPED:
		return cella_err_set(err, EINVAL, "cannot start a container that has stopped");
	case STATUS_CREATING:
		return cella_err_set(err, EINVAL, "cannot start a container that is still being created");
	}
	_cleanup_free_ char *fifo = cella_path_join(st->dir, EXEC_FIFO);
	if (!fifo)
		return cella_err_set(err, ENOMEM, "start");
	_cleanup_close_ int fd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return cella_err_set(err, EINVAL, "cannot start an already running container");
		return cella_err_sys(err, errno, "open %s", fifo);
	}
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int n = poll(&pfd, 1, 100);
		if (n < 0 && errno != EINTR)
			return cella_err_sys(err, errno, "poll %s", fifo);
		if (n > 0 && (pfd.revents & POLLIN)) {
			char b;
			ssize_t got = read(fd, &b, 1);
			if (got == 1)
				break;
			if (got < 0 && errno == EAGAIN)
				continue;
			return cella_err_set(err, EIO, "container init did not start");
		}
		if (!proc_alive(st->pid, st->pid_start))
			return cella_err_set(err, ESRCH, "cannot start a container that has stopped");
	}
	unlink(fifo);
	return 0;
}

int container_start(const struct cella_runtime *rt, const char *id, struct cella_err *err)
{
	struct container_state *st = NULL;
	int r = state_load(rt, id, &st, err);
	if (r < 0)
		return r;
	r = start_state(st, err);
	if (r == 0)
		hooks_run_saved(st, HOOK_POSTSTART, "running");
	state_free(st);
	return r;
}

int container_run(const struct cella_runtime *rt, const struct container_create_opts *opts, bool detach,
		  bool keep, int *exit_status, struct cella_err *err)
{
	*exit_status = 0;
	if (detach) {
		int r = container_create(rt, opts, err);
		if (r < 0)
			return r;
		r = container_start(rt, opts->id, err);
		if (r < 0) {
			struct cella_err e = { 0 };
			container_delete(rt, opts->id, true, &e);
		}
		return r;
	}
	/* Foreground: we reap the init (subreaper covers the staged fork) and forward signals. */
	sigset_t fwd, old;
	sigfillset(&fwd);
	static const int sync_sigs[] = { SIGILL, SIGFPE, SIGSEGV, SIGBUS, SIGTRAP, SIGABRT, SIGKILL, SIGSTOP };
	for (size_t i = 0; i < ARRAY_SIZE(sync_sigs); i++)
		sigdelset(&fwd, sync_sigs[i]);
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	sigprocmask(SIG_BLOCK, &fwd, &old);
	struct tty_proxy tty = { .master = -1 };
	int sp[2] = { -1, -1 };
	struct container_create_opts o = *opts;
	if (!o.console_socket && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0)
		o.console_fd = sp[1];
	int sigfd = signalfd(-1, &fwd, SFD_CLOEXEC);
	int r = sigfd < 0 ? cella_err_sys(err, errno, "signalfd") : container_create(rt, &o, err);
	if (sp[1] >= 0)
		close(sp[1]);
	if (r < 0)
		goto out;
	struct container_state *st = NULL;
	r = state_load(rt, o.id, &st, err);
	if (r == 0) {
		pid_t init = st->pid;
		if (sp[0] >= 0) {
			/* The init sent the master during create if it has a terminal; else nothing. */
			struct pollfd p = { .fd = sp[0], .events = POLLIN };
			if (poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
				struct cella_err e = { 0 };
				int m = terminal_recv_fd(sp[0], &e);
				if (m >= 0)
					tty_proxy_start(&tty, m);
			}
		}
		r = start_state(st, err);
		if (r == 0)
			hooks_run_saved(st, HOOK_POSTSTART, "running");
		state_free(st);
		if (r == 0)
			*exit_status = tty_proxy_wait(init, sigfd, &tty);
	}
	tty_proxy_stop(&tty);
	if (r < 0 || !keep) {
		struct cella_err e = { 0 };
		int d = container_delete(rt, o.id, true, &e);
		if (d < 0 && r == 0)
			log_warn("delete %s: %s", o.id, e.msg);
	}
out:
	if (sp[0] >= 0)
		close(sp[0]);
	if (sigfd >= 0)
		close(sigfd);
	sigprocmask(SIG_SETMASK, &old, NULL);
	return r;
}
