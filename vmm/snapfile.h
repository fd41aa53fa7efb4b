/* The snapshot state file: a header (magic, format version, body length, CRC32 of the body) and a
 * body of named sections. Devices write their state into a section and read it back with bounds-
 * checked getters; a section that is short, long or absent is an error naming the section.
 *
 *	header  "CELLASNP" | u32 version | u32 header bytes | u64 body bytes | u32 crc32(body) | u32 crc32(header)
 *	section char name[32] (NUL-padded) | u32 data bytes | u32 reserved | data, padded to 8 bytes
 *
 * All integers little-endian (x86 only). Guest memory is a separate file (snapshot.h). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cella_err;

#define SNAP_MAGIC "CELLASNP"
#define SNAP_VERSION 1u
#define SNAP_NAME_MAX 32 /* section names, NUL included */
#define SNAP_HEADER_BYTES 32
#define SNAP_MAX_STATE_BYTES (64u << 20) /* a state file larger than this is refused */

/* --- writing: an in-memory body, written out by snap_writer_finish --- */
struct snap_writer {
	uint8_t *buf;
	size_t len, cap;
	size_t sec_start; /* offset of the open section's header; SIZE_MAX = none open */
	int error;        /* first allocation failure (-ENOMEM); reported by snap_end/finish */
};

void snap_writer_init(struct snap_writer *w);
void snap_writer_free(struct snap_writer *w);
/* Opens a section (names are unique within a file; printf-style). Data calls go into it until snap_end. */
void snap_begin(struct snap_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void snap_put(struct snap_writer *w, const void *data, size_t len);
void snap_put_u8(struct snap_writer *w, uint8_t v);
void snap_put_u16(struct snap_writer *w, uint16_t v);
void snap_put_u32(struct snap_writer *w, uint32_t v);
void snap_put_u64(struct snap_writer *w, uint64_t v);
void snap_put_bool(struct snap_writer *w, bool v);
void snap_end(struct snap_writer *w);
/* Writes header + body to path (created 0600, replaced atomically through path.tmp + rename). */
int snap_writer_finish(struct snap_writer *w, const char *path, struct cella_err *err);

/* --- reading --- */
struct snap_file {
	uint8_t *data; /* the whole file */
	size_t len;
	uint32_t version;
	const uint8_t *body;
	size_t body_len;
};

/* A cursor over one section's data. Getters past the end return 0 and mark the cursor bad;
 * snap_sec_done reports it (and trailing bytes) as an error naming the section. */
struct snap_sec {
	char name[SNAP_NAME_MAX];
	const uint8_t *p;
	size_t len, off;
	bool bad;
};

/* Reads and checks path: size, magic, version (SNAP_VERSION only), header CRC, body length
 * (truncation), body CRC, and that the sections tile the body. Errors name the file and problem. */
int snap_file_open(struct snap_file *f, const char *path, struct cella_err *err);
void snap_file_close(struct snap_file *f);
/* Finds a section (printf-style name). Returns 1 found, 0 absent (s untouched). */
int snap_find(const struct snap_file *f, struct snap_sec *s, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* As snap_find, but absence is an error: "state file: no section \"vcpu1.regs\"". */
int snap_need(const struct snap_file *f, struct snap_sec *s, struct cella_err *err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Calls fn for every section whose name starts with prefix; stops at a negative return. */
int snap_each(const struct snap_file *f, const char *prefix, int (*fn)(struct snap_sec *s, void *ctx), void *ctx);

void snap_get(struct snap_sec *s, void *out, size_t len);
uint8_t snap_get_u8(struct snap_sec *s);
uint16_t snap_get_u16(struct snap_sec *s);
uint32_t snap_get_u32(struct snap_sec *s);
uint64_t snap_get_u64(struct snap_sec *s);
bool snap_get_bool(struct snap_sec *s);
/* Bytes left in the section. */
size_t snap_left(const struct snap_sec *s);
/* 0, or an error "state file: section \"NAME\": truncated" / "... N unexpected trailing bytes". */
int snap_sec_done(struct snap_sec *s, struct cella_err *err);
