/* cella pause ID / cella resume ID: freeze and thaw every process of the container. */
#include "cmd/cella/cella.h"

#include "runtime/container_ctl.h"

int verb_pause(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = opt_one_id(argc, argv, &id, err);
	return r < 0 ? r : container_pause(&g->rt, id, err);
}

int verb_resume(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *id;
	int r = opt_one_id(argc, argv, &id, err);
	return r < 0 ? r : container_resume(&g->rt, id, err);
}
