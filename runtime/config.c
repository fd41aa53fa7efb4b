/* config.json -> struct oci_config: type checks, name resolution and semantic checks.
 *
 * Every parse_* function fills a struct that is already attached to the config being built, so one
 * oci_config_free() releases whatever was parsed before an error. Errors name the JSON path; the
 * document name ("config.json") is prefixed once, at the top. Unknown fields are ignored (the
 * runtime-spec asks runtimes to be forward compatible). */
#include "runtime/config.h"

#include "base/err.h"
#include "base/json.h"
#include "base/util.h"
#include "runtime/names.h"

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

#define CONFIG_MAX_BYTES (16u << 20)

#define TRY(expr)                         \
	do {                              \
		int _r = (expr);          \
		if (_r < 0)               \
			return _r;        \
	} while (0)

static int enomem(struct cella_err *err)
{
	return cella_err_set(err, ENOMEM, "out of memory");
}

static int type_err(const json_t *j, const char *path, const char *want, struct cella_err *err)
{
	return cella_err_set(err, EINVAL, "%s: expected %s, got %s", path, want, cj_type_name(j));
}

static bool is_abs(const char *s)
{
	return s && s[0] == '/';
}

/* ---- small getters that copy into the struct ---- */

/* A string that must be an absolute path. */
static int get_abs(const json_t *obj, const char *path, const char *key, bool required, char **out,
		   struct cella_err *err)
{
	int r = cj_get_strdup(obj, path, key, required, out, err);
	if (r <= 0)
		return r;
	if (!is_abs(*out)) {
		char sub[CJ_PATH_MAX];
		cj_subpath(sub, sizeof(sub), path, key);
		return cella_err_set(err, EINVAL, "%s: must be an absolute path, got \"%s\"", sub, *out);
	}
	return 1;
}

static int get_strv(const json_t *obj, const char *path, const char *key, char ***out, struct cella_err *err)
{
	char **v = NULL;
	int r = cj_get_strv(obj, path, key, false, &v, err);
	if (r <= 0)
		return r;
	cella_strv_free(*out);
	*out = v;
	return 1;
}

/* An array of strings that must all be absolute paths. */
static int get_abs_strv(const json_t *obj, const char *path, const char *key, char ***out,
			struct cella_err *err)
{
	int r = get_strv(obj, path, key, out, err);
	if (r <= 0)
		return r;
	for (size_t i = 0; (*out)[i]; i++)
		if (!is_abs((*out)[i])) {
			char sub[CJ_PATH_MAX];
			cj_subpath(sub, sizeof(sub), path, key);
			return cella_err_set(err, EINVAL, "%s[%zu]: must be an absolute path, got \"%s\"", sub, i,
					     (*out)[i]);
		}
	return 1;
}

static int get_opt_i64(const json_t *obj, const char *path, const char *key, struct oci_opt_i64 *o,
		       struct cella_err *err)
{
	int r = cj_get_int64(obj, path, key, false, &o->v, err);
	if (r > 0)
		o->set = true;
	return r;
}

static int get_opt_u64(const json_t *obj, const char *path, const char *key, struct oci_opt_u64 *o,
		       struct cella_err *err)
{
	int r = cj_get_uint64(obj, path, key, false, &o->v, err);
	if (r > 0)
		o->set = true;
	return r;
}

static int get_opt_u32(const json_t *obj, const char *path, const char *key, struct oci_opt_u64 *o,
		       struct cella_err *err)
{
	uint32_t v;
	int r = cj_get_uint32(obj, path, key, false, &v, err);
	if (r > 0) {
		o->set = true;
		o->v = v;
	}
	return r;
}

static int range_err(const char *path, const char *key, long long v, long long lo, long long hi,
		     struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	cj_subpath(sub, sizeof(sub), path, key);
	return cella_err_set(err, ERANGE, "%s: %lld is out of range (%lld..%lld)", sub, v, lo, hi);
}

/* An object whose values must all be strings, as an array of key/value pairs. */
static int get_kv(const json_t *obj, const char *path, const char *key, struct oci_kv **out, size_t *n,
		  struct cella_err *err)
{
	json_t *o;
	int r = cj_get_object(obj, path, key, false, &o, err);
	if (r <= 0)
		return r;
	char sub[CJ_PATH_MAX];
	cj_subpath(sub, sizeof(sub), path, key);
	size_t count = json_object_size(o);
	if (count == 0)
		return 1;
	struct oci_kv *kv = calloc(count, sizeof(*kv));
	if (!kv)
		return enomem(err);
	*out = kv;
	*n = 0;
	const char *k;
	json_t *v;
	json_object_foreach(o, k, v) {
		if (!json_is_string(v)) {
			/* Keys are full of dots ("net.ipv4.ip_forward"): quote them in the path. */
			char el[CJ_PATH_MAX];
			snprintf(el, sizeof(el), "%s[\"%s\"]", sub, k);
			return type_err(v, el, "string", err);
		}
		kv[*n].key = strdup(k);
		kv[*n].value = strdup(json_string_value(v));
		(*n)++;
		if (!kv[*n - 1].key || !kv[*n - 1].value)
			return enomem(err);
	}
	return 1;
}

/* Array of objects: allocates *out (zeroed, count set first so a later error frees cleanly), then
 * calls fn on each element with its path ("mounts[2]"). */
typedef int (*elem_fn)(const json_t *j, const char *path, void *elem, struct cella_err *err);

static int get_obj_array(const json_t *obj, const char *path, const char *key, size_t size, void **out,
			 size_t *n, elem_fn fn, struct cella_err *err)
{
	json_t *arr;
	int r = cj_get_array(obj, path, key, false, &arr, err);
	if (r <= 0)
		return r;
	char sub[CJ_PATH_MAX], el[CJ_PATH_MAX];
	cj_subpath(sub, sizeof(sub), path, key);
	size_t count = json_array_size(arr);
	if (count == 0)
		return 1;
	char *items = calloc(count, size);
	if (!items)
		return enomem(err);
	*out = items;
	*n = count;
	for (size_t i = 0; i < count; i++) {
		json_t *e = json_array_get(arr, i);
		cj_subpath_index(el, sizeof(el), sub, i);
		TRY(cj_expect_object(e, el, err));
		TRY(fn(e, el, items + i * size, err));
	}
	return 1;
}

/* ---- process ---- */

static int parse_cap_set(const json_t *caps, const char *path, const char *key, uint64_t *set, bool *has,
			 struct cella_err *err)
{
	json_t *arr;
	int r = cj_get_array(caps, path, key, false, &arr, err);
	if (r <= 0)
		return r;
	char sub[CJ_PATH_MAX], el[CJ_PATH_MAX];
	cj_subpath(sub, sizeof(sub), path, key);
	*has = true;
	*set = 0;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *e = json_array_get(arr, i);
		cj_subpath_index(el, sizeof(el), sub, i);
		if (!json_is_string(e))
			return type_err(e, el, "string", err);
		int cap = cella_cap_from_name(json_string_value(e));
		if (cap < 0)
			return cella_err_set(err, EINVAL, "%s: unknown capability \"%s\"", el, json_string_value(e));
		*set |= UINT64_C(1) << cap;
	}
	return 1;
}

static int parse_caps(const json_t *proc, const char *path, struct oci_process *p, struct cella_err *err)
{
	json_t *caps;
	char sub[CJ_PATH_MAX];
	int r = cj_get_object(proc, path, "capabilities", false, &caps, err);
	if (r <= 0)
		return r;
	cj_subpath(sub, sizeof(sub), path, "capabilities");
	struct oci_capabilities *c = &p->caps;
	p->has_caps = true;
	TRY(parse_cap_set(caps, sub, "bounding", &c->bounding, &c->has_bounding, err));
	TRY(parse_cap_set(caps, sub, "effective", &c->effective, &c->has_effective, err));
	TRY(parse_cap_set(caps, sub, "inheritable", &c->inheritable, &c->has_inheritable, err));
	TRY(parse_cap_set(caps, sub, "permitted", &c->permitted, &c->has_permitted, err));
	TRY(parse_cap_set(caps, sub, "ambient", &c->ambient, &c->has_ambient, err));
	return 1;
}

static int parse_rlimit(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_rlimit *rl = elem;
	char sub[CJ_PATH_MAX];
	TRY(cj_get_strdup(j, path, "type", true, &rl->type, err));
	cj_subpath(sub, sizeof(sub), path, "type");
	rl->resource = cella_rlimit_from_name(rl->type);
	if (rl->resource < 0)
		return cella_err_set(err, EINVAL, "%s: unknown rlimit \"%s\"", sub, rl->type);
	TRY(cj_get_uint64(j, path, "hard", true, &rl->hard, err));
	TRY(cj_get_uint64(j, path, "soft", true, &rl->soft, err));
	if (rl->soft > rl->hard)
		return cella_err_set(err, EINVAL, "%s: soft limit %" PRIu64 " exceeds hard limit %" PRIu64, path,
				     rl->soft, rl->hard);
	return 0;
}

static int parse_user(const json_t *proc, const char *path, struct oci_user *u, struct cella_err *err)
{
	json_t *user, *arr;
	char sub[CJ_PATH_MAX], gsub[CJ_PATH_MAX], el[CJ_PATH_MAX];
	int r = cj_get_object(proc, path, "user", false, &user, err);
	if (r <= 0)
		return r;
	cj_subpath(sub, sizeof(sub), path, "user");
	uint32_t v;
	TRY(cj_get_uint32(user, sub, "uid", true, &v, err));
	u->uid = v;
	TRY(cj_get_uint32(user, sub, "gid", true, &v, err));
	u->gid = v;
	TRY(get_opt_u32(user, sub, "umask", &u->umask, err));
	TRY(cj_get_strdup(user, sub, "username", false, &u->username, err));
	r = cj_get_array(user, sub, "additionalGids", false, &arr, err);
	if (r <= 0)
		return r;
	cj_subpath(gsub, sizeof(gsub), sub, "additionalGids");
	size_t n = json_array_size(arr);
	if (n == 0)
		return 1;
	u->additional_gids = calloc(n, sizeof(gid_t));
	if (!u->additional_gids)
		return enomem(err);
	u->n_additional_gids = n;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(arr, i);
		cj_subpath_index(el, sizeof(el), gsub, i);
		if (!json_is_integer(e))
			return type_err(e, el, "integer", err);
		json_int_t g = json_integer_value(e);
		if (g < 0 || g > UINT32_MAX)
			return cella_err_set(err, ERANGE, "%s: %" JSON_INTEGER_FORMAT " is out of range (0..%u)", el,
					     g, UINT32_MAX);
		u->additional_gids[i] = (gid_t)g;
	}
	return 1;
}

int oci_process_parse(const json_t *j, const char *path, struct oci_process *p, struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	if (!json_is_object(j))
		return type_err(j, path && *path ? path : "(top level)", "object", err);

	TRY(cj_get_bool(j, path, "terminal", false, &p->terminal, err));

	json_t *cs;
	int r = cj_get_object(j, path, "consoleSize", false, &cs, err);
	if (r < 0)
		return r;
	if (r > 0) {
		uint32_t h, w;
		cj_subpath(sub, sizeof(sub), path, "consoleSize");
		TRY(cj_get_uint32(cs, sub, "height", true, &h, err));
		TRY(cj_get_uint32(cs, sub, "width", true, &w, err));
		p->console_size = (struct oci_console_size){ .set = true, .height = h, .width = w };
	}

	TRY(parse_user(j, path, &p->user, err));

	cj_subpath(sub, sizeof(sub), path, "args");
	TRY(get_strv(j, path, "args", &p->args, err));
	if (!p->args)
		return cella_err_set(err, EINVAL, "%s: required", sub);
	if (!p->args[0])
		return cella_err_set(err, EINVAL, "%s: must not be empty", sub);

	TRY(get_strv(j, path, "env", &p->env, err));
	cj_subpath(sub, sizeof(sub), path, "env");
	for (size_t i = 0; p->env && p->env[i]; i++) {
		const char *eq = strchr(p->env[i], '=');
		if (!eq || eq == p->env[i])
			return cella_err_set(err, EINVAL, "%s[%zu]: expected \"NAME=value\", got \"%s\"", sub, i,
					     p->env[i]);
	}

	TRY(get_abs(j, path, "cwd", true, &p->cwd, err));
	TRY(parse_caps(j, path, p, err));

	TRY(get_obj_array(j, path, "rlimits", sizeof(struct oci_rlimit), (void **)&p->rlimits, &p->n_rlimits,
			  parse_rlimit, err));
	for (size_t i = 0; i < p->n_rlimits; i++)
		for (size_t k = 0; k < i; k++)
			if (p->rlimits[i].resource == p->rlimits[k].resource) {
				cj_subpath(sub, sizeof(sub), path, "rlimits");
				return cella_err_set(err, EINVAL, "%s[%zu].type: duplicate rlimit \"%s\"", sub, i,
						     p->rlimits[i].type);
			}

	TRY(cj_get_bool(j, path, "noNewPrivileges", false, &p->no_new_privileges, err));
	TRY(get_opt_i64(j, path, "oomScoreAdj", &p->oom_score_adj, err));
	if (p->oom_score_adj.set && (p->oom_score_adj.v < -1000 || p->oom_score_adj.v > 1000))
		return range_err(path, "oomScoreAdj", p->oom_score_adj.v, -1000, 1000, err);
	TRY(cj_get_strdup(j, path, "apparmorProfile", false, &p->apparmor_profile, err));
	TRY(cj_get_strdup(j, path, "selinuxLabel", false, &p->selinux_label, err));
	return 0;
}

void oci_process_clear(struct oci_process *p)
{
	if (!p)
		return;
	free(p->user.additional_gids);
	free(p->user.username);
	cella_strv_free(p->args);
	cella_strv_free(p->env);
	free(p->cwd);
	for (size_t i = 0; i < p->n_rlimits; i++)
		free(p->rlimits[i].type);
	free(p->rlimits);
	free(p->apparmor_profile);
	free(p->selinux_label);
	memset(p, 0, sizeof(*p));
}

/* ---- mounts ---- */

static const struct mount_flag {
	const char *name;
	bool clear;
	unsigned long flag;
} mount_flags[] = {
	/* Names and meanings as runc's specconv. */
	{ "async", true, MS_SYNCHRONOUS },	{ "atime", true, MS_NOATIME },
	{ "bind", false, MS_BIND },		{ "defaults", false, 0 },
	{ "dev", true, MS_NODEV },		{ "diratime", true, MS_NODIRATIME },
	{ "dirsync", false, MS_DIRSYNC },	{ "exec", true, MS_NOEXEC },
	{ "iversion", false, MS_I_VERSION },	{ "lazytime", false, MS_LAZYTIME },
	{ "loud", true, MS_SILENT },		{ "mand", false, MS_MANDLOCK },
	{ "noatime", false, MS_NOATIME },	{ "nodev", false, MS_NODEV },
	{ "nodiratime", false, MS_NODIRATIME }, { "noexec", false, MS_NOEXEC },
	{ "noiversion", true, MS_I_VERSION },	{ "nolazytime", true, MS_LAZYTIME },
	{ "nomand", true, MS_MANDLOCK },	{ "norelatime", true, MS_RELATIME },
	{ "nostrictatime", true, MS_STRICTATIME }, { "nosuid", false, MS_NOSUID },
	{ "nosymfollow", false, MS_NOSYMFOLLOW }, { "rbind", false, MS_BIND | MS_REC },
	{ "relatime", false, MS_RELATIME },	{ "remount", false, MS_REMOUNT },
	{ "ro", false, MS_RDONLY },		{ "rw", true, MS_RDONLY },
	{ "silent", false, MS_SILENT },		{ "strictatime", false, MS_STRICTATIME },
	{ "suid", true, MS_NOSUID },		{ "symfollow", true, MS_NOSYMFOLLOW },
	{ "sync", false, MS_SYNCHRONOUS },
};

static const struct {
	const char *name;
	unsigned long flag;
} propagation_flags[] = {
	{ "private", MS_PRIVATE },		  { "rprivate", MS_PRIVATE | MS_REC },
	{ "shared", MS_SHARED },		  { "rshared", MS_SHARED | MS_REC },
	{ "slave", MS_SLAVE },			  { "rslave", MS_SLAVE | MS_REC },
	{ "unbindable", MS_UNBINDABLE },	  { "runbindable", MS_UNBINDABLE | MS_REC },
};

static const struct {
	const char *name;
	bool clear;
	uint64_t attr;
} rec_attr_flags[] = {
	{ "rro", false, MOUNT_ATTR_RDONLY },	     { "rrw", true, MOUNT_ATTR_RDONLY },
	{ "rnosuid", false, MOUNT_ATTR_NOSUID },     { "rsuid", true, MOUNT_ATTR_NOSUID },
	{ "rnodev", false, MOUNT_ATTR_NODEV },	     { "rdev", true, MOUNT_ATTR_NODEV },
	{ "rnoexec", false, MOUNT_ATTR_NOEXEC },     { "rexec", true, MOUNT_ATTR_NOEXEC },
	{ "rnodiratime", false, MOUNT_ATTR_NODIRATIME }, { "rdiratime", true, MOUNT_ATTR_NODIRATIME },
	{ "rrelatime", false, MOUNT_ATTR_RELATIME }, { "rnorelatime", true, MOUNT_ATTR_RELATIME },
	{ "rnoatime", false, MOUNT_ATTR_NOATIME },   { "ratime", true, MOUNT_ATTR_NOATIME },
	{ "rstrictatime", false, MOUNT_ATTR_STRICTATIME }, { "rnostrictatime", true, MOUNT_ATTR_STRICTATIME },
	{ "rnosymfollow", false, MOUNT_ATTR_NOSYMFOLLOW }, { "rsymfollow", true, MOUNT_ATTR_NOSYMFOLLOW },
};

/* The atime mode is a 3-bit field in mount_setattr(2), not a set of bits: an option picks a mode, and
 * the kernel wants the whole field (MOUNT_ATTR__ATIME) in attr_clr whenever it changes, so clearing a
 * single mode ("ratime", "rnorelatime", "rnostrictatime") means going back to the default, relatime. */
static bool is_atime_attr(uint64_t a)
{
	return a == MOUNT_ATTR_RELATIME || (a & MOUNT_ATTR__ATIME);
}

static int apply_mount_option(struct oci_mount *m, const char *o, char **data, size_t *data_len,
			      struct cella_err *err)
{
	for (size_t i = 0; i < ARRAY_SIZE(mount_flags); i++) {
		const struct mount_flag *f = &mount_flags[i];
		if (strcmp(f->name, o))
			continue;
		if (f->clear) {
			m->flags &= ~f->flag;
			m->clear_flags |= f->flag;
		} else {
			m->flags |= f->flag;
			m->clear_flags &= ~f->flag;
		}
		if (f->flag & MS_BIND)
			m->bind = true;
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(propagation_flags); i++)
		if (!strcmp(propagation_flags[i].name, o)) {
			m->propagation = propagation_flags[i].flag; /* the last one wins */
			return 0;
		}
	for (size_t i = 0; i < ARRAY_SIZE(rec_attr_flags); i++) {
		if (strcmp(rec_attr_flags[i].name, o))
			continue;
		uint64_t a = rec_attr_flags[i].attr;
		if (is_atime_attr(a)) {
			m->rec_attr_set &= ~(uint64_t)MOUNT_ATTR__ATIME;
			if (!rec_attr_flags[i].clear)
				m->rec_attr_set |= a;
			m->rec_attr_clr |= MOUNT_ATTR__ATIME;
		} else if (rec_attr_flags[i].clear) {
			m->rec_attr_set &= ~a;
			m->rec_attr_clr |= a;
		} else {
			m->rec_attr_set |= a;
			m->rec_attr_clr &= ~a;
		}
		return 0;
	}
	if (!strcmp(o, "tmpcopyup")) {
		m->tmpcopyup = true;
		return 0;
	}
	if (!strcmp(o, "idmap")) {
		m->idmap = true;
		return 0;
	}
	if (!strcmp(o, "ridmap")) {
		m->ridmap = true;
		return 0;
	}
	if (!*o)
		return 0;
	/* Anything else is for the filesystem: "mode=755", "size=65536k", "newinstance", ... */
	size_t len = strlen(o);
	char *d = realloc(*data, *data_len + len + 2);
	if (!d)
		return enomem(err);
	*data = d;
	if (*data_len)
		d[(*data_len)++] = ',';
	memcpy(d + *data_len, o, len + 1);
	*data_len += len;
	return 0;
}

int oci_mount_parse_options(struct oci_mount *m, const char *path, struct cella_err *err)
{
	(void)path; /* options never fail to parse: unknown ones are filesystem data */
	free(m->data);
	m->data = NULL;
	m->flags = m->clear_flags = m->propagation = 0;
	m->rec_attr_set = m->rec_attr_clr = 0;
	m->bind = m->tmpcopyup = m->idmap = m->ridmap = false;
	size_t data_len = 0;
	for (size_t i = 0; m->options && m->options[i]; i++) {
		int r = apply_mount_option(m, m->options[i], &m->data, &data_len, err);
		if (r < 0)
			return r;
	}
	/* A mount of type "bind" without a bind option is still a bind mount (as crun treats it). */
	if (!m->bind && m->type && !strcmp(m->type, "bind")) {
		m->bind = true;
		m->flags |= MS_BIND;
	}
	return 0;
}

static int parse_mapping(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_id_mapping *m = elem;
	TRY(cj_get_uint32(j, path, "containerID", true, &m->container_id, err));
	TRY(cj_get_uint32(j, path, "hostID", true, &m->host_id, err));
	TRY(cj_get_uint32(j, path, "size", true, &m->size, err));
	if (m->size == 0)
		return cella_err_set(err, EINVAL, "%s.size: must be greater than 0", path);
	return 0;
}

static int parse_mount(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_mount *m = elem;
	TRY(get_abs(j, path, "destination", true, &m->destination, err));
	TRY(cj_get_strdup(j, path, "type", false, &m->type, err));
	TRY(cj_get_strdup(j, path, "source", false, &m->source, err));
	TRY(get_strv(j, path, "options", &m->options, err));
	TRY(get_obj_array(j, path, "uidMappings", sizeof(struct oci_id_mapping), (void **)&m->uid_mappings,
			  &m->n_uid_mappings, parse_mapping, err));
	TRY(get_obj_array(j, path, "gidMappings", sizeof(struct oci_id_mapping), (void **)&m->gid_mappings,
			  &m->n_gid_mappings, parse_mapping, err));
	return oci_mount_parse_options(m, path, err);
}

static void mount_clear(struct oci_mount *m)
{
	free(m->destination);
	free(m->type);
	free(m->source);
	cella_strv_free(m->options);
	free(m->data);
	free(m->uid_mappings);
	free(m->gid_mappings);
}

/* ---- hooks ---- */

static int parse_hook(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_hook *h = elem;
	TRY(get_abs(j, path, "path", true, &h->path, err));
	TRY(get_strv(j, path, "args", &h->args, err));
	TRY(get_strv(j, path, "env", &h->env, err));
	TRY(get_opt_i64(j, path, "timeout", &h->timeout, err));
	if (h->timeout.set && h->timeout.v <= 0)
		return cella_err_set(err, EINVAL, "%s.timeout: must be greater than 0, got %" PRId64, path,
				     h->timeout.v);
	return 0;
}

static int parse_hooks(const json_t *doc, struct oci_hooks *h, struct cella_err *err)
{
	json_t *hooks;
	int r = cj_get_object(doc, "", "hooks", false, &hooks, err);
	if (r <= 0)
		return r;
	const size_t sz = sizeof(struct oci_hook);
	TRY(get_obj_array(hooks, "hooks", "prestart", sz, (void **)&h->prestart, &h->n_prestart, parse_hook,
			  err));
	TRY(get_obj_array(hooks, "hooks", "createRuntime", sz, (void **)&h->create_runtime,
			  &h->n_create_runtime, parse_hook, err));
	TRY(get_obj_array(hooks, "hooks", "createContainer", sz, (void **)&h->create_container,
			  &h->n_create_container, parse_hook, err));
	TRY(get_obj_array(hooks, "hooks", "startContainer", sz, (void **)&h->start_container,
			  &h->n_start_container, parse_hook, err));
	TRY(get_obj_array(hooks, "hooks", "poststart", sz, (void **)&h->poststart, &h->n_poststart, parse_hook,
			  err));
	TRY(get_obj_array(hooks, "hooks", "poststop", sz, (void **)&h->poststop, &h->n_poststop, parse_hook,
			  err));
	return 1;
}

static void hooks_free(struct oci_hook *h, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(h[i].path);
		cella_strv_free(h[i].args);
		cella_strv_free(h[i].env);
	}
	free(h);
}

/* ---- linux: namespaces, devices ---- */

static const char *const ns_names[OCI_NS_COUNT] = {
	[OCI_NS_PID] = "pid",	[OCI_NS_NET] = "network", [OCI_NS_MOUNT] = "mount", [OCI_NS_IPC] = "ipc",
	[OCI_NS_UTS] = "uts",	[OCI_NS_USER] = "user",	  [OCI_NS_CGROUP] = "cgroup", [OCI_NS_TIME] = "time",
};

const char *oci_ns_type_name(enum oci_ns_type type)
{
	return (unsigned)type < OCI_NS_COUNT ? ns_names[type] : NULL;
}

int oci_ns_type_from_name(const char *name)
{
	for (int i = 0; name && i < OCI_NS_COUNT; i++)
		if (!strcmp(ns_names[i], name))
			return i;
	return -1;
}

int oci_ns_clone_flag(enum oci_ns_type type)
{
	switch (type) {
	case OCI_NS_PID: return CLONE_NEWPID;
	case OCI_NS_NET: return CLONE_NEWNET;
	case OCI_NS_MOUNT: return CLONE_NEWNS;
	case OCI_NS_IPC: return CLONE_NEWIPC;
	case OCI_NS_UTS: return CLONE_NEWUTS;
	case OCI_NS_USER: return CLONE_NEWUSER;
	case OCI_NS_CGROUP: return CLONE_NEWCGROUP;
	case OCI_NS_TIME: return CLONE_NEWTIME;
	case OCI_NS_COUNT: break;
	}
	return 0;
}

const struct oci_namespace *oci_config_namespace(const struct oci_config *cfg, enum oci_ns_type type)
{
	for (size_t i = 0; cfg && i < cfg->linux_.n_namespaces; i++)
		if (cfg->linux_.namespaces[i].type == type)
			return &cfg->linux_.namespaces[i];
	return NULL;
}

bool oci_config_has_namespace(const struct oci_config *cfg, enum oci_ns_type type)
{
	return oci_config_namespace(cfg, type) != NULL;
}

static int parse_namespaces(const json_t *lnx, struct oci_linux *l, struct cella_err *err)
{
	json_t *arr;
	char el[CJ_PATH_MAX];
	int r = cj_get_array(lnx, "linux", "namespaces", false, &arr, err);
	if (r <= 0)
		return r;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *e = json_array_get(arr, i);
		cj_subpath_index(el, sizeof(el), "linux.namespaces", i);
		TRY(cj_expect_object(e, el, err));
		const char *type, *path = NULL;
		TRY(cj_get_string(e, el, "type", true, &type, err));
		int t = oci_ns_type_from_name(type);
		if (t < 0)
			return cella_err_set(err, EINVAL, "%s.type: unknown namespace type \"%s\"", el, type);
		for (size_t k = 0; k < l->n_namespaces; k++)
			if (l->namespaces[k].type == (enum oci_ns_type)t)
				return cella_err_set(err, EINVAL, "%s.type: duplicate namespace \"%s\"", el, type);
		TRY(cj_get_string(e, el, "path", false, &path, err));
		if (path && *path && !is_abs(path))
			return cella_err_set(err, EINVAL, "%s.path: must be an absolute path, got \"%s\"", el, path);
		/* n_namespaces <= OCI_NS_COUNT holds: duplicates are rejected above. */
		struct oci_namespace *ns = &l->namespaces[l->n_namespaces];
		ns->type = (enum oci_ns_type)t;
		ns->path = NULL;
		if (path && *path) {
			ns->path = strdup(path);
			if (!ns->path)
				return enomem(err);
		}
		l->n_namespaces++;
	}
	return 1;
}

static int parse_device(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_device *d = elem;
	const char *type;
	TRY(cj_get_string(j, path, "type", true, &type, err));
	if (strlen(type) != 1 || !strchr("cbup", type[0]))
		return cella_err_set(err, EINVAL, "%s.type: unknown device type \"%s\" (expected c, b, u or p)",
				     path, type);
	d->type = type[0];
	TRY(get_abs(j, path, "path", true, &d->path, err));
	bool need = d->type != 'p';
	d->major = d->minor = 0;
	int r = cj_get_int64(j, path, "major", false, &d->major, err);
	if (r < 0)
		return r;
	if (r == 0 && need)
		return cella_err_set(err, EINVAL, "%s.major: required for device type '%c'", path, d->type);
	r = cj_get_int64(j, path, "minor", false, &d->minor, err);
	if (r < 0)
		return r;
	if (r == 0 && need)
		return cella_err_set(err, EINVAL, "%s.minor: required for device type '%c'", path, d->type);
	if (d->major < 0 || d->major > 0xfff)
		return range_err(path, "major", d->major, 0, 0xfff, err);
	if (d->minor < 0 || d->minor > 0xfffff)
		return range_err(path, "minor", d->minor, 0, 0xfffff, err);
	/* Podman (like runc's own spec code) writes the file type bits too: 020666 for a char device. */
	TRY(get_opt_u32(j, path, "fileMode", &d->file_mode, err));
	uint64_t ifmt = d->type == 'b' ? S_IFBLK : d->type == 'p' ? S_IFIFO : S_IFCHR;
	uint64_t type_bits = d->file_mode.v & ~(uint64_t)07777;
	if (d->file_mode.set && type_bits != 0 && type_bits != ifmt)
		return cella_err_set(err, EINVAL,
				     "%s.fileMode: %#" PRIo64 " is not a file mode (max 07777, or with the type bits %#" PRIo64
				     ")",
				     path, d->file_mode.v, ifmt);
	d->file_mode.v &= 07777;
	TRY(get_opt_u32(j, path, "uid", &d->uid, err));
	TRY(get_opt_u32(j, path, "gid", &d->gid, err));
	return 0;
}

/* ---- linux.resources ---- */

static int parse_device_cgroup(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_device_cgroup *d = elem;
	const char *type = NULL, *access = NULL;
	TRY(cj_get_bool(j, path, "allow", true, &d->allow, err));
	TRY(cj_get_string(j, path, "type", false, &type, err));
	d->type = 'a';
	if (type) {
		if (strlen(type) != 1 || !strchr("acb", type[0]))
			return cella_err_set(err, EINVAL,
					     "%s.type: unknown device type \"%s\" (expected a, c or b)", path, type);
		d->type = type[0];
	}
	d->major = d->minor = -1;
	TRY(cj_get_int64(j, path, "major", false, &d->major, err));
	TRY(cj_get_int64(j, path, "minor", false, &d->minor, err));
	if (d->major < -1)
		return range_err(path, "major", d->major, -1, INT32_MAX, err);
	if (d->minor < -1)
		return range_err(path, "minor", d->minor, -1, INT32_MAX, err);
	TRY(cj_get_string(j, path, "access", false, &access, err));
	if (!access) {
		strcpy(d->access, "rwm");
		return 0;
	}
	bool r = false, w = false, m = false;
	for (const char *p = access; *p; p++) {
		bool *b = *p == 'r' ? &r : *p == 'w' ? &w : *p == 'm' ? &m : NULL;
		if (!b || *b)
			return cella_err_set(err, EINVAL, "%s.access: \"%s\" is not a subset of \"rwm\"", path, access);
		*b = true;
	}
	char *o = d->access;
	if (r)
		*o++ = 'r';
	if (w)
		*o++ = 'w';
	if (m)
		*o++ = 'm';
	*o = '\0';
	return 0;
}

static int check_not_below_minus_one(const struct oci_opt_i64 *o, const char *path, const char *key,
				     struct cella_err *err)
{
	if (o->set && o->v < -1) {
		char sub[CJ_PATH_MAX];
		cj_subpath(sub, sizeof(sub), path, key);
		return cella_err_set(err, EINVAL, "%s: must be -1 (unlimited) or a non-negative number, got %" PRId64,
				     sub, o->v);
	}
	return 0;
}

static int parse_memory(const json_t *res, const char *path, struct oci_resources *r, struct cella_err *err)
{
	json_t *j;
	char p[CJ_PATH_MAX];
	int rc = cj_get_object(res, path, "memory", false, &j, err);
	if (rc <= 0)
		return rc;
	cj_subpath(p, sizeof(p), path, "memory");
	struct oci_memory *m = &r->memory;
	r->has_memory = true;
	TRY(get_opt_i64(j, p, "limit", &m->limit, err));
	TRY(check_not_below_minus_one(&m->limit, p, "limit", err));
	TRY(get_opt_i64(j, p, "reservation", &m->reservation, err));
	TRY(check_not_below_minus_one(&m->reservation, p, "reservation", err));
	TRY(get_opt_i64(j, p, "swap", &m->swap, err));
	TRY(check_not_below_minus_one(&m->swap, p, "swap", err));
	TRY(get_opt_i64(j, p, "kernel", &m->kernel, err));
	TRY(get_opt_i64(j, p, "kernelTCP", &m->kernel_tcp, err));
	TRY(get_opt_u64(j, p, "swappiness", &m->swappiness, err));
	if (m->swappiness.set && m->swappiness.v > 100)
		return cella_err_set(err, ERANGE, "%s.swappiness: %" PRIu64 " is out of range (0..100)", p,
				     m->swappiness.v);
	rc = cj_get_bool(j, p, "disableOOMKiller", false, &m->disable_oom_killer, err);
	if (rc < 0)
		return rc;
	m->has_disable_oom_killer = rc > 0;
	rc = cj_get_bool(j, p, "useHierarchy", false, &m->use_hierarchy, err);
	if (rc < 0)
		return rc;
	m->has_use_hierarchy = rc > 0;
	TRY(cj_get_bool(j, p, "checkBeforeUpdate", false, &m->check_before_update, err));
	return 1;
}

/* A cpuset list: "0-3,7,9-10" (empty means unset). */
static int check_cpuset_list(const char *s, const char *path, struct cella_err *err)
{
	const char *p = s;
	while (*p) {
		const char *start = p;
		unsigned long a = 0, b;
		if (*p < '0' || *p > '9')
			goto bad;
		while (*p >= '0' && *p <= '9')
			a = a * 10 + (unsigned long)(*p++ - '0');
		b = a;
		if (*p == '-') {
			p++;
			if (*p < '0' || *p > '9')
				goto bad;
			b = 0;
			while (*p >= '0' && *p <= '9')
				b = b * 10 + (unsigned long)(*p++ - '0');
		}
		if (b < a || p - start > 32)
			goto bad;
		if (*p == ',') {
			p++;
			if (!*p)
				goto bad;
		} else if (*p) {
			goto bad;
		}
	}
	return 0;
bad:
	return cella_err_set(err, EINVAL, "%s: invalid list \"%s\" (expected e.g. \"0-3,7\")", path, s);
}

static int parse_cpu(const json_t *res, const char *path, struct oci_resources *r, struct cella_err *err)
{
	json_t *j;
	char p[CJ_PATH_MAX], sub[CJ_PATH_MAX];
	int rc = cj_get_object(res, path, "cpu", false, &j, err);
	if (rc <= 0)
		return rc;
	cj_subpath(p, sizeof(p), path, "cpu");
	struct oci_cpu *c = &r->cpu;
	r->has_cpu = true;
	TRY(get_opt_u64(j, p, "shares", &c->shares, err));
	TRY(get_opt_i64(j, p, "quota", &c->quota, err));
	TRY(get_opt_u64(j, p, "period", &c->period, err));
	TRY(get_opt_u64(j, p, "burst", &c->burst, err));
	TRY(get_opt_i64(j, p, "realtimeRuntime", &c->realtime_runtime, err));
	TRY(get_opt_u64(j, p, "realtimePeriod", &c->realtime_period, err));
	TRY(get_opt_i64(j, p, "idle", &c->idle, err));
	if (c->idle.set && c->idle.v != 0 && c->idle.v != 1)
		return range_err(p, "idle", c->idle.v, 0, 1, err);
	TRY(cj_get_strdup(j, p, "cpus", false, &c->cpus, err));
	cj_subpath(sub, sizeof(sub), p, "cpus");
	if (c->cpus)
		TRY(check_cpuset_list(c->cpus, sub, err));
	TRY(cj_get_strdup(j, p, "mems", false, &c->mems, err));
	cj_subpath(sub, sizeof(sub), p, "mems");
	if (c->mems)
		TRY(check_cpuset_list(c->mems, sub, err));
	return 1;
}

static int parse_pids(const json_t *res, const char *path, struct oci_resources *r, struct cella_err *err)
{
	json_t *j;
	char p[CJ_PATH_MAX];
	int rc = cj_get_object(res, path, "pids", false, &j, err);
	if (rc <= 0)
		return rc;
	cj_subpath(p, sizeof(p), path, "pids");
	r->has_pids = true;
	TRY(get_opt_i64(j, p, "limit", &r->pids.limit, err));
	return 1;
}

static int get_weight(const json_t *j, const char *path, const char *key, struct oci_opt_u64 *o,
		      struct cella_err *err)
{
	TRY(get_opt_u64(j, path, key, o, err));
	if (o->set && o->v > UINT16_MAX)
		return range_err(path, key, (long long)o->v, 0, UINT16_MAX, err);
	return 0;
}

static int parse_weight_device(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_blkio_weight_device *d = elem;
	TRY(cj_get_int64(j, path, "major", true, &d->major, err));
	TRY(cj_get_int64(j, path, "minor", true, &d->minor, err));
	TRY(get_weight(j, path, "weight", &d->weight, err));
	TRY(get_weight(j, path, "leafWeight", &d->leaf_weight, err));
	return 0;
}

static int parse_throttle(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_blkio_throttle *t = elem;
	TRY(cj_get_int64(j, path, "major", true, &t->major, err));
	TRY(cj_get_int64(j, path, "minor", true, &t->minor, err));
	TRY(cj_get_uint64(j, path, "rate", true, &t->rate, err));
	return 0;
}

static int parse_blkio(const json_t *res, const char *path, struct oci_resources *r, struct cella_err *err)
{
	json_t *j;
	char p[CJ_PATH_MAX];
	int rc = cj_get_object(res, path, "blockIO", false, &j, err);
	if (rc <= 0)
		return rc;
	cj_subpath(p, sizeof(p), path, "blockIO");
	struct oci_blkio *b = &r->blkio;
	r->has_blkio = true;
	TRY(get_weight(j, p, "weight", &b->weight, err));
	TRY(get_weight(j, p, "leafWeight", &b->leaf_weight, err));
	TRY(get_obj_array(j, p, "weightDevice", sizeof(*b->weight_device), (void **)&b->weight_device,
			  &b->n_weight_device, parse_weight_device, err));
	const size_t sz = sizeof(struct oci_blkio_throttle);
	TRY(get_obj_array(j, p, "throttleReadBpsDevice", sz, (void **)&b->throttle_read_bps,
			  &b->n_throttle_read_bps, parse_throttle, err));
	TRY(get_obj_array(j, p, "throttleWriteBpsDevice", sz, (void **)&b->throttle_write_bps,
			  &b->n_throttle_write_bps, parse_throttle, err));
	TRY(get_obj_array(j, p, "throttleReadIOPSDevice", sz, (void **)&b->throttle_read_iops,
			  &b->n_throttle_read_iops, parse_throttle, err));
	TRY(get_obj_array(j, p, "throttleWriteIOPSDevice", sz, (void **)&b->throttle_write_iops,
			  &b->n_throttle_write_iops, parse_throttle, err));
	return 1;
}

static int parse_hugepage(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_hugepage_limit *h = elem;
	TRY(cj_get_strdup(j, path, "pageSize", true, &h->page_size, err));
	TRY(cj_get_uint64(j, path, "limit", true, &h->limit, err));
	return 0;
}

static int parse_resources(const json_t *lnx, struct oci_linux *l, struct cella_err *err)
{
	json_t *j;
	const char *p = "linux.resources";
	int rc = cj_get_object(lnx, "linux", "resources", false, &j, err);
	if (rc <= 0)
		return rc;
	struct oci_resources *r = &l->resources;
	l->has_resources = true;
	TRY(get_obj_array(j, p, "devices", sizeof(*r->devices), (void **)&r->devices, &r->n_devices,
			  parse_device_cgroup, err));
	TRY(parse_memory(j, p, r, err));
	TRY(parse_cpu(j, p, r, err));
	TRY(parse_pids(j, p, r, err));
	TRY(parse_blkio(j, p, r, err));
	TRY(get_obj_array(j, p, "hugepageLimits", sizeof(*r->hugepage_limits), (void **)&r->hugepage_limits,
			  &r->n_hugepage_limits, parse_hugepage, err));
	TRY(get_kv(j, p, "unified", &r->unified, &r->n_unified, err));
	return 1;
}

static void resources_clear(struct oci_resources *r)
{
	free(r->devices);
	free(r->cpu.cpus);
	free(r->cpu.mems);
	free(r->blkio.weight_device);
	free(r->blkio.throttle_read_bps);
	free(r->blkio.throttle_write_bps);
	free(r->blkio.throttle_read_iops);
	free(r->blkio.throttle_write_iops);
	for (size_t i = 0; i < r->n_hugepage_limits; i++)
		free(r->hugepage_limits[i].page_size);
	free(r->hugepage_limits);
	for (size_t i = 0; i < r->n_unified; i++) {
		free(r->unified[i].key);
		free(r->unified[i].value);
	}
	free(r->unified);
}

/* ---- linux.seccomp (structure only; the filter is built by the runtime) ---- */

static const char *const seccomp_actions[] = {
	"SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
	"SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", NULL,
};
static const char *const seccomp_ops[] = {
	"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
	"SCMP_CMP_MASKED_EQ", NULL,
};
static const char *const seccomp_flags[] = {
	"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
	"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", NULL,
};
static const char *const seccomp_archs[] = {
	"SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
	"SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64",
	"SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32",
	"SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
	"SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB", NULL,
};

static bool in_list(const char *const *list, const char *s)
{
	for (size_t i = 0; list[i]; i++)
		if (!strcmp(list[i], s))
			return true;
	return false;
}

static int check_enum_strv(char **v, const char *path, const char *key, const char *const *list,
			   const char *what, struct cella_err *err)
{
	for (size_t i = 0; v && v[i]; i++)
		if (!in_list(list, v[i])) {
			char sub[CJ_PATH_MAX];
			cj_subpath(sub, sizeof(sub), path, key);
			return cella_err_set(err, EINVAL, "%s[%zu]: unknown %s \"%s\"", sub, i, what, v[i]);
		}
	return 0;
}

static int get_action(const json_t *j, const char *path, const char *key, char **out, struct cella_err *err)
{
	int r = cj_get_strdup(j, path, key, true, out, err);
	if (r <= 0)
		return r;
	if (!in_list(seccomp_actions, *out)) {
		char sub[CJ_PATH_MAX];
		cj_subpath(sub, sizeof(sub), path, key);
		return cella_err_set(err, EINVAL, "%s: unknown seccomp action \"%s\"", sub, *out);
	}
	return 1;
}

static int parse_seccomp_arg(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_seccomp_arg *a = elem;
	uint32_t index;
	TRY(cj_get_uint32(j, path, "index", true, &index, err));
	if (index > 5)
		return range_err(path, "index", index, 0, 5, err);
	a->index = index;
	TRY(cj_get_uint64(j, path, "value", true, &a->value, err));
	TRY(cj_get_uint64(j, path, "valueTwo", false, &a->value_two, err));
	TRY(cj_get_strdup(j, path, "op", true, &a->op, err));
	if (!in_list(seccomp_ops, a->op))
		return cella_err_set(err, EINVAL, "%s.op: unknown seccomp operator \"%s\"", path, a->op);
	return 0;
}

static int parse_syscall(const json_t *j, const char *path, void *elem, struct cella_err *err)
{
	struct oci_seccomp_syscall *s = elem;
	TRY(get_strv(j, path, "names", &s->names, err));
	if (!s->names)
		return cella_err_set(err, EINVAL, "%s.names: required", path);
	if (!s->names[0])
		return cella_err_set(err, EINVAL, "%s.names: must not be empty", path);
	TRY(get_action(j, path, "action", &s->action, err));
	TRY(get_opt_u32(j, path, "errnoRet", &s->errno_ret, err));
	TRY(get_obj_array(j, path, "args", sizeof(*s->args), (void **)&s->args, &s->n_args, parse_seccomp_arg,
			  err));
	return 0;
}

static int parse_seccomp(const json_t *lnx, struct oci_linux *l, struct cella_err *err)
{
	json_t *j;
	const char *p = "linux.seccomp";
	int r = cj_get_object(lnx, "linux", "seccomp", false, &j, err);
	if (r <= 0)
		return r;
	struct oci_seccomp *s = calloc(1, sizeof(*s));
	if (!s)
		return enomem(err);
	l->seccomp = s;
	TRY(get_action(j, p, "defaultAction", &s->default_action, err));
	TRY(get_opt_u32(j, p, "defaultErrnoRet", &s->default_errno_ret, err));
	TRY(get_strv(j, p, "architectures", &s->architectures, err));
	TRY(check_enum_strv(s->architectures, p, "architectures", seccomp_archs, "seccomp architecture", err));
	TRY(get_strv(j, p, "flags", &s->flags, err));
	TRY(check_enum_strv(s->flags, p, "flags", seccomp_flags, "seccomp flag", err));
	TRY(get_abs(j, p, "listenerPath", false, &s->listener_path, err));
	TRY(cj_get_strdup(j, p, "listenerMetadata", false, &s->listener_metadata, err));
	TRY(get_obj_array(j, p, "syscalls", sizeof(*s->syscalls), (void **)&s->syscalls, &s->n_syscalls,
			  parse_syscall, err));
	if (!s->listener_path) {
		bool notify = !strcmp(s->default_action, "SCMP_ACT_NOTIFY");
		for (size_t i = 0; i < s->n_syscalls; i++)
			notify |= !strcmp(s->syscalls[i].action, "SCMP_ACT_NOTIFY");
		if (notify)
			return cella_err_set(err, EINVAL, "%s.listenerPath: required when SCMP_ACT_NOTIFY is used", p);
	}
	return 1;
}

static void seccomp_free(struct oci_seccomp *s)
{
	if (!s)
		return;
	free(s->default_action);
	cella_strv_free(s->architectures);
	cella_strv_free(s->flags);
	free(s->listener_path);
	free(s->listener_metadata);
	for (size_t i = 0; i < s->n_syscalls; i++) {
		struct oci_seccomp_syscall *sc = &s->syscalls[i];
		cella_strv_free(sc->names);
		free(sc->action);
		for (size_t k = 0; k < sc->n_args; k++)
			free(sc->args[k].op);
		free(sc->args);
	}
	free(s->syscalls);
	free(s);
}

/* ---- linux ---- */

static int parse_propagation(const char *s, unsigned long *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(propagation_flags); i++)
		if (!strcmp(propagation_flags[i].name, s)) {
			*out = propagation_flags[i].flag;
			return 0;
		}
	return -1;
}

static int parse_personality(const json_t *lnx, struct oci_linux *l, struct cella_err *err)
{
	json_t *j;
	const char *p = "linux.personality";
	int r = cj_get_object(lnx, "linux", "personality", false, &j, err);
	if (r <= 0)
		return r;
	TRY(cj_get_strdup(j, p, "domain", true, &l->personality_domain, err));
	if (strcmp(l->personality_domain, "LINUX") && strcmp(l->personality_domain, "LINUX32"))
		return cella_err_set(err, EINVAL, "%s.domain: unknown personality \"%s\" (expected LINUX or LINUX32)",
				     p, l->personality_domain);
	TRY(get_strv(j, p, "flags", &l->personality_flags, err));
	return 1;
}

static int parse_linux(const json_t *doc, struct oci_config *cfg, struct cella_err *err)
{
	json_t *j;
	const char *p = "linux";
	int r = cj_get_object(doc, "", "linux", false, &j, err);
	if (r <= 0)
		return r;
	struct oci_linux *l = &cfg->linux_;
	cfg->has_linux = true;
	TRY(parse_namespaces(j, l, err));
	TRY(get_obj_array(j, p, "uidMappings", sizeof(struct oci_id_mapping), (void **)&l->uid_mappings,
			  &l->n_uid_mappings, parse_mapping, err));
	TRY(get_obj_array(j, p, "gidMappings", sizeof(struct oci_id_mapping), (void **)&l->gid_mappings,
			  &l->n_gid_mappings, parse_mapping, err));
	TRY(get_obj_array(j, p, "devices", sizeof(*l->devices), (void **)&l->devices, &l->n_devices,
			  parse_device, err));
	TRY(cj_get_strdup(j, p, "cgroupsPath", false, &l->cgroups_path, err));
	TRY(parse_resources(j, l, err));

	const char *prop = NULL;
	TRY(cj_get_string(j, p, "rootfsPropagation", false, &prop, err));
	if (prop && *prop && parse_propagation(prop, &l->rootfs_propagation) < 0)
		return cella_err_set(err, EINVAL,
				     "linux.rootfsPropagation: unknown propagation \"%s\" (expected shared, slave, "
				     "private or unbindable, optionally with an r prefix)",
				     prop);

	TRY(get_abs_strv(j, p, "maskedPaths", &l->masked_paths, err));
	TRY(get_abs_strv(j, p, "readonlyPaths", &l->readonly_paths, err));
	TRY(get_kv(j, p, "sysctl", &l->sysctl, &l->n_sysctl, err));
	TRY(cj_get_strdup(j, p, "mountLabel", false, &l->mount_label, err));
	TRY(parse_seccomp(j, l, err));
	TRY(parse_personality(j, l, err));
	return 1;
}

static void linux_clear(struct oci_linux *l)
{
	for (size_t i = 0; i < l->n_namespaces; i++)
		free(l->namespaces[i].path);
	free(l->uid_mappings);
	free(l->gid_mappings);
	for (size_t i = 0; i < l->n_devices; i++)
		free(l->devices[i].path);
	free(l->devices);
	free(l->cgroups_path);
	resources_clear(&l->resources);
	cella_strv_free(l->masked_paths);
	cella_strv_free(l->readonly_paths);
	for (size_t i = 0; i < l->n_sysctl; i++) {
		free(l->sysctl[i].key);
		free(l->sysctl[i].value);
	}
	free(l->sysctl);
	free(l->mount_label);
	seccomp_free(l->seccomp);
	free(l->personality_domain);
	cella_strv_free(l->personality_flags);
}

/* ---- cross-field checks (as runc's config validator) ---- */

static bool has_prefix(const char *s, const char *prefix)
{
	return !strncmp(s, prefix, strlen(prefix));
}

static int check_sysctl(const struct oci_config *cfg, const char *key, struct cella_err *err)
{
	static const char *const ipc_keys[] = { "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
						"kernel.shmall", "kernel.shmmax", "kernel.shmmni",
						"kernel.shm_rmid_forced", NULL };
	if (in_list(ipc_keys, key) || has_prefix(key, "fs.mqueue.")) {
		if (oci_config_has_namespace(cfg, OCI_NS_IPC))
			return 0;
		return cella_err_set(err, EINVAL,
				     "linux.sysctl: \"%s\" needs an ipc namespace (not allowed in the host's)", key);
	}
	if (has_prefix(key, "net.")) {
		if (oci_config_has_namespace(cfg, OCI_NS_NET))
			return 0;
		return cella_err_set(err, EINVAL,
				     "linux.sysctl: \"%s\" needs a network namespace (not allowed in the host's)", key);
	}
	if (oci_config_has_namespace(cfg, OCI_NS_UTS)) {
		if (!strcmp(key, "kernel.domainname"))
			return 0;
		if (!strcmp(key, "kernel.hostname"))
			return cella_err_set(err, EINVAL,
					     "linux.sysctl: \"%s\" is not allowed: use the \"hostname\" field", key);
	}
	return cella_err_set(err, EINVAL, "linux.sysctl: \"%s\" is not in a separate kernel namespace", key);
}

static int check_semantics(const struct oci_config *cfg, struct cella_err *err)
{
	const struct oci_linux *l = &cfg->linux_;
	const struct oci_namespace *userns = oci_config_namespace(cfg, OCI_NS_USER);
	bool mappings = l->n_uid_mappings || l->n_gid_mappings;
	if (mappings && !userns)
		return cella_err_set(err, EINVAL,
				     "%s: user namespace mappings specified, but linux.namespaces has no user namespace",
				     l->n_uid_mappings ? "linux.uidMappings" : "linux.gidMappings");
	if (userns && !userns->path && !mappings)
		return cella_err_set(err, EINVAL,
				     "linux.namespaces: a new user namespace needs linux.uidMappings and linux.gidMappings");
	if (userns && !userns->path && (!l->n_uid_mappings || !l->n_gid_mappings))
		return cella_err_set(err, EINVAL, "%s: required with a new user namespace",
				     l->n_uid_mappings ? "linux.gidMappings" : "linux.uidMappings");
	if (cfg->hostname && *cfg->hostname && !oci_config_has_namespace(cfg, OCI_NS_UTS))
		return cella_err_set(err, EINVAL,
				     "hostname: setting the hostname needs a uts namespace in linux.namespaces");
	if (cfg->domainname && *cfg->domainname && !oci_config_has_namespace(cfg, OCI_NS_UTS))
		return cella_err_set(err, EINVAL,
				     "domainname: setting the domainname needs a uts namespace in linux.namespaces");
	for (size_t i = 0; i < l->n_sysctl; i++)
		TRY(check_sysctl(cfg, l->sysctl[i].key, err));
	return 0;
}

/* ---- top level ---- */

static int parse_root(const json_t *doc, struct oci_config *cfg, struct cella_err *err)
{
	json_t *j;
	TRY(cj_get_object(doc, "", "root", true, &j, err));
	cfg->has_root = true;
	TRY(cj_get_strdup(j, "root", "path", true, &cfg->root.path, err));
	if (!*cfg->root.path)
		return cella_err_set(err, EINVAL, "root.path: must not be empty");
	TRY(cj_get_bool(j, "root", "readonly", false, &cfg->root.readonly, err));
	return 0;
}

static int parse_doc(const json_t *doc, struct oci_config *cfg, struct cella_err *err)
{
	TRY(cj_get_strdup(doc, "", "ociVersion", true, &cfg->oci_version, err));
	TRY(parse_root(doc, cfg, err));

	json_t *proc;
	TRY(cj_get_object(doc, "", "process", true, &proc, err));
	cfg->has_process = true;
	TRY(oci_process_parse(proc, "process", &cfg->process, err));

	TRY(cj_get_strdup(doc, "", "hostname", false, &cfg->hostname, err));
	TRY(cj_get_strdup(doc, "", "domainname", false, &cfg->domainname, err));
	TRY(get_obj_array(doc, "", "mounts", sizeof(struct oci_mount), (void **)&cfg->mounts, &cfg->n_mounts,
			  parse_mount, err));
	TRY(parse_hooks(doc, &cfg->hooks, err));
	TRY(get_kv(doc, "", "annotations", &cfg->annotations, &cfg->n_annotations, err));
	TRY(parse_linux(doc, cfg, err));
	return check_semantics(cfg, err);
}

int oci_config_parse(json_t *doc, const char *what, struct oci_config **out, struct cella_err *err)
{
	if (!what)
		what = "config.json";
	if (!json_is_object(doc))
		return cella_err_set(err, EINVAL, "%s: expected a JSON object, got %s", what, cj_type_name(doc));
	struct oci_config *cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return cella_err_set(err, ENOMEM, "%s: out of memory", what);
	cfg->json = json_incref(doc);
	int r = parse_doc(doc, cfg, err);
	if (r < 0) {
		oci_config_free(cfg);
		return cella_err_wrap(err, "%s", what);
	}
	*out = cfg;
	return 0;
}

int oci_config_load_as(const char *path, const char *what, struct oci_config **out, struct cella_err *err)
{
	_cleanup_json_ json_t *doc = NULL;
	int r = cj_load_file(path, what, CONFIG_MAX_BYTES, &doc, err);
	if (r < 0)
		return r;
	return oci_config_parse(doc, what, out, err);
}

int oci_config_load(const char *path, struct oci_config **out, struct cella_err *err)
{
	const char *slash = strrchr(path, '/');
	return oci_config_load_as(path, slash && slash[1] ? slash + 1 : path, out, err);
}

void oci_config_free(struct oci_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->oci_version);
	free(cfg->root.path);
	oci_process_clear(&cfg->process);
	free(cfg->hostname);
	free(cfg->domainname);
	for (size_t i = 0; i < cfg->n_mounts; i++)
		mount_clear(&cfg->mounts[i]);
	free(cfg->mounts);
	struct oci_hooks *h = &cfg->hooks;
	hooks_free(h->prestart, h->n_prestart);
	hooks_free(h->create_runtime, h->n_create_runtime);
	hooks_free(h->create_container, h->n_create_container);
	hooks_free(h->start_container, h->n_start_container);
	hooks_free(h->poststart, h->n_poststart);
	hooks_free(h->poststop, h->n_poststop);
	for (size_t i = 0; i < cfg->n_annotations; i++) {
		free(cfg->annotations[i].key);
		free(cfg->annotations[i].value);
	}
	free(cfg->annotations);
	linux_clear(&cfg->linux_);
	if (cfg->json)
		json_decref(cfg->json);
	free(cfg);
}
