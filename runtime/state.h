/* The state directory <root>/<id>/: state.json (who the init is, where its cgroups are) and
 * exec.fifo (present while the container is created but not started). Internal to runtime/. */
#pragma once
#include <stdbool.h>
#include <sys/types.h>

#include <jansson.h>

struct cella_err;
struct cella_runtime;

enum container_status { STATUS_CREATING, STATUS_CREATED, STATUS_RUNNING, STATUS_STOPPED };

#define STATE_FILE "state.json"
#define EXEC_FIFO "exec.fifo"

struct container_state {
	char *id;
	char *dir;          /* <root>/<id> */
	pid_t pid;          /* the container init (host pid), 0 until known */
	unsigned long long pid_start; /* its start time (/proc/PID/stat field 22): detects pid reuse */
	pid_t creator;      /* the `create` runtime while create is in progress */
	unsigned long long creator_start;
	bool ready;         /* create finished */
	char *bundle;
	char *rootfs;
	char *created;      /* RFC 3339, nanoseconds, UTC */
	uid_t owner;
	char *cgroups_path; /* linux.cgroupsPath as configured (NULL = default) */
	json_t *cgroup;     /* cgroup_instance_to_json once the cgroups exist, else NULL */
	json_t *annotations; /* object or NULL */
	bool pid_ns_shared; /* no new pid namespace: `kill --all` / delete must use the cgroup */
};

const char *state_root(const struct cella_runtime *rt);
/* <root>/<id> (malloc'd). */
char *state_dir(const struct cella_runtime *rt, const char *id);

/* Writes dir/state.json atomically. */
int state_save(const struct container_state *st, struct cella_err *err);
/* Loads <root>/<id>/state.json. A missing directory fails with -ENOENT "container does not exist".
 * A directory without (readable) state.json yields a state with only id and dir (pid 0). */
int state_load(const struct cella_runtime *rt, const char *id, struct container_state **out,
	       struct cella_err *err);
void state_free(struct container_state *st);

enum container_status state_status(const struct container_state *st);
const char *state_status_name(enum container_status s);
/* True when the container's cgroup is frozen (`pause`); state and list then report "paused". */
bool state_paused(const struct container_state *st);
/* The OCI state document for st in status s. */
json_t *state_to_oci(const struct container_state *st, enum container_status s);

/* /proc/PID/stat: start time and the one-letter state. Returns -ESRCH if the process is gone. */
int proc_stat(pid_t pid, unsigned long long *start, char *state);
/* True if pid still is the process that had start time `start` and is not a zombie. */
bool proc_alive(pid_t pid, unsigned long long start);
/* Current time as RFC 3339 with nanoseconds (runc's format); malloc'd. */
char *rfc3339_now(void);
/* Writes pid to path (relative to the cwd) atomically, as --pid-file wants it. */
int state_write_pid_file(const char *path, pid_t pid, struct cella_err *err);
