/* The state directory: state.json and the status derived from /proc and exec.fifo. */
#include "runtime/state.h"

#include "base/err.h"
#include "base/json.h"
#include "base/util.h"
#include "runtime/container.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_MAX (1 << 20)

const char *state_root(const struct cella_runtime *rt)
{
	return rt && rt->root && *rt->root ? rt->root : CELLA_DEFAULT_ROOT;
}

char *state_dir(const struct cella_runtime *rt, const char *id)
{
	return cella_path_join(state_root(rt), id);
}

int proc_stat(pid_t pid, unsigned long long *start, char *state)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -ESRCH;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -ESRCH;
	buf[n] = '\0';
	/* "pid (comm) S ppid ..." — comm may contain spaces and parentheses: skip to the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p || p[1] != ' ')
		return -EIO;
	p += 2;
	if (state)
		*state = *p;
	/* Field 3 is the state; start time is field 22. */
	for (int field = 3; field < 22; field++) {
		p = strchr(p, ' ');
		if (!p)
			return -EIO;
		p++;
	}
	if (start)
		*start = strtoull(p, NULL, 10);
	return 0;
}

bool proc_alive(pid_t pid, unsigned long long start)
{
	unsigned long long s;
	char st;
	if (pid <= 0 || proc_stat(pid, &s, &st) < 0)
		return false;
	if (start && s != start)
		return false;
	return st != 'Z' && st != 'X' && st != 'x';
}

char *rfc3339_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	char buf[64];
	size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, sizeof(buf) - n, ".%09ldZ", ts.tv_nsec);
	return strdup(buf);
}

void state_free(struct container_state *st)
{
	if (!st)
		return;
	free(st->id);
	free(st->dir);
	free(st->bundle);
	free(st->rootfs);
	free(st->created);
	free(st->cgroups_path);
	if (st->cgroup)
		json_decref(st->cgroup);
	if (st->annotations)
		json_decref(st->annotations);
	free(st);
}

int state_save(const struct container_state *st, struct cella_err *err)
{
	_cleanup_json_ json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:b, s:s?, s:s?, s:s?, s:I, s:s?, s:b}",
					     "id", st->id, "pid", (json_int_t)st->pid, "pid_start",
					     (json_int_t)st->pid_start, "creator", (json_int_t)st->creator,
					     "creator_start", (json_int_t)st->creator_start, "ready", st->ready,
					     "bundle", st->bundle, "rootfs", st->rootfs, "created", st->created,
					     "owner", (json_int_t)st->owner, "cgroups_path", st->cgroups_path,
					     "pid_ns_shared", st->pid_ns_shared);
	if (!j)
		return cella_err_set(err, ENOMEM, "state of %s: cannot build JSON", st->id);
	if (st->cgroup)
		json_object_set(j, "cgroup", st->cgroup);
	if (st->annotations)
		json_object_set(j, "annotations", st->annotations);
	_cleanup_free_ char *text = cj_dump(j, JSON_COMPACT);
	_cleanup_free_ char *path = cella_path_join(st->dir, STATE_FILE);
	if (!text || !path)
		return cella_err_set(err, ENOMEM, "state of %s", st->id);
	return cella_write_file_atomic(path, text, strlen(text), 0600, err);
}

static char *dup_member(json_t *j, const char *key)
{
	const char *s = json_string_value(json_object_get(j, key));
	return s ? strdup(s) : NULL;
}

static long long int_member(json_t *j, const char *key)
{
	return json_integer_value(json_object_get(j, key));
}

int state_load(const struct cella_runtime *rt, const char *id, struct container_state **out,
	       struct cella_err *err)
{
	int r = container_validate_id(id, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *dir = state_dir(rt, id);
	if (!dir)
		return cella_err_set(err, ENOMEM, "state dir");
	struct stat sb;
	if (stat(dir, &sb) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return cella_err_set(err, ENOENT, "container does not exist");
		return cella_err_sys(err, errno, "stat %s", dir);
	}
	struct container_state *st = calloc(1, sizeof(*st));
	if (!st)
		return cella_err_set(err, ENOMEM, "state");
	st->id = strdup(id);
	st->dir = TAKE_PTR(dir);
	st->owner = sb.st_uid;

	_cleanup_free_ char *path = cella_path_join(st->dir, STATE_FILE);
	_cleanup_json_ json_t *j = NULL;
	struct cella_err ignored = { 0 };
	if (path && cj_load_file(path, STATE_FILE, STATE_MAX, &j, &ignored) == 0 && json_is_object(j)) {
		st->pid = (pid_t)int_member(j, "pid");
		st->pid_start = (unsigned long long)int_member(j, "pid_start");
		st->creator = (pid_t)int_member(j, "creator");
		st->creator_start = (unsigned long long)int_member(j, "creator_start");
		st->ready = json_is_true(json_object_get(j, "ready"));
		st->pid_ns_shared = json_is_true(json_object_get(j, "pid_ns_shared"));
		st->bundle = dup_member(j, "bundle");
		st->rootfs = dup_member(j, "rootfs");
		st->created = dup_member(j, "created");
		st->cgroups_path = dup_member(j, "cgroups_path");
		st->owner = (uid_t)int_member(j, "owner");
		json_t *cg = json_object_get(j, "cgroup");
		if (json_is_object(cg))
			st->cgroup = json_incref(cg);
		json_t *ann = json_object_get(j, "annotations");
		if (json_is_object(ann))
			st->annotations = json_incref(ann);
	}
	*out = st;
	return 0;
}

enum container_status state_status(const struct container_state *st)
{
	if (!st->ready) {
		/* create still running (or killed half-way: then it is stopped, for delete). */
		if (st->creator > 0 && proc_alive(st->creator, st->creator_start))
			return STATUS_CREATING;
		return STATUS_STOPPED;
	}
	if (!proc_alive(st->pid, st->pid_start))
		return STATUS_STOPPED;
	_cleanup_free_ char *fifo = cella_path_join(st->dir, EXEC_FIFO);
	if (fifo && access(fifo, F_OK) == 0)
		return STATUS_CREATED;
	return STATUS_RUNNING;
}

bool state_paused(const struct container_state *st)
{
	/* From the saved cgroup instance: the v1 freezer hierarchy, or the v2 directory on a pure v2
	 * host (runc: frozen = paused). */
	json_t *dirs = st->cgroup ? json_object_get(st->cgroup, "dirs") : NULL;
	const char *mode = st->cgroup ? json_string_value(json_object_get(st->cgroup, "mode")) : NULL;
	const char *file = NULL, *dir = NULL, *want = NULL;
	size_t i;
	json_t *d;
	json_array_foreach(dirs, i, d) {
		const char *type = json_string_value(json_object_get(d, "type"));
		const char *ctrls = json_string_value(json_object_get(d, "controllers"));
		const char *path = json_string_value(json_object_get(d, "path"));
		if (!type || !path)
			continue;
		if (!strcmp(type, "v1") && ctrls) {
			_cleanup_free_ char *list = strdup(ctrls);
			char *save = NULL;
			for (char *c = list ? strtok_r(list, ",", &save) : NULL; c; c = strtok_r(NULL, ",", &save))
				if (!strcmp(c, "freezer")) {
					dir = path, file = "freezer.state", want = "FROZEN";
					break;
				}
		} else if (!strcmp(type, "v2") && mode && !strcmp(mode, "v2") && !dir) {
			dir = path, file = "cgroup.freeze", want = "1";
		}
		if (dir && !strcmp(file, "freezer.state"))
			break;
	}
	if (!dir)
		return false;
	_cleanup_free_ char *path = cella_path_join(dir, file);
	char buf[32] = { 0 };
	_cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		return false;
	buf[strcspn(buf, "\n")] = '\0';
	return strcmp(buf, want) == 0;
}

const char *state_status_name(enum container_status s)
{
	switch (s) {
	case STATUS_CREATING: return "creating";
	case STATUS_CREATED: return "created";
	case STATUS_RUNNING: return "running";
	case STATUS_STOPPED: return "stopped";
	}
	return "unknown";
}

json_t *state_to_oci(const struct container_state *st, enum container_status s)
{
	json_t *j = json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:s}", "ociVersion", CELLA_OCI_VERSION, "id",
			      st->id, "pid", (json_int_t)(s == STATUS_STOPPED ? 0 : st->pid), "status",
			      (s == STATUS_RUNNING || s == STATUS_CREATED) && state_paused(st) ? "paused"
											      : state_status_name(s),
			      "bundle", st->bundle ? st->bundle : "", "rootfs",
			      st->rootfs ? st->rootfs : "", "created", st->created ? st->created : "", "owner",
			      "");
	if (!j)
		return NULL;
	if (st->annotations && json_object_size(st->annotations))
		json_object_set(j, "annotations", st->annotations);
	return j;
}

int state_write_pid_file(const char *path, pid_t pid, struct cella_err *err)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d", (int)pid);
	char abs[PATH_MAX];
	if (path[0] != '/') {
		if (!getcwd(abs, sizeof(abs) - strlen(path) - 2))
			return cella_err_sys(err, errno, "pid file %s", path);
		strcat(abs, "/");
		strcat(abs, path);
		path = abs;
	}
	return cella_write_file_atomic(path, buf, (size_t)n, 0644, err);
}
