/* virtio-net on a VM: the TAP backend, the device and its slot with an I/O thread of its own (so a
 * busy network never waits behind a disk). vmm.c adds one per --net. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/virtio/net.h"
#include "vmm/virtio/tap.h"
#include "vmm/vm.h"

struct netdev {
	struct virtio_net n; /* first: the slot's dev pointer is &n */
	struct tap tap;
};

static int tap_offload(void *ctx, unsigned flags, struct cella_err *err)
{
	return tap_set_offload(ctx, flags, err);
}

/* After the I/O thread stopped: the device, then the TAP (a created one disappears with its fd). */
static void netdev_free(void *dev)
{
	struct netdev *d = dev;
	if (!d)
		return;
	virtio_net_destroy(&d->n);
	tap_close(&d->tap);
	free(d);
}

int net_add(struct vm *vm, const struct vmm_net *cfg, struct cella_err *err)
{
	struct netdev *d = calloc(1, sizeof(*d));
	if (!d)
		return cella_err_set(err, ENOMEM, "net %s: out of memory", cfg->tap);
	int r = tap_open(&d->tap, cfg->tap, err);
	if (r < 0) {
		free(d);
		return r;
	}
	char name[32];
	snprintf(name, sizeof(name), "virtio-net %s", cfg->tap);
	struct virtio_net_backend be = { .fd = d->tap.fd, .set_offload = tap_offload, .ctx = &d->tap };
	if ((r = virtio_net_init(&d->n, name, cfg->mac, &be, &cfg->rl, err)) < 0) {
		tap_close(&d->tap);
		free(d);
		return r;
	}
	struct virtio_slot *slot;
	bool created = d->tap.created;
	if ((r = vm_virtio_add(vm, &virtio_net_ops, &d->n, netdev_free, VDEV_OWN_THREAD, &slot, err)) < 0)
		return cella_err_wrap(err, "net %s", cfg->tap); /* d was freed */
	virtio_net_attach(&d->n, &slot->t);
	if ((r = virtio_net_bind(&d->n, slot->io, err)) < 0)
		return cella_err_wrap(err, "net %s", cfg->tap); /* d belongs to the VM now */
	log_debug("%s: TAP %s (%s), mac %02x:%02x:%02x:%02x:%02x:%02x", slot->name, cfg->tap,
		  created ? "created; removed at exit" : "attached", cfg->mac[0], cfg->mac[1], cfg->mac[2],
		  cfg->mac[3], cfg->mac[4], cfg->mac[5]);
	return 0;
}
