/* Guest memory and one virtqueue made of fuzzer bytes, shared by fuzz_virtqueue and fuzz_blk.
 * Byte 0: queue size 1 << (bits 0-2), so 1..128; event-idx (bit 3); the other bits are the
 * fuzzer's own. The rest fills a 64 KiB guest RAM at FUZZ_GPA: descriptors at 0, driver ring at
 * 0x800 (after 128 * 16 bytes of descriptors), device ring at 0xa00. Included by one file each. */
#ifndef CELLA_TESTS_FUZZ_VQ_H
#define CELLA_TESTS_FUZZ_VQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vmm/virtio/queue.h"

#define FUZZ_GPA 0x200000ull
#define FUZZ_RAM 0x10000ull

static _Alignas(16) uint8_t fuzz_ram[FUZZ_RAM];
static struct vq_mem fuzz_mem = { .r = { { .gpa = FUZZ_GPA, .size = FUZZ_RAM, .host = fuzz_ram } }, .n = 1 };

/* Fills RAM from data[1..] (zeros past the input) and sets q up over it; size must be >= 1.
 * Returns the queue size. */
static inline uint16_t fuzz_vq_setup(struct vq *q, const uint8_t *data, size_t size)
{
	uint16_t qsz = (uint16_t)(1u << (data[0] & 7));
	bool event_idx = data[0] & 8;
	size_t n = size - 1 < FUZZ_RAM ? size - 1 : FUZZ_RAM;
	memset(fuzz_ram, 0, sizeof(fuzz_ram));
	memcpy(fuzz_ram, data + 1, n);
	if (vq_setup(q, &fuzz_mem, qsz, FUZZ_GPA, FUZZ_GPA + 0x800, FUZZ_GPA + 0xa00, event_idx, NULL) < 0)
		__builtin_trap();
	return qsz;
}

/* Whether [p, p + len) lies inside the guest RAM. */
static inline bool fuzz_in_ram(const void *p, size_t len)
{
	const uint8_t *b = p;
	return b >= fuzz_ram && len <= FUZZ_RAM && b + len <= fuzz_ram + FUZZ_RAM;
}

#endif
