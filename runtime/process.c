/* Process settings applied by the container init just before exec: rlimits, user and groups,
 * the five capability sets, environment, and the executable's PATH lookup. */
#include "runtime/init.h"

#include "base/err.h"
#include "base/util.h"
#include "runtime/names.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

int process_rlimits(const struct oci_process *p, struct cella_err *err)
{
	for (size_t i = 0; i < p->n_rlimits; i++) {
		const struct oci_rlimit *rl = &p->rlimits[i];
		struct rlimit lim = { .rlim_cur = rl->soft, .rlim_max = rl->hard };
		if (setrlimit(rl->resource, &lim) < 0)
			return cella_err_sys(err, errno, "process.rlimits[%zu]: setrlimit %s soft=%llu hard=%llu", i,
					     rl->type ? rl->type : "?", (unsigned long long)rl->soft,
					     (unsigned long long)rl->hard);
	}
	return 0;
}

static int last_cap(void)
{
	char buf[16] = { 0 };
	_cleanup_close_ int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	int last = -1;
	if (fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0)
		last = atoi(buf);
	if (last <= 0) {
		/* /proc may be absent in the container: probe the bounding set instead. */
		last = 0;
		while (last < 63 && prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0)
			last++;
	}
	return last;
}

static int apply_caps(const struct oci_capabilities *c, struct cella_err *err)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct data[2];
	uint64_t eff = c->has_effective ? c->effective : 0;
	uint64_t perm = c->has_permitted ? c->permitted : 0;
	uint64_t inh = c->has_inheritable ? c->inheritable : 0;
	for (int i = 0; i < 2; i++) {
		data[i].effective = (uint32_t)(eff >> (32 * i));
		data[i].permitted = (uint32_t)(perm >> (32 * i));
		data[i].inheritable = (uint32_t)(inh >> (32 * i));
	}
	if (syscall(SYS_capset, &hdr, data) < 0)
		return cella_err_sys(err, errno, "process.capabilities: capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		return cella_err_sys(err, errno, "process.capabilities.ambient: clear");
	if (c->has_ambient) {
		for (int cap = 0; cap < 64; cap++) {
			if (!(c->ambient & (1ULL << cap)))
				continue;
			/* EPERM: not in permitted+inheritable; crun skips such caps the same way. */
			if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 && errno != EPERM)
				return cella_err_sys(err, errno, "process.capabilities.ambient: raise %s",
						     cella_cap_name(cap) ? cella_cap_name(cap) : "?");
		}
	}
	return 0;
}

int process_user_caps(const struct oci_process *p, struct cella_err *err)
{
	const struct oci_capabilities *c = &p->caps;
	if (p->has_caps) {
		uint64_t bounding = c->has_bounding ? c->bounding : 0;
		int last = last_cap();
		for (int cap = 0; cap <= last; cap++) {
			if (cap < 64 && (bounding & (1ULL << cap)))
				continue;
			if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
				return cella_err_sys(err, errno, "process.capabilities.bounding: drop %s",
						     cella_cap_name(cap) ? cella_cap_name(cap) : "?");
		}
		if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
			return cella_err_sys(err, errno, "prctl(PR_SET_KEEPCAPS)");
	}
	const struct oci_user *u = &p->user;
	if (setgroups(u->n_additional_gids, u->additional_gids) < 0) {
		/* In a user namespace with setgroups denied, an empty list is all we can have. */
		if (!(errno == EPERM && u->n_additional_gids == 0))
			return cella_err_sys(err, errno, "process.user.additionalGids: setgroups");
	}
	if (setresgid(u->gid, u->gid, u->gid) < 0)
		return cella_err_sys(err, errno, "process.user.gid: setgid %u", (unsigned)u->gid);
	if (setresuid(u->uid, u->uid, u->uid) < 0)
		return cella_err_sys(err, errno, "process.user.uid: setuid %u", (unsigned)u->uid);
	if (p->has_caps) {
		if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
			return cella_err_sys(err, errno, "prctl(PR_SET_KEEPCAPS)");
		int r = apply_caps(c, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static bool env_has(char *const *env, const char *name)
{
	size_t n = strlen(name);
	for (char *const *e = env; e && *e; e++)
		if (!strncmp(*e, name, n) && (*e)[n] == '=')
			return true;
	return false;
}

/* Home directory of uid from the container's /etc/passwd, or "/". */
static char *home_of(uid_t uid)
{
	char *home = cella_passwd_field("/etc/passwd", uid, 5);
	return home ? home : strdup("/");
}

char **process_env(const struct oci_process *p)
{
	size_t n = cella_strv_len(p->env);
	char **env = calloc(n + 2, sizeof(char *));
	if (!env)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		env[k++] = p->env[i];
	if (!env_has(p->env, "HOME")) {
		_cleanup_free_ char *home = home_of(p->user.uid);
		env[k++] = cella_strdup_printf("HOME=%s", home ? home : "/");
	}
	env[k] = NULL;
	return env;
}

static bool is_executable(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && (sb.st_mode & 0111) && access(path, X_OK) == 0;
}

char *process_find_exec(const char *file, char *const *env, struct cella_err *err)
{
	if (strchr(file, '/')) {
		if (is_executable(file))
			return strdup(file);
		cella_err_sys(err, errno ? errno : EACCES, "exec: \"%s\"", file);
		return NULL;
	}
	const char *path = DEFAULT_PATH;
	for (char *const *e = env; e && *e; e++)
		if (!strncmp(*e, "PATH=", 5))
			path = *e + 5;
	_cleanup_free_ char *dirs = strdup(path);
	char *s = dirs;
	for (char *dir; s && (dir = strsep(&s, ":"));) {
		_cleanup_free_ char *cand = cella_path_join(*dir ? dir : ".", file);
		if (cand && is_executable(cand))
			return TAKE_PTR(cand);
	}
	cella_err_set(err, ENOENT, "exec: \"%s\": executable file not found in $PATH", file);
	return NULL;
}
