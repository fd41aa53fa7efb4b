/* virtio-mmio transport, virtio 1.x "modern" register layout (spec 4.2.2), shared by every device.
 *
 * A device supplies a struct virtio_dev_ops and an opaque pointer; the transport owns the registers,
 * feature negotiation, the queues (struct vq, queue.h) and the interrupt line. Register the transport
 * on the MMIO bus with virtio_mmio_ops and VIRTIO_MMIO_SIZE.
 *
 * Threads: register accesses come from vCPU threads; the transport serialises them with its lock and
 * calls the device's hooks with the lock held. A device that works on another thread (an I/O thread
 * fed by an ioeventfd) takes the same lock with virtio_mmio_lock/unlock around its queue work.
 *
 * Notifications and interrupts (set by the VM's plumbing, vmm/vdev.c; unit tests leave them -1):
 * - kick_fd[q] >= 0: QueueNotify for q is an eventfd. KVM signals it directly (KVM_IOEVENTFD, no exit
 *   to user space) or, without that capability, the register write signals it; the I/O thread
 *   watching it calls virtio_mmio_kick(), which runs ops->notify there. -1: notify runs inline on
 *   the vCPU thread.
 * - irq_fd >= 0: an eventfd bound to the GSI with KVM_IRQFD; the interrupt is edge-triggered: the
 *   transport signals it when InterruptStatus goes from zero to non-zero. Edge is right for
 *   virtio-mmio: Linux's handler acks InterruptStatus before walking the queues, so anything used
 *   after the ack raises a new edge, and no resample round trip is needed. -1: host->set_irq drives
 *   the line (high while InterruptStatus is non-zero), e.g. KVM_IRQ_LINE. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/bus.h"
#include "vmm/hw/hw.h"
#include "vmm/virtio/queue.h"

struct cella_err;
struct snap_writer;
struct snap_sec;

#define VIRTIO_MMIO_SIZE 0x200
#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_MMIO_VERSION 2u
#define VIRTIO_VENDOR_ID 0x4c4c4543u /* "CELL" */
#define VIRTIO_MMIO_MAX_QUEUES 8
#define VIRTIO_MMIO_QUEUE_NUM_MAX 256u

/* registers (offsets from the base) */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION_REG 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX_REG 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

/* device status bits */
#define VIRTIO_STATUS_ACKNOWLEDGE 1u
#define VIRTIO_STATUS_DRIVER 2u
#define VIRTIO_STATUS_DRIVER_OK 4u
#define VIRTIO_STATUS_FEATURES_OK 8u
#define VIRTIO_STATUS_NEEDS_RESET 0x40u
#define VIRTIO_STATUS_FAILED 0x80u

/* interrupt status bits */
#define VIRTIO_INT_USED 1u
#define VIRTIO_INT_CONFIG 2u

/* feature bits */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_VSOCK 19

struct virtio_mmio;

struct virtio_dev_ops {
	const char *name; /* "virtio-rng": used in messages */
	uint32_t device_id;
	uint64_t features; /* device-specific bits; the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX */
	unsigned nqueues; /* 1..VIRTIO_MMIO_MAX_QUEUES */
	uint32_t config_len; /* bytes of device config space (<= 0x100) */
	/* Config space access, offset + len <= config_len (checked); NULL = reads zero, writes dropped. */
	void (*read_config)(void *dev, uint32_t offset, uint8_t *data, uint32_t len);
	void (*write_config)(void *dev, uint32_t offset, const uint8_t *data, uint32_t len);
	/* The driver notified queue q (ready, device DRIVER_OK). Pop with virtio_mmio_queue(), push, then
	 * virtio_mmio_used(). A negative vq_pop means the ring is malformed: call virtio_mmio_fail(). */
	void (*notify)(void *dev, struct virtio_mmio *t, unsigned q);
	/* The driver reset the device (status 0): drop in-flight work. May be NULL. */
	void (*reset)(void *dev);

	/* Snapshots (vmm/snapshot.h). Each may be NULL (no I/O thread / no state beyond the transport).
	 * pause: the vCPUs are parked; stop taking new work and return once nothing is in flight (no
	 * more guest-memory writes, no interrupt). resume: start again (also called if a snapshot fails).
	 * save: with the device paused and the transport lock held, append the device's own state
	 * (backend positions, config space, counters) to w; the transport saves its registers and
	 * queues itself. load: in a fresh process, after the transport state is back (queues bound to
	 * guest memory), read it from s and reattach to the backend; an error names the problem. */
	void (*pause)(void *dev);
	void (*resume)(void *dev);
	int (*save)(void *dev, struct snap_writer *w, struct cella_err *err);
	int (*load)(void *dev, struct snap_sec *s, struct cella_err *err);
	/* The driver set DRIVER_OK: features are final and the device may start (e.g. take input it had
	 * no buffers for). Lock held, vCPU thread. May be NULL. */
	void (*driver_ok)(void *dev, struct virtio_mmio *t);
};

struct virtio_mmio_queue {
	struct vq vq;
	uint16_t num; /* QueueNum as written */
	bool ready;
	uint64_t desc, driver, device;
};

struct virtio_mmio {
	pthread_mutex_t lock;
	const struct virtio_dev_ops *ops;
	void *dev;
	const struct hw_host *host;
	unsigned irq;
	const struct vq_mem *mem;
	uint32_t status, dev_features_sel, drv_features_sel, queue_sel, isr, config_generation;
	uint64_t drv_features;
	bool irq_level;
	bool logged_bad; /* a malformed ring was logged since the last reset */
	/* for GET /metrics: interrupts raised (line asserted / irqfd signalled), used-ring batches the
	 * device completed; relaxed atomics, read without the lock */
	atomic_uint_fast64_t interrupts, used_batches;
	uint32_t epoch;   /* bumped on reset and queue disable: a device that worked without the lock
			   * pushes nothing when it changed meanwhile */
	int irq_fd;       /* see above; -1 = host->set_irq */
	int kick_fd[VIRTIO_MMIO_MAX_QUEUES]; /* see above; -1 = notify inline */
	struct virtio_mmio_queue q[VIRTIO_MMIO_MAX_QUEUES];
};

extern const struct bus_ops virtio_mmio_ops;

/* Sets up a transport for one device. host raises the interrupt line irq (level-triggered: high while
 * InterruptStatus is non-zero); mem is the guest memory the queues live in (outlives t). */
int virtio_mmio_init(struct virtio_mmio *t, const struct virtio_dev_ops *ops, void *dev, const struct hw_host *host,
		     unsigned irq, const struct vq_mem *mem, struct cella_err *err);
void virtio_mmio_destroy(struct virtio_mmio *t);

/* Snapshot of the transport (status, features, selectors, interrupt state, every queue's addresses
 * and ring indexes) followed by the device's save hook, as one section. virtio_mmio_load restores
 * it into a transport set up with the same ops (a fresh virtio_mmio_init), rebinding ready queues to
 * guest memory (every address checked again) and re-raising the interrupt line if it was high. */
int virtio_mmio_save(struct virtio_mmio *t, struct snap_writer *w, struct cella_err *err);
int virtio_mmio_load(struct virtio_mmio *t, struct snap_sec *s, struct cella_err *err);
/* The I/O thread saw kick_fd[q] (already drained): takes the lock and runs ops->notify when the
 * queue is live. */
void virtio_mmio_kick(struct virtio_mmio *t, unsigned q);

void virtio_mmio_lock(struct virtio_mmio *t);
void virtio_mmio_unlock(struct virtio_mmio *t);

/* Queue q when it is live (ready, DRIVER_OK, not needing reset), else NULL. Lock held. */
struct vq *virtio_mmio_queue(struct virtio_mmio *t, unsigned q);
/* After pushing to queue q: raises the used-buffer interrupt if the driver wants one. Lock held. */
void virtio_mmio_used(struct virtio_mmio *t, unsigned q);
/* The guest broke the protocol (a malformed ring, why = the vq_pop message): sets DEVICE_NEEDS_RESET,
 * raises a config-change interrupt and logs once until the driver resets the device. Lock held. */
void virtio_mmio_fail(struct virtio_mmio *t, const char *why);
/* True once the driver negotiated feature bit `bit`. */
bool virtio_mmio_has_feature(const struct virtio_mmio *t, unsigned bit);

/* --- devices --- */

/* virtio-rng (rng.c): one queue, buffers filled from getrandom(). dev is unused (NULL). */
extern const struct virtio_dev_ops virtio_rng_ops;
