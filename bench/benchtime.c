/* benchtime: spawn one command and measure it, for Cella's benchmarks.
 *
 *   benchtime [-m MARKER] [-o FILE] [-e FILE] [-t SECONDS] [-l LABEL] -- CMD [ARG...]
 *
 * Runs CMD with stdin from /dev/null and stdout on a pipe (stderr too unless -e), and prints
 * one line on stdout:
 *
 *   LABEL wall_ms=W first_byte_ms=F marker_ms=M maxrss_kb=R status=S
 *
 * wall_ms       from just before fork() to the reaping of CMD (CLOCK_MONOTONIC)
 * first_byte_ms from fork() to the first byte CMD writes on its stdout pipe (-1: none)
 * marker_ms     from fork() to the end of the first output line containing MARKER (-1: none)
 * maxrss_kb     peak RSS of the process tree: ru_maxrss from wait4() on CMD, which covers
 *               every descendant CMD reaped; benchtime is a child subreaper, so orphaned
 *               descendants are reaped here too and their ru_maxrss counted (max over all)
 * status        exit status, or 128+signal
 *
 * CMD's output is copied to FILE (-o) or discarded. -t kills the whole process group after
 * SECONDS (status then 124, as timeout(1)). Built static so that it runs inside the nested sandbox.
 * Exit status: 0 when measured (whatever CMD's status), 2 on usage or spawn errors. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void usage(void)
{
	fprintf(stderr, "usage: benchtime [-m MARKER] [-o FILE] [-e FILE] [-t SECONDS] [-l LABEL] "
			"-- CMD [ARG...]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *marker = NULL, *out_path = NULL, *err_path = NULL, *label = "run";
	double timeout_s = 0;
	int opt;

	while ((opt = getopt(argc, argv, "+m:o:e:t:l:")) != -1) {
		switch (opt) {
		case 'm': marker = optarg; break;
		case 'o': out_path = optarg; break;
		case 'e': err_path = optarg; break;
		case 't': timeout_s = atof(optarg); break;
		case 'l': label = optarg; break;
		default: usage();
		}
	}
	if (optind >= argc)
		usage();

	int out_fd = -1, err_fd = -1;
	if (out_path) {
		out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (out_fd < 0) {
			fprintf(stderr, "benchtime: open %s: %s\n", out_path, strerror(errno));
			return 2;
		}
	}
	if (err_path) {
		err_fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (err_fd < 0) {
			fprintf(stderr, "benchtime: open %s: %s\n", err_path, strerror(errno));
			return 2;
		}
	}
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		perror("benchtime: pipe");
		return 2;
	}
	prctl(PR_SET_CHILD_SUBREAPER, 1);

	double t0 = now_ms();
	pid_t pid = fork();
	if (pid < 0) {
		perror("benchtime: fork");
		return 2;
	}
	if (pid == 0) {
		setpgid(0, 0);
		int nul = open("/dev/null", O_RDONLY);
		if (nul >= 0)
			dup2(nul, 0);
		dup2(p[1], 1);
		dup2(err_fd >= 0 ? err_fd : p[1], 2);
		execvp(argv[optind], argv + optind);
		fprintf(stderr, "benchtime: exec %s: %s\n", argv[optind], strerror(errno));
		_exit(127);
	}
	setpgid(pid, pid);
	close(p[1]);
	/* A pidfd becomes readable when CMD exits: that instant is the end of wall_ms, even if a
	 * descendant keeps the pipe open a little longer. Without pidfds, the reap time is used. */
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	double t_exit = -1;

	double first = -1, mark = -1, deadline = timeout_s > 0 ? t0 + timeout_s * 1e3 : 0;
	char line[4096];
	size_t len = 0;
	int timed_out = 0, eof = 0;
	while (!eof) {
		int wait_ms = -1;
		if (deadline) {
			double left = deadline - now_ms();
			if (left <= 0) {
				kill(-pid, SIGKILL);
				timed_out = 1;
				break;
			}
			wait_ms = (int)left + 1;
		}
		struct pollfd pfd[2] = { { .fd = p[0], .events = POLLIN },
					 { .fd = t_exit < 0 ? pidfd : -1, .events = POLLIN } };
		int r = poll(pfd, 2, wait_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		if (pfd[1].revents) {
			t_exit = now_ms();
			if (!pfd[0].revents)
				continue;
		}
		char buf[4096];
		ssize_t n = read(p[0], buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			eof = 1;
			break;
		}
		double t = now_ms();
		if (first < 0)
			first = t - t0;
		if (out_fd >= 0 && write(out_fd, buf, n) != n) {
			/* the copy is best effort; the figures are what matter */
		}
		for (ssize_t i = 0; i < n && marker && mark < 0; i++) {
			if (buf[i] == '\n' || len == sizeof(line) - 1) {
				line[len] = 0;
				if (strstr(line, marker))
					mark = t - t0;
				len = 0;
			} else {
				line[len++] = buf[i];
			}
		}
	}
	close(p[0]);

	/* Reap CMD, then any orphaned descendants that were reparented to us. */
	struct rusage ru;
	int st = 0;
	long maxrss = 0;
	double t_end = -1, orphan_deadline = 0;
	for (;;) {
		int s;
		pid_t w = wait4(-1, &s, t_end < 0 ? 0 : WNOHANG, &ru);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (w == 0) { /* orphans still running after CMD: a leak; give them 2 s */
			if (now_ms() > orphan_deadline) {
				fprintf(stderr, "benchtime: descendants of %s outlived it\n", argv[optind]);
				kill(-pid, SIGKILL);
				break;
			}
			usleep(1000);
			continue;
		}
		if (ru.ru_maxrss > maxrss)
			maxrss = ru.ru_maxrss;
		if (w == pid) {
			t_end = t_exit >= 0 ? t_exit : now_ms();
			st = s;
			orphan_deadline = t_end + 2000;
		}
	}
	int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	if (timed_out)
		status = 124;
	printf("%s wall_ms=%.3f first_byte_ms=%.3f marker_ms=%.3f maxrss_kb=%ld status=%d\n", label,
	       t_end - t0, first, mark, maxrss, status);
	return 0;
}
