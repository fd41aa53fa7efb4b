/* Re-exec from a sealed memfd copy of our own binary (as runc's cloned_binary does): a process in
 * the container that reaches /proc/<runtime pid>/exe finds an anonymous, write-sealed file, never
 * the host's cella. The marker variable only saves the seal check's cost on the second pass; the
 * seals themselves are what is checked. */
#include "runtime/selfexec.h"

#include "base/err.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#define MARKER "_CELLA_SEALED_EXE"
#define SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

extern char **environ;

bool cella_selfexec_is_sealed(void)
{
	_cleanup_close_ int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	int seals = fcntl(fd, F_GET_SEALS);
	return seals >= 0 && (seals & SEALS) == SEALS;
}

int cella_selfexec_sealed(char **argv, struct cella_err *err)
{
	if (getenv(MARKER) && cella_selfexec_is_sealed()) {
		unsetenv(MARKER);
		return 0;
	}
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
	if (setenv(MARKER, "1", 1) < 0)
		return cella_err_sys(err, errno, "setenv");
	fexecve(mfd, argv, environ);
	int e = errno;
	unsetenv(MARKER);
	return cella_err_sys(err, e, "re-exec from the sealed runtime copy");
}
