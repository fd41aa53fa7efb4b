/* Split virtqueue walker: see queue.h. Guest memory is shared with running vCPUs, so every field is
 * read once into a local before it is checked and used (no double fetch). */
#include "vmm/virtio/queue.h"

#include <errno.h>
#include <string.h>

#include "base/err.h"

struct vq_desc_raw {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};
_Static_assert(sizeof(struct vq_desc_raw) == 16, "virtq_desc is 16 bytes");

void *vq_mem_ptr(const struct vq_mem *mem, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < mem->n; i++) {
		const struct vq_mem_region *r = &mem->r[i];
		if (gpa < r->gpa)
			continue;
		uint64_t off = gpa - r->gpa;
		/* written so that no sum can wrap */
		if (off <= r->size && len <= r->size - off)
			return r->host + off;
	}
	return NULL;
}

static inline uint16_t load16(const uint16_t *p, int order)
{
	return __atomic_load_n(p, order);
}

static inline void store16(uint16_t *p, uint16_t v, int order)
{
	__atomic_store_n(p, v, order);
}

/* Marks the queue broken. fmt is always a literal below taking two %llu. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static int fail(struct vq *q, struct cella_err *err, int code, const char *fmt, uint64_t a, uint64_t b)
{
	q->broken = true;
	return cella_err_set(err, code, fmt, (unsigned long long)a, (unsigned long long)b);
}
#pragma GCC diagnostic pop

int vq_setup(struct vq *q, const struct vq_mem *mem, uint16_t size, uint64_t desc_gpa, uint64_t avail_gpa,
	     uint64_t used_gpa, bool event_idx, struct cella_err *err)
{
	memset(q, 0, sizeof(*q));
	if (size == 0 || size > VQ_MAX_SIZE || (size & (size - 1)))
		return cella_err_set(err, EINVAL, "queue size %u: not a power of two in 1..%u", size, VQ_MAX_SIZE);
	if ((desc_gpa & 15) || (avail_gpa & 1) || (used_gpa & 3))
		return cella_err_set(err, EINVAL, "ring addresses 0x%llx/0x%llx/0x%llx misaligned",
				     (unsigned long long)desc_gpa, (unsigned long long)avail_gpa,
				     (unsigned long long)used_gpa);
	void *d = vq_mem_ptr(mem, desc_gpa, 16ull * size);
	void *a = vq_mem_ptr(mem, avail_gpa, 6 + 2ull * size);
	void *u = vq_mem_ptr(mem, used_gpa, 6 + 8ull * size);
	if (!d || !a || !u)
		return cella_err_set(err, EFAULT, "%s ring at 0x%llx is outside guest RAM",
				     !d ? "descriptor" : !a ? "driver" : "device",
				     (unsigned long long)(!d ? desc_gpa : !a ? avail_gpa : used_gpa));
	q->mem = mem;
	q->size = size;
	q->event_idx = event_idx;
	q->desc = d;
	q->avail = a;
	q->used = u;
	return 0;
}

void vq_reset(struct vq *q)
{
	memset(q, 0, sizeof(*q));
}

bool vq_has_avail(struct vq *q)
{
	if (!q->size || q->broken)
		return false;
	return load16(&q->avail[1], __ATOMIC_ACQUIRE) != q->last_avail;
}

/* Appends one checked descriptor's buffer to the chain. */
static int add_buf(struct vq *q, struct vq_chain *c, uint64_t addr, uint32_t len, uint16_t flags,
		   struct cella_err *err)
{
	bool w = flags & VIRTQ_DESC_F_WRITE;
	if (c->n >= VQ_MAX_SEGS)
		return fail(q, err, EINVAL, "chain longer than %llu descriptors (head %llu)", VQ_MAX_SEGS, c->head);
	if (!w && c->n > c->n_out)
		return fail(q, err, EINVAL, "descriptor %llu of chain %llu: readable after writable", c->n, c->head);
	uint8_t *p = vq_mem_ptr(q->mem, addr, len);
	if (!p)
		return fail(q, err, EFAULT, "buffer [0x%llx, +0x%llx) is outside guest RAM", addr, len);
	uint64_t *total = w ? &c->in_bytes : &c->out_bytes;
	if (*total + len > UINT32_MAX)
		return fail(q, err, E2BIG, "chain %llu: total length over 4 GiB (at descriptor %llu)", c->head, c->n);
	*total += len;
	c->buf[c->n++] = (struct vq_buf){ .addr = p, .len = len, .write = w };
	if (!w)
		c->n_out = c->n;
	return 0;
}

/* Walks an indirect table: its own descriptor indexes, bounded by the table length; no nesting. */
static int walk_indirect(struct vq *q, struct vq_chain *c, uint64_t addr, uint32_t len, struct cella_err *err)
{
	if (len == 0 || len % 16)
		return fail(q, err, EINVAL, "indirect table length %llu is not a non-zero multiple of 16 (head %llu)",
			    len, c->head);
	if (addr & 15)
		return fail(q, err, EINVAL, "indirect table at 0x%llx misaligned (head %llu)", addr, c->head);
	uint32_t n = len / 16;
	if (n > VQ_MAX_SEGS)
		return fail(q, err, EINVAL, "indirect table of %llu descriptors (head %llu)", n, c->head);
	const struct vq_desc_raw *t = vq_mem_ptr(q->mem, addr, len);
	if (!t)
		return fail(q, err, EFAULT, "indirect table [0x%llx, +0x%llx) is outside guest RAM", addr, len);
	uint32_t i = 0;
	for (uint32_t steps = 0;; steps++) {
		if (steps >= n)
			return fail(q, err, EINVAL, "indirect chain %llu loops (over %llu descriptors)", c->head, n);
		struct vq_desc_raw d;
		memcpy(&d, (const void *)&t[i], sizeof(d)); /* one fetch of guest data */
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return fail(q, err, EINVAL, "indirect descriptor inside an indirect table (head %llu, entry %llu)",
				    c->head, i);
		int r = add_buf(q, c, d.addr, d.len, d.flags, err);
		if (r < 0)
			return r;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= n)
			return fail(q, err, EINVAL, "indirect next index %llu out of table of %llu", d.next, n);
		i = d.next;
	}
}

int vq_pop(struct vq *q, struct vq_chain *c, struct cella_err *err)
{
	if (!q->size)
		return cella_err_set(err, EINVAL, "queue not set up");
	if (q->broken)
		return cella_err_set(err, EIO, "queue is broken; device needs reset");
	/* acquire: the ring entry and descriptors the driver wrote before bumping idx are visible */
	uint16_t avail_idx = load16(&q->avail[1], __ATOMIC_ACQUIRE);
	uint16_t pending = (uint16_t)(avail_idx - q->last_avail);
	if (pending == 0)
		return 0;
	if (pending > q->size)
		return fail(q, err, EINVAL, "avail idx %llu is %llu entries ahead (more than the queue size)",
			    avail_idx, pending);
	uint16_t head = load16(&q->avail[2 + (q->last_avail & (q->size - 1))], __ATOMIC_RELAXED);
	c->head = head;
	c->n = c->n_out = 0;
	c->out_bytes = c->in_bytes = 0;
	if (head >= q->size)
		return fail(q, err, EINVAL, "avail ring head %llu out of queue of %llu", head, q->size);
	uint16_t i = head;
	for (unsigned steps = 0;; steps++) {
		/* a chain visits each descriptor at most once, so size steps bounds it and catches loops */
		if (steps >= q->size)
			return fail(q, err, EINVAL, "chain %llu loops or is longer than the queue (%llu)", head, q->size);
		struct vq_desc_raw d;
		memcpy(&d, (const void *)&q->desc[i], sizeof(d));
		int r;
		if (d.flags & VIRTQ_DESC_F_INDIRECT) {
			if (d.flags & VIRTQ_DESC_F_NEXT)
				return fail(q, err, EINVAL, "indirect descriptor %llu with NEXT (head %llu)", i, head);
			r = walk_indirect(q, c, d.addr, d.len, err);
			if (r < 0)
				return r;
			break;
		}
		r = add_buf(q, c, d.addr, d.len, d.flags, err);
		if (r < 0)
			return r;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			break;
		if (d.next >= q->size)
			return fail(q, err, EINVAL, "descriptor next index %llu out of queue of %llu", d.next, q->size);
		i = d.next;
	}
	q->last_avail++;
	if (q->event_idx) /* avail_event: the driver need not notify us before this entry */
		store16(&q->used[2 + 4 * q->size], q->last_avail, __ATOMIC_RELAXED);
	return 1;
}

void vq_unpop(struct vq *q)
{
	if (!q->size || q->broken)
		return;
	q->last_avail--;
	if (q->event_idx)
		store16(&q->used[2 + 4 * q->size], q->last_avail, __ATOMIC_RELAXED);
}

void vq_push(struct vq *q, uint16_t head, uint32_t written)
{
	if (!q->size || q->broken)
		return;
	uint32_t *elem = (uint32_t *)(void *)&q->used[2 + 4 * (q->used_idx & (q->size - 1))];
	__atomic_store_n(&elem[0], (uint32_t)head, __ATOMIC_RELAXED);
	__atomic_store_n(&elem[1], written, __ATOMIC_RELAXED);
	q->used_idx++;
	/* release: the element (and the data written into the buffers) before the index */
	store16(&q->used[1], q->used_idx, __ATOMIC_RELEASE);
}

void vq_push_n(struct vq *q, const uint16_t *heads, const uint32_t *written, unsigned n)
{
	if (!q->size || q->broken || n == 0)
		return;
	for (unsigned i = 0; i < n; i++) {
		uint32_t *elem = (uint32_t *)(void *)&q->used[2 + 4 * ((uint16_t)(q->used_idx + i) & (q->size - 1))];
		__atomic_store_n(&elem[0], (uint32_t)heads[i], __ATOMIC_RELAXED);
		__atomic_store_n(&elem[1], written[i], __ATOMIC_RELAXED);
	}
	q->used_idx = (uint16_t)(q->used_idx + n);
	store16(&q->used[1], q->used_idx, __ATOMIC_RELEASE);
}

void vq_unpop_n(struct vq *q, uint16_t n)
{
	if (!q->size || q->broken)
		return;
	q->last_avail = (uint16_t)(q->last_avail - n);
}

bool vq_should_notify(struct vq *q)
{
	if (!q->size || q->broken)
		return false;
	/* full barrier: our used idx store must be visible before we read the driver's suppression
	 * fields, or both sides may decide the other will act (a lost interrupt) */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!q->event_idx)
		return !(load16(&q->avail[0], __ATOMIC_RELAXED) & VIRTQ_AVAIL_F_NO_INTERRUPT);
	uint16_t old = q->signalled_used, new = q->used_idx;
	bool valid = q->signalled_valid;
	q->signalled_used = new;
	q->signalled_valid = true;
	if (!valid)
		return true;
	uint16_t ev = load16(&q->avail[2 + q->size], __ATOMIC_RELAXED);
	/* vring_need_event: notify when used_event lies in [old, new) */
	return (uint16_t)(new - ev - 1) < (uint16_t)(new - old);
}

bool vq_enable_notify(struct vq *q, bool enable)
{
	if (!q->size || q->broken)
		return false;
	if (q->event_idx) {
		if (enable)
			store16(&q->used[2 + 4 * q->size], q->last_avail, __ATOMIC_RELAXED);
	} else {
		uint16_t f = load16(&q->used[0], __ATOMIC_RELAXED);
		f = enable ? (uint16_t)(f & ~VIRTQ_USED_F_NO_NOTIFY) : (uint16_t)(f | VIRTQ_USED_F_NO_NOTIFY);
		store16(&q->used[0], f, __ATOMIC_RELAXED);
	}
	if (!enable)
		return false;
	/* full barrier: publish the request before re-checking, else a buffer added meanwhile is missed */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return load16(&q->avail[1], __ATOMIC_ACQUIRE) != q->last_avail;
}
