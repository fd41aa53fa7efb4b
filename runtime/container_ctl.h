/* Operations on a running container, with runc semantics: exec, ps, pause/resume, update and
 * stats (for `events`). Same conventions as container.h: 0 or a negative errno, err filled with
 * runc's wording where runc has one ("cannot exec in a stopped state"). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

struct cella_err;
struct cella_runtime;
struct oci_resources;

struct container_exec_opts {
	const char *id;
	/* The process: a process.json document (--process), or the container's config.json process
	 * with the overrides below. */
	const char *process_file;   /* NULL = none */
	char *const *args;          /* with no process_file: required, NULL-terminated */
	bool tty;                   /* -t */
	bool detach;                /* -d */
	const char *pid_file;       /* NULL = none */
	const char *console_socket; /* NULL = none */
	const char *cwd;            /* NULL = the config's */
	char *const *env;           /* K=V appended to the config's env; NULL = none */
	size_t n_env;
	bool has_user;              /* --user UID[:GID] */
	uid_t uid;
	gid_t gid;
	bool has_gid;
	const gid_t *additional_gids; /* --additional-gids */
	size_t n_additional_gids;
	char *const *caps;          /* --cap NAME: added to the bounding, effective and permitted sets */
	size_t n_caps;
	bool no_new_privs;
	unsigned preserve_fds;
};

/* Starts a process inside the container: joins each of its namespaces (user first) through
 * /proc/<init>/ns, every cgroup directory, and applies the process settings. Without detach it
 * waits (forwarding signals, proxying the terminal) and stores the exit status (128+n for signal
 * n) in *exit_status; with detach it returns once the process has exec'd. */
int container_exec(const struct cella_runtime *rt, const struct container_exec_opts *opts, int *exit_status,
		   struct cella_err *err);

/* Host pids of every process in the container's cgroups, ascending; *pids malloc'd. */
int container_pids(const struct cella_runtime *rt, const char *id, pid_t **pids, size_t *n,
		   struct cella_err *err);

/* Freezes / thaws every process of the container (v1 freezer or v2 cgroup.freeze). */
int container_pause(const struct cella_runtime *rt, const char *id, struct cella_err *err);
int container_resume(const struct cella_runtime *rt, const char *id, struct cella_err *err);

/* Applies resources to the running container's cgroups (only what res sets). */
int container_update(const struct cella_runtime *rt, const char *id, const struct oci_resources *res,
		     struct cella_err *err);

/* runc's stats event: {"type":"stats","id":ID,"data":{"cpu":..,"memory":..,"pids":..,..}}. */
int container_stats(const struct cella_runtime *rt, const char *id, json_t **out, struct cella_err *err);

/* How many processes of the container the OOM killer has killed so far (v1 memory.oom_control or
 * v2 memory.events "oom_kill"); 0 when the kernel does not say. For `events` ("oom" events). */
int container_oom_kills(const struct cella_runtime *rt, const char *id, unsigned long long *n,
			struct cella_err *err);

/* checkpoint / restore through CRIU (runtime/checkpoint.c): the flags runc takes, which containerd's
 * runc shim passes. */
struct container_cr_opts {
	const char *image_path;          /* --image-path (required; made by checkpoint) */
	const char *work_path;           /* --work-path: criu's log (dump.log, restore.log); NULL = image path */
	bool leave_running;              /* checkpoint --leave-running */
	bool tcp_established;            /* --tcp-established */
	bool ext_unix_sk;                /* --ext-unix-sk */
	bool shell_job;                  /* --shell-job */
	bool file_locks;                 /* --file-locks */
	const char *manage_cgroups_mode; /* --manage-cgroups-mode soft|full|strict|ignore; NULL = criu's */
};

/* Dumps the running container's process tree into image_path; without leave_running the
 * container is then destroyed (as runc does). A missing criu, a container that is not running,
 * or a failed dump is an error naming the cause (criu's message and the last error of its log). */
int container_checkpoint(const struct cella_runtime *rt, const char *id, const struct container_cr_opts *o,
			 struct cella_err *err);

struct container_restore_opts {
	struct container_cr_opts cr;
	const char *id;
	const char *bundle;         /* NULL = current directory */
	const char *pid_file;       /* NULL = none */
	const char *console_socket; /* required when the container has a terminal */
	bool detach;                /* else wait for the restored init like `run`, then delete */
};

/* Creates container id from bundle with its processes restored from image_path: its cgroups,
 * state (running, the new init pid) and the pty master sent to console_socket. *exit_status: the
 * init's status when not detached. */
int container_restore(const struct cella_runtime *rt, const struct container_restore_opts *o, int *exit_status,
		      struct cella_err *err);
