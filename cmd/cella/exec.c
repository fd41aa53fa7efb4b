/* cella exec [options] ID [--] COMMAND [ARGS...]  (or --process FILE instead of COMMAND)
 * runc's flags; options may also follow ID, up to "--" or the first non-option word. The exit
 * status is the process's. */
#include "cmd/cella/cella.h"

#include "base/util.h"
#include "runtime/container_ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum {
	O_PROCESS = 1, O_TTY, O_DETACH, O_PIDFILE, O_CONSOLE, O_CWD, O_ENV, O_USER, O_GIDS, O_CAP, O_NNP,
	O_PRESERVE, O_IGNORED_ARG, O_IGNORED_FLAG,
};

static const struct opt exec_opts[] = {
	{ "process", 'p', true, O_PROCESS },
	{ "tty", 't', false, O_TTY },
	{ "detach", 'd', false, O_DETACH },
	{ "pid-file", 0, true, O_PIDFILE },
	{ "console-socket", 0, true, O_CONSOLE },
	{ "cwd", 0, true, O_CWD },
	{ "env", 'e', true, O_ENV },
	{ "user", 'u', true, O_USER },
	{ "additional-gids", 'g', true, O_GIDS },
	{ "cap", 'c', true, O_CAP },
	{ "no-new-privs", 0, false, O_NNP },
	{ "preserve-fds", 0, true, O_PRESERVE },
	/* Accepted for runc compatibility; this runtime has no AppArmor/SELinux/subcgroup support. */
	{ "apparmor", 0, true, O_IGNORED_ARG },
	{ "process-label", 0, true, O_IGNORED_ARG },
	{ "cgroup", 0, true, O_IGNORED_ARG },
	{ "ignore-paused", 0, false, O_IGNORED_FLAG },
	{ NULL, 0, false, 0 },
};

static int parse_id(const char *s, const char *what, unsigned *out, struct cella_err *err)
{
	uint64_t v;
	if (cella_parse_uint64(s, &v) < 0 || v > 0xfffffffeu)
		return cella_err_set(err, EINVAL, "parsing %s: invalid syntax \"%s\"", what, s);
	*out = (unsigned)v;
	return 0;
}

static int parse_user(const char *s, struct container_exec_opts *o, struct cella_err *err)
{
	_cleanup_free_ char *copy = strdup(s);
	if (!copy)
		return cella_err_set(err, ENOMEM, "--user");
	char *colon = strchr(copy, ':');
	if (colon)
		*colon = '\0';
	unsigned v = 0;
	if (!*copy || parse_id(copy, "UID", &v, NULL) < 0)
		return cella_err_set(err, EINVAL, "invalid --user %s: UID format is <uid>[:<gid>] (numeric)", s);
	o->uid = v;
	o->has_user = true;
	if (colon) {
		if (parse_id(colon + 1, "GID", &v, NULL) < 0)
			return cella_err_set(err, EINVAL, "invalid --user %s: UID format is <uid>[:<gid>] (numeric)", s);
		o->gid = v;
		o->has_gid = true;
	}
	return 0;
}

/* Appends s to a malloc'd vector. */
static int push(char ***v, size_t *n, const char *s, struct cella_err *err)
{
	char **g = realloc(*v, (*n + 2) * sizeof(char *));
	if (!g)
		return cella_err_set(err, ENOMEM, "exec options");
	*v = g;
	g[(*n)++] = (char *)s;
	g[*n] = NULL;
	return 0;
}

int verb_exec(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	struct container_exec_opts o = { 0 };
	_cleanup_free_ char **env = NULL, **caps = NULL;
	_cleanup_free_ gid_t *gids = NULL;
	size_t n_gids = 0;
	const char *val;
	int i = 1, k, r;
	while ((k = opt_next(argc, argv, &i, exec_opts, &val, err)) != -1) {
		bool on = val && !strcmp(val, "true");
		switch (k) {
		case -2: return -EINVAL;
		case 0:
			if (!o.id) {
				o.id = val;
				break;
			}
			/* The command starts here; everything after it is its own. */
			o.args = argv + i - 1;
			i = argc;
			break;
		case O_PROCESS: o.process_file = val; break;
		case O_TTY: o.tty = on; break;
		case O_DETACH: o.detach = on; break;
		case O_PIDFILE: o.pid_file = val; break;
		case O_CONSOLE: o.console_socket = val; break;
		case O_CWD: o.cwd = val; break;
		case O_ENV:
			if (!strchr(val, '=') || val[0] == '=')
				return cella_err_set(err, EINVAL, "invalid --env \"%s\": expected KEY=VALUE", val);
			if ((r = push(&env, &o.n_env, val, err)) < 0)
				return r;
			break;
		case O_CAP:
			if ((r = push(&caps, &o.n_caps, val, err)) < 0)
				return r;
			break;
		case O_USER:
			if ((r = parse_user(val, &o, err)) < 0)
				return r;
			break;
		case O_GIDS: {
			unsigned v = 0;
			if (parse_id(val, "additional-gids", &v, err) < 0)
				return -EINVAL;
			gid_t *ng = realloc(gids, (n_gids + 1) * sizeof(*gids));
			if (!ng)
				return cella_err_set(err, ENOMEM, "exec options");
			gids = ng;
			gids[n_gids++] = v;
			break;
		}
		case O_NNP: o.no_new_privs = on; break;
		case O_PRESERVE:
			if (opt_uint("preserve-fds", val, &o.preserve_fds, err) < 0)
				return -EINVAL;
			break;
		default: break;
		}
	}
	if (!o.id)
		return cella_err_set(err, EINVAL, "exec: container id cannot be empty");
	if (!o.process_file && (!o.args || !o.args[0]))
		return cella_err_set(err, EINVAL, "exec: process args cannot be empty");
	o.env = env;
	o.caps = caps;
	o.additional_gids = gids;
	o.n_additional_gids = n_gids;
	int status = 0;
	r = container_exec(&g->rt, &o, &status, err);
	if (r < 0) {
		/* runc: "exec failed: ..." with status 255. */
		cella_err_wrap(err, "exec failed");
		cella_exit_status = 255;
		return r;
	}
	cella_exit_status = status;
	return 0;
}
