#include "base/util.h"

#include "base/err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>

void cella_strv_freep(char ***strv)
{
	cella_strv_free(*strv);
}

size_t cella_strv_len(char *const *strv)
{
	size_t n = 0;
	while (strv && strv[n])
		n++;
	return n;
}

void cella_strv_free(char **strv)
{
	for (size_t i = 0; strv && strv[i]; i++)
		free(strv[i]);
	free(strv);
}

int cella_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

ssize_t cella_read_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

int cella_read_file_at(int dirfd, const char *path, size_t max, char **out, size_t *out_len,
		       struct cella_err *err)
{
	_cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return cella_err_sys(err, errno, "open %s", path);
	/* Read one byte past max so that "exactly max" and "too large" differ. */
	size_t limit = max + 1, cap = limit < 4096 ? limit : 4096, len = 0;
	_cleanup_free_ char *buf = malloc(cap + 1);
	if (!buf)
		return cella_err_set(err, ENOMEM, "read %s: out of memory", path);
	for (;;) {
		if (len == cap) {
			if (cap >= limit)
				return cella_err_set(err, EFBIG, "read %s: larger than %zu bytes", path, max);
			cap = cap * 2 > limit ? limit : cap * 2;
			char *nbuf = realloc(buf, cap + 1);
			if (!nbuf)
				return cella_err_set(err, ENOMEM, "read %s: out of memory", path);
			buf = nbuf;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cella_err_sys(err, errno, "read %s", path);
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > max)
		return cella_err_set(err, EFBIG, "read %s: larger than %zu bytes", path, max);
	buf[len] = '\0';
	if (out_len)
		*out_len = len;
	*out = TAKE_PTR(buf);
	return 0;
}

int cella_read_file(const char *path, size_t max, char **out, size_t *out_len, struct cella_err *err)
{
	return cella_read_file_at(AT_FDCWD, path, max, out, out_len, err);
}

static int write_fd_file(int fd, const char *path, const void *data, size_t len, struct cella_err *err)
{
	int r = cella_write_all(fd, data, len);
	if (r < 0)
		return cella_err_sys(err, -r, "write %s", path);
	return 0;
}

int cella_write_file_at(int dirfd, const char *path, const void *data, size_t len, struct cella_err *err)
{
	_cleanup_close_ int fd = openat(dirfd, path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return cella_err_sys(err, errno, "open %s", path);
	return write_fd_file(fd, path, data, len, err);
}

int cella_write_file(const char *path, const void *data, size_t len, mode_t mode, struct cella_err *err)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, mode);
	if (fd < 0)
		return cella_err_sys(err, errno, "open %s", path);
	return write_fd_file(fd, path, data, len, err);
}

int cella_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
			    struct cella_err *err)
{
	_cleanup_free_ char *tmp = cella_strdup_printf("%s.tmp.%d", path, (int)getpid());
	if (!tmp)
		return cella_err_set(err, ENOMEM, "write %s: out of memory", path);
	int r = cella_write_file(tmp, data, len, mode, err);
	if (r < 0) {
		unlink(tmp);
		return r;
	}
	if (rename(tmp, path) < 0) {
		r = cella_err_sys(err, errno, "rename %s to %s", tmp, path);
		unlink(tmp);
		return r;
	}
	return 0;
}

int cella_mkdir_p(const char *path, mode_t mode, struct cella_err *err)
{
	_cleanup_free_ char *p = strdup(path);
	if (!p)
		return cella_err_set(err, ENOMEM, "mkdir %s: out of memory", path);
	for (char *s = p + 1;; s++) {
		bool end = *s == '\0';
		if (*s == '/' || end) {
			*s = '\0';
			if (mkdir(p, mode) < 0 && errno != EEXIST)
				return cella_err_sys(err, errno, "mkdir %s", p);
			if (end)
				break;
			*s = '/';
		}
	}
	struct stat st;
	if (stat(path, &st) < 0)
		return cella_err_sys(err, errno, "stat %s", path);
	if (!S_ISDIR(st.st_mode))
		return cella_err_set(err, ENOTDIR, "mkdir %s: exists and is not a directory", path);
	return 0;
}

static int rm_rf_at(int parent_fd, const char *name, dev_t dev, struct cella_err *err)
{
	struct stat st;
	if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : cella_err_sys(err, errno, "stat %s", name);
	if (S_ISDIR(st.st_mode)) {
		if (st.st_dev != dev)
			return cella_err_set(err, EBUSY, "remove %s: a mount point", name);
		int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			return cella_err_sys(err, errno, "open %s", name);
		DIR *d = fdopendir(fd);
		if (!d) {
			close(fd);
			return cella_err_sys(err, errno, "opendir %s", name);
		}
		int r = 0;
		struct dirent *de;
		while ((de = readdir(d))) {
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			r = rm_rf_at(dirfd(d), de->d_name, dev, err);
			if (r < 0)
				break;
		}
		closedir(d);
		if (r < 0)
			return r;
		if (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
			return cella_err_sys(err, errno, "rmdir %s", name);
		return 0;
	}
	if (unlinkat(parent_fd, name, 0) < 0 && errno != ENOENT)
		return cella_err_sys(err, errno, "unlink %s", name);
	return 0;
}

int cella_rm_rf(const char *path, struct cella_err *err)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : cella_err_sys(err, errno, "stat %s", path);
	return rm_rf_at(AT_FDCWD, path, st.st_dev, err);
}

char *cella_path_join(const char *a, const char *b)
{
	size_t la = strlen(a);
	while (la > 1 && a[la - 1] == '/')
		la--;
	while (*b == '/')
		b++;
	char *out;
	if (asprintf(&out, "%.*s%s%s", (int)la, a, (la == 1 && a[0] == '/') ? "" : "/", b) < 0)
		return NULL;
	return out;
}

char *cella_strdup_printf(const char *fmt, ...)
{
	va_list ap;
	char *out;
	va_start(ap, fmt);
	int r = vasprintf(&out, fmt, ap);
	va_end(ap);
	return r < 0 ? NULL : out;
}

char *cella_passwd_field(const char *path, unsigned uid, int field)
{
	if (field < 0 || field > 6)
		return NULL;
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	char line[1024];
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		char *fields[7] = { 0 };
		char *s = line;
		int n = 0;
		for (char *tok; n < 7 && (tok = strsep(&s, ":")); n++)
			fields[n] = tok;
		unsigned v;
		int k = 0;
		if (n > field && fields[2] && sscanf(fields[2], "%u%n", &v, &k) == 1 && !fields[2][k] && v == uid)
			return *fields[field] ? strdup(fields[field]) : NULL;
	}
	return NULL;
}

int cella_parse_int64(const char *s, int64_t *out)
{
	if (!s || !*s)
		return -EINVAL;
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 0);
	if (*end)
		return -EINVAL;
	if (errno == ERANGE)
		return -ERANGE;
	*out = v;
	return 0;
}

int cella_parse_uint64(const char *s, uint64_t *out)
{
	if (!s || !*s || *s == '-')
		return -EINVAL;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (*end)
		return -EINVAL;
	if (errno == ERANGE)
		return -ERANGE;
	*out = v;
	return 0;
}

int cella_parse_int(const char *s, int *out)
{
	int64_t v;
	int r = cella_parse_int64(s, &v);
	if (r < 0)
		return r;
	if (v < INT_MIN || v > INT_MAX)
		return -ERANGE;
	*out = (int)v;
	return 0;
}

int cella_set_cloexec(int fd, bool on)
{
	int flags = fcntl(fd, F_GETFD);
	if (flags < 0)
		return -errno;
	int want = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
	if (want == flags)
		return 0; /* already so (KVM's fds come with O_CLOEXEC): no second syscall */
	return fcntl(fd, F_SETFD, want) < 0 ? -errno : 0;
}

uint64_t cella_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
