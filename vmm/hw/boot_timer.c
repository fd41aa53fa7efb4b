/* Boot timer port: the guest's init writes BOOT_TIMER_MAGIC to BOOT_TIMER_PORT when it starts (as
 * with Firecracker's boot timer); the VMM logs the time since it started and keeps the first value
 * for benchmarks. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"

struct boot_timer {
	uint64_t start_ns;
	_Atomic uint64_t elapsed_ns;
};

int boot_timer_new(uint64_t start_ns, struct boot_timer **out, struct cella_err *err)
{
	struct boot_timer *t = calloc(1, sizeof(*t));
	if (!t)
		return cella_err_set(err, ENOMEM, "boot-timer: out of memory");
	t->start_ns = start_ns;
	*out = t;
	return 0;
}

void boot_timer_free(struct boot_timer *t)
{
	free(t);
}

uint64_t boot_timer_elapsed_ns(struct boot_timer *t)
{
	return atomic_load(&t->elapsed_ns);
}

static void timer_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct boot_timer *t = opaque;
	if (data[0] != BOOT_TIMER_MAGIC) {
		log_debug("boot-timer: ignoring value %u", data[0]);
		return;
	}
	uint64_t ns = cella_now_ns() - t->start_ns;
	if (ns == 0)
		ns = 1;
	uint64_t none = 0;
	atomic_compare_exchange_strong(&t->elapsed_ns, &none, ns);
	log_info("guest boot timer: %llu.%03llu ms since VMM start", (unsigned long long)(ns / 1000000),
		 (unsigned long long)(ns / 1000 % 1000));
}

const struct bus_ops boot_timer_ops = { .write = timer_write };

void boot_timer_save(struct boot_timer *t, struct snap_writer *w)
{
	snap_put_u64(w, atomic_load(&t->elapsed_ns));
}

/* A restored guest booted long ago: keep the original boot time, so it does not report again. */
int boot_timer_load(struct boot_timer *t, struct snap_sec *sec, struct cella_err *err)
{
	atomic_store(&t->elapsed_ns, snap_get_u64(sec));
	return 0;
}
