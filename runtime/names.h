/* Name tables: capabilities ("CAP_SYS_ADMIN"), rlimits ("RLIMIT_NOFILE"), signals ("KILL", "SIGKILL", "9"). */
#pragma once

/* Return the number, or -1 if unknown. Names are case-sensitive as in runc, except signals. */
int cella_cap_from_name(const char *name);
const char *cella_cap_name(int cap);
int cella_cap_last(void); /* highest capability number this build knows */
int cella_rlimit_from_name(const char *name);
const char *cella_rlimit_name(int resource);
/* Accepts "KILL", "SIGKILL", "kill", "9"; returns signal number or -1. */
int cella_signal_from_name(const char *name);
/* "KILL" (without the SIG prefix) for a standard signal; NULL for real-time or unknown numbers. */
const char *cella_signal_name(int sig);
