/* cella delete ID [--force] */
#include "cmd/cella/cella.h"

#include <errno.h>
#include <string.h>

enum { O_FORCE = 1 };
static const struct opt delete_opts[] = { { "force", 'f', false, O_FORCE }, { NULL, 0, false, 0 } };

int verb_delete(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *val, *id = NULL;
	bool force = false;
	int i = 1, k;
	while ((k = opt_next(argc, argv, &i, delete_opts, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		if (k == O_FORCE)
			force = !strcmp(val, "true");
		else if (!id)
			id = val;
		else
			return cella_err_set(err, EINVAL, "delete: unexpected argument \"%s\"", val);
	}
	if (!id)
		return cella_err_set(err, EINVAL, "delete: container id cannot be empty");
	return container_delete(&g->rt, id, force, err);
}
