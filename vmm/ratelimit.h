/* Token-bucket rate limiter for device I/O (disk, network), with Firecracker's semantics.
 *
 * A limiter has two buckets: bandwidth (tokens = bytes) and operations (tokens = requests). Each
 * bucket is { size, one_time_burst, refill_ms }: it holds at most `size` tokens, starts full, and
 * refills at size tokens per refill_ms (so the sustained rate is size * 1000 / refill_ms per second);
 * `one_time_burst` extra tokens are available once at start and never come back. They are spent
 * before the regular budget. size 0 = that bucket does not limit.
 *
 * A request larger than a bucket's size can never fit: it is admitted once the bucket is full and
 * leaves the bucket in debt, so the long-run rate still holds.
 *
 * Use (one thread owns a limiter; it is not locked):
 *	ratelimit_init(&rl, &cfg, err);              // creates the timerfd
 *	iothread_add(io, ratelimit_fd(&rl), EPOLLIN, on_timer, dev, err);
 *	if (!ratelimit_consume(&rl, bytes, 1)) {     // both buckets or neither
 *		... leave the request queued; the timerfd fires when enough tokens are back ...
 *	}
 *	on_timer: ratelimit_timer_event(&rl); then retry the queued work.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct cella_err;

struct ratelimit_bucket_cfg {
	uint64_t size;           /* tokens; 0 = unlimited */
	uint64_t one_time_burst; /* extra tokens available once */
	uint64_t refill_ms;      /* time to refill size tokens from empty; 0 = 1000 */
};

struct ratelimit_cfg {
	struct ratelimit_bucket_cfg bw;  /* bytes */
	struct ratelimit_bucket_cfg ops; /* operations */
};

struct ratelimit_bucket {
	uint64_t size, refill_ns;
	uint64_t burst;  /* one-time burst left */
	int64_t budget;  /* may go negative (debt) after an over-size request */
	uint64_t last_ns;
};

struct ratelimit {
	struct ratelimit_bucket bw, ops;
	int timer_fd;   /* -1 when nothing limits */
	bool blocked;   /* a consume failed; the timer is armed */
};

/* True when cfg limits anything. */
bool ratelimit_cfg_enabled(const struct ratelimit_cfg *cfg);

/* Checks cfg's values as ratelimit_init does, without creating anything (config validation). */
int ratelimit_cfg_check(const struct ratelimit_cfg *cfg, struct cella_err *err);

/* Sets up rl from cfg (checks the values) and, when cfg limits anything, creates a non-blocking
 * CLOCK_MONOTONIC timerfd. rl is valid for ratelimit_destroy even when this fails. */
int ratelimit_init(struct ratelimit *rl, const struct ratelimit_cfg *cfg, struct cella_err *err);
void ratelimit_destroy(struct ratelimit *rl);

/* The timerfd to watch for EPOLLIN, or -1 when nothing limits. */
int ratelimit_fd(const struct ratelimit *rl);

/* Takes `bytes` from the bandwidth bucket and `ops` from the operations bucket, all or nothing.
 * true = go ahead; false = not now: the timerfd is armed for when both would fit and rl->blocked is
 * set (callers stop working the queue until ratelimit_timer_event). */
bool ratelimit_consume(struct ratelimit *rl, uint64_t bytes, uint64_t ops);

/* Call when the timerfd is readable: drains it and clears blocked. */
void ratelimit_timer_event(struct ratelimit *rl);

/* The same with an explicit clock (unit tests); now_ns from CLOCK_MONOTONIC. *wait_ns (may be NULL)
 * gets how long until the request would fit when it returns false. ratelimit_consume_at does not
 * arm the timer. */
bool ratelimit_consume_at(struct ratelimit *rl, uint64_t bytes, uint64_t ops, uint64_t now_ns, uint64_t *wait_ns);
void ratelimit_reset_at(struct ratelimit *rl, uint64_t now_ns);
