/* The container's root filesystem: propagation, config mounts, pivot_root, and the finishing
 * touches (readonly and masked paths, readonly root). Runs in the child's mount namespace. */
#include "runtime/init.h"

#include "base/err.h"
#include "base/util.h"
#include "runtime/cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PROPAGATION_FLAGS (MS_SHARED | MS_SLAVE | MS_PRIVATE | MS_UNBINDABLE)

/* Flags a bind remount must keep (the kernel locks them in a user namespace). */
static unsigned long locked_flags(const char *path)
{
	struct statvfs s;
	if (statvfs(path, &s) < 0)
		return 0;
	unsigned long f = 0;
	if (s.f_flag & ST_NOSUID)
		f |= MS_NOSUID;
	if (s.f_flag & ST_NODEV)
		f |= MS_NODEV;
	if (s.f_flag & ST_NOEXEC)
		f |= MS_NOEXEC;
	if (s.f_flag & ST_NOATIME)
		f |= MS_NOATIME;
	if (s.f_flag & ST_NODIRATIME)
		f |= MS_NODIRATIME;
	if (s.f_flag & ST_RELATIME)
		f |= MS_RELATIME;
	return f;
}

/* Bind remount with flags; on EPERM retry keeping the mount's locked flags. */
static int bind_remount(const char *target, unsigned long flags)
{
	unsigned long base = MS_BIND | MS_REMOUNT | (flags & ~(PROPAGATION_FLAGS | MS_BIND | MS_REC | MS_REMOUNT));
	if (mount(NULL, target, NULL, base, NULL) == 0)
		return 0;
	if (errno != EPERM)
		return -errno;
	if (mount(NULL, target, NULL, base | locked_flags(target), NULL) == 0)
		return 0;
	return -errno;
}

static void fd_path(char *buf, size_t cap, int fd)
{
	snprintf(buf, cap, "/proc/self/fd/%d", fd);
}

static char *resolve_source(const char *bundle, const char *src)
{
	if (!src)
		return NULL;
	if (src[0] == '/')
		return strdup(src);
	return cella_path_join(bundle, src);
}

/* Applies remount flags and propagation to the mount now at dest (reopened so the fd is the new
 * mount's root, not the directory underneath). */
static int finish_mount(int rootfd, const struct oci_mount *m, bool remount, struct cella_err *err)
{
	if (!remount && !m->propagation)
		return 0;
	_cleanup_close_ int fd = root_open(rootfd, m->destination, false, false, err);
	if (fd < 0)
		return fd;
	char target[64];
	fd_path(target, sizeof(target), fd);
	if (remount) {
		int r = bind_remount(target, m->flags);
		if (r < 0)
			return cella_err_sys(err, -r, "remount %s", m->destination);
	}
	if (m->propagation && mount(NULL, target, NULL, m->propagation, NULL) < 0)
		return cella_err_sys(err, errno, "set propagation of %s", m->destination);
	return 0;
}

static int mount_bind(struct init_args *a, int rootfd, const struct oci_mount *m, struct cella_err *err)
{
	_cleanup_free_ char *src = resolve_source(a->bundle, m->source);
	if (!src)
		return cella_err_set(err, EINVAL, "bind mount on %s: no source", m->destination);
	struct stat sb;
	if (stat(src, &sb) < 0)
		return cella_err_sys(err, errno, "bind mount source %s", src);
	_cleanup_close_ int fd = root_open(rootfd, m->destination, true, S_ISDIR(sb.st_mode), err);
	if (fd < 0)
		return fd;
	char target[64];
	fd_path(target, sizeof(target), fd);
	if (mount(src, target, NULL, MS_BIND | (m->flags & MS_REC), NULL) < 0)
		return cella_err_sys(err, errno, "bind mount %s on %s", src, m->destination);
	bool remount = (m->flags & ~(PROPAGATION_FLAGS | MS_BIND | MS_REC)) != 0;
	return finish_mount(rootfd, m, remount, err);
}

static const char *last_component(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

/* A "cgroup" mount: cgroup2 directly on a pure-v2 host with a cgroup namespace; otherwise a tmpfs
 * with the container's own directory of every hierarchy bind-mounted (as runc does on v1). */
static int mount_cgroup(struct init_args *a, int rootfd, const struct oci_mount *m, struct cella_err *err)
{
	unsigned long flags = m->flags & ~(PROPAGATION_FLAGS | MS_BIND | MS_REC);
	bool ro = flags & MS_RDONLY;
	_cleanup_close_ int fd = root_open(rootfd, m->destination, true, true, err);
	if (fd < 0)
		return fd;
	char target[64];
	fd_path(target, sizeof(target), fd);
	size_t n = a->cgroup ? cgroup_instance_count(a->cgroup) : 0;
	struct cgroup_dir_info info;
	bool cgns = (a->clone_flags & CLONE_NEWCGROUP) || oci_config_has_namespace(a->cfg, OCI_NS_CGROUP);
	if (n == 1 && cgroup_instance_dir(a->cgroup, 0, &info) == 0 && info.v2 && cgns) {
		if (mount("cgroup2", target, "cgroup2", flags, NULL) < 0)
			return cella_err_sys(err, errno, "mount cgroup2 on %s", m->destination);
		return finish_mount(rootfd, m, false, err);
	}
	if (n == 1 && cgroup_instance_dir(a->cgroup, 0, &info) == 0 && info.v2) {
		if (mount(info.path, target, NULL, MS_BIND, NULL) < 0)
			return cella_err_sys(err, errno, "bind mount %s on %s", info.path, m->destination);
		_cleanup_close_ int nfd = root_open(rootfd, m->destination, false, true, err);
		if (nfd < 0)
			return nfd;
		fd_path(target, sizeof(target), nfd);
		if (ro && bind_remount(target, flags) < 0)
			return cella_err_sys(err, errno, "remount %s read-only", m->destination);
		return finish_mount(rootfd, m, false, err);
	}
	if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755") < 0)
		return cella_err_sys(err, errno, "mount tmpfs on %s", m->destination);
	for (size_t i = 0; i < n; i++) {
		if (cgroup_instance_dir(a->cgroup, i, &info) < 0)
			continue;
		const char *name = last_component(info.mount);
		if (!name || !*name)
			continue;
		_cleanup_free_ char *dest = cella_path_join(m->destination, name);
		if (!dest)
			return cella_err_set(err, ENOMEM, "cgroup mount");
		_cleanup_close_ int dfd = root_open(rootfd, dest, true, true, err);
		if (dfd < 0)
			return dfd;
		char dt[64];
		fd_path(dt, sizeof(dt), dfd);
		if (mount(info.path, dt, NULL, MS_BIND | MS_REC, NULL) < 0)
			return cella_err_sys(err, errno, "bind mount %s on %s", info.path, dest);
		if (ro) {
			_cleanup_close_ int nfd = root_open(rootfd, dest, false, true, err);
			if (nfd < 0)
				return nfd;
			fd_path(dt, sizeof(dt), nfd);
			int r = bind_remount(dt, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
			if (r < 0)
				return cella_err_sys(err, -r, "remount %s read-only", dest);
		}
	}
	if (ro) {
		_cleanup_close_ int nfd = root_open(rootfd, m->destination, false, true, err);
		if (nfd < 0)
			return nfd;
		fd_path(target, sizeof(target), nfd);
		if (mount(NULL, target, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755") < 0)
			return cella_err_sys(err, errno, "remount %s read-only", m->destination);
	}
	return finish_mount(rootfd, m, false, err);
}

static int mount_one(struct init_args *a, int rootfd, const struct oci_mount *m, struct cella_err *err)
{
	if (m->bind || (m->type && !strcmp(m->type, "bind")))
		return mount_bind(a, rootfd, m, err);
	if (!m->type)
		return cella_err_set(err, EINVAL, "mount on %s: no type", m->destination);
	if (!strcmp(m->type, "cgroup") || !strcmp(m->type, "cgroup2"))
		return mount_cgroup(a, rootfd, m, err);
	_cleanup_close_ int fd = root_open(rootfd, m->destination, true, true, err);
	if (fd < 0)
		return fd;
	char target[64];
	fd_path(target, sizeof(target), fd);
	unsigned long flags = m->flags & ~(PROPAGATION_FLAGS | MS_BIND | MS_REC);
	const char *src = m->source && *m->source ? m->source : m->type;
	if (mount(src, target, m->type, flags, m->data) < 0) {
		int e = errno;
		/* sysfs in a user namespace that does not own the network namespace: like runc, bind
		 * the host's /sys instead. */
		if (e == EPERM && !strcmp(m->type, "sysfs") && a->in_userns) {
			if (mount("/sys", target, NULL, MS_BIND | MS_REC, NULL) < 0)
				return cella_err_sys(err, errno, "bind mount /sys on %s", m->destination);
			close(fd);
			fd = root_open(rootfd, m->destination, false, true, err);
			if (fd < 0)
				return fd;
			fd_path(target, sizeof(target), fd);
			int r = bind_remount(target, flags);
			if (r < 0)
				return cella_err_sys(err, -r, "remount %s", m->destination);
			return finish_mount(rootfd, m, false, err);
		}
		return cella_err_sys(err, e, "mount %s (type %s%s%s) on %s", src, m->type, m->data ? ", options " : "",
				     m->data ? m->data : "", m->destination);
	}
	return finish_mount(rootfd, m, false, err);
}

static int write_sysctls(const struct oci_linux *l, struct cella_err *err)
{
	for (size_t i = 0; i < l->n_sysctl; i++) {
		_cleanup_free_ char *key = strdup(l->sysctl[i].key);
		if (!key)
			return cella_err_set(err, ENOMEM, "sysctl");
		for (char *p = key; *p; p++)
			if (*p == '.')
				*p = '/';
		_cleanup_free_ char *path = cella_path_join("/proc/sys", key);
		if (!path)
			return cella_err_set(err, ENOMEM, "sysctl");
		_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
		const char *v = l->sysctl[i].value;
		if (fd < 0 || write(fd, v, strlen(v)) != (ssize_t)strlen(v))
			return cella_err_sys(err, errno, "linux.sysctl: set %s=%s", l->sysctl[i].key, v);
	}
	return 0;
}

int rootfs_prepare(struct init_args *a, struct cella_err *err)
{
	const struct oci_config *cfg = a->cfg;
	unsigned long prop = cfg->linux_.rootfs_propagation;
	/* Nothing we mount may leak to the host: rslave unless rprivate/runbindable was asked for
	 * (rshared is applied after pivot_root). */
	unsigned long first = (prop & (MS_PRIVATE | MS_UNBINDABLE)) ? (prop & (MS_PRIVATE | MS_UNBINDABLE)) : MS_SLAVE;
	if (mount(NULL, "/", NULL, MS_REC | first, NULL) < 0)
		return cella_err_sys(err, errno, "make / %s", first == MS_SLAVE ? "rslave" : "rprivate");
	if (mount(a->rootfs, a->rootfs, NULL, MS_BIND | MS_REC, NULL) < 0)
		return cella_err_sys(err, errno, "bind mount rootfs %s", a->rootfs);
	_cleanup_close_ int rootfd = open(a->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		return cella_err_sys(err, errno, "open rootfs %s", a->rootfs);

	bool dev_is_bind = false;
	for (size_t i = 0; i < cfg->n_mounts; i++) {
		const struct oci_mount *m = &cfg->mounts[i];
		int r = mount_one(a, rootfd, m, err);
		if (r < 0)
			return cella_err_wrap(err, "mounts[%zu]", i);
		if (!strcmp(m->destination, "/dev") && m->bind)
			dev_is_bind = true;
	}
	int r = devices_setup(a, rootfd, dev_is_bind, err);
	if (r < 0)
		return r;
	r = write_sysctls(&cfg->linux_, err);
	if (r < 0)
		return r;
	if (cfg->hostname && sethostname(cfg->hostname, strlen(cfg->hostname)) < 0)
		return cella_err_sys(err, errno, "sethostname %s", cfg->hostname);
	if (cfg->domainname && setdomainname(cfg->domainname, strlen(cfg->domainname)) < 0)
		return cella_err_sys(err, errno, "setdomainname %s", cfg->domainname);
	return 0;
}

int rootfs_pivot(struct init_args *a, struct cella_err *err)
{
	if (a->no_pivot) {
		if (chdir(a->rootfs) < 0)
			return cella_err_sys(err, errno, "chdir %s", a->rootfs);
		if (mount(a->rootfs, "/", NULL, MS_MOVE, NULL) < 0)
			return cella_err_sys(err, errno, "move rootfs to /");
		if (chroot(".") < 0)
			return cella_err_sys(err, errno, "chroot");
		if (chdir("/") < 0)
			return cella_err_sys(err, errno, "chdir /");
	} else {
		_cleanup_close_ int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
		_cleanup_close_ int newroot = open(a->rootfs, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
		if (oldroot < 0 || newroot < 0)
			return cella_err_sys(err, errno, "open / or %s", a->rootfs);
		if (fchdir(newroot) < 0)
			return cella_err_sys(err, errno, "chdir %s", a->rootfs);
		if (syscall(SYS_pivot_root, ".", ".") < 0)
			return cella_err_sys(err, errno, "pivot_root %s", a->rootfs);
		/* The old root is now stacked under the new one: detach it without propagating. */
		if (fchdir(oldroot) < 0)
			return cella_err_sys(err, errno, "chdir old root");
		if (mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) < 0)
			return cella_err_sys(err, errno, "make old root rslave");
		if (umount2(".", MNT_DETACH) < 0)
			return cella_err_sys(err, errno, "unmount old root");
		if (chdir("/") < 0)
			return cella_err_sys(err, errno, "chdir /");
	}
	unsigned long prop = a->cfg->linux_.rootfs_propagation;
	if ((prop & MS_SHARED) && mount(NULL, "/", NULL, MS_REC | MS_SHARED, NULL) < 0)
		return cella_err_sys(err, errno, "make / rshared");
	return 0;
}

int rootfs_mount_console(const char *slave, struct cella_err *err)
{
	int fd = open("/dev/console", O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 && errno != EEXIST)
		return cella_err_sys(err, errno, "create /dev/console");
	if (fd >= 0)
		close(fd);
	if (mount(slave, "/dev/console", NULL, MS_BIND, NULL) < 0)
		return cella_err_sys(err, errno, "bind mount %s on /dev/console", slave);
	return 0;
}

int rootfs_finalize(struct init_args *a, struct cella_err *err)
{
	const struct oci_linux *l = &a->cfg->linux_;
	for (char **p = l->readonly_paths; p && *p; p++) {
		if (mount(*p, *p, NULL, MS_BIND | MS_REC, NULL) < 0) {
			if (errno == ENOENT)
				continue;
			return cella_err_sys(err, errno, "linux.readonlyPaths: bind %s", *p);
		}
		int r = bind_remount(*p, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
		if (r < 0)
			r = bind_remount(*p, MS_RDONLY);
		if (r < 0)
			return cella_err_sys(err, -r, "linux.readonlyPaths: remount %s read-only", *p);
	}
	for (char **p = l->masked_paths; p && *p; p++) {
		struct stat sb;
		if (stat(*p, &sb) < 0) {
			if (errno == ENOENT)
				continue;
			return cella_err_sys(err, errno, "linux.maskedPaths: stat %s", *p);
		}
		int r = S_ISDIR(sb.st_mode) ? mount("tmpfs", *p, "tmpfs", MS_RDONLY, "size=0")
					    : mount("/dev/null", *p, NULL, MS_BIND, NULL);
		if (r < 0)
			return cella_err_sys(err, errno, "linux.maskedPaths: mask %s", *p);
	}
	if (a->cfg->root.readonly) {
		int r = bind_remount("/", MS_RDONLY);
		if (r < 0)
			return cella_err_sys(err, -r, "remount / read-only");
	}
	return 0;
}
