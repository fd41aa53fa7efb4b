/* The OCI runtime-spec config.json, parsed into plain C structs (runtime-spec 1.0.2 .. 1.2).
 * Parsing validates types and semantics; every error names the JSON path:
 * "config.json: linux.resources.memory.limit: expected integer, got string". */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

struct cella_err;

/* Optional scalars carry a presence flag: OCI distinguishes "unset" from 0. */
struct oci_opt_i64 { bool set; int64_t v; };
struct oci_opt_u64 { bool set; uint64_t v; };

struct oci_rlimit {
	int resource;        /* RLIMIT_* number, resolved from "RLIMIT_NOFILE" etc. */
	char *type;          /* as written */
	uint64_t hard, soft;
};

struct oci_capabilities {
	/* Bit sets of capability numbers (bit n = CAP n); names resolved at parse time. */
	uint64_t bounding, effective, inheritable, permitted, ambient;
	bool has_bounding, has_effective, has_inheritable, has_permitted, has_ambient;
};

struct oci_user {
	uid_t uid;
	gid_t gid;
	gid_t *additional_gids;
	size_t n_additional_gids;
	struct oci_opt_u64 umask;
	char *username; /* Windows only; kept for round-trip */
};

struct oci_console_size { bool set; unsigned height, width; };

struct oci_process {
	bool terminal;
	struct oci_console_size console_size;
	struct oci_user user;
	char **args; /* NULL-terminated, non-empty */
	char **env;  /* NULL-terminated, may be NULL */
	char *cwd;   /* absolute */
	struct oci_capabilities caps;
	bool has_caps;
	struct oci_rlimit *rlimits;
	size_t n_rlimits;
	bool no_new_privileges;
	struct oci_opt_i64 oom_score_adj;
	char *apparmor_profile;
	char *selinux_label;
};

struct oci_root {
	char *path; /* as written (relative to bundle or absolute) */
	bool readonly;
};

/* A parsed mount option set: flags to set, flags to clear, propagation, and data for the fs. */
struct oci_mount {
	char *destination; /* absolute inside the container */
	char *type;        /* may be NULL (then bind if options say so) */
	char *source;
	char **options;    /* as written */
	unsigned long flags;       /* MS_* to apply */
	unsigned long clear_flags; /* MS_* explicitly cleared ("rw", "suid", ...) for remounts */
	unsigned long propagation; /* MS_SHARED/MS_SLAVE/MS_PRIVATE/MS_UNBINDABLE (| MS_REC), 0 if none */
	char *data;                /* comma-joined options that are not flags, for mount(2) data */
	bool bind;                 /* "bind" or "rbind" (MS_BIND in flags; MS_REC too for rbind) */
	bool tmpcopyup;
	struct oci_id_mapping *uid_mappings, *gid_mappings; /* idmapped mounts (runtime-spec 1.1) */
	size_t n_uid_mappings, n_gid_mappings;
	/* Recursive mount_setattr(2) attributes from runc's "rro", "rnosuid", "rnoatime", ... options:
	 * MOUNT_ATTR_* to set and to clear (atime modes also put MOUNT_ATTR__ATIME in rec_attr_clr). */
	uint64_t rec_attr_set, rec_attr_clr;
	bool idmap, ridmap; /* "idmap" / "ridmap" options (runtime-spec 1.2) */
};

struct oci_hook {
	char *path;
	char **args;
	char **env;
	struct oci_opt_i64 timeout; /* seconds, > 0 */
};

struct oci_hooks {
	struct oci_hook *prestart, *create_runtime, *create_container, *start_container, *poststart,
		*poststop;
	size_t n_prestart, n_create_runtime, n_create_container, n_start_container, n_poststart,
		n_poststop;
};

enum oci_ns_type { OCI_NS_PID, OCI_NS_NET, OCI_NS_MOUNT, OCI_NS_IPC, OCI_NS_UTS, OCI_NS_USER,
		   OCI_NS_CGROUP, OCI_NS_TIME, OCI_NS_COUNT };

struct oci_namespace {
	enum oci_ns_type type;
	char *path; /* NULL = create a new one; else join this /proc/PID/ns/... file */
};

struct oci_id_mapping { uint32_t container_id, host_id, size; };

struct oci_device {
	char *path;
	char type; /* 'c', 'b', 'u', 'p' */
	int64_t major, minor;
	struct oci_opt_u64 file_mode;
	struct oci_opt_u64 uid, gid;
};

struct oci_device_cgroup {
	bool allow;
	char type;         /* 'a', 'c', 'b' ('a' when absent) */
	int64_t major, minor; /* -1 = wildcard */
	char access[4];    /* subset of "rwm" */
};

struct oci_memory {
	struct oci_opt_i64 limit, reservation, swap, kernel, kernel_tcp;
	struct oci_opt_u64 swappiness;
	bool disable_oom_killer, has_disable_oom_killer;
	bool use_hierarchy, has_use_hierarchy;
	bool check_before_update;
};

struct oci_cpu {
	struct oci_opt_u64 shares, period, realtime_period;
	struct oci_opt_i64 quota, realtime_runtime, idle;
	char *cpus, *mems; /* cpuset lists */
	struct oci_opt_u64 burst; /* runtime-spec 1.1 */
};

struct oci_pids { struct oci_opt_i64 limit; };

struct oci_blkio_weight_device { int64_t major, minor; struct oci_opt_u64 weight, leaf_weight; };
struct oci_blkio_throttle { int64_t major, minor; uint64_t rate; };

struct oci_blkio {
	struct oci_opt_u64 weight, leaf_weight;
	struct oci_blkio_weight_device *weight_device;
	size_t n_weight_device;
	struct oci_blkio_throttle *throttle_read_bps, *throttle_write_bps, *throttle_read_iops,
		*throttle_write_iops;
	size_t n_throttle_read_bps, n_throttle_write_bps, n_throttle_read_iops, n_throttle_write_iops;
};

struct oci_hugepage_limit { char *page_size; uint64_t limit; };

struct oci_kv { char *key, *value; };

struct oci_resources {
	struct oci_device_cgroup *devices;
	size_t n_devices;
	struct oci_memory memory;
	bool has_memory;
	struct oci_cpu cpu;
	bool has_cpu;
	struct oci_pids pids;
	bool has_pids;
	struct oci_blkio blkio;
	bool has_blkio;
	struct oci_hugepage_limit *hugepage_limits;
	size_t n_hugepage_limits;
	struct oci_kv *unified; /* cgroup v2 "unified" key/values */
	size_t n_unified;
};

struct oci_seccomp_arg { unsigned index; uint64_t value, value_two; char *op; };
struct oci_seccomp_syscall {
	char **names;
	char *action;
	struct oci_opt_u64 errno_ret;
	struct oci_seccomp_arg *args;
	size_t n_args;
};
struct oci_seccomp {
	char *default_action;
	struct oci_opt_u64 default_errno_ret;
	char **architectures;
	char **flags;
	char *listener_path;
	char *listener_metadata;
	struct oci_seccomp_syscall *syscalls;
	size_t n_syscalls;
};

struct oci_linux {
	struct oci_namespace namespaces[OCI_NS_COUNT];
	size_t n_namespaces;
	struct oci_id_mapping *uid_mappings, *gid_mappings;
	size_t n_uid_mappings, n_gid_mappings;
	struct oci_device *devices;
	size_t n_devices;
	char *cgroups_path; /* NULL = runtime chooses */
	struct oci_resources resources;
	bool has_resources;
	unsigned long rootfs_propagation; /* MS_* | MS_REC, 0 = default (rprivate) */
	char **masked_paths;    /* NULL = none */
	char **readonly_paths;
	struct oci_kv *sysctl;
	size_t n_sysctl;
	char *mount_label;
	struct oci_seccomp *seccomp; /* NULL = none */
	char *personality_domain; /* "LINUX" or "LINUX32", NULL = unset */
	char **personality_flags;
};

struct oci_config {
	char *oci_version;
	struct oci_root root;
	bool has_root;
	struct oci_process process;
	bool has_process;
	char *hostname;
	char *domainname;
	struct oci_mount *mounts;
	size_t n_mounts;
	struct oci_hooks hooks;
	struct oci_kv *annotations;
	size_t n_annotations;
	struct oci_linux linux_;
	bool has_linux;
	json_t *json; /* the parsed document, kept for state/annotation pass-through */
};

/* Parses and validates a config document. what = name used in messages ("config.json").
 * On error *out is untouched and err names the JSON path. */
int oci_config_parse(json_t *doc, const char *what, struct oci_config **out, struct cella_err *err);
/* Messages are prefixed with the file's base name ("config.json: ..."). */
int oci_config_load(const char *path, struct oci_config **out, struct cella_err *err);
/* Same, naming the document `what` in messages. */
int oci_config_load_as(const char *path, const char *what, struct oci_config **out, struct cella_err *err);
void oci_config_free(struct oci_config *cfg);

/* A bare process object (as `exec --process process.json` takes), validated like config.json's
 * "process"; path is the JSON path for messages ("" for a top-level document). Frees with
 * oci_process_clear (which also accepts a partly filled struct after an error). */
int oci_process_parse(const json_t *j, const char *path, struct oci_process *out, struct cella_err *err);
void oci_process_clear(struct oci_process *p);

/* Mount option parsing (shared with runtime mount code): fills flags, clear_flags, propagation,
 * data, bind, tmpcopyup from options. Unknown options go to data. path is for messages. */
int oci_mount_parse_options(struct oci_mount *m, const char *path, struct cella_err *err);

/* The default config that `cella spec` writes (like runc's), with optional rootless flavour. */
json_t *oci_config_default(bool rootless);

bool oci_config_has_namespace(const struct oci_config *cfg, enum oci_ns_type type);
const struct oci_namespace *oci_config_namespace(const struct oci_config *cfg, enum oci_ns_type type);
const char *oci_ns_type_name(enum oci_ns_type type); /* "pid", "network", ... as in config.json */
int oci_ns_type_from_name(const char *name);         /* enum value, or -1 if unknown */
int oci_ns_clone_flag(enum oci_ns_type type);         /* CLONE_NEWPID, ... */
