/* Namespaces: joining existing ones by path, uid/gid maps, and a fork-style clone. */
#include "runtime/init.h"

#include "base/err.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <linux/sched.h>
#include <sched.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

pid_t ns_clone(unsigned long flags, int cgroup_fd, bool *in_cgroup)
{
	*in_cgroup = false;
	/* Raw clone without a new stack: the child continues like after fork(). glibc's clone()
	 * wrapper would need a separate stack, which ASan cannot see. */
	if (cgroup_fd >= 0) {
		struct clone_args ca = {
			.flags = flags | CLONE_INTO_CGROUP,
			.exit_signal = SIGCHLD,
			.cgroup = (uint64_t)cgroup_fd,
		};
		long pid = syscall(SYS_clone3, &ca, sizeof(ca));
		if (pid >= 0) {
			*in_cgroup = true;
			return (pid_t)pid;
		}
		/* Kernels before 5.7 (ENOSYS, E2BIG), or a directory the kernel will not start a
		 * process in: a plain clone, and the runtime's cgroup.procs write reports why. */
	}
	return (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
}

void ns_close_joined(int fds[OCI_NS_COUNT])
{
	for (int i = 0; i < OCI_NS_COUNT; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

int ns_open_joined(const struct oci_config *cfg, int fds[OCI_NS_COUNT], struct cella_err *err)
{
	for (int i = 0; i < OCI_NS_COUNT; i++)
		fds[i] = -1;
	for (size_t i = 0; i < cfg->linux_.n_namespaces; i++) {
		const struct oci_namespace *ns = &cfg->linux_.namespaces[i];
		if (!ns->path || !*ns->path)
			continue;
		int fd = open(ns->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			int e = errno;
			ns_close_joined(fds);
			return cella_err_sys(err, e, "config.json: linux.namespaces[%zu].path: open %s", i,
					     ns->path);
		}
		/* NS_GET_NSTYPE tells what the file is; a wrong type is a config error. */
		int type = ioctl(fd, NS_GET_NSTYPE);
		if (type < 0 || type != oci_ns_clone_flag(ns->type)) {
			close(fd);
			ns_close_joined(fds);
			return cella_err_set(err, EINVAL,
					     "config.json: linux.namespaces[%zu].path: %s is not a %s namespace", i,
					     ns->path, oci_ns_type_name(ns->type));
		}
		fds[ns->type] = fd;
	}
	return 0;
}

static int write_map(pid_t pid, const char *file, const struct oci_id_mapping *m, size_t n,
		     struct cella_err *err)
{
	char buf[4096];
	size_t len = 0;
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(buf + len, sizeof(buf) - len, "%u %u %u\n", m[i].container_id, m[i].host_id,
				 m[i].size);
		if (w < 0 || (size_t)w >= sizeof(buf) - len)
			return cella_err_set(err, E2BIG, "%s: too many mappings", file);
		len += (size_t)w;
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return cella_err_sys(err, errno, "open %s", path);
	if (write(fd, buf, len) != (ssize_t)len)
		return cella_err_sys(err, errno, "write %s (\"%.*s\")", path, (int)(len ? len - 1 : 0), buf);
	return 0;
}

int ns_write_id_maps(pid_t pid, const struct oci_config *cfg, struct cella_err *err)
{
	const struct oci_linux *l = &cfg->linux_;
	int r = 0;
	if (l->n_uid_mappings)
		r = write_map(pid, "uid_map", l->uid_mappings, l->n_uid_mappings, err);
	if (r < 0)
		return cella_err_wrap(err, "user namespace: linux.uidMappings");
	if (l->n_gid_mappings)
		r = write_map(pid, "gid_map", l->gid_mappings, l->n_gid_mappings, err);
	if (r < 0)
		return cella_err_wrap(err, "user namespace: linux.gidMappings");
	return 0;
}

int sync_send(int fd, int type, int code, pid_t pid, const char *msg)
{
	struct sync_msg m = { .type = type, .code = code, .pid = pid };
	if (msg)
		snprintf(m.msg, sizeof(m.msg), "%s", msg);
	size_t len = offsetof(struct sync_msg, msg) + (msg ? strlen(m.msg) + 1 : 0);
	for (;;) {
		ssize_t n = send(fd, &m, len, MSG_NOSIGNAL);
		if (n >= 0)
			return 0;
		if (errno != EINTR)
			return -errno;
	}
}

int sync_recv(int fd, struct sync_msg *m)
{
	memset(m, 0, sizeof(*m));
	for (;;) {
		ssize_t n = recv(fd, m, sizeof(*m), 0);
		if (n == 0)
			return -EPIPE;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if ((size_t)n < offsetof(struct sync_msg, msg))
			return -EPROTO;
		m->msg[sizeof(m->msg) - 1] = '\0';
		return 0;
	}
}
