/* virtio-net (device id 1) on virtio-mmio: one RX and one TX queue, a packet backend behind it.
 *
 * Backend: an fd on which every read and write is one Ethernet frame behind a 12-byte
 * virtio_net_hdr_v1 — a TAP opened with IFF_VNET_HDR (tap.h), or a SOCK_SEQPACKET socket in tests.
 * The device offers checksum and TSO offloads both ways, mergeable RX buffers, MAC and link status;
 * at DRIVER_OK it tells the backend (set_offload, TAP_OFFLOAD_* bits) which offloaded packets the
 * guest can take, and on reset turns them off.
 *
 * The guest is hostile: every chain is walked by vq_pop (queue.c); TX headers are copied out of
 * guest memory once, then checked against the negotiated features (a bad one drops that packet,
 * counted, and the queue goes on); a malformed ring sets DEVICE_NEEDS_RESET.
 *
 * Threads: all packet work runs on an I/O thread (vmm/iothread.h) with the transport lock held: the
 * queue notifications arrive there (ioeventfd, vdev.c), and virtio_net_bind has it watch the backend
 * fd (EPOLLIN only while the guest has posted RX buffers: no busy loop), the rate limiters' timerfds
 * and an eventfd for work handed over from elsewhere. RX never drops a frame for lack of buffers: it
 * keeps it and waits for the guest to post more. Rate limits (bandwidth and packets, ratelimit.h)
 * apply to each direction separately; a limited direction waits for its timer, nothing is dropped. */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "vmm/ratelimit.h"
#include "vmm/virtio/mmio.h"

struct cella_err;
struct iothread;

/* feature bits (virtio 1.x, 5.1.3) */
#define VIRTIO_NET_F_CSUM 0
#define VIRTIO_NET_F_GUEST_CSUM 1
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_GUEST_TSO4 7
#define VIRTIO_NET_F_GUEST_TSO6 8
#define VIRTIO_NET_F_GUEST_ECN 9
#define VIRTIO_NET_F_GUEST_UFO 10
#define VIRTIO_NET_F_HOST_TSO4 11
#define VIRTIO_NET_F_HOST_TSO6 12
#define VIRTIO_NET_F_HOST_ECN 13
#define VIRTIO_NET_F_HOST_UFO 14
#define VIRTIO_NET_F_MRG_RXBUF 15
#define VIRTIO_NET_F_STATUS 16

/* struct virtio_net_hdr_v1 */
#define VIRTIO_NET_HDR_LEN 12
#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define VIRTIO_NET_HDR_F_DATA_VALID 2
#define VIRTIO_NET_HDR_GSO_NONE 0
#define VIRTIO_NET_HDR_GSO_TCPV4 1
#define VIRTIO_NET_HDR_GSO_UDP 3
#define VIRTIO_NET_HDR_GSO_TCPV6 4
#define VIRTIO_NET_HDR_GSO_ECN 0x80
struct virtio_net_hdr {
	uint8_t flags, gso_type;
	uint16_t hdr_len, gso_size, csum_start, csum_offset, num_buffers;
};
_Static_assert(sizeof(struct virtio_net_hdr) == VIRTIO_NET_HDR_LEN, "virtio_net_hdr_v1 is 12 bytes");

#define VIRTIO_NET_RXQ 0
#define VIRTIO_NET_TXQ 1
#define VIRTIO_NET_MIN_FRAME 14        /* an Ethernet header */
#define VIRTIO_NET_MAX_FRAME 65550     /* 64 KiB of GSO payload + Ethernet header */
#define VIRTIO_NET_MAX_PACKET (VIRTIO_NET_HDR_LEN + VIRTIO_NET_MAX_FRAME)

extern const struct virtio_dev_ops virtio_net_ops;

/* Checks a TX header (already copied out of guest memory) for a frame of frame_len bytes against
 * the negotiated features: flags, GSO type and size, checksum range. 0 = good, else -EINVAL with
 * the reason in err. Pure: the fuzz target and the unit test call it directly. */
int virtio_net_check_tx_hdr(const struct virtio_net_hdr *h, uint32_t frame_len, uint64_t features,
			    struct cella_err *err);

/* TAP_OFFLOAD_* bits the backend may use for a guest that negotiated `features`. */
unsigned virtio_net_offload_for(uint64_t features);

struct virtio_net_backend {
	int fd; /* non-blocking; not owned */
	/* Which offloaded packets the backend may hand the device (TAP_OFFLOAD_* bits); NULL = none. */
	int (*set_offload)(void *ctx, unsigned flags, struct cella_err *err);
	/* Optional stand-ins for read(fd) and writev(fd) (the fuzz target's in-memory backend); same
	 * contract: -1 with errno set on failure, EAGAIN when nothing is there. */
	ssize_t (*read)(void *ctx, void *buf, size_t len);
	ssize_t (*writev)(void *ctx, const struct iovec *iov, int cnt);
	void *ctx;
};

struct virtio_net_stats {
	uint64_t rx_packets, rx_bytes, rx_dropped, tx_packets, tx_bytes, tx_dropped;
};

struct virtio_net {
	struct virtio_mmio *t; /* the transport; set by virtio_net_attach */
	struct virtio_net_backend be;
	char name[32];         /* "virtio-net tap0": messages */
	uint8_t mac[6];
	struct iothread *io;   /* set by virtio_net_bind; NULL in unit tests (work runs in the caller) */
	bool bound;            /* be.fd is registered on io */
	bool watching;         /* ... with EPOLLIN */
	int again;             /* eventfd on io: more work (TX budget spent, DRIVER_OK) */
	bool rx_wait;          /* no RX buffers (or device not live): wait for a notification, not the fd */
	bool be_dead;          /* the backend fd reported an error: stop polling it */
	bool tx_more;          /* the last TX round stopped at its budget */
	bool rx_paid;          /* the pending frame's tokens are taken */
	unsigned offload;      /* TAP_OFFLOAD_* in force */
	uint32_t pending;      /* bytes of a packet read from the backend and not yet delivered */
	uint8_t *rx_pkt, *tx_pkt; /* VIRTIO_NET_MAX_PACKET each */
	struct ratelimit rx_rl, tx_rl;
	struct vq_chain chain;
	uint16_t heads[VQ_MAX_SIZE];
	uint32_t lens[VQ_MAX_SIZE];
	struct virtio_net_stats stats;
	unsigned warned;       /* bit per kind of drop already logged */
};

/* mac: 6 bytes; rl: per-direction limits (NULL = none). The backend fd stays the caller's. On failure
 * everything is released (virtio_net_destroy is still safe to call). */
int virtio_net_init(struct virtio_net *n, const char *name, const uint8_t mac[6], const struct virtio_net_backend *be,
		    const struct ratelimit_cfg *rl, struct cella_err *err);
/* Binds the device to its transport (virtio_mmio_init with &virtio_net_ops and dev = n). */
void virtio_net_attach(struct virtio_net *n, struct virtio_mmio *t);
/* Has the I/O thread the transport's notifications go to also watch the backend, the limiters'
 * timers and the device's own eventfd (before the thread starts or from any thread). */
int virtio_net_bind(struct virtio_net *n, struct iothread *io, struct cella_err *err);
/* Replaces both directions' rate limits of a bound device (the API's PATCH /network-interfaces), from
 * a thread other than its I/O thread: that thread is held off while the limiters and their timerfds
 * are swapped, then woken to resume what the old limits held back. */
int virtio_net_set_ratelimit(struct virtio_net *n, const struct ratelimit_cfg *rl, struct cella_err *err);
/* A copy of the counters, taken with the I/O thread held off (GET /metrics). */
void virtio_net_get_stats(struct virtio_net *n, struct virtio_net_stats *out);
/* Logs the counters, frees buffers, eventfd and limiters (the I/O thread is stopped by then). */
void virtio_net_destroy(struct virtio_net *n);

/* One round of work as the I/O thread does it; unit tests and the fuzzer call these directly
 * (transport lock not held). */
void virtio_net_tx(struct virtio_net *n);
void virtio_net_rx(struct virtio_net *n);
/* Whether the device wants to hear about backend readability now. */
bool virtio_net_rx_wants_fd(const struct virtio_net *n);

/* "52:54:00:12:34:56" (hex pairs, ':' or '-') into mac; refuses multicast and all-zero. */
int virtio_net_parse_mac(const char *s, uint8_t mac[6], struct cella_err *err);
/* A random locally administered unicast MAC. */
void virtio_net_random_mac(uint8_t mac[6]);

/* --- the device on a VM (netdev.c); vmm.c adds one per --net --- */
struct vm;
struct vmm_net;
/* Opens (creates or attaches) the TAP and adds the device with its own I/O thread. */
int net_add(struct vm *vm, const struct vmm_net *cfg, struct cella_err *err);
