/* Cgroup manager: creates a container's cgroup in every hierarchy of the host, applies
 * linux.resources, moves processes in, lists them, and removes everything again.
 *
 * Hosts: pure v2 (cgroup2 at /sys/fs/cgroup), pure v1 (one mount per controller set, including
 * co-mounted "cpu,cpuacct" and named hierarchies such as name=systemd) and hybrid (v1 controllers
 * plus a cgroup2 mount, usually /sys/fs/cgroup/unified). On hybrid hosts every controller that a v1
 * hierarchy has is driven through v1; the container also gets a directory in the cgroup2 tree (so it
 * is tracked there, as runc does) and only controllers that exist solely in v2 (e.g. hugetlb) and
 * linux.resources.unified keys for them are applied there.
 *
 * Paths (linux.cgroupsPath):
 *   absolute "/a/b"  -> <hierarchy mount>/a/b in every hierarchy (runc semantics);
 *   relative "a/b"   -> <runtime's own cgroup in that hierarchy (from /proc/self/cgroup)>/a/b;
 *   NULL or ""       -> "/<id>" (absolute, as crun; no shared parent to make and remove each time);
 *   "slice:prefix:name" (systemd driver form) -> error "systemd cgroup driver is not supported".
 *   ".." components are resolved lexically and never climb above the hierarchy root / own cgroup.
 *
 * Every function returns 0 or a negative errno and fills err. Messages name the file and value:
 *   "cgroup v1 memory: write memory.limit_in_bytes=1048576 in /sys/fs/cgroup/memory/x: ..."
 * and validation errors name the config path: "linux.resources.cpu.cpus: invalid cpu list \"a-b\"". */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

struct cella_err;
struct oci_resources;
struct oci_device;

enum cgroup_mode {
	CGROUP_MODE_V1,     /* only cgroup v1 hierarchies */
	CGROUP_MODE_V2,     /* only the unified hierarchy */
	CGROUP_MODE_HYBRID, /* v1 hierarchies plus a cgroup2 mount */
};

struct cgroup_manager; /* the host's (or a fake) cgroup layout; cheap to open, read-only after open */
struct cgroup_instance; /* one container's cgroup directories */

struct cgroup_manager_opts {
	const char *mountinfo;   /* NULL = "/proc/self/mountinfo" */
	const char *proc_cgroup; /* NULL = "/proc/self/cgroup" (the runtime's own cgroups) */
	/* Only cgroup mounts at or below this directory are used; NULL = "/sys/fs/cgroup". */
	const char *root;
	/* Unit tests: the tree is a plain directory that imitates cgroupfs. A new directory gets
	 * empty copies of its parent's files (as the kernel would show them), removal unlinks the
	 * files first, and no process is ever signalled. */
	bool fake;
};

/* Detects the layout. opts NULL = the real host. Fails with ENOENT ("no cgroup hierarchy mounted
 * under /sys/fs/cgroup") when nothing is mounted. */
int cgroup_manager_open(const struct cgroup_manager_opts *opts, struct cgroup_manager **out,
			struct cella_err *err);
void cgroup_manager_free(struct cgroup_manager *mgr);
enum cgroup_mode cgroup_manager_mode(const struct cgroup_manager *mgr);
const char *cgroup_mode_name(enum cgroup_mode mode); /* "v1", "v2", "hybrid" */

/* What cgroup_create needs from config.json. */
struct cgroup_params {
	const char *id;                        /* container id (required) */
	const char *cgroups_path;              /* linux.cgroupsPath, NULL = default */
	const struct oci_resources *resources; /* linux.resources, NULL = none */
	/* linux.devices: each gets an "allow rwm" rule after the resource rules (as runc does). */
	const struct oci_device *devices;
	size_t n_devices;
	/* The device cgroup always starts from "deny all", then linux.resources.devices in order, then
	 * runc's default allow list (null, zero, full, random, urandom, tty, console, ptmx, every pts,
	 * net/tun, and "m" for every c/b device), then linux.devices. Set to skip the device
	 * cgroup entirely (rootless). */
	bool skip_devices;
};

/* Creates the container's directory in every hierarchy (and the v2 directory), applies the
 * resources, then moves pid in (pid <= 0: move nothing; use cgroup_enter later). On failure
 * everything created so far is removed again and *out is untouched. */
int cgroup_create(struct cgroup_manager *mgr, const struct cgroup_params *params, pid_t pid,
		  struct cgroup_instance **out, struct cella_err *err);

/* Moves pid (a process, all its threads) into every directory of the instance. */
int cgroup_enter(struct cgroup_instance *inst, pid_t pid, struct cella_err *err);

/* Entering without the wait. Writing another process's pid to cgroup.procs takes the kernel's
 * global threadgroup lock, whose write side waits for an RCU grace period (5-20 ms on our hosts,
 * most of a whole `run`). So the runtime opens, before it forks, each v1 directory's "tasks" file
 * and the v2 directory: the child is born in the v2 directory (clone3 CLONE_INTO_CGROUP, see
 * ns_clone) and, while it has one thread, moves that thread into each v1 directory by writing "0"
 * (the kernel takes no global lock for the caller's own thread). The kernel checks the
 * credentials of whoever opened the file, so the child may already be in a new user namespace. */
struct cgroup_join {
	const struct cgroup_instance *inst;
	int v2_fd;  /* the v2 directory (O_DIRECTORY), -1 = none */
	int *fds;   /* per directory of inst: its "tasks" file (v1), else -1 */
	size_t n;
};
#define CGROUP_JOIN_INIT { .v2_fd = -1 }
/* Opens the files. Returns 1 when the child can join itself, 0 when it cannot (a fake tree for
 * unit tests: use cgroup_enter), or a negative errno. */
int cgroup_join_open(const struct cgroup_instance *inst, struct cgroup_join *j, struct cella_err *err);
/* In the single-threaded child: moves itself into every v1 directory, then closes j
 * (cgroup_join_close). */
int cgroup_join_self(struct cgroup_join *j, struct cella_err *err);
void cgroup_join_close(struct cgroup_join *j);
/* The runtime's part once the child exists (pid): everything when the child could not join
 * itself (self_join false: cgroup_join_open returned 0), else the v2 directory when the child was
 * not born there (clone3 refused, see ns_clone). */
int cgroup_join_finish(struct cgroup_instance *inst, bool self_join, bool born_in_v2, pid_t pid,
		       struct cella_err *err);

/* Every pid in the container's cgroups (including nested sub-cgroups the container made),
 * deduplicated, ascending. *out is malloc'd (NULL when n == 0). */
int cgroup_get_pids(struct cgroup_instance *inst, pid_t **out, size_t *n, struct cella_err *err);

/* Sends sig to every pid of cgroup_get_pids (for kill --all). ESRCH is ignored. Fake managers
 * never signal anything. */
int cgroup_kill_all(struct cgroup_instance *inst, int sig, struct cella_err *err);

/* Removes the container's directories (nested ones first) in every hierarchy, and parents that
 * cgroup_create made if they are now empty. A directory already gone is fine. If a directory is
 * busy (tasks remain), its tasks get SIGKILL and removal is retried for up to ~2 s. The instance
 * stays valid (and empty) and must still be freed. */
int cgroup_destroy(struct cgroup_instance *inst, struct cella_err *err);
void cgroup_instance_free(struct cgroup_instance *inst);

/* Same paths that cgroup_create would compute, without creating anything; used by
 * `delete --force` when the state file has no saved instance (runtime killed mid-create).
 * Directories that do not exist are simply skipped by destroy. */
int cgroup_instance_lookup(struct cgroup_manager *mgr, const char *cgroups_path, const char *id,
			   struct cgroup_instance **out, struct cella_err *err);

/* Serialization for the state file. The JSON is an object:
 *   {"mode":"hybrid","dirs":[{"type":"v1","controllers":"memory","mount":"/sys/fs/cgroup/memory",
 *     "path":"/sys/fs/cgroup/memory/pods/x","rel":"/pods/x","created":2}, ...]}
 * ("created" = trailing components of rel that destroy removes: the leaf and the parents this
 * create made, each only while it is empty).
 * Load validates that every path lies inside one of mgr's cgroup mounts. */
json_t *cgroup_instance_to_json(const struct cgroup_instance *inst);
int cgroup_instance_from_json(struct cgroup_manager *mgr, const json_t *j, struct cgroup_instance **out,
			      struct cella_err *err);
/* String forms of the above (compact JSON); save returns malloc'd text or NULL on ENOMEM. */
char *cgroup_instance_save(const struct cgroup_instance *inst);
int cgroup_instance_load(struct cgroup_manager *mgr, const char *text, struct cgroup_instance **out,
			 struct cella_err *err);

/* The instance's directories, e.g. to bind-mount them for a "cgroup" mount inside the container. */
struct cgroup_dir_info {
	bool v2;                 /* the unified hierarchy */
	const char *controllers; /* v1: "cpu,cpuacct", "name=systemd", ...; v2: the controllers driven
				  * through v2 ("hugetlb" on a hybrid host, all available on pure v2) */
	const char *mount;       /* the hierarchy's mount point, e.g. "/sys/fs/cgroup/cpu,cpuacct" */
	const char *path;        /* the container's directory in it */
	const char *rel;         /* path relative to the hierarchy root, e.g. "/x" */
};
size_t cgroup_instance_count(const struct cgroup_instance *inst);
int cgroup_instance_dir(const struct cgroup_instance *inst, size_t i, struct cgroup_dir_info *out);
/* The directory of the hierarchy that holds controller ("memory", "name=systemd"), or the v2
 * directory when it is driven through v2; NULL if the host has no such controller. */
const char *cgroup_instance_path(const struct cgroup_instance *inst, const char *controller);

/* Freezer (v1 freezer.state FROZEN/THAWED, v2 cgroup.freeze); waits until the state is reached. */
int cgroup_freeze(struct cgroup_instance *inst, bool frozen, struct cella_err *err);

/* Exposed for unit tests: the conversions used on cgroup v2. */
unsigned long long cgroup_shares_to_weight(unsigned long long shares); /* crun's linear map, 0 -> 0 */
/* OCI memory.swap (memory+swap) and memory.limit (0 = unset for both) -> memory.swap.max value:
 * -1 = "max", >= 0 = that many bytes (0 when swap == limit: no swap), CGROUP_SWAP_UNSET = leave
 * the file alone; negative errno (err names linux.resources.memory.swap) if invalid. */
#define CGROUP_SWAP_UNSET (-2LL)
int cgroup_swap_to_v2(long long swap, long long limit, long long *out, struct cella_err *err);
/* Validates a cpuset list ("0-3,7"); path is the config path used in the message. */
int cgroup_validate_cpu_list(const char *list, const char *path, struct cella_err *err);

/* Applies what res sets to the live instance (memory, cpu, cpuset, pids, blkio/io, unified), with
 * the same conversions as create; the rest of the cgroup is left alone (runc's `update`). */
int cgroup_update(struct cgroup_instance *inst, const struct oci_resources *res, struct cella_err *err);
/* runc's stats object ("cpu", "memory", "pids", "blkio", ... as in runc's types.Stats) read from
 * the instance's v1 or v2 files; missing files read as 0. */
int cgroup_stats(struct cgroup_instance *inst, json_t **out, struct cella_err *err);
