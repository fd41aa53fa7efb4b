/* linux.seccomp through libseccomp: every action, argument conditions (one rule ANDing them, or
 * one rule per condition when an argument index repeats, as runc does), architectures and flags. */
#include "runtime/seccomp.h"

#include "base/err.h"
#include "base/log.h"
#include "runtime/config.h"

#include <ctype.h>
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct cella_seccomp {
	scmp_filter_ctx ctx;
	bool notify;
};

const char *const cella_seccomp_actions[] = {
	"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
	"SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP", NULL,
};
const char *const cella_seccomp_operators[] = {
	"SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ",
	"SCMP_CMP_NE", NULL,
};
const char *const cella_seccomp_archs[] = {
	"SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
	"SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PARISC",
	"SCMP_ARCH_PARISC64", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_RISCV64",
	"SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", NULL,
};
const char *const cella_seccomp_flags[] = {
	"SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC", NULL,
};

/* errnoRet as the kernel returns it: 16 bits. */
static int to_action(const char *name, const struct oci_opt_u64 *ret, const char *path, uint32_t *out,
		     struct cella_err *err)
{
	if (ret->set && ret->v > 0xffff)
		return cella_err_set(err, EINVAL, "%s: errnoRet %llu out of range", path, (unsigned long long)ret->v);
	uint32_t eno = ret->set ? (uint32_t)ret->v : EPERM;
	if (ret->set && strcmp(name, "SCMP_ACT_ERRNO") && strcmp(name, "SCMP_ACT_TRACE"))
		return cella_err_set(err, EINVAL, "%s: errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE",
				     path);
	if (!strcmp(name, "SCMP_ACT_KILL") || !strcmp(name, "SCMP_ACT_KILL_THREAD"))
		*out = SCMP_ACT_KILL_THREAD;
	else if (!strcmp(name, "SCMP_ACT_KILL_PROCESS"))
		*out = SCMP_ACT_KILL_PROCESS;
	else if (!strcmp(name, "SCMP_ACT_TRAP"))
		*out = SCMP_ACT_TRAP;
	else if (!strcmp(name, "SCMP_ACT_ERRNO"))
		*out = SCMP_ACT_ERRNO(eno);
	else if (!strcmp(name, "SCMP_ACT_TRACE"))
		*out = SCMP_ACT_TRACE(eno);
	else if (!strcmp(name, "SCMP_ACT_ALLOW"))
		*out = SCMP_ACT_ALLOW;
	else if (!strcmp(name, "SCMP_ACT_LOG"))
		*out = SCMP_ACT_LOG;
	else if (!strcmp(name, "SCMP_ACT_NOTIFY"))
		*out = SCMP_ACT_NOTIFY;
	else
		return cella_err_set(err, EINVAL, "%s: unknown seccomp action \"%s\"", path, name);
	return 0;
}

static int to_op(const char *name, enum scmp_compare *out)
{
	static const struct { const char *n; enum scmp_compare op; } t[] = {
		{ "SCMP_CMP_NE", SCMP_CMP_NE }, { "SCMP_CMP_LT", SCMP_CMP_LT }, { "SCMP_CMP_LE", SCMP_CMP_LE },
		{ "SCMP_CMP_EQ", SCMP_CMP_EQ }, { "SCMP_CMP_GE", SCMP_CMP_GE }, { "SCMP_CMP_GT", SCMP_CMP_GT },
		{ "SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (!strcmp(t[i].n, name)) {
			*out = t[i].op;
			return 0;
		}
	return -EINVAL;
}

/* "SCMP_ARCH_X86_64" -> libseccomp's token, 0 if this libseccomp does not know it. */
static uint32_t to_arch(const char *name)
{
	const char *p = "SCMP_ARCH_";
	if (strncmp(name, p, strlen(p)))
		return 0;
	char low[32];
	size_t i = 0;
	for (const char *s = name + strlen(p); *s && i < sizeof(low) - 1; s++)
		low[i++] = (char)tolower((unsigned char)*s);
	low[i] = 0;
	return seccomp_arch_resolve_name(low);
}

static int set_flags(struct cella_seccomp *f, char **flags, struct cella_err *err)
{
	/* The runtime sets no_new_privs itself (or not, as process.noNewPrivileges says). */
	int r = seccomp_attr_set(f->ctx, SCMP_FLTATR_CTL_NNP, 0);
	if (r < 0)
		return cella_err_sys(err, -r, "linux.seccomp: clear the no_new_privs attribute");
	for (size_t i = 0; flags && flags[i]; i++) {
		enum scmp_filter_attr attr;
		unsigned need;
		if (!strcmp(flags[i], "SECCOMP_FILTER_FLAG_TSYNC")) {
			attr = SCMP_FLTATR_CTL_TSYNC;
			need = 2;
		} else if (!strcmp(flags[i], "SECCOMP_FILTER_FLAG_LOG")) {
			attr = SCMP_FLTATR_CTL_LOG;
			need = 3;
		} else if (!strcmp(flags[i], "SECCOMP_FILTER_FLAG_SPEC_ALLOW")) {
			attr = SCMP_FLTATR_CTL_SSB;
			need = 4;
		} else {
			return cella_err_set(err, EOPNOTSUPP, "linux.seccomp.flags[%zu]: %s is not supported by libseccomp %u.%u.%u",
					     i, flags[i], seccomp_version()->major, seccomp_version()->minor,
					     seccomp_version()->micro);
		}
		if (seccomp_api_get() < need)
			return cella_err_set(err, EOPNOTSUPP, "linux.seccomp.flags[%zu]: %s is not supported by this kernel",
					     i, flags[i]);
		r = seccomp_attr_set(f->ctx, attr, 1);
		if (r < 0)
			return cella_err_sys(err, -r, "linux.seccomp.flags[%zu]: %s", i, flags[i]);
	}
	return 0;
}

static int add_syscall(struct cella_seccomp *f, const struct oci_seccomp_syscall *sc, size_t idx, uint32_t def,
		       struct cella_err *err)
{
	char path[64];
	snprintf(path, sizeof(path), "linux.seccomp.syscalls[%zu]", idx);
	uint32_t act;
	int r = to_action(sc->action, &sc->errno_ret, path, &act, err);
	if (r < 0)
		return r;
	if (act == SCMP_ACT_NOTIFY)
		f->notify = true;
	if (act == def) {
		/* libseccomp refuses a rule equal to the default action; the default applies anyway. */
		return 0;
	}
	struct scmp_arg_cmp conds[6 * 4];
	size_t n = 0;
	unsigned count[6] = { 0 };
	bool repeated = false;
	if (sc->n_args > sizeof(conds) / sizeof(conds[0]))
		return cella_err_set(err, E2BIG, "%s.args: too many conditions (%zu)", path, sc->n_args);
	for (size_t i = 0; i < sc->n_args; i++) {
		const struct oci_seccomp_arg *a = &sc->args[i];
		enum scmp_compare op;
		if (to_op(a->op, &op) < 0)
			return cella_err_set(err, EINVAL, "%s.args[%zu].op: unknown seccomp operator \"%s\"", path, i, a->op);
		conds[n++] = (struct scmp_arg_cmp){ .arg = a->index, .op = op, .datum_a = a->value, .datum_b = a->value_two };
		if (++count[a->index] > 1)
			repeated = true;
	}
	for (size_t k = 0; sc->names[k]; k++) {
		const char *name = sc->names[k];
		int nr = seccomp_syscall_resolve_name(name);
		if (nr == __NR_SCMP_ERROR) {
			log_debug("seccomp: skipping unknown syscall \"%s\" (%s.names[%zu])", name, path, k);
			continue;
		}
		if (repeated && n > 1) {
			/* Conditions on the same argument cannot be ANDed by libseccomp: OR them instead. */
			for (size_t i = 0; i < n; i++) {
				r = seccomp_rule_add_array(f->ctx, act, nr, 1, &conds[i]);
				if (r < 0)
					return cella_err_sys(err, -r, "%s: add rule for %s (args[%zu])", path, name, i);
			}
		} else {
			r = seccomp_rule_add_array(f->ctx, act, nr, (unsigned)n, n ? conds : NULL);
			if (r < 0)
				return cella_err_sys(err, -r, "%s: add rule for %s", path, name);
		}
	}
	return 0;
}

int cella_seccomp_build(const struct oci_seccomp *s, struct cella_seccomp **out, struct cella_err *err)
{
	*out = NULL;
	uint32_t def;
	int r = to_action(s->default_action, &s->default_errno_ret, "linux.seccomp.defaultAction", &def, err);
	if (r < 0)
		return r;
	struct cella_seccomp *f = calloc(1, sizeof(*f));
	if (!f)
		return cella_err_set(err, ENOMEM, "linux.seccomp");
	f->notify = def == SCMP_ACT_NOTIFY;
	f->ctx = seccomp_init(def);
	if (!f->ctx) {
		free(f);
		return cella_err_set(err, EINVAL, "linux.seccomp: seccomp_init(%s) failed", s->default_action);
	}
	r = set_flags(f, s->flags, err);
	for (size_t i = 0; r == 0 && s->architectures && s->architectures[i]; i++) {
		uint32_t arch = to_arch(s->architectures[i]);
		if (!arch) {
			/* Unknown to this libseccomp: its syscalls meet the bad-arch action (kill), as if unlisted. */
			log_debug("seccomp: skipping architecture %s (linux.seccomp.architectures[%zu]): unknown to libseccomp",
				  s->architectures[i], i);
			continue;
		}
		int a = seccomp_arch_add(f->ctx, arch);
		if (a < 0 && a != -EEXIST)
			r = cella_err_sys(err, -a, "linux.seccomp.architectures[%zu]: add %s", i, s->architectures[i]);
	}
	for (size_t i = 0; r == 0 && i < s->n_syscalls; i++)
		r = add_syscall(f, &s->syscalls[i], i, def, err);
	if (r == 0 && f->notify && seccomp_api_get() < 5)
		r = cella_err_set(err, EOPNOTSUPP, "linux.seccomp: SCMP_ACT_NOTIFY is not supported by this kernel");
	if (r < 0) {
		cella_seccomp_free(f);
		return r;
	}
	*out = f;
	return 0;
}

bool cella_seccomp_wants_notify(const struct cella_seccomp *f)
{
	return f && f->notify;
}

int cella_seccomp_load(struct cella_seccomp *f, int *notify_fd, struct cella_err *err)
{
	if (notify_fd)
		*notify_fd = -1;
	int r = seccomp_load(f->ctx);
	if (r < 0)
		return cella_err_sys(err, -r, "linux.seccomp: load the filter");
	if (f->notify && notify_fd) {
		int fd = seccomp_notify_fd(f->ctx);
		if (fd < 0)
			return cella_err_sys(err, -fd, "linux.seccomp: get the notify fd");
		*notify_fd = fd;
	}
	return 0;
}

void cella_seccomp_free(struct cella_seccomp *f)
{
	if (!f)
		return;
	if (f->ctx)
		seccomp_release(f->ctx);
	free(f);
}

static json_t *name_list(const char *const *v, bool archs)
{
	json_t *a = json_array();
	for (size_t i = 0; a && v[i]; i++)
		if (!archs || to_arch(v[i]))
			json_array_append_new(a, json_string(v[i]));
	return a;
}

json_t *cella_seccomp_features(void)
{
	json_t *supported = json_array();
	unsigned api = seccomp_api_get();
	static const unsigned need[] = { 3, 4, 2 }; /* LOG, SPEC_ALLOW, TSYNC */
	for (size_t i = 0; supported && cella_seccomp_flags[i]; i++)
		if (api >= need[i])
			json_array_append_new(supported, json_string(cella_seccomp_flags[i]));
	return json_pack("{s:b, s:o, s:o, s:o, s:o, s:o}", "enabled", 1,
			 "actions", name_list(cella_seccomp_actions, false),
			 "operators", name_list(cella_seccomp_operators, false),
			 "archs", name_list(cella_seccomp_archs, true),
			 "knownFlags", name_list(cella_seccomp_flags, false),
			 "supportedFlags", supported);
}

int cella_seccomp_notify_send(const struct oci_seccomp *s, int notify_fd, pid_t pid, json_t *state,
			      struct cella_err *err)
{
	const char *path = s->listener_path;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (!path || strlen(path) >= sizeof(sa.sun_path))
		return cella_err_set(err, EINVAL, "linux.seccomp.listenerPath: invalid socket path");
	strcpy(sa.sun_path, path);
	json_t *doc = json_pack("{s:s, s:[s], s:i, s:s, s:O}", "ociVersion", "1.2.0", "fds", "seccompFd", "pid",
				(json_int_t)pid, "metadata", s->listener_metadata ? s->listener_metadata : "", "state",
				state);
	char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!text)
		return cella_err_set(err, ENOMEM, "seccomp listener state");
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int r = 0;
	if (sock < 0) {
		r = cella_err_sys(err, errno, "linux.seccomp.listenerPath: socket");
	} else if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = cella_err_sys(err, errno, "linux.seccomp.listenerPath: connect to %s", path);
	} else {
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} u;
		memset(&u, 0, sizeof(u));
		struct iovec iov = { .iov_base = text, .iov_len = strlen(text) };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
				      .msg_controllen = sizeof(u.buf) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &notify_fd, sizeof(int));
		ssize_t n;
		do
			n = sendmsg(sock, &msg, MSG_NOSIGNAL);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			r = cella_err_sys(err, errno, "linux.seccomp.listenerPath: send the notify fd to %s", path);
		else if ((size_t)n < iov.iov_len)
			r = cella_err_set(err, EIO, "linux.seccomp.listenerPath: short write to %s", path);
	}
	if (sock >= 0)
		close(sock);
	free(text);
	return r;
}
