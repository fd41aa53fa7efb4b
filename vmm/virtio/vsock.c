/* virtio-vsock with hybrid unix sockets: see vsock.h.
 *
 * A connection is identified by (local_port, peer_port): the host-side port (the port a guest
 * connected to, or the ephemeral port we picked for a host client) and the guest's port. Its life:
 *
 *   HANDSHAKE   host client accepted, waiting for "CONNECT <port>\n" (the guest knows nothing yet)
 *   CONNECTING  REQUEST owed or sent to the guest, waiting for RESPONSE or RST
 *   ESTABLISHED data both ways; SHUTDOWN flags per direction
 *   DEAD        host socket closed, an RST is owed to the guest; freed once sent
 *
 * Packets we owe the guest are bits in c->owe and go out when the guest gives rx buffers; every
 * packet's header also carries our credit (buf_alloc, fwd_cnt). Host sockets are in an edge-triggered
 * epoll set: an edge sets c->readable / c->writable and the pumps run until EAGAIN, out of credit or
 * out of rx buffers, so nothing spins. */
#include "vmm/virtio/vsock.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"

#define ORPHAN_RING 64u            /* RSTs owed without a connection */
#define EPHEMERAL_FIRST (1u << 30) /* host clients' ports, as Firecracker numbers them */
#define CONNECT_LINE_MAX 32u       /* "CONNECT 4294967295\r\n" fits */
#define LOG_BURST 10u              /* malformed-packet log lines per second */

enum conn_state { C_HANDSHAKE, C_CONNECTING, C_ESTABLISHED, C_DEAD };

enum {
	OWE_REQUEST = 1,
	OWE_RESPONSE = 2,
	OWE_CREDIT = 4,
	OWE_SHUTDOWN = 8,
	OWE_RST = 16,
};

struct conn {
	int fd; /* host socket, -1 once closed */
	uint64_t serial;
	enum conn_state state;
	uint32_t local_port, peer_port;
	unsigned owe;
	uint64_t deadline_ns; /* 0 = none */
	bool readable, writable;
	bool host_eof, host_hup; /* host stopped sending / closed entirely */
	bool wr_shut;            /* we did shutdown(SHUT_WR) on the host socket */
	uint8_t peer_shut;       /* SHUTDOWN flags the guest sent */
	/* guest -> host: counters of our receive buffer, and the bytes the host has not taken yet */
	uint32_t rx_cnt, fwd_cnt, fwd_told;
	uint8_t *buf; /* ring of VSOCK_BUF_ALLOC bytes, allocated while non-empty */
	uint32_t head, used;
	/* host -> guest: the guest's credit */
	uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt;
};

struct orphan {
	uint64_t src_cid; /* the CID the guest addressed */
	uint32_t src_port, dst_port;
};

struct vsock {
	uint64_t cid;
	char *uds;
	int (*connect)(void *ctx, uint32_t port);
	void *connect_ctx;
	int listen_fd, epoll_fd, timer_fd;
	bool timer_armed, listen_paused;
	struct virtio_mmio *t;
	struct conn *conns[VSOCK_MAX_CONNS]; /* dense: [0, nconns) */
	unsigned nconns, rr, max_conns;
	uint32_t next_port;
	uint64_t next_serial;
	struct orphan orphans[ORPHAN_RING];
	unsigned orphan_head, orphan_n;
	bool rx_held; /* rx_chain was popped and not used yet */
	bool reset_owed; /* a TRANSPORT_RESET waits for an event buffer */
	struct vq_chain rx_chain, tx_chain, ev_chain;
	uint8_t scratch[VSOCK_MAX_PKT];
	/* rate-limited logging */
	uint64_t log_window_ns;
	unsigned log_count, log_suppressed;
	struct vsock_stats stats;
};

/* epoll data: these two, or a connection's serial (never reused, unlike its address) */
#define TAG_LISTEN 1u
#define TAG_TIMER 2u

/* --- logging --- */

static void vlog(struct vsock *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vlog(struct vsock *v, const char *fmt, ...)
{
	uint64_t now = cella_now_ns();
	if (now - v->log_window_ns >= 1000000000ull) {
		if (v->log_suppressed)
			log_warn("virtio-vsock: %u more messages suppressed", v->log_suppressed);
		v->log_window_ns = now;
		v->log_count = v->log_suppressed = 0;
	}
	if (v->log_count >= LOG_BURST) {
		v->log_suppressed++;
		return;
	}
	v->log_count++;
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warn("virtio-vsock: %s", msg);
}

/* --- guest buffers --- */

/* Copies up to len bytes from the chain's readable (or writable) buffers starting at byte off. */
static uint64_t chain_copy(const struct vq_chain *c, bool writable, uint64_t off, void *data, uint64_t len, bool to)
{
	uint64_t done = 0;
	unsigned first = writable ? c->n_out : 0, end = writable ? c->n : c->n_out;
	for (unsigned i = first; i < end && done < len; i++) {
		uint64_t l = c->buf[i].len;
		if (off >= l) {
			off -= l;
			continue;
		}
		uint64_t n = l - off < len - done ? l - off : len - done;
		if (to)
			memcpy(c->buf[i].addr + off, (uint8_t *)data + done, n);
		else
			memcpy((uint8_t *)data + done, c->buf[i].addr + off, n);
		done += n;
		off = 0;
	}
	return done;
}

/* iovecs over [off, off + len) of the readable or writable buffers; returns the count. */
static unsigned chain_iov(const struct vq_chain *c, bool writable, uint64_t off, uint64_t len, struct iovec *iov,
			  unsigned max)
{
	unsigned n = 0;
	unsigned first = writable ? c->n_out : 0, end = writable ? c->n : c->n_out;
	for (unsigned i = first; i < end && len && n < max; i++) {
		uint64_t l = c->buf[i].len;
		if (off >= l) {
			off -= l;
			continue;
		}
		uint64_t take = l - off < len ? l - off : len;
		iov[n++] = (struct iovec){ .iov_base = c->buf[i].addr + off, .iov_len = take };
		len -= take;
		off = 0;
	}
	return n;
}

/* --- connections --- */

static struct conn *conn_find(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
	for (unsigned i = 0; i < v->nconns; i++) {
		struct conn *c = v->conns[i];
		if (c->state != C_HANDSHAKE && c->local_port == local_port && c->peer_port == peer_port)
			return c;
	}
	return NULL;
}

static struct conn *conn_new(struct vsock *v, int fd)
{
	if (v->nconns >= v->max_conns)
		return NULL;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = fd;
	c->serial = v->next_serial++;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = c->serial };
	if (epoll_ctl(v->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		vlog(v, "epoll_ctl: %s", strerror(errno));
		free(c);
		return NULL;
	}
	v->conns[v->nconns++] = c;
	return c;
}

static void conn_close_fd(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd); /* also leaves the epoll set */
	c->fd = -1;
	free(c->buf);
	c->buf = NULL;
	c->used = c->head = 0;
	c->readable = c->writable = false;
}

/* Forgets the connection without telling the guest (it sent RST, reset, or never knew it). */
static void conn_free(struct vsock *v, struct conn *c)
{
	conn_close_fd(c);
	for (unsigned i = 0; i < v->nconns; i++)
		if (v->conns[i] == c) {
			v->conns[i] = v->conns[--v->nconns]; /* order does not matter */
			v->conns[v->nconns] = NULL;
			break;
		}
	free(c);
}

/* Closes the host side and owes the guest an RST (sent when an rx buffer comes). */
static void conn_reset(struct vsock *v, struct conn *c)
{
	if (c->state == C_HANDSHAKE || (c->state == C_CONNECTING && (c->owe & OWE_REQUEST))) {
		conn_free(v, c); /* the guest never heard of it */
		return;
	}
	conn_close_fd(c);
	c->state = C_DEAD;
	c->owe = OWE_RST;
	c->deadline_ns = 0;
}

static void orphan_rst(struct vsock *v, const struct vsock_hdr *h)
{
	if (le16toh(h->op) == VSOCK_OP_RST)
		return; /* never answer an RST */
	if (v->orphan_n == ORPHAN_RING) {
		vlog(v, "RST ring full: dropping the RST for guest port %" PRIu32, le32toh(h->src_port));
		return;
	}
	v->orphans[(v->orphan_head + v->orphan_n++) % ORPHAN_RING] = (struct orphan){
		.src_cid = le64toh(h->dst_cid),
		.src_port = le32toh(h->dst_port),
		.dst_port = le32toh(h->src_port),
	};
}

static uint32_t peer_credit(const struct conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight > c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static bool can_send_data(const struct conn *c)
{
	return c->state == C_ESTABLISHED && c->readable && !c->host_eof && !(c->peer_shut & VSOCK_SHUTDOWN_RCV) &&
	       peer_credit(c) > 0;
}

/* Owe a CREDIT_UPDATE once the guest believes less than half our buffer is free and we freed some. */
static void credit_check(struct conn *c)
{
	if (c->state != C_ESTABLISHED || c->fwd_cnt == c->fwd_told)
		return;
	if (c->rx_cnt - c->fwd_told >= VSOCK_BUF_ALLOC / 2)
		c->owe |= OWE_CREDIT;
}

static void arm_timer(struct vsock *v, bool on);

/* The timer ticks while any connection has a deadline; check_deadlines stops it when none has. */
static void set_deadline(struct vsock *v, struct conn *c, unsigned ms)
{
	c->deadline_ns = cella_now_ns() + (uint64_t)ms * 1000000ull;
	arm_timer(v, true);
}

/* Both directions are over and nothing is left to give the host: reset (Linux expects our RST). */
static void maybe_finish(struct vsock *v, struct conn *c)
{
	if (c->state != C_ESTABLISHED || c->used)
		return;
	bool guest_done = (c->peer_shut & (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND)) ==
			  (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND);
	bool both_sent = (c->peer_shut & VSOCK_SHUTDOWN_SEND) && c->host_eof;
	if (guest_done || both_sent) {
		conn_reset(v, c);
		return;
	}
	if ((c->peer_shut & VSOCK_SHUTDOWN_SEND) && !c->wr_shut && c->fd >= 0) {
		shutdown(c->fd, SHUT_WR); /* the host reader sees end of file */
		c->wr_shut = true;
	}
}

/* Writes buffered guest data to the host socket. */
static void conn_drain(struct vsock *v, struct conn *c)
{
	while (c->used && c->writable && c->fd >= 0) {
		struct iovec iov[2];
		uint32_t first = VSOCK_BUF_ALLOC - c->head < c->used ? VSOCK_BUF_ALLOC - c->head : c->used;
		iov[0] = (struct iovec){ c->buf + c->head, first };
		iov[1] = (struct iovec){ c->buf, c->used - first };
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = c->used > first ? 2 : 1 };
		ssize_t n = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				c->writable = false;
				break;
			}
			conn_reset(v, c); /* EPIPE, ECONNRESET: the host client is gone */
			return;
		}
		c->head = (c->head + (uint32_t)n) % VSOCK_BUF_ALLOC;
		c->used -= (uint32_t)n;
		c->fwd_cnt += (uint32_t)n;
	}
	if (!c->used && c->buf) {
		free(c->buf); /* only stuck connections hold a buffer */
		c->buf = NULL;
		c->head = 0;
	}
	credit_check(c);
	maybe_finish(v, c);
}

/* RW from the guest: [HDR, HDR + len) of the chain's readable part, len checked by the caller. */
static void conn_forward(struct vsock *v, struct conn *c, const struct vq_chain *ch, uint32_t len)
{
	if (c->peer_shut & VSOCK_SHUTDOWN_SEND) {
		vlog(v, "guest port %" PRIu32 ": data after SHUTDOWN(SEND); resetting", c->peer_port);
		v->stats.bad_packets++;
		conn_reset(v, c);
		return;
	}
	if (len > VSOCK_BUF_ALLOC - (c->rx_cnt - c->fwd_cnt)) {
		vlog(v, "guest port %" PRIu32 ": %" PRIu32 " bytes exceed the credit we gave; resetting", c->peer_port,
		     len);
		v->stats.bad_packets++;
		conn_reset(v, c);
		return;
	}
	c->rx_cnt += len;
	uint32_t off = 0;
	if (!c->used && c->fd >= 0) {
		struct iovec iov[64];
		unsigned n = chain_iov(ch, false, VSOCK_HDR_LEN, len, iov, 64);
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = n };
		ssize_t w;
		do
			w = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
		while (w < 0 && errno == EINTR);
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			conn_reset(v, c);
			return;
		}
		if (w > 0) {
			off = (uint32_t)w;
			c->fwd_cnt += off;
		}
		if (off < len)
			c->writable = false;
	}
	if (off < len) {
		if (!c->buf && !(c->buf = malloc(VSOCK_BUF_ALLOC))) {
			vlog(v, "guest port %" PRIu32 ": out of memory; resetting", c->peer_port);
			conn_reset(v, c);
			return;
		}
		uint32_t rest = len - off, tail = (c->head + c->used) % VSOCK_BUF_ALLOC;
		while (rest) { /* the credit check above keeps used + rest <= VSOCK_BUF_ALLOC */
			uint32_t room = VSOCK_BUF_ALLOC - tail;
			uint32_t n = rest < room ? rest : room;
			chain_copy(ch, false, VSOCK_HDR_LEN + off, c->buf + tail, n, false);
			off += n;
			rest -= n;
			c->used += n;
			tail = (tail + n) % VSOCK_BUF_ALLOC;
		}
	}
	credit_check(c);
}

/* --- packets to the guest --- */

static void fill_hdr(struct vsock *v, struct conn *c, struct vsock_hdr *h, uint16_t op, uint32_t len, uint32_t flags)
{
	*h = (struct vsock_hdr){
		.src_cid = htole64(VSOCK_HOST_CID),
		.dst_cid = htole64(v->cid),
		.src_port = htole32(c->local_port),
		.dst_port = htole32(c->peer_port),
		.len = htole32(len),
		.type = htole16(VSOCK_TYPE_STREAM),
		.op = htole16(op),
		.flags = htole32(flags),
		.buf_alloc = htole32(VSOCK_BUF_ALLOC),
		.fwd_cnt = htole32(c->fwd_cnt),
	};
	c->fwd_told = c->fwd_cnt;
	c->owe &= ~(unsigned)OWE_CREDIT; /* every header carries the credit */
}

/* Reads host data into the chain after the header. Returns bytes (> 0), 0 for nothing now. */
static uint32_t conn_read(struct vsock *v, struct conn *c, const struct vq_chain *ch)
{
	uint64_t room = ch->in_bytes - VSOCK_HDR_LEN;
	uint32_t want = peer_credit(c);
	if (want > VSOCK_MAX_PKT)
		want = VSOCK_MAX_PKT;
	if (want > room)
		want = (uint32_t)room;
	if (!want)
		return 0;
	struct iovec iov[64];
	unsigned n = chain_iov(ch, true, VSOCK_HDR_LEN, want, iov, 64);
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = n };
	ssize_t r;
	do
		r = recvmsg(c->fd, &m, MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	if (r > 0)
		return (uint32_t)r;
	if (r == 0) {
		c->host_eof = true;
		c->readable = false;
		c->owe |= OWE_SHUTDOWN;
	} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
		c->readable = false;
	} else {
		conn_reset(v, c);
	}
	return 0;
}

/* Puts the next packet connection c owes into the held rx chain. Returns its length, 0 if none. */
static uint32_t conn_emit(struct vsock *v, struct conn *c, const struct vq_chain *ch)
{
	struct vsock_hdr h;
	uint32_t len = 0;
	if (c->owe & OWE_RST) {
		fill_hdr(v, c, &h, VSOCK_OP_RST, 0, 0);
		chain_copy(ch, true, 0, &h, VSOCK_HDR_LEN, true);
		v->stats.rsts_sent++;
		conn_free(v, c);
		return VSOCK_HDR_LEN;
	}
	if (c->owe & OWE_REQUEST) {
		c->owe &= ~(unsigned)OWE_REQUEST;
		fill_hdr(v, c, &h, VSOCK_OP_REQUEST, 0, 0);
	} else if (c->owe & OWE_RESPONSE) {
		c->owe &= ~(unsigned)OWE_RESPONSE;
		fill_hdr(v, c, &h, VSOCK_OP_RESPONSE, 0, 0);
	} else if (can_send_data(c) && (len = conn_read(v, c, ch)) > 0) {
		c->tx_cnt += len;
		fill_hdr(v, c, &h, VSOCK_OP_RW, len, 0);
	} else if (c->state == C_DEAD) {
		return conn_emit(v, c, ch); /* the read found the host gone */
	} else if (c->owe & OWE_CREDIT) {
		fill_hdr(v, c, &h, VSOCK_OP_CREDIT_UPDATE, 0, 0);
	} else if (c->owe & OWE_SHUTDOWN) {
		c->owe &= ~(unsigned)OWE_SHUTDOWN;
		uint32_t flags = VSOCK_SHUTDOWN_SEND | (c->host_hup ? VSOCK_SHUTDOWN_RCV : 0);
		fill_hdr(v, c, &h, VSOCK_OP_SHUTDOWN, 0, flags);
		if (!c->deadline_ns)
			set_deadline(v, c, VSOCK_CLOSE_MS);
		maybe_finish(v, c); /* the guest had already shut its side: the header goes, then an RST */
	} else {
		return 0;
	}
	chain_copy(ch, true, 0, &h, VSOCK_HDR_LEN, true);
	return VSOCK_HDR_LEN + len;
}

static bool conn_has_work(const struct conn *c)
{
	return c->owe || can_send_data(c);
}

static bool rx_work(struct vsock *v)
{
	if (v->orphan_n)
		return true;
	for (unsigned i = 0; i < v->nconns; i++)
		if (conn_has_work(v->conns[i]))
			return true;
	return false;
}

/* Fills rx buffers with what is owed, round robin over connections. Lock held. */
static void rx_pump(struct vsock *v)
{
	struct vq *q = v->t ? virtio_mmio_queue(v->t, VSOCK_RXQ) : NULL;
	if (!q)
		return;
	bool pushed = false;
	struct cella_err err = { 0 };
	for (;;) {
		if (!v->rx_held) {
			if (!rx_work(v))
				break;
			int r = vq_pop(q, &v->rx_chain, &err);
			if (r < 0) {
				virtio_mmio_fail(v->t, err.msg);
				return;
			}
			if (r == 0)
				break; /* no buffers: the driver's next rx notify resumes */
			if (v->rx_chain.n_out || v->rx_chain.in_bytes < VSOCK_HDR_LEN) {
				vlog(v, "rx buffer %u: %" PRIu64 " writable bytes, %u readable descriptors; dropped",
				     v->rx_chain.head, v->rx_chain.in_bytes, v->rx_chain.n_out);
				v->stats.bad_packets++;
				vq_push(q, v->rx_chain.head, 0);
				pushed = true;
				continue;
			}
			v->rx_held = true;
		}
		uint32_t len = 0;
		if (v->orphan_n) {
			struct orphan *o = &v->orphans[v->orphan_head];
			struct vsock_hdr h = {
				.src_cid = htole64(o->src_cid),
				.dst_cid = htole64(v->cid),
				.src_port = htole32(o->src_port),
				.dst_port = htole32(o->dst_port),
				.type = htole16(VSOCK_TYPE_STREAM),
				.op = htole16(VSOCK_OP_RST),
			};
			chain_copy(&v->rx_chain, true, 0, &h, VSOCK_HDR_LEN, true);
			v->orphan_head = (v->orphan_head + 1) % ORPHAN_RING;
			v->orphan_n--;
			v->stats.rsts_sent++;
			len = VSOCK_HDR_LEN;
		}
		for (unsigned k = 0, n = v->nconns; k < n && !len; k++) {
			unsigned i = (v->rr + k) % n;
			struct conn *c = v->conns[i];
			if (conn_has_work(c) && (len = conn_emit(v, c, &v->rx_chain)) > 0)
				v->rr = i + 1;
		}
		if (!len)
			break; /* the work went away (EAGAIN): keep the buffer for later */
		vq_push(q, v->rx_chain.head, len);
		v->rx_held = false;
		pushed = true;
	}
	if (pushed)
		virtio_mmio_used(v->t, VSOCK_RXQ);
}

/* --- packets from the guest --- */

static void bad_packet(struct vsock *v, const struct vsock_hdr *h, const char *why)
{
	v->stats.bad_packets++;
	vlog(v, "malformed packet (op %u, guest port %" PRIu32 " -> port %" PRIu32 "): %s", le16toh(h->op),
	     le32toh(h->src_port), le32toh(h->dst_port), why);
}

static int default_connect(struct vsock *v, uint32_t port)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%" PRIu32, v->uds, port) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* a unix connect never waits: it succeeds, or fails with EAGAIN when the backlog is full */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

static void guest_request(struct vsock *v, const struct vsock_hdr *h)
{
	uint32_t port = le32toh(h->dst_port);
	if (v->nconns >= v->max_conns) {
		vlog(v, "connection limit (%u) reached: RST for guest port %" PRIu32, v->max_conns,
		     le32toh(h->src_port));
		orphan_rst(v, h);
		return;
	}
	int fd = v->connect ? v->connect(v->connect_ctx, port) : v->uds ? default_connect(v, port) : -ECONNREFUSED;
	if (fd < 0) {
		log_debug("virtio-vsock: guest connect to port %" PRIu32 ": %s", port, strerror(-fd));
		orphan_rst(v, h);
		return;
	}
	struct conn *c = conn_new(v, fd);
	if (!c) {
		close(fd);
		orphan_rst(v, h);
		return;
	}
	c->state = C_ESTABLISHED;
	c->local_port = port;
	c->peer_port = le32toh(h->src_port);
	c->peer_buf_alloc = le32toh(h->buf_alloc);
	c->peer_fwd_cnt = le32toh(h->fwd_cnt);
	c->readable = c->writable = true; /* edges before now were not seen */
	c->owe = OWE_RESPONSE;
}

static void guest_shutdown(struct vsock *v, struct conn *c, uint32_t flags)
{
	c->peer_shut |= flags & (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND);
	if (c->used && !c->deadline_ns)
		set_deadline(v, c, VSOCK_CLOSE_MS); /* a host that never reads is not waited for */
	maybe_finish(v, c);
}

/* One packet from the tx queue: every header field checked before use. */
static void tx_packet(struct vsock *v, const struct vq_chain *ch)
{
	struct vsock_hdr h;
	if (ch->out_bytes < VSOCK_HDR_LEN) {
		v->stats.bad_packets++;
		vlog(v, "tx chain %u: %" PRIu64 " readable bytes, shorter than the %u-byte header; dropped", ch->head,
		     ch->out_bytes, VSOCK_HDR_LEN);
		return;
	}
	chain_copy(ch, false, 0, &h, VSOCK_HDR_LEN, false); /* one read of the guest's header */
	uint64_t src_cid = le64toh(h.src_cid), dst_cid = le64toh(h.dst_cid);
	uint32_t len = le32toh(h.len);
	uint16_t op = le16toh(h.op), type = le16toh(h.type);
	if (src_cid != v->cid) {
		bad_packet(v, &h, "source CID is not the guest's; dropped");
		return;
	}
	if (dst_cid != VSOCK_HOST_CID) {
		bad_packet(v, &h, "destination CID is not the host (2)");
		orphan_rst(v, &h);
		return;
	}
	struct conn *c = conn_find(v, le32toh(h.dst_port), le32toh(h.src_port));
	if (type != VSOCK_TYPE_STREAM || len > VSOCK_MAX_PKT || len > ch->out_bytes - VSOCK_HDR_LEN ||
	    (len && op != VSOCK_OP_RW) || op == VSOCK_OP_INVALID || op > VSOCK_OP_CREDIT_REQUEST) {
		bad_packet(v, &h, type != VSOCK_TYPE_STREAM ? "not a stream packet"
				  : len > VSOCK_MAX_PKT ? "payload over 64 KiB"
				  : len > ch->out_bytes - VSOCK_HDR_LEN ? "len beyond the buffers"
				  : (len && op != VSOCK_OP_RW) ? "payload on a control packet"
							       : "unknown op");
		if (c)
			conn_reset(v, c);
		else
			orphan_rst(v, &h);
		return;
	}
	if (op == VSOCK_OP_REQUEST) {
		if (c) {
			bad_packet(v, &h, "REQUEST for a connection that exists");
			conn_reset(v, c);
			return;
		}
		guest_request(v, &h);
		return;
	}
	if (!c || c->state == C_DEAD) {
		if (op != VSOCK_OP_RST && !c)
			orphan_rst(v, &h); /* a DEAD one owes its RST already */
		else if (op == VSOCK_OP_RST && c)
			conn_free(v, c); /* crossed RSTs */
		return;
	}
	/* any packet updates the guest's credit; a fwd_cnt beyond what we sent just leaves credit at 0 */
	c->peer_buf_alloc = le32toh(h.buf_alloc);
	c->peer_fwd_cnt = le32toh(h.fwd_cnt);
	switch (op) {
	case VSOCK_OP_RST:
		conn_free(v, c);
		return;
	case VSOCK_OP_RESPONSE: {
		if (c->state != C_CONNECTING || (c->owe & OWE_REQUEST)) {
			bad_packet(v, &h, "RESPONSE without a REQUEST");
			conn_reset(v, c);
			return;
		}
		char ok[32];
		int n = snprintf(ok, sizeof(ok), "OK %" PRIu32 "\n", c->local_port);
		/* a fresh socket's buffer takes a few bytes; anything else means the client is gone */
		if (send(c->fd, ok, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) != n) {
			conn_reset(v, c);
			return;
		}
		c->state = C_ESTABLISHED;
		c->deadline_ns = 0;
		c->readable = c->writable = true; /* bytes sent after CONNECT wait in the socket */
		return;
	}
	case VSOCK_OP_RW:
		if (c->state != C_ESTABLISHED) {
			bad_packet(v, &h, "data before the connection was accepted");
			conn_reset(v, c);
			return;
		}
		if (len)
			conn_forward(v, c, ch, len);
		return;
	case VSOCK_OP_CREDIT_UPDATE:
		return;
	case VSOCK_OP_CREDIT_REQUEST:
		c->owe |= OWE_CREDIT;
		return;
	case VSOCK_OP_SHUTDOWN:
		guest_shutdown(v, c, le32toh(h.flags));
		return;
	}
}

static void tx_process(struct vsock *v)
{
	struct vq *q = virtio_mmio_queue(v->t, VSOCK_TXQ);
	if (!q)
		return;
	struct cella_err err = { 0 };
	int r;
	bool pushed = false;
	while ((r = vq_pop(q, &v->tx_chain, &err)) > 0) {
		tx_packet(v, &v->tx_chain);
		vq_push(q, v->tx_chain.head, 0);
		pushed = true;
	}
	if (r < 0)
		virtio_mmio_fail(v->t, err.msg);
	if (pushed)
		virtio_mmio_used(v->t, VSOCK_TXQ);
}

/* --- host side --- */

static void arm_timer(struct vsock *v, bool on)
{
	if (on == v->timer_armed)
		return;
	struct itimerspec its = { 0 };
	if (on)
		its.it_interval.tv_nsec = its.it_value.tv_nsec = 250 * 1000000L;
	timerfd_settime(v->timer_fd, 0, &its, NULL);
	v->timer_armed = on;
}

static void host_accept(struct vsock *v)
{
	for (;;) {
		int fd = accept4(v->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				/* out of fds or memory: the listener stays readable, so rather than spin, stop
				 * watching it until the next timer tick */
				vlog(v, "accept on %s: %s; pausing the listener", v->uds, strerror(errno));
				if (epoll_ctl(v->epoll_fd, EPOLL_CTL_DEL, v->listen_fd, NULL) == 0) {
					v->listen_paused = true;
					arm_timer(v, true);
				}
			}
			return;
		}
		struct conn *c = conn_new(v, fd);
		if (!c) {
			vlog(v, "connection limit (%u) reached: closing a host client", v->max_conns);
			close(fd);
			continue;
		}
		c->state = C_HANDSHAKE;
		c->readable = true;
		set_deadline(v, c, VSOCK_HANDSHAKE_MS);
	}
}

static bool port_in_use(struct vsock *v, uint32_t local, uint32_t peer)
{
	return conn_find(v, local, peer) != NULL;
}

/* "CONNECT <port>\n": peeked first so bytes after the line stay in the socket for the guest. */
static void host_handshake(struct vsock *v, struct conn *c)
{
	char line[CONNECT_LINE_MAX + 1];
	ssize_t n;
	do
		n = recv(c->fd, line, CONNECT_LINE_MAX, MSG_PEEK | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	c->readable = false;
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	if (n <= 0) {
		conn_free(v, c);
		return;
	}
	char *nl = memchr(line, '\n', (size_t)n);
	if (!nl) {
		if (n == CONNECT_LINE_MAX) {
			vlog(v, "host client: no CONNECT line in %u bytes; closing", CONNECT_LINE_MAX);
			conn_free(v, c);
		}
		return; /* wait for the rest of the line */
	}
	size_t line_len = (size_t)(nl - line) + 1;
	if (recv(c->fd, line, line_len, MSG_DONTWAIT) != (ssize_t)line_len) {
		conn_free(v, c);
		return;
	}
	*nl = '\0';
	if (nl > line && nl[-1] == '\r')
		nl[-1] = '\0';
	uint64_t port;
	if (strncmp(line, "CONNECT ", 8) || cella_parse_uint64(line + 8, &port) < 0 || port > UINT32_MAX) {
		vlog(v, "host client: expected \"CONNECT <port>\", got \"%.*s\"; closing", (int)CONNECT_LINE_MAX, line);
		conn_free(v, c);
		return;
	}
	uint32_t local = 0;
	for (unsigned tries = 0; tries < 2 * VSOCK_MAX_CONNS; tries++) {
		uint32_t p = v->next_port++;
		if (v->next_port < EPHEMERAL_FIRST)
			v->next_port = EPHEMERAL_FIRST;
		if (!port_in_use(v, p, (uint32_t)port)) {
			local = p;
			break;
		}
	}
	if (!local) {
		conn_free(v, c);
		return;
	}
	c->local_port = local;
	c->peer_port = (uint32_t)port;
	c->state = C_CONNECTING;
	c->owe = OWE_REQUEST;
	set_deadline(v, c, VSOCK_HANDSHAKE_MS);
}

static void host_event(struct vsock *v, struct conn *c, uint32_t events)
{
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->readable = true;
	if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
		c->writable = true;
	if (events & EPOLLHUP)
		c->host_hup = true;
	switch (c->state) {
	case C_HANDSHAKE:
		host_handshake(v, c);
		return;
	case C_CONNECTING:
		if (events & (EPOLLHUP | EPOLLERR))
			conn_reset(v, c); /* the client gave up before the guest answered */
		return;
	case C_ESTABLISHED:
		if (c->host_hup && (c->peer_shut & VSOCK_SHUTDOWN_RCV)) {
			conn_reset(v, c); /* nobody will read what is left */
			return;
		}
		if (c->writable && c->used)
			conn_drain(v, c);
		return;
	case C_DEAD:
		return;
	}
}

static void check_deadlines(struct vsock *v)
{
	uint64_t now = cella_now_ns();
	bool any = false;
	for (unsigned i = v->nconns; i-- > 0;) { /* backwards: a reset may free conns[i] */
		struct conn *c = v->conns[i];
		if (!c->deadline_ns)
			continue;
		if (now < c->deadline_ns) {
			any = true;
			continue;
		}
		log_debug("virtio-vsock: port %" PRIu32 " <-> guest port %" PRIu32 ": timed out in state %d", c->local_port,
			  c->peer_port, (int)c->state);
		conn_reset(v, c);
	}
	if (v->listen_paused) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
		if (epoll_ctl(v->epoll_fd, EPOLL_CTL_ADD, v->listen_fd, &ev) == 0)
			v->listen_paused = false;
		else
			any = true;
	}
	arm_timer(v, any);
}


void vsock_run(struct vsock *v)
{
	struct epoll_event evs[64];
	if (v->t)
		virtio_mmio_lock(v->t);
	for (int round = 0; round < 16; round++) {
		int n = epoll_wait(v->epoll_fd, evs, 64, 0);
		if (n <= 0)
			break;
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			if (tag == TAG_LISTEN) {
				host_accept(v);
			} else if (tag == TAG_TIMER) {
				uint64_t ticks;
				if (read(v->timer_fd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
					vlog(v, "timerfd: %s", strerror(errno));
				check_deadlines(v);
			} else {
				/* by serial: a connection freed earlier in this batch may still have events here */
				for (unsigned k = 0; k < v->nconns; k++)
					if (v->conns[k]->serial == tag) {
						host_event(v, v->conns[k], evs[i].events);
						break;
					}
			}
		}
		if (n < 64)
			break;
	}
	rx_pump(v);
	if (v->t)
		virtio_mmio_unlock(v->t);
}

/* --- virtio ops --- */

static void vsock_read_config(void *dev, uint32_t off, uint8_t *data, uint32_t len)
{
	struct vsock *v = dev;
	uint64_t cid = htole64(v->cid);
	uint8_t cfg[8];
	memcpy(cfg, &cid, 8);
	if (off < 8)
		memcpy(data, cfg + off, len <= 8 - off ? len : 8 - off);
}

static void send_reset_event(struct vsock *v);

static void vsock_notify(void *dev, struct virtio_mmio *t, unsigned q)
{
	struct vsock *v = dev;
	v->t = t;
	if (q == VSOCK_TXQ)
		tx_process(v);
	/* new rx buffers, or packets the tx queue made us owe; the event queue's buffers wait for an event */
	if (q != VSOCK_EVQ)
		rx_pump(v);
	else
		send_reset_event(v);
}

static void drop_all(struct vsock *v)
{
	while (v->nconns)
		conn_free(v, v->conns[v->nconns - 1]);
	v->orphan_n = v->orphan_head = 0;
	v->next_port = EPHEMERAL_FIRST;
}

static void vsock_reset(void *dev)
{
	struct vsock *v = dev;
	drop_all(v); /* the queues are gone; host clients see their sockets close */
	v->rx_held = v->reset_owed = false;
}

/* Paused (for a snapshot): an rx buffer rx_pump took from the ring and has not used yet is, in the
 * saved queue state, neither available nor used; a VM restored from that snapshot could never give
 * it back, and the guest would be one rx buffer short for good. So it goes back to the ring (the
 * last one taken, nothing pushed since: vq_unpop_n's contract); the next rx_pump takes it again. */
static void vsock_pause(void *dev)
{
	struct vsock *v = dev;
	if (!v->t)
		return;
	virtio_mmio_lock(v->t);
	if (v->rx_held) {
		struct vq *q = virtio_mmio_queue(v->t, VSOCK_RXQ);
		if (q)
			vq_unpop_n(q, 1);
		v->rx_held = false;
	}
	virtio_mmio_unlock(v->t);
}

static int vsock_load(void *dev, struct snap_sec *s, struct cella_err *err);

const struct virtio_dev_ops virtio_vsock_ops = {
	.name = "virtio-vsock",
	.device_id = VIRTIO_ID_VSOCK,
	.nqueues = 3,
	.config_len = 8,
	.read_config = vsock_read_config,
	.notify = vsock_notify,
	.reset = vsock_reset,
	.pause = vsock_pause,
	.load = vsock_load,
};

/* Sends the owed TRANSPORT_RESET event if the driver gave an event buffer. Lock held. */
static void send_reset_event(struct vsock *v)
{
	struct vq *q = v->t && v->reset_owed ? virtio_mmio_queue(v->t, VSOCK_EVQ) : NULL;
	struct cella_err err = { 0 };
	int r = q ? vq_pop(q, &v->ev_chain, &err) : 0;
	if (r < 0) {
		virtio_mmio_fail(v->t, err.msg);
	} else if (r > 0) {
		v->reset_owed = false;
		uint32_t id = htole32(VSOCK_EVENT_TRANSPORT_RESET);
		uint32_t n = v->ev_chain.in_bytes >= 4 ? (uint32_t)chain_copy(&v->ev_chain, true, 0, &id, 4, true) : 0;
		vq_push(q, v->ev_chain.head, n);
		if (n)
			v->stats.events_sent++;
		virtio_mmio_used(v->t, VSOCK_EVQ);
	}
}

/* Lock held (or no transport). Without an event buffer now, the event goes when the driver posts
 * one: a guest that never hears of the reset would keep connections nobody serves. */
static void transport_reset(struct vsock *v)
{
	drop_all(v);
	v->reset_owed = true;
	send_reset_event(v);
}

void vsock_transport_reset(struct vsock *v)
{
	if (v->t)
		virtio_mmio_lock(v->t);
	transport_reset(v);
	if (v->t)
		virtio_mmio_unlock(v->t);
}

/* Restored from a snapshot (transport lock held): the host sockets of the guest's connections belong to
 * the process that took the snapshot, so the guest is told to drop them all. */
static int vsock_load(void *dev, struct snap_sec *s, struct cella_err *err)
{
	transport_reset(dev);
	return 0;
}

/* --- setup --- */

static int listen_uds(const char *path, struct cella_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return cella_err_set(err, ENAMETOOLONG, "vsock: uds %s: path too long", path);
	strcpy(sa.sun_path, path);
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return cella_err_set(err, EEXIST, "vsock: uds %s: exists and is not a socket", path);
		/* a socket nobody listens on is left over from a VMM that died: take it over */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (probe < 0)
			return cella_err_sys(err, errno, "vsock: socket");
		int r = connect(probe, (struct sockaddr *)&sa, sizeof(sa));
		int e = errno;
		close(probe);
		if (r == 0 || e == EAGAIN)
			return cella_err_set(err, EADDRINUSE, "vsock: uds %s: another process listens there", path);
		if (unlink(path) < 0 && errno != ENOENT)
			return cella_err_sys(err, errno, "vsock: uds %s: removing the stale socket", path);
	}
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return cella_err_sys(err, errno, "vsock: socket");
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return cella_err_sys(err, errno, "vsock: uds %s: bind", path);
	if (listen(fd, 64) < 0) {
		int e = errno;
		unlink(path);
		return cella_err_sys(err, e, "vsock: uds %s: listen", path);
	}
	return TAKE_FD(fd);
}

int vsock_new(const struct vsock_config *cfg, struct vsock **out, struct cella_err *err)
{
	*out = NULL;
	if (cfg->guest_cid < 3 || cfg->guest_cid >= UINT32_MAX)
		return cella_err_set(err, EINVAL, "vsock: cid %" PRIu64 " is out of range (3..%u)", cfg->guest_cid,
				     UINT32_MAX - 1);
	if (cfg->uds && strlen(cfg->uds) + 12 >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return cella_err_set(err, ENAMETOOLONG,
				     "vsock: uds %s: too long for a unix socket path with a _PORT suffix (at most %zu bytes)",
				     cfg->uds, sizeof(((struct sockaddr_un *)0)->sun_path) - 13);
	struct vsock *v = calloc(1, sizeof(*v));
	if (!v)
		return cella_err_set(err, ENOMEM, "vsock: out of memory");
	v->cid = cfg->guest_cid;
	v->connect = cfg->connect;
	v->connect_ctx = cfg->connect_ctx;
	v->max_conns = cfg->max_conns && cfg->max_conns < VSOCK_MAX_CONNS ? cfg->max_conns : VSOCK_MAX_CONNS;
	v->listen_fd = v->timer_fd = -1;
	v->next_port = EPHEMERAL_FIRST;
	v->next_serial = 16;
	v->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	int r;
	if (v->epoll_fd < 0) {
		r = cella_err_sys(err, errno, "vsock: epoll_create1");
		goto fail;
	}
	v->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_TIMER };
	if (v->timer_fd < 0 || epoll_ctl(v->epoll_fd, EPOLL_CTL_ADD, v->timer_fd, &ev) < 0) {
		r = cella_err_sys(err, errno, "vsock: timerfd");
		goto fail;
	}
	if (cfg->uds) {
		if (!(v->uds = strdup(cfg->uds))) {
			r = cella_err_set(err, ENOMEM, "vsock: out of memory");
			goto fail;
		}
		if ((r = listen_uds(cfg->uds, err)) < 0) {
			free(v->uds);
			v->uds = NULL; /* not ours: vsock_free must not remove it */
			goto fail;
		}
		v->listen_fd = r;
		ev = (struct epoll_event){ .events = EPOLLIN, .data.u64 = TAG_LISTEN };
		if (epoll_ctl(v->epoll_fd, EPOLL_CTL_ADD, v->listen_fd, &ev) < 0) {
			r = cella_err_sys(err, errno, "vsock: epoll_ctl");
			goto fail;
		}
	}
	*out = v;
	return 0;
fail:
	vsock_free(v);
	return r;
}

void vsock_free(struct vsock *v)
{
	if (!v)
		return;
	drop_all(v);
	if (v->listen_fd >= 0)
		close(v->listen_fd);
	if (v->uds)
		unlink(v->uds);
	if (v->timer_fd >= 0)
		close(v->timer_fd);
	if (v->epoll_fd >= 0)
		close(v->epoll_fd);
	free(v->uds);
	free(v);
}

void vsock_attach(struct vsock *v, struct virtio_mmio *t)
{
	v->t = t;
}

int vsock_fd(const struct vsock *v)
{
	return v->epoll_fd;
}

void vsock_get_stats(struct vsock *v, struct vsock_stats *out)
{
	*out = v->stats;
	out->conns = v->nconns;
	out->orphan_rsts = v->orphan_n;
	out->buffered = 0;
	for (unsigned i = 0; i < v->nconns; i++)
		out->buffered += v->conns[i]->used;
}
