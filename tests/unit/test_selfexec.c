/* CVE-2019-5736 re-exec (runtime/selfexec.c), both ways. This program re-executes itself through
 * cella_selfexec_protected: once as it is (a read-only detached bind mount of the binary), once
 * with open_tree refused by a seccomp filter (ENOSYS, as on a kernel before 5.2), which leaves the
 * sealed memfd copy. Each re-executed child reports what /proc/self/exe is, whether it can be
 * opened for writing, and whether a second call returns at once (no re-exec loop). */
#include "base/err.h"
#include "runtime/selfexec.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <seccomp.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The re-executed side: one line on stdout. */
static int report(char **argv)
{
	char link[256] = "";
	ssize_t n = readlink("/proc/self/exe", link, sizeof(link) - 1);
	if (n > 0)
		link[n] = '\0';
	int fd = open("/proc/self/exe", O_WRONLY | O_CLOEXEC);
	int werr = fd < 0 ? errno : 0;
	struct cella_err err = { 0 };
	int again = cella_selfexec_protected(argv, &err);
	printf("protected=%d exe=%s write=%s again=%d marker=%s\n", cella_selfexec_is_protected(), link,
	       werr ? strerror(werr) : "OPENED", again, getenv("_CELLA_PROTECTED_EXE") ? "set" : "unset");
	return 0;
}

/* Forks; the child (optionally without open_tree) re-executes this program in report mode.
 * Returns the child's report line (static buffer). */
static const char *run_case(bool block_open_tree)
{
	static char line[512];
	line[0] = '\0';
	int p[2];
	if (pipe(p) < 0)
		return line;
	pid_t c = fork();
	if (c == 0) {
		dup2(p[1], 1);
		close(p[0]);
		if (block_open_tree) {
			scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
			if (!ctx || seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(open_tree), 0) < 0 ||
			    seccomp_load(ctx) < 0)
				_exit(3);
		}
		char *argv[] = { (char *)"test_selfexec", (char *)"--report", NULL };
		struct cella_err err = { 0 };
		cella_selfexec_protected(argv, &err);
		printf("failed: %s\n", err.msg);
		_exit(2);
	}
	close(p[1]);
	size_t len = 0;
	ssize_t n;
	while (len < sizeof(line) - 1 && (n = read(p[0], line + len, sizeof(line) - 1 - len)) > 0)
		len += (size_t)n;
	line[len] = '\0';
	close(p[0]);
	int st = 0;
	waitpid(c, &st, 0);
	return line;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--report"))
		return report(argv);
	if (geteuid() != 0)
		TAP_SKIP_ALL("needs root (open_tree of the binary needs CAP_SYS_ADMIN)");

	const char *ro = run_case(false);
	printf("# read-only mount: %s", ro);
	TAP_OK(strstr(ro, "protected=1 exe=/ "), "re-executed through the read-only mount (exe is its root)");
	TAP_OK(strstr(ro, "write=Text file busy") || strstr(ro, "write=Read-only file system"),
	       "/proc/self/exe cannot be opened for writing");
	TAP_OK(strstr(ro, "again=0 marker=unset"), "a second call returns at once and drops the marker");

	const char *copy = run_case(true);
	printf("# sealed copy: %s", copy);
	TAP_OK(strstr(copy, "protected=1 exe=/memfd:cella"), "without open_tree: re-executed from the sealed memfd");
	TAP_OK(strstr(copy, "write=Operation not permitted") || strstr(copy, "write=Text file busy"),
	       "the sealed copy cannot be opened for writing");
	TAP_OK(strstr(copy, "again=0 marker=unset"), "no second re-exec from the copy either");
	return tap_done();
}
