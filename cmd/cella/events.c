/* cella events [--stats] [--interval D] ID: runc's stats events as JSON lines. --stats prints one
 * and exits; otherwise one every interval (default 5s), plus an "oom" event per OOM kill, until
 * the container stops. */
#include "cmd/cella/cella.h"

#include "runtime/container_ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { O_STATS = 1, O_INTERVAL };
static const struct opt events_opts[] = {
	{ "stats", 0, false, O_STATS },
	{ "interval", 0, true, O_INTERVAL },
	{ NULL, 0, false, 0 },
};

/* A Go duration: "5s", "100ms", "1m30s", "2h", "1.5s". */
static int parse_duration(const char *s, double *sec, struct cella_err *err)
{
	const char *p = s;
	double total = 0;
	if (!*p)
		goto bad;
	while (*p) {
		char *end;
		double v = strtod(p, &end);
		if (end == p)
			goto bad;
		p = end;
		static const struct { const char *u; double mul; } units[] = {
			{ "ns", 1e-9 }, { "us", 1e-6 }, { "µs", 1e-6 }, { "ms", 1e-3 }, { "s", 1 }, { "m", 60 }, { "h", 3600 },
		};
		size_t k;
		for (k = 0; k < sizeof(units) / sizeof(units[0]); k++) {
			size_t l = strlen(units[k].u);
			if (!strncmp(p, units[k].u, l) && !(units[k].u[0] == 'm' && l == 1 && p[1] == 's')) {
				total += v * units[k].mul;
				p += l;
				break;
			}
		}
		if (k == sizeof(units) / sizeof(units[0]))
			goto bad;
	}
	if (total <= 0)
		return cella_err_set(err, EINVAL, "duration interval must be greater than 0");
	*sec = total;
	return 0;
bad:
	return cella_err_set(err, EINVAL, "invalid value \"%s\" for flag --interval: parse error", s);
}

int verb_events(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *val, *id = NULL;
	bool once = false;
	double interval = 5;
	int i = 1, k, r;
	while ((k = opt_next(argc, argv, &i, events_opts, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		if (k == O_STATS)
			once = !strcmp(val, "true");
		else if (k == O_INTERVAL) {
			if ((r = parse_duration(val, &interval, err)) < 0)
				return r;
		} else if (!id)
			id = val;
		else
			return cella_err_set(err, EINVAL, "events: unexpected argument \"%s\"", val);
	}
	if (!id)
		return cella_err_set(err, EINVAL, "events: container id cannot be empty");
	unsigned long long ooms = 0;
	if (!once && container_oom_kills(&g->rt, id, &ooms, err) < 0)
		return -EINVAL;
	for (bool first = true;; first = false) {
		json_t *ev = NULL;
		unsigned long long now = 0;
		/* runc's {"type":"oom","id":ID} for each OOM kill since the last look. */
		if (!once && container_oom_kills(&g->rt, id, &now, err) == 0) {
			for (; ooms < now; ooms++) {
				json_t *oom = json_pack("{s:s, s:s}", "type", "oom", "id", id);
				print_json(oom, false, err);
				json_decref(oom);
			}
		}
		r = container_stats(&g->rt, id, &ev, err);
		if (r < 0)
			return first ? r : 0; /* the container went away: the stream ends */
		r = print_json(ev, false, err);
		json_decref(ev);
		fflush(stdout);
		if (r < 0 || once)
			return r;
		struct timespec ts = { (time_t)interval, (long)((interval - (double)(time_t)interval) * 1e9) };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}
