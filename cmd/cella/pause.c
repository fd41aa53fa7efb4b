/* cella pause ID / cella resume ID: freeze and thaw every process of the container. */
#include "cmd/cella/cella.h"

#include "runtime/container_ctl.h"

#include <errno.h>

static int one_id(int argc, char **argv, const char **id, struct cella_err *err)
{
	const char *val;
	int i = 1, k;
	*id = NULL;
	while ((k = opt_next(argc, argv, &i, NULL, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		if (*id)
			return cella_err_set(err, EINVAL, "%s: unexpected argument \"%s\"", argv[0], val);
		*id = val;
	}
	if (!*id)
		return cella_err_set(err, EINVAL, "%s: container id cannot be empty", argv[0]);
	return 0;
}

int verb_pause(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = one_id(argc, argv, &id, err);
	return r < 0 ? r : container_pause(&g->rt, id, err);
}

int verb_resume(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = one_id(argc, argv, &id, err);
	return r < 0 ? r : container_resume(&g->rt, id, err);
}
