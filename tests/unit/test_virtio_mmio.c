/* virtio-mmio transport with virtio-rng behind it: identity registers, feature negotiation, queue
 * setup, notify and the used interrupt, a garbage ring (NEEDS_RESET, config interrupt, logged once),
 * and reset. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "base/err.h"
#include "tap.h"
#include "vmm/virtio/mmio.h"

#define GPA 0x100000ull
#define RAM 0x10000ull
static _Alignas(16) uint8_t ram[RAM];
static struct vq_mem mem = { .r = { { .gpa = GPA, .size = RAM, .host = ram } }, .n = 1 };

static int irq_level = -1, irq_num = -1, irq_calls;
static int fake_set_irq(void *ctx, unsigned irq, int level)
{
	irq_num = (int)irq;
	irq_level = level;
	irq_calls++;
	return 0;
}
static const struct hw_host host = { .set_irq = fake_set_irq };
static struct virtio_mmio t;

static uint32_t rd(uint64_t off)
{
	uint8_t b[4];
	virtio_mmio_ops.read(&t, off, b, 4);
	uint32_t v;
	memcpy(&v, b, 4);
	return v;
}
static void wr(uint64_t off, uint32_t v)
{
	virtio_mmio_ops.write(&t, off, (const uint8_t *)&v, 4);
}

/* Driver side of a queue of 8 at GPA: desc 0x0, avail 0x1000, used 0x2000. */
static void setup_queue(void)
{
	wr(VIRTIO_MMIO_QUEUE_SEL, 0);
	wr(VIRTIO_MMIO_QUEUE_NUM, 8);
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)GPA);
	wr(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(GPA + 0x1000));
	wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(GPA + 0x2000));
	wr(VIRTIO_MMIO_QUEUE_READY, 1);
}

static void negotiate(uint64_t features)
{
	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
}

static void offer_one(uint16_t idx, uint64_t buf, uint32_t len)
{
	struct { uint64_t a; uint32_t l; uint16_t f, n; } d = { buf, len, VIRTQ_DESC_F_WRITE, 0 };
	memcpy(ram, &d, 16);
	uint16_t *avail = (uint16_t *)(ram + 0x1000);
	avail[2 + ((idx - 1) & 7)] = 0;
	avail[1] = idx;
}

int main(void)
{
	struct cella_err err = { 0 };
	TAP_OK(virtio_mmio_init(&t, &virtio_rng_ops, NULL, &host, 5, &mem, &err) == 0, "init");
	TAP_OK(rd(VIRTIO_MMIO_MAGIC_VALUE) == 0x74726976, "magic");
	TAP_OK(rd(VIRTIO_MMIO_VERSION_REG) == 2, "version 2 (modern)");
	TAP_OK(rd(VIRTIO_MMIO_DEVICE_ID) == 4, "device id 4 (rng)");
	TAP_OK(rd(VIRTIO_MMIO_VENDOR_ID) == VIRTIO_VENDOR_ID, "vendor id");
	wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	TAP_OK(rd(VIRTIO_MMIO_DEVICE_FEATURES) & 1, "VERSION_1 offered (bit 32)");
	wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint32_t lo = rd(VIRTIO_MMIO_DEVICE_FEATURES);
	TAP_OK((lo >> VIRTIO_F_EVENT_IDX & 1) && (lo >> VIRTIO_F_INDIRECT_DESC & 1), "EVENT_IDX, INDIRECT_DESC offered");
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_NUM_MAX_REG) == VIRTIO_MMIO_QUEUE_NUM_MAX, "QueueNumMax of queue 0");
	wr(VIRTIO_MMIO_QUEUE_SEL, 1);
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_NUM_MAX_REG) == 0, "queue 1 does not exist");
	uint8_t b1;
	virtio_mmio_ops.read(&t, VIRTIO_MMIO_MAGIC_VALUE, &b1, 1);
	TAP_OK(b1 == 0, "sub-word register read gives 0");

	/* feature negotiation */
	negotiate(0);
	TAP_OK(!(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK), "FEATURES_OK refused without VERSION_1");
	negotiate((1ull << VIRTIO_F_VERSION_1) | (1ull << 50));
	TAP_OK(!(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK), "FEATURES_OK refused for an unoffered bit");
	negotiate(1ull << VIRTIO_F_VERSION_1);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK, "FEATURES_OK with VERSION_1");
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, 1u << VIRTIO_F_EVENT_IDX);
	TAP_OK(!virtio_mmio_has_feature(&t, VIRTIO_F_EVENT_IDX), "features frozen after FEATURES_OK");

	/* queue setup, notify, used interrupt */
	setup_queue();
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_READY) == 1, "queue ready");
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_DRIVER_LOW) == (uint32_t)(GPA + 0x1000), "driver address reads back");
	wr(VIRTIO_MMIO_STATUS, 0xf & ~0u);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) == 0xf, "DRIVER_OK");
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1234);
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_DESC_LOW) == (uint32_t)GPA, "queue registers frozen after DRIVER_OK");
	memset(ram + 0x4000, 0, 64);
	offer_one(1, GPA + 0x4000, 64);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	uint16_t *used = (uint16_t *)(ram + 0x2000);
	uint32_t *elem = (uint32_t *)(ram + 0x2004);
	int nonzero = 0;
	for (int i = 0; i < 64; i++)
		nonzero += ram[0x4000 + i] != 0;
	TAP_OK(used[1] == 1 && elem[0] == 0 && elem[1] == 64 && nonzero > 32, "rng filled 64 bytes (%d non-zero)",
	       nonzero);
	TAP_OK(rd(VIRTIO_MMIO_INTERRUPT_STATUS) == VIRTIO_INT_USED && irq_level == 1 && irq_num == 5,
	       "used-buffer interrupt raised on irq 5");
	wr(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_INT_USED);
	TAP_OK(rd(VIRTIO_MMIO_INTERRUPT_STATUS) == 0 && irq_level == 0, "ack lowers the line");

	/* garbage ring: the buffer points outside RAM */
	offer_one(2, 0xdead0000, 64);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, "bad buffer: DEVICE_NEEDS_RESET");
	TAP_OK(rd(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_INT_CONFIG && irq_level == 1, "config-change interrupt");
	TAP_OK(t.logged_bad, "logged");
	int calls = irq_calls;
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	TAP_OK(irq_calls == calls && used[1] == 1, "further notifies do nothing");
	wr(VIRTIO_MMIO_STATUS, 0xf);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, "driver cannot clear NEEDS_RESET");

	/* reset */
	wr(VIRTIO_MMIO_STATUS, 0);
	TAP_OK(rd(VIRTIO_MMIO_STATUS) == 0 && rd(VIRTIO_MMIO_INTERRUPT_STATUS) == 0 && irq_level == 0,
	       "reset clears status and interrupts");
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_READY) == 0 && !t.logged_bad, "reset clears queues and the log-once flag");

	/* a ring outside RAM refused at QueueReady */
	negotiate(1ull << VIRTIO_F_VERSION_1);
	wr(VIRTIO_MMIO_QUEUE_NUM, 8);
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
	wr(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x10);
	wr(VIRTIO_MMIO_QUEUE_READY, 1);
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_READY) == 0 && (rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET),
	       "descriptor ring outside RAM: not ready, NEEDS_RESET");
	wr(VIRTIO_MMIO_STATUS, 0);
	negotiate(1ull << VIRTIO_F_VERSION_1);
	wr(VIRTIO_MMIO_QUEUE_NUM, 6);
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)GPA);
	wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(GPA + 0x1000));
	wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(GPA + 0x2000));
	wr(VIRTIO_MMIO_QUEUE_READY, 1);
	TAP_OK(rd(VIRTIO_MMIO_QUEUE_READY) == 0 && (rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET),
	       "queue size 6: refused");
	wr(VIRTIO_MMIO_STATUS, 0);
	virtio_mmio_destroy(&t);
	return tap_done();
}
