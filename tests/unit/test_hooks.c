/* hooks_run: state on stdin, args and env exactly as configured, exit status, timeout, output. */
#include "base/err.h"
#include "base/util.h"
#include "runtime/hooks.h"
#include "tap.h"

#include <errno.h>
#include <time.h>
#include <unistd.h>

static int run(const char *script, char **env, int64_t timeout, const char *state, struct cella_err *err)
{
	char sh[] = "/bin/sh", a0[] = "sh", a1[] = "-c", a3[] = "hook-arg0", a4[] = "a1";
	char *s = strdup(script);
	char *args[] = { a0, a1, s, a3, a4, NULL };
	struct oci_hook h = { .path = sh, .args = args, .env = env, .timeout = { timeout > 0, timeout } };
	struct oci_hooks hs = { .create_runtime = &h, .n_create_runtime = 1 };
	int r = hooks_run(&hs, HOOK_CREATE_RUNTIME, state, err);
	free(s);
	return r;
}

int main(void)
{
	char tmpl[] = "/tmp/cella-hooks-XXXXXX";
	if (!mkdtemp(tmpl))
		TAP_SKIP_ALL("mkdtemp failed");
	char script[512], *out = NULL;
	size_t len = 0;
	struct cella_err e = { 0 };

	snprintf(script, sizeof(script), "cat > %s/state; echo \"$0 $1 $MARK $(tr '\\0' , </proc/$$/environ)\" > %s/args", tmpl, tmpl);
	char mark[] = "MARK=m1";
	char *env[] = { mark, NULL };
	TAP_OK(run(script, env, 5, "{\"id\":\"x\"}", &e) == 0, "a hook that exits 0 succeeds");
	char path[256];
	snprintf(path, sizeof(path), "%s/state", tmpl);
	TAP_OK(cella_read_file(path, 4096, &out, &len, NULL) == 0 && !strcmp(out, "{\"id\":\"x\"}"),
	       "the state arrives on stdin");
	free(out);
	snprintf(path, sizeof(path), "%s/args", tmpl);
	TAP_OK(cella_read_file(path, 4096, &out, &len, NULL) == 0 && !strcmp(out, "hook-arg0 a1 m1 MARK=m1,\n"),
	       "args and env exactly as configured (nothing inherited): %s", out ? out : "");
	free(out);

	cella_err_clear(&e);
	int r = run("echo this went wrong >&2; exit 3", NULL, 0, "{}", &e);
	TAP_OK(r < 0 && strstr(e.msg, "hooks.createRuntime[0]: /bin/sh: exited with status 3: this went wrong"),
	       "failure names the hook, the status and the output: %s", e.msg);

	cella_err_clear(&e);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	r = run("sleep 20 & sleep 20", NULL, 1, "{}", &e);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	TAP_OK(r == -ETIMEDOUT && strstr(e.msg, "timed out after 1 seconds") && took < 5,
	       "a hook past its timeout is killed (%.1f s): %s", took, e.msg);

	cella_err_clear(&e);
	r = run("kill -9 $$", NULL, 0, "{}", &e);
	TAP_OK(r < 0 && strstr(e.msg, "killed by signal 9"), "a hook killed by a signal fails: %s", e.msg);

	cella_err_clear(&e);
	char nopath[] = "/nonexistent/hook";
	struct oci_hook missing = { .path = nopath };
	struct oci_hooks hs = { .poststop = &missing, .n_poststop = 1 };
	r = hooks_run(&hs, HOOK_POSTSTOP, "{}", &e);
	TAP_OK(r < 0 && strstr(e.msg, "hooks.poststop[0]: /nonexistent/hook: exited with status 127"),
	       "a hook that cannot be executed fails: %s", e.msg);
	TAP_OK(hooks_run(&(struct oci_hooks){ 0 }, HOOK_PRESTART, NULL, &e) == 0, "no hooks, nothing to do");

	cella_rm_rf(tmpl, NULL);
	return tap_done();
}
