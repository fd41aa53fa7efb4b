/* virtio-blk, the device: a disk file, its I/O thread and rate limiter (see blk.h). */
#include "vmm/virtio/blk.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/iothread.h"
#include "vmm/snapfile.h"
#include "vmm/virtio/mmio.h"
#include "vmm/vm.h"

#define BATCH 16

struct blk {
	struct blk_disk disk;
	char *path;
	struct ratelimit rl;
	struct virtio_slot *slot;
	bool logged_io_error;
	struct vq_chain chain;
	struct blk_req reqs[BATCH];
};

static void blk_config(void *dev, uint32_t offset, uint8_t *data, uint32_t len)
{
	struct blk *b = dev;
	blk_read_config(&b->disk, offset, data, len);
}

/* Serves queue 0 until it is empty, broken, or the rate limiter says wait. Lock held on entry and
 * exit; dropped around the disk I/O so the vCPUs can reach the registers meanwhile. */
static void blk_serve(struct blk *b, struct virtio_mmio *t)
{
	struct cella_err err = { 0 };
	for (;;) {
		struct vq *q = virtio_mmio_queue(t, 0);
		if (!q || b->rl.blocked)
			return;
		unsigned n = 0;
		int r = 0;
		while (n < BATCH && (r = vq_pop(q, &b->chain, &err)) > 0) {
			struct blk_req *req = &b->reqs[n];
			if (blk_parse(&b->disk, &b->chain, req) < 0) {
				r = cella_err_set(&err, EINVAL, "request %u: %s", b->chain.head,
						  b->chain.in_bytes < 1 ? "no writable status byte" : "header shorter than 16 bytes");
				vq_push(q, b->chain.head, 0);
				break;
			}
			if (!ratelimit_consume(&b->rl, blk_req_bytes(req), 1)) {
				vq_unpop(q);
				break;
			}
			n++;
		}
		if (r < 0) {
			/* complete what was parsed so far, then the device needs a reset */
			for (unsigned i = 0; i < n; i++) {
				blk_execute(&b->disk, &b->reqs[i]);
				vq_push(q, b->reqs[i].head, b->reqs[i].written);
			}
			virtio_mmio_used(t, 0);
			virtio_mmio_fail(t, err.msg);
			return;
		}
		if (n == 0)
			return;
		uint32_t epoch = t->epoch;
		virtio_mmio_unlock(t);
		for (unsigned i = 0; i < n; i++) {
			blk_execute(&b->disk, &b->reqs[i]);
			if (b->reqs[i].error && !b->logged_io_error) {
				/* the guest sees IOERR; the host's reason is logged once */
				log_warn("%s: %s: request type %u at sector %" PRIu64 ": %s", b->slot->name, b->path,
					 b->reqs[i].type, b->reqs[i].sector, strerror(b->reqs[i].error));
				b->logged_io_error = true;
			}
		}
		virtio_mmio_lock(t);
		if (t->epoch != epoch)
			continue; /* the driver reset the device meanwhile: nothing to give back */
		for (unsigned i = 0; i < n; i++)
			vq_push(q, b->reqs[i].head, b->reqs[i].written);
		virtio_mmio_used(t, 0);
	}
}

static void blk_notify(void *dev, struct virtio_mmio *t, unsigned q)
{
	blk_serve(dev, t);
}

static void on_ratelimit(void *opaque, uint32_t events)
{
	struct blk *b = opaque;
	ratelimit_timer_event(&b->rl);
	virtio_mmio_lock(&b->slot->t);
	blk_serve(b, &b->slot->t);
	virtio_mmio_unlock(&b->slot->t);
}

static void blk_free(void *dev)
{
	struct blk *b = dev;
	if (!b)
		return;
	ratelimit_destroy(&b->rl);
	if (b->disk.fd >= 0)
		close(b->disk.fd);
	free(b->path);
	free(b);
}

/* Snapshot: the disk's size as the guest saw it. The restored guest remembers that capacity, so a disk
 * file that grew or shrank since would hand it the wrong blocks or errors: refused with the sizes. */
static int blk_save(void *dev, struct snap_writer *w, struct cella_err *err)
{
	struct blk *b = dev;
	snap_put_u64(w, b->disk.sectors);
	return 0;
}

static int blk_load(void *dev, struct snap_sec *s, struct cella_err *err)
{
	struct blk *b = dev;
	uint64_t sectors = snap_get_u64(s);
	if (s->bad)
		return 0; /* snap_sec_done names the short section */
	if (sectors != b->disk.sectors)
		return cella_err_set(err, EINVAL, "disk %s: %" PRIu64 " sectors of 512 bytes now, %" PRIu64 " when the "
				     "snapshot was taken: restore with the disk as it was then", b->path, b->disk.sectors,
				     sectors);
	return 0;
}

static const struct virtio_dev_ops blk_ops_rw = {
	.name = "virtio-blk",
	.device_id = VIRTIO_ID_BLOCK,
	.features = 1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX | 1ull << VIRTIO_BLK_F_BLK_SIZE |
		    1ull << VIRTIO_BLK_F_FLUSH | 1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES,
	.nqueues = 1,
	.config_len = BLK_CONFIG_LEN,
	.read_config = blk_config,
	.notify = blk_notify,
	.save = blk_save,
	.load = blk_load,
};

static const struct virtio_dev_ops blk_ops_ro = {
	.name = "virtio-blk",
	.device_id = VIRTIO_ID_BLOCK,
	.features = 1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX | 1ull << VIRTIO_BLK_F_BLK_SIZE |
		    1ull << VIRTIO_BLK_F_FLUSH | 1ull << VIRTIO_BLK_F_RO,
	.nqueues = 1,
	.config_len = BLK_CONFIG_LEN,
	.read_config = blk_config,
	.notify = blk_notify,
	.save = blk_save,
	.load = blk_load,
};

/* Opens, locks and sizes a disk file or block device. */
static int open_disk(const struct vmm_disk *disk, int *fd_out, uint64_t *sectors, struct cella_err *err)
{
	_cleanup_close_ int fd = open(disk->path, (disk->ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0)
		return cella_err_sys(err, errno, "disk %s", disk->path);
	/* one writer per disk file (like QEMU's image locking); readers share */
	if (flock(fd, (disk->ro ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0)
		return errno == EWOULDBLOCK ? cella_err_set(err, EBUSY, "disk %s: already in use (locked by another VM or --disk)", disk->path)
					    : cella_err_sys(err, errno, "disk %s: flock", disk->path);
	struct stat st;
	uint64_t size = 0;
	if (fstat(fd, &st) < 0)
		return cella_err_sys(err, errno, "disk %s", disk->path);
	if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0)
			return cella_err_sys(err, errno, "disk %s: BLKGETSIZE64", disk->path);
	} else {
		return cella_err_set(err, EINVAL, "disk %s: not a regular file or block device", disk->path);
	}
	if (size < BLK_SECTOR)
		return cella_err_set(err, EINVAL, "disk %s: %" PRIu64 " bytes, smaller than one 512-byte sector",
				     disk->path, size);
	if (size % BLK_SECTOR)
		log_warn("disk %s: the last %" PRIu64 " bytes are not a whole sector and are not visible", disk->path,
			 size % BLK_SECTOR);
	*sectors = size / BLK_SECTOR;
	*fd_out = TAKE_FD(fd);
	return 0;
}

int blk_check(const struct vmm_disk *disk, struct cella_err *err)
{
	int fd;
	uint64_t sectors;
	int r = open_disk(disk, &fd, &sectors, err);
	if (r == 0)
		close(fd);
	return r;
}

int blk_add(struct vm *vm, const struct vmm_disk *disk, struct cella_err *err)
{
	struct blk *b = calloc(1, sizeof(*b));
	if (!b)
		return cella_err_set(err, ENOMEM, "disk %s: out of memory", disk->path);
	b->disk.fd = -1;
	b->rl.timer_fd = -1;
	b->disk.ro = disk->ro;
	int r = 0;
	b->path = strdup(disk->path);
	if (!b->path) {
		r = cella_err_set(err, ENOMEM, "disk %s: out of memory", disk->path);
		goto fail;
	}
	if ((r = open_disk(disk, &b->disk.fd, &b->disk.sectors, err)) < 0)
		goto fail;
	if (disk->id) {
		size_t n = strlen(disk->id); /* checked <= 20 by the config; NUL-padded, no terminator at 20 */
		memcpy(b->disk.id, disk->id, n < sizeof(b->disk.id) ? n : sizeof(b->disk.id));
		b->disk.has_id = true;
	}
	if ((r = ratelimit_init(&b->rl, &disk->rl, err)) < 0) {
		cella_err_wrap(err, "disk %s", disk->path);
		goto fail;
	}
	struct virtio_slot *slot;
	r = vm_virtio_add(vm, disk->ro ? &blk_ops_ro : &blk_ops_rw, b, blk_free, VDEV_OWN_THREAD, &slot, err);
	if (r < 0)
		return cella_err_wrap(err, "disk %s", disk->path); /* b was freed */
	b->slot = slot;
	if (ratelimit_fd(&b->rl) >= 0 &&
	    (r = iothread_add(slot->io, ratelimit_fd(&b->rl), EPOLLIN, on_ratelimit, b, err)) < 0)
		return r; /* b belongs to the VM now */
	log_debug("%s: %s, %" PRIu64 " sectors%s", slot->name, disk->path, b->disk.sectors, disk->ro ? ", read-only" : "");
	return 0;
fail:
	blk_free(b);
	return r;
}

int blk_set_ratelimit(struct virtio_slot *slot, const struct ratelimit_cfg *cfg, struct cella_err *err)
{
	struct blk *b = slot->dev;
	/* The new limiter (and its timerfd) exists before the old one goes, so the fd numbers differ. */
	struct ratelimit nrl = { .timer_fd = -1 };
	int r = ratelimit_init(&nrl, cfg, err);
	if (r < 0) {
		ratelimit_destroy(&nrl);
		return cella_err_wrap(err, "disk %s", b->path);
	}
	iothread_lock(slot->io); /* no callback of the disk's I/O thread runs meanwhile */
	if (ratelimit_fd(&b->rl) >= 0)
		iothread_del(slot->io, ratelimit_fd(&b->rl));
	ratelimit_destroy(&b->rl);
	b->rl = nrl;
	if (ratelimit_fd(&b->rl) >= 0 &&
	    (r = iothread_add(slot->io, ratelimit_fd(&b->rl), EPOLLIN, on_ratelimit, b, err)) < 0) {
		/* without its timer a limiter that blocks would never wake: run unlimited instead */
		ratelimit_destroy(&b->rl);
		b->rl = (struct ratelimit){ .timer_fd = -1 };
	}
	/* requests the old limiter held back go now, under the new limits */
	virtio_mmio_lock(&slot->t);
	blk_serve(b, &slot->t);
	virtio_mmio_unlock(&slot->t);
	iothread_unlock(slot->io);
	return r;
}
