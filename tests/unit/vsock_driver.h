/* A fake virtio-vsock driver over a fake guest memory, for the unit test and the fuzzer: it sets up
 * the three queues through the virtio-mmio registers, posts rx buffers, sends packets on the tx queue
 * and reads what the device put in the rx queue. Queues of VD_QSIZE at fixed offsets of vd_ram. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "vmm/virtio/mmio.h"
#include "vmm/virtio/vsock.h"

#define VD_GPA 0x100000ull
#define VD_RAM (1u << 20)
#define VD_QSIZE 64u
#define VD_RXBUF (VSOCK_HDR_LEN + 4096u) /* what Linux posts */
#define VD_RX_AREA 0x10000u              /* VD_QSIZE rx buffers */
#define VD_TX_AREA 0x60000u              /* one tx packet at a time (the device handles it in notify) */
#define VD_EV_AREA 0xf0000u

static _Alignas(4096) uint8_t vd_ram[VD_RAM];
static struct vq_mem vd_mem = { .r = { { .gpa = VD_GPA, .size = VD_RAM, .host = vd_ram } }, .n = 1 };
static struct virtio_mmio vd_t;
static inline int vd_set_irq(void *ctx, unsigned irq, int level)
{
	return 0;
}
static const struct hw_host vd_host = { .set_irq = vd_set_irq };

struct vd_queue {
	uint32_t desc, avail, used; /* offsets in vd_ram */
	uint16_t avail_idx, used_seen;
};
static struct vd_queue vd_q[3] = {
	{ 0x0000, 0x1000, 0x2000, 0, 0 },
	{ 0x3000, 0x4000, 0x5000, 0, 0 },
	{ 0x6000, 0x7000, 0x8000, 0, 0 },
};

static inline void vd_wr(uint64_t off, uint32_t v)
{
	virtio_mmio_ops.write(&vd_t, off, (const uint8_t *)&v, 4);
}
static inline uint32_t vd_rd(uint64_t off)
{
	uint32_t v;
	virtio_mmio_ops.read(&vd_t, off, (uint8_t *)&v, 4);
	return v;
}

/* Status 0 (reset), feature negotiation, three queues, DRIVER_OK. */
static inline void vd_start(void)
{
	vd_wr(VIRTIO_MMIO_STATUS, 0);
	memset(vd_ram, 0, 0x9000);
	for (unsigned i = 0; i < 3; i++)
		vd_q[i].avail_idx = vd_q[i].used_seen = 0;
	vd_wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	vd_wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	vd_wr(VIRTIO_MMIO_DRIVER_FEATURES, 1);
	vd_wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	for (unsigned i = 0; i < 3; i++) {
		vd_wr(VIRTIO_MMIO_QUEUE_SEL, i);
		vd_wr(VIRTIO_MMIO_QUEUE_NUM, VD_QSIZE);
		vd_wr(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)(VD_GPA + vd_q[i].desc));
		vd_wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(VD_GPA + vd_q[i].avail));
		vd_wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(VD_GPA + vd_q[i].used));
		vd_wr(VIRTIO_MMIO_QUEUE_READY, 1);
	}
	vd_wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
					  VIRTIO_STATUS_DRIVER_OK);
}

static inline void vd_desc(unsigned q, uint16_t i, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next)
{
	struct { uint64_t a; uint32_t l; uint16_t f, n; } d = { gpa, len, flags, next };
	memcpy(vd_ram + vd_q[q].desc + 16u * i, &d, 16);
}

static inline void vd_avail(unsigned q, uint16_t head)
{
	uint16_t *a = (uint16_t *)(void *)(vd_ram + vd_q[q].avail);
	a[2 + vd_q[q].avail_idx % VD_QSIZE] = head;
	vd_q[q].avail_idx++;
	__atomic_store_n(&a[1], vd_q[q].avail_idx, __ATOMIC_RELEASE);
}

/* Posts one rx buffer in descriptor slot == its ring slot (so buffers are reused in order). */
static inline void vd_rx_post(unsigned n)
{
	for (unsigned k = 0; k < n; k++) {
		uint16_t slot = vd_q[0].avail_idx % VD_QSIZE;
		vd_desc(0, slot, VD_GPA + VD_RX_AREA + slot * VD_RXBUF, VD_RXBUF, VIRTQ_DESC_F_WRITE, 0);
		vd_avail(0, slot);
	}
	vd_wr(VIRTIO_MMIO_QUEUE_NOTIFY, VSOCK_RXQ);
}

/* Sends header + payload on the tx queue as two descriptors (as Linux does); returns false if the
 * device did not consume it. */
static inline bool vd_send_raw(const void *hdr, uint32_t hdr_len, const void *payload, uint32_t len)
{
	uint16_t slot = (uint16_t)((vd_q[1].avail_idx * 2) % VD_QSIZE);
	memcpy(vd_ram + VD_TX_AREA, hdr, hdr_len);
	if (len)
		memcpy(vd_ram + VD_TX_AREA + 0x100, payload, len);
	vd_desc(1, slot, VD_GPA + VD_TX_AREA, hdr_len, len ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(slot + 1));
	vd_desc(1, (uint16_t)(slot + 1), VD_GPA + VD_TX_AREA + 0x100, len, 0, 0);
	vd_avail(1, slot);
	vd_wr(VIRTIO_MMIO_QUEUE_NOTIFY, VSOCK_TXQ);
	uint16_t *u = (uint16_t *)(void *)(vd_ram + vd_q[1].used);
	bool ok = __atomic_load_n(&u[1], __ATOMIC_ACQUIRE) == vd_q[1].avail_idx;
	vd_q[1].used_seen = u[1];
	return ok;
}

static inline struct vsock_hdr vd_hdr(uint64_t src_cid, uint32_t src_port, uint32_t dst_port, uint16_t op, uint32_t len,
			       uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt)
{
	return (struct vsock_hdr){ .src_cid = src_cid, .dst_cid = VSOCK_HOST_CID, .src_port = src_port,
				   .dst_port = dst_port, .len = len, .type = VSOCK_TYPE_STREAM, .op = op,
				   .flags = flags, .buf_alloc = buf_alloc, .fwd_cnt = fwd_cnt };
}

/* A control packet (no payload). */
static inline bool vd_send(const struct vsock_hdr *h)
{
	return vd_send_raw(h, VSOCK_HDR_LEN, NULL, 0);
}

/* Takes the next packet the device wrote into the rx queue; the buffer is posted again. Returns the
 * used length, or -1 when the device has given nothing back. */
static inline int vd_recv(struct vsock_hdr *h, uint8_t *payload, uint32_t max)
{
	uint16_t *u = (uint16_t *)(void *)(vd_ram + vd_q[0].used);
	if (__atomic_load_n(&u[1], __ATOMIC_ACQUIRE) == vd_q[0].used_seen)
		return -1;
	uint32_t *e = (uint32_t *)(void *)(vd_ram + vd_q[0].used + 4 + 8 * (vd_q[0].used_seen % VD_QSIZE));
	uint32_t id = e[0], len = e[1];
	vd_q[0].used_seen++;
	const uint8_t *buf = vd_ram + VD_RX_AREA + (id % VD_QSIZE) * VD_RXBUF;
	memset(h, 0, sizeof(*h));
	if (len >= VSOCK_HDR_LEN) {
		memcpy(h, buf, VSOCK_HDR_LEN);
		uint32_t n = len - VSOCK_HDR_LEN < max ? len - VSOCK_HDR_LEN : max;
		if (payload)
			memcpy(payload, buf + VSOCK_HDR_LEN, n);
	}
	vd_rx_post(1);
	return (int)len;
}

/* Posts one event buffer of 4 bytes. */
static inline void vd_ev_post(void)
{
	uint16_t slot = vd_q[2].avail_idx % VD_QSIZE;
	memset(vd_ram + VD_EV_AREA + 4u * slot, 0xff, 4);
	vd_desc(2, slot, VD_GPA + VD_EV_AREA + 4u * slot, 4, VIRTQ_DESC_F_WRITE, 0);
	vd_avail(2, slot);
	vd_wr(VIRTIO_MMIO_QUEUE_NOTIFY, VSOCK_EVQ);
}
