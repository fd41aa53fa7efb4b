/* The split virtqueue against a fake guest memory: good chains (direct, indirect, mixed, idx
 * wrap-around, event-idx suppression) and every kind of malformed ring. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "base/err.h"
#include "tap.h"
#include "vmm/virtio/queue.h"

#define GPA 0x100000ull
#define RAM 0x10000ull
#define QSZ 8
#define DESC (GPA + 0x0)
#define AVAIL (GPA + 0x1000)
#define USED (GPA + 0x2000)
#define DATA (GPA + 0x4000)

static _Alignas(16) uint8_t ram[RAM];
static struct vq_mem mem = { .r = { { .gpa = GPA, .size = RAM, .host = ram } }, .n = 1 };
static struct vq q;
static struct vq_chain c;
static uint16_t avail_idx;

struct d {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};

static void *at(uint64_t gpa) { return ram + (gpa - GPA); }
static void set_desc(uint64_t table, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	struct d d = { addr, len, flags, next };
	memcpy((uint8_t *)at(table) + 16 * i, &d, 16);
}
static uint16_t *avail(void) { return at(AVAIL); }
static uint16_t *used(void) { return at(USED); }
static void offer(uint16_t head)
{
	avail()[2 + (avail_idx % QSZ)] = head;
	avail()[1] = ++avail_idx;
}

static void fresh(bool event_idx)
{
	memset(ram, 0, sizeof(ram));
	avail_idx = 0;
	struct cella_err err = { 0 };
	int r = vq_setup(&q, &mem, QSZ, DESC, AVAIL, USED, event_idx, &err);
	if (r)
		printf("# setup: %s\n", err.msg);
}

/* Offers head, pops, and expects failure with code; checks the queue is broken afterwards. */
static void expect_bad(const char *what, uint16_t head, int code)
{
	struct cella_err err = { 0 };
	offer(head);
	int r = vq_pop(&q, &c, &err);
	TAP_OK(r == -code && q.broken, "%s: %d (%s)", what, r, err.msg);
	r = vq_pop(&q, &c, NULL);
	TAP_OK(r == -EIO, "%s: broken queue stays broken", what);
}

int main(void)
{
	struct cella_err err = { 0 };

	/* setup checks */
	TAP_OK(vq_setup(&q, &mem, 6, DESC, AVAIL, USED, false, &err) == -EINVAL, "size 6 refused: %s", err.msg);
	TAP_OK(vq_setup(&q, &mem, 0, DESC, AVAIL, USED, false, NULL) == -EINVAL, "size 0 refused");
	TAP_OK(vq_setup(&q, &mem, 2048, DESC, AVAIL, USED, false, NULL) == -EINVAL, "size 2048 refused");
	TAP_OK(vq_setup(&q, &mem, QSZ, DESC + 8, AVAIL, USED, false, NULL) == -EINVAL, "misaligned desc refused");
	TAP_OK(vq_setup(&q, &mem, QSZ, DESC, AVAIL + 1, USED, false, NULL) == -EINVAL, "misaligned avail");
	TAP_OK(vq_setup(&q, &mem, QSZ, DESC, AVAIL, USED + 2, false, NULL) == -EINVAL, "misaligned used");
	TAP_OK(vq_setup(&q, &mem, QSZ, GPA + RAM - 64, AVAIL, USED, false, &err) == -EFAULT,
	       "desc ring crossing the end of RAM: %s", err.msg);
	TAP_OK(vq_setup(&q, &mem, QSZ, DESC, 0x1000, USED, false, NULL) == -EFAULT, "avail ring below RAM");
	TAP_OK(vq_setup(&q, &mem, QSZ, DESC, AVAIL, UINT64_MAX - 3, false, NULL) == -EFAULT, "used ring at 2^64-4");
	TAP_OK(vq_mem_ptr(&mem, UINT64_MAX - 1, 4) == NULL, "vq_mem_ptr: no wrap");
	TAP_OK(vq_mem_ptr(&mem, GPA + RAM, 0) != NULL && vq_mem_ptr(&mem, GPA + RAM, 1) == NULL, "vq_mem_ptr: end");

	/* empty ring */
	fresh(false);
	TAP_OK(vq_pop(&q, &c, NULL) == 0, "empty ring pops nothing");

	/* direct chain: 2 readable + 1 writable */
	set_desc(DESC, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 3);
	set_desc(DESC, 3, DATA + 16, 32, VIRTQ_DESC_F_NEXT, 5);
	set_desc(DESC, 5, DATA + 64, 100, VIRTQ_DESC_F_WRITE, 0);
	offer(0);
	int r = vq_pop(&q, &c, &err);
	TAP_OK(r == 1 && c.head == 0 && c.n == 3 && c.n_out == 2 && c.out_bytes == 48 && c.in_bytes == 100,
	       "direct chain: %d segs, %u out", c.n, c.n_out);
	TAP_OK(c.buf[0].addr == at(DATA) && c.buf[2].addr == at(DATA + 64) && c.buf[2].write, "direct chain: pointers");
	vq_push(&q, c.head, 100);
	TAP_OK(used()[1] == 1 && ((uint32_t *)at(USED + 4))[0] == 0 && ((uint32_t *)at(USED + 4))[1] == 100,
	       "used ring: id 0, len 100, idx 1");
	TAP_OK(vq_should_notify(&q), "notify without NO_INTERRUPT");
	avail()[0] = VIRTQ_AVAIL_F_NO_INTERRUPT;
	TAP_OK(!vq_should_notify(&q), "NO_INTERRUPT suppresses");
	vq_enable_notify(&q, false);
	TAP_OK(used()[0] & VIRTQ_USED_F_NO_NOTIFY, "NO_NOTIFY set");
	TAP_OK(!vq_enable_notify(&q, true) && !(used()[0] & VIRTQ_USED_F_NO_NOTIFY), "NO_NOTIFY cleared, nothing pending");

	/* indirect chain */
	fresh(false);
	uint64_t tab = DATA + 0x1000;
	set_desc(tab, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 2);
	set_desc(tab, 2, DATA + 8, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(tab, 1, DATA + 16, 512, VIRTQ_DESC_F_WRITE, 0);
	set_desc(DESC, 1, tab, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	offer(1);
	r = vq_pop(&q, &c, &err);
	TAP_OK(r == 1 && c.n == 3 && c.n_out == 2 && c.in_bytes == 512, "indirect chain: %d segs", c.n);

	/* mixed: direct then indirect at the end of the chain */
	set_desc(DESC, 2, DATA + 0x800, 4, VIRTQ_DESC_F_NEXT, 4);
	set_desc(DESC, 4, tab, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	offer(2);
	r = vq_pop(&q, &c, &err);
	TAP_OK(r == 1 && c.n == 4 && c.n_out == 3 && c.buf[0].len == 4, "mixed chain: %d segs (%s)", c.n, r < 0 ? err.msg : "");

	/* wrap-around of the 16-bit indexes */
	fresh(false);
	set_desc(DESC, 0, DATA, 1, 0, 0);
	q.last_avail = 65534;
	q.used_idx = 65534;
	avail_idx = 65534;
	int got = 0;
	for (int k = 0; k < 4; k++) {
		offer(0);
		if (vq_pop(&q, &c, NULL) == 1) {
			got++;
			vq_push(&q, c.head, 1);
		}
	}
	TAP_OK(got == 4 && q.last_avail == 2 && used()[1] == 2, "idx wrap-around: %d chains, last_avail %u", got,
	       q.last_avail);

	/* event-idx */
	fresh(true);
	set_desc(DESC, 0, DATA, 1, 0, 0);
	for (int k = 0; k < 3; k++)
		offer(0);
	for (int k = 0; k < 3; k++) {
		vq_pop(&q, &c, NULL);
		vq_push(&q, c.head, 0);
	}
	TAP_OK(used()[2 + 4 * QSZ] == 3, "event-idx: avail_event follows last_avail (%u)", used()[2 + 4 * QSZ]);
	avail()[2 + QSZ] = 0; /* used_event: interrupt once entry 0 is used */
	TAP_OK(vq_should_notify(&q), "event-idx: first decision notifies");
	offer(0);
	vq_pop(&q, &c, NULL);
	vq_push(&q, c.head, 0);
	TAP_OK(!vq_should_notify(&q), "event-idx: used_event 0 already passed: suppressed");
	avail()[2 + QSZ] = 4; /* next used idx is 4 -> 5: entry 4 crosses */
	offer(0);
	vq_pop(&q, &c, NULL);
	vq_push(&q, c.head, 0);
	TAP_OK(vq_should_notify(&q), "event-idx: used_event 4 crossed: notify");
	avail()[0] = VIRTQ_AVAIL_F_NO_INTERRUPT; /* ignored with event-idx */
	avail()[2 + QSZ] = 5;
	offer(0);
	vq_pop(&q, &c, NULL);
	vq_push(&q, c.head, 0);
	TAP_OK(vq_should_notify(&q), "event-idx: flags ignored, used_event 5 crossed");
	offer(0);
	TAP_OK(vq_enable_notify(&q, true) && used()[2 + 4 * QSZ] == 6, "event-idx: enable sees a pending buffer");

	/* malformed */
	fresh(false);
	set_desc(DESC, 0, GPA + RAM - 8, 16, 0, 0);
	expect_bad("buffer crossing the end of RAM", 0, EFAULT);
	fresh(false);
	set_desc(DESC, 0, 0x1000, 16, 0, 0);
	expect_bad("buffer below RAM", 0, EFAULT);
	fresh(false);
	set_desc(DESC, 0, UINT64_MAX - 8, 0x100, 0, 0);
	expect_bad("address + length wraps", 0, EFAULT);
	fresh(false);
	set_desc(DESC, 0, DATA, 0xffffffff, 0, 0);
	expect_bad("length 4 GiB - 1 in 64 KiB RAM", 0, EFAULT);
	fresh(false);
	for (unsigned k = 0; k < QSZ; k++)
		set_desc(DESC, k, GPA, (uint32_t)RAM, VIRTQ_DESC_F_NEXT, (uint16_t)(k + 1));
	set_desc(DESC, QSZ - 1, GPA, (uint32_t)RAM, 0, 0);
	mem.r[0].size = RAM; /* 8 x 64 KiB fits in 4 GiB: fine */
	offer(0);
	TAP_OK(vq_pop(&q, &c, NULL) == 1 && c.n == QSZ, "chain of exactly queue size is fine");
	fresh(false);
	set_desc(DESC, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(DESC, 1, DATA, 8, VIRTQ_DESC_F_NEXT, 0);
	expect_bad("loop 0->1->0", 0, EINVAL);
	fresh(false);
	set_desc(DESC, 3, DATA, 8, VIRTQ_DESC_F_NEXT, 3);
	expect_bad("self loop", 3, EINVAL);
	fresh(false);
	set_desc(DESC, 0, DATA, 8, VIRTQ_DESC_F_NEXT, QSZ);
	expect_bad("next index out of queue", 0, EINVAL);
	fresh(false);
	expect_bad("head out of queue", QSZ + 1, EINVAL);
	fresh(false);
	set_desc(DESC, 0, DATA, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	set_desc(DESC, 1, DATA, 8, 0, 0);
	expect_bad("readable after writable", 0, EINVAL);
	fresh(false);
	set_desc(tab, 0, tab, 16, VIRTQ_DESC_F_INDIRECT, 0);
	set_desc(DESC, 0, tab, 16, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("indirect inside indirect", 0, EINVAL);
	fresh(false);
	set_desc(DESC, 0, tab, 24, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("indirect length not a multiple of 16", 0, EINVAL);
	fresh(false);
	set_desc(DESC, 0, tab, 0, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("indirect length 0", 0, EINVAL);
	fresh(false);
	set_desc(DESC, 0, tab + 8, 16, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("indirect table misaligned", 0, EINVAL);
	fresh(false);
	set_desc(DESC, 0, GPA + RAM - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("indirect table outside RAM", 0, EFAULT);
	fresh(false);
	set_desc(DESC, 0, tab, 32 * 1024 * 16, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("indirect table larger than any chain", 0, EINVAL);
	fresh(false);
	set_desc(tab, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
	set_desc(tab, 1, DATA, 8, VIRTQ_DESC_F_NEXT, 0);
	set_desc(DESC, 0, tab, 32, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("loop inside an indirect table", 0, EINVAL);
	fresh(false);
	set_desc(tab, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 2);
	set_desc(DESC, 0, tab, 32, VIRTQ_DESC_F_INDIRECT, 0);
	expect_bad("indirect next beyond the table", 0, EINVAL);
	fresh(false);
	set_desc(tab, 0, DATA, 8, 0, 0);
	set_desc(DESC, 0, tab, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	expect_bad("indirect descriptor with NEXT", 0, EINVAL);
	fresh(false);
	set_desc(DESC, 0, DATA, 8, 0, 0);
	avail()[1] = QSZ + 1;
	r = vq_pop(&q, &c, &err);
	TAP_OK(r == -EINVAL && q.broken, "avail idx jump over queue size: %s", err.msg);
	fresh(false);
	set_desc(DESC, 0, DATA, 8, 0, 0);
	avail()[1] = QSZ;
	r = vq_pop(&q, &c, NULL);
	TAP_OK(r == 1, "avail idx exactly queue size ahead is fine");
	vq_push(&q, 0, 0);
	q.broken = true;
	TAP_OK(!vq_should_notify(&q) && !vq_has_avail(&q), "broken queue neither notifies nor reports work");
	vq_reset(&q);
	TAP_OK(vq_pop(&q, &c, NULL) == -EINVAL, "reset queue is not set up");
	return tap_done();
}
