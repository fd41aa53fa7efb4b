/* The VM's virtio-mmio devices: slots, interrupt lines, eventfds and I/O threads (see vm.h).
 *
 * A device's queue work runs on an I/O thread, never on a vCPU thread: QueueNotify is an eventfd
 * (KVM_IOEVENTFD when KVM offers it, so the guest's write does not even leave the kernel; else the
 * transport signals it from the MMIO exit), and the interrupt is an irqfd (KVM_IRQFD) when KVM offers
 * it, else KVM_IRQ_LINE through the transport's set_irq. */
#include <errno.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/iothread.h"
#include "vmm/vm.h"

/* Free IOAPIC lines in the order devices get them. KVM's in-kernel IOAPIC has KVM_IOAPIC_NUM_PINS (24)
 * pins, GSI n = pin n. Taken or kept: 0 PIT, 1 keyboard, 2 cascade, 4 COM1, 8 RTC, 9 ACPI SCI,
 * 12 mouse, 13 FPU. 5 first (where virtio-rng always was), then lines no ISA device ever claims, then
 * the rarer ISA ones (3 is COM2, which Linux probes: last). */
static const uint8_t gsi_order[] = { 5, 6, 7, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23, 14, 15, 3 };
_Static_assert(sizeof(gsi_order) >= VMM_MAX_VIRTIO_DEVS, "a line for every virtio device");

int vm_alloc_gsi(struct vm *vm, unsigned *gsi, struct cella_err *err)
{
	for (size_t i = 0; i < ARRAY_SIZE(gsi_order); i++) {
		unsigned g = gsi_order[i];
		if (g < KVM_IOAPIC_NUM_PINS && !(vm->gsi_used & (1u << g))) {
			vm->gsi_used |= 1u << g;
			*gsi = g;
			return 0;
		}
	}
	return cella_err_set(err, ENOSPC, "no free interrupt line for another device");
}

static void on_kick(void *opaque, uint32_t events)
{
	struct virtio_kick *k = opaque;
	uint64_t v;
	if (read(k->slot->kick_fd[k->q], &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_debug("%s: kick fd: %s", k->slot->name, strerror(errno));
	virtio_mmio_kick(&k->slot->t, k->q);
}

/* Undoes vm_virtio_add's steps for one slot; the I/O thread is already stopped. */
static void slot_free(struct vm *vm, struct virtio_slot *s)
{
	for (unsigned q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++) {
		if (s->ioeventfd[q])
			vm_ioeventfd(vm, s->base + VIRTIO_MMIO_QUEUE_NOTIFY, 4, q, s->kick_fd[q], false);
		if (s->kick_fd[q] >= 0)
			close(s->kick_fd[q]);
	}
	if (s->irq_fd >= 0) {
		vm_irqfd(vm, s->gsi, s->irq_fd, false);
		close(s->irq_fd);
	}
	if (s->own_io)
		iothread_free(s->io);
	if (s->dev_free)
		s->dev_free(s->dev);
	virtio_mmio_destroy(&s->t);
	free(s);
}

static int slot_setup(struct vm *vm, struct virtio_slot *s, const struct virtio_dev_ops *ops, unsigned flags,
		      struct cella_err *err)
{
	int r = vm_alloc_gsi(vm, &s->gsi, err);
	if (r < 0)
		return r;
	if (flags & VDEV_OWN_THREAD) {
		if ((r = iothread_new(s->name, &s->io, err)) < 0)
			return r;
		s->own_io = true;
	} else {
		if (!vm->io && (r = iothread_new("cella-io", &vm->io, err)) < 0)
			return r;
		s->io = vm->io;
	}
	if ((r = virtio_mmio_init(&s->t, ops, s->dev, &vm->host, s->gsi, &vm->gmem, err)) < 0)
		return r;
	if (vm->has_irqfd) {
		s->irq_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (s->irq_fd < 0)
			return cella_err_sys(err, errno, "%s: eventfd", s->name);
		if ((r = vm_irqfd(vm, s->gsi, s->irq_fd, true)) < 0) {
			close(s->irq_fd);
			s->irq_fd = -1;
			return cella_err_sys(err, -r, "%s: KVM_IRQFD (GSI %u)", s->name, s->gsi);
		}
		s->t.irq_fd = s->irq_fd;
	}
	for (unsigned q = 0; q < ops->nqueues; q++) {
		s->kick_fd[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (s->kick_fd[q] < 0)
			return cella_err_sys(err, errno, "%s: eventfd", s->name);
		if (vm->has_ioeventfd) {
			if ((r = vm_ioeventfd(vm, s->base + VIRTIO_MMIO_QUEUE_NOTIFY, 4, q, s->kick_fd[q], true)) < 0)
				return cella_err_sys(err, -r, "%s: KVM_IOEVENTFD (queue %u)", s->name, q);
			s->ioeventfd[q] = true;
		}
		s->kick[q] = (struct virtio_kick){ .slot = s, .q = q };
		if ((r = iothread_add(s->io, s->kick_fd[q], EPOLLIN, on_kick, &s->kick[q], err)) < 0)
			return r;
		s->t.kick_fd[q] = s->kick_fd[q];
	}
	return bus_register(&vm->mmio, s->base, VIRTIO_MMIO_SIZE, &virtio_mmio_ops, &s->t, s->name, err);
}

int vm_virtio_add(struct vm *vm, const struct virtio_dev_ops *ops, void *dev, void (*dev_free)(void *dev),
		  unsigned flags, struct virtio_slot **out, struct cella_err *err)
{
	if (vm->nvirtio >= VMM_MAX_VIRTIO_DEVS) {
		if (dev_free)
			dev_free(dev);
		return cella_err_set(err, ENOSPC, "%s: at most %d virtio devices", ops->name, VMM_MAX_VIRTIO_DEVS);
	}
	struct virtio_slot *s = calloc(1, sizeof(*s));
	if (!s) {
		if (dev_free)
			dev_free(dev);
		return cella_err_set(err, ENOMEM, "%s: out of memory", ops->name);
	}
	unsigned index = vm->nvirtio;
	s->vm = vm;
	s->dev = dev;
	s->dev_free = dev_free;
	s->base = VMM_VIRTIO_MMIO_BASE + (uint64_t)index * VIRTIO_MMIO_SIZE;
	s->irq_fd = -1;
	for (unsigned q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++)
		s->kick_fd[q] = -1;
	/* a name per instance: "virtio-blk" twice would be ambiguous in messages */
	unsigned same = 0;
	for (unsigned i = 0; i < vm->nvirtio; i++)
		same += !strcmp(vm->virtio[i]->t.ops->name, ops->name); /* ro and rw disks have different ops */
	snprintf(s->name, sizeof(s->name), "%s%u", ops->name, same);
	int r = slot_setup(vm, s, ops, flags, err);
	if (r < 0) {
		/* the bus does not hold the slot (bus_register is the last step) */
		if (s->io && !s->own_io)
			for (unsigned q = 0; q < VIRTIO_MMIO_MAX_QUEUES; q++)
				if (s->kick_fd[q] >= 0)
					iothread_del(s->io, s->kick_fd[q]);
		vm->gsi_used &= ~(s->gsi ? 1u << s->gsi : 0);
		slot_free(vm, s);
		return cella_err_wrap(err, "%s", ops->name);
	}
	vm->virtio[vm->nvirtio++] = s;
	log_debug("%s at 0x%" PRIx64 ", GSI %u, %s, %s", s->name, s->base, s->gsi,
		  vm->has_ioeventfd ? "ioeventfd" : "notify by MMIO exit", vm->has_irqfd ? "irqfd" : "KVM_IRQ_LINE");
	if (out)
		*out = s;
	return 0;
}

void vm_virtio_quiesce(struct vm *vm, bool pause)
{
	/* in slot order to pause, reverse to resume; the shared thread first and last */
	if (pause && vm->io)
		iothread_lock(vm->io);
	for (unsigned k = 0; k < vm->nvirtio; k++) {
		unsigned i = pause ? k : vm->nvirtio - 1 - k;
		if (!vm->virtio[i]->own_io)
			continue;
		if (pause)
			iothread_lock(vm->virtio[i]->io);
		else
			iothread_unlock(vm->virtio[i]->io);
	}
	if (!pause && vm->io)
		iothread_unlock(vm->io);
}

int vm_virtio_start(struct vm *vm, struct cella_err *err)
{
	int r;
	if (vm->io && (r = iothread_start(vm->io, err)) < 0)
		return r;
	for (unsigned i = 0; i < vm->nvirtio; i++)
		if (vm->virtio[i]->own_io && (r = iothread_start(vm->virtio[i]->io, err)) < 0)
			return r;
	return 0;
}

void vm_virtio_free(struct vm *vm)
{
	/* A VM stopped while paused still holds its I/O threads' locks (vm_pause): let them go, or the
	 * threads never see the stop and the joins below wait forever. */
	if (vm->devices_paused) {
		vm_virtio_quiesce(vm, false);
		vm->devices_paused = false;
	}
	/* threads first: no callback may run while its device goes away */
	iothread_stop(vm->io);
	for (unsigned i = 0; i < vm->nvirtio; i++)
		if (vm->virtio[i]->own_io)
			iothread_stop(vm->virtio[i]->io);
	for (unsigned i = vm->nvirtio; i-- > 0;) {
		slot_free(vm, vm->virtio[i]);
		vm->virtio[i] = NULL;
	}
	vm->nvirtio = 0;
	iothread_free(vm->io);
	vm->io = NULL;
}
