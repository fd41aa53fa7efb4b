/* state, kill, delete, list: operations on an existing container's state directory. */
#include "runtime/container.h"

#include "base/err.h"
#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/hooks.h"
#include "runtime/state.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int container_state(const struct cella_runtime *rt, const char *id, json_t **out, struct cella_err *err)
{
	struct container_state *st = NULL;
	int r = state_load(rt, id, &st, err);
	if (r < 0)
		return r;
	*out = state_to_oci(st, state_status(st));
	state_free(st);
	return *out ? 0 : cella_err_set(err, ENOMEM, "state");
}

/* The container's cgroups: the saved instance, or the paths create would have used. */
static int load_cgroup(struct container_state *st, struct cgroup_manager **mgr, struct cgroup_instance **cg,
		       struct cella_err *err)
{
	*mgr = NULL;
	*cg = NULL;
	int r = cgroup_manager_open(NULL, mgr, err);
	if (r < 0)
		return r;
	if (st->cgroup)
		r = cgroup_instance_from_json(*mgr, st->cgroup, cg, err);
	else
		r = cgroup_instance_lookup(*mgr, st->cgroups_path, st->id, cg, err);
	if (r < 0) {
		cgroup_manager_free(*mgr);
		*mgr = NULL;
	}
	return r;
}

int container_kill(const struct cella_runtime *rt, const char *id, int sig, bool all, struct cella_err *err)
{
	struct container_state *st = NULL;
	int r = state_load(rt, id, &st, err);
	if (r < 0)
		return r;
	enum container_status s = state_status(st);
	if (s != STATUS_CREATED && s != STATUS_RUNNING) {
		state_free(st);
		return cella_err_set(err, ESRCH, "container not running");
	}
	if (all) {
		struct cgroup_manager *mgr;
		struct cgroup_instance *cg;
		r = load_cgroup(st, &mgr, &cg, err);
		if (r == 0) {
			r = cgroup_kill_all(cg, sig, err);
			cgroup_instance_free(cg);
			cgroup_manager_free(mgr);
		}
	} else if (kill(st->pid, sig) < 0) {
		r = cella_err_sys(err, errno, "kill container %s (pid %d) with signal %d", id, (int)st->pid, sig);
	}
	state_free(st);
	return r;
}

/* Waits up to ~2 s for pid to be gone or a zombie. */
static void wait_gone(pid_t pid, unsigned long long start)
{
	for (int i = 0; i < 200 && proc_alive(pid, start); i++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

int container_delete(const struct cella_runtime *rt, const char *id, bool force, struct cella_err *err)
{
	struct container_state *st = NULL;
	int r = state_load(rt, id, &st, err);
	if (r == -ENOENT && force) {
		cella_err_clear(err);
		return 0;
	}
	if (r < 0)
		return r;
	enum container_status s = state_status(st);
	bool paused = (s == STATUS_RUNNING || s == STATUS_CREATED) && state_paused(st);
	if ((s == STATUS_RUNNING || s == STATUS_CREATING || paused) && !force) {
		r = cella_err_set(err, EBUSY, "cannot delete container %s that is not stopped: %s", id,
				  paused ? "paused" : state_status_name(s));
		state_free(st);
		return r;
	}
	if (paused) {
		/* Frozen processes die of SIGKILL only once thawed: kill them all, then thaw (runc). */
		struct cgroup_manager *pm = NULL;
		struct cgroup_instance *pc = NULL;
		struct cella_err e = { 0 };
		if (load_cgroup(st, &pm, &pc, &e) == 0) {
			cgroup_kill_all(pc, SIGKILL, &e);
			cgroup_freeze(pc, false, &e);
			cgroup_instance_free(pc);
			cgroup_manager_free(pm);
		}
	}
	/* A create still in progress is stopped first, so it cannot recreate what we remove. */
	if (st->creator > 0 && proc_alive(st->creator, st->creator_start)) {
		kill(st->creator, SIGKILL);
		wait_gone(st->creator, st->creator_start);
	}
	if (st->pid > 0 && (st->pid_start == 0 || proc_alive(st->pid, st->pid_start))) {
		/* pid_start 0: killed before it was recorded; the pid may still be our init. */
		unsigned long long now = 0;
		if (st->pid_start || (proc_stat(st->pid, &now, NULL) == 0 && !st->ready)) {
			kill(st->pid, SIGKILL);
			wait_gone(st->pid, st->pid_start ? st->pid_start : now);
		}
	}
	struct cgroup_manager *mgr = NULL;
	struct cgroup_instance *cg = NULL;
	r = load_cgroup(st, &mgr, &cg, err);
	if (r == 0) {
		/* Kills whatever is left in the cgroups (kill --all semantics), then removes them. */
		r = cgroup_destroy(cg, err);
		cgroup_instance_free(cg);
		cgroup_manager_free(mgr);
	}
	if (r < 0) {
		state_free(st);
		return cella_err_wrap(err, "delete %s", id);
	}
	hooks_run_saved(st, HOOK_POSTSTOP, "stopped");
	r = cella_rm_rf(st->dir, err);
	state_free(st);
	return r;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int container_list(const struct cella_runtime *rt, json_t **out, struct cella_err *err)
{
	json_t *arr = json_array();
	if (!arr)
		return cella_err_set(err, ENOMEM, "list");
	DIR *d = opendir(state_root(rt));
	if (!d) {
		if (errno == ENOENT) {
			*out = arr;
			return 0;
		}
		json_decref(arr);
		return cella_err_sys(err, errno, "open %s", state_root(rt));
	}
	char **ids = NULL;
	size_t n = 0;
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] == '.' || container_validate_id(e->d_name, NULL) < 0)
			continue;
		char **grown = realloc(ids, (n + 1) * sizeof(*ids));
		if (!grown)
			break;
		ids = grown;
		ids[n++] = strdup(e->d_name);
	}
	closedir(d);
	if (n)
		qsort(ids, n, sizeof(*ids), cmp_str);
	for (size_t i = 0; i < n; i++) {
		struct container_state *st = NULL;
		if (ids[i] && state_load(rt, ids[i], &st, NULL) == 0) {
			json_t *j = state_to_oci(st, state_status(st));
			if (j) {
				_cleanup_free_ char *name = cella_passwd_field("/etc/passwd", st->owner, 0);
				char uid[16];
				snprintf(uid, sizeof(uid), "#%u", (unsigned)st->owner);
				json_object_set_new(j, "owner", json_string(name ? name : uid));
				json_array_append_new(arr, j);
			}
			state_free(st);
		}
		free(ids[i]);
	}
	free(ids);
	*out = arr;
	return 0;
}
