/* cella start ID */
#include "cmd/cella/cella.h"

#include <errno.h>

/* Verbs that take exactly one container id and no options. */
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

int verb_start(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = one_id(argc, argv, &id, err);
	return r < 0 ? r : container_start(&g->rt, id, err);
}

int verb_state(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = one_id(argc, argv, &id, err);
	if (r < 0)
		return r;
	json_t *j = NULL;
	r = container_state(&g->rt, id, &j, err);
	if (r < 0)
		return r;
	r = print_json(j, true, err);
	json_decref(j);
	return r;
}
