/* process.terminal: a pty allocated inside the container, its master handed to the caller over
 * --console-socket with SCM_RIGHTS (one message: the pty name as data, the fd as ancillary data,
 * exactly what runc's recvtty expects). */
#include "runtime/init.h"

#include "base/err.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
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

int terminal_setup(const struct oci_process *p, int sock, struct cella_err *err)
{
	_cleanup_close_ int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0)
		return cella_err_sys(err, errno, "open /dev/ptmx in the container");
	int unlock = 0;
	if (ioctl(master, TIOCSPTLCK, &unlock) < 0)
		return cella_err_sys(err, errno, "unlock pty");
	char slave_name[64];
	if (ptsname_r(master, slave_name, sizeof(slave_name)) != 0)
		return cella_err_sys(err, errno, "ptsname");
	_cleanup_close_ int slave = open(slave_name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (slave < 0)
		return cella_err_sys(err, errno, "open %s", slave_name);
	if (p->console_size.set) {
		struct winsize ws = { .ws_row = (unsigned short)p->console_size.height,
				      .ws_col = (unsigned short)p->console_size.width };
		if (ioctl(slave, TIOCSWINSZ, &ws) < 0)
			return cella_err_sys(err, errno, "set console size");
	}
	int r = rootfs_mount_console(slave_name, err);
	if (r < 0)
		return r;
	/* The init already leads its own session: the slave becomes its controlling terminal. */
	if (ioctl(slave, TIOCSCTTY, 0) < 0)
		return cella_err_sys(err, errno, "make %s the controlling terminal", slave_name);
	for (int fd = 0; fd < 3; fd++)
		if (dup2(slave, fd) < 0)
			return cella_err_sys(err, errno, "dup2 pty to fd %d", fd);
	r = terminal_send_fd(sock, master, slave_name, err);
	if (r < 0)
		return r;
	return 0;
}
