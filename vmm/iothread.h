/* I/O threads: device work off the vCPU threads. An I/O thread is an epoll loop over file
 * descriptors (queue-notify eventfds, TAP fds, sockets, rate-limiter timerfds); each watched fd has a
 * callback that runs on the thread when the fd is ready.
 *
 *	struct iothread *io;
 *	iothread_new("blk0", &io, err);
 *	iothread_add(io, fd, EPOLLIN, on_ready, dev, err);   // before or after start
 *	iothread_start(io, err);                             // the thread blocks every signal
 *	...
 *	iothread_free(io);                                    // stops and joins first
 *
 * Callbacks of one thread never run concurrently. iothread_lock/unlock let another thread (the VMM
 * thread taking a snapshot, say) wait for the running callback to finish and hold off the next one. */
#pragma once
#include <stdint.h>

struct cella_err;
struct iothread;

/* events: the epoll revents (EPOLLIN, EPOLLOUT, EPOLLHUP, EPOLLERR). */
typedef void (*iothread_fn)(void *opaque, uint32_t events);

/* name: the thread's name (at most 15 bytes are kept), e.g. "cella-io", "blk0". */
int iothread_new(const char *name, struct iothread **out, struct cella_err *err);
/* Watches fd (level-triggered) for events; fd stays owned by the caller and must stay open until
 * iothread_del or iothread_free. One registration per fd. Callable from any thread. */
int iothread_add(struct iothread *io, int fd, uint32_t events, iothread_fn fn, void *opaque, struct cella_err *err);
/* Changes the events watched for fd (e.g. add EPOLLOUT while output is pending). */
int iothread_mod(struct iothread *io, int fd, uint32_t events);
/* Stops watching fd. From a callback or with iothread_lock held, no callback for fd runs after it. */
void iothread_del(struct iothread *io, int fd);
int iothread_start(struct iothread *io, struct cella_err *err);
/* Stops and joins the thread (idempotent). Watched fds are left as they are. */
void iothread_stop(struct iothread *io);
/* Stops, then frees; NULL is fine. */
void iothread_free(struct iothread *io);
void iothread_lock(struct iothread *io);
void iothread_unlock(struct iothread *io);
