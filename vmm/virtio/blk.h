/* virtio-blk (device id 2) on a raw disk file or block device.
 *
 * A request is a chain: a 16-byte header {le32 type, le32 reserved, le64 sector} in the readable
 * part, then data (readable for writes, writable for reads), then one writable status byte. Framing
 * is free (the header or the data may span descriptors). Everything comes from the guest and is
 * checked: blk_parse turns a chain into a request or a status to report without touching the disk;
 * blk_execute does the I/O (preadv/pwritev, fdatasync, fallocate). The I/O thread pops a batch of
 * chains under the transport lock, does the I/O without it, and pushes the results. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vmm/ratelimit.h"
#include "vmm/virtio/queue.h"

struct cella_err;

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_WRITE_ZEROES_F_UNMAP 1u

#define BLK_SECTOR 512u
#define BLK_ID_BYTES 20
#define BLK_SEG_MAX 254u          /* data segments per request we accept (seg_max) */
#define BLK_SIZE_MAX (1u << 20)   /* bytes per data segment (size_max) */
#define BLK_MAX_DISCARD_SECTORS (1u << 22) /* 2 GiB per discard / write-zeroes */
#define BLK_CONFIG_LEN 60

/* One disk as requests see it (the fd, its size and mode); unit tests and the fuzzer build one
 * directly on a memfd. */
struct blk_disk {
	int fd;
	bool ro;
	uint64_t sectors;           /* capacity */
	char id[BLK_ID_BYTES];      /* GET_ID answer, NUL-padded */
	bool has_id;
};

struct blk_req {
	uint16_t head;
	uint32_t type;
	uint64_t sector;
	uint8_t status;          /* after blk_parse: OK = to execute, else the answer; after blk_execute: final */
	uint8_t *status_ptr;     /* the guest's status byte */
	uint64_t len;            /* data bytes (IN/OUT/GET_ID) */
	uint32_t seg_sectors;    /* DISCARD / WRITE_ZEROES: the one segment */
	uint32_t seg_flags;
	uint32_t written;        /* bytes written into the guest's buffers, the status byte included */
	int error;               /* after blk_execute: the errno behind an IOERR from the host side, else 0 */
	unsigned niov;
	struct iovec iov[BLK_SEG_MAX + 1];
};

/* Parses chain c against disk d into req. Returns 0 (req->status says whether to execute) or
 * -EINVAL when the chain cannot carry a request at all (no room for the header or the status byte):
 * the device then needs a reset. Never touches the disk. */
int blk_parse(const struct blk_disk *d, const struct vq_chain *c, struct blk_req *req);
/* Runs a parsed request whose status is OK; always leaves the final status in the guest's status
 * byte and req->written. A request whose status is not OK only gets its status written. */
void blk_execute(const struct blk_disk *d, struct blk_req *req);
/* Tokens a request costs for the rate limiter: data bytes (0 for flush/get-id). */
uint64_t blk_req_bytes(const struct blk_req *req);

/* Fills the device config space (capacity, size/seg max, discard limits...) for offset/len. */
void blk_read_config(const struct blk_disk *d, uint32_t offset, uint8_t *data, uint32_t len);

/* --- the device on a VM (blk.c); vmm.c adds one per --disk --- */
struct blk;
struct vmm_disk;
struct vm;
/* Opens the disk as blk_add would and closes it again: bad paths fail before KVM is touched. */
int blk_check(const struct vmm_disk *disk, struct cella_err *err);
/* Opens the disk file (read-only for ro; flock so two VMs cannot write one file) and adds the
 * device with its own I/O thread. */
int blk_add(struct vm *vm, const struct vmm_disk *disk, struct cella_err *err);
/* Replaces a running disk's rate limits (the API's PATCH /drives/{id}), from the VMM thread: the
 * disk's I/O thread is held off while the limiter and its timerfd are swapped, then the requests the
 * old limits held back are served under the new ones. slot is one blk_add made. */
struct virtio_slot;
int blk_set_ratelimit(struct virtio_slot *slot, const struct ratelimit_cfg *cfg, struct cella_err *err);
