/* The container lifecycle with runc semantics: create, start, run, state, kill, delete, list.
 *
 * create forks the container init (clone with the new namespaces, or setns into existing ones),
 * which builds the root filesystem, applies the process settings and then blocks on the state
 * directory's exec.fifo until `start` opens it; then it execs process.args. State lives in
 * <root>/<id>/state.json, written before any other host resource exists, so whatever a killed
 * runtime leaves behind is found again by `delete --force`.
 *
 * Every function returns 0 or a negative errno and fills err with runc's wording where runc has
 * one ("container does not exist", "cannot start a container that has stopped"). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

struct cella_err;

#define CELLA_DEFAULT_ROOT "/run/cella"
#define CELLA_OCI_VERSION "1.2.0"

struct cella_runtime {
	const char *root; /* state root (--root), NULL = CELLA_DEFAULT_ROOT */
};

struct container_create_opts {
	const char *id;
	const char *bundle;         /* NULL = current directory */
	const char *pid_file;       /* NULL = none */
	const char *console_socket; /* NULL = none (required with process.terminal) */
	unsigned preserve_fds;      /* fds 3 .. 3+N-1 are passed to the process */
	bool no_pivot;              /* chroot-style MS_MOVE + chroot instead of pivot_root */
	bool no_new_keyring;        /* accepted for runc compatibility */
	/* Internal (foreground run): an already-connected socket that receives the pty master
	 * instead of --console-socket; used only with process.terminal. -1 or 0 = none. */
	int console_fd;
};

/* create: returns once the container init waits for start. */
int container_create(const struct cella_runtime *rt, const struct container_create_opts *opts,
		     struct cella_err *err);
int container_start(const struct cella_runtime *rt, const char *id, struct cella_err *err);

/* run = create + start. Without detach it waits for the process, forwards signals, and stores
 * the exit status in *exit_status (128+n for signal n); then deletes unless keep. */
int container_run(const struct cella_runtime *rt, const struct container_create_opts *opts, bool detach,
		  bool keep, int *exit_status, struct cella_err *err);

/* The OCI state document (ociVersion, id, status, pid, bundle, rootfs, created, owner, annotations). */
int container_state(const struct cella_runtime *rt, const char *id, json_t **out, struct cella_err *err);

int container_kill(const struct cella_runtime *rt, const char *id, int sig, bool all, struct cella_err *err);

/* Removes the container: kills remaining processes (force, or a created container), destroys its
 * cgroups and state. A missing container is an error unless force. */
int container_delete(const struct cella_runtime *rt, const char *id, bool force, struct cella_err *err);

/* Every container under the root as an array of state documents (sorted by id). */
int container_list(const struct cella_runtime *rt, json_t **out, struct cella_err *err);

/* The runtime-spec features document. */
json_t *container_features(void);

/* Checks an id as runc does: non-empty, [A-Za-z0-9_+.-], not "." or "..". */
int container_validate_id(const char *id, struct cella_err *err);
