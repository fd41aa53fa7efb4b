/* I/O thread (vmm/iothread.c): callbacks run on the thread for ready fds, del stops them, lock holds
 * them off, stop joins; and the virtio interrupt-line allocator (vm_alloc_gsi). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "tests/unit/tap.h"
#include "vmm/iothread.h"
#include "vmm/vm.h"

static atomic_int calls;
static pthread_t cb_thread;
static int efd = -1;

static void on_ready(void *opaque, uint32_t events)
{
	uint64_t v;
	if (read(efd, &v, sizeof(v)) == sizeof(v))
		atomic_fetch_add(&calls, (int)v);
	cb_thread = pthread_self();
	(void)opaque;
	(void)events;
}

static void kick(uint64_t n)
{
	if (write(efd, &n, sizeof(n)) != sizeof(n))
		printf("# eventfd write failed\n");
}

static bool wait_calls(int want)
{
	for (int i = 0; i < 2000; i++) {
		if (atomic_load(&calls) >= want)
			return true;
		usleep(1000);
	}
	return false;
}

int main(void)
{
	struct cella_err err = { 0 };
	struct iothread *io = NULL;
	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	TAP_OK(iothread_new("test-io", &io, &err) == 0, "new: %s", err.msg);
	TAP_OK(iothread_add(io, efd, EPOLLIN, on_ready, NULL, &err) == 0, "add");
	TAP_OK(iothread_add(io, efd, EPOLLIN, on_ready, NULL, &err) == -EEXIST, "adding an fd twice: %s", err.msg);
	kick(3); /* before start: handled once the thread runs */
	TAP_OK(iothread_start(io, &err) == 0, "start");
	TAP_OK(wait_calls(3), "an event pending before start is handled");
	TAP_OK(!pthread_equal(cb_thread, pthread_self()), "callbacks run on the I/O thread");

	iothread_lock(io);
	kick(1);
	usleep(50000);
	TAP_OK(atomic_load(&calls) == 3, "no callback while iothread_lock is held");
	iothread_unlock(io);
	TAP_OK(wait_calls(4), "and it runs after unlock");

	iothread_del(io, efd);
	kick(1);
	usleep(50000);
	TAP_OK(atomic_load(&calls) == 4, "no callback after del");
	TAP_OK(iothread_mod(io, efd, EPOLLIN) == -ENOENT, "mod of a deleted fd: ENOENT");

	iothread_stop(io);
	iothread_stop(io);
	TAP_OK(1, "stop joins, twice is fine");
	iothread_free(io);
	iothread_free(NULL);
	close(efd);

	/* interrupt lines for virtio devices: emulated chips' lines are never handed out */
	static struct vm vm;
	vm.gsi_used = 1u << 0 | 1u << 1 | 1u << 2 | 1u << 4 | 1u << 8 | 1u << 9 | 1u << 12 | 1u << 13;
	unsigned got[VMM_MAX_VIRTIO_DEVS], g;
	bool ok = true;
	for (unsigned i = 0; i < VMM_MAX_VIRTIO_DEVS; i++) {
		if (vm_alloc_gsi(&vm, &got[i], &err) < 0)
			ok = false;
		for (unsigned j = 0; j < i; j++)
			ok = ok && got[j] != got[i];
		ok = ok && got[i] < 24 && got[i] != 0 && got[i] != 1 && got[i] != 2 && got[i] != 4 && got[i] != 8 &&
		     got[i] != 9 && got[i] != 12 && got[i] != 13;
	}
	TAP_OK(ok && got[0] == 5, "%d devices get distinct free lines, the first IRQ 5", VMM_MAX_VIRTIO_DEVS);
	TAP_OK(vm_alloc_gsi(&vm, &g, &err) == -ENOSPC, "then no line is left: %s", err.msg);
	return tap_done();
}
