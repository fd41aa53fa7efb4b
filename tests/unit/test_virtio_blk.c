/* virtio-blk request parser and executor (vmm/virtio/blk.c) against a fake guest memory and a memfd
 * disk: reads, writes, flush, get-id, discard, write-zeroes with any framing; every malformed request
 * gets IOERR/UNSUPP (or needs-reset when it has no status byte / header), a read-only disk's file is
 * never written. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tap.h"
#include "vmm/virtio/blk.h"

#define RAM (4u << 20)
#define DISK_SECTORS 128u

static uint8_t *ram;
static struct vq_chain c;
static struct blk_req req;
static struct blk_disk disk;
static size_t ram_next;

static uint8_t *alloc(size_t len)
{
	uint8_t *p = ram + ram_next;
	ram_next += (len + 63) & ~(size_t)63;
	return p;
}

static void chain_reset(void)
{
	memset(&c, 0, sizeof(c));
	ram_next = 0;
	memset(ram, 0xcc, RAM);
}

static uint8_t *add(uint32_t len, bool write)
{
	uint8_t *p = alloc(len ? len : 1);
	c.buf[c.n++] = (struct vq_buf){ .addr = p, .len = len, .write = write };
	if (write)
		c.in_bytes += len;
	else {
		c.out_bytes += len;
		c.n_out = c.n;
	}
	return p;
}

static void hdr(uint8_t *p, uint32_t type, uint64_t sector)
{
	memset(p, 0, 16);
	memcpy(p, &type, 4);
	memcpy(p + 8, &sector, 8);
}

/* header in one descriptor */
static void add_hdr(uint32_t type, uint64_t sector)
{
	hdr(add(16, false), type, sector);
}

static int run(void)
{
	int r = blk_parse(&disk, &c, &req);
	if (r == 0)
		blk_execute(&disk, &req);
	return r;
}

static uint8_t disk_byte(uint64_t off)
{
	uint8_t b = 0;
	if (pread(disk.fd, &b, 1, (off_t)off) != 1)
		return 0xee;
	return b;
}

static void fill_disk(void)
{
	uint8_t buf[BLK_SECTOR];
	for (unsigned s = 0; s < DISK_SECTORS; s++) {
		memset(buf, (int)(s + 1), sizeof(buf));
		if (pwrite(disk.fd, buf, sizeof(buf), (off_t)s * BLK_SECTOR) != (ssize_t)sizeof(buf))
			printf("# pwrite failed\n");
	}
}

static void reads(void)
{
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 3);
	uint8_t *data = add(1024, true);
	uint8_t *st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK && req.written == 1025, "read 2 sectors: status %u written %u", *st,
	       req.written);
	TAP_OK(data[0] == 4 && data[511] == 4 && data[512] == 5 && data[1023] == 5, "data from sectors 3 and 4");

	/* header split 5 + 11, data over three buffers, status shares the last data buffer */
	chain_reset();
	uint8_t h[16];
	hdr(h, VIRTIO_BLK_T_IN, 10);
	memcpy(add(5, false), h, 5);
	memcpy(add(11, false), h + 5, 11);
	uint8_t *a = add(100, true), *b = add(400, true), *cc = add(13, true);
	TAP_OK(run() == 0 && cc[12] == VIRTIO_BLK_S_OK && req.written == 513, "split framing: status in the data's last buffer");
	TAP_OK(a[0] == 11 && b[399] == 11 && cc[11] == 11, "split framing: all 512 bytes from sector 10");

	/* zero-length writable buffer after the status */
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 0);
	add(512, true);
	st = add(1, true);
	add(0, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK, "a zero-length buffer after the status is skipped");

	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
	add(1024, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR && req.written == 1, "read past the end: IOERR");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, UINT64_MAX);
	add(512, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR, "sector 2^64-1: IOERR (no wrap-around)");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 0);
	add(100, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR, "read of 100 bytes (not whole sectors): IOERR");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 0);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR, "read of nothing: IOERR");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 0);
	add(512, false);
	add(512, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR, "read with readable data after the header: IOERR");
}

static void writes(void)
{
	chain_reset();
	uint8_t h[16];
	hdr(h, VIRTIO_BLK_T_OUT, 20);
	memcpy(add(8, false), h, 8);
	uint8_t *p = add(8 + 200, false); /* rest of the header and the start of the data */
	memcpy(p, h + 8, 8);
	memset(p + 8, 0xa1, 200);
	memset(add(312, false), 0xa2, 312);
	uint8_t *st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK && req.written == 1, "write 1 sector, header and data mixed");
	TAP_OK(disk_byte(20 * 512) == 0xa1 && disk_byte(20 * 512 + 199) == 0xa1 && disk_byte(20 * 512 + 200) == 0xa2 &&
	       disk_byte(21 * 512) == 22, "file has the data, sector 21 untouched");

	chain_reset();
	add_hdr(VIRTIO_BLK_T_OUT, 0);
	add(512, false);
	add(512, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR, "write with writable data: IOERR");

	disk.ro = true;
	chain_reset();
	add_hdr(VIRTIO_BLK_T_OUT, 30);
	memset(add(512, false), 0x77, 512);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR && disk_byte(30 * 512) == 31, "read-only disk: write gets IOERR, file untouched");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_DISCARD, 0);
	add(16, false);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_UNSUPP, "read-only disk: discard UNSUPP");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 30);
	uint8_t *d = add(512, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK && d[0] == 31, "read-only disk still reads");
	disk.ro = false;
}

static void seg(uint8_t *p, uint64_t sector, uint32_t n, uint32_t flags)
{
	memcpy(p, &sector, 8);
	memcpy(p + 8, &n, 4);
	memcpy(p + 12, &flags, 4);
}

static void others(void)
{
	chain_reset();
	add_hdr(VIRTIO_BLK_T_FLUSH, 0);
	uint8_t *st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK, "flush");

	chain_reset();
	add_hdr(VIRTIO_BLK_T_GET_ID, 0);
	uint8_t *id = add(20, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK && req.written == 21 && !memcmp(id, "disk-7\0\0", 8), "get-id");
	disk.has_id = false;
	chain_reset();
	add_hdr(VIRTIO_BLK_T_GET_ID, 0);
	add(20, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_UNSUPP, "get-id without an id: UNSUPP");
	disk.has_id = true;

	chain_reset();
	add_hdr(VIRTIO_BLK_T_DISCARD, 0);
	seg(add(16, false), 40, 8, 0);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK, "discard 8 sectors");
	TAP_OK(disk_byte(40 * 512) == 0 && disk_byte(48 * 512 - 1) == 0 && disk_byte(48 * 512) == 49,
	       "discarded range reads zero (hole), the next sector untouched");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_DISCARD, 0);
	seg(add(16, false), 40, 8, 1);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_UNSUPP, "discard with the unmap flag: UNSUPP");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_WRITE_ZEROES, 0);
	seg(add(16, false), 60, 2, 0);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK && disk_byte(60 * 512) == 0 && disk_byte(62 * 512 - 1) == 0 &&
	       disk_byte(62 * 512) == 63, "write-zeroes");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_WRITE_ZEROES, 0);
	seg(add(16, false), 70, 1, VIRTIO_BLK_WRITE_ZEROES_F_UNMAP);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK && disk_byte(70 * 512) == 0, "write-zeroes with unmap");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_WRITE_ZEROES, 0);
	seg(add(16, false), DISK_SECTORS - 1, 2, 0);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR && disk_byte((DISK_SECTORS - 1) * 512) == DISK_SECTORS,
	       "write-zeroes past the end: IOERR, nothing zeroed");
	chain_reset();
	add_hdr(VIRTIO_BLK_T_DISCARD, 0);
	seg(add(16, false), 0, 1, 0);
	seg(add(16, false), 1, 1, 0);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR && disk_byte(0) == 1, "two discard segments (max 1): IOERR");

	chain_reset();
	add_hdr(99, 0);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_UNSUPP, "unknown type: UNSUPP");
}

static void malformed(void)
{
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 0);
	add(512, false);
	TAP_OK(run() == -EINVAL && !req.status_ptr, "no writable byte for the status: needs reset");
	chain_reset();
	add(8, false);
	add(1, true);
	TAP_OK(run() == -EINVAL, "header of 8 bytes: needs reset");
	chain_reset();
	add(0, true);
	TAP_OK(run() == -EINVAL, "nothing at all: needs reset");

	/* more data segments than seg_max */
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 0);
	for (unsigned i = 0; i < BLK_SEG_MAX + 1; i++)
		add(512, true);
	uint8_t *st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR, "%u data segments (seg_max %u): IOERR", BLK_SEG_MAX + 1,
	       BLK_SEG_MAX);
	/* exactly seg_max is fine (the disk has 128 sectors: use 64 x 1 KiB... segments of 256 bytes) */
	chain_reset();
	add_hdr(VIRTIO_BLK_T_IN, 0);
	for (unsigned i = 0; i < BLK_SEG_MAX; i++)
		add(256, true);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_OK, "%u segments of 256 bytes: OK", BLK_SEG_MAX);
	/* one segment over size_max */
	chain_reset();
	add_hdr(VIRTIO_BLK_T_OUT, 0);
	add(BLK_SIZE_MAX + 512, false);
	st = add(1, true);
	TAP_OK(run() == 0 && *st == VIRTIO_BLK_S_IOERR, "a segment over size_max: IOERR (disk is smaller anyway)");
}

static void config(void)
{
	uint8_t cfg[BLK_CONFIG_LEN];
	memset(cfg, 0xff, sizeof(cfg));
	blk_read_config(&disk, 0, cfg, sizeof(cfg));
	uint64_t cap;
	uint32_t seg_max, size_max;
	memcpy(&cap, cfg, 8);
	memcpy(&size_max, cfg + 8, 4);
	memcpy(&seg_max, cfg + 12, 4);
	TAP_OK(cap == DISK_SECTORS && seg_max == BLK_SEG_MAX && size_max == BLK_SIZE_MAX, "config: capacity, seg/size max");
	uint8_t b = 0x55;
	blk_read_config(&disk, BLK_CONFIG_LEN, &b, 1);
	TAP_OK(b == 0x55, "config read past the end leaves the buffer alone");
}

int main(void)
{
	ram = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	disk.fd = memfd_create("disk", MFD_CLOEXEC);
	if (ram == MAP_FAILED || disk.fd < 0 || ftruncate(disk.fd, DISK_SECTORS * BLK_SECTOR) < 0)
		TAP_SKIP_ALL("mmap/memfd failed");
	disk.sectors = DISK_SECTORS;
	memcpy(disk.id, "disk-7", 6);
	disk.has_id = true;
	fill_disk();
	reads();
	writes();
	others();
	malformed();
	config();
	close(disk.fd);
	munmap(ram, RAM);
	return tap_done();
}
