/* process.terminal: a pty allocated inside the container, its master handed to the caller over
 * --console-socket with SCM_RIGHTS (one message: the pty name as data, the fd as ancillary data,
 * exactly what runc's recvtty expects). */
#include "runtime/init.h"

#include "base/err.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

int terminal_send_fd(int sock, int fd, const char *name, struct cella_err *err)
{
	char data[256];
	snprintf(data, sizeof(data), "%s", name ? name : "");
	struct iovec iov = { .iov_base = data, .iov_len = strlen(data) ? strlen(data) : 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	memset(&u, 0, sizeof(u));
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	for (;;) {
		if (sendmsg(sock, &msg, MSG_NOSIGNAL) >= 0)
			return 0;
		if (errno != EINTR)
			return cella_err_sys(err, errno, "send pty master over the console socket");
	}
}

int console_connect(const char *path, struct cella_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return cella_err_set(err, ENAMETOOLONG, "console socket %s: path too long", path);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return cella_err_sys(err, errno, "console socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return cella_err_sys(err, e, "connect to console socket %s", path);
	}
	return fd;
}

int terminal_recv_fd(int sock, struct cella_err *err)
{
	char data[4096];
	struct iovec iov = { .iov_base = data, .iov_len = sizeof(data) };
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	ssize_t n;
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return cella_err_sys(err, errno, "receive pty master");
	if (n == 0)
		return cella_err_set(err, EPIPE, "receive pty master: socket closed");
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
			int fd;
			memcpy(&fd, CMSG_DATA(c), sizeof(int));
			return fd;
		}
	}
	return cella_err_set(err, EPROTO, "receive pty master: no file descriptor in the message");
}

/* A new pty from the container's /dev/ptmx: *master and *slave (both O_CLOEXEC), the slave's name in
 * name, the slave sized as process.consoleSize asks. */
static int pty_open(const struct oci_process *p, int *master, int *slave, char *name, size_t size,
		    struct cella_err *err)
{
	_cleanup_close_ int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (m < 0)
		return cella_err_sys(err, errno, "open /dev/ptmx in the container");
	int unlock = 0;
	if (ioctl(m, TIOCSPTLCK, &unlock) < 0)
		return cella_err_sys(err, errno, "unlock pty");
	if (ptsname_r(m, name, size) != 0)
		return cella_err_sys(err, errno, "ptsname");
	_cleanup_close_ int s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s < 0)
		return cella_err_sys(err, errno, "open %s", name);
	if (p->console_size.set) {
		struct winsize ws = { .ws_row = (unsigned short)p->console_size.height,
				      .ws_col = (unsigned short)p->console_size.width };
		if (ioctl(s, TIOCSWINSZ, &ws) < 0)
			return cella_err_sys(err, errno, "set console size");
	}
	*master = TAKE_FD(m);
	*slave = TAKE_FD(s);
	return 0;
}

int terminal_setup(const struct oci_process *p, int sock, bool exec, struct cella_err *err)
{
	_cleanup_close_ int master = -1, slave = -1;
	char name[64];
	int r = pty_open(p, &master, &slave, name, sizeof(name), err);
	if (r < 0)
		return r;
	if (exec) {
		/* The exec'd process needs its own session to take a controlling terminal. */
		if (setsid() < 0)
			return cella_err_sys(err, errno, "setsid");
	} else {
		/* The init already leads its own session; /dev/console is its pty. */
		r = rootfs_mount_console(name, err);
		if (r < 0)
			return r;
	}
	if (ioctl(slave, TIOCSCTTY, 0) < 0)
		return cella_err_sys(err, errno, "make %s the controlling terminal", name);
	for (int fd = 0; fd < 3; fd++)
		if (dup2(slave, fd) < 0)
			return cella_err_sys(err, errno, "dup2 pty to fd %d", fd);
	return terminal_send_fd(sock, master, name, err);
}

/* ---------- the runtime side of a foreground terminal ---------- */

static void proxy_winsize(struct tty_proxy *t)
{
	struct winsize ws;
	if (t->master >= 0 && ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0)
		ioctl(t->master, TIOCSWINSZ, &ws);
}

void tty_proxy_start(struct tty_proxy *t, int master)
{
	t->master = master;
	t->stdin_open = true;
	if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &t->saved) == 0) {
		struct termios raw = t->saved;
		cfmakeraw(&raw);
		t->raw = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
		proxy_winsize(t);
	}
}

/* Copies what is available from in to out; false on EOF/error of in. */
static bool proxy_copy(int in, int out)
{
	char buf[8192];
	ssize_t n = read(in, buf, sizeof(buf));
	if (n <= 0)
		return n < 0 && (errno == EAGAIN || errno == EINTR);
	cella_write_all(out, buf, (size_t)n); /* a closed stdout must not stop the copy loop */
	return true;
}

void tty_proxy_stop(struct tty_proxy *t)
{
	if (t->master >= 0) {
		/* Drain what the process wrote before it exited. */
		fcntl(t->master, F_SETFL, fcntl(t->master, F_GETFL) | O_NONBLOCK);
		while (proxy_copy(t->master, STDOUT_FILENO)) {
			struct pollfd p = { .fd = t->master, .events = POLLIN };
			if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
				break;
		}
		close(t->master);
		t->master = -1;
	}
	if (t->raw)
		tcsetattr(STDIN_FILENO, TCSANOW, &t->saved);
	t->raw = false;
}

static int status_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 255;
}

int tty_proxy_wait(pid_t pid, int sigfd, struct tty_proxy *t)
{
	for (;;) {
		struct pollfd pf[3] = {
			{ .fd = sigfd, .events = POLLIN },
			{ .fd = t->master >= 0 && t->stdin_open ? STDIN_FILENO : -1, .events = POLLIN },
			{ .fd = t->master, .events = POLLIN },
		};
		if (poll(pf, 3, -1) < 0 && errno != EINTR)
			return 255;
		if ((pf[1].revents & (POLLIN | POLLHUP | POLLERR)) && !proxy_copy(STDIN_FILENO, t->master))
			t->stdin_open = false;
		if (pf[2].revents & POLLIN)
			proxy_copy(t->master, STDOUT_FILENO);
		if (!(pf[0].revents & POLLIN))
			continue;
		struct signalfd_siginfo si;
		if (read(sigfd, &si, sizeof(si)) != sizeof(si))
			continue;
		if (si.ssi_signo == SIGCHLD) {
			int status, code = -1;
			pid_t p;
			/* We are a subreaper: reap everything, report only pid. */
			while ((p = waitpid(-1, &status, WNOHANG)) > 0)
				if (p == pid)
					code = status_code(status);
			if (code >= 0)
				return code;
		} else if (si.ssi_signo == SIGWINCH) {
			proxy_winsize(t);
		} else {
			kill(pid, (int)si.ssi_signo);
		}
	}
}
