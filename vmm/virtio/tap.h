/* TAP backend for virtio-net: a Linux TAP interface opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
 * so every read and write is one Ethernet frame behind a 12-byte virtio_net_hdr_v1 (the same header
 * the guest uses with VIRTIO_F_VERSION_1, which the device can pass through after checking it).
 *
 * Ownership: tap_open creates the interface when no interface of that name exists and attaches to
 * it otherwise. One we created is not persistent: the kernel removes it when its last fd closes, so
 * it is gone after cella-vmm exits on every path, a crash or SIGKILL included. One we attached to
 * is left as we found it. */
#pragma once
#include <net/if.h>
#include <stdbool.h>

struct cella_err;

#define TAP_VNET_HDR_LEN 12 /* struct virtio_net_hdr_v1 (with num_buffers) */

/* TUNSETOFFLOAD bits (linux/if_tun.h), repeated so callers need not include it */
#define TAP_OFFLOAD_CSUM 0x01
#define TAP_OFFLOAD_TSO4 0x02
#define TAP_OFFLOAD_TSO6 0x04
#define TAP_OFFLOAD_TSO_ECN 0x08
#define TAP_OFFLOAD_UFO 0x10

struct tap {
	int fd;            /* non-blocking, close-on-exec; -1 when closed */
	char name[IFNAMSIZ];
	bool created;      /* we created it (and the kernel removes it when fd closes) */
};

/* Creates or attaches the TAP interface `name` (1..15 bytes). A created interface is brought up
 * (no address: configuring the host side is the host's business). Fails with a message naming the
 * interface when it exists but is no TAP, the kernel lacks IFF_VNET_HDR, or we lack CAP_NET_ADMIN. */
int tap_open(struct tap *t, const char *name, struct cella_err *err);

/* TUNSETOFFLOAD: which offloaded packets the kernel may hand us (TAP_OFFLOAD_* bits). */
int tap_set_offload(struct tap *t, unsigned flags, struct cella_err *err);

/* Closes the fd (idempotent); a created interface disappears with it. */
void tap_close(struct tap *t);
