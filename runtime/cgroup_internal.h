/* Internals shared by runtime/cgroup*.c; not part of the API. */
#pragma once
#include "runtime/cgroup.h"

#include <stdbool.h>
#include <stddef.h>

struct cella_err;
struct oci_resources;

/* One mounted hierarchy of the host. */
struct cg_hier {
	bool v2;
	char *mount;       /* mount point */
	char *mount_root;  /* the mount's root inside the hierarchy ("/" normally) */
	char *controllers; /* v1: "cpu,cpuacct" / "name=systemd"; v2: controllers available, "cpu,io,..." */
	char *own;         /* the runtime's own cgroup in this hierarchy, NULL if unknown */
};

struct cgroup_manager {
	enum cgroup_mode mode;
	bool fake;
	struct cg_hier *h;
	size_t n;
};

/* One directory of an instance. */
struct cg_dir {
	bool v2;
	char *controllers; /* as in cg_hier; for v2 only the controllers driven through v2 */
	char *mount;
	char *path;        /* absolute directory */
	char *rel;         /* path below the hierarchy root, "/pods/x" */
	int created;       /* trailing components of rel that we created (removed at destroy) */
	bool fake;         /* fake cgroupfs: writes append "value\n" so tests see every write in order */
};

struct cgroup_instance {
	enum cgroup_mode mode;
	bool fake;
	struct cg_dir *d;
	size_t n;
};

/* Does the comma-separated list contain name? */
bool cg_list_has(const char *list, const char *name);
/* The directory driving controller ("memory", "io", "hugetlb"), or NULL. */
struct cg_dir *cg_route(struct cgroup_instance *inst, const char *controller);
struct cg_dir *cg_v2_dir(struct cgroup_instance *inst);

/* Writes value to d->path/file (never creates files; in fake mode appends a line). Errors read
 * "cgroup v1 memory: write memory.limit_in_bytes=1048576 in DIR: strerror". */
int cg_write(const struct cg_dir *d, const char *file, const char *value, struct cella_err *err);
/* The same through *fd, opened on first use and kept for the next value (the caller closes it):
 * each write(2) to a cgroup file is one value. */
int cg_write_keep(const struct cg_dir *d, int *fd, const char *file, const char *value, struct cella_err *err);
int cg_writef(const struct cg_dir *d, const char *file, struct cella_err *err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Reads d->path/file (trailing whitespace trimmed) into a malloc'd string. */
int cg_read(const struct cg_dir *d, const char *file, char **out, struct cella_err *err);
bool cg_has_file(const struct cg_dir *d, const char *file);
/* "cgroup v1 memory" / "cgroup v2" for messages. */
const char *cg_label(const struct cg_dir *d, char *buf, size_t cap);

/* Device rules in final order (deny-all first). type 'a','b','c'; major/minor -1 = wildcard. */
struct cg_dev_rule {
	bool allow;
	char type;
	long long major, minor;
	char access[4];
};
int cg_device_rules(const struct cgroup_params *p, struct cg_dev_rule **out, size_t *n, struct cella_err *err);
/* "c 1:3 rwm", "a *:* rwm" */
void cg_dev_rule_string(const struct cg_dev_rule *r, char *buf, size_t cap);
/* True when the rules are only the implicit default set (no user rule beyond deny-all). */
bool cg_devices_default_only(const struct cgroup_params *p);

/* Backends: apply one resource group to its directory. */
int cg_v1_memory(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v1_cpu(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v1_cpuset_init(const struct cg_dir *d, struct cella_err *err);
int cg_v1_blkio(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v1_hugetlb(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v1_devices(const struct cg_dir *d, const struct cg_dev_rule *rules, size_t n, struct cella_err *err);

int cg_v2_memory(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v2_cpu(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v2_io(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v2_hugetlb(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_v2_unified(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
/* Enables controllers (comma list) in cgroup.subtree_control of every ancestor of d below the mount.
 * required=false: failures are ignored. */
int cg_v2_enable(const struct cg_dir *d, const char *controllers, bool required, struct cella_err *err);

/* Common to both: cpuset.cpus/mems, pids.max. */
int cg_cpuset(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);
int cg_pids(const struct cg_dir *d, const struct oci_resources *r, struct cella_err *err);

/* Builds the BPF_PROG_TYPE_CGROUP_DEVICE program for rules (malloc'd instructions). */
struct bpf_insn;
int cg_bpf_build(const struct cg_dev_rule *rules, size_t n, struct bpf_insn **out, size_t *n_out,
		 struct cella_err *err);
/* Loads that program and attaches it to the v2 directory; in fake mode it is only built. */
int cg_v2_devices(const struct cg_dir *d, bool fake, const struct cg_dev_rule *rules, size_t n,
		  struct cella_err *err);

/* Validation done before anything is created. */
int cg_validate_resources(const struct oci_resources *r, struct cella_err *err);
