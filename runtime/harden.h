/* Checks that keep a container from reaching the host (runtime/harden.c). Internal to runtime/. */
#pragma once

#include "runtime/config.h"

struct cella_err;

/* Every capability in process.capabilities must be in the runtime's own bounding set, or the
 * container could only get part of what it asks for: a clear error before anything is created,
 * "process.capabilities.bounding: CAP_SYS_RESOURCE is not in the runtime's bounding set".
 * what prefixes the message ("process" for config.json). */
int harden_check_caps(const struct oci_process *p, const char *what, struct cella_err *err);

/* chdir to cwd (absolute, inside the current root) without following magic links such as
 * /proc/self/fd/N and checks the result is under the root (CVE-2024-21626). Creates a missing
 * cwd like runc. what names the field for messages ("process.cwd"). */
int harden_chdir(const char *cwd, const char *what, struct cella_err *err);

/* After a plain chdir(cwd): fails if the cwd is not reachable from the current root. */
int harden_cwd_inside_root(const char *cwd, const char *what, struct cella_err *err);
