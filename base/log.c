#include "base/log.h"

#include "base/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = STDERR_FILENO;
static enum cella_log_format log_format = CELLA_LOG_TEXT;
static enum cella_log_level log_min = CELLA_LOG_WARN;

static const char *const level_names[] = { "debug", "info", "warning", "error" };

int cella_log_open(const char *path, enum cella_log_format format, enum cella_log_level min_level,
		   struct cella_err *err)
{
	log_format = format;
	log_min = min_level;
	if (!path || !*path)
		return 0;
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (fd < 0)
		return cella_err_sys(err, errno, "open log file %s", path);
	if (log_fd > STDERR_FILENO)
		close(log_fd);
	log_fd = fd;
	return 0;
}

void cella_log_set_level(enum cella_log_level min_level)
{
	log_min = min_level;
}

bool cella_log_enabled(enum cella_log_level level)
{
	return level >= log_min;
}

int cella_log_fd(void)
{
	return log_fd;
}

void cella_log_close(void)
{
	if (log_fd > STDERR_FILENO)
		close(log_fd);
	log_fd = STDERR_FILENO;
}

/* Escapes msg as a JSON string body into out. */
static void json_escape(char *out, size_t cap, const char *msg)
{
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)msg; *p && o + 7 < cap; p++) {
		if (*p == '"' || *p == '\\') {
			out[o++] = '\\';
			out[o++] = (char)*p;
		} else if (*p < 0x20) {
			o += (size_t)snprintf(out + o, cap - o, "\\u%04x", *p);
		} else {
			out[o++] = (char)*p;
		}
	}
	out[o] = '\0';
}

void cella_log(enum cella_log_level level, const char *fmt, ...)
{
	if (level < log_min)
		return;
	int saved_errno = errno;
	char msg[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* UTC by hand: glibc's gmtime_r/strftime load the time-zone file on first use, a file read
	 * on the VMM's exit path that a UTC stamp does not need. */
	long long days = ts.tv_sec / 86400, secs = ts.tv_sec % 86400;
	long long era_day = days + 719468; /* days since 0000-03-01 */
	long long era = era_day / 146097, doe = era_day % 146097;
	long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
	int mday = (int)(doy - (153 * mp + 2) / 5 + 1), mon = (int)(mp < 10 ? mp + 3 : mp - 9);
	long long year = yoe + era * 400 + (mon <= 2);
	char when[64];
	snprintf(when, sizeof(when), "%04lld-%02d-%02dT%02lld:%02lld:%02lld.%06ldZ", year, mon, mday,
		 secs / 3600, secs / 60 % 60, secs % 60, ts.tv_nsec / 1000);

	char line[8192 + 128];
	int len;
	if (log_format == CELLA_LOG_JSON) {
		char esc[8192];
		json_escape(esc, sizeof(esc), msg);
		len = snprintf(line, sizeof(line), "{\"level\":\"%s\",\"msg\":\"%s\",\"time\":\"%s\"}\n",
			       level_names[level], esc, when);
	} else {
		len = snprintf(line, sizeof(line), "%s %s: %s\n", when, level_names[level], msg);
	}
	if (len > (int)sizeof(line) - 1)
		len = (int)sizeof(line) - 1;
	/* One write() per line keeps lines whole when several processes share the log. */
	ssize_t w = write(log_fd, line, (size_t)len);
	(void)w;
	errno = saved_errno;
}
