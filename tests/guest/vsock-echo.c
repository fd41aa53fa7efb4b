/* vsock-echo: the test tool for virtio-vsock on both ends (busybox has no AF_VSOCK). Built static so
 * the same binary runs in the guest's initramfs and in the sandbox host.
 *
 * Guest side (AF_VSOCK):
 *   listen PORT                  echo server, one child per connection (runs until killed)
 *   connect CID PORT BYTES N     N concurrent connections; each sends BYTES of a per-connection
 *                                pattern, shuts its write side, reads the echo to EOF and checks it
 *   once PORT                    accepts one connection, prints what it got up to EOF, exits
 * Host side (unix sockets, the VMM's hybrid vsock):
 *   uds-listen PATH              echo server on the unix socket PATH (the VMM's PATH_PORT)
 *   uds-connect PATH PORT BYTES N   like connect, through "CONNECT PORT\n" / "OK <port>\n"
 *   uds-abort PATH PORT BYTES    connects, sends BYTES, closes without reading the echo
 *   uds-stuck PATH PORT BYTES SECS  connects, sends BYTES, never reads, holds the socket SECS seconds
 *   uds-send PATH PORT TEXT      connects, sends TEXT, closes
 * Exit status 0 when every check passed; messages say what failed. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "vsock-echo";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static unsigned long num(const char *s)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || !*s || *end)
		die("not a number: \"%s\"", s);
	return v;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint8_t pattern(unsigned conn, uint64_t i)
{
	return (uint8_t)(i * 131 + (i >> 9) + conn * 17);
}

static int vsock_socket(void)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket(AF_VSOCK): %s", strerror(errno));
	return fd;
}

static int vsock_connect(unsigned cid, unsigned port)
{
	int fd = vsock_socket();
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect to vsock %u:%u: %s", cid, port, strerror(errno));
	return fd;
}

static int vsock_listen(unsigned port)
{
	int fd = vsock_socket();
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0)
		die("listen on vsock port %u: %s", port, strerror(errno));
	return fd;
}

static int uds_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		die("%s: path too long", path);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect to %s: %s", path, strerror(errno));
	return fd;
}

/* The hybrid handshake: "CONNECT PORT\n", then "OK <n>\n" read byte by byte (nothing beyond it). */
static int uds_vsock_connect(const char *path, unsigned port)
{
	int fd = uds_connect(path);
	char line[64];
	int n = snprintf(line, sizeof(line), "CONNECT %u\n", port);
	if (write(fd, line, (size_t)n) != n)
		die("%s: writing CONNECT: %s", path, strerror(errno));
	size_t got = 0;
	while (got < sizeof(line) - 1) {
		ssize_t r = read(fd, line + got, 1);
		if (r <= 0)
			die("%s: CONNECT %u: connection closed before OK (%s)", path, port, r < 0 ? strerror(errno) : "EOF");
		if (line[got++] == '\n')
			break;
	}
	line[got] = 0;
	if (strncmp(line, "OK ", 3))
		die("%s: CONNECT %u: expected \"OK <port>\", got \"%s\"", path, port, line);
	return fd;
}

/* Sends bytes of the pattern while reading the echo (both at once, so neither side's buffers fill
 * up and stall); shuts the write side after the last byte; checks everything read up to EOF. */
static int exchange(int fd, unsigned conn, uint64_t bytes, const char *what)
{
	static uint8_t buf[65536];
	uint64_t sent = 0, rcvd = 0;
	bool shut = false;
	if (bytes == 0) {
		shutdown(fd, SHUT_WR);
		shut = true;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN | (shut ? 0 : POLLOUT) };
		int n = poll(&p, 1, 60000);
		if (n == 0) {
			fprintf(stderr, "%s: %s conn %u: stalled for 60 s (sent %llu, received %llu)\n", prog, what, conn,
				(unsigned long long)sent, (unsigned long long)rcvd);
			return 1;
		}
		if (n < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (!shut && (p.revents & POLLOUT)) {
			size_t len = bytes - sent < sizeof(buf) ? (size_t)(bytes - sent) : sizeof(buf);
			for (size_t i = 0; i < len; i++)
				buf[i] = pattern(conn, sent + i);
			ssize_t w = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (w < 0 && errno != EAGAIN && errno != EINTR) {
				fprintf(stderr, "%s: %s conn %u: send: %s\n", prog, what, conn, strerror(errno));
				return 1;
			}
			if (w > 0)
				sent += (uint64_t)w;
			if (sent == bytes) {
				shutdown(fd, SHUT_WR);
				shut = true;
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (r < 0 && errno != EAGAIN && errno != EINTR) {
				fprintf(stderr, "%s: %s conn %u: recv: %s\n", prog, what, conn, strerror(errno));
				return 1;
			}
			if (r == 0)
				break;
			for (ssize_t i = 0; i < r; i++)
				if (buf[i] != pattern(conn, rcvd + (uint64_t)i)) {
					fprintf(stderr, "%s: %s conn %u: byte %llu differs\n", prog, what, conn,
						(unsigned long long)(rcvd + (uint64_t)i));
					return 1;
				}
			if (r > 0)
				rcvd += (uint64_t)r;
		}
	}
	if (rcvd != bytes || sent != bytes) {
		fprintf(stderr, "%s: %s conn %u: sent %llu, echoed %llu of %llu\n", prog, what, conn,
			(unsigned long long)sent, (unsigned long long)rcvd, (unsigned long long)bytes);
		return 1;
	}
	return 0;
}

static void echo_loop(int fd)
{
	static uint8_t buf[65536];
	for (;;) {
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		for (ssize_t off = 0; off < r;) {
			ssize_t w = write(fd, buf + off, (size_t)(r - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				_exit(0); /* the peer went away mid-stream: nothing to echo to */
			off += w;
		}
	}
	shutdown(fd, SHUT_WR);
}

static void serve(int lfd)
{
	signal(SIGCHLD, SIG_IGN); /* children reaped by the kernel */
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept: %s", strerror(errno));
		}
		pid_t pid = fork();
		if (pid == 0) {
			close(lfd);
			echo_loop(c);
			_exit(0);
		}
		close(c);
	}
}

/* Runs one(conn) in N children at once; returns how many failed. */
static int fan_out(unsigned n, int (*one)(unsigned conn, void *ctx), void *ctx)
{
	for (unsigned i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork: %s", strerror(errno));
		if (pid == 0)
			_exit(one(i, ctx));
	}
	int failed = 0, st;
	while (wait(&st) > 0)
		failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
	return failed;
}

struct job {
	const char *path;
	unsigned cid, port;
	uint64_t bytes;
};

static int one_vsock(unsigned conn, void *ctx)
{
	struct job *j = ctx;
	int fd = vsock_connect(j->cid, j->port);
	return exchange(fd, conn, j->bytes, "vsock");
}

static int one_uds(unsigned conn, void *ctx)
{
	struct job *j = ctx;
	int fd = uds_vsock_connect(j->path, j->port);
	return exchange(fd, conn, j->bytes, "uds");
}

static int report(const char *what, unsigned n, uint64_t bytes, int failed, double t0)
{
	double t = now() - t0;
	printf("%s: %u connection(s) x %llu bytes echoed and checked: %s in %.2f s (%.2f MiB/s)\n", what, n,
	       (unsigned long long)bytes, failed ? "FAILED" : "ok", t, (double)bytes * n / (1 << 20) / (t > 0 ? t : 1));
	fflush(stdout);
	return failed ? 1 : 0;
}

static void send_bytes(int fd, uint64_t bytes)
{
	static uint8_t buf[65536];
	uint64_t sent = 0;
	while (sent < bytes) {
		size_t len = bytes - sent < sizeof(buf) ? (size_t)(bytes - sent) : sizeof(buf);
		for (size_t i = 0; i < len; i++)
			buf[i] = pattern(0, sent + i);
		ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
		if (w <= 0)
			break;
		sent += (uint64_t)w;
	}
}

int main(int argc, char **argv)
{
	if (argc < 2)
		die("usage: vsock-echo listen|connect|once|uds-listen|uds-connect|uds-abort|uds-stuck|uds-send ...");
	const char *mode = argv[1];
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(mode, "listen") && argc == 3) {
		serve(vsock_listen((unsigned)num(argv[2])));
	} else if (!strcmp(mode, "connect") && argc == 6) {
		struct job j = { .cid = (unsigned)num(argv[2]), .port = (unsigned)num(argv[3]), .bytes = num(argv[4]) };
		unsigned n = (unsigned)num(argv[5]);
		double t0 = now();
		return report("guest->host", n, j.bytes, fan_out(n, one_vsock, &j), t0);
	} else if (!strcmp(mode, "once") && argc == 3) {
		int l = vsock_listen((unsigned)num(argv[2]));
		int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			die("accept: %s", strerror(errno));
		char buf[256];
		size_t got = 0;
		ssize_t r;
		while (got < sizeof(buf) - 1 && (r = read(c, buf + got, sizeof(buf) - 1 - got)) > 0)
			got += (size_t)r;
		buf[got] = 0;
		printf("once: got \"%s\"\n", buf);
		return 0;
	} else if (!strcmp(mode, "uds-listen") && argc == 3) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[2]);
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0)
			die("listen on %s: %s", argv[2], strerror(errno));
		serve(fd);
	} else if (!strcmp(mode, "uds-connect") && argc == 6) {
		struct job j = { .path = argv[2], .port = (unsigned)num(argv[3]), .bytes = num(argv[4]) };
		unsigned n = (unsigned)num(argv[5]);
		double t0 = now();
		return report("host->guest", n, j.bytes, fan_out(n, one_uds, &j), t0);
	} else if (!strcmp(mode, "uds-abort") && argc == 5) {
		int fd = uds_vsock_connect(argv[2], (unsigned)num(argv[3]));
		send_bytes(fd, num(argv[4]));
		close(fd);
		printf("abort: sent %s bytes and closed without reading\n", argv[4]);
		return 0;
	} else if (!strcmp(mode, "uds-stuck") && argc == 6) {
		int fd = uds_vsock_connect(argv[2], (unsigned)num(argv[3]));
		int fl = fcntl(fd, F_GETFL);
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
		uint64_t want = num(argv[4]), sent = 0;
		static uint8_t buf[65536];
		/* send what fits, never read: stop once nothing more went in for half a second (the echo
		 * path is full) or after 5 s */
		double end = now() + 5, last = now();
		while (sent < want && now() < end && now() - last < 0.5) {
			ssize_t w = send(fd, buf, want - sent < sizeof(buf) ? want - sent : sizeof(buf), MSG_NOSIGNAL);
			if (w > 0) {
				sent += (uint64_t)w;
				last = now();
			} else {
				usleep(10000);
			}
		}
		printf("stuck: sent %llu bytes, not reading for %s s\n", (unsigned long long)sent, argv[5]);
		fflush(stdout);
		sleep((unsigned)num(argv[5]));
		close(fd);
		return 0;
	} else if (!strcmp(mode, "uds-send") && argc == 5) {
		int fd = uds_vsock_connect(argv[2], (unsigned)num(argv[3]));
		if (write(fd, argv[4], strlen(argv[4])) < 0)
			die("write: %s", strerror(errno));
		close(fd);
		return 0;
	}
	die("bad arguments for \"%s\" (see the comment at the top of tests/guest/vsock-echo.c)", mode);
}
