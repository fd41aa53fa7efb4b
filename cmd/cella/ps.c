/* cella ps [--format table|json] ID [PS_ARGS...]: the container's processes. json = an array of
 * host pids (as runc); table = `ps` (default -ef) filtered to those pids by its PID column. */
#include "cmd/cella/cella.h"

#include "base/util.h"
#include "runtime/container_ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { O_FORMAT = 1 };
static const struct opt ps_opts[] = { { "format", 'f', true, O_FORMAT }, { NULL, 0, false, 0 } };

static bool has_pid(const pid_t *pids, size_t n, long pid)
{
	for (size_t i = 0; i < n; i++)
		if (pids[i] == pid)
			return true;
	return false;
}

/* Runs ps with args and prints its header plus the lines of our pids. */
static int ps_table(char **ps_args, const pid_t *pids, size_t n, struct cella_err *err)
{
	int fd[2];
	if (pipe2(fd, O_CLOEXEC) < 0)
		return cella_err_sys(err, errno, "pipe");
	fflush(NULL);
	pid_t child = fork();
	if (child < 0)
		return cella_err_sys(err, errno, "fork ps");
	if (child == 0) {
		dup2(fd[1], STDOUT_FILENO);
		execvp("ps", ps_args);
		dprintf(STDERR_FILENO, "cella: exec ps: %s\n", strerror(errno));
		_exit(127);
	}
	close(fd[1]);
	_cleanup_fclose_ FILE *f = fdopen(fd[0], "r");
	if (!f) {
		close(fd[0]);
		return cella_err_sys(err, errno, "fdopen");
	}
	char *line = NULL;
	size_t cap = 0;
	int pid_col = -1, lineno = 0;
	while (getline(&line, &cap, f) > 0) {
		if (lineno++ == 0) {
			/* The PID column of the header. */
			char *copy = strdup(line), *save = NULL;
			int col = 0;
			for (char *t = copy ? strtok_r(copy, " \t\n", &save) : NULL; t; t = strtok_r(NULL, " \t\n", &save), col++)
				if (!strcmp(t, "PID")) {
					pid_col = col;
					break;
				}
			free(copy);
			fputs(line, stdout);
			continue;
		}
		if (pid_col < 0)
			continue;
		char *copy = strdup(line), *save = NULL, *t = copy ? strtok_r(copy, " \t\n", &save) : NULL;
		for (int col = 0; t && col < pid_col; col++)
			t = strtok_r(NULL, " \t\n", &save);
		if (t && has_pid(pids, n, strtol(t, NULL, 10)))
			fputs(line, stdout);
		free(copy);
	}
	free(line);
	int status = 0;
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	if (pid_col < 0)
		return cella_err_set(err, EINVAL, "couldn't find PID field in ps output");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return cella_err_set(err, EIO, "ps exited with status %d", WIFEXITED(status) ? WEXITSTATUS(status) : 255);
	return 0;
}

int verb_ps(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *val, *id = NULL, *format = "table";
	char **extra = NULL;
	int i = 1, k;
	while (!id && (k = opt_next(argc, argv, &i, ps_opts, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		if (k == O_FORMAT)
			format = val;
		else
			id = val;
	}
	/* After the id: --format may still come (cella extension); the rest are ps options. */
	while (id && i < argc) {
		const char *a = argv[i];
		if (!strcmp(a, "--format") || !strcmp(a, "-f") || !strcmp(a, "-format")) {
			if (i + 1 >= argc)
				return cella_err_set(err, EINVAL, "flag needs an argument: %s", a);
			format = argv[i + 1];
			i += 2;
		} else if (!strncmp(a, "--format=", 9)) {
			format = a + 9;
			i++;
		} else {
			if (!strcmp(a, "--"))
				i++;
			if (i < argc)
				extra = argv + i;
			break;
		}
	}
	if (!id)
		return cella_err_set(err, EINVAL, "ps: container id cannot be empty");
	bool json = !strcmp(format, "json");
	if (!json && strcmp(format, "table"))
		return cella_err_set(err, EINVAL, "invalid format option");
	pid_t *pids = NULL;
	size_t n = 0;
	int r = container_pids(&g->rt, id, &pids, &n, err);
	if (r < 0)
		return r;
	if (json) {
		json_t *a = json_array();
		for (size_t p = 0; p < n; p++)
			json_array_append_new(a, json_integer(pids[p]));
		r = print_json(a, false, err);
		json_decref(a);
	} else {
		size_t n_extra = extra ? cella_strv_len(extra) : 0;
		char **ps_args = calloc(n_extra + 2 + (n_extra ? 0 : 1), sizeof(char *));
		if (!ps_args) {
			free(pids);
			return cella_err_set(err, ENOMEM, "ps");
		}
		ps_args[0] = (char *)"ps";
		if (n_extra)
			memcpy(ps_args + 1, extra, n_extra * sizeof(char *));
		else
			ps_args[1] = (char *)"-ef";
		r = ps_table(ps_args, pids, n, err);
		free(ps_args);
	}
	free(pids);
	return r;
}
