/* Small helpers shared by every component: cleanup attributes, fds, files, paths, numbers. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

struct cella_err;

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void cella_freep(void *p)
{
	free(*(void **)p);
}
static inline void cella_closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
static inline void cella_fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}
void cella_strv_freep(char ***strv);

#define _cleanup_free_ __attribute__((cleanup(cella_freep)))
#define _cleanup_close_ __attribute__((cleanup(cella_closep)))
#define _cleanup_fclose_ __attribute__((cleanup(cella_fclosep)))
#define _cleanup_strv_ __attribute__((cleanup(cella_strv_freep)))

/* Hand ownership out of a cleanup scope. */
#define TAKE_FD(fd) ({ int _fd = (fd); (fd) = -1; _fd; })
#define TAKE_PTR(p) ({ __typeof__(p) _p = (p); (p) = NULL; _p; })

/* Retries on EINTR and short writes/reads. Return 0 / bytes read, or -errno. */
int cella_write_all(int fd, const void *buf, size_t len);
ssize_t cella_read_all(int fd, void *buf, size_t len);

/* Reads a whole file (at most max bytes; -EFBIG beyond), NUL-terminated. */
int cella_read_file(const char *path, size_t max, char **out, size_t *out_len, struct cella_err *err);
int cella_read_file_at(int dirfd, const char *path, size_t max, char **out, size_t *out_len,
		       struct cella_err *err);
/* Writes (truncating) or creates with mode. */
int cella_write_file(const char *path, const void *data, size_t len, mode_t mode, struct cella_err *err);
int cella_write_file_at(int dirfd, const char *path, const void *data, size_t len, struct cella_err *err);
/* Atomically replaces path (write to temp + rename). */
int cella_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
			    struct cella_err *err);

/* mkdir -p; existing directories are fine. */
int cella_mkdir_p(const char *path, mode_t mode, struct cella_err *err);
/* rm -rf that never crosses mount points; missing path is fine. */
int cella_rm_rf(const char *path, struct cella_err *err);

/* Joins a and b with exactly one '/'; returns malloc'd string or NULL. */
char *cella_path_join(const char *a, const char *b);
/* asprintf that returns NULL on failure. */
char *cella_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Field (0 = name ... 5 = home) of uid's line in a passwd(5) file, malloc'd; NULL when the file
 * or the uid is missing or the field is empty. Read directly, not through NSS: it serves a
 * container's /etc/passwd, and the static binary has no NSS modules. */
char *cella_passwd_field(const char *path, unsigned uid, int field);

/* Strict number parsing: whole string, range checked. Return 0 or -EINVAL/-ERANGE. */
int cella_parse_int64(const char *s, int64_t *out);
int cella_parse_uint64(const char *s, uint64_t *out);
int cella_parse_int(const char *s, int *out);

/* NULL-terminated string vectors. */
size_t cella_strv_len(char *const *strv);
void cella_strv_free(char **strv);

int cella_set_cloexec(int fd, bool on);
/* Monotonic clock in nanoseconds. */
uint64_t cella_now_ns(void);
