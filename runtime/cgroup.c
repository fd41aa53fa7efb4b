/* Cgroup manager: layout detection, path computation, create/enter/destroy, pids, state
 * serialization. Resource translation lives in cgroup_v1.c / cgroup_v2.c / cgroup_res.c. */
#include "runtime/cgroup.h"

#include "base/err.h"
#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup_internal.h"
#include "runtime/config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define CG_FILE_MAX (1u << 20)

static const char *const v1_controller_names[] = {
	"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
	"perf_event", "hugetlb", "pids", "rdma", "misc", "debug", NULL,
};

const char *cgroup_mode_name(enum cgroup_mode mode)
{
	switch (mode) {
	case CGROUP_MODE_V1: return "v1";
	case CGROUP_MODE_V2: return "v2";
	case CGROUP_MODE_HYBRID: return "hybrid";
	}
	return "?";
}

bool cg_list_has(const char *list, const char *name)
{
	size_t len = strlen(name);
	for (const char *p = list; p && *p;) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == len && strncmp(p, name, len) == 0)
			return true;
		p = e ? e + 1 : NULL;
	}
	return false;
}

/* ---------- file helpers ---------- */

const char *cg_label(const struct cg_dir *d, char *buf, size_t cap)
{
	if (d->v2)
		snprintf(buf, cap, "cgroup v2");
	else
		snprintf(buf, cap, "cgroup v1 %s", d->controllers);
	return buf;
}

int cg_write_keep(const struct cg_dir *d, int *fd, const char *file, const char *value, struct cella_err *err)
{
	char label[128];
	int r = 0;
	if (*fd < 0) {
		_cleanup_free_ char *path = cella_path_join(d->path, file);
		if (!path)
			return cella_err_set(err, ENOMEM, "out of memory");
		*fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | (d->fake ? O_APPEND : O_TRUNC));
		if (*fd < 0)
			r = -errno;
	}
	if (r == 0)
		r = cella_write_all(*fd, value, strlen(value));
	if (r == 0 && d->fake)
		r = cella_write_all(*fd, "\n", 1);
	if (r < 0)
		return cella_err_sys(err, -r, "%s: write %s=%s in %s", cg_label(d, label, sizeof(label)),
				     file, value, d->path);
	return 0;
}

int cg_write(const struct cg_dir *d, const char *file, const char *value, struct cella_err *err)
{
	_cleanup_close_ int fd = -1;
	return cg_write_keep(d, &fd, file, value, err);
}

int cg_writef(const struct cg_dir *d, const char *file, struct cella_err *err, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return cg_write(d, file, buf, err);
}

int cg_read(const struct cg_dir *d, const char *file, char **out, struct cella_err *err)
{
	char label[128];
	_cleanup_free_ char *path = cella_path_join(d->path, file);
	if (!path)
		return cella_err_set(err, ENOMEM, "out of memory");
	char *s = NULL;
	int r = cella_read_file(path, CG_FILE_MAX, &s, NULL, err);
	if (r < 0)
		return cella_err_wrap(err, "%s", cg_label(d, label, sizeof(label)));
	size_t n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	*out = s;
	return 0;
}

bool cg_has_file(const struct cg_dir *d, const char *file)
{
	_cleanup_free_ char *path = cella_path_join(d->path, file);
	return path && access(path, F_OK) == 0;
}

/* ---------- manager ---------- */

static void hier_free(struct cg_hier *h)
{
	free(h->mount);
	free(h->mount_root);
	free(h->controllers);
	free(h->own);
}

void cgroup_manager_free(struct cgroup_manager *mgr)
{
	if (!mgr)
		return;
	for (size_t i = 0; i < mgr->n; i++)
		hier_free(&mgr->h[i]);
	free(mgr->h);
	free(mgr);
}

static void cgroup_manager_freep(struct cgroup_manager **m)
{
	cgroup_manager_free(*m);
}

enum cgroup_mode cgroup_manager_mode(const struct cgroup_manager *mgr)
{
	return mgr->mode;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape_octal(char *s)
{
	char *w = s;
	for (char *r = s; *r;) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' &&
		    r[3] <= '7') {
			*w++ = (char)(((r[1] - '0') << 6) | ((r[2] - '0') << 3) | (r[3] - '0'));
			r += 4;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
}

static bool path_below(const char *path, const char *root)
{
	size_t n = strlen(root);
	while (n > 1 && root[n - 1] == '/')
		n--;
	if (n == 1 && root[0] == '/')
		return path[0] == '/';
	return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* v1 super options -> "cpu,cpuacct" or "name=systemd" (controllers first, then the name). */
static char *v1_controllers_from_options(const char *opts)
{
	char buf[512] = "";
	char name[256] = "";
	_cleanup_free_ char *copy = strdup(opts);
	if (!copy)
		return NULL;
	char *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (strncmp(tok, "name=", 5) == 0) {
			snprintf(name, sizeof(name), "%s", tok);
			continue;
		}
		for (size_t i = 0; v1_controller_names[i]; i++) {
			if (strcmp(tok, v1_controller_names[i]) == 0) {
				size_t l = strlen(buf);
				snprintf(buf + l, sizeof(buf) - l, "%s%s", l ? "," : "", tok);
			}
		}
	}
	if (name[0]) {
		size_t l = strlen(buf);
		snprintf(buf + l, sizeof(buf) - l, "%s%s", l ? "," : "", name);
	}
	return buf[0] ? strdup(buf) : NULL;
}

static int add_hier(struct cgroup_manager *mgr, bool v2, const char *mount, const char *root, char *controllers)
{
	for (size_t i = 0; i < mgr->n; i++) {
		/* The same hierarchy mounted twice (bind mounts): keep the first. */
		if (mgr->h[i].v2 == v2 && (v2 || strcmp(mgr->h[i].controllers, controllers) == 0)) {
			free(controllers);
			return 0;
		}
	}
	struct cg_hier *nh = realloc(mgr->h, (mgr->n + 1) * sizeof(*nh));
	if (!nh) {
		free(controllers);
		return -ENOMEM;
	}
	mgr->h = nh;
	struct cg_hier *h = &mgr->h[mgr->n];
	memset(h, 0, sizeof(*h));
	h->v2 = v2;
	h->mount = strdup(mount);
	h->mount_root = strdup(root);
	h->controllers = controllers ? controllers : strdup("");
	mgr->n++;
	if (!h->mount || !h->mount_root || !h->controllers)
		return -ENOMEM;
	return 0;
}

static int parse_mountinfo(struct cgroup_manager *mgr, const char *path, const char *root, struct cella_err *err)
{
	_cleanup_free_ char *text = NULL;
	int r = cella_read_file(path, 16u << 20, &text, NULL, err);
	if (r < 0)
		return r;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		/* id parent maj:min root mountpoint opts [optional...] - fstype source superopts */
		char *f[6] = { 0 };
		char *lsave = NULL, *tok = strtok_r(line, " ", &lsave);
		int nf = 0;
		while (tok && nf < 6) {
			f[nf++] = tok;
			tok = strtok_r(NULL, " ", &lsave);
		}
		while (tok && strcmp(tok, "-") != 0)
			tok = strtok_r(NULL, " ", &lsave);
		if (nf < 6 || !tok)
			continue;
		char *fstype = strtok_r(NULL, " ", &lsave);
		char *source = strtok_r(NULL, " ", &lsave);
		char *super = strtok_r(NULL, " ", &lsave);
		if (!fstype || !source)
			continue;
		bool v2 = strcmp(fstype, "cgroup2") == 0;
		if (!v2 && strcmp(fstype, "cgroup") != 0)
			continue;
		char *mnt_root = f[3], *mnt = f[4];
		unescape_octal(mnt_root);
		unescape_octal(mnt);
		if (!path_below(mnt, root))
			continue;
		char *ctrls = NULL;
		if (!v2) {
			ctrls = v1_controllers_from_options(super ? super : "");
			if (!ctrls)
				continue; /* no controller and no name: nothing to manage */
		}
		if (add_hier(mgr, v2, mnt, mnt_root, ctrls) < 0)
			return cella_err_set(err, ENOMEM, "out of memory");
	}
	return 0;
}

static int read_own_cgroups(struct cgroup_manager *mgr, const char *path, struct cella_err *err)
{
	_cleanup_free_ char *text = NULL;
	int r = cella_read_file(path, 1u << 20, &text, NULL, err);
	if (r < 0)
		return r;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *c1 = strchr(line, ':');
		char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c1 = *c2 = '\0';
		const char *ctrls = c1 + 1, *cpath = c2 + 1;
		for (size_t i = 0; i < mgr->n; i++) {
			struct cg_hier *h = &mgr->h[i];
			bool match = false;
			if (h->v2) {
				match = strcmp(line, "0") == 0 && ctrls[0] == '\0';
			} else if (ctrls[0]) {
				_cleanup_free_ char *copy = strdup(ctrls);
				char *s2 = NULL;
				for (char *t = copy ? strtok_r(copy, ",", &s2) : NULL; t && !match;
				     t = strtok_r(NULL, ",", &s2))
					match = cg_list_has(h->controllers, t);
			}
			if (match && !h->own) {
				h->own = strdup(cpath);
				if (!h->own)
					return cella_err_set(err, ENOMEM, "out of memory");
			}
		}
	}
	return 0;
}

static int read_v2_controllers(struct cg_hier *h, struct cella_err *err)
{
	_cleanup_free_ char *p = cella_path_join(h->mount, "cgroup.controllers");
	_cleanup_free_ char *text = NULL;
	if (!p)
		return cella_err_set(err, ENOMEM, "out of memory");
	int r = cella_read_file(p, 4096, &text, NULL, err);
	if (r < 0)
		return r;
	char buf[512] = "";
	char *save = NULL;
	for (char *t = strtok_r(text, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save)) {
		size_t l = strlen(buf);
		snprintf(buf + l, sizeof(buf) - l, "%s%s", l ? "," : "", t);
	}
	free(h->controllers);
	h->controllers = strdup(buf);
	return h->controllers ? 0 : cella_err_set(err, ENOMEM, "out of memory");
}

int cgroup_manager_open(const struct cgroup_manager_opts *opts, struct cgroup_manager **out,
			struct cella_err *err)
{
	const char *mountinfo = opts && opts->mountinfo ? opts->mountinfo : "/proc/self/mountinfo";
	const char *proc_cgroup = opts && opts->proc_cgroup ? opts->proc_cgroup : "/proc/self/cgroup";
	const char *root = opts && opts->root ? opts->root : "/sys/fs/cgroup";
	__attribute__((cleanup(cgroup_manager_freep))) struct cgroup_manager *mgr = calloc(1, sizeof(*mgr));
	if (!mgr)
		return cella_err_set(err, ENOMEM, "out of memory");
	mgr->fake = opts && opts->fake;
	int r = parse_mountinfo(mgr, mountinfo, root, err);
	if (r < 0)
		return cella_err_wrap(err, "cgroup: detect hierarchies");
	if (mgr->n == 0)
		return cella_err_set(err, ENOENT, "cgroup: no cgroup hierarchy mounted under %s", root);
	size_t n_v1 = 0;
	bool has_v2 = false;
	for (size_t i = 0; i < mgr->n; i++) {
		if (mgr->h[i].v2) {
			has_v2 = true;
			r = read_v2_controllers(&mgr->h[i], err);
			if (r < 0)
				return cella_err_wrap(err, "cgroup: read v2 controllers");
		} else {
			n_v1++;
		}
	}
	mgr->mode = n_v1 == 0 ? CGROUP_MODE_V2 : has_v2 ? CGROUP_MODE_HYBRID : CGROUP_MODE_V1;
	r = read_own_cgroups(mgr, proc_cgroup, err);
	if (r < 0)
		return cella_err_wrap(err, "cgroup: read own cgroups");
	*out = TAKE_PTR(mgr);
	return 0;
}

/* ---------- paths ---------- */

/* Lexically cleans p into "/a/b" (never above "/"); "" when p names the root. */
static char *clean_path(const char *p)
{
	size_t cap = strlen(p) + 2;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	size_t len = 0;
	out[0] = '\0';
	const char *s = p;
	while (*s) {
		while (*s == '/')
			s++;
		const char *e = s;
		while (*e && *e != '/')
			e++;
		size_t n = (size_t)(e - s);
		if (n == 0 || (n == 1 && s[0] == '.')) {
			/* skip */
		} else if (n == 2 && s[0] == '.' && s[1] == '.') {
			while (len > 0 && out[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
			out[len] = '\0';
		} else {
			out[len++] = '/';
			memcpy(out + len, s, n);
			len += n;
			out[len] = '\0';
		}
		s = e;
	}
	return out;
}

static size_t count_components(const char *p)
{
	size_t n = 0;
	for (; *p; p++)
		if (*p == '/')
			n++;
	return n;
}

static void dir_free(struct cg_dir *d)
{
	free(d->controllers);
	free(d->mount);
	free(d->path);
	free(d->rel);
}

void cgroup_instance_free(struct cgroup_instance *inst)
{
	if (!inst)
		return;
	for (size_t i = 0; i < inst->n; i++)
		dir_free(&inst->d[i]);
	free(inst->d);
	free(inst);
}

static void instance_freep(struct cgroup_instance **i)
{
	cgroup_instance_free(*i);
}
#define _cleanup_instance_ __attribute__((cleanup(instance_freep)))

static int check_id(const char *id, struct cella_err *err)
{
	if (!id || !id[0])
		return cella_err_set(err, EINVAL, "cgroup: container id is empty");
	if (strchr(id, '/') || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
		return cella_err_set(err, EINVAL, "cgroup: invalid container id \"%s\"", id);
	return 0;
}

/* Builds the instance's paths; created = components counted as ours (for lookup). */
static int compute_instance(struct cgroup_manager *mgr, const char *cgroups_path, const char *id,
			    struct cgroup_instance **out, struct cella_err *err)
{
	int r = check_id(id, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *given = NULL;
	if (!cgroups_path || !cgroups_path[0]) {
		given = cella_strdup_printf("/%s", id);
	} else {
		if (cgroups_path[0] != '/') {
			const char *c1 = strchr(cgroups_path, ':');
			if (c1 && strchr(c1 + 1, ':'))
				return cella_err_set(err, EINVAL,
						     "linux.cgroupsPath: \"%s\" looks like a systemd slice:prefix:name; "
						     "systemd cgroup driver is not supported",
						     cgroups_path);
		}
		given = strdup(cgroups_path);
	}
	if (!given)
		return cella_err_set(err, ENOMEM, "out of memory");
	bool absolute = given[0] == '/';
	_cleanup_free_ char *inner = clean_path(given);
	if (!inner)
		return cella_err_set(err, ENOMEM, "out of memory");
	if (!inner[0])
		return cella_err_set(err, EINVAL, "linux.cgroupsPath: \"%s\" names the root cgroup itself",
				     cgroups_path);

	_cleanup_instance_ struct cgroup_instance *inst = calloc(1, sizeof(*inst));
	if (!inst || !(inst->d = calloc(mgr->n, sizeof(*inst->d))))
		return cella_err_set(err, ENOMEM, "out of memory");
	inst->mode = mgr->mode;
	inst->fake = mgr->fake;
	for (size_t i = 0; i < mgr->n; i++) {
		const struct cg_hier *h = &mgr->h[i];
		struct cg_dir *d = &inst->d[inst->n++];
		d->v2 = h->v2;
		d->fake = mgr->fake;
		d->controllers = strdup(h->controllers);
		d->mount = strdup(h->mount);
		if (absolute) {
			d->rel = strdup(inner);
		} else {
			/* Relative to the runtime's own cgroup, as seen through this mount. */
			const char *own = h->own ? h->own : "/";
			const char *mroot = h->mount_root;
			if (strcmp(mroot, "/") != 0 && path_below(own, mroot))
				own += strlen(mroot);
			_cleanup_free_ char *joined = cella_strdup_printf("%s/%s", own, inner);
			d->rel = joined ? clean_path(joined) : NULL;
		}
		if (!d->controllers || !d->mount || !d->rel)
			return cella_err_set(err, ENOMEM, "out of memory");
		d->path = cella_path_join(d->mount, d->rel);
		if (!d->path)
			return cella_err_set(err, ENOMEM, "out of memory");
		d->created = 1;
	}
	*out = TAKE_PTR(inst);
	return 0;
}

int cgroup_instance_lookup(struct cgroup_manager *mgr, const char *cgroups_path, const char *id,
			   struct cgroup_instance **out, struct cella_err *err)
{
	return compute_instance(mgr, cgroups_path, id, out, err);
}

struct cg_dir *cg_v2_dir(struct cgroup_instance *inst)
{
	for (size_t i = 0; i < inst->n; i++)
		if (inst->d[i].v2)
			return &inst->d[i];
	return NULL;
}

struct cg_dir *cg_route(struct cgroup_instance *inst, const char *controller)
{
	for (size_t i = 0; i < inst->n; i++)
		if (!inst->d[i].v2 && cg_list_has(inst->d[i].controllers, controller))
			return &inst->d[i];
	struct cg_dir *v2 = cg_v2_dir(inst);
	if (v2 && cg_list_has(v2->controllers, controller))
		return v2;
	return NULL;
}

const char *cgroup_instance_path(const struct cgroup_instance *inst, const char *controller)
{
	struct cg_dir *d = cg_route((struct cgroup_instance *)inst, controller);
	return d ? d->path : NULL;
}

size_t cgroup_instance_count(const struct cgroup_instance *inst)
{
	return inst->n;
}

int cgroup_instance_dir(const struct cgroup_instance *inst, size_t i, struct cgroup_dir_info *out)
{
	if (i >= inst->n)
		return -ERANGE;
	const struct cg_dir *d = &inst->d[i];
	out->v2 = d->v2;
	out->controllers = d->controllers;
	out->mount = d->mount;
	out->path = d->path;
	out->rel = d->rel;
	return 0;
}

/* ---------- directory creation and removal ---------- */

/* Fake cgroupfs: a new directory shows the same files as its parent, empty. */
static int fake_populate(const char *dir, const char *parent)
{
	_cleanup_close_ int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0 || dfd < 0)
		return -errno;
	DIR *dp = fdopendir(TAKE_FD(pfd));
	if (!dp)
		return -errno;
	struct dirent *de;
	int r = 0;
	while ((de = readdir(dp))) {
		if (de->d_type != DT_REG)
			continue;
		int fd = openat(dfd, de->d_name, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0) {
			r = -errno;
			break;
		}
		close(fd);
	}
	closedir(dp);
	return r;
}

static int mkdir_one(struct cgroup_instance *inst, struct cg_dir *d, struct cella_err *err)
{
	/* Walk rel from the hierarchy root; count what we create. On ENOENT (a concurrent destroy
	 * removed an empty shared parent) start over a few times. */
	for (int attempt = 0; attempt < 5; attempt++) {
		_cleanup_free_ char *cur = strdup(d->mount);
		if (!cur)
			return cella_err_set(err, ENOMEM, "out of memory");
		size_t total = count_components(d->rel), level = 0;
		bool retry = false;
		const char *s = d->rel;
		while (*s) {
			while (*s == '/')
				s++;
			const char *e = strchrnul(s, '/');
			_cleanup_free_ char *comp = strndup(s, (size_t)(e - s));
			_cleanup_free_ char *next = comp ? cella_path_join(cur, comp) : NULL;
			if (!next)
				return cella_err_set(err, ENOMEM, "out of memory");
			level++;
			if (mkdir(next, 0755) == 0) {
				size_t mine = total - level + 1;
				if ((int)mine > d->created)
					d->created = (int)mine;
				if (inst->fake) {
					int r = fake_populate(next, cur);
					if (r < 0)
						return cella_err_sys(err, -r, "cgroup: populate fake %s", next);
				}
			} else if (errno == ENOENT && level > 1) {
				retry = true;
				break;
			} else if (errno != EEXIST) {
				char label[128];
				return cella_err_sys(err, errno, "%s: mkdir %s", cg_label(d, label, sizeof(label)),
						     next);
			}
			free(cur);
			cur = TAKE_PTR(next);
			s = e;
		}
		if (!retry)
			return 0;
	}
	return cella_err_set(err, EAGAIN, "cgroup: mkdir %s: parent keeps disappearing", d->path);
}

static int read_pids_file(const char *dir, pid_t **pids, size_t *n, size_t *cap)
{
	_cleanup_free_ char *p = cella_path_join(dir, "cgroup.procs");
	_cleanup_free_ char *text = NULL;
	if (!p)
		return -ENOMEM;
	int r = cella_read_file(p, CG_FILE_MAX, &text, NULL, NULL);
	if (r < 0)
		return r;
	char *save = NULL;
	for (char *t = strtok_r(text, " \n", &save); t; t = strtok_r(NULL, " \n", &save)) {
		int v;
		if (cella_parse_int(t, &v) < 0 || v <= 0)
			continue;
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 16;
			pid_t *np = realloc(*pids, nc * sizeof(*np));
			if (!np)
				return -ENOMEM;
			*pids = np;
			*cap = nc;
		}
		(*pids)[(*n)++] = v;
	}
	return 0;
}

/* Collects pids of dir and every sub-cgroup below it. ENOENT is fine (already gone). */
static int collect_pids(const char *dir, pid_t **pids, size_t *n, size_t *cap, int depth)
{
	if (depth > 64)
		return -ELOOP;
	int r = read_pids_file(dir, pids, n, cap);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	DIR *dp = opendir(dir);
	if (!dp)
		return errno == ENOENT ? 0 : -errno;
	struct dirent *de;
	while ((de = readdir(dp))) {
		if (de->d_type != DT_DIR || strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		_cleanup_free_ char *sub = cella_path_join(dir, de->d_name);
		r = sub ? collect_pids(sub, pids, n, cap, depth + 1) : -ENOMEM;
		if (r < 0)
			break;
	}
	closedir(dp);
	return r < 0 ? r : 0;
}

static int cmp_pid(const void *a, const void *b)
{
	pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
	return x < y ? -1 : x > y;
}

static size_t sort_unique(pid_t *p, size_t n)
{
	if (n == 0)
		return 0;
	qsort(p, n, sizeof(*p), cmp_pid);
	size_t w = 1;
	for (size_t i = 1; i < n; i++)
		if (p[i] != p[w - 1])
			p[w++] = p[i];
	return w;
}

int cgroup_get_pids(struct cgroup_instance *inst, pid_t **out, size_t *n_out, struct cella_err *err)
{
	pid_t *pids = NULL;
	size_t n = 0, cap = 0;
	for (size_t i = 0; i < inst->n; i++) {
		int r = collect_pids(inst->d[i].path, &pids, &n, &cap, 0);
		if (r < 0) {
			free(pids);
			return cella_err_sys(err, -r, "cgroup: list processes in %s", inst->d[i].path);
		}
	}
	n = sort_unique(pids, n);
	if (n == 0) {
		free(pids);
		pids = NULL;
	}
	*out = pids;
	*n_out = n;
	return 0;
}

int cgroup_kill_all(struct cgroup_instance *inst, int sig, struct cella_err *err)
{
	_cleanup_free_ pid_t *pids = NULL;
	size_t n = 0;
	int r = cgroup_get_pids(inst, &pids, &n, err);
	if (r < 0)
		return r;
	if (inst->fake)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (kill(pids[i], sig) < 0 && errno != ESRCH)
			return cella_err_sys(err, errno, "cgroup: kill %d with signal %d", (int)pids[i], sig);
	return 0;
}

static int fake_unlink_files(const char *dir)
{
	DIR *dp = opendir(dir);
	if (!dp)
		return -errno;
	struct dirent *de;
	while ((de = readdir(dp)))
		if (de->d_type == DT_REG)
			unlinkat(dirfd(dp), de->d_name, 0);
	closedir(dp);
	return 0;
}

static void kill_dir_tasks(const char *dir)
{
	pid_t *pids = NULL;
	size_t n = 0, cap = 0;
	if (read_pids_file(dir, &pids, &n, &cap) == 0)
		for (size_t i = 0; i < n; i++)
			kill(pids[i], SIGKILL);
	free(pids);
}

/* rmdir with the busy handling: SIGKILL the tasks and retry for up to ~2 s. */
static int rmdir_cgroup(const char *dir, bool fake)
{
	if (fake)
		fake_unlink_files(dir);
	uint64_t deadline = cella_now_ns() + 2000000000ull;
	long delay_us = 1000;
	for (;;) {
		if (rmdir(dir) == 0 || errno == ENOENT)
			return 0;
		int e = errno;
		if (e != EBUSY || fake)
			return -e;
		if (cella_now_ns() > deadline)
			return -EBUSY;
		kill_dir_tasks(dir);
		struct timespec ts = { 0, delay_us * 1000 };
		nanosleep(&ts, NULL);
		if (delay_us < 100000)
			delay_us *= 2;
	}
}

/* Removes dir and everything below it, deepest first. */
static int remove_tree(const char *dir, bool fake, int depth, struct cella_err *err)
{
	if (depth > 64)
		return cella_err_set(err, ELOOP, "cgroup: %s: nested too deeply", dir);
	/* Usually the container made no sub-cgroups and its processes are gone: one rmdir. */
	if (!fake && (rmdir(dir) == 0 || errno == ENOENT))
		return 0;
	DIR *dp = opendir(dir);
	if (!dp) {
		if (errno == ENOENT)
			return 0;
		return cella_err_sys(err, errno, "cgroup: open %s", dir);
	}
	int r = 0;
	struct dirent *de;
	while ((de = readdir(dp))) {
		if (de->d_type != DT_DIR || strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		_cleanup_free_ char *sub = cella_path_join(dir, de->d_name);
		if (!sub) {
			r = cella_err_set(err, ENOMEM, "out of memory");
			break;
		}
		r = remove_tree(sub, fake, depth + 1, err);
		if (r < 0)
			break;
	}
	closedir(dp);
	if (r < 0)
		return r;
	r = rmdir_cgroup(dir, fake);
	if (r < 0)
		return cella_err_sys(err, -r, "cgroup: rmdir %s", dir);
	return 0;
}

/* Removes parents we created, if empty; stops at the first one in use. */
static void remove_created_parents(const struct cg_dir *d, bool fake)
{
	_cleanup_free_ char *p = strdup(d->path);
	for (int i = 1; p && i < d->created; i++) {
		char *slash = strrchr(p, '/');
		if (!slash || slash == p)
			return;
		*slash = '\0';
		if (!path_below(p, d->mount) || strcmp(p, d->mount) == 0)
			return;
		if (fake) {
			/* Only files the fake kernel would show: remove them unless a sub-dir remains. */
			DIR *dp = opendir(p);
			bool has_sub = false;
			struct dirent *de;
			while (dp && (de = readdir(dp)))
				if (de->d_type == DT_DIR && strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
					has_sub = true;
			if (dp)
				closedir(dp);
			if (has_sub)
				return;
			fake_unlink_files(p);
		}
		if (rmdir(p) < 0 && errno != ENOENT)
			return;
	}
}

int cgroup_destroy(struct cgroup_instance *inst, struct cella_err *err)
{
	int first = 0;
	for (size_t k = inst->n; k-- > 0;) {
		struct cg_dir *d = &inst->d[k];
		if (d->created <= 0)
			continue;
		struct cella_err e2 = { 0 };
		int r = remove_tree(d->path, inst->fake, 0, &e2);
		if (r < 0) {
			/* Keep going with the other hierarchies; report the first failure. */
			if (!first) {
				first = r;
				if (err)
					*err = e2;
			}
			continue;
		}
		remove_created_parents(d, inst->fake);
	}
	return first;
}

/* ---------- create ---------- */

int cgroup_enter(struct cgroup_instance *inst, pid_t pid, struct cella_err *err)
{
	for (size_t i = 0; i < inst->n; i++) {
		int r = cg_writef(&inst->d[i], "cgroup.procs", err, "%d", (int)pid);
		if (r < 0)
			return r;
	}
	return 0;
}

int cgroup_join_finish(struct cgroup_instance *inst, bool self_join, bool born_in_v2, pid_t pid,
		       struct cella_err *err)
{
	if (!self_join)
		return cgroup_enter(inst, pid, err);
	struct cg_dir *d = born_in_v2 ? NULL : cg_v2_dir(inst);
	return d ? cg_writef(d, "cgroup.procs", err, "%d", (int)pid) : 0;
}

void cgroup_join_close(struct cgroup_join *j)
{
	for (size_t i = 0; i < j->n; i++)
		if (j->fds[i] >= 0)
			close(j->fds[i]);
	free(j->fds);
	j->fds = NULL;
	j->n = 0;
	if (j->v2_fd >= 0)
		close(j->v2_fd);
	j->v2_fd = -1;
}

int cgroup_join_open(const struct cgroup_instance *inst, struct cgroup_join *j, struct cella_err *err)
{
	*j = (struct cgroup_join)CGROUP_JOIN_INIT;
	if (!inst || inst->fake || inst->n == 0)
		return 0;
	j->inst = inst;
	j->fds = malloc(inst->n * sizeof(*j->fds));
	if (!j->fds)
		return cella_err_set(err, ENOMEM, "out of memory");
	j->n = inst->n;
	for (size_t i = 0; i < inst->n; i++)
		j->fds[i] = -1;
	for (size_t i = 0; i < inst->n; i++) {
		const struct cg_dir *d = &inst->d[i];
		/* v2: the directory itself, for clone3; v1: the file that moves one thread. */
		_cleanup_free_ char *path = d->v2 ? strdup(d->path) : cella_path_join(d->path, "tasks");
		if (!path) {
			cgroup_join_close(j);
			return cella_err_set(err, ENOMEM, "out of memory");
		}
		int fd = d->v2 ? open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
		if (fd < 0) {
			int e = errno;
			char label[128];
			cgroup_join_close(j);
			return cella_err_sys(err, e, "%s: open %s", cg_label(d, label, sizeof(label)), path);
		}
		*(d->v2 ? &j->v2_fd : &j->fds[i]) = fd;
	}
	return 1;
}

int cgroup_join_self(struct cgroup_join *j, struct cella_err *err)
{
	int r = 0;
	for (size_t i = 0; i < j->n && r == 0; i++) {
		if (j->fds[i] >= 0 && write(j->fds[i], "0", 1) != 1) {
			char label[128];
			const struct cg_dir *d = &j->inst->d[i];
			r = cella_err_sys(err, errno, "%s: join %s (write 0 to its tasks file)",
					  cg_label(d, label, sizeof(label)), d->path);
		}
	}
	/* Nothing of the host's cgroup tree stays open in the container. */
	cgroup_join_close(j);
	return r;
}

static int need_controller(struct cgroup_instance *inst, const char *ctrl, const char *what, struct cg_dir **out,
			   struct cella_err *err)
{
	*out = cg_route(inst, ctrl);
	if (!*out)
		return cella_err_set(err, ENOTSUP, "%s: the %s cgroup controller is not available on this host",
				     what, ctrl);
	return 0;
}

static bool cpu_set_any(const struct oci_cpu *c)
{
	return (c->shares.set && c->shares.v) || (c->period.set && c->period.v) ||
	       (c->quota.set && c->quota.v) || (c->realtime_period.set && c->realtime_period.v) ||
	       (c->realtime_runtime.set && c->realtime_runtime.v) || c->idle.set;
}

static bool memory_set_any(const struct oci_memory *m)
{
	return (m->limit.set && m->limit.v) || (m->reservation.set && m->reservation.v) ||
	       (m->swap.set && m->swap.v) || m->kernel_tcp.set || m->swappiness.set ||
	       (m->has_disable_oom_killer && m->disable_oom_killer) || m->has_use_hierarchy;
}

static bool blkio_set_any(const struct oci_blkio *b)
{
	return b->weight.set || b->leaf_weight.set || b->n_weight_device || b->n_throttle_read_bps ||
	       b->n_throttle_write_bps || b->n_throttle_read_iops || b->n_throttle_write_iops;
}

/* v2 controllers the resources need, comma-separated into buf. */
static void v2_needed(struct cgroup_instance *inst, const struct oci_resources *r, char *buf, size_t cap)
{
	struct cg_dir *v2 = cg_v2_dir(inst);
	buf[0] = '\0';
	if (!v2 || !r)
		return;
	const char *want[8];
	size_t n = 0;
	if (r->has_memory && memory_set_any(&r->memory))
		want[n++] = "memory";
	if (r->has_cpu && cpu_set_any(&r->cpu))
		want[n++] = "cpu";
	if (r->has_cpu && ((r->cpu.cpus && r->cpu.cpus[0]) || (r->cpu.mems && r->cpu.mems[0])))
		want[n++] = "cpuset";
	if (r->has_pids && r->pids.limit.set)
		want[n++] = "pids";
	if (r->has_blkio && blkio_set_any(&r->blkio))
		want[n++] = "io";
	if (r->n_hugepage_limits)
		want[n++] = "hugetlb";
	for (size_t i = 0; i < n; i++) {
		if (cg_route(inst, want[i]) != v2)
			continue;
		size_t l = strlen(buf);
		snprintf(buf + l, cap - l, "%s%s", l ? "," : "", want[i]);
	}
	for (size_t i = 0; i < r->n_unified; i++) {
		char ctrl[64];
		const char *key = r->unified[i].key, *dot = strchr(key, '.');
		if (!dot || (size_t)(dot - key) >= sizeof(ctrl))
			continue;
		snprintf(ctrl, sizeof(ctrl), "%.*s", (int)(dot - key), key);
		if (!cg_list_has(v2->controllers, ctrl) || cg_list_has(buf, ctrl))
			continue;
		size_t l = strlen(buf);
		snprintf(buf + l, cap - l, "%s%s", l ? "," : "", ctrl);
	}
}

static int apply_resources(struct cgroup_instance *inst, const struct cgroup_params *p, struct cella_err *err)
{
	const struct oci_resources *res = p->resources;
	struct cg_dir *v2 = cg_v2_dir(inst), *d;
	int r;

	/* v1 cpuset needs cpus/mems before any task can join. */
	d = cg_route(inst, "cpuset");
	if (d && !d->v2 && (r = cg_v1_cpuset_init(d, err)) < 0)
		return r;
	if (inst->mode == CGROUP_MODE_V2 && v2) {
		/* Like runc: make every available controller usable in the container (best effort). */
		cg_v2_enable(v2, v2->controllers, false, NULL);
	}
	if (v2) {
		char needed[512];
		v2_needed(inst, res, needed, sizeof(needed));
		if (needed[0] && (r = cg_v2_enable(v2, needed, true, err)) < 0)
			return r;
	}

	if (res && res->has_memory && memory_set_any(&res->memory)) {
		if ((r = need_controller(inst, "memory", "linux.resources.memory", &d, err)) < 0)
			return r;
		if ((r = d->v2 ? cg_v2_memory(d, res, err) : cg_v1_memory(d, res, err)) < 0)
			return r;
	}
	if (res && res->has_cpu && cpu_set_any(&res->cpu)) {
		if ((r = need_controller(inst, "cpu", "linux.resources.cpu", &d, err)) < 0)
			return r;
		if ((r = d->v2 ? cg_v2_cpu(d, res, err) : cg_v1_cpu(d, res, err)) < 0)
			return r;
	}
	if (res && res->has_cpu && ((res->cpu.cpus && res->cpu.cpus[0]) || (res->cpu.mems && res->cpu.mems[0]))) {
		if ((r = need_controller(inst, "cpuset", "linux.resources.cpu.cpus", &d, err)) < 0)
			return r;
		if ((r = cg_cpuset(d, res, err)) < 0)
			return r;
	}
	if (res && res->has_pids && res->pids.limit.set) {
		if ((r = need_controller(inst, "pids", "linux.resources.pids", &d, err)) < 0)
			return r;
		if ((r = cg_pids(d, res, err)) < 0)
			return r;
	}
	if (res && res->has_blkio && blkio_set_any(&res->blkio)) {
		d = cg_route(inst, "blkio");
		if (!d && (r = need_controller(inst, "io", "linux.resources.blockIO", &d, err)) < 0)
			return r;
		if ((r = d->v2 ? cg_v2_io(d, res, err) : cg_v1_blkio(d, res, err)) < 0)
			return r;
	}
	if (res && res->n_hugepage_limits) {
		if ((r = need_controller(inst, "hugetlb", "linux.resources.hugepageLimits", &d, err)) < 0)
			return r;
		if ((r = d->v2 ? cg_v2_hugetlb(d, res, err) : cg_v1_hugetlb(d, res, err)) < 0)
			return r;
	}
	if (!p->skip_devices) {
		_cleanup_free_ struct cg_dev_rule *rules = NULL;
		size_t n = 0;
		if ((r = cg_device_rules(p, &rules, &n, err)) < 0)
			return r;
		d = cg_route(inst, "devices");
		if (d) {
			if ((r = cg_v1_devices(d, rules, n, err)) < 0)
				return r;
		} else if (v2 && inst->mode == CGROUP_MODE_V2) {
			if ((r = cg_v2_devices(v2, inst->fake, rules, n, err)) < 0)
				return r;
		} else if (!cg_devices_default_only(p)) {
			return cella_err_set(err, ENOTSUP,
					     "linux.resources.devices: no device cgroup controller on this host");
		}
	}
	if (res && res->n_unified) {
		if (!v2)
			return cella_err_set(err, ENOTSUP,
					     "linux.resources.unified: cgroup v2 is not available on this host");
		if ((r = cg_v2_unified(v2, res, err)) < 0)
			return r;
	}
	return 0;
}

/* Checks for unified keys that hybrid hosts drive through v1. */
static int check_unified_routing(struct cgroup_instance *inst, const struct oci_resources *res, struct cella_err *err)
{
	if (!res)
		return 0;
	struct cg_dir *v2 = cg_v2_dir(inst);
	for (size_t i = 0; i < res->n_unified; i++) {
		const char *key = res->unified[i].key, *dot = strchr(key, '.');
		char ctrl[64];
		if (!dot || (size_t)(dot - key) >= sizeof(ctrl))
			continue; /* cg_validate_resources reports it */
		snprintf(ctrl, sizeof(ctrl), "%.*s", (int)(dot - key), key);
		if (strcmp(ctrl, "cgroup") == 0 || !v2)
			continue;
		struct cg_dir *d = cg_route(inst, ctrl);
		if (d && !d->v2)
			return cella_err_set(err, ENOTSUP,
					     "linux.resources.unified.\"%s\": the %s controller is managed by cgroup v1 "
					     "on this (hybrid) host",
					     key, ctrl);
	}
	return 0;
}

int cgroup_create(struct cgroup_manager *mgr, const struct cgroup_params *params, pid_t pid,
		  struct cgroup_instance **out, struct cella_err *err)
{
	int r = cg_validate_resources(params->resources, err);
	if (r < 0)
		return r;
	_cleanup_instance_ struct cgroup_instance *inst = NULL;
	r = compute_instance(mgr, params->cgroups_path, params->id, &inst, err);
	if (r < 0)
		return r;
	if ((r = check_unified_routing(inst, params->resources, err)) < 0)
		return r;
	for (size_t i = 0; i < inst->n; i++)
		inst->d[i].created = 0;
	for (size_t i = 0; i < inst->n && r == 0; i++)
		r = mkdir_one(inst, &inst->d[i], err);
	if (r == 0)
		r = apply_resources(inst, params, err);
	if (r == 0 && pid > 0)
		r = cgroup_enter(inst, pid, err);
	if (r < 0) {
		struct cella_err e2 = { 0 };
		if (cgroup_destroy(inst, &e2) < 0)
			log_warn("cgroup: cleanup after failed create: %s", e2.msg);
		return r;
	}
	log_debug("cgroup: created %s (%s)", inst->d[0].rel, cgroup_mode_name(inst->mode));
	*out = TAKE_PTR(inst);
	return 0;
}

/* ---------- freezer ---------- */

static int wait_file(const struct cg_dir *d, const char *file, const char *want_line, struct cella_err *err)
{
	uint64_t deadline = cella_now_ns() + 5000000000ull;
	long delay_us = 100;
	for (;;) {
		_cleanup_free_ char *s = NULL;
		int r = cg_read(d, file, &s, err);
		if (r < 0)
			return r;
		for (char *l = s, *e; l; l = e ? e + 1 : NULL) {
			e = strchr(l, '\n');
			if (e)
				*e = '\0';
			if (strcmp(l, want_line) == 0)
				return 0;
		}
		if (cella_now_ns() > deadline)
			return cella_err_set(err, ETIMEDOUT, "cgroup: %s/%s did not reach \"%s\"", d->path, file,
					     want_line);
		struct timespec ts = { 0, delay_us * 1000 };
		nanosleep(&ts, NULL);
		if (delay_us < 50000)
			delay_us *= 2;
	}
}

int cgroup_freeze(struct cgroup_instance *inst, bool frozen, struct cella_err *err)
{
	struct cg_dir *d = cg_route(inst, "freezer");
	int r;
	if (d && !d->v2) {
		const char *state = frozen ? "FROZEN" : "THAWED";
		if ((r = cg_write(d, "freezer.state", state, err)) < 0)
			return r;
		return wait_file(d, "freezer.state", state, err);
	}
	d = cg_v2_dir(inst);
	if (!d || inst->mode != CGROUP_MODE_V2)
		return cella_err_set(err, ENOTSUP, "cgroup: no freezer on this host");
	if ((r = cg_write(d, "cgroup.freeze", frozen ? "1" : "0", err)) < 0)
		return r;
	if (inst->fake)
		return 0;
	return wait_file(d, "cgroup.events", frozen ? "frozen 1" : "frozen 0", err);
}

/* ---------- serialization ---------- */

json_t *cgroup_instance_to_json(const struct cgroup_instance *inst)
{
	json_t *dirs = json_array();
	json_t *root = json_pack("{s:s, s:o}", "mode", cgroup_mode_name(inst->mode), "dirs", dirs);
	if (!root)
		return NULL;
	for (size_t i = 0; i < inst->n; i++) {
		const struct cg_dir *d = &inst->d[i];
		json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i}", "type", d->v2 ? "v2" : "v1", "controllers",
				      d->controllers, "mount", d->mount, "path", d->path, "rel", d->rel, "created",
				      d->created);
		if (!o || json_array_append_new(dirs, o) < 0) {
			json_decref(root);
			return NULL;
		}
	}
	return root;
}

char *cgroup_instance_save(const struct cgroup_instance *inst)
{
	_cleanup_json_ json_t *j = cgroup_instance_to_json(inst);
	return j ? cj_dump(j, JSON_COMPACT) : NULL;
}

int cgroup_instance_from_json(struct cgroup_manager *mgr, const json_t *j, struct cgroup_instance **out,
			      struct cella_err *err)
{
	static const char *const what = "cgroup state";
	if (cj_expect_object(j, what, err) < 0)
		return -EINVAL;
	json_t *dirs = NULL;
	int r = cj_get_array(j, what, "dirs", true, &dirs, err);
	if (r < 0)
		return r;
	_cleanup_instance_ struct cgroup_instance *inst = calloc(1, sizeof(*inst));
	size_t n = json_array_size(dirs);
	if (!inst || !(inst->d = calloc(n ? n : 1, sizeof(*inst->d))))
		return cella_err_set(err, ENOMEM, "out of memory");
	inst->mode = mgr->mode;
	inst->fake = mgr->fake;
	for (size_t i = 0; i < n; i++) {
		char p[CJ_PATH_MAX];
		cj_subpath_index(p, sizeof(p), "cgroup state.dirs", i);
		json_t *o = json_array_get(dirs, i);
		const char *type, *ctrls, *mount, *path, *rel;
		int64_t created;
		if (cj_expect_object(o, p, err) < 0 || cj_get_string(o, p, "type", true, &type, err) < 0 ||
		    cj_get_string(o, p, "controllers", true, &ctrls, err) < 0 ||
		    cj_get_string(o, p, "mount", true, &mount, err) < 0 ||
		    cj_get_string(o, p, "path", true, &path, err) < 0 ||
		    cj_get_string(o, p, "rel", true, &rel, err) < 0 ||
		    cj_get_int64(o, p, "created", true, &created, err) < 0)
			return -EINVAL;
		bool known = false;
		for (size_t k = 0; k < mgr->n && !known; k++)
			known = strcmp(mgr->h[k].mount, mount) == 0;
		_cleanup_free_ char *clean = clean_path(rel);
		_cleanup_free_ char *expect = clean ? cella_path_join(mount, clean) : NULL;
		if (!known || !clean || !clean[0] || !expect || strcmp(expect, path) != 0 || created < 0 ||
		    created > 64)
			return cella_err_set(err, EINVAL, "%s: \"%s\" is not a cgroup directory of this host", p,
					     path);
		struct cg_dir *d = &inst->d[inst->n++];
		d->v2 = strcmp(type, "v2") == 0;
		d->fake = mgr->fake;
		d->created = (int)created;
		d->controllers = strdup(ctrls);
		d->mount = strdup(mount);
		d->path = strdup(path);
		d->rel = strdup(clean);
		if (!d->controllers || !d->mount || !d->path || !d->rel)
			return cella_err_set(err, ENOMEM, "out of memory");
	}
	*out = TAKE_PTR(inst);
	return 0;
}

int cgroup_instance_load(struct cgroup_manager *mgr, const char *text, struct cgroup_instance **out,
			 struct cella_err *err)
{
	_cleanup_json_ json_t *j = NULL;
	int r = cj_load_string(text, strlen(text), "cgroup state", &j, err);
	if (r < 0)
		return r;
	return cgroup_instance_from_json(mgr, j, out, err);
}
