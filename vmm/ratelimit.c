/* Token buckets: see ratelimit.h. Refill is computed lazily from the monotonic clock on each consume;
 * the timerfd only wakes the owner when a refused request would fit. */
#include "vmm/ratelimit.h"

#include <errno.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "base/err.h"
#include "base/util.h"

/* Keeps size * refill arithmetic far from overflow (128-bit below anyway) and the config sane. */
#define RL_MAX_TOKENS (1ull << 50)
#define RL_MAX_REFILL_MS (3600ull * 1000)

bool ratelimit_cfg_enabled(const struct ratelimit_cfg *cfg)
{
	return cfg->bw.size || cfg->ops.size;
}

static int bucket_init(struct ratelimit_bucket *b, const struct ratelimit_bucket_cfg *c, const char *what,
		       struct cella_err *err)
{
	memset(b, 0, sizeof(*b));
	if (c->size > RL_MAX_TOKENS || c->one_time_burst > RL_MAX_TOKENS)
		return cella_err_set(err, EINVAL, "rate limit: %s: size or burst above %llu", what, RL_MAX_TOKENS);
	if (c->refill_ms > RL_MAX_REFILL_MS)
		return cella_err_set(err, EINVAL, "rate limit: %s: refill time %llu ms above %llu ms", what,
				     (unsigned long long)c->refill_ms, RL_MAX_REFILL_MS);
	if (!c->size && (c->one_time_burst || c->refill_ms))
		return cella_err_set(err, EINVAL, "rate limit: %s: burst or refill time without a size", what);
	b->size = c->size;
	b->refill_ns = (c->refill_ms ? c->refill_ms : 1000) * 1000000ull;
	b->burst = c->one_time_burst;
	b->budget = (int64_t)c->size;
	return 0;
}

int ratelimit_cfg_check(const struct ratelimit_cfg *cfg, struct cella_err *err)
{
	struct ratelimit_bucket scratch;
	int r = bucket_init(&scratch, &cfg->bw, "bandwidth", err);
	return r < 0 ? r : bucket_init(&scratch, &cfg->ops, "operations", err);
}

int ratelimit_init(struct ratelimit *rl, const struct ratelimit_cfg *cfg, struct cella_err *err)
{
	memset(rl, 0, sizeof(*rl));
	rl->timer_fd = -1;
	int r = bucket_init(&rl->bw, &cfg->bw, "bandwidth", err);
	if (r == 0)
		r = bucket_init(&rl->ops, &cfg->ops, "operations", err);
	if (r < 0)
		return r;
	ratelimit_reset_at(rl, cella_now_ns());
	if (!ratelimit_cfg_enabled(cfg))
		return 0;
	rl->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (rl->timer_fd < 0)
		return cella_err_sys(err, errno, "rate limit: timerfd_create");
	return 0;
}

void ratelimit_destroy(struct ratelimit *rl)
{
	if (rl->timer_fd >= 0)
		close(rl->timer_fd);
	rl->timer_fd = -1;
}

int ratelimit_fd(const struct ratelimit *rl)
{
	return rl->timer_fd;
}

void ratelimit_reset_at(struct ratelimit *rl, uint64_t now_ns)
{
	rl->bw.last_ns = rl->ops.last_ns = now_ns;
}

static void refill(struct ratelimit_bucket *b, uint64_t now)
{
	if (!b->size)
		return;
	if (now <= b->last_ns)
		return;
	if (b->budget >= (int64_t)b->size) {
		b->last_ns = now;
		return;
	}
	uint64_t elapsed = now - b->last_ns;
	unsigned __int128 add = (unsigned __int128)elapsed * b->size / b->refill_ns;
	if (add == 0)
		return; /* keep last_ns: the fraction accrues */
	if ((__int128)b->budget + (__int128)add >= (__int128)b->size) {
		b->budget = (int64_t)b->size;
		b->last_ns = now;
		return;
	}
	b->budget += (int64_t)add;
	/* advance by the time those whole tokens took, so no fraction of a token is lost */
	b->last_ns += (uint64_t)(add * b->refill_ns / b->size);
}

/* Whether n tokens fit now; else *wait = ns until they would. */
static bool fits(const struct ratelimit_bucket *b, uint64_t n, uint64_t *wait)
{
	*wait = 0;
	if (!b->size || n == 0)
		return true;
	int64_t have = b->budget + (int64_t)b->burst;
	if (have >= 0 && (uint64_t)have >= n)
		return true;
	/* over-size: admitted when the regular bucket is full */
	uint64_t need = n > b->size ? b->size : n;
	if (n > b->size && b->budget >= (int64_t)b->size)
		return true;
	int64_t deficit = (int64_t)need - (n > b->size ? b->budget : have);
	unsigned __int128 ns = ((unsigned __int128)deficit * b->refill_ns + b->size - 1) / b->size;
	/* minus what has accrued since last_ns but was not whole tokens yet: ignored (at most one token) */
	*wait = ns > UINT64_MAX / 2 ? UINT64_MAX / 2 : (uint64_t)ns;
	return false;
}

static void take(struct ratelimit_bucket *b, uint64_t n)
{
	if (!b->size)
		return;
	uint64_t from_burst = n < b->burst ? n : b->burst;
	b->burst -= from_burst;
	b->budget -= (int64_t)(n - from_burst);
}

bool ratelimit_consume_at(struct ratelimit *rl, uint64_t bytes, uint64_t ops, uint64_t now_ns, uint64_t *wait_ns)
{
	refill(&rl->bw, now_ns);
	refill(&rl->ops, now_ns);
	uint64_t w1, w2;
	bool ok1 = fits(&rl->bw, bytes, &w1), ok2 = fits(&rl->ops, ops, &w2);
	if (wait_ns)
		*wait_ns = w1 > w2 ? w1 : w2;
	if (!ok1 || !ok2)
		return false;
	take(&rl->bw, bytes);
	take(&rl->ops, ops);
	return true;
}

bool ratelimit_consume(struct ratelimit *rl, uint64_t bytes, uint64_t ops)
{
	if (rl->timer_fd < 0)
		return true;
	uint64_t wait;
	if (ratelimit_consume_at(rl, bytes, ops, cella_now_ns(), &wait))
		return true;
	if (wait < 100000)
		wait = 100000; /* 0.1 ms: no point in waking sooner */
	struct itimerspec its = { .it_value = { .tv_sec = (time_t)(wait / 1000000000ull),
						.tv_nsec = (long)(wait % 1000000000ull) } };
	timerfd_settime(rl->timer_fd, 0, &its, NULL);
	rl->blocked = true;
	return false;
}

void ratelimit_timer_event(struct ratelimit *rl)
{
	uint64_t ticks;
	if (rl->timer_fd >= 0 && read(rl->timer_fd, &ticks, sizeof(ticks)) < 0) {
		/* EAGAIN: a spurious wake-up; nothing to do */
	}
	rl->blocked = false;
}
