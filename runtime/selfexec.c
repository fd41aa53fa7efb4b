/* CVE-2019-5736: a process in the container that reaches /proc/<runtime pid>/exe must never be
 * able to write the host's cella. So create/run/exec re-execute the binary through a read-only,
 * detached bind mount of itself (open_tree + mount_setattr, as crun's ro bind mount but without
 * touching the host's mount table): /proc/PID/exe is then a file on a read-only mount, and every
 * open for writing fails with EROFS. Nothing is copied, and the mount goes away with the last
 * process that maps the binary. Kernels without the new mount API (before 5.12), or a caller
 * without CAP_SYS_ADMIN, get runc's older way: a sealed memfd copy. A binary installed on a
 * read-only filesystem is already safe and is not re-executed. The marker variable only stops
 * a loop if a re-exec ever failed to protect the binary. */
#include "runtime/selfexec.h"

#include "base/err.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MARKER "_CELLA_PROTECTED_EXE"
#define SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

extern char **environ;

bool cella_selfexec_is_protected(void)
{
	_cleanup_close_ int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals >= 0 && (seals & SEALS) == SEALS)
		return true;
	struct statvfs sv;
	return fstatvfs(fd, &sv) == 0 && (sv.f_flag & ST_RDONLY);
}

/* Returns only when the kernel cannot do it (the caller falls back to the memfd copy). */
static void exec_readonly_mount(char **argv)
{
	_cleanup_close_ int tree = (int)syscall(SYS_open_tree, AT_FDCWD, "/proc/self/exe",
						OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
	if (tree < 0)
		return;
	struct mount_attr attr = { .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV };
	if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
		return;
	syscall(SYS_execveat, tree, "", argv, environ, AT_EMPTY_PATH);
}

static int exec_sealed_copy(char **argv, struct cella_err *err)
{
	_cleanup_close_ int src = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return cella_err_sys(err, errno, "open /proc/self/exe");
	struct stat sb;
	if (fstat(src, &sb) < 0)
		return cella_err_sys(err, errno, "stat /proc/self/exe");
	_cleanup_close_ int mfd = memfd_create("cella", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0)
		return cella_err_sys(err, errno, "memfd_create for the sealed runtime copy");
	off_t off = 0;
	while (off < sb.st_size) {
		ssize_t n = sendfile(mfd, src, &off, (size_t)(sb.st_size - off));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return cella_err_sys(err, n < 0 ? errno : EIO, "copy /proc/self/exe into a memfd");
	}
	if (fcntl(mfd, F_ADD_SEALS, SEALS) < 0)
		return cella_err_sys(err, errno, "seal the runtime copy");
	fexecve(mfd, argv, environ);
	return cella_err_sys(err, errno, "re-exec from the sealed runtime copy");
}

int cella_selfexec_protected(char **argv, struct cella_err *err)
{
	if (cella_selfexec_is_protected()) {
		unsetenv(MARKER);
		return 0;
	}
	if (getenv(MARKER))
		return cella_err_set(err, EPERM, "re-executed, but /proc/self/exe is still writable: refusing to run");
	if (setenv(MARKER, "1", 1) < 0)
		return cella_err_sys(err, errno, "setenv");
	exec_readonly_mount(argv);
	int r = exec_sealed_copy(argv, err);
	unsetenv(MARKER);
	return r;
}
