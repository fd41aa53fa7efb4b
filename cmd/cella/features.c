/* cella features: the runtime-spec features document. */
#include "cmd/cella/cella.h"

#include <errno.h>

int verb_features(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	if (argc > 1)
		return cella_err_set(err, EINVAL, "features: unexpected argument \"%s\"", argv[1]);
	json_t *j = container_features();
	if (!j)
		return cella_err_set(err, ENOMEM, "features");
	int r = print_json(j, true, err);
	json_decref(j);
	return r;
}
