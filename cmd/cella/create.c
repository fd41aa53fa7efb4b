/* cella create ID [--bundle DIR] [--console-socket S] [--pid-file F] [--no-pivot] [--preserve-fds N] */
#include "cmd/cella/cella.h"

#include <errno.h>
#include <string.h>

enum { O_BUNDLE = 1, O_CONSOLE, O_PIDFILE, O_NOPIVOT, O_KEYRING, O_PRESERVE, O_DETACH, O_KEEP, O_NOSUBREAPER };

/* create's options; run takes them all, and --detach, --keep, --no-subreaper */
#define CREATE_OPTS \
	{ "bundle", 'b', true, O_BUNDLE }, \
	{ "console-socket", 0, true, O_CONSOLE }, \
	{ "pid-file", 0, true, O_PIDFILE }, \
	{ "no-pivot", 0, false, O_NOPIVOT }, \
	{ "no-new-keyring", 0, false, O_KEYRING }, \
	{ "preserve-fds", 0, true, O_PRESERVE }

static const struct opt create_opts[] = {
	CREATE_OPTS,
	{ NULL, 0, false, 0 },
};

static const struct opt run_opts[] = {
	CREATE_OPTS,
	{ "detach", 'd', false, O_DETACH },
	{ "keep", 0, false, O_KEEP },
	{ "no-subreaper", 0, false, O_NOSUBREAPER },
	{ NULL, 0, false, 0 },
};

static int parse(int argc, char **argv, bool run, struct container_create_opts *o, bool *detach, bool *keep,
		 struct cella_err *err)
{
	const char *val;
	int i = 1, id;
	while ((id = opt_next(argc, argv, &i, run ? run_opts : create_opts, &val, err)) != -1) {
		bool on = val && !strcmp(val, "true");
		switch (id) {
		case -2: return -EINVAL;
		case 0:
			if (o->id)
				return cella_err_set(err, EINVAL, "%s: unexpected argument \"%s\"", argv[0], val);
			o->id = val;
			break;
		case O_BUNDLE: o->bundle = val; break;
		case O_CONSOLE: o->console_socket = val; break;
		case O_PIDFILE: o->pid_file = val; break;
		case O_NOPIVOT: o->no_pivot = on; break;
		case O_KEYRING: o->no_new_keyring = on; break;
		case O_PRESERVE:
			if (opt_uint("preserve-fds", val, &o->preserve_fds, err) < 0)
				return -EINVAL;
			break;
		case O_DETACH: *detach = on; break;
		case O_KEEP: *keep = on; break;
		default: break;
		}
	}
	if (!o->id)
		return cella_err_set(err, EINVAL, "%s: container id cannot be empty", argv[0]);
	return 0;
}

int verb_create(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	struct container_create_opts o = { 0 };
	bool detach = false, keep = false;
	int r = parse(argc, argv, false, &o, &detach, &keep, err);
	if (r < 0)
		return r;
	return container_create(&g->rt, &o, err);
}

int verb_run(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	struct container_create_opts o = { 0 };
	bool detach = false, keep = false;
	int r = parse(argc, argv, true, &o, &detach, &keep, err);
	if (r < 0)
		return r;
	int status = 0;
	r = container_run(&g->rt, &o, detach, keep, &status, err);
	if (r < 0)
		return r;
	cella_exit_status = status;
	return 0;
}
