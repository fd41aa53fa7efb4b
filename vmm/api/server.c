/* The API thread: a unix socket, up to API_MAX_CONNS connections multiplexed with poll, strict HTTP
 * parsing, and one call at a time handed to the VMM thread. It never touches the VM: everything that
 * needs VM state (the state machine included) is answered by the VMM thread.
 *
 * Connections: HTTP/1.1 keep-alive and pipelining (requests answered in order); "Connection: close"
 * honoured; "Expect: 100-continue" answered. A malformed request gets its 4xx/5xx with
 * "Connection: close" and the connection is closed (its framing is lost). A client that disconnects
 * mid-request or stops reading its replies only loses its own connection. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/api/api.h"

#define API_MAX_CONNS 16
#define API_BUF_CAP (HTTP_MAX_HEADER + HTTP_MAX_BODY)
#define API_SEND_TIMEOUT_S 2
#define API_REQUEST_TIMEOUT_MS 5000 /* a request started must be complete within this */

struct conn {
	int fd;
	char *buf;
	size_t len;
	bool sent_continue;
	uint64_t since_ns; /* when the unanswered bytes in buf began to arrive */
};

struct api_server {
	char *path;
	dev_t dev;
	ino_t ino;
	int listen_fd, stop_fd;
	pthread_t thread;
	bool started;
	struct api_chan chan;
	struct conn conns[API_MAX_CONNS];
};

/* --- the channel --- */

struct api_call *api_chan_take(struct api_chan *ch)
{
	uint64_t v;
	if (read(ch->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_debug("api: wake fd: %s", strerror(errno));
	pthread_mutex_lock(&ch->lock);
	struct api_call *c = ch->pending;
	ch->pending = NULL;
	pthread_mutex_unlock(&ch->lock);
	return c;
}

void api_chan_reply(struct api_chan *ch, struct api_call *call, int status, char *body)
{
	pthread_mutex_lock(&ch->lock);
	call->status = status;
	call->body = body;
	call->done = true;
	pthread_cond_broadcast(&ch->cond);
	pthread_mutex_unlock(&ch->lock);
}

void api_chan_close(struct api_chan *ch)
{
	pthread_mutex_lock(&ch->lock);
	ch->closed = true;
	struct api_call *c = ch->pending;
	ch->pending = NULL;
	if (c) {
		c->status = 409;
		c->body = api_fault_json("the VM has ended");
		c->done = true;
	}
	pthread_cond_broadcast(&ch->cond);
	pthread_mutex_unlock(&ch->lock);
}

/* API thread: hands the call over and waits for its reply. */
static void chan_call(struct api_chan *ch, struct api_call *call)
{
	pthread_mutex_lock(&ch->lock);
	if (ch->closed) {
		call->status = 409;
		call->body = api_fault_json("the VM has ended");
		call->done = true;
	} else {
		ch->pending = call;
		uint64_t one = 1;
		if (write(ch->wake_fd, &one, sizeof(one)) < 0)
			log_debug("api: wake: %s", strerror(errno));
	}
	while (!call->done)
		pthread_cond_wait(&ch->cond, &ch->lock);
	pthread_mutex_unlock(&ch->lock);
}

struct api_chan *api_server_chan(struct api_server *s)
{
	return &s->chan;
}

/* --- connections --- */

/* Reads and drops what the client already sent: closing a unix socket with unread data makes the
 * peer's recv fail with ECONNRESET before it sees our last reply. */
static void drain(int fd)
{
	char junk[4096];
	for (int i = 0; i < 32 && recv(fd, junk, sizeof(junk), MSG_DONTWAIT) > 0; i++)
		;
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0) {
		drain(c->fd);
		close(c->fd);
	}
	free(c->buf);
	*c = (struct conn){ .fd = -1 };
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One response; < 0 when the client is gone or not reading (the connection is then dropped). */
static int send_reply(struct conn *c, int status, const char *body, bool keep_alive)
{
	char head[256];
	size_t blen = body ? strlen(body) : 0;
	int n = http_format_head(head, sizeof(head), status, blen, keep_alive);
	if (n < 0)
		return -EOVERFLOW;
	int r = send_all(c->fd, head, (size_t)n);
	if (r == 0 && blen)
		r = send_all(c->fd, body, blen);
	if (r < 0)
		log_debug("api: client went away before its %d reply: %s", status, strerror(-r));
	return r;
}

static int send_fault(struct conn *c, int status, const char *msg, bool keep_alive)
{
	_cleanup_free_ char *body = api_fault_json(msg);
	return send_reply(c, status, body, keep_alive);
}

/* One complete request: parse into an action, have the VMM thread answer it, send the reply. */
static int serve_request(struct api_server *s, struct conn *c, const struct http_request *req)
{
	struct cella_err err = { 0 };
	struct api_call call = { 0 };
	atomic_fetch_add(&s->chan.requests, 1);
	int status = api_parse(req, &call.action, &err);
	if (status) {
		atomic_fetch_add(&s->chan.rejected, 1);
		log_debug("api: %s %s -> %d: %s", req->method, req->path, status, err.msg);
		return send_fault(c, status, err.msg, req->keep_alive);
	}
	chan_call(&s->chan, &call);
	api_action_free(&call.action);
	if (call.status >= 400)
		atomic_fetch_add(&s->chan.rejected, 1);
	log_debug("api: %s %s -> %d", req->method, req->path, call.status);
	int r = send_reply(c, call.status, call.body, req->keep_alive);
	free(call.body);
	return r;
}

/* Serves every complete request in the buffer, in order. Returns false when the connection must close. */
static bool conn_process(struct api_server *s, struct conn *c)
{
	while (c->len) {
		struct http_request req;
		struct http_error e;
		ssize_t n = http_parse_request(c->buf, c->len, &req, &e);
		if (n < 0) {
			atomic_fetch_add(&s->chan.requests, 1);
			atomic_fetch_add(&s->chan.rejected, 1);
			log_debug("api: malformed request -> %d: %s", e.status, e.reason);
			send_fault(c, e.status, e.reason, false);
			return false;
		}
		if (n == 0) {
			if (req.headers_done && req.expect_continue && !c->sent_continue) {
				char head[64];
				int h = http_format_head(head, sizeof(head), 100, 0, true);
				if (h < 0 || send_all(c->fd, head, (size_t)h) < 0)
					return false;
				c->sent_continue = true;
			}
			return true;
		}
		c->sent_continue = false;
		if (serve_request(s, c, &req) < 0 || !req.keep_alive)
			return false;
		memmove(c->buf, c->buf + n, c->len - (size_t)n);
		c->len -= (size_t)n;
		c->since_ns = cella_now_ns(); /* a pipelined rest starts its own clock */
	}
	return true;
}

/* Reads what is there; false when the connection is done (closed by the peer or by us). */
static bool conn_read(struct api_server *s, struct conn *c)
{
	if (c->len == API_BUF_CAP) /* cannot happen: a complete request always fits */
		return false;
	ssize_t got = recv(c->fd, c->buf + c->len, API_BUF_CAP - c->len, MSG_DONTWAIT);
	if (got < 0)
		return errno == EINTR || errno == EAGAIN;
	if (got == 0) {
		if (c->len) {
			atomic_fetch_add(&s->chan.disconnects, 1);
			log_debug("api: client disconnected mid-request (%zu bytes unanswered)", c->len);
		}
		return false;
	}
	if (c->len == 0)
		c->since_ns = cella_now_ns();
	c->len += (size_t)got;
	return conn_process(s, c);
}

static void accept_one(struct api_server *s)
{
	int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		log_debug("api: accept: %s", strerror(errno));
		return;
	}
	/* A client that does not read its replies cannot hold the API thread for long. */
	struct timeval tv = { .tv_sec = API_SEND_TIMEOUT_S };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	for (size_t i = 0; i < API_MAX_CONNS; i++) {
		struct conn *c = &s->conns[i];
		if (c->fd >= 0)
			continue;
		c->buf = malloc(API_BUF_CAP);
		if (!c->buf)
			break;
		c->fd = fd;
		c->len = 0;
		c->sent_continue = false;
		return;
	}
	struct conn tmp = { .fd = fd };
	send_fault(&tmp, 503, "too many API connections (16); close one and retry", false);
	drain(fd);
	close(fd);
}

/* A client that started a request and stalls gets 408 and loses its connection (it would hold one
 * of the API_MAX_CONNS slots forever). Returns the poll timeout until the next deadline, -1 = none. */
static int expire_stalled(struct api_server *s)
{
	uint64_t now = cella_now_ns();
	int64_t next = -1;
	for (size_t i = 0; i < API_MAX_CONNS; i++) {
		struct conn *c = &s->conns[i];
		if (c->fd < 0 || !c->len)
			continue;
		uint64_t age_ms = (now - c->since_ns) / 1000000;
		if (age_ms >= API_REQUEST_TIMEOUT_MS) {
			atomic_fetch_add(&s->chan.rejected, 1);
			log_debug("api: request incomplete after %d ms: dropping the connection", API_REQUEST_TIMEOUT_MS);
			send_fault(c, 408, "request not completed within 5 s", false);
			conn_close(c);
			continue;
		}
		int64_t left = (int64_t)(API_REQUEST_TIMEOUT_MS - age_ms) + 1;
		if (next < 0 || left < next)
			next = left;
	}
	return (int)next;
}

static void *api_thread(void *arg)
{
	struct api_server *s = arg;
	pthread_setname_np(pthread_self(), "api");
	for (;;) {
		int timeout = expire_stalled(s);
		struct pollfd fds[2 + API_MAX_CONNS];
		fds[0] = (struct pollfd){ .fd = s->stop_fd, .events = POLLIN };
		fds[1] = (struct pollfd){ .fd = s->listen_fd, .events = POLLIN };
		for (size_t i = 0; i < API_MAX_CONNS; i++)
			fds[2 + i] = (struct pollfd){ .fd = s->conns[i].fd, .events = POLLIN };
		if (poll(fds, ARRAY_SIZE(fds), timeout) < 0) {
			if (errno == EINTR)
				continue;
			log_error("api: poll: %s", strerror(errno));
			break;
		}
		if (fds[0].revents)
			break;
		for (size_t i = 0; i < API_MAX_CONNS; i++)
			if (fds[2 + i].revents && !conn_read(s, &s->conns[i]))
				conn_close(&s->conns[i]);
		if (fds[1].revents & POLLIN)
			accept_one(s);
	}
	return NULL;
}

/* --- setup and teardown --- */

/* A unix socket file whose listener is gone (its process was SIGKILLed): connect is refused. Any
 * other file, or a live socket, is left alone. */
static bool stale_socket(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
		return false;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool stale = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno == ECONNREFUSED;
	close(fd);
	return stale;
}

int api_server_start(const char *path, struct api_server **out, struct cella_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	/* Bound under a temporary name, listening, then renamed into place: a client that sees the path
	 * can connect at once. */
	char tmp[sizeof(sa.sun_path) + 32];
	if (!*path || strlen(path) >= sizeof(sa.sun_path) - 16)
		return cella_err_set(err, ENAMETOOLONG, "api-sock: \"%s\": a path of 1..%zu bytes is needed", path,
				     sizeof(sa.sun_path) - 17);
	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
	memcpy(sa.sun_path, tmp, strlen(tmp));
	struct api_server *s = calloc(1, sizeof(*s));
	if (!s)
		return cella_err_set(err, ENOMEM, "out of memory");
	s->listen_fd = s->stop_fd = s->chan.wake_fd = -1;
	for (size_t i = 0; i < API_MAX_CONNS; i++)
		s->conns[i].fd = -1;
	pthread_mutex_init(&s->chan.lock, NULL);
	pthread_cond_init(&s->chan.cond, NULL);
	int r;
	if (!(s->path = strdup(path))) {
		r = cella_err_set(err, ENOMEM, "out of memory");
		goto fail;
	}
	s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->chan.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->stop_fd < 0 || s->chan.wake_fd < 0 || s->listen_fd < 0) {
		r = cella_err_sys(err, errno, "api-sock: creating the socket");
		goto fail;
	}
	/* The socket file gets the socket inode's mode (less the umask) at bind: owner-only from the
	 * start, with no window where others could connect. */
	if (fchmod(s->listen_fd, 0600) < 0) {
		r = cella_err_sys(err, errno, "api-sock: fchmod");
		goto fail;
	}
	if (bind(s->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = cella_err_sys(err, errno, "api-sock: bind %s", tmp);
		goto fail;
	}
	if (listen(s->listen_fd, API_MAX_CONNS) < 0) {
		r = cella_err_sys(err, errno, "api-sock: listen");
		goto fail_unlink;
	}
	int moved = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE);
	if (moved < 0 && errno == EEXIST && stale_socket(path)) {
		log_warn("api-sock: removing %s, a socket nobody listens on (left by a killed cella-vmm?)", path);
		if (unlink(path) == 0)
			moved = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE);
		else
			errno = EEXIST;
	}
	if (moved < 0) {
		r = errno == EEXIST ? cella_err_set(err, EEXIST, "api-sock: %s already exists (and is not a stale "
						    "socket); remove it or choose another path", path)
				    : cella_err_sys(err, errno, "api-sock: %s", path);
		goto fail_unlink;
	}
	struct stat st;
	if (stat(path, &st) == 0) {
		s->dev = st.st_dev;
		s->ino = st.st_ino;
	}
	int e = pthread_create(&s->thread, NULL, api_thread, s);
	if (e) {
		r = cella_err_sys(err, e, "api-sock: creating the API thread");
		unlink(path);
		goto fail;
	}
	s->started = true;
	log_debug("api: listening on %s", path);
	*out = s;
	return 0;
fail_unlink:
	unlink(tmp);
fail:
	s->dev = 0;
	s->ino = 0;
	api_server_stop(s);
	return r;
}

void api_server_stop(struct api_server *s)
{
	if (!s)
		return;
	if (s->started) {
		uint64_t one = 1;
		if (write(s->stop_fd, &one, sizeof(one)) < 0)
			log_debug("api: stop: %s", strerror(errno));
		pthread_join(s->thread, NULL);
	}
	for (size_t i = 0; i < API_MAX_CONNS; i++)
		conn_close(&s->conns[i]);
	/* Remove the socket file only if it is still the one we created. */
	struct stat st;
	if (s->path && s->ino && stat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino &&
	    unlink(s->path) < 0)
		log_warn("api: removing %s: %s", s->path, strerror(errno));
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->stop_fd >= 0)
		close(s->stop_fd);
	if (s->chan.wake_fd >= 0)
		close(s->chan.wake_fd);
	pthread_mutex_destroy(&s->chan.lock);
	pthread_cond_destroy(&s->chan.cond);
	free(s->path);
	free(s);
}
