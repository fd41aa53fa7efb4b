/* ps, pause, resume, update and stats: a container's state plus its cgroup instance. */
#include "runtime/container_ctl.h"

#include "base/err.h"
#include "base/util.h"
#include "runtime/cgroup.h"
#include "runtime/config.h"
#include "runtime/container.h"
#include "runtime/state.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A loaded container with its cgroups. */
struct ctl {
	struct container_state *st;
	struct cgroup_manager *mgr;
	struct cgroup_instance *cg;
	enum container_status status;
	bool paused;
};

static void ctl_free(struct ctl *c)
{
	if (c->cg)
		cgroup_instance_free(c->cg);
	if (c->mgr)
		cgroup_manager_free(c->mgr);
	state_free(c->st);
	memset(c, 0, sizeof(*c));
}

static int ctl_open(const struct cella_runtime *rt, const char *id, struct ctl *c, struct cella_err *err)
{
	memset(c, 0, sizeof(*c));
	int r = state_load(rt, id, &c->st, err);
	if (r < 0)
		return r;
	c->status = state_status(c->st);
	c->paused = (c->status == STATUS_RUNNING || c->status == STATUS_CREATED) && state_paused(c->st);
	if ((r = cgroup_manager_open(NULL, &c->mgr, err)) < 0)
		return r;
	if (c->st->cgroup)
		return cgroup_instance_from_json(c->mgr, c->st->cgroup, &c->cg, err);
	return cgroup_instance_lookup(c->mgr, c->st->cgroups_path, c->st->id, &c->cg, err);
}

static bool live(const struct ctl *c)
{
	return c->status == STATUS_RUNNING || c->status == STATUS_CREATED;
}

int container_pids(const struct cella_runtime *rt, const char *id, pid_t **pids, size_t *n, struct cella_err *err)
{
	struct ctl c;
	*pids = NULL;
	*n = 0;
	int r = ctl_open(rt, id, &c, err);
	if (r == 0 && !live(&c))
		r = cella_err_set(err, ESRCH, "container not running");
	if (r == 0)
		r = cgroup_get_pids(c.cg, pids, n, err);
	ctl_free(&c);
	return r;
}

int container_pause(const struct cella_runtime *rt, const char *id, struct cella_err *err)
{
	struct ctl c;
	int r = ctl_open(rt, id, &c, err);
	if (r == 0 && (!live(&c) || c.paused))
		r = cella_err_set(err, EINVAL, "container not running"); /* runc: also when already paused */
	if (r == 0)
		r = cgroup_freeze(c.cg, true, err);
	ctl_free(&c);
	return r;
}

int container_resume(const struct cella_runtime *rt, const char *id, struct cella_err *err)
{
	struct ctl c;
	int r = ctl_open(rt, id, &c, err);
	if (r == 0 && !c.paused)
		r = cella_err_set(err, EINVAL, "container not paused");
	if (r == 0)
		r = cgroup_freeze(c.cg, false, err);
	ctl_free(&c);
	return r;
}

int container_update(const struct cella_runtime *rt, const char *id, const struct oci_resources *res,
		     struct cella_err *err)
{
	struct ctl c;
	int r = ctl_open(rt, id, &c, err);
	if (r == 0 && !live(&c))
		r = cella_err_set(err, EINVAL, "container not running");
	if (r == 0)
		r = cgroup_update(c.cg, res, err);
	ctl_free(&c);
	return r;
}

int container_stats(const struct cella_runtime *rt, const char *id, json_t **out, struct cella_err *err)
{
	struct ctl c;
	json_t *data = NULL;
	int r = ctl_open(rt, id, &c, err);
	if (r == 0 && !live(&c))
		r = cella_err_set(err, EINVAL, "container not running");
	if (r == 0)
		r = cgroup_stats(c.cg, &data, err);
	if (r == 0) {
		*out = json_pack("{s:s, s:s, s:o}", "type", "stats", "id", id, "data", data);
		if (!*out)
			r = cella_err_set(err, ENOMEM, "stats");
	}
	ctl_free(&c);
	return r;
}

int container_oom_kills(const struct cella_runtime *rt, const char *id, unsigned long long *n, struct cella_err *err)
{
	struct ctl c;
	*n = 0;
	int r = ctl_open(rt, id, &c, err);
	if (r == 0 && !live(&c))
		r = cella_err_set(err, EINVAL, "container not running");
	const char *dir = r == 0 ? cgroup_instance_path(c.cg, "memory") : NULL;
	if (dir) {
		static const char *const files[] = { "memory.events", "memory.oom_control" };
		for (size_t i = 0; i < 2; i++) {
			_cleanup_free_ char *path = cella_path_join(dir, files[i]);
			_cleanup_free_ char *text = NULL;
			if (!path || cella_read_file(path, 65536, &text, NULL, NULL) < 0)
				continue;
			const char *p = strstr(text, "oom_kill ");
			if (p)
				*n = strtoull(p + 9, NULL, 10);
			break;
		}
	}
	ctl_free(&c);
	return r;
}
