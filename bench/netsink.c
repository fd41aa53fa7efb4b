/* netsink: a TCP receiver that times what it gets, for the network benchmark and the rate-limit test.
 *
 *   netsink [-t SECONDS] [-r] ADDR PORT COUNT
 *
 * Listens on ADDR:PORT and takes COUNT connections one after the other; for each it reads until the
 * peer closes and prints one line:
 *
 *   SINK n=I bytes=B ms=T mibps=R
 *
 * T runs from the first byte to end of file (CLOCK_MONOTONIC), so connection setup and the sender's
 * start-up are not counted; R = B / T in MiB/s. -r adds "ready" on stdout once listening (scripts
 * wait for it). -t ends the whole run after SECONDS (exit 124). Built static: it runs inside the
 * nested sandbox. Exit status 0, 2 on usage or socket errors. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	int opt, secs = 0, ready = 0;
	while ((opt = getopt(argc, argv, "t:r")) != -1) {
		if (opt == 't')
			secs = atoi(optarg);
		else if (opt == 'r')
			ready = 1;
		else
			goto usage;
	}
	if (argc - optind != 3)
		goto usage;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[optind + 1])) };
	if (inet_pton(AF_INET, argv[optind], &sa.sin_addr) != 1)
		goto usage;
	int count = atoi(argv[optind + 2]);
	if (secs > 0)
		alarm((unsigned)secs); /* SIGALRM's default action ends the process */
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 4) < 0) {
		fprintf(stderr, "netsink: %s:%s: %s\n", argv[optind], argv[optind + 1], strerror(errno));
		return 2;
	}
	if (ready) {
		printf("ready\n");
		fflush(stdout);
	}
	static char buf[1 << 18];
	for (int i = 0; i < count; i++) {
		int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR) {
				i--;
				continue;
			}
			fprintf(stderr, "netsink: accept: %s\n", strerror(errno));
			return 2;
		}
		unsigned long long bytes = 0;
		double t0 = 0;
		for (;;) {
			ssize_t n = read(c, buf, sizeof(buf));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			if (bytes == 0)
				t0 = now_ms();
			bytes += (unsigned long long)n;
		}
		double ms = bytes ? now_ms() - t0 : 0;
		printf("SINK n=%d bytes=%llu ms=%.1f mibps=%.2f\n", i, bytes, ms,
		       ms > 0 ? bytes / 1048576.0 / (ms / 1e3) : 0.0);
		fflush(stdout);
		close(c);
	}
	close(ls);
	return 0;
usage:
	fprintf(stderr, "usage: netsink [-t SECONDS] [-r] ADDR PORT COUNT\n");
	return 2;
}
