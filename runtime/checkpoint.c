/* checkpoint and restore through CRIU's swrk interface: `criu swrk FD` is our child and talks
 * protobuf messages (runtime/criu_rpc.proto) over a SOCK_SEQPACKET socket, one message per packet.
 * CRIU opens the image and work directories as /proc/<our pid>/fd/N, so those stay open here.
 *
 * What runc does, and so we do: bind mounts are external mounts (dumped by destination, restored
 * from their source), masked paths that are files are external mounts of /dev/null, the restored
 * tasks land in the container's own cgroups (criu runs in them and gets them as cgroup roots),
 * the restored tree is our sibling's (rst_sibling: the init becomes our child, as after create),
 * a terminal's master comes back through the "orphan-pts-master" notification and goes to
 * --console-socket. The init's stdio is recorded in descriptors.json beside the images; stdio pipes
 * are inherited on restore from restore's own fds 0-2 (the caller's new pipes: containerd's shim
 * and conmon hand over pipes). A checkpoint without --leave-running destroys the container
 * afterwards. */
#include "runtime/container.h"

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/config.h"
#include "runtime/container_ctl.h"
#include "runtime/criu_rpc.pb-c.h"
#include "runtime/init.h"
#include "runtime/state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CRIU_MSG_MAX (1 << 20)

struct criu_conn {
	int sock;
	pid_t pid;
	const char *log_name; /* dump.log / restore.log in the work directory */
	const char *work_path;
	int work_fd;
};

/* The criu binary on PATH, or NULL. */
static char *criu_find(void)
{
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	_cleanup_free_ char *copy = strdup(path);
	for (char *save = NULL, *d = copy ? strtok_r(copy, ":", &save) : NULL; d; d = strtok_r(NULL, ":", &save)) {
		char *p = cella_path_join(d, "criu");
		if (p && access(p, X_OK) == 0)
			return p;
		free(p);
	}
	return NULL;
}

/* Forks `criu swrk`. rootfs != NULL (restore): the child first gets a private mount namespace in
 * which rootfs is a mount point of its own (CRIU restores the container's mounts onto it). */
static int criu_start(struct criu_conn *c, const char *rootfs, struct cella_err *err)
{
	_cleanup_free_ char *criu = criu_find();
	if (!criu)
		return cella_err_set(err, ENOENT,
				     "criu not found in PATH: checkpoint and restore need CRIU (Debian package criu)");
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
		return cella_err_sys(err, errno, "socketpair for criu");
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(sp[0]);
		close(sp[1]);
		return cella_err_sys(err, e, "fork criu");
	}
	if (pid == 0) {
		close(sp[0]);
		if (rootfs && (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_SLAVE | MS_REC, NULL) < 0 ||
			       mount(rootfs, rootfs, NULL, MS_BIND | MS_REC, NULL) < 0)) {
			dprintf(STDERR_FILENO, "cella: criu: mount namespace for %s: %s\n", rootfs, strerror(errno));
			_exit(126);
		}
		cella_set_cloexec(sp[1], false);
		char fd[16];
		snprintf(fd, sizeof(fd), "%d", sp[1]);
		execl(criu, "criu", "swrk", fd, (char *)NULL);
		dprintf(STDERR_FILENO, "cella: exec %s: %s\n", criu, strerror(errno));
		_exit(127);
	}
	close(sp[1]);
	c->sock = sp[0];
	c->pid = pid;
	return 0;
}

/* Closes the socket (criu swrk exits on EOF) and reaps criu; its exit status or -1. */
static int criu_stop(struct criu_conn *c)
{
	int status = -1;
	if (c->sock >= 0)
		close(c->sock);
	c->sock = -1;
	if (c->pid > 0) {
		int st;
		while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR)
			;
		status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	}
	c->pid = 0;
	return status;
}

/* The first "Error" line of criu's log in the work directory (the cause; later ones follow from
 * it), for the message ("" if none). */
static char *criu_log_error(const struct criu_conn *c)
{
	char *text = NULL;
	size_t len = 0;
	struct cella_err e = { 0 };
	if (cella_read_file_at(c->work_fd, c->log_name, 16 << 20, &text, &len, &e) < 0)
		return strdup("");
	char *first = NULL;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && !first; l = strtok_r(NULL, "\n", &save))
		if (strstr(l, "Error (") || strstr(l, "Error:"))
			first = l;
	char *out = strdup(first ? first : "");
	free(text);
	return out;
}

static int criu_send(struct criu_conn *c, const CriuReq *req, struct cella_err *err)
{
	size_t len = criu_req__get_packed_size(req);
	_cleanup_free_ uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return cella_err_set(err, ENOMEM, "criu request");
	criu_req__pack(req, buf);
	ssize_t n;
	do
		n = send(c->sock, buf, len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0 || (size_t)n != len)
		return cella_err_sys(err, n < 0 ? errno : EIO, "send request to criu");
	return 0;
}

/* One message from criu; *fd receives a file descriptor that came with it (else -1). */
static int criu_recv(struct criu_conn *c, CriuResp **out, int *fd, struct cella_err *err)
{
	_cleanup_free_ uint8_t *buf = malloc(CRIU_MSG_MAX);
	if (!buf)
		return cella_err_set(err, ENOMEM, "criu response");
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = buf, .iov_len = CRIU_MSG_MAX };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b) };
	ssize_t n;
	do
		n = recvmsg(c->sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	*fd = -1;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			memcpy(fd, CMSG_DATA(cm), sizeof(int));
	if (n < 0)
		return cella_err_sys(err, errno, "receive from criu");
	if (n == 0) {
		int st = criu_stop(c);
		_cleanup_free_ char *why = criu_log_error(c);
		return cella_err_set(err, EPROTO, "criu exited (status %d) without an answer%s%s (log: %s/%s)", st,
				     *why ? ": " : "", why, c->work_path, c->log_name);
	}
	if (msg.msg_flags & MSG_TRUNC)
		return cella_err_set(err, EMSGSIZE, "criu response larger than %d bytes", CRIU_MSG_MAX);
	*out = criu_resp__unpack(NULL, (size_t)n, buf);
	if (!*out)
		return cella_err_set(err, EPROTO, "criu response: malformed protobuf message (%zd bytes)", n);
	return 0;
}

/* What a notification means to us: fills *restored_pid on post-restore, sends a pty master to
 * console_fd on orphan-pts-master. */
struct notify_ctx {
	pid_t restored_pid;
	int console_fd;
};

static int criu_notify(const CriuNotify *nt, int fd, struct notify_ctx *n, struct cella_err *err)
{
	const char *script = nt && nt->script ? nt->script : "";
	log_debug("criu notification %s (pid %d)", script, nt && nt->has_pid ? nt->pid : 0);
	int r = 0;
	if (!strcmp(script, "post-restore") && nt->has_pid)
		n->restored_pid = nt->pid;
	else if (!strcmp(script, "orphan-pts-master")) {
		if (fd < 0)
			r = cella_err_set(err, EPROTO, "criu orphan-pts-master: no file descriptor");
		else if (n->console_fd < 0)
			r = cella_err_set(err, EINVAL, "the container has a terminal: restore needs --console-socket");
		else
			r = terminal_send_fd(n->console_fd, fd, "", err);
	}
	if (fd >= 0)
		close(fd);
	return r;
}

/* Sends req, answers notifications until the final response of the same type; its failure
 * becomes an error naming criu's errno, message and the last error line of its log. */
static int criu_call(struct criu_conn *c, const CriuReq *req, struct notify_ctx *n, CriuResp **out,
		     struct cella_err *err)
{
	int r = criu_send(c, req, err);
	if (r < 0)
		return r;
	const char *what = req->type == CRIU_REQ_TYPE__DUMP ? "dump" : "restore";
	for (;;) {
		CriuResp *resp = NULL;
		int fd;
		r = criu_recv(c, &resp, &fd, err);
		if (r < 0)
			return cella_err_wrap(err, "criu %s", what);
		if (resp->type == CRIU_REQ_TYPE__NOTIFY) {
			r = criu_notify(resp->notify, fd, n, err);
			criu_resp__free_unpacked(resp, NULL);
			CriuReq ack = CRIU_REQ__INIT;
			ack.type = CRIU_REQ_TYPE__NOTIFY;
			ack.has_notify_success = true;
			ack.notify_success = r == 0;
			struct cella_err e2 = { 0 };
			int r2 = criu_send(c, &ack, r < 0 ? &e2 : err);
			if (r < 0)
				return r;
			if (r2 < 0)
				return r2;
			continue;
		}
		if (fd >= 0)
			close(fd);
		if (!resp->success || resp->type != req->type) {
			_cleanup_free_ char *why = criu_log_error(c);
			int e = resp->has_cr_errno && resp->cr_errno ? resp->cr_errno : EIO;
			r = cella_err_set(err, e, "criu %s failed%s%s%s%s%s%s (log: %s/%s)", what,
					  resp->has_cr_errno && resp->cr_errno ? ": " : "",
					  resp->has_cr_errno && resp->cr_errno ? strerror(resp->cr_errno) : "",
					  resp->cr_errmsg ? ": " : "", resp->cr_errmsg ? resp->cr_errmsg : "",
					  *why ? ": " : "", why, c->work_path, c->log_name);
			criu_resp__free_unpacked(resp, NULL);
			return r;
		}
		*out = resp;
		return 0;
	}
}

/* Options both directions share. */
struct cr_common {
	const struct container_cr_opts *o;
	CriuOpts opts;
	CriuExtMount *mnt;      /* n_mnt entries */
	CriuExtMount **mnt_ptr;
	size_t n_mnt;
	CriuCgroupRoot *cgr;
	CriuCgroupRoot **cgr_ptr;
	char **cg_lines;        /* storage for cg_root strings */
	CriuInheritFd inh[3];
	CriuInheritFd *inh_ptr[3];
	char *stdio[3];         /* descriptors.json entries (restore) */
	int image_fd, work_fd;
};

static void cr_common_free(struct cr_common *c)
{
	free(c->mnt);
	free(c->mnt_ptr);
	free(c->cgr);
	free(c->cgr_ptr);
	cella_strv_free(c->cg_lines);
	for (int i = 0; i < 3; i++)
		free(c->stdio[i]);
	if (c->image_fd >= 0)
		close(c->image_fd);
	if (c->work_fd >= 0 && c->work_fd != c->image_fd)
		close(c->work_fd);
}

static int cg_mode(const char *s, CriuCgMode *out, struct cella_err *err)
{
	static const struct {
		const char *name;
		CriuCgMode mode;
	} modes[] = { { "soft", CRIU_CG_MODE__SOFT }, { "full", CRIU_CG_MODE__FULL },
		      { "strict", CRIU_CG_MODE__STRICT }, { "ignore", CRIU_CG_MODE__IGNORE } };
	for (size_t i = 0; i < ARRAY_SIZE(modes); i++)
		if (!strcmp(s, modes[i].name)) {
			*out = modes[i].mode;
			return 0;
		}
	return cella_err_set(err, EINVAL, "invalid --manage-cgroups-mode \"%s\" (soft, full, strict or ignore)", s);
}

/* Image and work directories, the log, the flags and the external mounts. dump: external mounts are
 * named by their destination; restore: they come from their source (bind) or /dev/null (masked). */
static int cr_common_init(struct cr_common *c, const struct container_cr_opts *o, const struct oci_config *cfg,
			  const char *bundle, bool dump, struct cella_err *err)
{
	memset(c, 0, sizeof(*c));
	c->image_fd = c->work_fd = -1;
	c->o = o;
	criu_opts__init(&c->opts);
	if (!o->image_path || !*o->image_path)
		return cella_err_set(err, EINVAL, "--image-path is required");
	if (dump) {
		int r = cella_mkdir_p(o->image_path, 0700, err);
		if (r < 0)
			return r;
	}
	c->image_fd = open(o->image_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->image_fd < 0)
		return cella_err_sys(err, errno, "image path %s", o->image_path);
	c->work_fd = c->image_fd;
	if (o->work_path && *o->work_path) {
		int r = cella_mkdir_p(o->work_path, 0700, err);
		if (r < 0)
			return r;
		c->work_fd = open(o->work_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (c->work_fd < 0)
			return cella_err_sys(err, errno, "work path %s", o->work_path);
	}
	CriuOpts *p = &c->opts;
	p->images_dir_fd = c->image_fd;
	p->has_work_dir_fd = true;
	p->work_dir_fd = c->work_fd;
	p->has_log_level = true;
	p->log_level = 4;
	p->log_file = (char *)(dump ? "dump.log" : "restore.log");
	p->has_notify_scripts = p->notify_scripts = true;
	p->has_tcp_established = p->tcp_established = o->tcp_established;
	p->has_ext_unix_sk = p->ext_unix_sk = o->ext_unix_sk;
	p->has_shell_job = p->shell_job = o->shell_job;
	p->has_file_locks = p->file_locks = o->file_locks;
	p->has_manage_cgroups = p->manage_cgroups = true;
	if (o->manage_cgroups_mode) {
		p->has_manage_cgroups_mode = true;
		int r = cg_mode(o->manage_cgroups_mode, &p->manage_cgroups_mode, err);
		if (r < 0)
			return r;
	}
	size_t masked = cfg->linux_.masked_paths ? cella_strv_len(cfg->linux_.masked_paths) : 0;
	c->mnt = calloc(cfg->n_mounts + masked + 1, sizeof(*c->mnt));
	c->mnt_ptr = calloc(cfg->n_mounts + masked + 1, sizeof(*c->mnt_ptr));
	if (!c->mnt || !c->mnt_ptr)
		return cella_err_set(err, ENOMEM, "criu options");
	for (size_t i = 0; i < cfg->n_mounts; i++) {
		const struct oci_mount *m = &cfg->mounts[i];
		if (!m->bind)
			continue;
		CriuExtMount *e = &c->mnt[c->n_mnt];
		criu_ext_mount__init(e);
		e->key = m->destination;
		e->val = dump ? m->destination : m->source;
		c->mnt_ptr[c->n_mnt++] = e;
	}
	/* Masked files are /dev/null bound over them (the host's path tells a file from a dir). */
	for (size_t i = 0; i < masked; i++) {
		struct stat sb;
		const char *path = cfg->linux_.masked_paths[i];
		if (stat(path, &sb) < 0 || S_ISDIR(sb.st_mode))
			continue;
		CriuExtMount *e = &c->mnt[c->n_mnt];
		criu_ext_mount__init(e);
		e->key = (char *)path;
		e->val = (char *)(dump ? path : "/dev/null");
		c->mnt_ptr[c->n_mnt++] = e;
	}
	p->n_ext_mnt = c->n_mnt;
	p->ext_mnt = c->mnt_ptr;
	(void)bundle;
	return 0;
}

#define DESCRIPTORS "descriptors.json"

/* Records where the init's fds 0-2 point (readlink of /proc/PID/fd/N, e.g. "pipe:[123]"). */
static int save_descriptors(int image_fd, pid_t pid, struct cella_err *err)
{
	json_t *a = json_array();
	for (int i = 0; i < 3; i++) {
		char path[64], target[PATH_MAX];
		snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, i);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = 0;
		json_array_append_new(a, json_string(target));
	}
	char *text = json_dumps(a, JSON_COMPACT);
	json_decref(a);
	if (!text)
		return cella_err_set(err, ENOMEM, DESCRIPTORS);
	int fd = openat(image_fd, DESCRIPTORS, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int r = fd < 0 || cella_write_all(fd, text, strlen(text)) < 0
			? cella_err_sys(err, errno, "write %s in the image path", DESCRIPTORS)
			: 0;
	if (fd >= 0)
		close(fd);
	free(text);
	return r;
}

/* Stdio pipes of the checkpointed init become our own fds 0-2 (criu inherits them). */
static int inherit_stdio(struct cr_common *c, struct cella_err *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	struct cella_err e = { 0 };
	if (cella_read_file_at(c->image_fd, DESCRIPTORS, 1 << 16, &text, &len, &e) < 0)
		return 0; /* an image from elsewhere: criu recreates what it dumped */
	json_t *a = json_loads(text, 0, NULL);
	if (!json_is_array(a) || json_array_size(a) != 3) {
		json_decref(a);
		return cella_err_set(err, EINVAL, "%s in the image path: expected an array of 3 strings", DESCRIPTORS);
	}
	size_t n = 0;
	for (int i = 0; i < 3; i++) {
		const char *s = json_string_value(json_array_get(a, (size_t)i));
		if (!s || strncmp(s, "pipe:", 5))
			continue;
		bool seen = false; /* 2>&1: one pipe on two fds is one key, criu takes its first fd */
		for (size_t k = 0; k < n; k++)
			seen |= !strcmp(c->inh[k].key, s);
		if (seen)
			continue;
		c->stdio[i] = strdup(s);
		if (!c->stdio[i]) {
			json_decref(a);
			return cella_err_set(err, ENOMEM, DESCRIPTORS);
		}
		criu_inherit_fd__init(&c->inh[n]);
		c->inh[n].key = c->stdio[i];
		c->inh[n].fd = i;
		c->inh_ptr[n] = &c->inh[n];
		n++;
	}
	json_decref(a);
	c->opts.n_inherit_fd = n;
	c->opts.inherit_fd = c->inh_ptr;
	return 0;
}

/* Namespaces joined by path are not part of the container's image: not handled (yet). */
static int check_namespaces(const struct oci_config *cfg, struct cella_err *err)
{
	for (size_t i = 0; i < cfg->linux_.n_namespaces; i++)
		if (cfg->linux_.namespaces[i].path && *cfg->linux_.namespaces[i].path)
			return cella_err_set(err, ENOTSUP,
					     "checkpoint/restore of a container that joins a namespace by path (%s) is "
					     "not supported",
					     cfg->linux_.namespaces[i].path);
	return 0;
}

int container_checkpoint(const struct cella_runtime *rt, const char *id, const struct container_cr_opts *o,
			 struct cella_err *err)
{
	struct container_state *st = NULL;
	struct oci_config *cfg = NULL;
	struct cr_common c;
	struct criu_conn conn = { .sock = -1, .log_name = "dump.log", .work_fd = -1 };
	_cleanup_free_ char *config_path = NULL;
	memset(&c, 0, sizeof(c));
	c.image_fd = c.work_fd = -1;
	CriuCgMode mode;
	if (o->manage_cgroups_mode && cg_mode(o->manage_cgroups_mode, &mode, err) < 0)
		return -EINVAL;
	int r = state_load(rt, id, &st, err);
	if (r < 0)
		return r;
	enum container_status s = state_status(st);
	if (s != STATUS_RUNNING) {
		r = cella_err_set(err, EINVAL, "cannot checkpoint container %s: it is %s, not running", id,
				  state_status_name(s));
		goto out;
	}
	/* criu seizes the tasks with ptrace itself; frozen ones would not stop for it. */
	if (state_paused(st)) {
		r = cella_err_set(err, EINVAL, "cannot checkpoint container %s: it is paused (resume it first)", id);
		goto out;
	}
	config_path = cella_path_join(st->bundle, "config.json");
	if (!config_path) {
		r = cella_err_set(err, ENOMEM, "checkpoint");
		goto out;
	}
	r = oci_config_load(config_path, &cfg, err);
	if (r < 0 || (r = check_namespaces(cfg, err)) < 0 ||
	    (r = cr_common_init(&c, o, cfg, st->bundle, true, err)) < 0)
		goto out;
	c.opts.has_pid = true;
	c.opts.pid = st->pid;
	c.opts.root = st->rootfs;
	c.opts.has_leave_running = c.opts.leave_running = o->leave_running;
	if ((r = save_descriptors(c.image_fd, st->pid, err)) < 0)
		goto out;
	conn.work_fd = c.work_fd;
	conn.work_path = o->work_path && *o->work_path ? o->work_path : o->image_path;
	r = criu_start(&conn, NULL, err);
	if (r < 0)
		goto out;
	CriuReq req = CRIU_REQ__INIT;
	req.type = CRIU_REQ_TYPE__DUMP;
	req.opts = &c.opts;
	struct notify_ctx n = { .console_fd = -1 };
	CriuResp *resp = NULL;
	r = criu_call(&conn, &req, &n, &resp, err);
	if (resp)
		criu_resp__free_unpacked(resp, NULL);
	criu_stop(&conn);
	if (r == 0 && !o->leave_running) {
		/* The dumped tasks are gone: the container goes as runc's does (cgroups, state). */
		r = container_delete(rt, id, true, err);
	}
out:
	if (conn.pid > 0)
		criu_stop(&conn);
	cr_common_free(&c);
	oci_config_free(cfg);
	state_free(st);
	return r;
}

/* cg_root entries: the cgroups criu runs in (the container's), one per hierarchy line of
 * /proc/PID/cgroup ("N:controllers:/path"; the v2 line "0::/path" has no controller). */
static int cgroup_roots(struct cr_common *c, pid_t pid, struct cella_err *err)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	int r = cella_read_file(path, 1 << 20, &text, &len, err);
	if (r < 0)
		return r;
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += text[i] == '\n';
	c->cgr = calloc(n + 1, sizeof(*c->cgr));
	c->cgr_ptr = calloc(n + 1, sizeof(*c->cgr_ptr));
	c->cg_lines = calloc(n + 1, sizeof(char *));
	if (!c->cgr || !c->cgr_ptr || !c->cg_lines)
		return cella_err_set(err, ENOMEM, "cgroup roots");
	size_t k = 0;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && k < n; l = strtok_r(NULL, "\n", &save)) {
		char *a = strchr(l, ':'), *b = a ? strchr(a + 1, ':') : NULL;
		if (!b)
			continue;
		*b = 0;
		c->cg_lines[k] = strdup(l);
		if (!c->cg_lines[k])
			return cella_err_set(err, ENOMEM, "cgroup roots");
		CriuCgroupRoot *cr = &c->cgr[k];
		criu_cgroup_root__init(cr);
		char *ctrl = strchr(c->cg_lines[k], ':') + 1;
		cr->ctrl = *ctrl ? ctrl : NULL;
		cr->path = strdup(b + 1);
		if (!cr->path)
			return cella_err_set(err, ENOMEM, "cgroup roots");
		c->cgr_ptr[k++] = cr;
		c->opts.n_cg_root = k; /* so cgroup_roots_free sees every path so far */
	}
	c->opts.n_cg_root = k;
	c->opts.cg_root = c->cgr_ptr;
	return 0;
}

static void cgroup_roots_free(struct cr_common *c)
{
	for (size_t i = 0; i < c->opts.n_cg_root; i++)
		free(c->cgr[i].path);
	c->opts.n_cg_root = 0;
}

int container_restore(const struct cella_runtime *rt, const struct container_restore_opts *ro, int *exit_status,
		      struct cella_err *err)
{
	const struct container_cr_opts *o = &ro->cr;
	struct oci_config *cfg = NULL;
	struct cgroup_manager *mgr = NULL;
	struct cgroup_instance *cg = NULL;
	struct container_state *st = NULL;
	struct cr_common c;
	struct criu_conn conn = { .sock = -1, .log_name = "restore.log", .work_fd = -1 };
	struct notify_ctx n = { .console_fd = -1 };
	bool dir_made = false;
	char bundle[PATH_MAX], rootfs[PATH_MAX];
	_cleanup_free_ char *config_path = NULL, *root = NULL;
	memset(&c, 0, sizeof(c));
	c.image_fd = c.work_fd = -1;
	*exit_status = 0;

	int r = container_validate_id(ro->id, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *existing = state_dir(rt, ro->id);
	if (existing && access(existing, F_OK) == 0)
		return cella_err_set(err, EEXIST, "container with given ID already exists: %s", ro->id);
	if (!realpath(ro->bundle && *ro->bundle ? ro->bundle : ".", bundle))
		return cella_err_sys(err, errno, "bundle %s", ro->bundle ? ro->bundle : ".");
	config_path = cella_path_join(bundle, "config.json");
	if (!config_path)
		return cella_err_set(err, ENOMEM, "restore");
	r = oci_config_load(config_path, &cfg, err);
	if (r < 0)
		goto fail;
	root = cfg->root.path[0] == '/' ? strdup(cfg->root.path) : cella_path_join(bundle, cfg->root.path);
	if (!root || !realpath(root, rootfs)) {
		r = cella_err_sys(err, root ? errno : ENOMEM, "root.path %s", cfg->root.path);
		goto fail;
	}
	if ((r = check_namespaces(cfg, err)) < 0 || (r = cr_common_init(&c, o, cfg, bundle, false, err)) < 0 ||
	    (r = inherit_stdio(&c, err)) < 0)
		goto fail;
	if (cfg->process.terminal) {
		if (!ro->console_socket) {
			r = cella_err_set(err, EINVAL, "the container has a terminal: restore needs --console-socket");
			goto fail;
		}
		n.console_fd = console_connect(ro->console_socket, err);
		if (n.console_fd < 0) {
			r = n.console_fd;
			goto fail;
		}
		c.opts.has_orphan_pts_master = c.opts.orphan_pts_master = true;
	}
	if ((r = cgroup_manager_open(NULL, &mgr, err)) < 0)
		goto fail;

	/* The state directory first, as create does: whatever a killed restore leaves, delete finds. */
	const char *sroot = state_root(rt);
	if ((r = cella_mkdir_p(sroot, 0700, err)) < 0)
		goto fail;
	st = calloc(1, sizeof(*st));
	if (!st || !(st->id = strdup(ro->id)) || !(st->dir = state_dir(rt, ro->id))) {
		r = cella_err_set(err, ENOMEM, "state");
		goto fail;
	}
	if (mkdir(st->dir, 0711) < 0) {
		r = errno == EEXIST ? cella_err_set(err, EEXIST, "container with given ID already exists: %s", ro->id)
				    : cella_err_sys(err, errno, "mkdir %s", st->dir);
		goto fail;
	}
	dir_made = true;
	st->creator = getpid();
	proc_stat(st->creator, &st->creator_start, NULL);
	st->bundle = strdup(bundle);
	st->rootfs = strdup(rootfs);
	st->created = rfc3339_now();
	st->owner = geteuid();
	st->cgroups_path = cfg->linux_.cgroups_path ? strdup(cfg->linux_.cgroups_path) : NULL;
	st->pid_ns_shared = !oci_config_has_namespace(cfg, OCI_NS_PID);
	if ((r = state_save(st, err)) < 0)
		goto fail;
	const struct oci_linux *l = &cfg->linux_;
	struct cgroup_params params = {
		.id = ro->id,
		.cgroups_path = l->cgroups_path,
		.resources = l->has_resources ? &l->resources : NULL,
		.devices = l->devices,
		.n_devices = l->n_devices,
	};
	if ((r = cgroup_create(mgr, &params, 0, &cg, err)) < 0)
		goto fail;
	st->cgroup = cgroup_instance_to_json(cg);
	if ((r = state_save(st, err)) < 0)
		goto fail;

	conn.work_fd = c.work_fd;
	conn.work_path = o->work_path && *o->work_path ? o->work_path : o->image_path;
	if ((r = criu_start(&conn, rootfs, err)) < 0)
		goto fail;
	/* criu waits for the request: put it in the container's cgroups first, so what it restores
	 * starts there, and tell it those are the roots. */
	if ((r = cgroup_enter(cg, conn.pid, err)) < 0 || (r = cgroup_roots(&c, conn.pid, err)) < 0)
		goto fail;
	c.opts.root = rootfs;
	c.opts.has_rst_sibling = c.opts.rst_sibling = true;
	CriuReq req = CRIU_REQ__INIT;
	req.type = CRIU_REQ_TYPE__RESTORE;
	req.opts = &c.opts;
	CriuResp *resp = NULL;
	r = criu_call(&conn, &req, &n, &resp, err);
	if (r < 0)
		goto fail;
	pid_t pid = resp->restore ? resp->restore->pid : n.restored_pid;
	criu_resp__free_unpacked(resp, NULL);
	criu_stop(&conn);
	if (pid <= 0) {
		r = cella_err_set(err, EPROTO, "criu restore: no pid of the restored init");
		goto fail;
	}
	st->pid = pid;
	proc_stat(pid, &st->pid_start, NULL);
	st->ready = true;
	st->creator = 0;
	st->creator_start = 0;
	if ((r = state_save(st, err)) < 0)
		goto fail;
	if (ro->pid_file && (r = state_write_pid_file(ro->pid_file, pid, err)) < 0)
		goto fail;
	log_debug("restored container %s: init pid %d", ro->id, (int)pid);
	if (!ro->detach) {
		/* Foreground, as `run`: the restored init is our child (rst_sibling); its status is ours. */
		int ws;
		while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
			;
		*exit_status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
		r = container_delete(rt, ro->id, true, err);
	}
	goto out;
fail:
	if (conn.pid > 0)
		kill(conn.pid, SIGKILL);
	if (cg) {
		struct cella_err e = { 0 };
		if (st && st->pid > 0)
			kill(st->pid, SIGKILL);
		cgroup_kill_all(cg, SIGKILL, &e);
		if (cgroup_destroy(cg, &e) < 0)
			log_warn("cleanup: %s", e.msg);
	}
	if (dir_made) {
		struct cella_err e = { 0 };
		if (cella_rm_rf(st->dir, &e) < 0)
			log_warn("cleanup: %s", e.msg);
	}
out:
	if (conn.pid > 0)
		criu_stop(&conn);
	if (n.console_fd >= 0)
		close(n.console_fd);
	cgroup_roots_free(&c);
	cr_common_free(&c);
	if (cg)
		cgroup_instance_free(cg);
	if (mgr)
		cgroup_manager_free(mgr);
	state_free(st);
	oci_config_free(cfg);
	return r;
}
