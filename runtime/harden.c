/* Capability bounding-set check and a cwd that cannot point outside the container root. */
#include "runtime/harden.h"

#include "base/err.h"
#include "base/util.h"
#include "runtime/names.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int harden_check_caps(const struct oci_process *p, const char *what, struct cella_err *err)
{
	if (!p->has_caps)
		return 0;
	const struct oci_capabilities *c = &p->caps;
	const struct { const char *name; bool has; uint64_t set; } sets[] = {
		{ "bounding", c->has_bounding, c->bounding },
		{ "effective", c->has_effective, c->effective },
		{ "inheritable", c->has_inheritable, c->inheritable },
		{ "permitted", c->has_permitted, c->permitted },
		{ "ambient", c->has_ambient, c->ambient },
	};
	for (size_t s = 0; s < sizeof(sets) / sizeof(sets[0]); s++) {
		if (!sets[s].has)
			continue;
		for (int cap = 0; cap < 64; cap++) {
			if (!(sets[s].set & (1ULL << cap)))
				continue;
			/* 1 = in the set, 0 = not, -1 EINVAL = unknown to this kernel. */
			if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1)
				continue;
			const char *name = cella_cap_name(cap);
			char num[16];
			snprintf(num, sizeof(num), "%d", cap);
			return cella_err_set(err, EPERM, "%s.capabilities.%s: %s is not in the runtime's bounding set", what,
					     sets[s].name, name ? name : num);
		}
	}
	return 0;
}

/* openat2 with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, or -ENOSYS. */
static int open_in_root(int rootfd, const char *path)
{
	struct open_how how = {
		.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
		.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
	};
	long fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
	return fd < 0 ? -errno : (int)fd;
}

int harden_chdir(const char *cwd, const char *what, struct cella_err *err)
{
	_cleanup_close_ int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root < 0)
		return cella_err_sys(err, errno, "open /");
	int fd = open_in_root(root, cwd);
	if (fd == -ENOENT) {
		cella_mkdir_p(cwd, 0755, NULL);
		fd = open_in_root(root, cwd);
	}
	if (fd == -ENOSYS) {
		/* Before Linux 5.6: a plain chdir, checked below. */
		if (chdir(cwd) < 0)
			return cella_err_sys(err, errno, "%s: chdir %s", what, cwd);
	} else if (fd < 0) {
		if (fd == -ELOOP || fd == -EXDEV)
			return cella_err_set(err, EPERM, "%s: %s leaves the container root (magic link or escape)", what,
					     cwd);
		return cella_err_sys(err, -fd, "%s: chdir %s", what, cwd);
	} else {
		int r = fchdir(fd);
		int e = errno;
		close(fd);
		if (r < 0)
			return cella_err_sys(err, e, "%s: chdir %s", what, cwd);
	}
	return harden_cwd_inside_root(cwd, what, err);
}

int harden_cwd_inside_root(const char *cwd, const char *what, struct cella_err *err)
{
	/* The kernel says "(unreachable)" (glibc: ENOENT) for a cwd outside our root. */
	char buf[PATH_MAX];
	if (!getcwd(buf, sizeof(buf)) || buf[0] != '/')
		return cella_err_set(err, EPERM, "%s: %s is outside the container root", what, cwd);
	return 0;
}
