/* libFuzzer target: virtio-vsock's packet parser and connection state machine, driven through the
 * real virtio-mmio transport by a fake driver (tests/unit/vsock_driver.h). The input is a program of
 * one-byte opcodes with their arguments: guest packets with fuzzed header fields and descriptor
 * layouts, raw tx descriptors, rx buffers posted and consumed, host peers writing, reading, closing
 * and connecting through the unix socket with CONNECT lines, device and transport resets. Guest
 * connections end in socketpairs (the connect hook), so every host socket is real and local. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "tests/unit/vsock_driver.h"

#define CID 3
#define MAX_PEERS 600

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct in {
	const uint8_t *p;
	size_t n;
};
static uint8_t u8(struct in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}
static uint16_t u16(struct in *in)
{
	return (uint16_t)(u8(in) | u8(in) << 8);
}
static uint32_t u32(struct in *in)
{
	return u16(in) | (uint32_t)u16(in) << 16;
}
static uint64_t u64(struct in *in)
{
	return u32(in) | (uint64_t)u32(in) << 32;
}

static int peers[MAX_PEERS];
static unsigned npeers;
static char uds[108];

static void add_peer(int fd)
{
	if (npeers < MAX_PEERS)
		peers[npeers++] = fd;
	else
		close(fd);
}

static int pair_connect(void *ctx, uint32_t port)
{
	if (port % 7 == 6)
		return -ECONNREFUSED; /* some ports have nobody listening */
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	int small = 4096; /* small buffers reach the "host is slow" paths quickly */
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	add_peer(sv[1]);
	return sv[0];
}

static uint32_t pick_port(struct in *in)
{
	uint8_t b = u8(in);
	switch (b & 3) {
	case 0: return 5000 + (b >> 2) % 4;
	case 1: return (1u << 30) + (b >> 2) % 8; /* ports we give host clients */
	case 2: return 1000 + (b >> 2) % 4;
	default: return u32(in);
	}
}

static void guest_packet(struct in *in)
{
	uint8_t f = u8(in);
	struct vsock_hdr h = {
		.src_cid = f & 1 ? u64(in) : CID,
		.dst_cid = f & 2 ? u64(in) : VSOCK_HOST_CID,
		.src_port = pick_port(in),
		.dst_port = pick_port(in),
		.type = f & 4 ? u16(in) : VSOCK_TYPE_STREAM,
		.op = u8(in) % 9,
		.flags = u8(in) & (f & 8 ? 0xff : 3),
		.buf_alloc = f & 16 ? u32(in) : 1u << 18,
		.fwd_cnt = f & 32 ? u32(in) : 0,
	};
	uint32_t len = u16(in) % (VSOCK_MAX_PKT + 2000);
	h.len = f & 64 ? u32(in) : len;
	if (h.op != VSOCK_OP_RW && !(f & 64))
		len = h.len = 0;
	uint8_t raw[VSOCK_HDR_LEN];
	memcpy(raw, &h, VSOCK_HDR_LEN);
	uint32_t hdr_len = f & 128 ? u8(in) % (VSOCK_HDR_LEN + 1) : VSOCK_HDR_LEN;
	vd_send_raw(raw, hdr_len, vd_ram + VD_TX_AREA + 0x100, len);
}

/* A tx descriptor chain of fuzzed descriptors (addresses near or outside RAM, loops, indirect). */
static void raw_chain(struct in *in)
{
	unsigned n = u8(in) % 4 + 1;
	for (unsigned i = 0; i < n; i++) {
		uint8_t sel = u8(in);
		uint64_t addr = sel & 1 ? u64(in) : VD_GPA + VD_TX_AREA + (u16(in) & 0xfff0);
		vd_desc(1, (uint16_t)(40 + i), addr, u16(in), u8(in) & 7, (uint16_t)(40 + (sel >> 1) % 8));
	}
	vd_avail(1, 40);
	vd_wr(VIRTIO_MMIO_QUEUE_NOTIFY, VSOCK_TXQ);
}

/* Many REQUESTs at once: reaches the connection limit with short inputs. */
static void flood(struct in *in)
{
	unsigned n = u8(in) % 32;
	uint32_t port = 5000 + u8(in) % 4;
	for (unsigned i = 0; i < n; i++) {
		struct vsock_hdr h = vd_hdr(CID, 30000 + i, port, VSOCK_OP_REQUEST, 0, 0, 1u << 18, 0);
		vd_send(&h);
	}
}

static void rx_post_some(struct in *in)
{
	uint16_t outstanding = (uint16_t)(vd_q[0].avail_idx - vd_q[0].used_seen);
	unsigned want = u8(in) % 16, room = VD_QSIZE - outstanding;
	vd_rx_post(want < room ? want : room);
}

static void rx_consume(struct in *in)
{
	unsigned n = u8(in) % 32;
	uint16_t *u = (uint16_t *)(void *)(vd_ram + vd_q[0].used);
	for (unsigned i = 0; i < n && vd_q[0].used_seen != u[1]; i++)
		vd_q[0].used_seen++; /* the buffer is read and not given back (rx_post_some does) */
}

static void host_op(struct in *in, uint8_t op)
{
	if (!npeers)
		return;
	unsigned k = u8(in) % npeers;
	int fd = peers[k];
	if (fd < 0)
		return;
	static uint8_t buf[1 << 16];
	switch (op) {
	case 0: { /* write */
		unsigned len = u16(in) % sizeof(buf);
		memset(buf, 'h', len);
		if (send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
			(void)errno;
		break;
	}
	case 1: /* read */
		while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
			;
		break;
	case 2:
		shutdown(fd, SHUT_WR);
		break;
	default:
		close(fd);
		peers[k] = -1;
		break;
	}
}

static void host_client(struct in *in)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, uds, sizeof(uds));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return;
	}
	char line[64];
	int n;
	uint8_t mode = u8(in);
	if (mode & 1) {
		n = (int)(u8(in) % sizeof(line));
		for (int i = 0; i < n; i++)
			line[i] = (char)u8(in);
	} else {
		n = snprintf(line, sizeof(line), "CONNECT %u\n", 1000 + mode % 8);
	}
	if (send(fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		(void)errno;
	add_peer(fd);
}

static struct vsock *dev;
static void cleanup(void)
{
	vsock_free(dev); /* removes the socket file */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vsock *v = dev;
	if (!v) { /* one device for the process; a driver reset (status 0) starts every run afresh */
		cella_log_set_level((enum cella_log_level)(CELLA_LOG_ERROR + 1)); /* malformed input is the point */
		snprintf(uds, sizeof(uds), "/tmp/cella-fuzz-vsock-%d.sock", (int)getpid());
		/* a small connection limit: the limit paths are reached without hundreds of socketpairs */
		struct vsock_config cfg = { .guest_cid = CID, .uds = uds, .connect = pair_connect, .max_conns = 12 };
		if (vsock_new(&cfg, &v, NULL) < 0 || virtio_mmio_init(&vd_t, &virtio_vsock_ops, v, &vd_host, 6, &vd_mem, NULL) < 0)
			__builtin_trap();
		vsock_attach(v, &vd_t);
		dev = v;
		for (uint32_t i = 0; i < VSOCK_MAX_PKT + 2000; i++)
			vd_ram[VD_TX_AREA + 0x100 + i] = (uint8_t)i;
		atexit(cleanup);
	}
	struct in in = { data, size };
	npeers = 0;
	vd_start();
	vd_rx_post(8);
	for (unsigned steps = 0; in.n && steps < 512; steps++) {
		uint8_t op = u8(&in);
		switch (op % 12) {
		case 0:
		case 1:
		case 2: guest_packet(&in); break;
		case 3: rx_post_some(&in); break;
		case 4: rx_consume(&in); break;
		case 5: host_op(&in, op >> 4 & 3); break;
		case 6: vsock_run(v); break;
		case 7: host_client(&in); break;
		case 8: raw_chain(&in); break;
		case 9:
			if (op & 0x10)
				vd_start();
			else
				vd_wr(VIRTIO_MMIO_STATUS, 0);
			vd_rx_post(8);
			break;
		case 10:
			if (op & 0x10) {
				/* paused for a snapshot: no rx buffer may stay popped and unused */
				virtio_vsock_ops.pause(v);
				struct vq *rq = virtio_mmio_queue(&vd_t, VSOCK_RXQ);
				if (rq && rq->last_avail != rq->used_idx)
					__builtin_trap();
				break;
			}
			vd_ev_post();
			vsock_transport_reset(v);
			break;
		case 11: flood(&in); break;
		}
		struct vsock_stats s;
		vsock_get_stats(v, &s);
		if (s.conns > VSOCK_MAX_CONNS || s.orphan_rsts > 64 || s.buffered > (uint64_t)s.conns * VSOCK_BUF_ALLOC)
			__builtin_trap(); /* the bounds vsock.h promises */
	}
	for (unsigned i = 0; i < npeers; i++)
		if (peers[i] >= 0)
			close(peers[i]);
	vsock_run(v); /* accepts what is left in the backlog; the reset below drops it */
	vd_wr(VIRTIO_MMIO_STATUS, 0);
	return 0;
}
