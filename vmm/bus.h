/* An address-range bus: devices claim [base, base + len) of the port-I/O or the MMIO space and get
 * the accesses that fall entirely inside their range. Registration happens before vCPUs start; after
 * that the bus is read-only, so lookups take no lock. Unclaimed reads see all-ones, unclaimed writes
 * are dropped and counted. */
#pragma once
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cella_err;

/* offset is relative to the device's base; len is 1..8. Handlers run on vCPU threads and must do
 * their own locking; read fills all len bytes of data. */
struct bus_ops {
	void (*read)(void *opaque, uint64_t offset, uint8_t *data, uint32_t len);
	void (*write)(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len);
};

struct bus_range {
	uint64_t base, len;
	const struct bus_ops *ops;
	void *opaque;
	const char *name;
};

struct bus {
	const char *name; /* "pio" or "mmio": used in messages */
	struct bus_range *ranges; /* sorted by base, never overlapping */
	size_t n, cap;
	atomic_uint_fast64_t unhandled_reads, unhandled_writes;
	/* Addresses already logged as unhandled (debug level, once each); a small lossy table. */
	_Atomic uint64_t logged[64];
};

void bus_init(struct bus *bus, const char *name);
void bus_free(struct bus *bus);

/* Claims [base, base + len) for a device; len > 0, no wrap-around, no overlap with another device
 * ("pio: serial [0x3f8, 0x400) overlaps i8042 [0x3fc, 0x3fd)"). name must outlive the bus. */
int bus_register(struct bus *bus, uint64_t base, uint64_t len, const struct bus_ops *ops, void *opaque,
		 const char *name, struct cella_err *err);

/* The device whose range holds [addr, addr + len), or NULL. */
const struct bus_range *bus_find(const struct bus *bus, uint64_t addr, uint32_t len);

/* Dispatch one access. Return true when a device took it; false = unhandled (read data is all-ones). */
bool bus_read(struct bus *bus, uint64_t addr, uint8_t *data, uint32_t len);
bool bus_write(struct bus *bus, uint64_t addr, const uint8_t *data, uint32_t len);
