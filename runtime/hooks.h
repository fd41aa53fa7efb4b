/* OCI lifecycle hooks (runtime/hooks.c): prestart, createRuntime, createContainer, startContainer,
 * poststart, poststop. Each hook runs with the state JSON on stdin, its own args and env (exactly
 * as configured), and is killed when its timeout expires. Internal to runtime/. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "runtime/config.h"

struct cella_err;
struct container_state;

enum hook_phase { HOOK_PRESTART, HOOK_CREATE_RUNTIME, HOOK_CREATE_CONTAINER, HOOK_START_CONTAINER,
		  HOOK_POSTSTART, HOOK_POSTSTOP, HOOK_PHASES };

const char *hook_phase_name(enum hook_phase ph); /* "prestart", "createRuntime", ... */
size_t hooks_count(const struct oci_hooks *hs, enum hook_phase ph);

/* Runs the phase's hooks in order, stopping at the first failure (non-zero exit, signal, timeout,
 * exec error); err names it: "hooks.prestart[0]: /bin/hook: exited with status 3: <output>". */
int hooks_run(const struct oci_hooks *hs, enum hook_phase ph, const char *state, struct cella_err *err);

/* The OCI state of st in `status` as a JSON string (malloc'd), for hook stdin. */
char *hooks_state_json(const struct container_state *st, const char *status);

/* poststart/poststop run from later commands: create keeps the config's "hooks" object in the
 * state dir (only when it has such hooks). hooks_run_saved runs a phase from it; failures are
 * logged as warnings, as the runtime spec says. */
int hooks_save(const struct oci_config *cfg, const char *state_dir, struct cella_err *err);
void hooks_run_saved(const struct container_state *st, enum hook_phase ph, const char *status);

/* The state JSON handed to the container init (createContainer/startContainer run there), as one
 * message on the SOCK_SEQPACKET sync socket. */
bool hooks_init_needs_state(const struct oci_hooks *hs);
int hooks_send_state(int fd, const char *state, struct cella_err *err);
char *hooks_recv_state(int fd); /* NULL on error */
