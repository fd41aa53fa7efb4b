/* cella kill ID [SIGNAL] [--all]: SIGNAL by name ("KILL", "SIGKILL") or number; default SIGTERM. */
#include "cmd/cella/cella.h"

#include "runtime/names.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

enum { O_ALL = 1 };
static const struct opt kill_opts[] = { { "all", 'a', false, O_ALL }, { NULL, 0, false, 0 } };

int verb_kill(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *val, *id = NULL, *sig_name = NULL;
	bool all = false;
	int i = 1, k;
	while ((k = opt_next(argc, argv, &i, kill_opts, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		if (k == O_ALL)
			all = !strcmp(val, "true");
		else if (!id)
			id = val;
		else if (!sig_name)
			sig_name = val;
		else
			return cella_err_set(err, EINVAL, "kill: unexpected argument \"%s\"", val);
	}
	if (!id)
		return cella_err_set(err, EINVAL, "kill: container id cannot be empty");
	int sig = SIGTERM;
	if (sig_name) {
		sig = cella_signal_from_name(sig_name);
		if (sig <= 0)
			return cella_err_set(err, EINVAL, "unknown signal \"%s\"", sig_name);
	}
	return container_kill(&g->rt, id, sig, all, err);
}
