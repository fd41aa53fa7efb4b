/* File helpers shared by the cgroup unit tests (fake trees in test_cgroup.c, the real host in
 * test_cgroup_host.c). Header-only: each tests/unit C file is its own program. Results live in
 * small rotating static buffers, so a few may be used in one TAP_OK. */
#pragma once
#include "base/util.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static inline char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline char *pathf(const char *fmt, ...)
{
	static char bufs[8][1024];
	static int k;
	char *b = bufs[k++ % 8];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(b, 1024, fmt, ap);
	va_end(ap);
	return b;
}

/* The content of path with the trailing newlines trimmed ("" if empty, NULL if missing). */
static inline char *read_trimmed(const char *path)
{
	static char buf[4][8192];
	static int k;
	char *b = buf[k++ % 4];
	_cleanup_free_ char *s = NULL;
	if (cella_read_file(path, sizeof(buf[0]) - 1, &s, NULL, NULL) < 0)
		return NULL;
	size_t n = strlen(s);
	while (n && s[n - 1] == '\n')
		s[--n] = '\0';
	memcpy(b, s, n + 1);
	return b;
}

/* read_trimmed of dir/file. */
static inline char *get(const char *dir, const char *file)
{
	_cleanup_free_ char *p = cella_path_join(dir, file);
	return read_trimmed(p);
}

static inline void put(const char *dir, const char *file, const char *content)
{
	_cleanup_free_ char *p = cella_path_join(dir, file);
	cella_write_file(p, content, strlen(content), 0644, NULL);
}

static inline bool exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

/* Whether text has line as one of its whole lines. */
static inline bool has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = text; p && *p;) {
		if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
			return true;
		p = strchr(p, '\n');
		p = p ? p + 1 : NULL;
	}
	return false;
}
