/* libFuzzer target: virtio-blk requests (blk_parse + blk_execute) over chains the virtqueue walker
 * pops from guest memory made of fuzzer bytes, against a 32 KiB memfd disk. Byte 0: queue size (low 3
 * bits), event-idx (bit 3), read-only disk (bit 4), a GET_ID serial (bit 5). The rest fills a 64 KiB
 * guest RAM (the layout of fuzz_vq.h). Every status byte and data
 * buffer handed to the disk must lie inside RAM (ASan catches the rest), and a read-only disk's file
 * must never change. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/err.h"
#include "vmm/virtio/blk.h"
#include "tests/fuzz/fuzz_vq.h"

#define DISK_SECTORS 64u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t disk_sum(int fd)
{
	static uint8_t buf[DISK_SECTORS * BLK_SECTOR];
	if (pread(fd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
		__builtin_trap();
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < sizeof(buf); i++)
		h = (h ^ buf[i]) * 1099511628211ull;
	return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vq_chain c;
	static struct blk_req req;
	static int fd = -1;
	if (fd < 0)
		fd = memfd_create("fuzz-disk", MFD_CLOEXEC);
	if (fd < 0 || size < 1)
		return 0;
	/* a fresh disk each run: deterministic, a recognisable pattern in sector 0 */
	if (ftruncate(fd, 0) < 0 || ftruncate(fd, DISK_SECTORS * BLK_SECTOR) < 0 || pwrite(fd, "cella", 5, 0) != 5)
		__builtin_trap();
	struct blk_disk disk = { .fd = fd, .ro = data[0] & 16, .sectors = DISK_SECTORS, .has_id = data[0] & 32 };
	memcpy(disk.id, "fuzz-serial", 11);
	uint64_t before = disk.ro ? disk_sum(fd) : 0;

	struct vq q;
	uint16_t qsz = fuzz_vq_setup(&q, data, size);
	for (int k = 0; k < 2 * qsz + 2; k++) {
		if (vq_pop(&q, &c, NULL) <= 0)
			break;
		if (blk_parse(&disk, &c, &req) < 0) {
			vq_push(&q, c.head, 0);
			break; /* the device would need a reset */
		}
		if (!fuzz_in_ram(req.status_ptr, 1))
			__builtin_trap();
		for (unsigned i = 0; i < req.niov; i++)
			if (!fuzz_in_ram(req.iov[i].iov_base, req.iov[i].iov_len))
				__builtin_trap();
		(void)blk_req_bytes(&req);
		blk_execute(&disk, &req);
		if (req.written > c.in_bytes)
			__builtin_trap();
		vq_push(&q, c.head, req.written);
	}
	if (disk.ro && disk_sum(fd) != before)
		__builtin_trap();
	return 0;
}
