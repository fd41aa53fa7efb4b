/* cella start ID */
#include "cmd/cella/cella.h"

int verb_start(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = opt_one_id(argc, argv, &id, err);
	return r < 0 ? r : container_start(&g->rt, id, err);
}

int verb_state(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = opt_one_id(argc, argv, &id, err);
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
