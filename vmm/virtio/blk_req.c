/* virtio-blk requests: parsing a chain and doing the I/O (see blk.h). No VM, no logging: the
 * fuzzer and unit tests link this file alone. */
#include "vmm/virtio/blk.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>
#include <unistd.h>

#define HDR_BYTES 16

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (unsigned i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* Copies readable bytes [off, off + len) of the chain into out (the guest may split anything). */
static void copy_out(const struct vq_chain *c, uint64_t off, uint8_t *out, uint64_t len)
{
	for (unsigned i = 0; i < c->n_out && len; i++) {
		uint64_t blen = c->buf[i].len;
		if (off >= blen) {
			off -= blen;
			continue;
		}
		uint64_t n = blen - off < len ? blen - off : len;
		memcpy(out, c->buf[i].addr + off, n);
		out += n;
		len -= n;
		off = 0;
	}
}

/* Builds req->iov from bytes [off, off + len) of buffers [from, to) of the chain; each segment at most
 * BLK_SIZE_MAX bytes (as we told the driver), at most BLK_SEG_MAX of them. */
static int map_iov(const struct vq_chain *c, unsigned from, unsigned to, uint64_t off, uint64_t len,
		   struct blk_req *req)
{
	req->niov = 0;
	for (unsigned i = from; i < to && len; i++) {
		uint64_t blen = c->buf[i].len;
		if (off >= blen) {
			off -= blen;
			continue;
		}
		uint64_t n = blen - off < len ? blen - off : len;
		if (n > BLK_SIZE_MAX || req->niov >= BLK_SEG_MAX)
			return -E2BIG;
		req->iov[req->niov++] = (struct iovec){ .iov_base = c->buf[i].addr + off, .iov_len = n };
		len -= n;
		off = 0;
	}
	return 0;
}

/* Whether [sector, sector + count) lies on the disk (no wrap-around). */
static bool in_range(const struct blk_disk *d, uint64_t sector, uint64_t count)
{
	return sector <= d->sectors && count <= d->sectors - sector;
}

int blk_parse(const struct blk_disk *d, const struct vq_chain *c, struct blk_req *req)
{
	req->head = c->head;
	req->type = UINT32_MAX;
	req->sector = 0;
	req->status = VIRTIO_BLK_S_IOERR;
	req->status_ptr = NULL;
	req->len = 0;
	req->seg_sectors = req->seg_flags = 0;
	req->written = 0;
	req->error = 0;
	req->niov = 0;
	/* The status byte is the last writable byte; the header the first 16 readable ones. Without
	 * either the request cannot even be answered. */
	if (c->in_bytes < 1 || c->out_bytes < HDR_BYTES)
		return -EINVAL;
	const struct vq_buf *last = &c->buf[c->n - 1];
	unsigned last_w = c->n - 1;
	while (last->len == 0) { /* zero-length writable tails: the status is in an earlier buffer */
		last_w--;
		last = &c->buf[last_w];
	}
	req->status_ptr = last->addr + last->len - 1;
	uint8_t hdr[HDR_BYTES];
	copy_out(c, 0, hdr, HDR_BYTES);
	req->type = le32(hdr);
	req->sector = le64(hdr + 8);
	uint64_t out_data = c->out_bytes - HDR_BYTES; /* readable bytes after the header */
	uint64_t in_data = c->in_bytes - 1;           /* writable bytes before the status */

	switch (req->type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: {
		bool out = req->type == VIRTIO_BLK_T_OUT;
		uint64_t len = out ? out_data : in_data;
		if ((out ? in_data : out_data) != 0 || len == 0 || len % BLK_SECTOR)
			return 0; /* IOERR: data in the wrong direction, none, or not whole sectors */
		if (!in_range(d, req->sector, len / BLK_SECTOR))
			return 0;
		if (out && d->ro) {
			req->status = VIRTIO_BLK_S_IOERR; /* a read-only disk: never reaches the file */
			return 0;
		}
		int r = out ? map_iov(c, 0, c->n_out, HDR_BYTES, len, req) : map_iov(c, c->n_out, c->n, 0, len, req);
		if (r < 0)
			return 0;
		req->len = len;
		req->status = VIRTIO_BLK_S_OK;
		return 0;
	}
	case VIRTIO_BLK_T_FLUSH:
		if (out_data || in_data)
			return 0;
		req->status = VIRTIO_BLK_S_OK;
		return 0;
	case VIRTIO_BLK_T_GET_ID:
		if (!d->has_id) {
			req->status = VIRTIO_BLK_S_UNSUPP;
			return 0;
		}
		if (out_data || in_data == 0)
			return 0;
		req->len = in_data < BLK_ID_BYTES ? in_data : BLK_ID_BYTES;
		if (map_iov(c, c->n_out, c->n, 0, req->len, req) < 0)
			return 0;
		req->status = VIRTIO_BLK_S_OK;
		return 0;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES: {
		if (d->ro) {
			req->status = VIRTIO_BLK_S_UNSUPP; /* not offered on a read-only disk */
			return 0;
		}
		/* exactly one segment {le64 sector, le32 num_sectors, le32 flags}: max_*_seg is 1 */
		if (out_data != 16 || in_data)
			return 0;
		uint8_t seg[16];
		copy_out(c, HDR_BYTES, seg, 16);
		req->sector = le64(seg);
		req->seg_sectors = le32(seg + 8);
		req->seg_flags = le32(seg + 12);
		uint32_t allowed = req->type == VIRTIO_BLK_T_WRITE_ZEROES ? VIRTIO_BLK_WRITE_ZEROES_F_UNMAP : 0;
		if (req->seg_flags & ~allowed) {
			req->status = VIRTIO_BLK_S_UNSUPP;
			return 0;
		}
		if (req->seg_sectors > BLK_MAX_DISCARD_SECTORS || !in_range(d, req->sector, req->seg_sectors))
			return 0;
		req->status = VIRTIO_BLK_S_OK;
		return 0;
	}
	default:
		req->status = VIRTIO_BLK_S_UNSUPP;
		return 0;
	}
}

uint64_t blk_req_bytes(const struct blk_req *req)
{
	if (req->status != VIRTIO_BLK_S_OK)
		return 0;
	return req->type == VIRTIO_BLK_T_IN || req->type == VIRTIO_BLK_T_OUT ? req->len : 0;
}

/* preadv/pwritev until done: short transfers continue where they stopped. */
static int rw_all(int fd, bool write, struct iovec *iov, unsigned niov, uint64_t off)
{
	while (niov) {
		ssize_t n = write ? pwritev(fd, iov, (int)niov, (off_t)off) : preadv(fd, iov, (int)niov, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return write ? -EIO : -ENODATA; /* the file shrank under us */
		off += (uint64_t)n;
		while (niov && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			niov--;
		}
		if (niov) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

static int write_zeroes(int fd, uint64_t off, uint64_t len, bool unmap)
{
	/* unmap allowed: a hole reads back as zeros. Otherwise zero the range in place, or, where the
	 * file system cannot, punch a hole all the same (still zeros), or write zeros by hand. */
	if (!unmap && fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
		return 0;
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
		return 0;
	static const uint8_t zeros[64 << 10];
	while (len) {
		size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
		ssize_t w = pwrite(fd, zeros, n, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		off += (uint64_t)w;
		len -= (uint64_t)w;
	}
	return 0;
}

void blk_execute(const struct blk_disk *d, struct blk_req *req)
{
	int r = 0;
	uint32_t data_written = 0;
	if (req->status == VIRTIO_BLK_S_OK) {
		uint64_t off = req->sector * BLK_SECTOR;
		switch (req->type) {
		case VIRTIO_BLK_T_IN:
			r = rw_all(d->fd, false, req->iov, req->niov, off);
			if (r == 0)
				data_written = (uint32_t)req->len;
			break;
		case VIRTIO_BLK_T_OUT:
			r = rw_all(d->fd, true, req->iov, req->niov, off);
			break;
		case VIRTIO_BLK_T_FLUSH:
			r = fdatasync(d->fd) < 0 ? -errno : 0;
			break;
		case VIRTIO_BLK_T_GET_ID: {
			uint64_t left = req->len;
			const char *src = d->id;
			for (unsigned i = 0; i < req->niov; i++) {
				memcpy(req->iov[i].iov_base, src, req->iov[i].iov_len);
				src += req->iov[i].iov_len;
				left -= req->iov[i].iov_len;
			}
			(void)left;
			data_written = (uint32_t)req->len;
			break;
		}
		case VIRTIO_BLK_T_DISCARD:
			/* advisory: a file system without holes just keeps the data */
			if (fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
				      (off_t)req->seg_sectors * BLK_SECTOR) < 0 &&
			    errno != EOPNOTSUPP)
				r = -errno;
			break;
		case VIRTIO_BLK_T_WRITE_ZEROES:
			r = write_zeroes(d->fd, off, (uint64_t)req->seg_sectors * BLK_SECTOR,
					 req->seg_flags & VIRTIO_BLK_WRITE_ZEROES_F_UNMAP);
			break;
		default:
			r = -EINVAL;
		}
		if (r < 0) {
			req->error = -r;
			req->status = VIRTIO_BLK_S_IOERR;
		}
	}
	if (req->status_ptr)
		__atomic_store_n(req->status_ptr, req->status, __ATOMIC_RELAXED);
	req->written = data_written + (req->status_ptr ? 1 : 0);
}

void blk_read_config(const struct blk_disk *d, uint32_t offset, uint8_t *data, uint32_t len)
{
	uint8_t cfg[BLK_CONFIG_LEN] = { 0 };
	put64(cfg + 0, d->sectors);
	put32(cfg + 8, BLK_SIZE_MAX);
	put32(cfg + 12, BLK_SEG_MAX);
	put32(cfg + 20, BLK_SECTOR); /* blk_size */
	put32(cfg + 36, BLK_MAX_DISCARD_SECTORS); /* max_discard_sectors */
	put32(cfg + 40, 1);                       /* max_discard_seg */
	put32(cfg + 44, 8);                       /* discard_sector_alignment: 4 KiB */
	put32(cfg + 48, BLK_MAX_DISCARD_SECTORS); /* max_write_zeroes_sectors */
	put32(cfg + 52, 1);                       /* max_write_zeroes_seg */
	cfg[56] = 1;                                 /* write_zeroes_may_unmap */
	if (offset < sizeof(cfg) && len <= sizeof(cfg) - offset)
		memcpy(data, cfg + offset, len);
}

