/* JSON over jansson, with errors that name the JSON path: "linux.resources.memory.limit: expected
 * integer, got string". Getters return 1 when the key is present, 0 when absent (and not required),
 * or a negative errno with err filled. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct cella_err;

#define CJ_PATH_MAX 512

static inline void cella_json_decrefp(json_t **j)
{
	if (*j)
		json_decref(*j);
}
#define _cleanup_json_ __attribute__((cleanup(cella_json_decrefp)))

/* Parses a file (at most max bytes); errors say "<what>: line L column C: reason". */
int cj_load_file(const char *path, const char *what, size_t max, json_t **out, struct cella_err *err);
int cj_load_string(const char *text, size_t len, const char *what, json_t **out, struct cella_err *err);

const char *cj_type_name(const json_t *j);

/* "a.b" + "c" -> "a.b.c"; "" + "c" -> "c"; index variant: "a.b[3]". Truncates safely. */
void cj_subpath(char *buf, size_t cap, const char *path, const char *key);
void cj_subpath_index(char *buf, size_t cap, const char *path, size_t index);

/* Checks the node itself: j must be non-NULL and of the type. */
int cj_expect_object(const json_t *j, const char *path, struct cella_err *err);
int cj_expect_array(const json_t *j, const char *path, struct cella_err *err);

/* Members of obj (which must be an object). On absence with required=true: "<path>.<key>: required". */
int cj_get_string(const json_t *obj, const char *path, const char *key, bool required, const char **out,
		  struct cella_err *err);
/* Like cj_get_string, into a malloc'd copy: *out (NULL or malloc'd) is freed and replaced when the
 * key is present, left alone when it is absent. */
int cj_get_strdup(const json_t *obj, const char *path, const char *key, bool required, char **out,
		  struct cella_err *err);
int cj_get_bool(const json_t *obj, const char *path, const char *key, bool required, bool *out,
		struct cella_err *err);
int cj_get_int64(const json_t *obj, const char *path, const char *key, bool required, int64_t *out,
		 struct cella_err *err);
/* Rejects negatives: "<path>: expected non-negative integer, got -1". */
int cj_get_uint64(const json_t *obj, const char *path, const char *key, bool required, uint64_t *out,
		  struct cella_err *err);
int cj_get_uint32(const json_t *obj, const char *path, const char *key, bool required, uint32_t *out,
		  struct cella_err *err);
int cj_get_double(const json_t *obj, const char *path, const char *key, bool required, double *out,
		  struct cella_err *err);
int cj_get_object(const json_t *obj, const char *path, const char *key, bool required, json_t **out,
		  struct cella_err *err);
int cj_get_array(const json_t *obj, const char *path, const char *key, bool required, json_t **out,
		 struct cella_err *err);
/* An array of strings as a malloc'd NULL-terminated vector (free with cella_strv_free). */
int cj_get_strv(const json_t *obj, const char *path, const char *key, bool required, char ***out,
		struct cella_err *err);

/* Fails on a member of obj not in the NULL-terminated list known: "<path>.<key>: unknown field". */
int cj_reject_unknown(const json_t *obj, const char *path, const char *const *known, struct cella_err *err);

/* Serializes compactly (flags as json_dumps); NULL on failure. */
char *cj_dump(const json_t *j, size_t flags);
