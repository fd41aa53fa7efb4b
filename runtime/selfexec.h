/* CVE-2019-5736 protection (runtime/selfexec.c): before a command that enters a container runs,
 * the runtime re-executes itself from a sealed memfd copy of its binary, so neither the container
 * init nor an exec'd process ever has the host binary as /proc/PID/exe. */
#pragma once
#include <stdbool.h>

struct cella_err;

/* Returns 0 when this process already runs from a sealed copy; otherwise copies /proc/self/exe
 * into a memfd, seals it (shrink, grow, write, seal) and fexecve()s it with argv and the current
 * environment plus a marker variable. Returns only on failure. */
int cella_selfexec_sealed(char **argv, struct cella_err *err);
/* Whether /proc/self/exe is a sealed memfd. */
bool cella_selfexec_is_sealed(void);
