/* linux.seccomp → a libseccomp filter (runtime/seccomp.c). Used by the container init and exec.
 * Build early (errors still reach the runtime), load as late as possible. Internal to runtime/. */
#pragma once
#include <stdbool.h>
#include <sys/types.h>

#include <jansson.h>

struct cella_err;
struct oci_seccomp;
struct cella_seccomp;

/* Translates the config into a filter: actions (errnoRet, defaultErrnoRet), argument conditions,
 * architectures and flags. Unknown syscall names are skipped with a debug log, as runc does. */
int cella_seccomp_build(const struct oci_seccomp *s, struct cella_seccomp **out, struct cella_err *err);
/* Whether the filter uses SCMP_ACT_NOTIFY (the load then yields a listener fd). */
bool cella_seccomp_wants_notify(const struct cella_seccomp *f);
/* Loads the filter into this process. *notify_fd gets the listener fd (close-on-exec; the caller
 * passes it on and closes it) or -1. */
int cella_seccomp_load(struct cella_seccomp *f, int *notify_fd, struct cella_err *err);
void cella_seccomp_free(struct cella_seccomp *f);

/* The runtime's side of SCMP_ACT_NOTIFY, as runc does it: connects to linux.seccomp.listenerPath
 * and sends the container process state ({"ociVersion", "fds": ["seccompFd"], "pid", "metadata",
 * "state"}) with the notify fd attached (SCM_RIGHTS). */
int cella_seccomp_notify_send(const struct oci_seccomp *s, int notify_fd, pid_t pid, json_t *state,
			      struct cella_err *err);

/* For `features`: the names this build accepts. NULL-terminated. */
extern const char *const cella_seccomp_actions[];
extern const char *const cella_seccomp_operators[];
extern const char *const cella_seccomp_archs[];
extern const char *const cella_seccomp_flags[];
/* The runtime-spec features "linux.seccomp" object. */
json_t *cella_seccomp_features(void);
