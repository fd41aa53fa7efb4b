/* Address-range bus: a sorted array of ranges and a binary search. */
#include "vmm/bus.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"

void bus_init(struct bus *bus, const char *name)
{
	memset(bus, 0, sizeof(*bus));
	bus->name = name;
}

void bus_free(struct bus *bus)
{
	free(bus->ranges);
	bus->ranges = NULL;
	bus->n = bus->cap = 0;
}

/* Index of the first range whose base is > addr. */
static size_t upper_bound(const struct bus *bus, uint64_t addr)
{
	size_t lo = 0, hi = bus->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (bus->ranges[mid].base <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int bus_register(struct bus *bus, uint64_t base, uint64_t len, const struct bus_ops *ops, void *opaque,
		 const char *name, struct cella_err *err)
{
	if (len == 0)
		return cella_err_set(err, EINVAL, "%s: %s: empty range at 0x%" PRIx64, bus->name, name, base);
	if (len - 1 > UINT64_MAX - base)
		return cella_err_set(err, EINVAL, "%s: %s: range at 0x%" PRIx64 " length 0x%" PRIx64
				     " wraps around", bus->name, name, base, len);
	uint64_t last = base + len - 1;
	size_t i = upper_bound(bus, base);
	/* Neighbours: the range before (may extend over base) and the one after (may start <= last). */
	const struct bus_range *other = NULL;
	if (i > 0 && bus->ranges[i - 1].base + bus->ranges[i - 1].len - 1 >= base)
		other = &bus->ranges[i - 1];
	else if (i < bus->n && bus->ranges[i].base <= last)
		other = &bus->ranges[i];
	if (other)
		return cella_err_set(err, EBUSY, "%s: %s [0x%" PRIx64 ", 0x%" PRIx64 "] overlaps %s [0x%" PRIx64
				     ", 0x%" PRIx64 "]", bus->name, name, base, last, other->name, other->base,
				     other->base + other->len - 1);
	if (bus->n == bus->cap) {
		size_t cap = bus->cap ? bus->cap * 2 : 16;
		struct bus_range *r = realloc(bus->ranges, cap * sizeof(*r));
		if (!r)
			return cella_err_set(err, ENOMEM, "%s: %s: out of memory", bus->name, name);
		bus->ranges = r;
		bus->cap = cap;
	}
	memmove(&bus->ranges[i + 1], &bus->ranges[i], (bus->n - i) * sizeof(*bus->ranges));
	bus->ranges[i] = (struct bus_range){ .base = base, .len = len, .ops = ops, .opaque = opaque, .name = name };
	bus->n++;
	return 0;
}

const struct bus_range *bus_find(const struct bus *bus, uint64_t addr, uint32_t len)
{
	size_t i = upper_bound(bus, addr);
	if (i == 0 || len == 0)
		return NULL;
	const struct bus_range *r = &bus->ranges[i - 1];
	uint64_t off = addr - r->base;
	if (off > r->len - 1 || len - 1 > r->len - 1 - off)
		return NULL;
	return r;
}

/* Debug-logs an unhandled address the first time it is seen (lossy: a small hashed table). */
static void note_unhandled(struct bus *bus, const char *what, uint64_t addr, uint32_t len)
{
	if (!cella_log_enabled(CELLA_LOG_DEBUG))
		return;
	uint64_t key = addr + 1; /* 0 marks an empty slot */
	size_t slot = (size_t)((addr * 0x9e3779b97f4a7c15ull) >> 58) % ARRAY_SIZE(bus->logged);
	uint64_t seen = atomic_load(&bus->logged[slot]);
	if (seen == key)
		return;
	atomic_store(&bus->logged[slot], key);
	log_debug("%s: unhandled %s of %u byte(s) at 0x%" PRIx64, bus->name, what, len, addr);
}

bool bus_read(struct bus *bus, uint64_t addr, uint8_t *data, uint32_t len)
{
	const struct bus_range *r = bus_find(bus, addr, len);
	if (r && r->ops->read) {
		r->ops->read(r->opaque, addr - r->base, data, len);
		return true;
	}
	memset(data, 0xff, len);
	if (r)
		return true; /* write-only device: reads float high */
	atomic_fetch_add(&bus->unhandled_reads, 1);
	note_unhandled(bus, "read", addr, len);
	return false;
}

bool bus_write(struct bus *bus, uint64_t addr, const uint8_t *data, uint32_t len)
{
	const struct bus_range *r = bus_find(bus, addr, len);
	if (r) {
		if (r->ops->write)
			r->ops->write(r->opaque, addr - r->base, data, len);
		return true;
	}
	atomic_fetch_add(&bus->unhandled_writes, 1);
	note_unhandled(bus, "write", addr, len);
	return false;
}
