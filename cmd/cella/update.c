/* cella update ID [--memory N --memory-reservation N --memory-swap N --cpu-share(s) N --cpu-quota N
 * --cpu-period N --cpu-rt-period N --cpu-rt-runtime N --cpuset-cpus S --cpuset-mems S --pids-limit N
 * --blkio-weight N --kernel-memory-tcp N | -r FILE|-]
 * runc's flags: memory sizes take k/m/g/t/p suffixes (binary, as docker's units.RAMInBytes) or -1;
 * with -r the linux.resources JSON comes from FILE ("-" = stdin) and the other flags are ignored. */
#include "cmd/cella/cella.h"

#include "base/util.h"
#include "runtime/config.h"
#include "runtime/container_ctl.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
	O_RES = 1, O_MEM, O_MEMRES, O_SWAP, O_KMEM, O_KTCP, O_SHARES, O_QUOTA, O_PERIOD, O_RTPERIOD, O_RTRUNTIME,
	O_CPUS, O_MEMS, O_PIDS, O_BLKIO, O_RDT,
};

static const struct opt update_opts[] = {
	{ "resources", 'r', true, O_RES },
	{ "memory", 0, true, O_MEM },
	{ "memory-reservation", 0, true, O_MEMRES },
	{ "memory-swap", 0, true, O_SWAP },
	{ "kernel-memory", 0, true, O_KMEM },
	{ "kernel-memory-tcp", 0, true, O_KTCP },
	{ "cpu-share", 0, true, O_SHARES },
	{ "cpu-shares", 0, true, O_SHARES },
	{ "cpu-quota", 0, true, O_QUOTA },
	{ "cpu-period", 0, true, O_PERIOD },
	{ "cpu-rt-period", 0, true, O_RTPERIOD },
	{ "cpu-rt-runtime", 0, true, O_RTRUNTIME },
	{ "cpuset-cpus", 0, true, O_CPUS },
	{ "cpuset-mems", 0, true, O_MEMS },
	{ "pids-limit", 0, true, O_PIDS },
	{ "blkio-weight", 0, true, O_BLKIO },
	{ "l3-cache-schema", 0, true, O_RDT },
	{ "mem-bw-schema", 0, true, O_RDT },
	{ NULL, 0, false, 0 },
};

/* docker's units.RAMInBytes: "512", "64k", "1.5g", "2GiB", case-insensitive, binary multiples. */
static int ram_in_bytes(const char *name, const char *s, int64_t *out, struct cella_err *err)
{
	if (!strcmp(s, "-1")) {
		*out = -1;
		return 0;
	}
	char *end = NULL;
	errno = 0;
	double v = strtod(s, &end);
	if (!isdigit((unsigned char)s[0]) || errno || end == s)
		goto bad;
	if (*end == ' ')
		end++;
	double mul = 1;
	const char *units = "kmgtp";
	if (*end && strchr(units, tolower((unsigned char)*end))) {
		for (const char *u = units; *u; u++) {
			mul *= 1024;
			if (*u == tolower((unsigned char)*end))
				break;
		}
		end++;
		if (tolower((unsigned char)*end) == 'i')
			end++;
	}
	if (tolower((unsigned char)*end) == 'b')
		end++;
	if (*end || v * mul > 9.2e18)
		goto bad;
	*out = (int64_t)(v * mul);
	return 0;
bad:
	return cella_err_set(err, EINVAL, "invalid value for %s: invalid size: '%s'", name, s);
}

static int int_flag(const char *name, const char *s, bool is_signed, int64_t *out, struct cella_err *err)
{
	uint64_t u;
	if (is_signed ? cella_parse_int64(s, out) < 0 : (cella_parse_uint64(s, &u) < 0 || u > INT64_MAX))
		return cella_err_set(err, EINVAL, "invalid value for %s: \"%s\"", name, s);
	if (!is_signed)
		*out = (int64_t)u;
	return 0;
}

/* linux.resources from a JSON document, parsed by the config parser inside a minimal config. */
static int load_resources(const char *path, struct oci_config **cfg, struct cella_err *err)
{
	json_error_t je;
	json_t *r = !strcmp(path, "-") ? json_loadf(stdin, 0, &je) : json_load_file(path, 0, &je);
	if (!r)
		return cella_err_set(err, EINVAL, "resources %s: %s (line %d)", path, je.text, je.line);
	json_t *doc = json_pack("{s:s, s:{s:s}, s:{s:[s], s:s}, s:{s:o}}", "ociVersion", "1.0.0", "root", "path",
				"/", "process", "args", "true", "cwd", "/", "linux", "resources", r);
	if (!doc)
		return cella_err_set(err, ENOMEM, "resources");
	int ret = oci_config_parse(doc, "resources", cfg, err);
	json_decref(doc);
	return ret;
}

int verb_update(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	struct oci_resources res;
	memset(&res, 0, sizeof(res));
	const char *val, *id = NULL, *file = NULL;
	int i = 1, k, r;
	int64_t v;
	while ((k = opt_next(argc, argv, &i, update_opts, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		switch (k) {
		case 0:
			if (id)
				return cella_err_set(err, EINVAL, "update: unexpected argument \"%s\"", val);
			id = val;
			break;
		case O_RES: file = val; break;
		case O_MEM: case O_MEMRES: case O_SWAP: case O_KMEM: case O_KTCP: {
			static const char *const names[] = { [O_MEM] = "memory", [O_MEMRES] = "memory-reservation",
							     [O_SWAP] = "memory-swap", [O_KMEM] = "kernel-memory",
							     [O_KTCP] = "kernel-memory-tcp" };
			if ((r = ram_in_bytes(names[k], val, &v, err)) < 0)
				return r;
			struct oci_opt_i64 *dst = k == O_MEM ? &res.memory.limit : k == O_MEMRES ? &res.memory.reservation
						  : k == O_SWAP ? &res.memory.swap : k == O_KMEM ? &res.memory.kernel
						  : &res.memory.kernel_tcp;
			*dst = (struct oci_opt_i64){ true, v };
			res.has_memory = true;
			break;
		}
		case O_SHARES: case O_PERIOD: case O_RTPERIOD:
			if ((r = int_flag(k == O_SHARES ? "cpu-share" : k == O_PERIOD ? "cpu-period" : "cpu-rt-period", val,
					  false, &v, err)) < 0)
				return r;
			*(k == O_SHARES ? &res.cpu.shares : k == O_PERIOD ? &res.cpu.period : &res.cpu.realtime_period) =
				(struct oci_opt_u64){ true, (uint64_t)v };
			res.has_cpu = true;
			break;
		case O_QUOTA: case O_RTRUNTIME:
			if ((r = int_flag(k == O_QUOTA ? "cpu-quota" : "cpu-rt-runtime", val, true, &v, err)) < 0)
				return r;
			*(k == O_QUOTA ? &res.cpu.quota : &res.cpu.realtime_runtime) = (struct oci_opt_i64){ true, v };
			res.has_cpu = true;
			break;
		case O_CPUS: res.cpu.cpus = (char *)val; res.has_cpu = true; break;
		case O_MEMS: res.cpu.mems = (char *)val; res.has_cpu = true; break;
		case O_PIDS:
			if ((r = int_flag("pids-limit", val, true, &v, err)) < 0)
				return r;
			res.pids.limit = (struct oci_opt_i64){ true, v };
			res.has_pids = true;
			break;
		case O_BLKIO:
			if ((r = int_flag("blkio-weight", val, false, &v, err)) < 0)
				return r;
			if (v) {
				res.blkio.weight = (struct oci_opt_u64){ true, (uint64_t)v };
				res.has_blkio = true;
			}
			break;
		case O_RDT:
			return cella_err_set(err, ENOTSUP, "Intel RDT is not supported by cella");
		default: break;
		}
	}
	if (!id)
		return cella_err_set(err, EINVAL, "update: container id cannot be empty");
	if (file) {
		struct oci_config *cfg = NULL;
		if ((r = load_resources(file, &cfg, err)) < 0)
			return r;
		r = container_update(&g->rt, id, &cfg->linux_.resources, err);
		oci_config_free(cfg);
		return r;
	}
	return container_update(&g->rt, id, &res, err);
}
