/* I/O thread: see iothread.h. Watches are separate allocations (epoll's data pointer stays valid);
 * a deleted watch is only marked dead and freed with the thread, so a batch of events returned by
 * epoll_wait never points at freed memory. */
#include "vmm/iothread.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"

struct watch {
	struct watch *next;
	int fd;
	bool dead;
	iothread_fn fn;
	void *opaque;
};

struct iothread {
	char name[16];
	int epoll_fd, stop_fd;
	pthread_t thread;
	bool started;
	atomic_bool stopping;
	pthread_mutex_t lock;      /* held while callbacks run */
	pthread_mutex_t list_lock; /* the watch list */
	struct watch *watches;
};

int iothread_new(const char *name, struct iothread **out, struct cella_err *err)
{
	struct iothread *io = calloc(1, sizeof(*io));
	if (!io)
		return cella_err_set(err, ENOMEM, "%s: out of memory", name);
	snprintf(io->name, sizeof(io->name), "%s", name);
	pthread_mutex_init(&io->lock, NULL);
	pthread_mutex_init(&io->list_lock, NULL);
	io->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	io->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (io->stop_fd < 0 || io->epoll_fd < 0) {
		int e = errno;
		iothread_free(io);
		return cella_err_sys(err, e, "%s: epoll/eventfd", name);
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL }; /* NULL = the stop fd */
	if (epoll_ctl(io->epoll_fd, EPOLL_CTL_ADD, io->stop_fd, &ev) < 0) {
		int e = errno;
		iothread_free(io);
		return cella_err_sys(err, e, "%s: epoll_ctl", name);
	}
	*out = io;
	return 0;
}

static struct watch *find(struct iothread *io, int fd)
{
	for (struct watch *w = io->watches; w; w = w->next)
		if (w->fd == fd && !w->dead)
			return w;
	return NULL;
}

int iothread_add(struct iothread *io, int fd, uint32_t events, iothread_fn fn, void *opaque, struct cella_err *err)
{
	struct watch *w = calloc(1, sizeof(*w));
	if (!w)
		return cella_err_set(err, ENOMEM, "%s: out of memory", io->name);
	*w = (struct watch){ .fd = fd, .fn = fn, .opaque = opaque };
	pthread_mutex_lock(&io->list_lock);
	if (find(io, fd)) {
		pthread_mutex_unlock(&io->list_lock);
		free(w);
		return cella_err_set(err, EEXIST, "%s: fd %d is already watched", io->name, fd);
	}
	struct epoll_event ev = { .events = events, .data.ptr = w };
	if (epoll_ctl(io->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int e = errno;
		pthread_mutex_unlock(&io->list_lock);
		free(w);
		return cella_err_sys(err, e, "%s: epoll_ctl(ADD, fd %d)", io->name, fd);
	}
	w->next = io->watches;
	io->watches = w;
	pthread_mutex_unlock(&io->list_lock);
	return 0;
}

int iothread_mod(struct iothread *io, int fd, uint32_t events)
{
	pthread_mutex_lock(&io->list_lock);
	struct watch *w = find(io, fd);
	int r = -ENOENT;
	if (w) {
		struct epoll_event ev = { .events = events, .data.ptr = w };
		r = epoll_ctl(io->epoll_fd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
	}
	pthread_mutex_unlock(&io->list_lock);
	return r;
}

void iothread_del(struct iothread *io, int fd)
{
	pthread_mutex_lock(&io->list_lock);
	struct watch *w = find(io, fd);
	if (w) {
		epoll_ctl(io->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
		w->dead = true;
	}
	pthread_mutex_unlock(&io->list_lock);
}

#define BATCH 32

static void *run(void *arg)
{
	struct iothread *io = arg;
	struct epoll_event evs[BATCH];
	while (!atomic_load(&io->stopping)) {
		int n = epoll_wait(io->epoll_fd, evs, BATCH, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("%s: epoll_wait: %s", io->name, strerror(errno));
			break;
		}
		pthread_mutex_lock(&io->lock);
		for (int i = 0; i < n && !atomic_load(&io->stopping); i++) {
			struct watch *w = evs[i].data.ptr;
			if (!w)
				continue; /* stop fd */
			/* dead: deleted by an earlier callback of this batch */
			if (!w->dead)
				w->fn(w->opaque, evs[i].events);
		}
		pthread_mutex_unlock(&io->lock);
	}
	return NULL;
}

int iothread_start(struct iothread *io, struct cella_err *err)
{
	if (io->started)
		return 0;
	/* Signals belong to the VMM thread (signalfd) and the vCPU kick: the I/O thread takes none. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&io->thread, NULL, run, io);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r)
		return cella_err_sys(err, r, "%s: pthread_create", io->name);
	pthread_setname_np(io->thread, io->name);
	io->started = true;
	return 0;
}

void iothread_stop(struct iothread *io)
{
	if (!io || !io->started)
		return;
	atomic_store(&io->stopping, true);
	uint64_t one = 1;
	if (write(io->stop_fd, &one, sizeof(one)) < 0)
		log_debug("%s: stop: %s", io->name, strerror(errno));
	pthread_join(io->thread, NULL);
	io->started = false;
}

void iothread_free(struct iothread *io)
{
	if (!io)
		return;
	iothread_stop(io);
	for (struct watch *w = io->watches, *next; w; w = next) {
		next = w->next;
		free(w);
	}
	if (io->epoll_fd >= 0)
		close(io->epoll_fd);
	if (io->stop_fd >= 0)
		close(io->stop_fd);
	pthread_mutex_destroy(&io->lock);
	pthread_mutex_destroy(&io->list_lock);
	free(io);
}

void iothread_lock(struct iothread *io)
{
	pthread_mutex_lock(&io->lock);
}

void iothread_unlock(struct iothread *io)
{
	pthread_mutex_unlock(&io->lock);
}
