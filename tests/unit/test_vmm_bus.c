/* The address-range bus: registration, overlap rejection, lookup, dispatch, unhandled accesses. */
#include <errno.h>
#include <string.h>

#include "base/err.h"
#include "tap.h"
#include "vmm/bus.h"

struct probe {
	uint64_t last_off;
	uint32_t last_len;
	uint8_t last[8];
	int reads, writes;
};

static void probe_read(void *opaque, uint64_t off, uint8_t *data, uint32_t len)
{
	struct probe *p = opaque;
	p->reads++;
	p->last_off = off;
	p->last_len = len;
	for (uint32_t i = 0; i < len; i++)
		data[i] = (uint8_t)(0xa0 + off + i);
}

static void probe_write(void *opaque, uint64_t off, const uint8_t *data, uint32_t len)
{
	struct probe *p = opaque;
	p->writes++;
	p->last_off = off;
	p->last_len = len;
	memcpy(p->last, data, len);
}

static const struct bus_ops probe_ops = { .read = probe_read, .write = probe_write };
static const struct bus_ops write_only_ops = { .write = probe_write };

static void test_register(void)
{
	struct cella_err err = { 0 };
	struct bus b;
	struct probe p = { 0 };
	bus_init(&b, "pio");
	TAP_OK(bus_register(&b, 0x3f8, 8, &probe_ops, &p, "serial", &err) == 0, "register serial");
	TAP_OK(bus_register(&b, 0x60, 1, &probe_ops, &p, "i8042 data", &err) == 0, "register below");
	TAP_OK(bus_register(&b, 0x64, 1, &probe_ops, &p, "i8042 cmd", &err) == 0, "register between");
	TAP_OK(bus_register(&b, 0x400, 0x10, &probe_ops, &p, "after", &err) == 0, "register adjacent after");
	TAP_OK(bus_register(&b, 0x3f0, 8, &probe_ops, &p, "before", &err) == 0, "register adjacent before");
	TAP_OK(b.n == 5, "five ranges");
	for (size_t i = 1; i < b.n; i++)
		TAP_OK(b.ranges[i - 1].base < b.ranges[i].base, "ranges sorted (%zu)", i);

	int r = bus_register(&b, 0x3fc, 1, &probe_ops, &p, "clash", &err);
	TAP_OK(r == -EBUSY, "overlap inside rejected");
	TAP_OK(strstr(err.msg, "clash") && strstr(err.msg, "serial"), "message names both: %s", err.msg);
	TAP_OK(bus_register(&b, 0x3f4, 8, &probe_ops, &p, "straddle", &err) == -EBUSY, "straddling rejected");
	TAP_OK(bus_register(&b, 0x300, 0x200, &probe_ops, &p, "cover", &err) == -EBUSY, "covering rejected");
	TAP_OK(bus_register(&b, 0x407, 1, &probe_ops, &p, "in-after", &err) == -EBUSY, "inside last rejected");
	TAP_OK(bus_register(&b, 0x10, 0, &probe_ops, &p, "empty", &err) == -EINVAL, "empty range rejected");
	TAP_OK(bus_register(&b, UINT64_MAX - 1, 4, &probe_ops, &p, "wrap", &err) == -EINVAL &&
		       strstr(err.msg, "wraps"), "wrapping range rejected");
	TAP_OK(bus_register(&b, UINT64_MAX, 1, &probe_ops, &p, "top", &err) == 0, "last byte of space ok");
	TAP_OK(b.n == 6, "failed registrations left no trace");
	bus_free(&b);
}

static void test_dispatch(void)
{
	struct cella_err err = { 0 };
	struct bus b;
	struct probe p = { 0 }, q = { 0 };
	bus_init(&b, "mmio");
	bus_register(&b, 0xd0000000, 0x1000, &probe_ops, &p, "dev", &err);
	bus_register(&b, 0xd0002000, 0x10, &write_only_ops, &q, "wo", &err);

	TAP_OK(bus_find(&b, 0xd0000000, 4) != NULL, "find at base");
	TAP_OK(bus_find(&b, 0xd0000ffc, 4) != NULL, "find at end");
	TAP_OK(bus_find(&b, 0xd0000ffe, 4) == NULL, "access running past the end is not the device's");
	TAP_OK(bus_find(&b, 0xcfffffff, 1) == NULL, "just below");
	TAP_OK(bus_find(&b, 0xd0001000, 1) == NULL, "just after");

	uint8_t data[8] = { 0 };
	TAP_OK(bus_read(&b, 0xd0000010, data, 4), "read handled");
	TAP_OK(p.reads == 1 && p.last_off == 0x10 && p.last_len == 4, "device saw offset and length");
	TAP_OK(data[0] == 0xb0 && data[3] == 0xb3, "device's data returned");
	uint8_t w[2] = { 0x34, 0x12 };
	TAP_OK(bus_write(&b, 0xd0000002, w, 2), "write handled");
	TAP_OK(p.writes == 1 && p.last_off == 2 && p.last[0] == 0x34 && p.last[1] == 0x12, "device saw write");

	memset(data, 0, sizeof(data));
	TAP_OK(!bus_read(&b, 0xe0000000, data, 4), "unhandled read reported");
	TAP_OK(data[0] == 0xff && data[1] == 0xff && data[2] == 0xff && data[3] == 0xff, "unhandled read is all-ones");
	TAP_OK(data[4] == 0, "only len bytes touched");
	TAP_OK(!bus_write(&b, 0xe0000000, w, 2), "unhandled write reported");
	TAP_OK(!bus_write(&b, 0xe0000004, w, 2), "second unhandled write");
	TAP_OK(b.unhandled_writes == 2 && b.unhandled_reads == 1, "unhandled accesses counted");

	memset(data, 0, sizeof(data));
	TAP_OK(bus_read(&b, 0xd0002000, data, 2) && data[0] == 0xff && data[1] == 0xff,
	       "write-only device reads float high");
	TAP_OK(b.unhandled_reads == 1, "...and is not counted as unhandled");
	bus_free(&b);
}

static void test_many(void)
{
	struct cella_err err = { 0 };
	struct bus b;
	struct probe p = { 0 };
	bus_init(&b, "pio");
	int ok = 1;
	/* Registered in a scrambled order; every lookup must land on its own range. */
	for (unsigned i = 0; i < 200; i++) {
		unsigned k = (i * 37) % 200;
		if (bus_register(&b, 0x1000 + k * 0x10, 0x8, &probe_ops, &p, "dev", &err) < 0)
			ok = 0;
	}
	TAP_OK(ok && b.n == 200, "200 ranges registered");
	int found = 1;
	for (unsigned k = 0; k < 200; k++) {
		const struct bus_range *r = bus_find(&b, 0x1000 + k * 0x10 + 7, 1);
		if (!r || r->base != 0x1000 + k * 0x10)
			found = 0;
		if (bus_find(&b, 0x1000 + k * 0x10 + 8, 1))
			found = 0;
	}
	TAP_OK(found, "binary search finds each range and no gap");
	bus_free(&b);
}

int main(void)
{
	test_register();
	test_dispatch();
	test_many();
	return tap_done();
}
