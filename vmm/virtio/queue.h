/* Split virtqueues (virtio 1.x, section 2.7) shared by every virtio device.
 *
 * Everything in guest memory is written by a hostile guest: ring addresses, descriptor addresses,
 * lengths, next links, indirect tables and the avail index are all checked before use. A check that
 * fails marks the queue broken (vq->broken) and returns a negative errno with a message naming the
 * field; the device then sets DEVICE_NEEDS_RESET and stops touching the queue.
 *
 * Typical device loop:
 *	struct vq_chain c;
 *	while ((r = vq_pop(q, &c, &err)) > 0) {
 *		... read c.buf[0 .. c.n_out), write c.buf[c.n_out .. c.n) ...
 *		vq_push(q, c.head, written);
 *	}
 *	if (r < 0) ... needs reset ...
 *	if (vq_should_notify(q)) ... raise the used-buffer interrupt ...
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct cella_err;

#define VQ_MAX_SIZE 1024u   /* largest queue size we offer (QueueNumMax) */
#define VQ_MAX_SEGS VQ_MAX_SIZE /* a chain, indirect table included, never has more descriptors */

#define VIRTQ_DESC_F_NEXT 1u
#define VIRTQ_DESC_F_WRITE 2u
#define VIRTQ_DESC_F_INDIRECT 4u
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u
#define VIRTQ_USED_F_NO_NOTIFY 1u

/* Guest-physical memory as the device sees it: up to 4 disjoint regions, each one host mapping. */
struct vq_mem_region {
	uint64_t gpa, size;
	uint8_t *host;
};
struct vq_mem {
	struct vq_mem_region r[4];
	unsigned n;
};

/* Host pointer for guest-physical [gpa, gpa + len) when it lies entirely inside one region, else NULL.
 * len 0 is valid (returns the pointer for gpa if gpa is inside a region or at its end). */
void *vq_mem_ptr(const struct vq_mem *mem, uint64_t gpa, uint64_t len);

struct vq_buf {
	uint8_t *addr; /* host pointer, checked: [addr, addr + len) is guest RAM */
	uint32_t len;
	bool write; /* device-writable */
};

struct vq_chain {
	uint16_t head; /* give back to vq_push */
	unsigned n, n_out; /* bufs [0, n_out) are device-readable, [n_out, n) device-writable */
	uint64_t out_bytes, in_bytes;
	struct vq_buf buf[VQ_MAX_SEGS];
};

struct vq {
	const struct vq_mem *mem;
	uint16_t size; /* power of two, 1..VQ_MAX_SIZE */
	bool event_idx; /* VIRTIO_RING_F_EVENT_IDX negotiated */
	bool broken;
	struct vq_desc_raw *desc;
	uint16_t *avail; /* flags, idx, ring[size], used_event */
	uint16_t *used; /* flags, idx, then {u32 id, u32 len}[size], then u16 avail_event */
	uint16_t last_avail; /* next avail entry to consume */
	uint16_t used_idx; /* shadow of used->idx */
	uint16_t signalled_used; /* used idx at the last notification decision */
	bool signalled_valid;
};

/* Binds a queue to guest memory after the driver set QueueReady. Checks size (power of two, <=
 * VQ_MAX_SIZE), alignment (desc 16, avail 2, used 4) and that all three rings lie inside RAM.
 * Starts with the indexes the device last saw as zero (a fresh queue). */
int vq_setup(struct vq *q, const struct vq_mem *mem, uint16_t size, uint64_t desc_gpa, uint64_t avail_gpa,
	     uint64_t used_gpa, bool event_idx, struct cella_err *err);

/* Forgets the queue (device reset). */
void vq_reset(struct vq *q);

/* Takes the next available chain. Returns 1 with *c filled, 0 when the ring is empty, or a negative
 * errno (queue now broken): -EFAULT for an address/length outside RAM, -EINVAL for a malformed ring
 * (bad head/next index, loop/over-long chain, nested or misaligned indirect table, avail idx jump,
 * a readable descriptor after a writable one), -E2BIG for a chain total length over 4 GiB. */
int vq_pop(struct vq *q, struct vq_chain *c, struct cella_err *err);

/* Gives back the chain the last vq_pop returned, untouched (nothing pushed since): the next vq_pop
 * returns it again. For a device that must wait (a rate limiter) before it can serve a request. */
void vq_unpop(struct vq *q);

/* Returns a chain to the driver with the number of bytes written into its writable buffers. */
void vq_push(struct vq *q, uint16_t head, uint32_t written);

/* Returns n chains at once: the driver sees the used index move once, after all n elements are in
 * place (virtio-net's mergeable RX buffers must appear together). */
void vq_push_n(struct vq *q, const uint16_t *heads, const uint32_t *written, unsigned n);

/* Gives back the last n chains taken by vq_pop and not pushed (the device could not use them yet):
 * the next vq_pop returns them again. n is at most the number taken since the last push. Unlike
 * vq_unpop, avail_event stays where vq_pop / vq_enable_notify left it (at the driver's avail idx when
 * the device ran out), so the driver's next buffer still notifies: for a device waiting for room. */
void vq_unpop_n(struct vq *q, uint16_t n);

/* After one or more vq_push: whether the driver wants an interrupt (used_event or NO_INTERRUPT). */
bool vq_should_notify(struct vq *q);

/* Tells the driver whether to notify us (VIRTQ_USED_F_NO_NOTIFY, or avail_event with event-idx).
 * After enabling, returns true when buffers arrived meanwhile so the caller polls again. */
bool vq_enable_notify(struct vq *q, bool enable);

/* True when the avail ring has entries the device has not taken. */
bool vq_has_avail(struct vq *q);
