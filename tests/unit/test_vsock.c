/* virtio-vsock against a fake driver (vsock_driver.h) and real unix sockets: host -> guest through
 * CONNECT, guest -> host through <uds>_P, credit both ways, a stuck host reader, shutdowns, a host
 * client that leaves mid-stream, malformed packets, the connection limit, device and transport reset,
 * the socket file's life, and an rx buffer held by the device across pause and snapshot/restore. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/err.h"
#include "base/util.h"
#include "tap.h"
#include "vmm/snapfile.h"
#include "vsock_driver.h"

#define CID 42
static char dir[64], uds[128], uds_5000[140];
static struct vsock *v;
static uint8_t pay[VSOCK_MAX_PKT + 64];

static int uconnect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static int ulisten(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 512) < 0)
		return -1;
	return fd;
}

/* Reads what is there within ms milliseconds (the device runs in between). */
static ssize_t host_read(int fd, void *buf, size_t len, int ms)
{
	for (int i = 0; i < ms; i++) {
		vsock_run(v);
		ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
		if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
			return n;
		usleep(1000);
	}
	return -2;
}

/* Runs the device until the guest gets a packet (or 200 ms pass). */
static int guest_recv(struct vsock_hdr *h, uint8_t *p, uint32_t max)
{
	for (int i = 0; i < 200; i++) {
		vsock_run(v);
		int n = vd_recv(h, p, max);
		if (n >= 0)
			return n;
		usleep(1000);
	}
	return -1;
}

static void drain_guest(void)
{
	struct vsock_hdr h;
	vsock_run(v);
	while (vd_recv(&h, NULL, 0) >= 0)
		vsock_run(v);
}

static struct vsock_stats stats(void)
{
	struct vsock_stats s;
	vsock_get_stats(v, &s);
	return s;
}

static void test_host_to_guest(void)
{
	uint32_t hp = 0;
	int fd = uconnect(uds);
	TAP_OK(fd >= 0, "host client connects to %s", uds);
	TAP_OK(write(fd, "CONNECT 1234\nhello", 18) == 18, "CONNECT line with data right after it");
	struct vsock_hdr h;
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_REQUEST && h.src_cid == 2 &&
		       h.dst_cid == CID && h.dst_port == 1234 && h.src_port >= (1u << 30) && h.type == 1 &&
		       h.buf_alloc == VSOCK_BUF_ALLOC,
	       "guest gets REQUEST 2:%u -> %d:1234", h.src_port, CID);
	hp = h.src_port;
	char buf[64] = { 0 };
	TAP_OK(host_read(fd, buf, sizeof(buf), 20) == -2, "no OK before the guest accepts");
	struct vsock_hdr r = vd_hdr(CID, 1234, hp, VSOCK_OP_RESPONSE, 0, 0, 65536, 0);
	vd_send(&r);
	char want[32];
	snprintf(want, sizeof(want), "OK %u\n", hp);
	TAP_OK(host_read(fd, buf, sizeof(buf), 200) == (ssize_t)strlen(want) && !strcmp(buf, want), "host reads \"%s\"",
	       "OK <port>");
	int n = guest_recv(&h, pay, sizeof(pay));
	TAP_OK(n == VSOCK_HDR_LEN + 5 && h.op == VSOCK_OP_RW && h.len == 5 && !memcmp(pay, "hello", 5),
	       "bytes sent after CONNECT reach the guest");
	struct vsock_hdr d = vd_hdr(CID, 1234, hp, VSOCK_OP_RW, 5, 0, 65536, 5);
	TAP_OK(vd_send_raw(&d, VSOCK_HDR_LEN, "world", 5), "guest sends RW");
	memset(buf, 0, sizeof(buf));
	TAP_OK(host_read(fd, buf, sizeof(buf), 200) == 5 && !memcmp(buf, "world", 5), "host reads the guest's bytes");

	/* credit: the guest has room for 100 bytes */
	struct vsock_hdr cu = vd_hdr(CID, 1234, hp, VSOCK_OP_CREDIT_UPDATE, 0, 0, 100, 5);
	vd_send(&cu);
	memset(pay, 'x', 1000);
	TAP_OK(write(fd, pay, 1000) == 1000, "host writes 1000 bytes");
	uint32_t got = 0;
	while ((n = guest_recv(&h, pay, sizeof(pay))) > 0 && h.op == VSOCK_OP_RW)
		got += h.len;
	TAP_OK(got == 100, "guest credit of 100 bytes: %u bytes sent", got);
	cu.fwd_cnt = 105;
	vd_send(&cu);
	got = 0;
	while ((n = guest_recv(&h, pay, sizeof(pay))) > 0 && h.op == VSOCK_OP_RW)
		got += h.len;
	TAP_OK(got == 100, "CREDIT_UPDATE gives 100 more: %u bytes", got);
	cu.buf_alloc = 1 << 20;
	cu.fwd_cnt = 205;
	vd_send(&cu);
	got = 0;
	while ((n = guest_recv(&h, pay, sizeof(pay))) > 0 && h.op == VSOCK_OP_RW)
		got += h.len;
	TAP_OK(got == 800, "the rest follows with a big credit: %u bytes", got);

	/* CREDIT_REQUEST gets a CREDIT_UPDATE with our counters */
	struct vsock_hdr cr = vd_hdr(CID, 1234, hp, VSOCK_OP_CREDIT_REQUEST, 0, 0, 1 << 20, 1005);
	vd_send(&cr);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_CREDIT_UPDATE && h.fwd_cnt == 5 &&
		       h.buf_alloc == VSOCK_BUF_ALLOC,
	       "CREDIT_REQUEST answered (fwd_cnt %u)", h.fwd_cnt);

	/* guest SHUTDOWN(SEND): the host reads end of file, can still write */
	struct vsock_hdr sd = vd_hdr(CID, 1234, hp, VSOCK_OP_SHUTDOWN, 0, VSOCK_SHUTDOWN_SEND, 1 << 20, 1005);
	vd_send(&sd);
	TAP_OK(host_read(fd, buf, sizeof(buf), 200) == 0, "guest SHUTDOWN(SEND): host reads EOF");
	TAP_OK(write(fd, "late", 4) == 4 && guest_recv(&h, pay, sizeof(pay)) == VSOCK_HDR_LEN + 4 &&
		       h.op == VSOCK_OP_RW,
	       "host -> guest still flows");
	/* host closes: guest gets SHUTDOWN, both directions are over, RST follows */
	close(fd);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_SHUTDOWN &&
		       (h.flags & VSOCK_SHUTDOWN_SEND),
	       "host close: guest gets SHUTDOWN (flags %u)", h.flags);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST, "then RST");
	TAP_OK(stats().conns == 0, "connection freed");

	/* guest refuses: RST instead of RESPONSE closes the client */
	fd = uconnect(uds);
	TAP_OK(fd >= 0 && write(fd, "CONNECT 9\r\n", 11) == 11, "CONNECT 9 with CRLF");
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_REQUEST && h.dst_port == 9, "REQUEST");
	struct vsock_hdr rst = vd_hdr(CID, 9, h.src_port, VSOCK_OP_RST, 0, 0, 0, 0);
	vd_send(&rst);
	TAP_OK(host_read(fd, buf, sizeof(buf), 200) == 0, "guest RST: host client sees EOF without OK");
	close(fd);
	TAP_OK(stats().conns == 0, "no connection left");

	/* a bad CONNECT line closes the client */
	fd = uconnect(uds);
	TAP_OK(fd >= 0 && write(fd, "HELLO 1\n", 8) == 8 && host_read(fd, buf, sizeof(buf), 200) == 0,
	       "\"HELLO 1\" is refused");
	close(fd);
	fd = uconnect(uds);
	memset(pay, 'A', 100);
	TAP_OK(fd >= 0 && write(fd, pay, 100) == 100 && host_read(fd, buf, sizeof(buf), 200) >= -1 &&
		       host_read(fd, buf, sizeof(buf), 1) <= 0,
	       "100 bytes without a newline are refused");
	close(fd);
	fd = uconnect(uds);
	TAP_OK(fd >= 0 && write(fd, "CONNECT 99999999999\n", 20) == 20 && host_read(fd, buf, sizeof(buf), 200) == 0,
	       "a port over 32 bits is refused");
	close(fd);
	drain_guest();
	TAP_OK(stats().conns == 0, "no connection left");
}

static void test_guest_to_host(void)
{
	int lfd = ulisten(uds_5000);
	TAP_OK(lfd >= 0, "host listens on %s", uds_5000);
	struct vsock_hdr q = vd_hdr(CID, 777, 5000, VSOCK_OP_REQUEST, 0, 0, 1 << 20, 0), h;
	vd_send(&q);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RESPONSE && h.src_port == 5000 &&
		       h.dst_port == 777,
	       "guest REQUEST to port 5000 gets RESPONSE");
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	TAP_OK(fd >= 0, "the host server accepted");
	memset(pay, 'g', 4000);
	struct vsock_hdr d = vd_hdr(CID, 777, 5000, VSOCK_OP_RW, 4000, 0, 1 << 20, 0);
	vd_send_raw(&d, VSOCK_HDR_LEN, pay, 4000);
	char *buf = malloc(1 << 20);
	TAP_OK(host_read(fd, buf, 1 << 20, 200) == 4000, "host server reads 4000 bytes");
	TAP_OK(write(fd, "echo", 4) == 4 && guest_recv(&h, pay, sizeof(pay)) == VSOCK_HDR_LEN + 4 &&
		       h.op == VSOCK_OP_RW && !memcmp(pay, "echo", 4),
	       "host server's reply reaches the guest");

	/* stuck host reader: the guest fills the socket and then our buffer, never more than the credit */
	uint32_t sent = 4000, pkts = 0;
	bool got_rst = false, credit_seen = false;
	uint64_t max_buffered = 0;
	for (int i = 0; i < 256 && !got_rst; i++) {
		struct vsock_hdr w = vd_hdr(CID, 777, 5000, VSOCK_OP_RW, VSOCK_MAX_PKT, 0, 1 << 20, 4);
		vd_send_raw(&w, VSOCK_HDR_LEN, pay, VSOCK_MAX_PKT);
		vsock_run(v);
		struct vsock_stats s = stats();
		if (s.buffered > max_buffered)
			max_buffered = s.buffered;
		while (vd_recv(&h, NULL, 0) >= 0) {
			got_rst |= h.op == VSOCK_OP_RST;
			credit_seen |= h.op == VSOCK_OP_CREDIT_UPDATE;
		}
		if (!got_rst)
			sent += VSOCK_MAX_PKT, pkts++;
	}
	TAP_OK(got_rst && stats().conns == 0 && stats().buffered == 0,
	       "a guest overrunning our credit gets RST (after %u packets, %u bytes; credit updates seen: %d)", pkts,
	       sent, credit_seen);
	TAP_OK(max_buffered > 0 && max_buffered <= VSOCK_BUF_ALLOC, "stuck reader: at most %llu bytes buffered (limit %u)",
	       (unsigned long long)max_buffered, VSOCK_BUF_ALLOC);
	close(fd);

	/* a well-behaved guest against a slow reader: it waits for credit updates */
	q.src_port = 778;
	vd_send(&q);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RESPONSE, "second connection");
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	uint32_t fwd = h.fwd_cnt, alloc = h.buf_alloc, tx = 0, total = 4u << 20, rcvd = 0;
	uint8_t *pattern = malloc(total);
	for (uint32_t i = 0; i < total; i++)
		pattern[i] = (uint8_t)(i * 7 + i / 251);
	max_buffered = 0;
	bool ok = true;
	struct vsock_stats s;
	for (int iter = 0; iter < 100000 && rcvd < total; iter++) {
		uint32_t credit = alloc - (tx - fwd);
		uint32_t len = total - tx < VSOCK_MAX_PKT ? total - tx : VSOCK_MAX_PKT;
		if (len > credit)
			len = credit;
		if (len) {
			struct vsock_hdr w = vd_hdr(CID, 778, 5000, VSOCK_OP_RW, len, 0, 1 << 20, 0);
			vd_send_raw(&w, VSOCK_HDR_LEN, pattern + tx, len);
			tx += len;
		}
		s = stats();
		if (s.buffered > max_buffered)
			max_buffered = s.buffered;
		if (iter % 3 == 0) { /* the host reads slowly */
			ssize_t r = recv(fd, buf, 8192, MSG_DONTWAIT);
			if (r > 0) {
				ok = ok && !memcmp(buf, pattern + rcvd, (size_t)r);
				rcvd += (uint32_t)r;
			}
		}
		vsock_run(v);
		while (vd_recv(&h, NULL, 0) >= 0)
			if (h.op == VSOCK_OP_RST)
				ok = false;
			else
				fwd = h.fwd_cnt, alloc = h.buf_alloc;
	}
	TAP_OK(ok && rcvd == total, "4 MiB through a slow host reader, checked (%u bytes)", rcvd);
	TAP_OK(max_buffered > 0 && max_buffered <= VSOCK_BUF_ALLOC, "buffered at most %llu bytes (limit %u)",
	       (unsigned long long)max_buffered, VSOCK_BUF_ALLOC);

	/* guest closes (SHUTDOWN both): host sees EOF, guest gets RST */
	struct vsock_hdr sd = vd_hdr(CID, 778, 5000, VSOCK_OP_SHUTDOWN, 0, 3, 1 << 20, 0);
	vd_send(&sd);
	TAP_OK(host_read(fd, buf, 1 << 20, 200) == 0, "guest SHUTDOWN(RCV|SEND): host sees EOF");
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST && h.dst_port == 778,
	       "guest gets the RST it waits for");
	close(fd);

	/* nobody listens on port 5001: RST */
	q = vd_hdr(CID, 779, 5001, VSOCK_OP_REQUEST, 0, 0, 1 << 20, 0);
	vd_send(&q);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST && h.src_port == 5001,
	       "REQUEST to a port without a host socket: RST");

	/* host client leaves mid-stream: RST once the guest writes to it */
	q = vd_hdr(CID, 780, 5000, VSOCK_OP_REQUEST, 0, 0, 1 << 20, 0);
	vd_send(&q);
	guest_recv(&h, NULL, 0);
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	TAP_OK(write(fd, "partial", 7) == 7, "host writes, then closes");
	close(fd);
	bool saw_data = false, saw_shut = false;
	for (int i = 0; i < 3 && guest_recv(&h, pay, sizeof(pay)) >= 0; i++) {
		saw_data |= h.op == VSOCK_OP_RW;
		saw_shut |= h.op == VSOCK_OP_SHUTDOWN && h.flags == 3;
	}
	TAP_OK(saw_data && saw_shut, "guest gets the data, then SHUTDOWN(RCV|SEND)");
	struct vsock_hdr w = vd_hdr(CID, 780, 5000, VSOCK_OP_RW, 10, 0, 1 << 20, 7);
	vd_send_raw(&w, VSOCK_HDR_LEN, "0123456789", 10);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST, "writing to it: RST");
	TAP_OK(stats().conns == 0, "no connection left");
	close(lfd);
	unlink(uds_5000);
	free(pattern);
	free(buf);
}

static void test_malformed(void)
{
	struct vsock_stats s0 = stats();
	struct vsock_hdr h, g;
	uint8_t junk[20] = { 0 };
	vd_send_raw(junk, sizeof(junk), NULL, 0);
	TAP_OK(stats().bad_packets == s0.bad_packets + 1 && guest_recv(&h, NULL, 0) < 0,
	       "20-byte tx packet: dropped, counted, no reply");
	g = vd_hdr(CID + 1, 1, 5000, VSOCK_OP_REQUEST, 0, 0, 0, 0);
	vd_send(&g);
	TAP_OK(guest_recv(&h, NULL, 0) < 0 && stats().bad_packets == s0.bad_packets + 2, "spoofed source CID: dropped");
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_REQUEST, 0, 0, 0, 0);
	g.dst_cid = 7;
	vd_send(&g);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST && h.src_cid == 7,
	       "destination CID 7: RST from CID 7");
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_REQUEST, 0, 0, 0, 0);
	g.type = 2;
	vd_send(&g);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST, "SEQPACKET type: RST");
	g = vd_hdr(CID, 1, 5000, 99, 0, 0, 0, 0);
	vd_send(&g);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST, "op 99: RST");
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_RW, 5000, 0, 0, 0);
	vd_send_raw(&g, VSOCK_HDR_LEN, pay, 100);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST, "len 5000 with 100 bytes: RST");
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_RW, 70000, 0, 0, 0);
	vd_send_raw(&g, VSOCK_HDR_LEN, pay, 70000 > sizeof(pay) ? sizeof(pay) : 70000);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST, "payload over 64 KiB: RST");
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_RW, 3, 0, 0, 0);
	vd_send_raw(&g, VSOCK_HDR_LEN, "abc", 3);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST && h.dst_port == 1,
	       "RW without a connection: RST");
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_RST, 0, 0, 0, 0);
	vd_send(&g);
	TAP_OK(guest_recv(&h, NULL, 0) < 0, "RST without a connection: no answer");
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_SHUTDOWN, 4, 3, 0, 0);
	vd_send_raw(&g, VSOCK_HDR_LEN, "abcd", 4);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST, "payload on SHUTDOWN: RST");
	/* header split over three descriptors, the payload in the third */
	uint8_t hb[VSOCK_HDR_LEN];
	g = vd_hdr(CID, 1, 5000, VSOCK_OP_CREDIT_REQUEST, 0, 0, 0, 0);
	memcpy(hb, &g, VSOCK_HDR_LEN);
	memcpy(vd_ram + VD_TX_AREA, hb, 10);
	memcpy(vd_ram + VD_TX_AREA + 0x40, hb + 10, VSOCK_HDR_LEN - 10);
	vd_desc(1, 10, VD_GPA + VD_TX_AREA, 10, VIRTQ_DESC_F_NEXT, 11);
	vd_desc(1, 11, VD_GPA + VD_TX_AREA + 0x40, VSOCK_HDR_LEN - 10, 0, 0);
	vd_avail(1, 10);
	vd_wr(VIRTIO_MMIO_QUEUE_NOTIFY, VSOCK_TXQ);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RST && h.dst_port == 1,
	       "header split across descriptors is parsed (CREDIT_REQUEST without a connection: RST)");
	TAP_OK(!(vd_rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET) && stats().conns == 0,
	       "device still healthy, no connection");
	/* a broken ring: needs reset, logged once by the transport */
	vd_desc(1, 12, 0xdead00000000ull, 64, 0, 0);
	vd_avail(1, 12);
	vd_wr(VIRTIO_MMIO_QUEUE_NOTIFY, VSOCK_TXQ);
	TAP_OK(vd_rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, "tx descriptor outside RAM: DEVICE_NEEDS_RESET");
	vd_start();
	vd_rx_post(32);
}

static int pair_connect(void *ctx, uint32_t port)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	int *keep = ctx;
	for (int i = 0; i < 512; i++)
		if (keep[i] < 0) {
			keep[i] = sv[1];
			return sv[0];
		}
	close(sv[1]);
	return sv[0];
}

/* Makes v a second device whose guest connections end in socketpairs (host ends kept in keep[]),
 * attached and started on the test transport; returns the device it replaces. */
static struct vsock *pair_device_up(int keep[512], struct vsock_config *cfg, const char *what)
{
	for (int i = 0; i < 512; i++)
		keep[i] = -1;
	struct vsock *saved = v;
	struct cella_err err = { 0 };
	*cfg = (struct vsock_config){ .guest_cid = CID, .connect = pair_connect, .connect_ctx = keep };
	TAP_OK(vsock_new(cfg, &v, &err) == 0, "%s", what);
	virtio_mmio_destroy(&vd_t);
	virtio_mmio_init(&vd_t, &virtio_vsock_ops, v, &vd_host, 6, &vd_mem, &err);
	vsock_attach(v, &vd_t);
	vd_start();
	return saved;
}

static void test_limit_and_reset(void)
{
	static int keep[512];
	struct vsock_config cfg;
	struct vsock *saved = pair_device_up(keep, &cfg, "device with a connect hook");
	vd_rx_post(VD_QSIZE);
	unsigned responses = 0, rsts = 0;
	struct vsock_hdr h;
	for (uint32_t p = 0; p < 400; p++) {
		struct vsock_hdr q = vd_hdr(CID, 10000 + p, 80, VSOCK_OP_REQUEST, 0, 0, 65536, 0);
		vd_send(&q);
		while (vd_recv(&h, NULL, 0) >= 0)
			h.op == VSOCK_OP_RESPONSE ? responses++ : h.op == VSOCK_OP_RST ? rsts++ : 0;
	}
	drain_guest();
	struct vsock_stats s = stats();
	TAP_OK(s.conns == VSOCK_MAX_CONNS && responses == VSOCK_MAX_CONNS && rsts == 400 - VSOCK_MAX_CONNS,
	       "400 REQUESTs: %u accepted, %u RST (limit %u)", responses, rsts, VSOCK_MAX_CONNS);
	/* flood without rx buffers: the RST ring is bounded */
	for (uint32_t p = 0; p < 1000; p++) {
		struct vsock_hdr q = vd_hdr(CID, 20000 + p, 80, VSOCK_OP_REQUEST, 0, 0, 65536, 0);
		vd_send(&q);
	}
	s = stats();
	TAP_OK(s.orphan_rsts <= 64 && s.conns == VSOCK_MAX_CONNS, "1000 more: %u RSTs pending (ring of 64)",
	       s.orphan_rsts);

	/* transport reset: every connection dropped, the driver gets the event */
	vd_ev_post();
	vsock_transport_reset(v);
	uint32_t id;
	memcpy(&id, vd_ram + VD_EV_AREA, 4);
	uint16_t *u = (uint16_t *)(void *)(vd_ram + vd_q[2].used);
	s = stats();
	TAP_OK(u[1] == 1 && id == VSOCK_EVENT_TRANSPORT_RESET && s.events_sent == 1 && s.conns == 0 &&
		       s.orphan_rsts == 0,
	       "TRANSPORT_RESET event sent, connections dropped");
	char c;
	TAP_OK(keep[0] >= 0 && read(keep[0], &c, 1) == 0, "host side of a dropped connection sees EOF");

	/* device reset (status 0) drops connections too */
	for (int i = 0; i < 512; i++)
		if (keep[i] >= 0)
			close(keep[i]), keep[i] = -1;
	vd_start();
	vd_rx_post(8);
	struct vsock_hdr q = vd_hdr(CID, 1, 80, VSOCK_OP_REQUEST, 0, 0, 65536, 0);
	vd_send(&q);
	TAP_OK(stats().conns == 1, "one connection");
	vd_wr(VIRTIO_MMIO_STATUS, 0);
	TAP_OK(stats().conns == 0 && read(keep[0], &c, 1) == 0, "driver reset drops it; host sees EOF");
	close(keep[0]);
	vsock_free(v);
	virtio_mmio_destroy(&vd_t);
	v = saved;
}

/* The id of the next element the device put in the used ring of queue q (not consumed). */
static uint32_t next_used_id(unsigned q)
{
	const uint32_t *e = (const uint32_t *)(const void *)(vd_ram + vd_q[q].used + 4 + 8 * (vd_q[q].used_seen % VD_QSIZE));
	return e[0];
}

/* Once a connection exists, rx_pump keeps one rx buffer popped while the host has nothing to send
 * (it had work, then read EAGAIN). Paused for a snapshot, that buffer must go back to the ring:
 * otherwise the saved queue state has it neither available nor used and a restored guest never gets
 * it back. After restore: TRANSPORT_RESET, no connection, and the held buffer is the next used. */
static void test_snapshot_rx_buffer(void)
{
	static int keep[512];
	struct vsock_config cfg;
	struct vsock *saved = pair_device_up(keep, &cfg, "snapshot: device with a connect hook");
	struct cella_err err = { 0 };
	vd_rx_post(8);
	vd_ev_post();
	struct vsock_hdr h, q = vd_hdr(CID, 7, 80, VSOCK_OP_REQUEST, 0, 0, 65536, 0);
	vd_send(&q);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RESPONSE && keep[0] >= 0,
	       "snapshot: guest connection accepted");
	vsock_run(v);
	struct vq *rq = &vd_t.q[VSOCK_RXQ].vq;
	TAP_OK((uint16_t)(rq->last_avail - rq->used_idx) == 1, "one rx buffer popped and not used (%u)",
	       (unsigned)(uint16_t)(rq->last_avail - rq->used_idx));

	/* pause gives it back; the device then takes it again for the next packet */
	virtio_vsock_ops.pause(v);
	TAP_OK(rq->last_avail == rq->used_idx, "pause: the held rx buffer is back in the ring");
	TAP_OK(write(keep[0], "hi", 2) == 2, "host writes");
	uint8_t p[8] = { 0 };
	TAP_OK(guest_recv(&h, p, sizeof(p)) == VSOCK_HDR_LEN + 2 && h.op == VSOCK_OP_RW && !memcmp(p, "hi", 2),
	       "after the pause the data comes through");
	vsock_run(v);

	/* snapshot while one is held again, restore into a fresh device over the same guest memory */
	TAP_OK((uint16_t)(rq->last_avail - rq->used_idx) == 1, "one held again");
	uint16_t held = ((uint16_t *)(void *)(vd_ram + vd_q[0].avail))[2 + (uint16_t)(rq->last_avail - 1) % VD_QSIZE];
	virtio_vsock_ops.pause(v);
	char path[160];
	snprintf(path, sizeof(path), "%s/state", dir);
	struct snap_writer w;
	snap_writer_init(&w);
	snap_begin(&w, "virtio.vsock");
	int r = virtio_mmio_save(&vd_t, &w, &err);
	snap_end(&w);
	if (r == 0)
		r = snap_writer_finish(&w, path, &err);
	snap_writer_free(&w);
	TAP_OK(r == 0, "saved: %s", r ? err.msg : "ok");
	uint16_t ev_used = ((uint16_t *)(void *)(vd_ram + vd_q[2].used))[1];
	vsock_free(v);
	virtio_mmio_destroy(&vd_t);
	close(keep[0]);
	keep[0] = -1;

	TAP_OK(vsock_new(&cfg, &v, &err) == 0, "restored device");
	virtio_mmio_init(&vd_t, &virtio_vsock_ops, v, &vd_host, 6, &vd_mem, &err);
	vsock_attach(v, &vd_t);
	struct snap_file f;
	struct snap_sec sec;
	r = snap_file_open(&f, path, &err);
	if (r == 0)
		r = snap_need(&f, &sec, &err, "virtio.vsock");
	if (r == 0)
		r = virtio_mmio_load(&vd_t, &sec, &err);
	if (r == 0)
		r = snap_sec_done(&sec, &err);
	TAP_OK(r == 0, "loaded: %s", r ? err.msg : "ok");
	snap_file_close(&f);
	unlink(path);
	uint32_t id;
	memcpy(&id, vd_ram + VD_EV_AREA, 4);
	struct vsock_stats st = stats();
	TAP_OK(((uint16_t *)(void *)(vd_ram + vd_q[2].used))[1] == (uint16_t)(ev_used + 1) &&
		       id == VSOCK_EVENT_TRANSPORT_RESET && st.events_sent == 1 && st.conns == 0,
	       "restore: TRANSPORT_RESET sent, no connection resurrected");
	TAP_OK(vd_t.q[VSOCK_RXQ].vq.last_avail == vd_t.q[VSOCK_RXQ].vq.used_idx &&
		       vd_t.q[VSOCK_RXQ].vq.used_idx == rq->used_idx,
	       "restore: every rx buffer the guest posted is available or used");
	q = vd_hdr(CID, 8, 80, VSOCK_OP_REQUEST, 0, 0, 65536, 0);
	vd_send(&q);
	vsock_run(v);
	uint32_t first = next_used_id(VSOCK_RXQ);
	TAP_OK(guest_recv(&h, NULL, 0) == VSOCK_HDR_LEN && h.op == VSOCK_OP_RESPONSE && le32toh(h.dst_port) == 8 &&
		       first == held,
	       "restore: a new connection works, answered in the buffer held at the snapshot (%u, %u)", first, held);

	/* no event buffer when the reset happens: it goes out once the driver posts one */
	vd_start();
	vd_rx_post(8);
	uint16_t evu = ((uint16_t *)(void *)(vd_ram + vd_q[2].used))[1];
	vsock_transport_reset(v);
	TAP_OK(((uint16_t *)(void *)(vd_ram + vd_q[2].used))[1] == evu, "reset without an event buffer: owed");
	vd_ev_post();
	memcpy(&id, vd_ram + VD_EV_AREA, 4);
	TAP_OK(((uint16_t *)(void *)(vd_ram + vd_q[2].used))[1] == (uint16_t)(evu + 1) &&
		       id == VSOCK_EVENT_TRANSPORT_RESET,
	       "the owed TRANSPORT_RESET goes into the next event buffer");
	vd_ev_post();
	TAP_OK(((uint16_t *)(void *)(vd_ram + vd_q[2].used))[1] == (uint16_t)(evu + 1), "and only once");

	for (int i = 0; i < 512; i++)
		if (keep[i] >= 0)
			close(keep[i]);
	vsock_free(v);
	virtio_mmio_destroy(&vd_t);
	v = saved;
}

/* Out of fds: accept fails, the listener is paused (no busy loop) and comes back on a timer tick. */
static void test_accept_emfile(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uds);
	int probe = dup(0);
	struct rlimit old, low;
	getrlimit(RLIMIT_NOFILE, &old);
	low = old;
	low.rlim_cur = (rlim_t)probe; /* probe is the lowest free fd: with this limit no new fd can be had */
	close(probe);
	TAP_OK(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "client connected (in the backlog)");
	unsigned before = stats().conns;
	setrlimit(RLIMIT_NOFILE, &low);
	int listener_ready = 0;
	for (int i = 0; i < 20; i++) { /* a listener still watched would be ready again each round */
		vsock_run(v);
		struct epoll_event evs[8];
		int n = epoll_wait(vsock_fd(v), evs, 8, 0);
		for (int k = 0; k < n; k++)
			listener_ready += evs[k].data.u64 == 1; /* once at most: a timer tick re-adds it */
	}
	setrlimit(RLIMIT_NOFILE, &old);
	TAP_OK(stats().conns == before && listener_ready <= 1,
	       "EMFILE on accept: listener paused, not polled (ready %d times in 20 rounds)", listener_ready);
	bool back = false;
	for (int i = 0; i < 100 && !back; i++) {
		usleep(10000);
		vsock_run(v);
		back = stats().conns == before + 1;
	}
	TAP_OK(back, "after a timer tick the client is accepted");
	close(fd);
	for (int i = 0; i < 50 && stats().conns != before; i++) {
		usleep(2000);
		vsock_run(v);
	}
	TAP_OK(stats().conns == before, "and freed when it leaves");
}

int main(void)
{
	struct cella_err err = { 0 };
	snprintf(dir, sizeof(dir), "/tmp/cella-vsock-XXXXXX");
	if (!mkdtemp(dir))
		TAP_SKIP_ALL("mkdtemp");
	snprintf(uds, sizeof(uds), "%s/v.sock", dir);
	snprintf(uds_5000, sizeof(uds_5000), "%s_5000", uds);

	struct vsock_config bad = { .guest_cid = 2, .uds = uds };
	TAP_OK(vsock_new(&bad, &v, &err) == -EINVAL && strstr(err.msg, "cid 2"), "cid 2 refused: %s", err.msg);
	char longp[120];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = 0;
	struct vsock_config lng = { .guest_cid = 3, .uds = longp };
	TAP_OK(vsock_new(&lng, &v, &err) == -ENAMETOOLONG, "overlong uds refused: %s", err.msg);
	int f = open(uds, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	close(f);
	struct vsock_config cfg = { .guest_cid = CID, .uds = uds };
	TAP_OK(vsock_new(&cfg, &v, &err) == -EEXIST && access(uds, F_OK) == 0, "a regular file at uds is kept: %s",
	       err.msg);
	unlink(uds);
	int stale = ulisten(uds);
	close(stale); /* a socket file nobody listens on */
	TAP_OK(vsock_new(&cfg, &v, &err) == 0, "stale socket file taken over");
	struct vsock *v2;
	TAP_OK(vsock_new(&cfg, &v2, &err) == -EADDRINUSE && access(uds, F_OK) == 0,
	       "second device on a live uds refused: %s", err.msg);

	TAP_OK(virtio_mmio_init(&vd_t, &virtio_vsock_ops, v, &vd_host, 6, &vd_mem, &err) == 0, "transport");
	vsock_attach(v, &vd_t);
	TAP_OK(vd_rd(VIRTIO_MMIO_DEVICE_ID) == 19, "device id 19");
	uint64_t cid = 0;
	virtio_mmio_ops.read(&vd_t, VIRTIO_MMIO_CONFIG, (uint8_t *)&cid, 8);
	uint32_t cid_hi = 0;
	virtio_mmio_ops.read(&vd_t, VIRTIO_MMIO_CONFIG + 4, (uint8_t *)&cid_hi, 4);
	TAP_OK(cid == CID && cid_hi == 0, "config space: guest_cid %llu", (unsigned long long)cid);
	vd_start();
	TAP_OK(vd_rd(VIRTIO_MMIO_STATUS) == 0xf, "driver OK with 3 queues");
	vd_rx_post(32);

	test_accept_emfile(); /* first: no connection and no timer yet */
	test_host_to_guest();
	test_guest_to_host();
	test_malformed();
	test_limit_and_reset(); /* leaves v without a transport */
	test_snapshot_rx_buffer(); /* the same */

	vsock_free(v);
	virtio_mmio_destroy(&vd_t);
	TAP_OK(access(uds, F_OK) < 0 && errno == ENOENT, "vsock_free removes %s", uds);
	rmdir(dir);
	return tap_done();
}
