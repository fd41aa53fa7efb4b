/* CVE-2019-5736 protection (runtime/selfexec.c): before a command that enters a container runs,
 * the runtime re-executes itself through a read-only detached bind mount of its binary (or, on
 * kernels without the new mount API, from a sealed memfd copy), so neither the container init nor
 * an exec'd process ever has a writable host binary as /proc/PID/exe. */
#pragma once
#include <stdbool.h>

struct cella_err;

/* Returns 0 when /proc/self/exe is already protected (a sealed memfd, or a file on a read-only
 * mount); otherwise re-executes argv with the current environment plus a marker variable and
 * returns only on failure. */
int cella_selfexec_protected(char **argv, struct cella_err *err);
/* Whether /proc/self/exe can not be opened for writing: a sealed memfd or a read-only mount. */
bool cella_selfexec_is_protected(void);
