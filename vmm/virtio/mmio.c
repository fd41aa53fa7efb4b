/* virtio-mmio transport: see mmio.h. Register writes the spec forbids in the current state (queue
 * setup after DRIVER_OK, features after FEATURES_OK) are ignored, never trusted. */
#include "vmm/virtio/mmio.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/snapfile.h"

#define TRANSPORT_FEATURES \
	((1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_INDIRECT_DESC) | (1ull << VIRTIO_F_EVENT_IDX))

static uint64_t offered(const struct virtio_mmio *t)
{
	return t->ops->features | TRANSPORT_FEATURES;
}

bool virtio_mmio_has_feature(const struct virtio_mmio *t, unsigned bit)
{
	return bit < 64 && (t->drv_features >> bit) & 1;
}

static void update_irq(struct virtio_mmio *t)
{
	bool level = t->isr != 0;
	if (level == t->irq_level)
		return;
	t->irq_level = level;
	if (level)
		atomic_fetch_add_explicit(&t->interrupts, 1, memory_order_relaxed);
	if (t->irq_fd >= 0) {
		uint64_t one = 1;
		if (level && write(t->irq_fd, &one, sizeof(one)) < 0)
			log_debug("%s: irqfd: %s", t->ops->name, strerror(errno));
		return;
	}
	int r = t->host->set_irq(t->host->ctx, t->irq, level);
	if (r < 0)
		log_debug("%s: irq %u: %s", t->ops->name, t->irq, strerror(-r));
}

static void reset(struct virtio_mmio *t)
{
	if (t->ops->reset)
		t->ops->reset(t->dev);
	t->status = 0;
	t->dev_features_sel = t->drv_features_sel = t->queue_sel = 0;
	t->drv_features = 0;
	t->isr = 0;
	t->logged_bad = false;
	t->epoch++;
	for (unsigned i = 0; i < VIRTIO_MMIO_MAX_QUEUES; i++)
		memset(&t->q[i], 0, sizeof(t->q[i]));
	update_irq(t);
}

int virtio_mmio_init(struct virtio_mmio *t, const struct virtio_dev_ops *ops, void *dev, const struct hw_host *host,
		     unsigned irq, const struct vq_mem *mem, struct cella_err *err)
{
	memset(t, 0, sizeof(*t));
	if (ops->nqueues < 1 || ops->nqueues > VIRTIO_MMIO_MAX_QUEUES)
		return cella_err_set(err, EINVAL, "%s: %u queues (1..%d)", ops->name, ops->nqueues,
				     VIRTIO_MMIO_MAX_QUEUES);
	if (ops->config_len > VIRTIO_MMIO_SIZE - VIRTIO_MMIO_CONFIG)
		return cella_err_set(err, EINVAL, "%s: config space of %u bytes", ops->name, ops->config_len);
	int r = pthread_mutex_init(&t->lock, NULL);
	if (r)
		return cella_err_sys(err, r, "%s: mutex", ops->name);
	t->ops = ops;
	t->dev = dev;
	t->host = host;
	t->irq = irq;
	t->mem = mem;
	t->irq_fd = -1;
	for (unsigned i = 0; i < VIRTIO_MMIO_MAX_QUEUES; i++)
		t->kick_fd[i] = -1;
	return 0;
}

void virtio_mmio_destroy(struct virtio_mmio *t)
{
	if (t->ops)
		pthread_mutex_destroy(&t->lock);
	t->ops = NULL;
}

void virtio_mmio_kick(struct virtio_mmio *t, unsigned q)
{
	pthread_mutex_lock(&t->lock);
	if (q < t->ops->nqueues && virtio_mmio_queue(t, q) && t->ops->notify)
		t->ops->notify(t->dev, t, q);
	pthread_mutex_unlock(&t->lock);
}

void virtio_mmio_lock(struct virtio_mmio *t)
{
	pthread_mutex_lock(&t->lock);
}

void virtio_mmio_unlock(struct virtio_mmio *t)
{
	pthread_mutex_unlock(&t->lock);
}

struct vq *virtio_mmio_queue(struct virtio_mmio *t, unsigned q)
{
	if (q >= t->ops->nqueues || !t->q[q].ready || !(t->status & VIRTIO_STATUS_DRIVER_OK) ||
	    (t->status & VIRTIO_STATUS_NEEDS_RESET) || t->q[q].vq.broken)
		return NULL;
	return &t->q[q].vq;
}

void virtio_mmio_used(struct virtio_mmio *t, unsigned q)
{
	struct vq *vq = virtio_mmio_queue(t, q);
	if (vq)
		atomic_fetch_add_explicit(&t->used_batches, 1, memory_order_relaxed);
	if (vq && vq_should_notify(vq)) {
		t->isr |= VIRTIO_INT_USED;
		update_irq(t);
	}
}

void virtio_mmio_fail(struct virtio_mmio *t, const char *why)
{
	if (!t->logged_bad) {
		log_error("%s: guest error, device needs reset: %s", t->ops->name, why);
		t->logged_bad = true;
	}
	if (t->status & VIRTIO_STATUS_NEEDS_RESET)
		return;
	t->status |= VIRTIO_STATUS_NEEDS_RESET;
	if (t->status & VIRTIO_STATUS_DRIVER_OK) {
		t->isr |= VIRTIO_INT_CONFIG;
		update_irq(t);
	}
}

/* QueueReady = 1: bind the ring to guest memory; a ring the checks refuse fails the device. */
static void queue_enable(struct virtio_mmio *t, struct virtio_mmio_queue *q)
{
	struct cella_err err = { 0 };
	int r = vq_setup(&q->vq, t->mem, q->num, q->desc, q->driver, q->device,
			 virtio_mmio_has_feature(t, VIRTIO_F_EVENT_IDX), &err);
	if (r < 0) {
		virtio_mmio_fail(t, err.msg);
		return;
	}
	q->ready = true;
}

static void set_status(struct virtio_mmio *t, uint32_t v)
{
	if (v == 0) {
		reset(t);
		return;
	}
	/* FEATURES_OK only sticks when the driver accepted VERSION_1 and nothing we did not offer */
	if ((v & VIRTIO_STATUS_FEATURES_OK) && !(t->status & VIRTIO_STATUS_FEATURES_OK)) {
		if (!virtio_mmio_has_feature(t, VIRTIO_F_VERSION_1) || (t->drv_features & ~offered(t)))
			v &= ~VIRTIO_STATUS_FEATURES_OK;
	}
	if ((v & VIRTIO_STATUS_DRIVER_OK) && !(v & VIRTIO_STATUS_FEATURES_OK))
		v &= ~VIRTIO_STATUS_DRIVER_OK;
	/* the driver may not set NEEDS_RESET, nor clear it */
	v = (v & ~VIRTIO_STATUS_NEEDS_RESET) | (t->status & VIRTIO_STATUS_NEEDS_RESET);
	bool started = (v & VIRTIO_STATUS_DRIVER_OK) && !(t->status & VIRTIO_STATUS_DRIVER_OK);
	t->status = v & 0xff;
	if (started && t->ops->driver_ok)
		t->ops->driver_ok(t->dev, t);
}

static uint32_t read_reg(struct virtio_mmio *t, uint64_t off)
{
	struct virtio_mmio_queue *q = t->queue_sel < t->ops->nqueues ? &t->q[t->queue_sel] : NULL;
	switch (off) {
	case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
	case VIRTIO_MMIO_VERSION_REG: return VIRTIO_MMIO_VERSION;
	case VIRTIO_MMIO_DEVICE_ID: return t->ops->device_id;
	case VIRTIO_MMIO_VENDOR_ID: return VIRTIO_VENDOR_ID;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		return t->dev_features_sel < 2 ? (uint32_t)(offered(t) >> (32 * t->dev_features_sel)) : 0;
	case VIRTIO_MMIO_QUEUE_NUM_MAX_REG: return q ? VIRTIO_MMIO_QUEUE_NUM_MAX : 0;
	case VIRTIO_MMIO_QUEUE_READY: return q ? q->ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS: return t->isr;
	case VIRTIO_MMIO_STATUS: return t->status;
	case VIRTIO_MMIO_CONFIG_GENERATION: return t->config_generation;
	case VIRTIO_MMIO_QUEUE_DESC_LOW: return q ? (uint32_t)q->desc : 0;
	case VIRTIO_MMIO_QUEUE_DESC_HIGH: return q ? (uint32_t)(q->desc >> 32) : 0;
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW: return q ? (uint32_t)q->driver : 0;
	case VIRTIO_MMIO_QUEUE_DRIVER_HIGH: return q ? (uint32_t)(q->driver >> 32) : 0;
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW: return q ? (uint32_t)q->device : 0;
	case VIRTIO_MMIO_QUEUE_DEVICE_HIGH: return q ? (uint32_t)(q->device >> 32) : 0;
	}
	return 0;
}

static void set_half(uint64_t *v, bool high, uint32_t x)
{
	*v = high ? (*v & 0xffffffffull) | ((uint64_t)x << 32) : (*v & ~0xffffffffull) | x;
}

static void write_reg(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
	struct virtio_mmio_queue *q = t->queue_sel < t->ops->nqueues ? &t->q[t->queue_sel] : NULL;
	/* queue registers are writable only while that queue is not ready and before DRIVER_OK */
	bool q_writable = q && !q->ready && !(t->status & VIRTIO_STATUS_DRIVER_OK);
	bool feat_writable = (t->status & VIRTIO_STATUS_DRIVER) && !(t->status & VIRTIO_STATUS_FEATURES_OK);
	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL: t->dev_features_sel = v; break;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL: t->drv_features_sel = v; break;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (feat_writable && t->drv_features_sel < 2)
			set_half(&t->drv_features, t->drv_features_sel == 1, v);
		break;
	case VIRTIO_MMIO_QUEUE_SEL: t->queue_sel = v; break;
	case VIRTIO_MMIO_QUEUE_NUM:
		if (q_writable)
			q->num = v > 0xffff ? 0 : (uint16_t)v; /* checked at QueueReady */
		break;
	case VIRTIO_MMIO_QUEUE_READY:
		if (!q)
			break;
		if (v == 0) {
			q->ready = false;
			t->epoch++;
			vq_reset(&q->vq);
		} else if (q_writable) {
			if (q->num > VIRTIO_MMIO_QUEUE_NUM_MAX)
				virtio_mmio_fail(t, "queue size above QueueNumMax");
			else
				queue_enable(t, q);
		}
		break;
	case VIRTIO_MMIO_QUEUE_NOTIFY:
		/* v is the queue index (no VIRTIO_F_NOTIFICATION_DATA) */
		if (v < t->ops->nqueues && t->kick_fd[v] >= 0) {
			/* no ioeventfd: hand the work to the I/O thread all the same */
			uint64_t one = 1;
			if (write(t->kick_fd[v], &one, sizeof(one)) < 0)
				log_debug("%s: kick: %s", t->ops->name, strerror(errno));
		} else if (v < t->ops->nqueues && virtio_mmio_queue(t, v) && t->ops->notify) {
			t->ops->notify(t->dev, t, v);
		}
		break;
	case VIRTIO_MMIO_INTERRUPT_ACK:
		t->isr &= ~v;
		update_irq(t);
		break;
	case VIRTIO_MMIO_STATUS: set_status(t, v); break;
	case VIRTIO_MMIO_QUEUE_DESC_LOW: if (q_writable) set_half(&q->desc, false, v); break;
	case VIRTIO_MMIO_QUEUE_DESC_HIGH: if (q_writable) set_half(&q->desc, true, v); break;
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW: if (q_writable) set_half(&q->driver, false, v); break;
	case VIRTIO_MMIO_QUEUE_DRIVER_HIGH: if (q_writable) set_half(&q->driver, true, v); break;
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW: if (q_writable) set_half(&q->device, false, v); break;
	case VIRTIO_MMIO_QUEUE_DEVICE_HIGH: if (q_writable) set_half(&q->device, true, v); break;
	default: break; /* read-only or reserved: ignored */
	}
}

static void mmio_read(void *opaque, uint64_t off, uint8_t *data, uint32_t len)
{
	struct virtio_mmio *t = opaque;
	memset(data, 0, len);
	pthread_mutex_lock(&t->lock);
	if (off >= VIRTIO_MMIO_CONFIG) {
		uint64_t c = off - VIRTIO_MMIO_CONFIG;
		if (c + len <= t->ops->config_len && t->ops->read_config)
			t->ops->read_config(t->dev, (uint32_t)c, data, len);
	} else if (len == 4 && !(off & 3)) {
		uint32_t v = read_reg(t, off);
		memcpy(data, &v, 4);
	}
	pthread_mutex_unlock(&t->lock);
}

static void mmio_write(void *opaque, uint64_t off, const uint8_t *data, uint32_t len)
{
	struct virtio_mmio *t = opaque;
	pthread_mutex_lock(&t->lock);
	if (off >= VIRTIO_MMIO_CONFIG) {
		uint64_t c = off - VIRTIO_MMIO_CONFIG;
		if (c + len <= t->ops->config_len && t->ops->write_config)
			t->ops->write_config(t->dev, (uint32_t)c, data, len);
	} else if (len == 4 && !(off & 3)) {
		uint32_t v;
		memcpy(&v, data, 4);
		write_reg(t, off, v);
	}
	pthread_mutex_unlock(&t->lock);
}

const struct bus_ops virtio_mmio_ops = { .read = mmio_read, .write = mmio_write };

int virtio_mmio_save(struct virtio_mmio *t, struct snap_writer *w, struct cella_err *err)
{
	pthread_mutex_lock(&t->lock);
	snap_put_u32(w, t->ops->device_id);
	snap_put_u32(w, t->ops->nqueues);
	snap_put_u32(w, t->status);
	snap_put_u32(w, t->dev_features_sel);
	snap_put_u32(w, t->drv_features_sel);
	snap_put_u32(w, t->queue_sel);
	snap_put_u32(w, t->isr);
	snap_put_u32(w, t->config_generation);
	snap_put_u64(w, t->drv_features);
	snap_put_bool(w, t->logged_bad);
	for (unsigned i = 0; i < t->ops->nqueues; i++) {
		const struct virtio_mmio_queue *q = &t->q[i];
		snap_put_u16(w, q->num);
		snap_put_bool(w, q->ready);
		snap_put_u64(w, q->desc);
		snap_put_u64(w, q->driver);
		snap_put_u64(w, q->device);
		snap_put_u16(w, q->vq.last_avail);
		snap_put_u16(w, q->vq.used_idx);
		snap_put_u16(w, q->vq.signalled_used);
		snap_put_bool(w, q->vq.signalled_valid);
		snap_put_bool(w, q->vq.broken);
	}
	int r = t->ops->save ? t->ops->save(t->dev, w, err) : 0;
	pthread_mutex_unlock(&t->lock);
	return r < 0 ? cella_err_wrap(err, "%s", t->ops->name) : 0;
}

int virtio_mmio_load(struct virtio_mmio *t, struct snap_sec *s, struct cella_err *err)
{
	uint32_t id = snap_get_u32(s), nq = snap_get_u32(s);
	if (s->bad || id != t->ops->device_id || nq != t->ops->nqueues)
		return cella_err_set(err, EINVAL, "%s: the snapshot holds virtio device %u with %u queues, this VM has "
				     "device %u with %u", t->ops->name, id, nq, t->ops->device_id, t->ops->nqueues);
	pthread_mutex_lock(&t->lock);
	t->status = snap_get_u32(s) & 0xff;
	t->dev_features_sel = snap_get_u32(s);
	t->drv_features_sel = snap_get_u32(s);
	t->queue_sel = snap_get_u32(s);
	t->isr = snap_get_u32(s);
	t->config_generation = snap_get_u32(s);
	t->drv_features = snap_get_u64(s);
	t->logged_bad = snap_get_bool(s);
	int r = 0;
	if (t->drv_features & ~offered(t))
		r = cella_err_set(err, EINVAL, "%s: negotiated features 0x%llx include some this device does not offer",
				  t->ops->name, (unsigned long long)t->drv_features);
	for (unsigned i = 0; i < nq && r == 0; i++) {
		struct virtio_mmio_queue *q = &t->q[i];
		q->num = snap_get_u16(s);
		q->ready = snap_get_bool(s);
		q->desc = snap_get_u64(s);
		q->driver = snap_get_u64(s);
		q->device = snap_get_u64(s);
		uint16_t last_avail = snap_get_u16(s), used_idx = snap_get_u16(s), signalled = snap_get_u16(s);
		bool signalled_valid = snap_get_bool(s), broken = snap_get_bool(s);
		if (s->bad)
			break;
		if (!q->ready)
			continue;
		/* Rebind the ring: the same checks as when the driver set QueueReady. */
		r = vq_setup(&q->vq, t->mem, q->num, q->desc, q->driver, q->device,
			     virtio_mmio_has_feature(t, VIRTIO_F_EVENT_IDX), err);
		if (r < 0) {
			r = cella_err_wrap(err, "%s: queue %u", t->ops->name, i);
			break;
		}
		q->vq.last_avail = last_avail;
		q->vq.used_idx = used_idx;
		q->vq.signalled_used = signalled;
		q->vq.signalled_valid = signalled_valid;
		q->vq.broken = broken;
	}
	if (r == 0 && s->bad)
		r = snap_sec_done(s, err);
	if (r == 0 && t->ops->load)
		r = t->ops->load(t->dev, s, err);
	if (r == 0) {
		t->irq_level = false;
		update_irq(t); /* raises the line again if an interrupt was pending */
	}
	pthread_mutex_unlock(&t->lock);
	return r;
}
