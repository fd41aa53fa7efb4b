/* cella: an OCI container runtime with runc's command line. Parses global flags, dispatches to
 * one verb, prints the error (stderr, and --log in its format) and exits 1 on failure. */
#include "cmd/cella/cella.h"

#include "base/log.h"
#include "base/util.h"
#include "runtime/selfexec.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int cella_exit_status = -1;

static const struct {
	const char *name;
	verb_fn fn;
	const char *help;
} verbs[] = {
	{ "create", verb_create, "create a container" },
	{ "start", verb_start, "executes the user defined process in a created container" },
	{ "run", verb_run, "create and run a container" },
	{ "state", verb_state, "output the state of a container" },
	{ "kill", verb_kill, "kill sends the specified signal (default: SIGTERM) to the container's init process" },
	{ "delete", verb_delete, "delete any resources held by the container often used with detached container" },
	{ "list", verb_list, "lists containers started by cella with the given root" },
	{ "features", verb_features, "show the enabled features" },
	{ "spec", verb_spec, "create a new specification file" },
	{ "exec", verb_exec, "execute new process inside the container" },
	{ "ps", verb_ps, "ps displays the processes running inside a container" },
	{ "pause", verb_pause, "pause suspends all processes inside the container" },
	{ "resume", verb_resume, "resumes all processes that have been previously paused" },
	{ "update", verb_update, "update container resource constraints" },
	{ "checkpoint", verb_checkpoint, "checkpoint a running container (CRIU)" },
	{ "restore", verb_restore, "restore a container from a previous checkpoint (CRIU)" },
	{ "events", verb_events, "display container events such as OOM notifications, cpu, memory, and IO usage statistics" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: cella [global options] command [command options] [arguments...]\n\n"
		   "global options:\n"
		   "  --root DIR            state directory (default " CELLA_DEFAULT_ROOT ")\n"
		   "  --log FILE            log file (default stderr)\n"
		   "  --log-format FORMAT   text or json\n"
		   "  --debug               debug logging\n"
		   "  --systemd-cgroup      (not supported)\n"
		   "  --version, -v         print the version\n"
		   "  --help, -h            this help\n\ncommands:\n");
	for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
		fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].help);
}

int opt_uint(const char *name, const char *val, unsigned *out, struct cella_err *err)
{
	uint64_t v;
	if (cella_parse_uint64(val, &v) < 0 || v > 1u << 20)
		return cella_err_set(err, EINVAL, "invalid value \"%s\" for flag --%s", val, name);
	*out = (unsigned)v;
	return 0;
}

bool opt_help_shown;

/* `cella VERB --help`: the verb's options, from the table it parses with. */
static void opt_usage(const char *verb, const struct opt *opts)
{
	printf("usage: cella %s [command options] [arguments...]\n", verb);
	if (!opts || !opts->name) {
		printf("\n(no command options)\n");
		return;
	}
	printf("\ncommand options:\n");
	for (const struct opt *o = opts; o->name; o++) {
		char names[64];
		if (o->short_name)
			snprintf(names, sizeof(names), "--%s, -%c%s", o->name, o->short_name, o->has_arg ? " VALUE" : "");
		else
			snprintf(names, sizeof(names), "--%s%s", o->name, o->has_arg ? " VALUE" : "");
		printf("  %s\n", names);
	}
}

int opt_next(int argc, char **argv, int *i, const struct opt *opts, const char **val, struct cella_err *err)
{
	static bool dashdash;
	*val = NULL; /* callers test it before they look at the id: never leave it unset */
	if (*i == 1)
		dashdash = false;
	if (*i >= argc)
		return -1;
	const char *a = argv[(*i)++];
	if (dashdash || a[0] != '-' || !a[1]) {
		*val = a;
		return 0;
	}
	if (!strcmp(a, "--")) {
		dashdash = true;
		return opt_next(argc, argv, i, opts, val, err);
	}
	const char *name = a + 1 + (a[1] == '-');
	size_t len = strcspn(name, "=");
	const char *inline_val = name[len] == '=' ? name + len + 1 : NULL;
	for (const struct opt *o = opts; o && o->name; o++) {
		bool match = (strlen(o->name) == len && !strncmp(o->name, name, len)) ||
			     (o->short_name && len == 1 && name[0] == o->short_name && a[1] != '-');
		if (!match)
			continue;
		if (!o->has_arg) {
			if (inline_val && strcmp(inline_val, "true") && strcmp(inline_val, "false"))
				return cella_err_set(err, EINVAL, "invalid boolean value \"%s\" for flag %s", inline_val, a),
				       -2;
			*val = inline_val ? inline_val : "true";
			return o->id;
		}
		if (inline_val) {
			*val = inline_val;
			return o->id;
		}
		if (*i >= argc)
			return cella_err_set(err, EINVAL, "flag needs an argument: %.*s", (int)(len + 1 + (a[1] == '-')), a), -2;
		*val = argv[(*i)++];
		return o->id;
	}
	if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
		opt_usage(argv[0], opts);
		opt_help_shown = true;
		return -2;
	}
	cella_err_set(err, EINVAL, "flag provided but not defined: %.*s", (int)(name - a + len), a);
	return -2;
}

int opt_one_id(int argc, char **argv, const char **id, struct cella_err *err)
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

int print_json(json_t *j, bool indent, struct cella_err *err)
{
	char *s = json_dumps(j, indent ? JSON_INDENT(2) | JSON_PRESERVE_ORDER : JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!s)
		return cella_err_set(err, ENOMEM, "print JSON");
	fputs(s, stdout);
	fputc('\n', stdout);
	free(s);
	return 0;
}

enum { G_ROOT = 1, G_LOG, G_LOG_FORMAT, G_DEBUG, G_SYSTEMD, G_VERSION, G_HELP, G_ROOTLESS, G_CRIU };

static const struct opt global_opts_table[] = {
	{ "root", 0, true, G_ROOT },
	{ "log", 0, true, G_LOG },
	{ "log-format", 0, true, G_LOG_FORMAT },
	{ "debug", 0, false, G_DEBUG },
	{ "systemd-cgroup", 0, false, G_SYSTEMD },
	{ "version", 'v', false, G_VERSION },
	{ "help", 'h', false, G_HELP },
	{ "rootless", 0, true, G_ROOTLESS },
	{ "criu", 0, true, G_CRIU },
	{ NULL, 0, false, 0 },
};

static int fail(const struct global_opts *g, struct cella_err *err)
{
	const char *msg = err->msg[0] ? err->msg : strerror(err->code ? err->code : EIO);
	if (g->log_path && *g->log_path)
		log_error("%s", msg);
	fprintf(stderr, "cella: %s\n", msg);
	return 1;
}

int main(int argc, char **argv)
{
	struct global_opts g = { 0 };
	struct cella_err err = { 0 };
	int i = 1;
	const char *val = NULL;
	const char *verb = NULL;
	bool systemd = false;
	/* Global options stop at the verb. */
	while (i < argc && argv[i][0] == '-' && argv[i][1]) {
		int id = opt_next(argc, argv, &i, global_opts_table, &val, &err);
		if (id == -2)
			return fail(&g, &err);
		switch (id) {
		case G_ROOT: g.rt.root = val; break;
		case G_LOG: g.log_path = val; break;
		case G_LOG_FORMAT:
			if (!strcmp(val, "json"))
				g.log_json = true;
			else if (strcmp(val, "text")) {
				cella_err_set(&err, EINVAL, "invalid log-format: %s", val);
				return fail(&g, &err);
			}
			break;
		case G_DEBUG: g.debug = !strcmp(val, "true"); break;
		case G_SYSTEMD: systemd = !strcmp(val, "true"); break;
		case G_VERSION:
			printf("cella version %s\nspec: %s\n", CELLA_VERSION, CELLA_OCI_VERSION);
			return 0;
		case G_HELP: usage(stdout); return 0;
		default: break;
		}
	}
	if (cella_log_open(g.log_path, g.log_json ? CELLA_LOG_JSON : CELLA_LOG_TEXT,
			   g.debug ? CELLA_LOG_DEBUG : CELLA_LOG_WARN, &err) < 0)
		return fail(&g, &err);
	if (i >= argc) {
		usage(stderr);
		return 1;
	}
	verb = argv[i];
	/* Verbs that enter a container run from a read-only view of the binary (CVE-2019-5736). */
	if ((!strcmp(verb, "create") || !strcmp(verb, "run") || !strcmp(verb, "exec")) &&
	    cella_selfexec_protected(argv, &err) < 0)
		return fail(&g, &err);
	if (!strcmp(verb, "help")) {
		usage(stdout);
		return 0;
	}
	if (systemd) {
		cella_err_set(&err, ENOTSUP, "systemd cgroup driver is not supported by cella");
		return fail(&g, &err);
	}
	for (size_t k = 0; k < ARRAY_SIZE(verbs); k++) {
		if (strcmp(verbs[k].name, verb))
			continue;
		/* The verb sees argv[0] = its name. */
		int r = verbs[k].fn(&g, argc - i, argv + i, &err);
		fflush(stdout);
		if (r < 0 && opt_help_shown)
			return 0;
		if (r < 0) {
			fail(&g, &err);
			return cella_exit_status > 0 ? cella_exit_status : 1;
		}
		return cella_exit_status >= 0 ? cella_exit_status : 0;
	}
	cella_err_set(&err, EINVAL, "No help topic for '%s'", verb);
	return fail(&g, &err);
}
