/* config.json parsing against golden files:
 *   tests/unit/config/good/NAME.json  parses; a text dump of the struct equals NAME.expect
 *   tests/unit/config/bad/NAME.json   fails; the message equals NAME.err (one line)
 * Run from the repository root (the pytest runner does), or set CELLA_SRCDIR.
 * CELLA_UPDATE_GOLDEN=1 rewrites the .expect/.err files from the current output (review the diff!). */
#include "base/err.h"
#include "base/json.h"
#include "base/util.h"
#include "runtime/config.h"
#include "runtime/names.h"
#include "tap.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/mount.h>

static char srcdir[4096] = ".";
static bool update_golden;

/* ---- the dumper: one "path: value" line per set field, in config.h order ---- */

static const struct {
	unsigned long flag;
	const char *name;
} ms_names[] = {
	{ MS_RDONLY, "RDONLY" },       { MS_NOSUID, "NOSUID" },	       { MS_NODEV, "NODEV" },
	{ MS_NOEXEC, "NOEXEC" },       { MS_SYNCHRONOUS, "SYNCHRONOUS" }, { MS_REMOUNT, "REMOUNT" },
	{ MS_MANDLOCK, "MANDLOCK" },   { MS_DIRSYNC, "DIRSYNC" },       { MS_NOSYMFOLLOW, "NOSYMFOLLOW" },
	{ MS_NOATIME, "NOATIME" },     { MS_NODIRATIME, "NODIRATIME" }, { MS_BIND, "BIND" },
	{ MS_REC, "REC" },	       { MS_SILENT, "SILENT" },	       { MS_UNBINDABLE, "UNBINDABLE" },
	{ MS_PRIVATE, "PRIVATE" },     { MS_SLAVE, "SLAVE" },	       { MS_SHARED, "SHARED" },
	{ MS_RELATIME, "RELATIME" },   { MS_I_VERSION, "I_VERSION" },   { MS_STRICTATIME, "STRICTATIME" },
	{ MS_LAZYTIME, "LAZYTIME" },
};

static const struct {
	uint64_t attr;
	const char *name;
} attr_names[] = {
	{ MOUNT_ATTR_RDONLY, "RDONLY" },	 { MOUNT_ATTR_NOSUID, "NOSUID" },
	{ MOUNT_ATTR_NODEV, "NODEV" },		 { MOUNT_ATTR_NOEXEC, "NOEXEC" },
	{ MOUNT_ATTR_NOATIME, "NOATIME" },	 { MOUNT_ATTR_STRICTATIME, "STRICTATIME" },
	{ MOUNT_ATTR_NODIRATIME, "NODIRATIME" }, { MOUNT_ATTR_NOSYMFOLLOW, "NOSYMFOLLOW" },
};

static void dump_ms(FILE *f, unsigned long flags)
{
	const char *sep = "";
	for (size_t i = 0; i < ARRAY_SIZE(ms_names); i++)
		if (flags & ms_names[i].flag) {
			fprintf(f, "%s%s", sep, ms_names[i].name);
			sep = "|";
			flags &= ~ms_names[i].flag;
		}
	if (flags)
		fprintf(f, "%s%#lx", sep, flags);
	if (!*sep && !flags)
		fprintf(f, "0");
}

static void dump_attr(FILE *f, uint64_t a)
{
	const char *sep = "";
	/* The atime field first: a mode (RELATIME is 0) or, in a clear mask, the whole field. */
	if ((a & MOUNT_ATTR__ATIME) == MOUNT_ATTR__ATIME) {
		fprintf(f, "_ATIME");
		sep = "|";
		a &= ~(uint64_t)MOUNT_ATTR__ATIME;
	}
	for (size_t i = 0; i < ARRAY_SIZE(attr_names); i++)
		if (a & attr_names[i].attr) {
			fprintf(f, "%s%s", sep, attr_names[i].name);
			sep = "|";
			a &= ~attr_names[i].attr;
		}
	if (a)
		fprintf(f, "%s%#" PRIx64, sep, a);
	if (!*sep && !a)
		fprintf(f, "0");
}

static void dump_strv(FILE *f, const char *name, char **v)
{
	if (!v)
		return;
	fprintf(f, "%s: [", name);
	for (size_t i = 0; v[i]; i++)
		fprintf(f, "%s\"%s\"", i ? ", " : "", v[i]);
	fprintf(f, "]\n");
}

static void dump_str(FILE *f, const char *name, const char *s)
{
	if (s)
		fprintf(f, "%s: \"%s\"\n", name, s);
}

static void dump_i64(FILE *f, const char *name, struct oci_opt_i64 o)
{
	if (o.set)
		fprintf(f, "%s: %" PRId64 "\n", name, o.v);
}

static void dump_u64(FILE *f, const char *name, struct oci_opt_u64 o)
{
	if (o.set)
		fprintf(f, "%s: %" PRIu64 "\n", name, o.v);
}

static void dump_caps(FILE *f, const char *name, bool has, uint64_t set)
{
	if (!has)
		return;
	fprintf(f, "process.capabilities.%s:", name);
	for (int c = 0; c <= cella_cap_last(); c++)
		if (set & (UINT64_C(1) << c))
			fprintf(f, " %s", cella_cap_name(c));
	fprintf(f, "\n");
}

static void dump_mappings(FILE *f, const char *name, const struct oci_id_mapping *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s[%zu]: container %u host %u size %u\n", name, i, m[i].container_id, m[i].host_id,
			m[i].size);
}

static void dump_hooks(FILE *f, const char *name, const struct oci_hook *h, size_t n)
{
	char p[128];
	for (size_t i = 0; i < n; i++) {
		snprintf(p, sizeof(p), "hooks.%s[%zu]", name, i);
		fprintf(f, "%s.path: \"%s\"\n", p, h[i].path);
		char sub[160];
		snprintf(sub, sizeof(sub), "%s.args", p);
		dump_strv(f, sub, h[i].args);
		snprintf(sub, sizeof(sub), "%s.env", p);
		dump_strv(f, sub, h[i].env);
		snprintf(sub, sizeof(sub), "%s.timeout", p);
		dump_i64(f, sub, h[i].timeout);
	}
}

static void dump_kv(FILE *f, const char *name, const struct oci_kv *kv, size_t n)
{
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s[\"%s\"]: \"%s\"\n", name, kv[i].key, kv[i].value);
}

static void dump_throttle(FILE *f, const char *name, const struct oci_blkio_throttle *t, size_t n)
{
	for (size_t i = 0; i < n; i++)
		fprintf(f, "linux.resources.blockIO.%s[%zu]: %" PRId64 ":%" PRId64 " rate %" PRIu64 "\n", name, i,
			t[i].major, t[i].minor, t[i].rate);
}

static void dump_process(FILE *f, const struct oci_process *p)
{
	fprintf(f, "process.terminal: %s\n", p->terminal ? "true" : "false");
	if (p->console_size.set)
		fprintf(f, "process.consoleSize: %ux%u\n", p->console_size.width, p->console_size.height);
	fprintf(f, "process.user: uid %u gid %u\n", (unsigned)p->user.uid, (unsigned)p->user.gid);
	if (p->user.n_additional_gids) {
		fprintf(f, "process.user.additionalGids:");
		for (size_t i = 0; i < p->user.n_additional_gids; i++)
			fprintf(f, " %u", (unsigned)p->user.additional_gids[i]);
		fprintf(f, "\n");
	}
	if (p->user.umask.set)
		fprintf(f, "process.user.umask: %04" PRIo64 "\n", p->user.umask.v);
	dump_str(f, "process.user.username", p->user.username);
	dump_strv(f, "process.args", p->args);
	dump_strv(f, "process.env", p->env);
	dump_str(f, "process.cwd", p->cwd);
	if (p->has_caps) {
		const struct oci_capabilities *c = &p->caps;
		dump_caps(f, "bounding", c->has_bounding, c->bounding);
		dump_caps(f, "effective", c->has_effective, c->effective);
		dump_caps(f, "inheritable", c->has_inheritable, c->inheritable);
		dump_caps(f, "permitted", c->has_permitted, c->permitted);
		dump_caps(f, "ambient", c->has_ambient, c->ambient);
	}
	for (size_t i = 0; i < p->n_rlimits; i++)
		fprintf(f, "process.rlimits[%zu]: %s (%d) soft %" PRIu64 " hard %" PRIu64 "\n", i, p->rlimits[i].type,
			p->rlimits[i].resource, p->rlimits[i].soft, p->rlimits[i].hard);
	fprintf(f, "process.noNewPrivileges: %s\n", p->no_new_privileges ? "true" : "false");
	dump_i64(f, "process.oomScoreAdj", p->oom_score_adj);
	dump_str(f, "process.apparmorProfile", p->apparmor_profile);
	dump_str(f, "process.selinuxLabel", p->selinux_label);
}

static void dump_mount(FILE *f, size_t i, const struct oci_mount *m)
{
	char p[64], sub[96];
	snprintf(p, sizeof(p), "mounts[%zu]", i);
	fprintf(f, "%s: \"%s\" type \"%s\" source \"%s\"\n", p, m->destination, m->type ? m->type : "(none)",
		m->source ? m->source : "(none)");
	snprintf(sub, sizeof(sub), "%s.options", p);
	dump_strv(f, sub, m->options);
	fprintf(f, "%s.flags: ", p);
	dump_ms(f, m->flags);
	if (m->clear_flags) {
		fprintf(f, " clear ");
		dump_ms(f, m->clear_flags);
	}
	if (m->propagation) {
		fprintf(f, " propagation ");
		dump_ms(f, m->propagation);
	}
	if (m->bind)
		fprintf(f, " bind");
	if (m->tmpcopyup)
		fprintf(f, " tmpcopyup");
	if (m->idmap)
		fprintf(f, " idmap");
	if (m->ridmap)
		fprintf(f, " ridmap");
	fprintf(f, "\n");
	if (m->rec_attr_set || m->rec_attr_clr) {
		fprintf(f, "%s.recursive: set ", p);
		dump_attr(f, m->rec_attr_set);
		fprintf(f, " clear ");
		dump_attr(f, m->rec_attr_clr);
		fprintf(f, "\n");
	}
	snprintf(sub, sizeof(sub), "%s.data", p);
	dump_str(f, sub, m->data);
	snprintf(sub, sizeof(sub), "%s.uidMappings", p);
	dump_mappings(f, sub, m->uid_mappings, m->n_uid_mappings);
	snprintf(sub, sizeof(sub), "%s.gidMappings", p);
	dump_mappings(f, sub, m->gid_mappings, m->n_gid_mappings);
}

static void dump_resources(FILE *f, const struct oci_resources *r)
{
	for (size_t i = 0; i < r->n_devices; i++) {
		const struct oci_device_cgroup *d = &r->devices[i];
		fprintf(f, "linux.resources.devices[%zu]: %s %c %" PRId64 ":%" PRId64 " %s\n", i,
			d->allow ? "allow" : "deny", d->type, d->major, d->minor, d->access);
	}
	if (r->has_memory) {
		const struct oci_memory *m = &r->memory;
		fprintf(f, "linux.resources.memory: present\n");
		dump_i64(f, "linux.resources.memory.limit", m->limit);
		dump_i64(f, "linux.resources.memory.reservation", m->reservation);
		dump_i64(f, "linux.resources.memory.swap", m->swap);
		dump_i64(f, "linux.resources.memory.kernel", m->kernel);
		dump_i64(f, "linux.resources.memory.kernelTCP", m->kernel_tcp);
		dump_u64(f, "linux.resources.memory.swappiness", m->swappiness);
		if (m->has_disable_oom_killer)
			fprintf(f, "linux.resources.memory.disableOOMKiller: %d\n", m->disable_oom_killer);
		if (m->has_use_hierarchy)
			fprintf(f, "linux.resources.memory.useHierarchy: %d\n", m->use_hierarchy);
		if (m->check_before_update)
			fprintf(f, "linux.resources.memory.checkBeforeUpdate: 1\n");
	}
	if (r->has_cpu) {
		const struct oci_cpu *c = &r->cpu;
		fprintf(f, "linux.resources.cpu: present\n");
		dump_u64(f, "linux.resources.cpu.shares", c->shares);
		dump_i64(f, "linux.resources.cpu.quota", c->quota);
		dump_u64(f, "linux.resources.cpu.period", c->period);
		dump_u64(f, "linux.resources.cpu.burst", c->burst);
		dump_i64(f, "linux.resources.cpu.realtimeRuntime", c->realtime_runtime);
		dump_u64(f, "linux.resources.cpu.realtimePeriod", c->realtime_period);
		dump_i64(f, "linux.resources.cpu.idle", c->idle);
		dump_str(f, "linux.resources.cpu.cpus", c->cpus);
		dump_str(f, "linux.resources.cpu.mems", c->mems);
	}
	if (r->has_pids) {
		fprintf(f, "linux.resources.pids: present\n");
		dump_i64(f, "linux.resources.pids.limit", r->pids.limit);
	}
	if (r->has_blkio) {
		const struct oci_blkio *b = &r->blkio;
		fprintf(f, "linux.resources.blockIO: present\n");
		dump_u64(f, "linux.resources.blockIO.weight", b->weight);
		dump_u64(f, "linux.resources.blockIO.leafWeight", b->leaf_weight);
		for (size_t i = 0; i < b->n_weight_device; i++) {
			const struct oci_blkio_weight_device *d = &b->weight_device[i];
			fprintf(f, "linux.resources.blockIO.weightDevice[%zu]: %" PRId64 ":%" PRId64, i, d->major,
				d->minor);
			if (d->weight.set)
				fprintf(f, " weight %" PRIu64, d->weight.v);
			if (d->leaf_weight.set)
				fprintf(f, " leafWeight %" PRIu64, d->leaf_weight.v);
			fprintf(f, "\n");
		}
		dump_throttle(f, "throttleReadBpsDevice", b->throttle_read_bps, b->n_throttle_read_bps);
		dump_throttle(f, "throttleWriteBpsDevice", b->throttle_write_bps, b->n_throttle_write_bps);
		dump_throttle(f, "throttleReadIOPSDevice", b->throttle_read_iops, b->n_throttle_read_iops);
		dump_throttle(f, "throttleWriteIOPSDevice", b->throttle_write_iops, b->n_throttle_write_iops);
	}
	for (size_t i = 0; i < r->n_hugepage_limits; i++)
		fprintf(f, "linux.resources.hugepageLimits[%zu]: %s %" PRIu64 "\n", i, r->hugepage_limits[i].page_size,
			r->hugepage_limits[i].limit);
	dump_kv(f, "linux.resources.unified", r->unified, r->n_unified);
}

static void dump_seccomp(FILE *f, const struct oci_seccomp *s)
{
	dump_str(f, "linux.seccomp.defaultAction", s->default_action);
	dump_u64(f, "linux.seccomp.defaultErrnoRet", s->default_errno_ret);
	dump_strv(f, "linux.seccomp.architectures", s->architectures);
	dump_strv(f, "linux.seccomp.flags", s->flags);
	dump_str(f, "linux.seccomp.listenerPath", s->listener_path);
	dump_str(f, "linux.seccomp.listenerMetadata", s->listener_metadata);
	for (size_t i = 0; i < s->n_syscalls; i++) {
		const struct oci_seccomp_syscall *sc = &s->syscalls[i];
		char p[64], sub[96];
		snprintf(p, sizeof(p), "linux.seccomp.syscalls[%zu]", i);
		snprintf(sub, sizeof(sub), "%s.names", p);
		dump_strv(f, sub, sc->names);
		fprintf(f, "%s.action: %s\n", p, sc->action);
		snprintf(sub, sizeof(sub), "%s.errnoRet", p);
		dump_u64(f, sub, sc->errno_ret);
		for (size_t k = 0; k < sc->n_args; k++)
			fprintf(f, "%s.args[%zu]: index %u value %" PRIu64 " valueTwo %" PRIu64 " op %s\n", p, k,
				sc->args[k].index, sc->args[k].value, sc->args[k].value_two, sc->args[k].op);
	}
}

static void dump_linux(FILE *f, const struct oci_linux *l)
{
	for (size_t i = 0; i < l->n_namespaces; i++) {
		const struct oci_namespace *ns = &l->namespaces[i];
		fprintf(f, "linux.namespaces[%zu]: %s (clone %#x)%s%s\n", i, oci_ns_type_name(ns->type),
			(unsigned)oci_ns_clone_flag(ns->type), ns->path ? " path " : "", ns->path ? ns->path : "");
	}
	dump_mappings(f, "linux.uidMappings", l->uid_mappings, l->n_uid_mappings);
	dump_mappings(f, "linux.gidMappings", l->gid_mappings, l->n_gid_mappings);
	for (size_t i = 0; i < l->n_devices; i++) {
		const struct oci_device *d = &l->devices[i];
		fprintf(f, "linux.devices[%zu]: \"%s\" %c %" PRId64 ":%" PRId64, i, d->path, d->type, d->major,
			d->minor);
		if (d->file_mode.set)
			fprintf(f, " mode %04" PRIo64, d->file_mode.v);
		if (d->uid.set)
			fprintf(f, " uid %" PRIu64, d->uid.v);
		if (d->gid.set)
			fprintf(f, " gid %" PRIu64, d->gid.v);
		fprintf(f, "\n");
	}
	dump_str(f, "linux.cgroupsPath", l->cgroups_path);
	if (l->has_resources)
		fprintf(f, "linux.resources: present\n");
	dump_resources(f, &l->resources);
	if (l->rootfs_propagation) {
		fprintf(f, "linux.rootfsPropagation: ");
		dump_ms(f, l->rootfs_propagation);
		fprintf(f, "\n");
	}
	dump_strv(f, "linux.maskedPaths", l->masked_paths);
	dump_strv(f, "linux.readonlyPaths", l->readonly_paths);
	dump_kv(f, "linux.sysctl", l->sysctl, l->n_sysctl);
	dump_str(f, "linux.mountLabel", l->mount_label);
	if (l->seccomp)
		dump_seccomp(f, l->seccomp);
	dump_str(f, "linux.personality.domain", l->personality_domain);
	dump_strv(f, "linux.personality.flags", l->personality_flags);
}

static char *dump_config(const struct oci_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	dump_str(f, "ociVersion", c->oci_version);
	fprintf(f, "root: \"%s\"%s\n", c->root.path, c->root.readonly ? " readonly" : "");
	dump_process(f, &c->process);
	dump_str(f, "hostname", c->hostname);
	dump_str(f, "domainname", c->domainname);
	for (size_t i = 0; i < c->n_mounts; i++)
		dump_mount(f, i, &c->mounts[i]);
	const struct oci_hooks *h = &c->hooks;
	dump_hooks(f, "prestart", h->prestart, h->n_prestart);
	dump_hooks(f, "createRuntime", h->create_runtime, h->n_create_runtime);
	dump_hooks(f, "createContainer", h->create_container, h->n_create_container);
	dump_hooks(f, "startContainer", h->start_container, h->n_start_container);
	dump_hooks(f, "poststart", h->poststart, h->n_poststart);
	dump_hooks(f, "poststop", h->poststop, h->n_poststop);
	dump_kv(f, "annotations", c->annotations, c->n_annotations);
	if (c->has_linux) {
		fprintf(f, "linux: present\n");
		dump_linux(f, &c->linux_);
	}
	fclose(f);
	return buf;
}

/* ---- golden file helpers ---- */

static char *read_text(const char *path)
{
	char *s = NULL;
	size_t len;
	if (cella_read_file(path, 1 << 20, &s, &len, NULL) < 0)
		return NULL;
	return s;
}

static void write_text(const char *path, const char *s)
{
	if (cella_write_file(path, s, strlen(s), 0644, NULL) < 0)
		printf("# could not write %s\n", path);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.json names in dir, sorted, NULL-terminated. */
static char **list_json(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return NULL;
	size_t n = 0, cap = 16;
	char **v = calloc(cap, sizeof(char *));
	struct dirent *e;
	while (v && (e = readdir(d))) {
		size_t l = strlen(e->d_name);
		if (l < 6 || strcmp(e->d_name + l - 5, ".json"))
			continue;
		if (n + 2 > cap) {
			cap *= 2;
			char **nv = realloc(v, cap * sizeof(char *));
			if (!nv)
				break;
			v = nv;
		}
		v[n++] = strndup(e->d_name, l - 5);
		v[n] = NULL;
	}
	closedir(d);
	if (v)
		qsort(v, n, sizeof(char *), cmp_str);
	return v;
}

static void print_diff(const char *got, const char *want)
{
	/* First differing line, enough to see what changed. */
	size_t line = 1;
	const char *g = got, *w = want;
	while (*g && *w && *g == *w) {
		if (*g == '\n')
			line++;
		g++;
		w++;
	}
	const char *ge = strchr(g, '\n'), *we = strchr(w, '\n');
	while (g > got && g[-1] != '\n')
		g--;
	while (w > want && w[-1] != '\n')
		w--;
	printf("#   first difference at line %zu:\n#   got:  %.*s\n#   want: %.*s\n", line,
	       (int)(ge ? ge - g : (long)strlen(g)), g, (int)(we ? we - w : (long)strlen(w)), w);
}

static void test_good(void)
{
	char dir[4200];
	snprintf(dir, sizeof(dir), "%s/tests/unit/config/good", srcdir);
	_cleanup_strv_ char **names = list_json(dir);
	TAP_OK(names && names[0], "good cases found in %s", dir);
	for (size_t i = 0; names && names[i]; i++) {
		char json[4400], expect[4400];
		snprintf(json, sizeof(json), "%s/%s.json", dir, names[i]);
		snprintf(expect, sizeof(expect), "%s/%s.expect", dir, names[i]);
		struct cella_err err = { 0 };
		struct oci_config *cfg = NULL;
		int r = oci_config_load_as(json, "config.json", &cfg, &err);
		TAP_OK(r == 0 && cfg, "good/%s parses", names[i]);
		if (r < 0) {
			printf("#   error: %s\n", err.msg);
			continue;
		}
		_cleanup_free_ char *got = dump_config(cfg);
		oci_config_free(cfg);
		if (update_golden)
			write_text(expect, got);
		_cleanup_free_ char *want = read_text(expect);
		bool same = got && want && !strcmp(got, want);
		TAP_OK(same, "good/%s matches %s.expect", names[i], names[i]);
		if (!same && got && want)
			print_diff(got, want);
	}
}

static void test_bad(void)
{
	char dir[4200];
	snprintf(dir, sizeof(dir), "%s/tests/unit/config/bad", srcdir);
	_cleanup_strv_ char **names = list_json(dir);
	size_t n = cella_strv_len(names);
	TAP_OK(n >= 25, "%zu bad cases found in %s", n, dir);
	for (size_t i = 0; i < n; i++) {
		char json[4400], errfile[4400];
		snprintf(json, sizeof(json), "%s/%s.json", dir, names[i]);
		snprintf(errfile, sizeof(errfile), "%s/%s.err", dir, names[i]);
		struct cella_err err = { 0 };
		struct oci_config *cfg = (struct oci_config *)&err; /* sentinel: must stay untouched */
		int r = oci_config_load_as(json, "config.json", &cfg, &err);
		TAP_OK(r < 0 && cfg == (struct oci_config *)&err, "bad/%s is rejected", names[i]);
		if (r == 0) {
			oci_config_free(cfg);
			continue;
		}
		if (update_golden) {
			char line[CELLA_ERR_MSG_MAX + 2];
			snprintf(line, sizeof(line), "%s\n", err.msg);
			write_text(errfile, line);
		}
		_cleanup_free_ char *want = read_text(errfile);
		if (want && *want && want[strlen(want) - 1] == '\n')
			want[strlen(want) - 1] = '\0';
		TAP_STREQ(err.msg, want, "bad/%s message", names[i]);
	}
}

/* ---- API-level tests ---- */

static void test_default_spec(void)
{
	struct cella_err err = { 0 };
	_cleanup_json_ json_t *def = oci_config_default(false);
	TAP_OK(def != NULL, "oci_config_default(false)");
	char path[4200];
	snprintf(path, sizeof(path), "%s/tests/unit/config/good/runc-spec.json", srcdir);
	_cleanup_json_ json_t *golden = NULL;
	TAP_OK(cj_load_file(path, "runc-spec.json", 1 << 20, &golden, &err) == 0, "load runc-spec.json: %s",
	       err.msg);
	TAP_OK(def && golden && json_equal(def, golden), "default spec equals good/runc-spec.json");

	struct oci_config *cfg = NULL;
	TAP_OK(oci_config_parse(def, "default", &cfg, &err) == 0, "default spec parses: %s", err.msg);
	if (cfg) {
		TAP_OK(oci_config_has_namespace(cfg, OCI_NS_PID) && !oci_config_has_namespace(cfg, OCI_NS_USER),
		       "default has pid, no user namespace");
		TAP_OK(cfg->json == def, "cfg->json keeps the document");
		oci_config_free(cfg);
	}

	_cleanup_json_ json_t *rl = oci_config_default(true);
	cfg = NULL;
	TAP_OK(rl && oci_config_parse(rl, "default", &cfg, &err) == 0, "rootless spec parses: %s", err.msg);
	if (cfg) {
		TAP_OK(oci_config_has_namespace(cfg, OCI_NS_USER) && !oci_config_has_namespace(cfg, OCI_NS_NET),
		       "rootless: user namespace, no network namespace");
		TAP_OK(cfg->linux_.n_uid_mappings == 1 && cfg->linux_.uid_mappings[0].host_id == geteuid() &&
			       cfg->linux_.uid_mappings[0].container_id == 0,
		       "rootless: uid mapping maps euid to 0");
		TAP_OK(cfg->linux_.n_gid_mappings == 1 && cfg->linux_.gid_mappings[0].host_id == getegid(),
		       "rootless: gid mapping maps egid");
		TAP_OK(!cfg->linux_.has_resources, "rootless: no resources");
		bool sys_rbind = false, no_gid_opt = true;
		for (size_t i = 0; i < cfg->n_mounts; i++) {
			struct oci_mount *m = &cfg->mounts[i];
			if (!strcmp(m->destination, "/sys"))
				sys_rbind = m->bind && (m->flags & MS_REC) && (m->flags & MS_RDONLY);
			if (m->data && strstr(m->data, "gid="))
				no_gid_opt = false;
		}
		TAP_OK(sys_rbind, "rootless: /sys is a read-only rbind");
		TAP_OK(no_gid_opt, "rootless: no gid= mount options");
		oci_config_free(cfg);
	}
}

static void test_parse_api(void)
{
	struct cella_err err = { 0 };
	struct oci_config *cfg = NULL;
	_cleanup_json_ json_t *arr = json_array();
	TAP_OK(oci_config_parse(arr, "config.json", &cfg, &err) == -EINVAL && !cfg, "non-object rejected");
	TAP_STREQ(err.msg, "config.json: expected a JSON object, got array", "non-object message");

	TAP_OK(oci_config_load("/nonexistent/bundle/config.json", &cfg, &err) < 0 && !cfg, "missing file");
	TAP_OK(strstr(err.msg, "/nonexistent/bundle/config.json") != NULL, "missing file names the path: %s",
	       err.msg);

	/* oci_config_load names the document after the file. */
	char path[4200];
	snprintf(path, sizeof(path), "%s/tests/unit/config/bad/swappiness-over-100.json", srcdir);
	TAP_OK(oci_config_load(path, &cfg, &err) < 0, "load bad file");
	TAP_STREQ(err.msg, "swappiness-over-100.json: linux.resources.memory.swappiness: 101 is out of range (0..100)",
		  "load prefixes the base name");

	/* A bare process object, as exec --process takes. */
	const char *proc = "{\"args\":[\"ls\",\"-l\"],\"cwd\":\"/tmp\",\"env\":[\"A=1\"],"
			   "\"capabilities\":{\"bounding\":[\"CAP_SYS_ADMIN\"]},\"user\":{\"uid\":5,\"gid\":6}}";
	_cleanup_json_ json_t *pj = NULL;
	TAP_OK(cj_load_string(proc, strlen(proc), "process.json", &pj, &err) == 0, "load process json");
	struct oci_process p = { 0 };
	TAP_OK(oci_process_parse(pj, "", &p, &err) == 0, "oci_process_parse: %s", err.msg);
	TAP_OK(p.args && !strcmp(p.args[1], "-l") && p.user.uid == 5 && p.user.gid == 6 &&
		       p.caps.bounding == (UINT64_C(1) << 21),
	       "process fields");
	oci_process_clear(&p);
	oci_process_clear(&p); /* idempotent */

	const char *badproc = "{\"args\":[\"ls\"],\"cwd\":\"rel\"}";
	_cleanup_json_ json_t *bj = NULL;
	TAP_OK(cj_load_string(badproc, strlen(badproc), "process.json", &bj, &err) == 0, "load bad process json");
	TAP_OK(oci_process_parse(bj, "", &p, &err) < 0, "relative cwd in bare process");
	TAP_STREQ(err.msg, "cwd: must be an absolute path, got \"rel\"", "bare process message has no prefix");
	oci_process_clear(&p);

	TAP_STREQ(oci_ns_type_name(OCI_NS_NET), "network", "ns name");
	TAP_OK(oci_ns_type_from_name("cgroup") == OCI_NS_CGROUP && oci_ns_type_from_name("net") == -1,
	       "ns from name");
	oci_config_free(NULL);
}

static void test_mount_options(void)
{
	struct cella_err err = { 0 };
#define S(x) ((char *)(x)) /* option vectors are char ** in the struct */
	char *opts[] = { S("rbind"),	S("ro"),	S("nosuid"),   S("rw"),
			 S("rslave"),	S("rnoexec"),	S("rrelatime"), S("mode=755"),
			 S("size=1m"),	S("tmpcopyup"), S("defaults"),	S(""),
			 NULL };
	struct oci_mount m = { .options = opts };
	TAP_OK(oci_mount_parse_options(&m, "mounts[0]", &err) == 0, "parse options");
	TAP_OK(m.bind && (m.flags & (MS_BIND | MS_REC)) == (MS_BIND | MS_REC), "rbind sets MS_BIND|MS_REC");
	TAP_OK(!(m.flags & MS_RDONLY) && (m.clear_flags & MS_RDONLY), "later rw overrides ro");
	TAP_OK(m.flags & MS_NOSUID, "nosuid");
	TAP_OK(m.propagation == (MS_SLAVE | MS_REC), "rslave propagation");
	TAP_OK(m.rec_attr_set == MOUNT_ATTR_NOEXEC && (m.rec_attr_clr & MOUNT_ATTR__ATIME) == MOUNT_ATTR__ATIME,
	       "recursive noexec + relatime");
	TAP_STREQ(m.data, "mode=755,size=1m", "data keeps filesystem options");
	TAP_OK(m.tmpcopyup, "tmpcopyup");
	/* Reparsing resets everything first. */
	char *opts2[] = { S("ro"), NULL };
	m.options = opts2;
	TAP_OK(oci_mount_parse_options(&m, "mounts[0]", &err) == 0 && m.flags == MS_RDONLY && !m.data && !m.bind &&
		       !m.propagation && !m.tmpcopyup && !m.rec_attr_set,
	       "reparse resets state");
	free(m.data);

	struct oci_mount b = { .type = S("bind") };
	TAP_OK(oci_mount_parse_options(&b, "mounts[1]", &err) == 0 && b.bind && (b.flags & MS_BIND),
	       "type bind without options is a bind mount");
	free(b.data);
}

/* Not run from the repository root: walk up from build/[asan/]tests/unit/test_config. */
static void find_srcdir(void)
{
	char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return;
	exe[n] = '\0';
	char *slash;
	while ((slash = strrchr(exe, '/')) && slash != exe) {
		*slash = '\0';
		char probe[4200];
		snprintf(probe, sizeof(probe), "%s/tests/unit/config", exe);
		if (access(probe, F_OK) == 0) {
			snprintf(srcdir, sizeof(srcdir), "%s", exe);
			return;
		}
	}
}

/* Mutation pass: every node of good/full.json replaced by each JSON type, and every object member
 * deleted. Each variant must either parse or fail with one "config.json: <path>: ..." message, never
 * crash or leak (the ASan build checks), and a failure must leave *out untouched. */
static size_t mutations, mutation_failures;

static void try_variant(json_t *root)
{
	struct cella_err err = { 0 };
	struct oci_config *cfg = NULL;
	int r = oci_config_parse(root, "config.json", &cfg, &err);
	mutations++;
	if (r == 0) {
		_cleanup_free_ char *d = dump_config(cfg);
		oci_config_free(cfg);
		return;
	}
	if (cfg || strncmp(err.msg, "config.json: ", 13) || strlen(err.msg) < 16 || strchr(err.msg, '\n')) {
		if (mutation_failures++ < 5)
			printf("#   bad failure (r=%d): %s\n", r, err.msg);
	}
}

static void mutate(json_t *root, json_t *node)
{
	json_t *repl[] = { json_null(), json_true(), json_integer(-1), json_integer(1 << 20), json_real(0.5),
			   json_string("x"), json_string(""), json_array(), json_object() };
	const char *key;
	json_t *child;
	size_t i;
	if (json_is_object(node)) {
		/* Keys first: deleting and re-adding a member moves it, which would upset iteration. */
		size_t n = json_object_size(node), k = 0;
		_cleanup_strv_ char **keys = calloc(n + 1, sizeof(char *));
		json_object_foreach(node, key, child)
			if (keys && k < n)
				keys[k++] = strdup(key);
		for (k = 0; keys && keys[k]; k++) {
			child = json_object_get(node, keys[k]);
			json_t *saved = json_incref(child);
			for (size_t t = 0; t < ARRAY_SIZE(repl); t++) {
				json_object_set(node, keys[k], repl[t]);
				try_variant(root);
			}
			json_object_del(node, keys[k]);
			try_variant(root);
			json_object_set_new(node, keys[k], saved);
			mutate(root, saved);
		}
	} else if (json_is_array(node)) {
		for (i = 0; i < json_array_size(node); i++) {
			json_t *saved = json_incref(json_array_get(node, i));
			for (size_t k = 0; k < ARRAY_SIZE(repl); k++) {
				json_array_set(node, i, repl[k]);
				try_variant(root);
			}
			json_array_set_new(node, i, saved);
			mutate(root, saved);
		}
	}
	for (size_t k = 0; k < ARRAY_SIZE(repl); k++)
		json_decref(repl[k]);
}

static void test_mutations(void)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/tests/unit/config/good/full.json", srcdir);
	struct cella_err err = { 0 };
	_cleanup_json_ json_t *doc = NULL;
	TAP_OK(cj_load_file(path, "full.json", 1 << 20, &doc, &err) == 0, "load full.json for mutation");
	if (!doc)
		return;
	mutate(doc, doc);
	TAP_OK(mutations > 1000 && mutation_failures == 0, "%zu mutated configs: no crash, one clean message each",
	       mutations);
	_cleanup_json_ json_t *again = NULL;
	TAP_OK(cj_load_file(path, "full.json", 1 << 20, &again, &err) == 0 && json_equal(doc, again),
	       "mutation restored the document");
}

int main(void)
{
	const char *env = getenv("CELLA_SRCDIR");
	if (env && *env)
		snprintf(srcdir, sizeof(srcdir), "%s", env);
	else if (access("tests/unit/config", F_OK) < 0)
		find_srcdir();
	update_golden = getenv("CELLA_UPDATE_GOLDEN") && !strcmp(getenv("CELLA_UPDATE_GOLDEN"), "1");

	test_good();
	test_bad();
	test_default_spec();
	test_parse_api();
	test_mount_options();
	test_mutations();
	return tap_done();
}
