/* Process-wide logging: text or JSON lines to stderr or a file (runc's --log/--log-format). */
#pragma once
#include <stdbool.h>

enum cella_log_level { CELLA_LOG_DEBUG, CELLA_LOG_INFO, CELLA_LOG_WARN, CELLA_LOG_ERROR };
enum cella_log_format { CELLA_LOG_TEXT, CELLA_LOG_JSON };

struct cella_err;

/* path NULL or "" = stderr. Returns 0 or -errno. */
int cella_log_open(const char *path, enum cella_log_format format, enum cella_log_level min_level,
		   struct cella_err *err);
void cella_log_set_level(enum cella_log_level min_level);
bool cella_log_enabled(enum cella_log_level level);
/* The fd log lines go to (for children that must keep logging after exec-style transitions). */
int cella_log_fd(void);
void cella_log_close(void);

void cella_log(enum cella_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (cella_log_enabled(CELLA_LOG_DEBUG)) cella_log(CELLA_LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) cella_log(CELLA_LOG_INFO, __VA_ARGS__)
#define log_warn(...) cella_log(CELLA_LOG_WARN, __VA_ARGS__)
#define log_error(...) cella_log(CELLA_LOG_ERROR, __VA_ARGS__)
