/* The snapshot state file: sectioned body, header with magic, version and CRC32s (zlib). */
#include "vmm/snapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "base/err.h"
#include "base/util.h"

struct snap_header {
	char magic[8];
	uint32_t version;
	uint32_t header_bytes;
	uint64_t body_bytes;
	uint32_t body_crc;
	uint32_t header_crc; /* over the bytes before it */
};

struct snap_sec_header {
	char name[SNAP_NAME_MAX];
	uint32_t len;
	uint32_t reserved;
};

_Static_assert(sizeof(struct snap_header) == SNAP_HEADER_BYTES, "header layout");
_Static_assert(sizeof(struct snap_sec_header) == 40, "section header layout");

static uint32_t crc(const void *p, size_t len)
{
	uLong c = crc32(0L, Z_NULL, 0);
	const uint8_t *b = p;
	/* zlib takes uInt lengths */
	while (len) {
		uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
		c = crc32(c, b, n);
		b += n;
		len -= n;
	}
	return (uint32_t)c;
}

/* --- writing --- */

void snap_writer_init(struct snap_writer *w)
{
	*w = (struct snap_writer){ .sec_start = SIZE_MAX };
}

void snap_writer_free(struct snap_writer *w)
{
	free(w->buf);
	snap_writer_init(w);
}

static void *grow(struct snap_writer *w, size_t len)
{
	if (w->error)
		return NULL;
	if (w->len + len > w->cap) {
		size_t cap = w->cap ? w->cap : 4096;
		while (cap < w->len + len)
			cap *= 2;
		uint8_t *b = realloc(w->buf, cap);
		if (!b) {
			w->error = -ENOMEM;
			return NULL;
		}
		w->buf = b;
		w->cap = cap;
	}
	void *p = w->buf + w->len;
	w->len += len;
	return p;
}

void snap_begin(struct snap_writer *w, const char *fmt, ...)
{
	if (w->sec_start != SIZE_MAX)
		snap_end(w);
	size_t start = w->len;
	struct snap_sec_header *h = grow(w, sizeof(*h));
	if (!h)
		return;
	memset(h, 0, sizeof(*h));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(h->name, sizeof(h->name), fmt, ap);
	va_end(ap);
	w->sec_start = start;
}

void snap_put(struct snap_writer *w, const void *data, size_t len)
{
	void *p = grow(w, len);
	if (p && len)
		memcpy(p, data, len);
}

void snap_put_u8(struct snap_writer *w, uint8_t v) { snap_put(w, &v, 1); }
void snap_put_u16(struct snap_writer *w, uint16_t v) { snap_put(w, &v, 2); }
void snap_put_u32(struct snap_writer *w, uint32_t v) { snap_put(w, &v, 4); }
void snap_put_u64(struct snap_writer *w, uint64_t v) { snap_put(w, &v, 8); }
void snap_put_bool(struct snap_writer *w, bool v) { snap_put_u8(w, v ? 1 : 0); }

void snap_end(struct snap_writer *w)
{
	if (w->sec_start == SIZE_MAX || w->error) {
		w->sec_start = SIZE_MAX;
		return;
	}
	size_t data = w->len - w->sec_start - sizeof(struct snap_sec_header);
	if (data > UINT32_MAX) {
		w->error = -E2BIG;
		return;
	}
	uint32_t len32 = (uint32_t)data;
	memcpy(w->buf + w->sec_start + offsetof(struct snap_sec_header, len), &len32, 4);
	size_t pad = (8 - (w->len & 7)) & 7;
	void *p = grow(w, pad);
	if (p)
		memset(p, 0, pad);
	w->sec_start = SIZE_MAX;
}

int snap_writer_finish(struct snap_writer *w, const char *path, struct cella_err *err)
{
	snap_end(w);
	if (w->error)
		return cella_err_set(err, -w->error, "%s: building the state: %s", path, strerror(-w->error));
	struct snap_header h = { .version = SNAP_VERSION, .header_bytes = sizeof(h), .body_bytes = w->len };
	memcpy(h.magic, SNAP_MAGIC, 8);
	h.body_crc = crc(w->buf, w->len);
	h.header_crc = crc(&h, offsetof(struct snap_header, header_crc));
	_cleanup_free_ char *tmp = cella_strdup_printf("%s.tmp", path);
	if (!tmp)
		return cella_err_set(err, ENOMEM, "out of memory");
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return cella_err_sys(err, errno, "%s", tmp);
	int r = cella_write_all(fd, &h, sizeof(h));
	if (r == 0)
		r = cella_write_all(fd, w->buf, w->len);
	if (r < 0) {
		unlink(tmp);
		return cella_err_sys(err, -r, "%s: write", tmp);
	}
	if (rename(tmp, path) < 0) {
		r = cella_err_sys(err, errno, "rename %s to %s", tmp, path);
		unlink(tmp);
		return r;
	}
	return 0;
}

/* --- reading --- */

int snap_file_open(struct snap_file *f, const char *path, struct cella_err *err)
{
	memset(f, 0, sizeof(*f));
	char *data = NULL;
	size_t len = 0;
	int r = cella_read_file(path, SNAP_MAX_STATE_BYTES, &data, &len, err);
	if (r < 0)
		return cella_err_wrap(err, "state file");
	f->data = (uint8_t *)data;
	f->len = len;
	struct snap_header h;
	if (len < sizeof(h)) {
		r = cella_err_set(err, EINVAL, "state file %s: truncated (%zu bytes, the header alone is %zu)", path, len,
				  sizeof(h));
		goto fail;
	}
	memcpy(&h, data, sizeof(h));
	if (memcmp(h.magic, SNAP_MAGIC, 8)) {
		r = cella_err_set(err, EINVAL, "state file %s: not a cella-vmm snapshot (bad magic)", path);
		goto fail;
	}
	if (h.header_crc != crc(&h, offsetof(struct snap_header, header_crc))) {
		r = cella_err_set(err, EINVAL, "state file %s: header CRC mismatch (corrupted)", path);
		goto fail;
	}
	if (h.version != SNAP_VERSION) {
		r = cella_err_set(err, ENOTSUP, "state file %s: format version %" PRIu32 ", this cella-vmm reads version %u",
				  path, h.version, SNAP_VERSION);
		goto fail;
	}
	if (h.header_bytes != sizeof(h) || h.body_bytes != len - sizeof(h)) {
		r = cella_err_set(err, EINVAL, "state file %s: truncated or extended (%zu body bytes, header says %" PRIu64 ")",
				  path, len - sizeof(h), h.body_bytes);
		goto fail;
	}
	f->body = f->data + sizeof(h);
	f->body_len = len - sizeof(h);
	if (crc(f->body, f->body_len) != h.body_crc) {
		r = cella_err_set(err, EINVAL, "state file %s: CRC mismatch (corrupted)", path);
		goto fail;
	}
	/* The sections must tile the body exactly. */
	for (size_t off = 0; off < f->body_len;) {
		struct snap_sec_header sh;
		if (f->body_len - off < sizeof(sh)) {
			r = cella_err_set(err, EINVAL, "state file %s: section header cut at byte %zu", path, off);
			goto fail;
		}
		memcpy(&sh, f->body + off, sizeof(sh));
		size_t step = sizeof(sh) + (((size_t)sh.len + 7) & ~(size_t)7);
		if (!memchr(sh.name, 0, sizeof(sh.name)) || step > f->body_len - off) {
			r = cella_err_set(err, EINVAL, "state file %s: malformed section at byte %zu", path, off);
			goto fail;
		}
		off += step;
	}
	f->version = h.version;
	return 0;
fail:
	snap_file_close(f);
	return r;
}

void snap_file_close(struct snap_file *f)
{
	free(f->data);
	memset(f, 0, sizeof(*f));
}

/* Calls fn(section, ctx) for each section; stops at a non-zero return and returns it. */
static int walk(const struct snap_file *f, int (*fn)(const struct snap_sec_header *h, const uint8_t *data, void *ctx),
		void *ctx)
{
	for (size_t off = 0; off < f->body_len;) {
		struct snap_sec_header sh;
		memcpy(&sh, f->body + off, sizeof(sh));
		int r = fn(&sh, f->body + off + sizeof(sh), ctx);
		if (r)
			return r;
		off += sizeof(sh) + (((size_t)sh.len + 7) & ~(size_t)7);
	}
	return 0;
}

static void sec_init(struct snap_sec *s, const struct snap_sec_header *h, const uint8_t *data)
{
	memset(s, 0, sizeof(*s));
	memcpy(s->name, h->name, sizeof(s->name));
	s->p = data;
	s->len = h->len;
}

struct find_ctx {
	const char *name;
	struct snap_sec *out;
};

static int find_fn(const struct snap_sec_header *h, const uint8_t *data, void *ctx)
{
	struct find_ctx *c = ctx;
	if (strcmp(h->name, c->name))
		return 0;
	sec_init(c->out, h, data);
	return 1;
}

static int vfind(const struct snap_file *f, struct snap_sec *s, char *name, size_t cap, const char *fmt, va_list ap)
{
	vsnprintf(name, cap, fmt, ap);
	struct find_ctx c = { name, s };
	return walk(f, find_fn, &c);
}

int snap_find(const struct snap_file *f, struct snap_sec *s, const char *fmt, ...)
{
	char name[SNAP_NAME_MAX];
	va_list ap;
	va_start(ap, fmt);
	int r = vfind(f, s, name, sizeof(name), fmt, ap);
	va_end(ap);
	return r;
}

int snap_need(const struct snap_file *f, struct snap_sec *s, struct cella_err *err, const char *fmt, ...)
{
	char name[SNAP_NAME_MAX];
	va_list ap;
	va_start(ap, fmt);
	int r = vfind(f, s, name, sizeof(name), fmt, ap);
	va_end(ap);
	if (r == 1)
		return 0;
	return cella_err_set(err, EINVAL, "state file: no section \"%s\"", name);
}

struct each_ctx {
	const char *prefix;
	int (*fn)(struct snap_sec *s, void *ctx);
	void *ctx;
};

static int each_fn(const struct snap_sec_header *h, const uint8_t *data, void *ctx)
{
	struct each_ctx *c = ctx;
	if (strncmp(h->name, c->prefix, strlen(c->prefix)))
		return 0;
	struct snap_sec s;
	sec_init(&s, h, data);
	int r = c->fn(&s, c->ctx);
	return r < 0 ? r : 0;
}

int snap_each(const struct snap_file *f, const char *prefix, int (*fn)(struct snap_sec *s, void *ctx), void *ctx)
{
	struct each_ctx c = { prefix, fn, ctx };
	return walk(f, each_fn, &c);
}

void snap_get(struct snap_sec *s, void *out, size_t len)
{
	if (s->bad || len > s->len - s->off) {
		s->bad = true;
		memset(out, 0, len);
		return;
	}
	memcpy(out, s->p + s->off, len);
	s->off += len;
}

uint8_t snap_get_u8(struct snap_sec *s) { uint8_t v; snap_get(s, &v, 1); return v; }
uint16_t snap_get_u16(struct snap_sec *s) { uint16_t v; snap_get(s, &v, 2); return v; }
uint32_t snap_get_u32(struct snap_sec *s) { uint32_t v; snap_get(s, &v, 4); return v; }
uint64_t snap_get_u64(struct snap_sec *s) { uint64_t v; snap_get(s, &v, 8); return v; }
bool snap_get_bool(struct snap_sec *s) { return snap_get_u8(s) != 0; }

size_t snap_left(const struct snap_sec *s)
{
	return s->bad ? 0 : s->len - s->off;
}

int snap_sec_done(struct snap_sec *s, struct cella_err *err)
{
	if (s->bad)
		return cella_err_set(err, EINVAL, "state file: section \"%s\": truncated (%zu bytes)", s->name, s->len);
	if (s->off != s->len)
		return cella_err_set(err, EINVAL, "state file: section \"%s\": %zu unexpected trailing bytes", s->name,
				     s->len - s->off);
	return 0;
}
