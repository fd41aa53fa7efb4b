/* virtio-net: see net.h. */
#include "vmm/virtio/net.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/uio.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/iothread.h"
#include "vmm/virtio/tap.h"

#define BIT(b) (1ull << (b))

#define NET_FEATURES                                                                                              \
	(BIT(VIRTIO_NET_F_CSUM) | BIT(VIRTIO_NET_F_GUEST_CSUM) | BIT(VIRTIO_NET_F_MAC) | BIT(VIRTIO_NET_F_GUEST_TSO4) | \
	 BIT(VIRTIO_NET_F_GUEST_TSO6) | BIT(VIRTIO_NET_F_GUEST_ECN) | BIT(VIRTIO_NET_F_HOST_TSO4) |                     \
	 BIT(VIRTIO_NET_F_HOST_TSO6) | BIT(VIRTIO_NET_F_HOST_ECN) | BIT(VIRTIO_NET_F_MRG_RXBUF) |                       \
	 BIT(VIRTIO_NET_F_STATUS))

#define VIRTIO_NET_S_LINK_UP 1
#define NET_CONFIG_LEN 10 /* mac[6], status, max_virtqueue_pairs */

/* Packets moved per round before the thread looks at its other fds again (fairness between the
 * two directions; the thread comes straight back when a budget ran out). */
#define RX_BUDGET 256
#define TX_BUDGET 256

/* kinds of drop, each logged once (then only counted) */
enum { WARN_TX_HDR = 1, WARN_TX_WRITE = 2, WARN_RX_FEATURES = 4, WARN_RX_NOFIT = 8, WARN_RX_READ = 16 };

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static void warn_once(struct virtio_net *n, unsigned kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void warn_once(struct virtio_net *n, unsigned kind, const char *fmt, ...)
{
	if (n->warned & kind)
		return;
	n->warned |= kind;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warn("%s: %s (further ones only counted)", n->name, msg);
}
#pragma GCC diagnostic pop

/* --- pure helpers --- */

int virtio_net_check_tx_hdr(const struct virtio_net_hdr *h, uint32_t frame_len, uint64_t features,
			    struct cella_err *err)
{
	if (frame_len < VIRTIO_NET_MIN_FRAME || frame_len > VIRTIO_NET_MAX_FRAME)
		return cella_err_set(err, EINVAL, "frame of %u bytes (%u..%u)", frame_len, VIRTIO_NET_MIN_FRAME,
				     VIRTIO_NET_MAX_FRAME);
	if (h->flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM)
		return cella_err_set(err, EINVAL, "header flags 0x%x (only NEEDS_CSUM is valid on TX)", h->flags);
	if (h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
		if (!(features & BIT(VIRTIO_NET_F_CSUM)))
			return cella_err_set(err, EINVAL, "NEEDS_CSUM without the CSUM feature");
		if ((uint32_t)h->csum_start + h->csum_offset + 2 > frame_len)
			return cella_err_set(err, EINVAL, "checksum field at %u+%u outside the %u-byte frame",
					     h->csum_start, h->csum_offset, frame_len);
	}
	uint8_t gso = h->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
	unsigned need;
	switch (gso) {
	case VIRTIO_NET_HDR_GSO_NONE:
		if (h->gso_type & VIRTIO_NET_HDR_GSO_ECN)
			return cella_err_set(err, EINVAL, "ECN bit without a GSO type");
		return 0;
	case VIRTIO_NET_HDR_GSO_TCPV4: need = VIRTIO_NET_F_HOST_TSO4; break;
	case VIRTIO_NET_HDR_GSO_TCPV6: need = VIRTIO_NET_F_HOST_TSO6; break;
	case VIRTIO_NET_HDR_GSO_UDP: need = VIRTIO_NET_F_HOST_UFO; break;
	default: return cella_err_set(err, EINVAL, "unknown GSO type %u", gso);
	}
	if (!(features & BIT(need)))
		return cella_err_set(err, EINVAL, "GSO type %u without its feature (bit %u)", gso, need);
	if ((h->gso_type & VIRTIO_NET_HDR_GSO_ECN) && !(features & BIT(VIRTIO_NET_F_HOST_ECN)))
		return cella_err_set(err, EINVAL, "GSO with ECN without the HOST_ECN feature");
	if (!(h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM))
		return cella_err_set(err, EINVAL, "GSO packet without NEEDS_CSUM");
	if (h->gso_size == 0)
		return cella_err_set(err, EINVAL, "GSO packet with gso_size 0");
	if (h->hdr_len > frame_len)
		return cella_err_set(err, EINVAL, "hdr_len %u beyond the %u-byte frame", h->hdr_len, frame_len);
	return 0;
}

unsigned virtio_net_offload_for(uint64_t f)
{
	unsigned o = 0;
	if (!(f & BIT(VIRTIO_NET_F_GUEST_CSUM)))
		return 0; /* every offloaded packet carries a partial checksum */
	o |= TAP_OFFLOAD_CSUM;
	if (f & BIT(VIRTIO_NET_F_GUEST_TSO4))
		o |= TAP_OFFLOAD_TSO4;
	if (f & BIT(VIRTIO_NET_F_GUEST_TSO6))
		o |= TAP_OFFLOAD_TSO6;
	if ((f & BIT(VIRTIO_NET_F_GUEST_ECN)) && (o & (TAP_OFFLOAD_TSO4 | TAP_OFFLOAD_TSO6)))
		o |= TAP_OFFLOAD_TSO_ECN;
	if (f & BIT(VIRTIO_NET_F_GUEST_UFO))
		o |= TAP_OFFLOAD_UFO;
	return o;
}

/* Whether a packet from the backend (its header h) is one the guest said it can take; clears
 * DATA_VALID for a guest without GUEST_CSUM (a hint it cannot use). */
static bool rx_hdr_fits_guest(struct virtio_net_hdr *h, uint64_t f)
{
	if (!(f & BIT(VIRTIO_NET_F_GUEST_CSUM)))
		h->flags &= (uint8_t)~VIRTIO_NET_HDR_F_DATA_VALID;
	if ((h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && !(f & BIT(VIRTIO_NET_F_GUEST_CSUM)))
		return false;
	if ((h->gso_type & VIRTIO_NET_HDR_GSO_ECN) && !(f & BIT(VIRTIO_NET_F_GUEST_ECN)))
		return false;
	switch (h->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN) {
	case VIRTIO_NET_HDR_GSO_NONE: return true;
	case VIRTIO_NET_HDR_GSO_TCPV4: return f & BIT(VIRTIO_NET_F_GUEST_TSO4);
	case VIRTIO_NET_HDR_GSO_TCPV6: return f & BIT(VIRTIO_NET_F_GUEST_TSO6);
	case VIRTIO_NET_HDR_GSO_UDP: return f & BIT(VIRTIO_NET_F_GUEST_UFO);
	}
	return false;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int virtio_net_parse_mac(const char *s, uint8_t mac[6], struct cella_err *err)
{
	uint8_t m[6];
	const char *p = s;
	for (int i = 0; i < 6; i++) {
		int hi = hexval(p[0]), lo = hi < 0 ? -1 : hexval(p[1]);
		if (lo < 0)
			goto bad;
		m[i] = (uint8_t)(hi << 4 | lo);
		p += 2;
		if (i < 5) {
			if (*p != ':' && *p != '-')
				goto bad;
			p++;
		}
	}
	if (*p)
		goto bad;
	if (m[0] & 1)
		return cella_err_set(err, EINVAL, "mac %s: a multicast address (lowest bit of the first byte set)", s);
	if (!(m[0] | m[1] | m[2] | m[3] | m[4] | m[5]))
		return cella_err_set(err, EINVAL, "mac %s: all zero", s);
	memcpy(mac, m, 6);
	return 0;
bad:
	return cella_err_set(err, EINVAL, "mac \"%s\": expected six hex pairs like 52:54:00:12:34:56", s);
}

void virtio_net_random_mac(uint8_t mac[6])
{
	uint8_t m[6] = { 0 };
	size_t got = 0;
	while (got < sizeof(m)) {
		ssize_t r = getrandom(m + got, sizeof(m) - got, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break; /* the time-based fallback below still gives a usable address */
		}
		got += (size_t)r;
	}
	if (got < sizeof(m)) {
		uint64_t t = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)mac;
		memcpy(m + 1, &t, 5);
	}
	m[0] = (uint8_t)((m[0] & 0xfe) | 0x02); /* unicast, locally administered */
	memcpy(mac, m, 6);
}

/* --- chain copies (bounds come from vq_pop, which checked every buffer against RAM) --- */

/* Copies len bytes at byte offset off of the chain's readable part into dst; returns bytes copied. */
static uint32_t chain_read(const struct vq_chain *c, uint32_t off, uint8_t *dst, uint32_t len)
{
	uint32_t done = 0;
	for (unsigned i = 0; i < c->n_out && done < len; i++) {
		uint32_t l = c->buf[i].len;
		if (off >= l) {
			off -= l;
			continue;
		}
		uint32_t k = l - off < len - done ? l - off : len - done;
		memcpy(dst + done, c->buf[i].addr + off, k);
		done += k;
		off = 0;
	}
	return done;
}

/* Copies len bytes from src into the chain's writable part at byte offset off; returns bytes copied. */
static uint32_t chain_write(const struct vq_chain *c, uint32_t off, const uint8_t *src, uint32_t len)
{
	uint32_t done = 0;
	for (unsigned i = c->n_out; i < c->n && done < len; i++) {
		uint32_t l = c->buf[i].len;
		if (off >= l) {
			off -= l;
			continue;
		}
		uint32_t k = l - off < len - done ? l - off : len - done;
		memcpy(c->buf[i].addr + off, src + done, k);
		done += k;
		off = 0;
	}
	return done;
}

/* --- TX: guest -> backend --- */

/* Sends one chain's packet or drops it (counted). The header is copied out of guest memory once and
 * checked; the backend gets our copy, so the guest cannot change it after the check. */
static void tx_one(struct virtio_net *n, const struct vq_chain *c, uint64_t features)
{
	struct cella_err err = { 0 };
	struct virtio_net_hdr h;
	if (c->out_bytes < VIRTIO_NET_HDR_LEN) {
		n->stats.tx_dropped++;
		warn_once(n, WARN_TX_HDR, "TX chain of %llu bytes, shorter than the header: dropped",
			  (unsigned long long)c->out_bytes);
		return;
	}
	chain_read(c, 0, (uint8_t *)&h, VIRTIO_NET_HDR_LEN);
	uint32_t frame = (uint32_t)(c->out_bytes - VIRTIO_NET_HDR_LEN);
	if (virtio_net_check_tx_hdr(&h, frame, features, &err) < 0) {
		n->stats.tx_dropped++;
		warn_once(n, WARN_TX_HDR, "bad TX packet dropped: %s", err.msg);
		return;
	}
	h.num_buffers = 0;
	struct iovec iov[IOV_MAX];
	unsigned cnt = 0;
	iov[cnt++] = (struct iovec){ .iov_base = &h, .iov_len = VIRTIO_NET_HDR_LEN };
	uint32_t skip = VIRTIO_NET_HDR_LEN;
	for (unsigned i = 0; i < c->n_out; i++) {
		uint32_t l = c->buf[i].len;
		if (skip >= l) {
			skip -= l;
			continue;
		}
		if (cnt == IOV_MAX) { /* more segments than writev takes: send a linear copy */
			memcpy(n->tx_pkt, &h, VIRTIO_NET_HDR_LEN);
			chain_read(c, VIRTIO_NET_HDR_LEN, n->tx_pkt + VIRTIO_NET_HDR_LEN, frame);
			iov[0] = (struct iovec){ .iov_base = n->tx_pkt, .iov_len = VIRTIO_NET_HDR_LEN + frame };
			cnt = 1;
			break;
		}
		iov[cnt++] = (struct iovec){ .iov_base = c->buf[i].addr + skip, .iov_len = l - skip };
		skip = 0;
	}
	ssize_t w;
	do
		w = n->be.writev ? n->be.writev(n->be.ctx, iov, (int)cnt) : writev(n->be.fd, iov, (int)cnt);
	while (w < 0 && errno == EINTR);
	if (w < 0) {
		/* EAGAIN: the backend's queue is full; the kernel would drop it there too. EIO: link down. */
		n->stats.tx_dropped++;
		warn_once(n, WARN_TX_WRITE, "TX write to the backend: %s: packet dropped", strerror(errno));
		return;
	}
	n->stats.tx_packets++;
	n->stats.tx_bytes += frame;
}

static void activate(struct virtio_net *n, struct virtio_mmio *t)
{
	unsigned o = virtio_net_offload_for(t->drv_features);
	if (o == n->offload || !n->be.set_offload)
		return;
	struct cella_err err = { 0 };
	if (n->be.set_offload(n->be.ctx, o, &err) < 0) {
		/* the backend keeps doing the work in software: slower, still correct */
		log_warn("%s: %s", n->name, err.msg);
		return;
	}
	n->offload = o;
}

/* Lock held. Sends what the guest queued, up to a budget; a rate limit that says "not now" leaves
 * the chain on the ring until its timer fires. */
static void tx_work(struct virtio_net *n, struct virtio_mmio *t)
{
	struct cella_err err = { 0 };
	struct vq *q = virtio_mmio_queue(t, VIRTIO_NET_TXQ);
	bool pushed = false;
	n->tx_more = false;
	for (unsigned budget = TX_BUDGET; q && !n->tx_rl.blocked; budget--) {
		if (budget == 0) {
			n->tx_more = true;
			break;
		}
		int r = vq_pop(q, &n->chain, &err);
		if (r < 0) {
			virtio_mmio_fail(t, err.msg);
			break;
		}
		if (r == 0) {
			/* re-arm, then look again: a packet queued meanwhile would get no notification */
			if (!vq_enable_notify(q, true))
				break;
			continue;
		}
		uint64_t bytes = n->chain.out_bytes > VIRTIO_NET_HDR_LEN ? n->chain.out_bytes - VIRTIO_NET_HDR_LEN : 0;
		if (!ratelimit_consume(&n->tx_rl, bytes, 1)) {
			vq_unpop(q);
			break;
		}
		tx_one(n, &n->chain, t->drv_features);
		vq_push(q, n->chain.head, 0);
		pushed = true;
	}
	if (pushed)
		virtio_mmio_used(t, VIRTIO_NET_TXQ);
}

void virtio_net_tx(struct virtio_net *n)
{
	virtio_mmio_lock(n->t);
	do
		tx_work(n, n->t);
	while (n->tx_more && !n->io);
	virtio_mmio_unlock(n->t);
}

/* --- RX: backend -> guest --- */

/* Moves the pending packet into the guest's buffers. Returns 1 when it was delivered or dropped
 * (counted), 0 when the guest has not posted room for it yet (kept; nothing taken from the ring), or
 * a negative errno for a malformed ring or buffer (err says why). */
static int rx_deliver(struct virtio_net *n, struct vq *q, uint64_t f, struct cella_err *err)
{
	uint32_t len = n->pending;
	struct virtio_net_hdr h;
	memcpy(&h, n->rx_pkt, VIRTIO_NET_HDR_LEN);
	if (!rx_hdr_fits_guest(&h, f)) {
		n->stats.rx_dropped++;
		warn_once(n, WARN_RX_FEATURES,
			  "RX packet with offload (flags 0x%x, gso %u) the guest did not negotiate: dropped", h.flags,
			  h.gso_type);
		return 1;
	}
	bool mrg = f & BIT(VIRTIO_NET_F_MRG_RXBUF);
	uint8_t *nb_at[2] = { NULL, NULL }; /* where num_buffers lands (it may straddle two buffers) */
	uint32_t off = 0;
	unsigned used = 0;
	while (off < len) {
		if (used == q->size) {
			vq_unpop_n(q, (uint16_t)used);
			n->stats.rx_dropped++;
			warn_once(n, WARN_RX_NOFIT, "RX packet of %u bytes does not fit in a whole ring of buffers: dropped",
				  len - VIRTIO_NET_HDR_LEN);
			return 1;
		}
		int r = vq_pop(q, &n->chain, err);
		if (r < 0)
			return r;
		if (r == 0) {
			/* ask for a notification, then look once more before giving the buffers back */
			if (vq_enable_notify(q, true))
				continue;
			vq_unpop_n(q, (uint16_t)used);
			return 0;
		}
		struct vq_chain *c = &n->chain;
		if (c->n_out)
			return cella_err_set(err, EINVAL, "RX chain %u has device-readable descriptors", c->head);
		if (c->in_bytes < (used == 0 ? VIRTIO_NET_HDR_LEN : 1))
			return cella_err_set(err, EINVAL, "RX chain %u: %llu bytes, too small%s", c->head,
					     (unsigned long long)c->in_bytes, used == 0 ? " for the header" : "");
		if (!mrg && c->in_bytes < len) {
			/* without mergeable buffers one chain takes the whole packet; the guest posted less */
			vq_unpop_n(q, 1);
			n->stats.rx_dropped++;
			warn_once(n, WARN_RX_NOFIT, "RX packet of %u bytes, guest buffer of %llu: dropped", len,
				  (unsigned long long)c->in_bytes);
			return 1;
		}
		uint32_t k = c->in_bytes < len - off ? (uint32_t)c->in_bytes : len - off;
		chain_write(c, 0, n->rx_pkt + off, k);
		if (used == 0) {
			/* num_buffers is bytes 10-11 of the header; find their host addresses */
			for (int b = 0; b < 2; b++) {
				uint32_t o = 10 + (uint32_t)b;
				for (unsigned i = c->n_out; i < c->n; i++) {
					if (o < c->buf[i].len) {
						nb_at[b] = c->buf[i].addr + o;
						break;
					}
					o -= c->buf[i].len;
				}
			}
		}
		n->heads[used] = c->head;
		n->lens[used] = k;
		used++;
		off += k;
	}
	uint16_t nb = mrg ? (uint16_t)used : 1;
	*nb_at[0] = (uint8_t)nb;
	*nb_at[1] = (uint8_t)(nb >> 8);
	vq_push_n(q, n->heads, n->lens, used);
	n->stats.rx_packets++;
	n->stats.rx_bytes += len - VIRTIO_NET_HDR_LEN;
	return 1;
}

/* Watch the backend for input only while a frame could go somewhere (lock held). */
static void update_watch(struct virtio_net *n)
{
	bool want = n->io && n->bound && !n->rx_wait && !n->be_dead && !n->pending && !n->rx_rl.blocked;
	if (want == n->watching)
		return;
	if (iothread_mod(n->io, n->be.fd, want ? EPOLLIN : 0) == 0)
		n->watching = want;
}

/* Lock held. Moves frames from the backend into the guest's RX buffers until the backend is empty,
 * the guest has no room (the frame is kept: an RX notification brings us back), a rate limit says
 * "not now" (its timer brings us back) or a budget is spent (the I/O thread comes straight back,
 * since the fd stays readable). */
static void rx_work(struct virtio_net *n, struct virtio_mmio *t)
{
	struct cella_err err = { 0 };
	struct vq *q = virtio_mmio_queue(t, VIRTIO_NET_RXQ);
	bool pushed = false;
	n->rx_wait = false;
	for (unsigned budget = RX_BUDGET; budget > 0 && !n->rx_rl.blocked; budget--) {
		if (!q) {
			n->rx_wait = true; /* not live: DRIVER_OK or the driver's next RX notification restarts */
			break;
		}
		if (!n->pending) {
			if (n->be_dead)
				break;
			if (!vq_has_avail(q) && !vq_enable_notify(q, true)) {
				n->rx_wait = true; /* no buffers: leave frames in the backend until the guest posts */
				break;
			}
			ssize_t r = n->be.read ? n->be.read(n->be.ctx, n->rx_pkt, VIRTIO_NET_MAX_PACKET)
					       : read(n->be.fd, n->rx_pkt, VIRTIO_NET_MAX_PACKET);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN && errno != EWOULDBLOCK) {
					warn_once(n, WARN_RX_READ, "RX read from the backend: %s", strerror(errno));
					if (errno != ENOBUFS && errno != ENOMEM)
						n->be_dead = true;
				}
				break;
			}
			if (r < VIRTIO_NET_HDR_LEN + VIRTIO_NET_MIN_FRAME) {
				n->stats.rx_dropped++;
				continue;
			}
			n->pending = (uint32_t)r;
			n->rx_paid = false;
		}
		if (!n->rx_paid) {
			if (!ratelimit_consume(&n->rx_rl, n->pending - VIRTIO_NET_HDR_LEN, 1))
				break; /* kept; the limiter's timer brings us back */
			n->rx_paid = true;
		}
		int r = rx_deliver(n, q, t->drv_features, &err);
		if (r < 0) {
			virtio_mmio_fail(t, err.msg);
			break;
		}
		if (r == 0) {
			n->rx_wait = true;
			break;
		}
		n->pending = 0;
		pushed = true;
	}
	if (pushed)
		virtio_mmio_used(t, VIRTIO_NET_RXQ);
	update_watch(n);
}

void virtio_net_rx(struct virtio_net *n)
{
	virtio_mmio_lock(n->t);
	rx_work(n, n->t);
	virtio_mmio_unlock(n->t);
}

bool virtio_net_rx_wants_fd(const struct virtio_net *n)
{
	return !n->rx_wait && !n->be_dead && !n->pending && !n->rx_rl.blocked;
}

/* --- transport hooks (transport lock held) --- */

/* The driver notified a queue: on the I/O thread (ioeventfd) in the VM, inline in unit tests. */
static void net_notify(void *dev, struct virtio_mmio *t, unsigned q)
{
	struct virtio_net *n = dev;
	if (q == VIRTIO_NET_TXQ) {
		tx_work(n, t);
		if (n->tx_more && n->io)
			eventfd_write(n->again, 1); /* budget spent: come back after the other fds had a turn */
	} else {
		rx_work(n, t); /* new buffers: deliver a kept frame, watch the backend again */
	}
}

/* vCPU thread: features are final. */
static void net_driver_ok(void *dev, struct virtio_mmio *t)
{
	struct virtio_net *n = dev;
	activate(n, t);
	n->rx_wait = false;
	if (n->io) /* frames may wait in the backend, buffers may have come before DRIVER_OK */
		eventfd_write(n->again, 1);
}

static void net_reset(void *dev)
{
	struct virtio_net *n = dev;
	if (n->offload && n->be.set_offload) {
		struct cella_err err = { 0 };
		if (n->be.set_offload(n->be.ctx, 0, &err) < 0)
			log_warn("%s: %s", n->name, err.msg);
		else
			n->offload = 0;
	}
}

static void net_read_config(void *dev, uint32_t offset, uint8_t *data, uint32_t len)
{
	struct virtio_net *n = dev;
	uint8_t cfg[NET_CONFIG_LEN] = { 0 };
	memcpy(cfg, n->mac, 6);
	cfg[6] = VIRTIO_NET_S_LINK_UP;
	cfg[8] = 1; /* max_virtqueue_pairs (meaningful only with MQ) */
	memcpy(data, cfg + offset, len); /* offset + len <= config_len: checked by the transport */
}

/* Restored from a snapshot (fresh process, transport state back): the driver will not set
 * DRIVER_OK again, so redo what that did. */
static int net_load(void *dev, struct snap_sec *sec, struct cella_err *err)
{
	struct virtio_net *n = dev;
	if (n->t && (n->t->status & VIRTIO_STATUS_DRIVER_OK))
		net_driver_ok(n, n->t);
	return 0;
}

const struct virtio_dev_ops virtio_net_ops = {
	.name = "virtio-net",
	.device_id = VIRTIO_ID_NET,
	.features = NET_FEATURES,
	.nqueues = 2,
	.config_len = NET_CONFIG_LEN,
	.read_config = net_read_config,
	.notify = net_notify,
	.reset = net_reset,
	.driver_ok = net_driver_ok,
	.load = net_load,
};

/* --- on the I/O thread --- */

static void on_backend(void *opaque, uint32_t events)
{
	struct virtio_net *n = opaque;
	virtio_mmio_lock(n->t);
	if (events & (EPOLLERR | EPOLLHUP)) {
		/* e.g. the TAP was deleted under us: no more input from it (TX writes fail and are counted) */
		log_warn("%s: the backend reported %s; no more RX from it", n->name,
			 events & EPOLLERR ? "an error" : "a hang-up");
		n->be_dead = true;
		iothread_del(n->io, n->be.fd);
		n->bound = false;
	} else {
		rx_work(n, n->t);
	}
	virtio_mmio_unlock(n->t);
}

static void on_tx_timer(void *opaque, uint32_t events)
{
	struct virtio_net *n = opaque;
	ratelimit_timer_event(&n->tx_rl);
	virtio_mmio_lock(n->t);
	net_notify(n, n->t, VIRTIO_NET_TXQ);
	virtio_mmio_unlock(n->t);
}

/* TX spent its budget, or DRIVER_OK came (on a vCPU thread): do both directions' work here. */
static void on_again(void *opaque, uint32_t events)
{
	struct virtio_net *n = opaque;
	eventfd_t v;
	eventfd_read(n->again, &v);
	virtio_mmio_lock(n->t);
	net_notify(n, n->t, VIRTIO_NET_TXQ);
	rx_work(n, n->t);
	virtio_mmio_unlock(n->t);
}

static void on_rx_timer(void *opaque, uint32_t events)
{
	struct virtio_net *n = opaque;
	ratelimit_timer_event(&n->rx_rl);
	virtio_net_rx(n);
}

int virtio_net_init(struct virtio_net *n, const char *name, const uint8_t mac[6], const struct virtio_net_backend *be,
		    const struct ratelimit_cfg *rl, struct cella_err *err)
{
	memset(n, 0, sizeof(*n));
	n->again = -1;
	n->rx_rl.timer_fd = n->tx_rl.timer_fd = -1;
	snprintf(n->name, sizeof(n->name), "%s", name);
	memcpy(n->mac, mac, 6);
	n->be = *be;
	n->rx_wait = true;
	int r;
	n->rx_pkt = malloc(VIRTIO_NET_MAX_PACKET);
	n->tx_pkt = malloc(VIRTIO_NET_MAX_PACKET);
	if (!n->rx_pkt || !n->tx_pkt) {
		r = cella_err_set(err, ENOMEM, "%s: out of memory", name);
		goto fail;
	}
	n->again = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (n->again < 0) {
		r = cella_err_sys(err, errno, "%s: eventfd", name);
		goto fail;
	}
	static const struct ratelimit_cfg none;
	if ((r = ratelimit_init(&n->rx_rl, rl ? rl : &none, err)) < 0 ||
	    (r = ratelimit_init(&n->tx_rl, rl ? rl : &none, err)) < 0) {
		cella_err_wrap(err, "%s", name);
		goto fail;
	}
	return 0;
fail:
	virtio_net_destroy(n);
	return r;
}

void virtio_net_attach(struct virtio_net *n, struct virtio_mmio *t)
{
	n->t = t;
}

int virtio_net_bind(struct virtio_net *n, struct iothread *io, struct cella_err *err)
{
	int r;
	n->io = io;
	/* registered with no events: update_watch turns EPOLLIN on while the guest has room */
	if ((r = iothread_add(io, n->be.fd, 0, on_backend, n, err)) < 0)
		return r;
	n->bound = true;
	if ((r = iothread_add(io, n->again, EPOLLIN, on_again, n, err)) < 0)
		return r;
	if (ratelimit_fd(&n->tx_rl) >= 0 &&
	    (r = iothread_add(io, ratelimit_fd(&n->tx_rl), EPOLLIN, on_tx_timer, n, err)) < 0)
		return r;
	if (ratelimit_fd(&n->rx_rl) >= 0 &&
	    (r = iothread_add(io, ratelimit_fd(&n->rx_rl), EPOLLIN, on_rx_timer, n, err)) < 0)
		return r;
	return 0;
}

/* One direction: the new limiter's timer replaces the old one on the I/O thread (lock held). */
static int swap_limiter(struct virtio_net *n, struct ratelimit *cur, struct ratelimit *next, iothread_fn fn,
			struct cella_err *err)
{
	if (ratelimit_fd(cur) >= 0)
		iothread_del(n->io, ratelimit_fd(cur));
	ratelimit_destroy(cur);
	*cur = *next;
	*next = (struct ratelimit){ .timer_fd = -1 };
	int r = 0;
	if (ratelimit_fd(cur) >= 0 && (r = iothread_add(n->io, ratelimit_fd(cur), EPOLLIN, fn, n, err)) < 0) {
		/* without its timer a limiter that blocks would never wake: run unlimited instead */
		ratelimit_destroy(cur);
		*cur = (struct ratelimit){ .timer_fd = -1 };
	}
	return r;
}

int virtio_net_set_ratelimit(struct virtio_net *n, const struct ratelimit_cfg *rl, struct cella_err *err)
{
	if (!n->io)
		return cella_err_set(err, EINVAL, "%s: not bound to an I/O thread", n->name);
	/* the new limiters (and timerfds) exist before the old ones go, so the fd numbers differ */
	struct ratelimit rx = { .timer_fd = -1 }, tx = { .timer_fd = -1 };
	int r = ratelimit_init(&rx, rl, err);
	if (r == 0)
		r = ratelimit_init(&tx, rl, err);
	if (r < 0) {
		ratelimit_destroy(&rx);
		ratelimit_destroy(&tx);
		return cella_err_wrap(err, "%s", n->name);
	}
	iothread_lock(n->io);
	r = swap_limiter(n, &n->rx_rl, &rx, on_rx_timer, err);
	if (r == 0)
		r = swap_limiter(n, &n->tx_rl, &tx, on_tx_timer, err);
	ratelimit_destroy(&tx);
	iothread_unlock(n->io);
	/* both directions' work on the I/O thread, under the new limits */
	if (eventfd_write(n->again, 1) < 0)
		log_debug("%s: again: %s", n->name, strerror(errno));
	return r;
}

void virtio_net_get_stats(struct virtio_net *n, struct virtio_net_stats *out)
{
	if (n->io)
		iothread_lock(n->io);
	*out = n->stats;
	if (n->io)
		iothread_unlock(n->io);
}

void virtio_net_destroy(struct virtio_net *n)
{
	const struct virtio_net_stats *s = &n->stats;
	if (n->rx_pkt) {
		if (s->rx_dropped || s->tx_dropped)
			log_info("%s: rx %llu packets %llu bytes, %llu dropped; tx %llu packets %llu bytes, %llu dropped",
				 n->name, (unsigned long long)s->rx_packets, (unsigned long long)s->rx_bytes,
				 (unsigned long long)s->rx_dropped, (unsigned long long)s->tx_packets,
				 (unsigned long long)s->tx_bytes, (unsigned long long)s->tx_dropped);
		else
			log_debug("%s: rx %llu packets %llu bytes; tx %llu packets %llu bytes", n->name,
				  (unsigned long long)s->rx_packets, (unsigned long long)s->rx_bytes,
				  (unsigned long long)s->tx_packets, (unsigned long long)s->tx_bytes);
	}
	free(n->rx_pkt);
	free(n->tx_pkt);
	n->rx_pkt = n->tx_pkt = NULL;
	if (n->again >= 0)
		close(n->again);
	n->again = -1;
	ratelimit_destroy(&n->rx_rl);
	ratelimit_destroy(&n->tx_rl);
}
