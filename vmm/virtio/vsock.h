/* virtio-vsock (device id 19) in user space, with Firecracker-style hybrid unix sockets.
 *
 * Host -> guest: the VMM listens on a unix socket at `uds`. A host client connects, writes
 * "CONNECT <port>\n" and, once the guest accepted, reads "OK <host_port>\n"; then the socket is the
 * byte stream of that vsock connection. Guest -> host: a guest connection to CID 2 port P is
 * forwarded to a new connection to the unix socket `<uds>_P`.
 *
 * Everything is non-blocking. Flow control is the virtio credit scheme both ways: we read from a host
 * socket only as much as the guest advertised room for, and buffer guest data a slow host reader did
 * not take, at most VSOCK_BUF_ALLOC bytes per connection (what we advertise; a guest sending more is
 * reset). The connection table holds at most VSOCK_MAX_CONNS entries (host handshakes included); a
 * guest REQUEST beyond that gets an RST. Packets we owe the guest without a connection (RSTs) sit in a
 * fixed ring; overflow is dropped with a log line. Worst-case memory is therefore bounded:
 * VSOCK_MAX_CONNS * VSOCK_BUF_ALLOC.
 *
 * Threads: notify/reset run on a vCPU thread with the transport lock held; host socket events are
 * handled by vsock_run(), called by whichever loop polls vsock_fd(), which takes the same lock. */
#pragma once
#include <stdint.h>

#include "vmm/virtio/mmio.h"

struct cella_err;
struct vsock;

#define VSOCK_HOST_CID 2u
#define VSOCK_MAX_CONNS 256u
#define VSOCK_BUF_ALLOC (256u * 1024) /* receive buffer we advertise per connection */
#define VSOCK_MAX_PKT (64u * 1024)    /* largest payload in one packet, either way */
#define VSOCK_HANDSHAKE_MS 5000       /* host client: CONNECT line, then the guest's answer */
#define VSOCK_CLOSE_MS 8000           /* shutdown or drain before we reset the connection */

/* Queues */
#define VSOCK_RXQ 0
#define VSOCK_TXQ 1
#define VSOCK_EVQ 2

/* Packet header (little-endian, packed; virtio 1.2 section 5.10.6) */
struct vsock_hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
#define VSOCK_HDR_LEN 44u

#define VSOCK_TYPE_STREAM 1
enum {
	VSOCK_OP_INVALID,
	VSOCK_OP_REQUEST,
	VSOCK_OP_RESPONSE,
	VSOCK_OP_RST,
	VSOCK_OP_SHUTDOWN,
	VSOCK_OP_RW,
	VSOCK_OP_CREDIT_UPDATE,
	VSOCK_OP_CREDIT_REQUEST,
};
#define VSOCK_SHUTDOWN_RCV 1u
#define VSOCK_SHUTDOWN_SEND 2u
#define VSOCK_EVENT_TRANSPORT_RESET 0u

struct vsock_config {
	uint64_t guest_cid; /* 3..UINT32_MAX-1 */
	const char *uds;    /* listen here, forward to uds_P; NULL = no host listener (tests, fuzzing) */
	/* Opens the host side of a guest connection to port P (non-blocking fd or -errno). NULL = a
	 * non-blocking connect to <uds>_P. Tests and the fuzzer plug in socketpairs here. */
	int (*connect)(void *ctx, uint32_t port);
	void *connect_ctx;
	unsigned max_conns; /* 0 = VSOCK_MAX_CONNS; at most that */
};

/* Creates the device and, with cfg->uds, the listening socket (a stale socket file left by a dead VMM
 * is replaced; a live one or any other file is an error). */
int vsock_new(const struct vsock_config *cfg, struct vsock **out, struct cella_err *err);
/* Closes every connection and the listener, and removes the socket file. NULL is fine. */
void vsock_free(struct vsock *v);

/* The device's virtio ops; the dev pointer is the struct vsock. */
extern const struct virtio_dev_ops virtio_vsock_ops;
/* Tells the device its transport (after virtio_mmio_init): vsock_run needs it to reach the queues. */
void vsock_attach(struct vsock *v, struct virtio_mmio *t);

/* One pollable fd (an epoll fd): readable when vsock_run has host work. */
int vsock_fd(const struct vsock *v);
/* Handles host socket events, timeouts and pending packets to the guest. Never blocks. */
void vsock_run(struct vsock *v);

/* Drops every connection and tells the driver with a TRANSPORT_RESET event (after a snapshot restore,
 * the guest's connections point at host sockets that no longer exist). */
void vsock_transport_reset(struct vsock *v);

/* For tests: live connections, bytes buffered toward the host, and packets dropped as malformed. */
struct vsock_stats {
	unsigned conns, orphan_rsts;
	uint64_t buffered, bad_packets, rsts_sent, events_sent;
};
void vsock_get_stats(struct vsock *v, struct vsock_stats *out);
