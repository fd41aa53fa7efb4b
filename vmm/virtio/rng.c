/* virtio-rng (device id 4): the driver posts writable buffers, we fill them from getrandom(). */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/virtio/mmio.h"

/* Bytes per request at most: a driver asking for more gets a short fill, as the spec allows. */
#define RNG_MAX_REQUEST 4096u

static uint32_t fill(uint8_t *p, uint32_t len)
{
	uint32_t done = 0;
	while (done < len) {
		ssize_t n = getrandom(p + done, len - done, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_debug("virtio-rng: getrandom: %s", strerror(errno));
			break;
		}
		done += (uint32_t)n;
	}
	return done;
}

static void rng_notify(void *dev, struct virtio_mmio *t, unsigned qi)
{
	static _Thread_local struct vq_chain c; /* 16 KiB: not on the vCPU stack */
	struct vq *q = virtio_mmio_queue(t, qi);
	struct cella_err err = { 0 };
	int r = 0;
	while (q && (r = vq_pop(q, &c, &err)) > 0) {
		uint32_t written = 0;
		for (unsigned i = c.n_out; i < c.n && written < RNG_MAX_REQUEST; i++) {
			uint32_t want = c.buf[i].len;
			if (want > RNG_MAX_REQUEST - written)
				want = RNG_MAX_REQUEST - written;
			uint32_t got = fill(c.buf[i].addr, want);
			written += got;
			if (got < want)
				break;
		}
		vq_push(q, c.head, written);
	}
	if (q && r < 0)
		virtio_mmio_fail(t, err.msg);
	virtio_mmio_used(t, qi);
}

const struct virtio_dev_ops virtio_rng_ops = {
	.name = "virtio-rng",
	.device_id = VIRTIO_ID_RNG,
	.nqueues = 1,
	.notify = rng_notify,
};
