/* VM settings: defaults, the JSON form, static checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/json.h"
#include "base/util.h"
#include "vmm/virtio/net.h"
#include "vmm/vmm.h"

#define CONFIG_MAX_BYTES (1 << 20)

void vmm_config_init(struct vmm_config *cfg)
{
	*cfg = (struct vmm_config){ .cpus = 1, .memory_mib = VMM_DEFAULT_MEMORY_MIB, .console = VMM_CONSOLE_STDIO };
}

static void disk_free(struct vmm_disk *d)
{
	free(d->path);
	free(d->id);
	*d = (struct vmm_disk){ 0 };
}

static void net_free(struct vmm_net *n)
{
	free(n->tap);
	*n = (struct vmm_net){ 0 };
}

void vmm_config_clear_overrides(struct vmm_config *cfg)
{
	for (unsigned i = 0; i < cfg->nrestore_disks; i++) {
		free(cfg->restore_disks[i].id);
		free(cfg->restore_disks[i].value);
	}
	for (unsigned i = 0; i < cfg->nrestore_nets; i++) {
		free(cfg->restore_nets[i].id);
		free(cfg->restore_nets[i].value);
	}
	free(cfg->restore_vsock_uds);
	memset(cfg->restore_disks, 0, sizeof(cfg->restore_disks));
	memset(cfg->restore_nets, 0, sizeof(cfg->restore_nets));
	cfg->nrestore_disks = cfg->nrestore_nets = 0;
	cfg->restore_vsock_uds = NULL;
}

int vmm_config_add_override(struct vmm_override *list, unsigned *n, unsigned max, const char *spec,
			    const char *what, struct cella_err *err)
{
	const char *eq = strchr(spec, '=');
	if (!eq || eq == spec || !eq[1])
		return cella_err_set(err, EINVAL, "%s: expected ID=VALUE, got \"%s\"", what, spec);
	size_t idlen = (size_t)(eq - spec);
	for (unsigned i = 0; i < *n; i++)
		if (strlen(list[i].id) == idlen && !strncmp(list[i].id, spec, idlen))
			return cella_err_set(err, EINVAL, "%s: \"%s\" is overridden twice", what, list[i].id);
	if (*n >= max)
		return cella_err_set(err, E2BIG, "%s %s: at most %u overrides", what, spec, max);
	char *id = strndup(spec, idlen), *value = strdup(eq + 1);
	if (!id || !value) {
		free(id);
		free(value);
		return cella_err_set(err, ENOMEM, "out of memory");
	}
	list[(*n)++] = (struct vmm_override){ id, value };
	return 0;
}

void vmm_config_free(struct vmm_config *cfg)
{
	vmm_config_clear_overrides(cfg);
	for (unsigned i = 0; i < cfg->ndisks; i++)
		disk_free(&cfg->disks[i]);
	for (unsigned i = 0; i < cfg->nnets; i++)
		net_free(&cfg->nets[i]);
	free(cfg->kernel);
	free(cfg->initrd);
	free(cfg->cmdline);
	free(cfg->console_path);
	free(cfg->kvm_device);
	free(cfg->vsock_uds);
	free(cfg->snapshot_dir);
	free(cfg->restore_state);
	free(cfg->restore_memory);
	free(cfg->id);
	free(cfg->api_sock);
	vmm_config_init(cfg);
}

static int replace(char **slot, const char *value, struct cella_err *err)
{
	char *copy = strdup(value);
	if (!copy)
		return cella_err_set(err, ENOMEM, "out of memory");
	free(*slot);
	*slot = copy;
	return 0;
}

int vmm_config_set_console(struct vmm_config *cfg, const char *spec, struct cella_err *err)
{
	if (!strcmp(spec, "stdio")) {
		cfg->console = VMM_CONSOLE_STDIO;
		return 0;
	}
	if (!strcmp(spec, "none")) {
		cfg->console = VMM_CONSOLE_NONE;
		return 0;
	}
	if (!*spec)
		return cella_err_set(err, EINVAL, "console: expected stdio, none or a file path, got \"\"");
	cfg->console = VMM_CONSOLE_FILE;
	return replace(&cfg->console_path, spec, err);
}

const char *const vmm_ratelimit_keys[] = { "bw", "bw_refill_ms", "bw_burst", "iops", "iops_refill_ms",
					  "iops_burst", NULL };

int vmm_ratelimit_set(struct ratelimit_cfg *rl, const char *key, uint64_t value)
{
	uint64_t *slots[] = { &rl->bw.size, &rl->bw.refill_ms, &rl->bw.one_time_burst,
			      &rl->ops.size, &rl->ops.refill_ms, &rl->ops.one_time_burst };
	for (size_t i = 0; i < ARRAY_SIZE(slots); i++)
		if (!strcmp(key, vmm_ratelimit_keys[i])) {
			*slots[i] = value;
			return 1;
		}
	return 0;
}

/* "123", "64K", "10M", "1G", "2T" (1024-based). */
static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	if (!*s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case '\0': break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

/* The items of a device flag ("--disk PATH,ro,bw=1M", "--net tap=t0,mac=...", "--vsock cid=3,uds=P"):
 * one table of keys a device, walked by parse_opts, so every flag splits, converts and reports alike. */
enum opt_type {
	OPT_FIRST, /* the first item, whatever it holds (a disk's path) */
	OPT_WORD,  /* a bare word, no "=VALUE" ("ro") */
	OPT_TEXT,  /* KEY=any text */
	OPT_SIZE,  /* KEY=a number with an optional K/M/G/T suffix (1024-based) */
	OPT_NUM,   /* KEY=a plain number */
};

struct opt_key {
	const char *name;	   /* the key; or NULL and names: */
	const char *const *names;  /* several keys (NULL-terminated) that share type and setter */
	enum opt_type type;
	/* Stores the item in dev: text is the value (the word for OPT_WORD), num the converted number
	 * (OPT_SIZE, OPT_NUM). 0 or -errno with err set. */
	int (*set)(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err);
};

/* The NULL-terminated names of k (one holds a single name); none for OPT_FIRST. */
static const char *const *opt_names(const struct opt_key *k, const char *one[2])
{
	one[0] = k->type == OPT_FIRST ? NULL : k->name;
	one[1] = NULL;
	return k->names ? k->names : one;
}

/* Index into keys of the entry for name (len bytes), or -1. */
static int opt_find(const struct opt_key *keys, size_t nkeys, const char *name, size_t len)
{
	for (size_t i = 0; i < nkeys; i++) {
		const char *one[2];
		for (const char *const *n = opt_names(&keys[i], one); *n; n++)
			if (strlen(*n) == len && !strncmp(*n, name, len))
				return (int)i;
	}
	return -1;
}

/* "ro, rw, id=, bw=, ..." for the unknown-option message. */
static void opt_list(const struct opt_key *keys, size_t nkeys, char *buf, size_t size)
{
	size_t at = 0;
	buf[0] = 0;
	for (size_t i = 0; i < nkeys; i++) {
		const char *one[2];
		for (const char *const *n = opt_names(&keys[i], one); *n && at < size; n++)
			at += (size_t)snprintf(buf + at, size - at, "%s%s%s", at ? ", " : "", *n,
					       keys[i].type == OPT_WORD ? "" : "=");
	}
}

/* Splits spec at commas and hands each item to its key's setter; flag ("--disk") and spec name the
 * flag in every error. *seen gets bit i for each keys[i] given (NULL: not wanted). */
static int parse_opts(const char *flag, const char *spec, const struct opt_key *keys, size_t nkeys, void *dev,
		      unsigned *seen, struct cella_err *err)
{
	_cleanup_free_ char *copy = strdup(spec);
	if (!copy)
		return cella_err_set(err, ENOMEM, "out of memory");
	unsigned got = 0;
	char *save = NULL;
	bool first = true;
	for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save), first = false) {
		char *eq = strchr(item, '=');
		size_t klen = eq ? (size_t)(eq - item) : strlen(item);
		int i = first && keys[0].type == OPT_FIRST ? 0 : opt_find(keys, nkeys, item, klen);
		if (i < 0) {
			char list[256];
			opt_list(keys, nkeys, list, sizeof(list));
			return cella_err_set(err, EINVAL, "%s %s: unknown option \"%.*s\" (%s)", flag, spec, (int)klen, item,
					     list);
		}
		const struct opt_key *k = &keys[i];
		const char *text = item;
		uint64_t num = 0;
		if (k->type == OPT_WORD && eq)
			return cella_err_set(err, EINVAL, "%s %s: %.*s: takes no value, got \"%s\"", flag, spec, (int)klen,
					     item, eq + 1);
		if (k->type != OPT_FIRST && k->type != OPT_WORD) {
			if (!eq)
				return cella_err_set(err, EINVAL, "%s %s: %s: expected %s=VALUE", flag, spec, item, item);
			*eq = 0;
			text = eq + 1;
		}
		if (k->type == OPT_SIZE && parse_size(text, &num) < 0)
			return cella_err_set(err, EINVAL, "%s %s: %s: expected a number (suffix K, M, G), got \"%s\"", flag,
					     spec, item, text);
		if (k->type == OPT_NUM && cella_parse_uint64(text, &num) < 0)
			return cella_err_set(err, EINVAL, "%s %s: %s: expected a number, got \"%s\"", flag, spec, item, text);
		if (k->set(dev, item, text, num, err) < 0)
			return cella_err_wrap(err, "%s %s", flag, spec);
		got |= 1u << i;
	}
	if (seen)
		*seen = got;
	return 0;
}

/* The JSON form of a device has the OPT_SIZE keys of its table as number members. known gets own
 * and those names, NULL-terminated (for cj_reject_unknown); cap counts the NULL. A table that
 * outgrows known fails loudly instead of refusing its last names as unknown. */
static int json_known(const char *const *own, size_t nown, const struct opt_key *keys, size_t nkeys,
		      const char **known, size_t cap, struct cella_err *err)
{
	size_t n = 0;
	for (size_t i = 0; i < nown; i++) {
		if (n + 1 >= cap)
			goto full;
		known[n++] = own[i];
	}
	for (size_t i = 0; i < nkeys; i++) {
		const char *one[2];
		if (keys[i].type != OPT_SIZE)
			continue;
		for (const char *const *k = opt_names(&keys[i], one); *k; k++) {
			if (n + 1 >= cap)
				goto full;
			known[n++] = *k;
		}
	}
	known[n] = NULL;
	return 0;
full:
	known[n] = NULL;
	return cella_err_set(err, E2BIG, "internal: more JSON member names than the %zu known[] holds", cap - 1);
}

/* Reads those number members of o (path names it) through the table's setters. */
static int json_sizes(const json_t *o, const char *path, const struct opt_key *keys, size_t nkeys, void *dev,
		      struct cella_err *err)
{
	for (size_t i = 0; i < nkeys; i++) {
		const char *one[2];
		if (keys[i].type != OPT_SIZE)
			continue;
		for (const char *const *k = opt_names(&keys[i], one); *k; k++) {
			uint64_t v;
			int r = cj_get_uint64(o, path, *k, false, &v, err);
			if (r > 0)
				r = keys[i].set(dev, *k, NULL, v, err);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static int check_disk(const struct vmm_disk *d, const char *where, struct cella_err *err)
{
	if (!d->path || !*d->path)
		return cella_err_set(err, EINVAL, "%s: a disk needs a path", where);
	if (d->id && strlen(d->id) > VMM_DISK_ID_MAX)
		return cella_err_set(err, EINVAL, "%s: id \"%s\" is longer than %d bytes", where, d->id, VMM_DISK_ID_MAX);
	return ratelimit_cfg_check(&d->rl, err) < 0 ? cella_err_wrap(err, "%s", where) : 0;
}

static int disk_path(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	return replace(&((struct vmm_disk *)dev)->path, text, err);
}

static int disk_mode(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	((struct vmm_disk *)dev)->ro = !strcmp(key, "ro");
	return 0;
}

static int disk_id(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	return replace(&((struct vmm_disk *)dev)->id, text, err);
}

static int disk_rate(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	vmm_ratelimit_set(&((struct vmm_disk *)dev)->rl, key, num);
	return 0;
}

static const struct opt_key disk_keys[] = {
	{ NULL, NULL, OPT_FIRST, disk_path },
	{ "ro", NULL, OPT_WORD, disk_mode },
	{ "rw", NULL, OPT_WORD, disk_mode },
	{ "id", NULL, OPT_TEXT, disk_id },
	{ NULL, vmm_ratelimit_keys, OPT_SIZE, disk_rate },
};

int vmm_config_add_disk(struct vmm_config *cfg, const char *spec, struct cella_err *err)
{
	if (cfg->ndisks >= VMM_MAX_DISKS)
		return cella_err_set(err, E2BIG, "--disk %s: at most %d disks", spec, VMM_MAX_DISKS);
	struct vmm_disk d = { 0 };
	int r = parse_opts("--disk", spec, disk_keys, ARRAY_SIZE(disk_keys), &d, NULL, err);
	if (r == 0) {
		char where[64];
		snprintf(where, sizeof(where), "--disk %s", d.path ? d.path : "");
		r = check_disk(&d, where, err);
	}
	if (r < 0) {
		disk_free(&d);
		return r;
	}
	cfg->disks[cfg->ndisks++] = d;
	return 0;
}

/* Network rate limits: the disks' keys, with pps* as other names for iops* (operations = packets). */
static int net_ratelimit_set(struct ratelimit_cfg *rl, const char *key, uint64_t value)
{
	static const char *const pps[][2] = { { "pps", "iops" }, { "pps_refill_ms", "iops_refill_ms" },
					      { "pps_burst", "iops_burst" } };
	for (size_t i = 0; i < ARRAY_SIZE(pps); i++)
		if (!strcmp(key, pps[i][0]))
			key = pps[i][1];
	return vmm_ratelimit_set(rl, key, value);
}

static int tap_name_check(const char *tap, const char *where, struct cella_err *err)
{
	if (!*tap || strlen(tap) >= 16 || strpbrk(tap, "/: \t\n") || !strcmp(tap, ".") || !strcmp(tap, ".."))
		return cella_err_set(err, EINVAL, "%s: tap \"%s\" is not a valid interface name (1..15 bytes, no '/', ':' "
				     "or spaces)", where, tap);
	return 0;
}

static int check_net(struct vmm_net *n, const char *where, struct cella_err *err)
{
	if (!n->tap || !*n->tap)
		return cella_err_set(err, EINVAL, "%s: a network device needs tap=NAME", where);
	if (tap_name_check(n->tap, where, err) < 0)
		return -EINVAL;
	if (!(n->mac[0] | n->mac[1] | n->mac[2] | n->mac[3] | n->mac[4] | n->mac[5]))
		virtio_net_random_mac(n->mac);
	return ratelimit_cfg_check(&n->rl, err) < 0 ? cella_err_wrap(err, "%s", where) : 0;
}

static int net_tap(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	return replace(&((struct vmm_net *)dev)->tap, text, err);
}

static int net_mac(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	return virtio_net_parse_mac(text, ((struct vmm_net *)dev)->mac, err);
}

static int net_rate(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	net_ratelimit_set(&((struct vmm_net *)dev)->rl, key, num);
	return 0;
}

static const char *const net_pps_keys[] = { "pps", "pps_refill_ms", "pps_burst", NULL };

static const struct opt_key net_keys[] = {
	{ "tap", NULL, OPT_TEXT, net_tap },
	{ "mac", NULL, OPT_TEXT, net_mac },
	{ NULL, net_pps_keys, OPT_SIZE, net_rate },
	{ NULL, vmm_ratelimit_keys, OPT_SIZE, net_rate },
};

int vmm_config_add_net(struct vmm_config *cfg, const char *spec, struct cella_err *err)
{
	if (cfg->nnets >= VMM_MAX_NETS)
		return cella_err_set(err, E2BIG, "--net %s: at most %d network devices", spec, VMM_MAX_NETS);
	struct vmm_net n = { 0 };
	int r = parse_opts("--net", spec, net_keys, ARRAY_SIZE(net_keys), &n, NULL, err);
	if (r == 0) {
		char where[80];
		snprintf(where, sizeof(where), "--net %s", spec);
		r = check_net(&n, where, err);
	}
	if (r < 0) {
		net_free(&n);
		return r;
	}
	cfg->nets[cfg->nnets++] = n;
	return 0;
}

static int load_nets(struct vmm_config *cfg, const json_t *arr, struct cella_err *err)
{
	static const char *const own[] = { "tap", "mac" };
	const char *known[16];
	int r = json_known(own, ARRAY_SIZE(own), net_keys, ARRAY_SIZE(net_keys), known, ARRAY_SIZE(known), err);
	if (r == 0)
		r = cj_expect_array(arr, "nets", err);
	if (r < 0)
		return r;
	if (json_array_size(arr) > VMM_MAX_NETS)
		return cella_err_set(err, E2BIG, "nets: %zu network devices, at most %d", json_array_size(arr),
				     VMM_MAX_NETS);
	for (unsigned i = 0; i < cfg->nnets; i++)
		net_free(&cfg->nets[i]);
	cfg->nnets = 0;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		const json_t *o = json_array_get(arr, i);
		char path[64];
		cj_subpath_index(path, sizeof(path), "nets", i);
		if ((r = cj_expect_object(o, path, err)) < 0 || (r = cj_reject_unknown(o, path, known, err)) < 0)
			return r;
		struct vmm_net n = { 0 };
		const char *s;
		if ((r = cj_get_strdup(o, path, "tap", true, &n.tap, err)) < 0)
			goto bad;
		if ((r = cj_get_string(o, path, "mac", false, &s, err)) < 0 ||
		    (r > 0 && (r = virtio_net_parse_mac(s, n.mac, err)) < 0)) {
			cella_err_wrap(err, "%s", path);
			goto bad;
		}
		if ((r = json_sizes(o, path, net_keys, ARRAY_SIZE(net_keys), &n, err)) < 0 ||
		    (r = check_net(&n, path, err)) < 0)
			goto bad;
		cfg->nets[cfg->nnets++] = n;
		continue;
bad:
		net_free(&n);
		return r;
	}
	return 0;
}

static int load_disks(struct vmm_config *cfg, const json_t *arr, struct cella_err *err)
{
	static const char *const own[] = { "path", "ro", "id" };
	const char *known[16];
	int r = json_known(own, ARRAY_SIZE(own), disk_keys, ARRAY_SIZE(disk_keys), known, ARRAY_SIZE(known), err);
	if (r == 0)
		r = cj_expect_array(arr, "disks", err);
	if (r < 0)
		return r;
	if (json_array_size(arr) > VMM_MAX_DISKS)
		return cella_err_set(err, E2BIG, "disks: %zu disks, at most %d", json_array_size(arr), VMM_MAX_DISKS);
	for (unsigned i = 0; i < cfg->ndisks; i++)
		disk_free(&cfg->disks[i]);
	cfg->ndisks = 0;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		const json_t *o = json_array_get(arr, i);
		char path[64];
		cj_subpath_index(path, sizeof(path), "disks", i);
		if ((r = cj_expect_object(o, path, err)) < 0 || (r = cj_reject_unknown(o, path, known, err)) < 0)
			return r;
		struct vmm_disk d = { 0 };
		if ((r = cj_get_strdup(o, path, "path", true, &d.path, err)) < 0)
			goto bad;
		if ((r = cj_get_strdup(o, path, "id", false, &d.id, err)) < 0)
			goto bad;
		if ((r = cj_get_bool(o, path, "ro", false, &d.ro, err)) < 0)
			goto bad;
		if ((r = json_sizes(o, path, disk_keys, ARRAY_SIZE(disk_keys), &d, err)) < 0 ||
		    (r = check_disk(&d, path, err)) < 0)
			goto bad;
		cfg->disks[cfg->ndisks++] = d;
		continue;
bad:
		disk_free(&d);
		return r;
	}
	return 0;
}

/* Every field of the JSON form. vmm_config_to_json must write each one: a snapshot restores the
 * machine from it (tests/unit/test_snapshot.c round-trips a config). */
static const char *const known[] = { "kernel", "initrd", "cmdline", "cpus", "memory_mib", "console", "rng", "pit", "disks", "nets", "vsock", NULL };

static int from_json(struct vmm_config *cfg, json_t *j, const char *path, struct cella_err *err)
{
	int r;
	const char *s;
	uint32_t cpus;
	uint64_t mib;
	bool b;
	if ((r = cj_expect_object(j, "config", err)) < 0 || (r = cj_reject_unknown(j, "", known, err)) < 0)
		goto fail;
	if ((r = cj_get_strdup(j, "", "kernel", false, &cfg->kernel, err)) < 0)
		goto fail;
	if ((r = cj_get_strdup(j, "", "initrd", false, &cfg->initrd, err)) < 0)
		goto fail;
	if ((r = cj_get_strdup(j, "", "cmdline", false, &cfg->cmdline, err)) < 0)
		goto fail;
	if ((r = cj_get_string(j, "", "console", false, &s, err)) < 0 ||
	    (r > 0 && (r = vmm_config_set_console(cfg, s, err)) < 0))
		goto fail;
	if ((r = cj_get_uint32(j, "", "cpus", false, &cpus, err)) < 0)
		goto fail;
	if (r > 0)
		cfg->cpus = cpus;
	if ((r = cj_get_uint64(j, "", "memory_mib", false, &mib, err)) < 0)
		goto fail;
	if (r > 0)
		cfg->memory_mib = mib;
	if ((r = cj_get_bool(j, "", "rng", false, &b, err)) < 0)
		goto fail;
	if (r > 0)
		cfg->rng = b;
	if ((r = cj_get_bool(j, "", "pit", false, &b, err)) < 0)
		goto fail;
	if (r > 0)
		cfg->pit = b;
	json_t *disks;
	if ((r = cj_get_array(j, "", "disks", false, &disks, err)) < 0 || (r > 0 && (r = load_disks(cfg, disks, err)) < 0))
		goto fail;
	json_t *nets;
	if ((r = cj_get_array(j, "", "nets", false, &nets, err)) < 0 || (r > 0 && (r = load_nets(cfg, nets, err)) < 0))
		goto fail;
	json_t *vs;
	if ((r = cj_get_object(j, "", "vsock", false, &vs, err)) < 0)
		goto fail;
	if (r > 0) {
		static const char *const vknown[] = { "cid", "uds", NULL };
		uint64_t cid;
		if ((r = cj_reject_unknown(vs, "vsock", vknown, err)) < 0 ||
		    (r = cj_get_uint64(vs, "vsock", "cid", true, &cid, err)) < 0 ||
		    (r = cj_get_strdup(vs, "vsock", "uds", true, &cfg->vsock_uds, err)) < 0)
			goto fail;
		cfg->vsock_cid = cid;
	}
	return 0;
fail:
	return cella_err_wrap(err, "%s", path);
}

static int vsock_cid(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	((struct vmm_config *)dev)->vsock_cid = num;
	return 0;
}

static int vsock_uds(void *dev, const char *key, const char *text, uint64_t num, struct cella_err *err)
{
	return replace(&((struct vmm_config *)dev)->vsock_uds, text, err);
}

static const struct opt_key vsock_keys[] = {
	{ "cid", NULL, OPT_NUM, vsock_cid },
	{ "uds", NULL, OPT_TEXT, vsock_uds },
};

int vmm_config_set_vsock(struct vmm_config *cfg, const char *spec, struct cella_err *err)
{
	unsigned seen;
	int r = parse_opts("--vsock", spec, vsock_keys, ARRAY_SIZE(vsock_keys), cfg, &seen, err);
	if (r < 0)
		return r;
	if (seen != 3) /* both */
		return cella_err_set(err, EINVAL, "--vsock: expected cid=N,uds=PATH, got \"%s\"", spec);
	return 0;
}

int vmm_config_load_json(struct vmm_config *cfg, const char *path, struct cella_err *err)
{
	_cleanup_json_ json_t *j = NULL;
	int r = cj_load_file(path, path, CONFIG_MAX_BYTES, &j, err);
	if (r < 0)
		return r;
	return from_json(cfg, j, path, err);
}

int vmm_config_from_json_text(struct vmm_config *cfg, const char *text, size_t len, const char *what,
			      struct cella_err *err)
{
	_cleanup_json_ json_t *j = NULL;
	int r = cj_load_string(text, len, what, &j, err);
	if (r < 0)
		return r;
	return from_json(cfg, j, what, err);
}

int vmm_config_to_json(const struct vmm_config *cfg, char **out, struct cella_err *err)
{
	_cleanup_json_ json_t *j = json_object();
	if (!j)
		return cella_err_set(err, ENOMEM, "out of memory");
	const char *console = cfg->console == VMM_CONSOLE_STDIO ? "stdio"
			      : cfg->console == VMM_CONSOLE_NONE ? "none" : cfg->console_path;
	int bad = 0;
	if (cfg->kernel)
		bad |= json_object_set_new(j, "kernel", json_string(cfg->kernel));
	if (cfg->initrd)
		bad |= json_object_set_new(j, "initrd", json_string(cfg->initrd));
	if (cfg->cmdline)
		bad |= json_object_set_new(j, "cmdline", json_string(cfg->cmdline));
	bad |= json_object_set_new(j, "cpus", json_integer(cfg->cpus));
	bad |= json_object_set_new(j, "memory_mib", json_integer((json_int_t)cfg->memory_mib));
	if (console)
		bad |= json_object_set_new(j, "console", json_string(console));
	bad |= json_object_set_new(j, "rng", json_boolean(cfg->rng));
	bad |= json_object_set_new(j, "pit", json_boolean(cfg->pit));
	json_t *disks = json_array();
	for (unsigned i = 0; disks && i < cfg->ndisks; i++) {
		const struct vmm_disk *d = &cfg->disks[i];
		json_t *o = json_object();
		const uint64_t vals[] = { d->rl.bw.size, d->rl.bw.refill_ms, d->rl.bw.one_time_burst,
					  d->rl.ops.size, d->rl.ops.refill_ms, d->rl.ops.one_time_burst };
		bad |= !o || json_object_set_new(o, "path", json_string(d->path)) ||
		       json_object_set_new(o, "ro", json_boolean(d->ro));
		if (o && d->id)
			bad |= json_object_set_new(o, "id", json_string(d->id));
		for (size_t k = 0; o && vmm_ratelimit_keys[k]; k++)
			if (vals[k])
				bad |= json_object_set_new(o, vmm_ratelimit_keys[k], json_integer((json_int_t)vals[k]));
		bad |= json_array_append_new(disks, o);
	}
	bad |= !disks || json_object_set_new(j, "disks", disks);
	json_t *nets = json_array();
	for (unsigned i = 0; nets && i < cfg->nnets; i++) {
		const struct vmm_net *n = &cfg->nets[i];
		json_t *o = json_object();
		char mac[18];
		snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x", n->mac[0], n->mac[1], n->mac[2], n->mac[3],
			 n->mac[4], n->mac[5]);
		const uint64_t vals[] = { n->rl.bw.size, n->rl.bw.refill_ms, n->rl.bw.one_time_burst,
					  n->rl.ops.size, n->rl.ops.refill_ms, n->rl.ops.one_time_burst };
		bad |= !o || json_object_set_new(o, "tap", json_string(n->tap)) ||
		       json_object_set_new(o, "mac", json_string(mac));
		for (size_t k = 0; o && vmm_ratelimit_keys[k]; k++)
			if (vals[k])
				bad |= json_object_set_new(o, vmm_ratelimit_keys[k], json_integer((json_int_t)vals[k]));
		bad |= json_array_append_new(nets, o);
	}
	bad |= !nets || json_object_set_new(j, "nets", nets);
	if (cfg->vsock_cid)
		bad |= json_object_set_new(j, "vsock", json_pack("{sIss}", "cid", (json_int_t)cfg->vsock_cid, "uds",
								  cfg->vsock_uds ? cfg->vsock_uds : ""));
	char *text = bad ? NULL : json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	if (!text)
		return cella_err_set(err, ENOMEM, "config: cannot write it as JSON");
	*out = text;
	return 0;
}

int vmm_config_check(const struct vmm_config *cfg, struct cella_err *err)
{
	if (!cfg->kernel || !*cfg->kernel)
		return cella_err_set(err, EINVAL, "kernel: required (--kernel PATH or \"kernel\" in the config)");
	if (cfg->cpus < 1 || cfg->cpus > VMM_MAX_CPUS)
		return cella_err_set(err, EINVAL, "cpus: %u is out of range (1..%d)", cfg->cpus, VMM_MAX_CPUS);
	if (cfg->memory_mib < VMM_MIN_MEMORY_MIB_FLAT || cfg->memory_mib > VMM_MAX_MEMORY_MIB)
		return cella_err_set(err, EINVAL, "memory: %llu MiB is out of range (%d..%llu MiB)",
				     (unsigned long long)cfg->memory_mib, VMM_MIN_MEMORY_MIB_FLAT,
				     (unsigned long long)VMM_MAX_MEMORY_MIB);
	if (cfg->ndisks + cfg->nnets + (cfg->rng ? 1 : 0) > VMM_MAX_VIRTIO_DEVS)
		return cella_err_set(err, E2BIG, "%u virtio devices, at most %d",
				     cfg->ndisks + cfg->nnets + (cfg->rng ? 1 : 0), VMM_MAX_VIRTIO_DEVS);
	if (cfg->cmdline && strlen(cfg->cmdline) >= 4096)
		return cella_err_set(err, E2BIG, "cmdline: %zu bytes, at most 4095", strlen(cfg->cmdline));
	if (cfg->vsock_cid || cfg->vsock_uds) {
		/* CIDs 0-2 are the hypervisor, local and host; the guest's is 32 bits in practice */
		if (cfg->vsock_cid < 3 || cfg->vsock_cid >= UINT32_MAX)
			return cella_err_set(err, EINVAL, "vsock: cid %llu is out of range (3..%u)",
					     (unsigned long long)cfg->vsock_cid, UINT32_MAX - 1);
		if (!cfg->vsock_uds || !*cfg->vsock_uds)
			return cella_err_set(err, EINVAL, "vsock: uds: required (a unix socket path)");
		/* room for "_<port>" in sun_path (108 bytes) */
		if (strlen(cfg->vsock_uds) > VMM_VSOCK_UDS_MAX)
			return cella_err_set(err, ENAMETOOLONG, "vsock: uds %s: %zu bytes, at most %d", cfg->vsock_uds,
					     strlen(cfg->vsock_uds), VMM_VSOCK_UDS_MAX);
	}
	return 0;
}

const char *vmm_outcome_name(enum vmm_outcome outcome)
{
	switch (outcome) {
	case VMM_POWEROFF: return "poweroff";
	case VMM_REBOOT: return "reboot";
	case VMM_FAILED: return "failed";
	case VMM_SIGNALED: return "signaled";
	}
	return "unknown";
}

/* Restore overrides (see vmm.h): several clones of one snapshot at once need their own disk copies,
 * TAPs and vsock sockets. */
int vmm_config_apply_overrides(struct vmm_config *saved, const struct vmm_config *given, struct cella_err *err)
{
	for (unsigned k = 0; k < given->nrestore_disks; k++) {
		const struct vmm_override *o = &given->restore_disks[k];
		int found = -1;
		for (unsigned i = 0; i < saved->ndisks && found < 0; i++) {
			char pos[8];
			snprintf(pos, sizeof(pos), "vd%c", 'a' + i);
			if ((saved->disks[i].id && !strcmp(saved->disks[i].id, o->id)) || !strcmp(pos, o->id))
				found = (int)i;
		}
		if (found < 0) {
			char names[256] = "";
			for (unsigned i = 0; i < saved->ndisks; i++)
				snprintf(names + strlen(names), sizeof(names) - strlen(names), "%svd%c%s%s%s",
					 i ? ", " : "", 'a' + i, saved->disks[i].id ? " (id " : "",
					 saved->disks[i].id ? saved->disks[i].id : "", saved->disks[i].id ? ")" : "");
			return cella_err_set(err, ENOENT, "disk override \"%s\": the snapshot has no such disk (%s%s)",
					     o->id, saved->ndisks ? "its disks: " : "it has none", names);
		}
		if (!*o->value)
			return cella_err_set(err, EINVAL, "disk override \"%s\": empty path", o->id);
		if (replace(&saved->disks[found].path, o->value, err) < 0)
			return -ENOMEM;
	}
	for (unsigned k = 0; k < given->nrestore_nets; k++) {
		const struct vmm_override *o = &given->restore_nets[k];
		int found = -1;
		for (unsigned i = 0; i < saved->nnets && found < 0; i++) {
			char pos[16];
			snprintf(pos, sizeof(pos), "eth%u", i);
			if (!strcmp(pos, o->id) || !strcmp(saved->nets[i].tap, o->id))
				found = (int)i;
		}
		if (found < 0) {
			char names[256] = "";
			for (unsigned i = 0; i < saved->nnets; i++)
				snprintf(names + strlen(names), sizeof(names) - strlen(names), "%seth%u (tap %s)",
					 i ? ", " : "", i, saved->nets[i].tap);
			return cella_err_set(err, ENOENT, "network override \"%s\": the snapshot has no such interface "
					     "(%s%s)", o->id, saved->nnets ? "its interfaces: " : "it has none", names);
		}
		char where[64];
		snprintf(where, sizeof(where), "network override \"%s\"", o->id);
		int r;
		if ((r = tap_name_check(o->value, where, err)) < 0 || (r = replace(&saved->nets[found].tap, o->value, err)) < 0)
			return r;
	}
	/* two overrides may not end on one TAP (the clone's two NICs would share it) */
	for (unsigned i = 0; i < saved->nnets; i++)
		for (unsigned j = i + 1; j < saved->nnets; j++)
			if (!strcmp(saved->nets[i].tap, saved->nets[j].tap))
				return cella_err_set(err, EINVAL, "network overrides: eth%u and eth%u would both use TAP %s",
						     i, j, saved->nets[i].tap);
	if (given->restore_vsock_uds) {
		if (!saved->vsock_cid)
			return cella_err_set(err, ENOENT, "vsock override %s: the snapshot has no vsock device",
					     given->restore_vsock_uds);
		if (!*given->restore_vsock_uds)
			return cella_err_set(err, EINVAL, "vsock override: empty path");
		if (replace(&saved->vsock_uds, given->restore_vsock_uds, err) < 0)
			return -ENOMEM;
	}
	return 0;
}
