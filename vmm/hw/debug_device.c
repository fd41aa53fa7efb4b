/* Test-only MMIO device (--debug-device): the first 8 bytes are a scratch register that reads back
 * what was written; the rest of its page reads as zero. Every write is logged at info level, so a
 * tiny guest can prove MMIO dispatch reaches a device with the right offset, size and value. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"

struct debug_device {
	pthread_mutex_t lock;
	uint8_t scratch[8];
};

int debug_device_new(struct debug_device **out, struct cella_err *err)
{
	struct debug_device *d = calloc(1, sizeof(*d));
	if (!d)
		return cella_err_set(err, ENOMEM, "debug-device: out of memory");
	pthread_mutex_init(&d->lock, NULL);
	*out = d;
	return 0;
}

void debug_device_free(struct debug_device *d)
{
	if (!d)
		return;
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static void dbg_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	struct debug_device *d = opaque;
	pthread_mutex_lock(&d->lock);
	for (uint32_t i = 0; i < len; i++)
		data[i] = offset + i < sizeof(d->scratch) ? d->scratch[offset + i] : 0;
	pthread_mutex_unlock(&d->lock);
}

static void dbg_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct debug_device *d = opaque;
	pthread_mutex_lock(&d->lock);
	for (uint32_t i = 0; i < len; i++)
		if (offset + i < sizeof(d->scratch))
			d->scratch[offset + i] = data[i];
	pthread_mutex_unlock(&d->lock);
	log_info("debug-device: write of %u byte(s) at +0x%" PRIx64 ": 0x%" PRIx64, len, offset,
		 hw_get_le(data, len));
}

const struct bus_ops debug_device_ops = { .read = dbg_read, .write = dbg_write };

void debug_device_save(struct debug_device *d, struct snap_writer *w)
{
	pthread_mutex_lock(&d->lock);
	snap_put(w, d->scratch, sizeof(d->scratch));
	pthread_mutex_unlock(&d->lock);
}

int debug_device_load(struct debug_device *d, struct snap_sec *sec, struct cella_err *err)
{
	pthread_mutex_lock(&d->lock);
	snap_get(sec, d->scratch, sizeof(d->scratch));
	pthread_mutex_unlock(&d->lock);
	return 0;
}
