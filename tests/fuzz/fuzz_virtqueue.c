/* libFuzzer target: the virtqueue walker over guest memory made entirely of fuzzer bytes.
 * Byte 0 picks the queue size (power of two) and event-idx; the rest fills a 64 KiB guest RAM with
 * the rings at fixed places. Every buffer handed out is written to its full length, so ASan catches
 * any pointer the walker let escape RAM. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/err.h"
#include "vmm/virtio/queue.h"

#define GPA 0x200000ull
#define RAM 0x10000ull

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static _Alignas(16) uint8_t ram[RAM];
	if (size < 1)
		return 0;
	uint16_t qsz = (uint16_t)(1u << (data[0] & 7)); /* 1..128 */
	bool event_idx = data[0] & 8;
	size_t n = size - 1 < RAM ? size - 1 : RAM;
	memset(ram, 0, sizeof(ram));
	memcpy(ram, data + 1, n);
	struct vq_mem mem = { .r = { { .gpa = GPA, .size = RAM, .host = ram } }, .n = 1 };
	struct vq q;
	/* desc at 0, avail at 0x800 (fits 128 * 16), used at 0xa00 */
	if (vq_setup(&q, &mem, qsz, GPA, GPA + 0x800, GPA + 0xa00, event_idx, NULL) < 0)
		__builtin_trap();
	static struct vq_chain c;
	for (int k = 0; k < 2 * qsz + 2; k++) {
		struct cella_err err;
		int r = vq_pop(&q, &c, &err);
		if (r <= 0)
			break;
		uint32_t written = 0;
		for (unsigned i = 0; i < c.n; i++) {
			if (c.buf[i].addr < ram || c.buf[i].addr + c.buf[i].len > ram + RAM)
				__builtin_trap();
			if (c.buf[i].write) {
				memset(c.buf[i].addr, 0xa5, c.buf[i].len);
				written += c.buf[i].len;
			} else {
				uint8_t sink = 0;
				for (uint32_t j = 0; j < c.buf[i].len; j += 4096)
					sink ^= c.buf[i].addr[j];
				if (c.buf[i].len)
					sink ^= c.buf[i].addr[c.buf[i].len - 1];
				__asm__ volatile("" : : "r"(sink)); /* keep the reads */
			}
		}
		vq_push(&q, c.head, written);
		(void)vq_should_notify(&q);
	}
	(void)vq_enable_notify(&q, true);
	(void)vq_enable_notify(&q, false);
	return 0;
}
