/* virtio-net against a fake guest memory and a SOCK_SEQPACKET socket as the backend (one message =
 * one frame behind a 12-byte header, as a TAP with IFF_VNET_HDR): feature negotiation and the
 * offloads handed to the backend, TX (split headers, bad headers dropped and counted, malformed
 * rings), RX (one buffer, mergeable buffers, no room = kept not lost, too-small buffers, offloads
 * the guest did not take), reset, the device thread, MAC parsing and the TX header checks. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/util.h"
#include "tap.h"
#include "vmm/iothread.h"
#include "vmm/virtio/net.h"
#include "vmm/virtio/tap.h"

#define GPA 0x100000ull
#define RAM 0x100000ull
#define QSZ 8
/* per queue q: desc at Q(q), avail at Q(q)+0x1000, used at Q(q)+0x2000 */
#define Q(q) (GPA + 0x4000ull * (q))
#define DATA (GPA + 0x10000)

static _Alignas(16) uint8_t ram[RAM];
static struct vq_mem mem = { .r = { { .gpa = GPA, .size = RAM, .host = ram } }, .n = 1 };
static struct virtio_mmio t;
static struct virtio_net net;
static int sp[2]; /* sp[0]: the device's backend, sp[1]: the "host" side */
static int irqs;
static unsigned offload_calls, offload_last;

static int fake_set_irq(void *ctx, unsigned irq, int level)
{
	irqs += level;
	return 0;
}
static const struct hw_host host = { .set_irq = fake_set_irq };

static int fake_offload(void *ctx, unsigned flags, struct cella_err *err)
{
	offload_calls++;
	offload_last = flags;
	return 0;
}

static void *at(uint64_t gpa) { return ram + (gpa - GPA); }
static uint32_t rd(uint64_t off)
{
	uint8_t b[4];
	virtio_mmio_ops.read(&t, off, b, 4);
	uint32_t v;
	memcpy(&v, b, 4);
	return v;
}
static void wr(uint64_t off, uint32_t v) { virtio_mmio_ops.write(&t, off, (const uint8_t *)&v, 4); }

#define F(b) (1ull << (b))
static const uint64_t FULL = F(VIRTIO_F_VERSION_1) | F(VIRTIO_F_EVENT_IDX) | F(VIRTIO_NET_F_CSUM) |
			     F(VIRTIO_NET_F_GUEST_CSUM) | F(VIRTIO_NET_F_GUEST_TSO4) | F(VIRTIO_NET_F_GUEST_TSO6) |
			     F(VIRTIO_NET_F_HOST_TSO4) | F(VIRTIO_NET_F_MRG_RXBUF) | F(VIRTIO_NET_F_MAC) |
			     F(VIRTIO_NET_F_STATUS);

/* driver-side state per queue */
static uint16_t avail_idx[2], next_desc[2], used_seen[2];

static void start(uint64_t features)
{
	memset(ram, 0, sizeof(ram));
	memset(avail_idx, 0, sizeof(avail_idx));
	memset(next_desc, 0, sizeof(next_desc));
	memset(used_seen, 0, sizeof(used_seen));
	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	for (unsigned q = 0; q < 2; q++) {
		wr(VIRTIO_MMIO_QUEUE_SEL, q);
		wr(VIRTIO_MMIO_QUEUE_NUM, QSZ);
		wr(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)Q(q));
		wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(Q(q) + 0x1000));
		wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(Q(q) + 0x2000));
		wr(VIRTIO_MMIO_QUEUE_READY, 1);
	}
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
				       VIRTIO_STATUS_DRIVER_OK);
}

struct seg {
	uint64_t gpa;
	uint32_t len;
	bool write;
};

/* Puts a chain of segs in queue q's descriptor table and offers it. */
static uint16_t offer(unsigned q, const struct seg *s, unsigned n)
{
	uint16_t head = next_desc[q];
	for (unsigned i = 0; i < n; i++) {
		uint16_t d = (uint16_t)((head + i) % QSZ);
		struct { uint64_t a; uint32_t l; uint16_t f, nx; } raw = {
			s[i].gpa, s[i].len,
			(uint16_t)((s[i].write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0)),
			(uint16_t)((d + 1) % QSZ) };
		memcpy((uint8_t *)at(Q(q)) + 16 * d, &raw, 16);
	}
	next_desc[q] = (uint16_t)((head + n) % QSZ);
	uint16_t *avail = at(Q(q) + 0x1000);
	avail[2 + avail_idx[q] % QSZ] = head;
	__atomic_store_n(&avail[1], ++avail_idx[q], __ATOMIC_RELEASE);
	return head;
}

static uint16_t used_idx(unsigned q) { return __atomic_load_n((uint16_t *)at(Q(q) + 0x2000) + 1, __ATOMIC_ACQUIRE); }
static uint32_t used_len(unsigned q, uint16_t i) { return ((uint32_t *)at(Q(q) + 0x2000 + 4))[2 * (i % QSZ) + 1]; }
static uint32_t used_id(unsigned q, uint16_t i) { return ((uint32_t *)at(Q(q) + 0x2000 + 4))[2 * (i % QSZ)]; }

static ssize_t host_recv(uint8_t *buf, size_t len) { return recv(sp[1], buf, len, MSG_DONTWAIT); }
static void host_send(const struct virtio_net_hdr *h, const uint8_t *frame, size_t len)
{
	static uint8_t buf[VIRTIO_NET_MAX_PACKET];
	memcpy(buf, h, VIRTIO_NET_HDR_LEN);
	memcpy(buf + VIRTIO_NET_HDR_LEN, frame, len);
	if (send(sp[1], buf, VIRTIO_NET_HDR_LEN + len, 0) < 0)
		printf("# send: %s\n", strerror(errno));
}

static uint8_t frame[70000];

static void test_pure(void)
{
	struct cella_err err = { 0 };
	uint8_t m[6];
	TAP_OK(virtio_net_parse_mac("52:54:00:12:34:5a", m, &err) == 0 && m[0] == 0x52 && m[5] == 0x5a, "mac parses");
	TAP_OK(virtio_net_parse_mac("02-00-00-AB-cd-01", m, NULL) == 0 && m[3] == 0xab, "mac with '-' and upper case");
	TAP_OK(virtio_net_parse_mac("01:00:5e:00:00:01", m, &err) == -EINVAL, "multicast mac refused: %s", err.msg);
	TAP_OK(virtio_net_parse_mac("00:00:00:00:00:00", m, NULL) == -EINVAL, "zero mac refused");
	TAP_OK(virtio_net_parse_mac("52:54:00:12:34", m, &err) == -EINVAL, "short mac refused: %s", err.msg);
	TAP_OK(virtio_net_parse_mac("52:54:00:12:34:567", m, NULL) == -EINVAL, "long mac refused");
	TAP_OK(virtio_net_parse_mac("52:54:00:12:3g:56", m, NULL) == -EINVAL, "non-hex refused");
	virtio_net_random_mac(m);
	TAP_OK((m[0] & 3) == 2, "random mac: unicast, locally administered (0x%02x)", m[0]);

	uint64_t f = FULL;
	struct virtio_net_hdr h = { 0 };
	TAP_OK(virtio_net_check_tx_hdr(&h, 60, f, NULL) == 0, "plain header ok");
	TAP_OK(virtio_net_check_tx_hdr(&h, 13, f, &err) == -EINVAL, "13-byte frame refused: %s", err.msg);
	TAP_OK(virtio_net_check_tx_hdr(&h, VIRTIO_NET_MAX_FRAME + 1, f, NULL) == -EINVAL, "oversized frame refused");
	h.flags = VIRTIO_NET_HDR_F_DATA_VALID;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60, f, NULL) == -EINVAL, "DATA_VALID on TX refused");
	h = (struct virtio_net_hdr){ .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 34, .csum_offset = 16 };
	TAP_OK(virtio_net_check_tx_hdr(&h, 52, f, NULL) == 0, "checksum inside the frame ok");
	TAP_OK(virtio_net_check_tx_hdr(&h, 51, f, &err) == -EINVAL, "checksum past the end refused: %s", err.msg);
	h.csum_start = 0xffff, h.csum_offset = 0xffff;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60, f, NULL) == -EINVAL, "checksum 0xffff+0xffff refused (no wrap)");
	TAP_OK(virtio_net_check_tx_hdr(&(struct virtio_net_hdr){ .flags = 1, .csum_start = 34, .csum_offset = 16 }, 60,
				       f & ~F(VIRTIO_NET_F_CSUM), NULL) == -EINVAL, "NEEDS_CSUM without CSUM refused");
	h = (struct virtio_net_hdr){ .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_TCPV4, .gso_size = 1448, .hdr_len = 66,
				     .csum_start = 34, .csum_offset = 16 };
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, NULL) == 0, "TSO4 with HOST_TSO4 ok");
	h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, &err) == -EINVAL, "TSO6 without HOST_TSO6 refused: %s", err.msg);
	h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, NULL) == -EINVAL, "ECN without HOST_ECN refused");
	h.gso_type = VIRTIO_NET_HDR_GSO_UDP;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, NULL) == -EINVAL, "UFO (not offered) refused");
	h.gso_type = 7;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, NULL) == -EINVAL, "unknown GSO type refused");
	h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
	h.gso_size = 0;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, NULL) == -EINVAL, "gso_size 0 refused");
	h.gso_size = 1448;
	h.flags = 0;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, NULL) == -EINVAL, "GSO without NEEDS_CSUM refused");
	h.flags = 1;
	h.hdr_len = 60001;
	TAP_OK(virtio_net_check_tx_hdr(&h, 60000, f, NULL) == -EINVAL, "hdr_len past the frame refused");

	TAP_OK(virtio_net_offload_for(FULL) == (TAP_OFFLOAD_CSUM | TAP_OFFLOAD_TSO4 | TAP_OFFLOAD_TSO6),
	       "offloads for csum+tso4+tso6: 0x%x", virtio_net_offload_for(FULL));
	TAP_OK(virtio_net_offload_for(FULL & ~F(VIRTIO_NET_F_GUEST_CSUM)) == 0, "no GUEST_CSUM: no offloads at all");
	TAP_OK(virtio_net_offload_for(F(VIRTIO_NET_F_GUEST_CSUM) | F(VIRTIO_NET_F_GUEST_TSO4) | F(VIRTIO_NET_F_GUEST_ECN)) ==
		       (TAP_OFFLOAD_CSUM | TAP_OFFLOAD_TSO4 | TAP_OFFLOAD_TSO_ECN), "ECN with TSO4");
}

static void test_identity(void)
{
	TAP_OK(rd(VIRTIO_MMIO_DEVICE_ID) == VIRTIO_ID_NET, "device id 1");
	wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint32_t lo = rd(VIRTIO_MMIO_DEVICE_FEATURES);
	TAP_OK((lo & (uint32_t)(F(VIRTIO_NET_F_CSUM) | F(VIRTIO_NET_F_MRG_RXBUF) | F(VIRTIO_NET_F_MAC) |
				F(VIRTIO_NET_F_STATUS) | F(VIRTIO_NET_F_HOST_TSO4) | F(VIRTIO_NET_F_GUEST_TSO6))) ==
		       (uint32_t)(F(VIRTIO_NET_F_CSUM) | F(VIRTIO_NET_F_MRG_RXBUF) | F(VIRTIO_NET_F_MAC) |
				  F(VIRTIO_NET_F_STATUS) | F(VIRTIO_NET_F_HOST_TSO4) | F(VIRTIO_NET_F_GUEST_TSO6)),
	       "offers CSUM, MRG_RXBUF, MAC, STATUS, TSO (0x%x)", lo);
	uint8_t cfg[10];
	for (int i = 0; i < 10; i++)
		virtio_mmio_ops.read(&t, VIRTIO_MMIO_CONFIG + (uint64_t)i, &cfg[i], 1);
	TAP_OK(!memcmp(cfg, "\x52\x54\x00\x12\x34\x56", 6), "config: mac");
	TAP_OK(cfg[6] == 1 && cfg[7] == 0, "config: status LINK_UP");
	uint8_t past[4] = { 1, 1, 1, 1 };
	virtio_mmio_ops.read(&t, VIRTIO_MMIO_CONFIG + 8, past, 4);
	TAP_OK(past[0] == 0 && past[3] == 0, "config read crossing the end reads zero");
}

static void test_tx(void)
{
	start(FULL);
	TAP_OK(offload_calls == 1 && offload_last == (TAP_OFFLOAD_CSUM | TAP_OFFLOAD_TSO4 | TAP_OFFLOAD_TSO6),
	       "DRIVER_OK sets the backend's offloads (0x%x)", offload_last);
	/* header split 5 + 7 across two descriptors, frame in two more */
	struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 34, .csum_offset = 16 };
	memcpy(at(DATA), &h, 5);
	memcpy(at(DATA + 0x100), (uint8_t *)&h + 5, 7);
	for (int i = 0; i < 1500; i++)
		((uint8_t *)at(DATA + 0x1000))[i] = (uint8_t)i;
	struct seg s[] = { { DATA, 5, false }, { DATA + 0x100, 7, false }, { DATA + 0x1000, 1000, false },
			   { DATA + 0x1000 + 1000, 500, false } };
	uint16_t head = offer(1, s, 4);
	virtio_net_tx(&net);
	uint8_t buf[VIRTIO_NET_MAX_PACKET];
	ssize_t n = host_recv(buf, sizeof(buf));
	struct virtio_net_hdr got;
	memcpy(&got, buf, sizeof(got));
	TAP_OK(n == 12 + 1500 && got.flags == 1 && got.csum_start == 34 && got.csum_offset == 16 &&
		       !memcmp(buf + 12, at(DATA + 0x1000), 1500), "TX: split header and frame reach the backend (%zd)", n);
	TAP_OK(used_idx(1) == 1 && used_id(1, 0) == head && used_len(1, 0) == 0, "TX: chain returned, len 0");
	TAP_OK(net.stats.tx_packets == 1 && net.stats.tx_bytes == 1500, "TX counted");

	/* bad packets: each dropped and counted, the queue goes on */
	struct virtio_net_hdr bad = { .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_TCPV6, .gso_size = 1400, .csum_start = 54,
				      .csum_offset = 16 };
	memcpy(at(DATA), &bad, 12);
	offer(1, (struct seg[]){ { DATA, 12, false }, { DATA + 0x1000, 1500, false } }, 2);
	offer(1, (struct seg[]){ { DATA + 0x1000, 5, false } }, 1); /* shorter than a header */
	memset(at(DATA + 0x200), 0, 12);
	offer(1, (struct seg[]){ { DATA + 0x200, 12, false }, { DATA + 0x10000, 65551, false } }, 2); /* too long */
	offer(1, (struct seg[]){ { DATA + 0x200, 12, false }, { DATA + 0x1000, 60, false } }, 2); /* good */
	virtio_net_tx(&net);
	n = host_recv(buf, sizeof(buf));
	TAP_OK(n == 72, "TX: only the good packet of four reached the backend (%zd)", n);
	TAP_OK(host_recv(buf, sizeof(buf)) < 0 && errno == EAGAIN, "TX: nothing else");
	TAP_OK(net.stats.tx_dropped == 3 && used_idx(1) == 5, "TX: 3 dropped and counted, all chains returned");
	TAP_OK(!(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET), "TX: bad packets are no ring error");

	/* a TX chain with a writable descriptor too: the readable part is sent */
	offer(1, (struct seg[]){ { DATA + 0x200, 12, false }, { DATA + 0x1000, 64, false }, { DATA + 0x3000, 64, true } }, 3);
	virtio_net_tx(&net);
	TAP_OK(host_recv(buf, sizeof(buf)) == 76 && used_idx(1) == 6, "TX: trailing writable buffer ignored");

	/* malformed ring: a buffer outside RAM */
	offer(1, (struct seg[]){ { 0xdead0000000ull, 64, false } }, 1);
	virtio_net_tx(&net);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, "TX: buffer outside RAM sets NEEDS_RESET");
	TAP_OK(host_recv(buf, sizeof(buf)) < 0, "TX: nothing sent for it");
	wr(VIRTIO_MMIO_STATUS, 0);
	TAP_OK(offload_last == 0, "reset turns the backend's offloads off");
}

static void test_rx(void)
{
	start(FULL);
	struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_DATA_VALID };
	for (size_t i = 0; i < sizeof(frame); i++)
		frame[i] = (uint8_t)(i * 7);

	/* nothing posted: the packet stays in the backend, the device waits for a kick */
	host_send(&h, frame, 100);
	virtio_net_rx(&net);
	TAP_OK(used_idx(0) == 0 && !virtio_net_rx_wants_fd(&net), "RX: no buffers, nothing read, waits for a kick");
	TAP_OK(net.stats.rx_dropped == 0, "RX: nothing dropped");

	offer(0, (struct seg[]){ { DATA, 2048, true } }, 1);
	virtio_net_rx(&net);
	struct virtio_net_hdr g;
	memcpy(&g, at(DATA), 12);
	TAP_OK(used_idx(0) == 1 && used_len(0, 0) == 112 && g.num_buffers == 1 && g.flags == VIRTIO_NET_HDR_F_DATA_VALID &&
		       !memcmp((uint8_t *)at(DATA) + 12, frame, 100), "RX: one packet into one buffer, num_buffers 1");
	TAP_OK(irqs > 0, "RX: used interrupt raised");

	/* mergeable: 2512 bytes over 1000-byte buffers; num_buffers straddles two descriptors of chain 1 */
	host_send(&h, frame, 2500);
	offer(0, (struct seg[]){ { DATA + 0x1000, 11, true }, { DATA + 0x2000, 989, true } }, 2);
	virtio_net_rx(&net);
	TAP_OK(used_idx(0) == 1 && net.pending == 2512, "RX: 1000 bytes of room for 2512: kept pending, none used");
	offer(0, (struct seg[]){ { DATA + 0x3000, 1000, true } }, 1);
	virtio_net_rx(&net);
	TAP_OK(used_idx(0) == 1, "RX: 2000 bytes of room: still pending");
	offer(0, (struct seg[]){ { DATA + 0x4000, 1000, true } }, 1);
	virtio_net_rx(&net);
	uint8_t *p1 = at(DATA + 0x1000), *p2 = at(DATA + 0x2000);
	uint16_t nb = (uint16_t)(p1[10] | p2[0] << 8);
	TAP_OK(used_idx(0) == 4 && used_len(0, 1) == 1000 && used_len(0, 2) == 1000 && used_len(0, 3) == 512,
	       "RX: delivered over 3 buffers at once (lens %u %u %u)", used_len(0, 1), used_len(0, 2), used_len(0, 3));
	TAP_OK(nb == 3, "RX: num_buffers 3 written across the descriptor boundary (%u)", nb);
	TAP_OK(!memcmp(p2 + 1, frame, 988) && !memcmp(at(DATA + 0x3000), frame + 988, 1000) &&
		       !memcmp(at(DATA + 0x4000), frame + 1988, 512), "RX: bytes in order across buffers");
	TAP_OK(net.stats.rx_dropped == 0 && net.stats.rx_packets == 2, "RX: nothing lost");

	/* an offloaded packet the guest did not negotiate (ECN) is dropped and counted */
	struct virtio_net_hdr gso = { .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
				      .gso_size = 1448, .csum_start = 34, .csum_offset = 16 };
	host_send(&gso, frame, 3000);
	host_send(&h, frame, 60);
	offer(0, (struct seg[]){ { DATA, 2048, true } }, 1);
	virtio_net_rx(&net);
	TAP_OK(net.stats.rx_dropped == 1 && used_idx(0) == 5 && used_len(0, 4) == 72,
	       "RX: GSO+ECN packet dropped (counted), the next one delivered");

	/* RX chain with a device-readable descriptor: malformed */
	host_send(&h, frame, 60);
	offer(0, (struct seg[]){ { DATA, 64, false }, { DATA + 0x1000, 2048, true } }, 2);
	virtio_net_rx(&net);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, "RX: readable descriptor sets NEEDS_RESET");

	/* after the reset the packet the broken ring did not take is still there; without mergeable
	 * buffers a too-small buffer drops only the packet that does not fit */
	start(FULL & ~F(VIRTIO_NET_F_MRG_RXBUF));
	offer(0, (struct seg[]){ { DATA, 100, true } }, 1);
	virtio_net_rx(&net);
	TAP_OK(used_idx(0) == 1 && used_len(0, 0) == 72, "RX: the packet pending across a reset is delivered");
	host_send(&h, frame, 500);
	host_send(&h, frame, 50);
	offer(0, (struct seg[]){ { DATA, 100, true } }, 1);
	virtio_net_rx(&net);
	memcpy(&g, at(DATA), 12);
	TAP_OK(used_idx(0) == 2 && used_len(0, 1) == 62 && g.num_buffers == 1 && net.stats.rx_dropped == 2,
	       "RX without MRG_RXBUF: 512 bytes into 100 dropped (counted), 62 delivered (num_buffers 1)");

	/* a chain must hold at least the header */
	host_send(&h, frame, 50);
	offer(0, (struct seg[]){ { DATA, 8, true } }, 1);
	virtio_net_rx(&net);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, "RX: 8-byte buffer (no room for the header) is an error");
	start(FULL);
	offer(0, (struct seg[]){ { DATA, 2048, true } }, 1);
	virtio_net_rx(&net);
	TAP_OK(used_idx(0) == 1 && used_len(0, 0) == 62 && net.stats.rx_packets == 6, "RX: ... and that packet is not lost");
}

static bool wait_used(unsigned q, uint16_t want, int ms)
{
	for (int i = 0; i < ms; i++) {
		if (used_idx(q) == want)
			return true;
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	}
	return false;
}

static struct virtio_mmio saved_t;

/* A second device on the same backend with limits rl, started with FULL and driven by the register
 * helpers in place of the main one (they drive `t`) until limited_down. */
static void limited_up(struct virtio_net *ln, struct virtio_mmio *lt, const char *name, const char *mac,
		       const struct ratelimit_cfg *rl)
{
	struct cella_err err = { 0 };
	struct virtio_net_backend be = { .fd = sp[0] };
	TAP_OK(virtio_net_init(ln, name, (const uint8_t *)mac, &be, rl, &err) == 0 &&
		       virtio_mmio_init(lt, &virtio_net_ops, ln, &host, 5, &mem, &err) == 0,
	       "%s device and its transport%s%s", name, err.msg[0] ? ": " : "", err.msg);
	virtio_net_attach(ln, lt);
	saved_t = t;
	t = *lt;
	ln->t = &t;
	start(FULL);
	memset(at(DATA), 0, 12);
}

static void limited_down(struct virtio_net *ln, struct virtio_mmio *lt)
{
	wr(VIRTIO_MMIO_STATUS, 0);
	t = saved_t;
	virtio_mmio_destroy(lt);
	virtio_net_destroy(ln);
}

static void test_ratelimit(void)
{
	/* TX limited to 2000 bytes per 100 ms (bucket starts full): a 1500-byte frame goes, the next
	 * waits on the ring (not dropped) until the bucket has refilled */
	struct virtio_net ln;
	struct virtio_mmio lt;
	struct ratelimit_cfg rl = { .bw = { .size = 2000, .refill_ms = 100 } };
	limited_up(&ln, &lt, "limited", "\x52\x54\x00\x12\x34\x57", &rl);
	TAP_OK(ratelimit_fd(&ln.tx_rl) >= 0 && ratelimit_fd(&ln.rx_rl) >= 0, "limited device: a timer per direction");
	offer(1, (struct seg[]){ { DATA, 12, false }, { DATA + 0x1000, 1500, false } }, 2);
	offer(1, (struct seg[]){ { DATA, 12, false }, { DATA + 0x1000, 1500, false } }, 2);
	virtio_net_tx(&ln);
	uint8_t buf[2048];
	TAP_OK(used_idx(1) == 1 && host_recv(buf, sizeof(buf)) == 1512 && ln.tx_rl.blocked,
	       "TX: first frame sent, the second waits for tokens");
	TAP_OK(host_recv(buf, sizeof(buf)) < 0 && ln.stats.tx_dropped == 0, "TX: nothing else sent, nothing dropped");
	struct pollfd pfd = { .fd = ratelimit_fd(&ln.tx_rl), .events = POLLIN };
	TAP_OK(poll(&pfd, 1, 1000) == 1, "TX: the limiter's timer fires");
	ratelimit_timer_event(&ln.tx_rl);
	virtio_net_tx(&ln);
	TAP_OK(used_idx(1) == 2 && host_recv(buf, sizeof(buf)) == 1512, "TX: ... then the second frame goes");

	/* RX: same limit; the second frame stays pending, then arrives */
	struct virtio_net_hdr h = { 0 };
	host_send(&h, frame, 1500);
	host_send(&h, frame, 1500);
	offer(0, (struct seg[]){ { DATA + 0x4000, 2048, true } }, 1);
	offer(0, (struct seg[]){ { DATA + 0x5000, 2048, true } }, 1);
	virtio_net_rx(&ln);
	TAP_OK(used_idx(0) == 1 && ln.pending == 1512 && ln.rx_rl.blocked, "RX: first frame in, the second kept");
	pfd.fd = ratelimit_fd(&ln.rx_rl);
	TAP_OK(poll(&pfd, 1, 1000) == 1, "RX: the limiter's timer fires");
	ratelimit_timer_event(&ln.rx_rl);
	virtio_net_rx(&ln);
	TAP_OK(used_idx(0) == 2 && ln.stats.rx_dropped == 0, "RX: ... then the second frame arrives");
	limited_down(&ln, &lt);

	/* packets per second: 2 per 100 ms; the third small frame waits for the ops bucket */
	rl = (struct ratelimit_cfg){ .ops = { .size = 2, .refill_ms = 100 } };
	limited_up(&ln, &lt, "pps-limited", "\x52\x54\x00\x12\x34\x59", &rl);
	for (int i = 0; i < 3; i++)
		offer(1, (struct seg[]){ { DATA, 12, false }, { DATA + 0x1000, 60, false } }, 2);
	virtio_net_tx(&ln);
	int n2 = 0;
	while (host_recv(buf, sizeof(buf)) == 72)
		n2++;
	TAP_OK(n2 == 2 && used_idx(1) == 2 && ln.tx_rl.blocked, "pps: two frames go, the third waits (%d sent)", n2);
	pfd.fd = ratelimit_fd(&ln.tx_rl);
	TAP_OK(poll(&pfd, 1, 1000) == 1, "pps: the timer fires");
	ratelimit_timer_event(&ln.tx_rl);
	virtio_net_tx(&ln);
	TAP_OK(host_recv(buf, sizeof(buf)) == 72 && used_idx(1) == 3 && ln.stats.tx_dropped == 0, "pps: ... then the third");
	limited_down(&ln, &lt);

	/* the pace: 16 frames of 60000 bytes through 131072 bytes per 125 ms (1 MiB/s, bucket full at
	 * the start) take (960000 - 131072) / 1048576 = 0.79 s */
	rl = (struct ratelimit_cfg){ .bw = { .size = 131072, .refill_ms = 125 } };
	limited_up(&ln, &lt, "paced", "\x52\x54\x00\x12\x34\x58", &rl);
	uint64_t t0 = cella_now_ns();
	int sent = 0, got = 0;
	static uint8_t big[65536];
	while (got < 16 && cella_now_ns() - t0 < 5000000000ull) {
		while (sent < 16 && (uint16_t)(avail_idx[1] - used_idx(1)) < QSZ) {
			offer(1, (struct seg[]){ { DATA, 12, false }, { DATA + 0x1000, 60000, false } }, 2);
			sent++;
		}
		virtio_net_tx(&ln);
		while (host_recv(big, sizeof(big)) == 60012)
			got++;
		if (ln.tx_rl.blocked) {
			pfd.fd = ratelimit_fd(&ln.tx_rl);
			if (poll(&pfd, 1, 1000) == 1)
				ratelimit_timer_event(&ln.tx_rl);
		}
	}
	double secs = (cella_now_ns() - t0) / 1e9;
	TAP_OK(got == 16 && ln.stats.tx_dropped == 0, "paced: 16 frames through, none dropped (%d)", got);
	TAP_OK(secs > 0.79 * 0.9 && secs < 0.79 * 1.1, "paced: %.3f s for 0.79 s of tokens (1 MiB/s within 10%%)", secs);
	limited_down(&ln, &lt);
}

static int kick[2] = { -1, -1 };
static void on_kick(void *opaque, uint32_t events)
{
	unsigned q = (unsigned)(uintptr_t)opaque;
	eventfd_t v;
	eventfd_read(kick[q], &v);
	virtio_mmio_kick(&t, q);
}

/* The device on an I/O thread, wired as vdev.c does it: notifications through eventfds. */
static void test_iothread(void)
{
	struct cella_err err = { 0 };
	uint8_t buf[256];
	while (host_recv(buf, sizeof(buf)) > 0)
		;
	struct iothread *io = NULL;
	TAP_OK(iothread_new("net-test", &io, &err) == 0, "I/O thread: %s", err.msg);
	for (unsigned q = 0; q < 2; q++) {
		kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		iothread_add(io, kick[q], EPOLLIN, on_kick, (void *)(uintptr_t)q, NULL);
		t.kick_fd[q] = kick[q];
	}
	TAP_OK(virtio_net_bind(&net, io, &err) == 0 && iothread_start(io, &err) == 0, "bound and started: %s", err.msg);
	struct virtio_net_hdr h = { 0 };
	host_send(&h, frame, 60);
	start(FULL);
	nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
	TAP_OK(used_idx(0) == 0, "no RX buffer, nothing delivered");
	offer(0, (struct seg[]){ { DATA, 2048, true } }, 1);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	TAP_OK(wait_used(0, 1, 2000) && used_len(0, 0) == 72, "RX after the notification");
	offer(0, (struct seg[]){ { DATA + 0x1000, 2048, true } }, 1);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
	host_send(&h, frame, 90);
	TAP_OK(wait_used(0, 2, 2000) && used_len(0, 1) == 102, "RX when the backend becomes readable");
	memset(at(DATA + 0x3000), 0, 12);
	offer(1, (struct seg[]){ { DATA + 0x3000, 12, false }, { DATA + 0x4000, 200, false } }, 2);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
	TAP_OK(wait_used(1, 1, 2000), "TX after the notification");
	struct pollfd pfd = { .fd = sp[1], .events = POLLIN };
	TAP_OK(poll(&pfd, 1, 2000) == 1 && host_recv(buf, sizeof(buf)) == 212, "TX packet at the backend");
	/* 300 TX packets through a ring of 8, the driver refilling as the device returns chains */
	uint16_t sent = 1;
	for (int i = 0; i < 300; i++) {
		while ((uint16_t)(avail_idx[1] - used_idx(1)) >= QSZ)
			nanosleep(&(struct timespec){ 0, 100000 }, NULL);
		offer(1, (struct seg[]){ { DATA + 0x3000, 12, false }, { DATA + 0x4000, 20, false } }, 2);
		wr(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
		sent++;
	}
	TAP_OK(wait_used(1, sent, 3000) && net.stats.tx_packets >= 300, "300 more TX packets, none lost (used %u)",
	       used_idx(1));
	int got = 0;
	while (poll(&pfd, 1, 200) == 1 && host_recv(buf, sizeof(buf)) == 32)
		got++;
	TAP_OK(got == 300, "... all 300 at the backend (%d)", got);
	iothread_free(io);
	for (unsigned q = 0; q < 2; q++) {
		t.kick_fd[q] = -1;
		close(kick[q]);
	}
}

int main(void)
{
	struct cella_err err = { 0 };
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
		TAP_SKIP_ALL("socketpair");
	int sz = 1 << 20;
	setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	test_pure();
	struct virtio_net_backend be = { .fd = sp[0], .set_offload = fake_offload };
	TAP_OK(virtio_net_init(&net, "virtio-net test", (const uint8_t *)"\x52\x54\x00\x12\x34\x56", &be, NULL, &err) == 0,
	       "init: %s", err.msg);
	TAP_OK(virtio_mmio_init(&t, &virtio_net_ops, &net, &host, 5, &mem, &err) == 0, "transport init");
	virtio_net_attach(&net, &t);
	test_identity();
	test_tx();
	test_rx();
	test_ratelimit();
	test_iothread();
	virtio_net_destroy(&net);
	virtio_mmio_destroy(&t);
	close(sp[0]);
	close(sp[1]);
	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}
