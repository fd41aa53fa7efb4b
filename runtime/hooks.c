/* OCI lifecycle hooks: fork + execve with the state on stdin (a memfd, so a hook that does not read
 * cannot block us), output captured in a memfd for the error message, timeout enforced by killing
 * the hook's process group. */
#include "runtime/hooks.h"

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "runtime/state.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HOOKS_FILE "hooks.json"
#define HOOK_OUTPUT_MAX 1024

static const char *const phase_names[HOOK_PHASES] = {
	"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop",
};

const char *hook_phase_name(enum hook_phase ph)
{
	return ph < HOOK_PHASES ? phase_names[ph] : "?";
}

static const struct oci_hook *phase_hooks(const struct oci_hooks *hs, enum hook_phase ph, size_t *n)
{
	switch (ph) {
	case HOOK_PRESTART: *n = hs->n_prestart; return hs->prestart;
	case HOOK_CREATE_RUNTIME: *n = hs->n_create_runtime; return hs->create_runtime;
	case HOOK_CREATE_CONTAINER: *n = hs->n_create_container; return hs->create_container;
	case HOOK_START_CONTAINER: *n = hs->n_start_container; return hs->start_container;
	case HOOK_POSTSTART: *n = hs->n_poststart; return hs->poststart;
	case HOOK_POSTSTOP: *n = hs->n_poststop; return hs->poststop;
	default: *n = 0; return NULL;
	}
}

size_t hooks_count(const struct oci_hooks *hs, enum hook_phase ph)
{
	size_t n;
	phase_hooks(hs, ph, &n);
	return n;
}

static int memfd_with(const char *name, const char *data)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (data && cella_write_all(fd, data, strlen(data)) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	lseek(fd, 0, SEEK_SET);
	return fd;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The hook's output (trimmed, bounded) for messages. */
static void read_output(int fd, char *buf, size_t size)
{
	buf[0] = 0;
	off_t end = lseek(fd, 0, SEEK_END);
	off_t from = end > (off_t)size - 1 ? end - (off_t)size + 1 : 0;
	ssize_t n = pread(fd, buf, size - 1, from);
	buf[n > 0 ? n : 0] = 0;
	size_t len = strlen(buf);
	while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
		buf[--len] = 0;
}

static int run_one(const struct oci_hook *h, const char *what, const char *state, struct cella_err *err)
{
	_cleanup_close_ int in = memfd_with("cella-hook-state", state);
	_cleanup_close_ int out = memfd_with("cella-hook-output", NULL);
	if (in < 0 || out < 0)
		return cella_err_sys(err, in < 0 ? -in : -out, "%s: memfd", what);
	char *const default_args[] = { h->path, NULL };
	char *const empty_env[] = { NULL };
	char *const *args = h->args && h->args[0] ? h->args : default_args;
	char *const *env = h->env ? h->env : empty_env;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return cella_err_sys(err, errno, "%s: fork", what);
	if (pid == 0) {
		setpgid(0, 0);
		sigset_t none;
		sigemptyset(&none);
		for (int s = 1; s < NSIG; s++)
			signal(s, SIG_DFL);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
			_exit(126);
		execve(h->path, args, env);
		dprintf(2, "exec %s: %s", h->path, strerror(errno));
		_exit(127);
	}
	setpgid(pid, pid); /* no race with the child's own setpgid: either order works */
	double deadline = h->timeout.set ? now_s() + (double)h->timeout.v : 0;
	long sleep_ns = 100 * 1000;
	int status = 0;
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		if (w < 0 && errno != EINTR) {
			return cella_err_sys(err, errno, "%s: wait for %s", what, h->path);
		}
		if (deadline && now_s() >= deadline) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
				;
			return cella_err_set(err, ETIMEDOUT, "%s: %s: timed out after %lld seconds", what, h->path,
					     (long long)h->timeout.v);
		}
		struct timespec ts = { 0, sleep_ns };
		nanosleep(&ts, NULL);
		if (sleep_ns < 10 * 1000 * 1000)
			sleep_ns *= 2;
	}
	char output[HOOK_OUTPUT_MAX];
	read_output(out, output, sizeof(output));
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		if (output[0])
			log_debug("%s: %s: %s", what, h->path, output);
		return 0;
	}
	if (WIFSIGNALED(status))
		return cella_err_set(err, ECANCELED, "%s: %s: killed by signal %d%s%s", what, h->path,
				     WTERMSIG(status), output[0] ? ": " : "", output);
	return cella_err_set(err, ECANCELED, "%s: %s: exited with status %d%s%s", what, h->path,
			     WEXITSTATUS(status), output[0] ? ": " : "", output);
}

int hooks_run(const struct oci_hooks *hs, enum hook_phase ph, const char *state, struct cella_err *err)
{
	size_t n;
	const struct oci_hook *h = phase_hooks(hs, ph, &n);
	for (size_t i = 0; i < n; i++) {
		char what[64];
		snprintf(what, sizeof(what), "hooks.%s[%zu]", hook_phase_name(ph), i);
		int r = run_one(&h[i], what, state ? state : "{}", err);
		if (r < 0)
			return r;
	}
	return 0;
}

char *hooks_state_json(const struct container_state *st, const char *status)
{
	json_t *j = state_to_oci(st, STATUS_CREATING);
	if (!j)
		return NULL;
	json_object_set_new(j, "status", json_string(status));
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return s;
}

int hooks_save(const struct oci_config *cfg, const char *state_dir, struct cella_err *err)
{
	if (!hooks_count(&cfg->hooks, HOOK_POSTSTART) && !hooks_count(&cfg->hooks, HOOK_POSTSTOP))
		return 0;
	json_t *hooks = cfg->json ? json_object_get(cfg->json, "hooks") : NULL;
	if (!hooks)
		return 0;
	_cleanup_free_ char *text = json_dumps(hooks, JSON_COMPACT);
	_cleanup_free_ char *path = cella_path_join(state_dir, HOOKS_FILE);
	if (!text || !path)
		return cella_err_set(err, ENOMEM, "hooks");
	return cella_write_file_atomic(path, text, strlen(text), 0600, err);
}

static char **strv_from(json_t *a)
{
	if (!json_is_array(a))
		return NULL;
	char **v = calloc(json_array_size(a) + 1, sizeof(char *));
	size_t i;
	json_t *e;
	json_array_foreach(a, i, e)
		v[i] = strdup(json_is_string(e) ? json_string_value(e) : "");
	return v;
}

void hooks_run_saved(const struct container_state *st, enum hook_phase ph, const char *status)
{
	_cleanup_free_ char *path = cella_path_join(st->dir, HOOKS_FILE);
	json_t *doc = path ? json_load_file(path, 0, NULL) : NULL;
	json_t *list = doc ? json_object_get(doc, hook_phase_name(ph)) : NULL;
	size_t n = json_array_size(list);
	if (!n) {
		json_decref(doc);
		return;
	}
	struct oci_hook *h = calloc(n, sizeof(*h));
	for (size_t i = 0; h && i < n; i++) {
		json_t *o = json_array_get(list, i), *t = json_object_get(o, "timeout");
		const char *p = json_string_value(json_object_get(o, "path"));
		h[i].path = strdup(p ? p : "");
		h[i].args = strv_from(json_object_get(o, "args"));
		h[i].env = strv_from(json_object_get(o, "env"));
		h[i].timeout.set = json_is_integer(t);
		h[i].timeout.v = json_is_integer(t) ? json_integer_value(t) : 0;
	}
	json_decref(doc);
	if (!h)
		return;
	struct oci_hooks hs = { 0 };
	if (ph == HOOK_POSTSTART) {
		hs.poststart = h;
		hs.n_poststart = n;
	} else {
		hs.poststop = h;
		hs.n_poststop = n;
	}
	_cleanup_free_ char *state = hooks_state_json(st, status);
	struct cella_err e = { 0 };
	if (hooks_run(&hs, ph, state, &e) < 0)
		log_warn("%s", e.msg);
	for (size_t i = 0; i < n; i++) {
		free(h[i].path);
		cella_strv_free(h[i].args);
		cella_strv_free(h[i].env);
	}
	free(h);
}

bool hooks_init_needs_state(const struct oci_hooks *hs)
{
	return hooks_count(hs, HOOK_CREATE_CONTAINER) || hooks_count(hs, HOOK_START_CONTAINER);
}

int hooks_send_state(int fd, const char *state, struct cella_err *err)
{
	size_t len = strlen(state) + 1;
	ssize_t n;
	do
		n = send(fd, state, len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)len)
		return cella_err_sys(err, n < 0 ? errno : EIO, "send the state to the container init");
	return 0;
}

char *hooks_recv_state(int fd)
{
	ssize_t len;
	do
		len = recv(fd, NULL, 0, MSG_PEEK | MSG_TRUNC);
	while (len < 0 && errno == EINTR);
	if (len <= 0)
		return NULL;
	char *buf = malloc((size_t)len + 1);
	if (!buf)
		return NULL;
	ssize_t n;
	do
		n = recv(fd, buf, (size_t)len, 0);
	while (n < 0 && errno == EINTR);
	if (n != len) {
		free(buf);
		return NULL;
	}
	buf[len] = 0;
	return buf;
}
