/* /dev inside the container: default nodes, symlinks, linux.devices; and safe path creation
 * inside the rootfs (nothing resolves outside it, whatever symlinks the image holds). */
#include "runtime/init.h"

#include "base/err.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static int openat2_in_root(int rootfd, const char *path, int flags)
{
	struct open_how how = { .flags = (uint64_t)(flags | O_CLOEXEC),
				.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
	for (;;) {
		long fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
		if (fd >= 0)
			return (int)fd;
		if (errno != EINTR && errno != EAGAIN)
			return -errno;
	}
}

int root_open(int rootfd, const char *path, bool make, bool as_dir, struct cella_err *err)
{
	while (*path == '/')
		path++;
	if (!*path) {
		int fd = openat2_in_root(rootfd, ".", O_PATH | O_DIRECTORY);
		return fd < 0 ? cella_err_sys(err, -fd, "open rootfs") : fd;
	}
	int fd = openat2_in_root(rootfd, path, O_PATH);
	if (fd >= 0 || fd != -ENOENT || !make) {
		if (fd < 0)
			return cella_err_sys(err, -fd, "open %s in the rootfs", path);
		return fd;
	}
	_cleanup_free_ char *buf = strdup(path);
	if (!buf)
		return cella_err_set(err, ENOMEM, "path %s", path);
	/* Usually only the last component is missing (a mount point in a fresh tmpfs): create it in
	 * its parent, resolved inside the root. The name has no '/', so mkdirat cannot escape. */
	char *leaf = strrchr(buf, '/');
	if (leaf && leaf[1] && strcmp(leaf + 1, ".") && strcmp(leaf + 1, "..")) {
		*leaf = '\0';
		_cleanup_close_ int parent = openat2_in_root(rootfd, buf, O_PATH | O_DIRECTORY);
		*leaf = '/';
		if (parent >= 0) {
			int made = as_dir ? mkdirat(parent, leaf + 1, 0755)
					  : openat(parent, leaf + 1, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
			if (made < 0 && errno != EEXIST)
				return cella_err_sys(err, errno, "%s %s in the rootfs", as_dir ? "mkdir" : "create", buf);
			if (!as_dir && made >= 0)
				close(made);
			fd = openat2_in_root(rootfd, buf, O_PATH);
			return fd < 0 ? cella_err_sys(err, -fd, "open %s in the rootfs", buf) : fd;
		}
	}
	/* Create missing components one at a time, each resolved inside the root. */
	_cleanup_close_ int dirfd = openat2_in_root(rootfd, ".", O_PATH | O_DIRECTORY);
	if (dirfd < 0)
		return cella_err_sys(err, -dirfd, "open rootfs");
	char *comp = buf;
	for (;;) {
		char *slash = strchr(comp, '/');
		bool last = !slash;
		if (slash)
			*slash = '\0';
		if (!*comp || !strcmp(comp, ".")) {
			if (last)
				break;
			comp = slash + 1;
			continue;
		}
		/* Prefix so far, resolved in root (follows symlinks safely). */
		int next = openat2_in_root(rootfd, buf, O_PATH | (last ? 0 : O_DIRECTORY));
		if (next == -ENOENT) {
			/* dirfd is the already-resolved parent; create the component there. The name
			 * is a single component without '/', so mkdirat/openat cannot escape. */
			_cleanup_close_ int parent = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (parent < 0)
				return cella_err_sys(err, errno, "open parent of %s", buf);
			if (last && !as_dir) {
				int f = openat(parent, comp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW,
					       0644);
				if (f < 0 && errno != EEXIST)
					return cella_err_sys(err, errno, "create %s in the rootfs", buf);
				if (f >= 0)
					close(f);
			} else if (mkdirat(parent, comp, 0755) < 0 && errno != EEXIST) {
				return cella_err_sys(err, errno, "mkdir %s in the rootfs", buf);
			}
			next = openat2_in_root(rootfd, buf, O_PATH | (last ? 0 : O_DIRECTORY));
		}
		if (next < 0)
			return cella_err_sys(err, -next, "open %s in the rootfs", buf);
		close(dirfd);
		dirfd = next;
		if (last)
			break;
		*slash = '/';
		comp = slash + 1;
	}
	return TAKE_FD(dirfd);
}

struct default_dev {
	const char *name;
	unsigned major, minor;
};

static const struct default_dev default_devs[] = {
	{ "null", 1, 3 }, { "zero", 1, 5 }, { "full", 1, 7 }, { "random", 1, 8 }, { "urandom", 1, 9 }, { "tty", 5, 0 },
};

/* Creates /dev/<path> as a node (mknod), or in a user namespace a bind mount of the host's node. */
static int make_node(struct init_args *a, int rootfd, const char *path, char type, unsigned major,
		     unsigned minor, mode_t perm, uid_t uid, gid_t gid, struct cella_err *err)
{
	const char *rel = path;
	while (*rel == '/')
		rel++;
	/* Parent directory inside the root. */
	_cleanup_free_ char *dir = strdup(rel);
	if (!dir)
		return cella_err_set(err, ENOMEM, "device %s", path);
	char *slash = strrchr(dir, '/');
	const char *name = rel;
	_cleanup_close_ int pfd = -1;
	if (slash) {
		*slash = '\0';
		name = slash + 1;
		pfd = root_open(rootfd, dir, true, true, err);
		if (pfd < 0)
			return pfd;
	} else {
		pfd = openat2_in_root(rootfd, ".", O_PATH | O_DIRECTORY);
	}
	_cleanup_close_ int dfd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return cella_err_sys(err, errno, "device %s: open parent", path);

	if (a->in_userns && (type == 'c' || type == 'u' || type == 'b')) {
		/* mknod is not allowed in a user namespace: bind the host's node over an empty file. */
		int f = openat(dfd, name, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (f < 0)
			return cella_err_sys(err, errno, "device %s: create mount point", path);
		close(f);
		_cleanup_close_ int tfd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (tfd < 0)
			return cella_err_sys(err, errno, "device %s: open", path);
		char host[PATH_MAX];
		snprintf(host, sizeof(host), "/%s", rel);
		char target[64];
		snprintf(target, sizeof(target), "/proc/self/fd/%d", tfd);
		if (mount(host, target, NULL, MS_BIND, NULL) < 0)
			return cella_err_sys(err, errno, "device %s: bind mount from the host", path);
		return 0;
	}
	mode_t kind = type == 'b' ? S_IFBLK : type == 'p' ? S_IFIFO : S_IFCHR;
	unlinkat(dfd, name, 0);
	if (mknodat(dfd, name, kind | (perm & 07777), makedev(major, minor)) < 0)
		return cella_err_sys(err, errno, "device %s: mknod", path);
	/* mknod honours the umask: set the mode exactly. */
	if (fchmodat(dfd, name, perm & 07777, 0) < 0)
		return cella_err_sys(err, errno, "device %s: chmod", path);
	if (fchownat(dfd, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
		return cella_err_sys(err, errno, "device %s: chown", path);
	return 0;
}

int devices_setup(struct init_args *a, int rootfd, bool dev_is_bind, struct cella_err *err)
{
	const struct oci_linux *l = &a->cfg->linux_;
	int r;
	if (!dev_is_bind) {
		_cleanup_close_ int devfd = root_open(rootfd, "/dev", true, true, err);
		if (devfd < 0)
			return devfd;
		for (size_t i = 0; i < ARRAY_SIZE(default_devs); i++) {
			/* A linux.devices entry for the same path wins. */
			bool overridden = false;
			char path[32];
			snprintf(path, sizeof(path), "/dev/%s", default_devs[i].name);
			for (size_t k = 0; k < l->n_devices; k++)
				if (!strcmp(l->devices[k].path, path))
					overridden = true;
			if (overridden)
				continue;
			r = make_node(a, rootfd, path, 'c', default_devs[i].major, default_devs[i].minor, 0666, 0, 0,
				      err);
			if (r < 0)
				return r;
		}
		_cleanup_close_ int dfd = openat(devfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return cella_err_sys(err, errno, "open /dev in the rootfs");
		static const char *const links[][2] = {
			{ "/proc/self/fd", "fd" },       { "/proc/self/fd/0", "stdin" },
			{ "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" },
			{ "pts/ptmx", "ptmx" },          { "/proc/kcore", "core" },
		};
		for (size_t i = 0; i < ARRAY_SIZE(links); i++) {
			if (!strcmp(links[i][1], "core"))
				continue; /* runc adds /dev/core only with /proc/kcore; skip it */
			if (!strcmp(links[i][1], "ptmx"))
				unlinkat(dfd, "ptmx", 0);
			if (symlinkat(links[i][0], dfd, links[i][1]) < 0 && errno != EEXIST)
				return cella_err_sys(err, errno, "symlink /dev/%s", links[i][1]);
		}
		for (const char *const *d = (const char *const[]){ "pts", "shm", NULL }; *d; d++)
			if (mkdirat(dfd, *d, 0755) < 0 && errno != EEXIST)
				return cella_err_sys(err, errno, "mkdir /dev/%s", *d);
	}
	for (size_t i = 0; i < l->n_devices; i++) {
		const struct oci_device *d = &l->devices[i];
		mode_t perm = d->file_mode.set ? (mode_t)d->file_mode.v : 0666;
		uid_t uid = d->uid.set ? (uid_t)d->uid.v : 0;
		gid_t gid = d->gid.set ? (gid_t)d->gid.v : 0;
		r = make_node(a, rootfd, d->path, d->type, (unsigned)d->major, (unsigned)d->minor, perm, uid, gid,
			      err);
		if (r < 0)
			return cella_err_wrap(err, "linux.devices[%zu]", i);
	}
	return 0;
}
