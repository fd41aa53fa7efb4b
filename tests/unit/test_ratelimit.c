/* Token-bucket rate limiter (vmm/ratelimit.c) against an explicit clock, plus one real timerfd wait. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>

#include "base/err.h"
#include "base/util.h"
#include "tests/unit/tap.h"
#include "vmm/ratelimit.h"

#define MS 1000000ull

static struct ratelimit rl;

static int setup(struct ratelimit_cfg cfg)
{
	ratelimit_destroy(&rl);
	struct cella_err err = { 0 };
	int r = ratelimit_init(&rl, &cfg, &err);
	ratelimit_reset_at(&rl, 0);
	return r;
}

static void unlimited(void)
{
	TAP_OK(setup((struct ratelimit_cfg){ 0 }) == 0, "empty config is valid");
	TAP_OK(ratelimit_fd(&rl) == -1, "no timerfd when nothing limits");
	TAP_OK(ratelimit_consume(&rl, UINT64_MAX / 4, 1000000), "unlimited: anything goes");
}

static void bandwidth(void)
{
	/* 1000 bytes per 100 ms = 10000 B/s */
	setup((struct ratelimit_cfg){ .bw = { .size = 1000, .refill_ms = 100 } });
	TAP_OK(ratelimit_fd(&rl) >= 0, "timerfd when limited");
	uint64_t wait = 0;
	TAP_OK(ratelimit_consume_at(&rl, 600, 1, 0, &wait), "bucket starts full: 600 of 1000");
	TAP_OK(ratelimit_consume_at(&rl, 400, 1, 0, &wait), "400 more empties it");
	TAP_OK(!ratelimit_consume_at(&rl, 100, 1, 0, &wait), "empty bucket refuses 100");
	TAP_OK(wait == 10 * MS, "100 bytes come back in 10 ms (wait %llu ns)", (unsigned long long)wait);
	TAP_OK(!ratelimit_consume_at(&rl, 100, 1, 9 * MS, &wait), "not after 9 ms");
	TAP_OK(ratelimit_consume_at(&rl, 100, 1, 10 * MS, &wait), "after 10 ms");
	TAP_OK(ratelimit_consume_at(&rl, 900, 1, 200 * MS, &wait), "refill caps at size: 900 after long idle");
	TAP_OK(!ratelimit_consume_at(&rl, 200, 1, 200 * MS, &wait), "but not 200 more (cap 1000)");
	/* no fraction lost: 1 byte per 0.1 ms, asked in 0.05 ms steps */
	setup((struct ratelimit_cfg){ .bw = { .size = 1000, .refill_ms = 100 } });
	ratelimit_consume_at(&rl, 1000, 0, 0, NULL);
	unsigned got = 0;
	for (uint64_t t = 0; t <= 100 * MS; t += 50000)
		if (ratelimit_consume_at(&rl, 1, 0, t, NULL))
			got++;
	TAP_OK(got == 1000, "1 byte per 0.1 ms over 100 ms in half steps: %u bytes (want 1000)", got);
}

static void ops_and_both(void)
{
	/* 10 ops per second and 1 MB per second; a request needs both */
	setup((struct ratelimit_cfg){ .bw = { .size = 1000000 }, .ops = { .size = 10 } });
	unsigned n = 0;
	while (ratelimit_consume_at(&rl, 1, 1, 0, NULL))
		n++;
	TAP_OK(n == 10, "10 ops from a full ops bucket (got %u)", n);
	uint64_t wait;
	TAP_OK(!ratelimit_consume_at(&rl, 1, 1, 0, &wait) && wait == 100 * MS, "next op in 100 ms");
	/* refused requests take nothing: the bandwidth bucket still has all but 10 bytes */
	TAP_OK(rl.bw.budget == 1000000 - 10, "a refused request takes no bytes (budget %lld)",
	       (long long)rl.bw.budget);
	setup((struct ratelimit_cfg){ .bw = { .size = 100 }, .ops = { .size = 10 } });
	TAP_OK(ratelimit_consume_at(&rl, 100, 1, 0, NULL) && rl.ops.budget == 9 && rl.bw.budget == 0, "bytes and op together");
	TAP_OK(!ratelimit_consume_at(&rl, 1, 1, 0, &wait), "bytes empty: refused although ops remain");
	TAP_OK(rl.ops.budget == 9, "and the op was not taken");
}

static void bursts(void)
{
	setup((struct ratelimit_cfg){ .bw = { .size = 100, .one_time_burst = 500, .refill_ms = 1000 } });
	TAP_OK(ratelimit_consume_at(&rl, 550, 0, 0, NULL), "one-time burst + budget: 550 of 600");
	TAP_OK(rl.bw.burst == 0 && rl.bw.budget == 50, "burst spent first (burst %llu budget %lld)",
	       (unsigned long long)rl.bw.burst, (long long)rl.bw.budget);
	TAP_OK(ratelimit_consume_at(&rl, 100, 0, 500 * MS, NULL), "refill after 500 ms gives 50 more");
	TAP_OK(ratelimit_consume_at(&rl, 100, 0, 10000 * MS, NULL) && rl.bw.burst == 0,
	       "after 10 s idle: a full bucket, no burst");
	TAP_OK(!ratelimit_consume_at(&rl, 1, 0, 10000 * MS, NULL), "after 10 s only size (100) came back");

	/* over-size request: admitted on a full bucket, then debt */
	setup((struct ratelimit_cfg){ .bw = { .size = 100, .refill_ms = 1000 } });
	uint64_t wait;
	TAP_OK(ratelimit_consume_at(&rl, 250, 0, 0, NULL), "250 > size 100 admitted on a full bucket");
	TAP_OK(!ratelimit_consume_at(&rl, 10, 0, 0, &wait), "then refused");
	TAP_OK(wait == 1600 * MS, "debt of 150 + 10 wanted: 1.6 s (wait %llu ms)", (unsigned long long)(wait / MS));
	TAP_OK(!ratelimit_consume_at(&rl, 250, 0, 1500 * MS, &wait) && wait == 1000 * MS,
	       "next over-size one waits for a full bucket: %llu ms", (unsigned long long)(wait / MS));
	TAP_OK(ratelimit_consume_at(&rl, 250, 0, 2500 * MS, NULL), "and goes at 2.5 s: 500 bytes in 2.5 s");
}

static void bad_config(void)
{
	struct cella_err err = { 0 };
	struct ratelimit_cfg c = { .bw = { .one_time_burst = 5 } };
	ratelimit_destroy(&rl);
	TAP_OK(ratelimit_init(&rl, &c, &err) == -EINVAL && strstr(err.msg, "bandwidth"), "burst without size: %s",
	       err.msg);
	c = (struct ratelimit_cfg){ .ops = { .size = 1, .refill_ms = 7200000 } };
	TAP_OK(ratelimit_init(&rl, &c, &err) == -EINVAL && strstr(err.msg, "operations"), "refill of 2 h: %s",
	       err.msg);
	ratelimit_destroy(&rl);
}

static void real_timer(void)
{
	struct cella_err err = { 0 };
	struct ratelimit_cfg c = { .ops = { .size = 1, .refill_ms = 20 } };
	TAP_OK(ratelimit_init(&rl, &c, &err) == 0, "init: %s", err.msg);
	TAP_OK(ratelimit_consume(&rl, 0, 1), "first op");
	uint64_t t0 = cella_now_ns();
	TAP_OK(!ratelimit_consume(&rl, 0, 1) && rl.blocked, "second op blocked, timer armed");
	struct pollfd p = { .fd = ratelimit_fd(&rl), .events = POLLIN };
	int n = poll(&p, 1, 1000);
	uint64_t dt = cella_now_ns() - t0;
	TAP_OK(n == 1, "timerfd fired");
	TAP_OK(dt >= 15 * MS && dt < 500 * MS, "after about 20 ms (%llu ms)", (unsigned long long)(dt / MS));
	ratelimit_timer_event(&rl);
	TAP_OK(!rl.blocked && ratelimit_consume(&rl, 0, 1), "unblocked and the op goes");
	ratelimit_destroy(&rl);
}

int main(void)
{
	rl.timer_fd = -1;
	unlimited();
	bandwidth();
	ops_and_both();
	bursts();
	bad_config();
	real_timer();
	return tap_done();
}
