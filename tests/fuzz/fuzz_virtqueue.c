/* libFuzzer target: the virtqueue walker over guest memory made entirely of fuzzer bytes (the
 * layout of fuzz_vq.h). Every buffer handed out is written to its full length, so ASan catches any
 * pointer the walker let escape RAM. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/err.h"
#include "tests/fuzz/fuzz_vq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct vq q;
	uint16_t qsz = fuzz_vq_setup(&q, data, size);
	static struct vq_chain c;
	for (int k = 0; k < 2 * qsz + 2; k++) {
		struct cella_err err;
		int r = vq_pop(&q, &c, &err);
		if (r <= 0)
			break;
		uint32_t written = 0;
		for (unsigned i = 0; i < c.n; i++) {
			if (!fuzz_in_ram(c.buf[i].addr, c.buf[i].len))
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
