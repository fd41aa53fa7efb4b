/* cella CLI: shared option parsing and the verb table. Each verb lives in its own file. */
#pragma once
#include <stdbool.h>

#include "base/err.h"
#include "runtime/container.h"

#define CELLA_VERSION "0.1.0"

struct global_opts {
	struct cella_runtime rt;
	const char *log_path;
	bool log_json;
	bool debug;
};

/* One option of a verb. has_arg: takes a value ("--bundle DIR" or "--bundle=DIR"). */
struct opt {
	const char *name;  /* long name without dashes; runc's single-dash form "-name" is accepted too */
	char short_name;   /* 0 = none */
	bool has_arg;
	int id;
};

/* Parses argv[*i..]: returns an option id, 0 for a positional argument (in *val), -1 at the end,
 * or -2 on error (err filled) or after printing the verb's --help. Options and positionals may interleave; "--" ends options. */
int opt_next(int argc, char **argv, int *i, const struct opt *opts, const char **val, struct cella_err *err);
/* Set when opt_next met --help/-h (not an option of the verb): it printed the verb's options and
 * returned -2; main then exits 0. */
extern bool opt_help_shown;

/* The front end of verbs that take exactly one container id and no options: *id = argv's one
 * positional argument. */
int opt_one_id(int argc, char **argv, const char **id, struct cella_err *err);

/* Parses an unsigned count. */
int opt_uint(const char *name, const char *val, unsigned *out, struct cella_err *err);

typedef int (*verb_fn)(const struct global_opts *g, int argc, char **argv, struct cella_err *err);

int verb_create(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_start(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_run(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_state(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_kill(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_delete(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_list(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_features(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_spec(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
/* exec.c, ps.c, pause.c (pause, resume), update.c, events.c */
int verb_exec(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_ps(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_pause(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_resume(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_update(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_events(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
/* checkpoint.c (checkpoint, restore) */
int verb_checkpoint(const struct global_opts *g, int argc, char **argv, struct cella_err *err);
int verb_restore(const struct global_opts *g, int argc, char **argv, struct cella_err *err);

/* Prints a JSON value to stdout (indented), with a trailing newline. */
int print_json(json_t *j, bool indent, struct cella_err *err);

/* Exit status a verb wants beyond 0/1 (run passes the container's status through). */
extern int cella_exit_status;
