#include "base/json.h"

#include "base/err.h"
#include "base/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int load_error(const json_error_t *je, const char *what, struct cella_err *err)
{
	if (je->line > 0)
		return cella_err_set(err, EINVAL, "%s: line %d column %d: %s", what, je->line, je->column,
				     je->text);
	return cella_err_set(err, EINVAL, "%s: %s", what, je->text);
}

int cj_load_string(const char *text, size_t len, const char *what, json_t **out, struct cella_err *err)
{
	json_error_t je;
	json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!j)
		return load_error(&je, what, err);
	*out = j;
	return 0;
}

int cj_load_file(const char *path, const char *what, size_t max, json_t **out, struct cella_err *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = cella_read_file(path, max, &text, &len, err);
	if (r < 0)
		return r;
	if (len == 0)
		return cella_err_set(err, EINVAL, "%s: empty file", what);
	return cj_load_string(text, len, what, out, err);
}

const char *cj_type_name(const json_t *j)
{
	if (!j)
		return "nothing";
	switch (json_typeof(j)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "array";
	case JSON_STRING: return "string";
	case JSON_INTEGER: return "integer";
	case JSON_REAL: return "number";
	case JSON_TRUE:
	case JSON_FALSE: return "boolean";
	case JSON_NULL: return "null";
	}
	return "unknown";
}

void cj_subpath(char *buf, size_t cap, const char *path, const char *key)
{
	if (!path || !*path)
		snprintf(buf, cap, "%s", key);
	else
		snprintf(buf, cap, "%s.%s", path, key);
}

void cj_subpath_index(char *buf, size_t cap, const char *path, size_t index)
{
	snprintf(buf, cap, "%s[%zu]", path ? path : "", index);
}

static int type_error(const json_t *j, const char *path, const char *want, struct cella_err *err)
{
	return cella_err_set(err, EINVAL, "%s: expected %s, got %s", path, want, cj_type_name(j));
}

int cj_expect_object(const json_t *j, const char *path, struct cella_err *err)
{
	return json_is_object(j) ? 0 : type_error(j, path, "object", err);
}

int cj_expect_array(const json_t *j, const char *path, struct cella_err *err)
{
	return json_is_array(j) ? 0 : type_error(j, path, "array", err);
}

/* Looks key up; 1 present, 0 absent (or null, which OCI configs use for "unset"), <0 error. */
static int member(const json_t *obj, const char *path, const char *key, bool required, json_t **out,
		  char *sub, struct cella_err *err)
{
	cj_subpath(sub, CJ_PATH_MAX, path, key);
	if (!json_is_object(obj))
		return type_error(obj, path && *path ? path : "(top level)", "object", err);
	json_t *j = json_object_get(obj, key);
	if (!j || json_is_null(j)) {
		if (required)
			return cella_err_set(err, EINVAL, "%s: required", sub);
		return 0;
	}
	*out = j;
	return 1;
}

enum kind { K_STRING, K_BOOLEAN, K_INTEGER, K_NUMBER, K_OBJECT, K_ARRAY };
static const char *const kind_names[] = { "string", "boolean", "integer", "number", "object", "array" };

static bool is_kind(const json_t *j, enum kind k)
{
	switch (k) {
	case K_STRING: return json_is_string(j);
	case K_BOOLEAN: return json_is_boolean(j);
	case K_INTEGER: return json_is_integer(j);
	case K_NUMBER: return json_is_number(j);
	case K_OBJECT: return json_is_object(j);
	case K_ARRAY: return json_is_array(j);
	}
	return false;
}

/* member() plus the type check every getter makes ("PATH: expected KIND, got TYPE"); *out is set
 * only when the member is present and of that kind. */
static int typed_member(const json_t *obj, const char *path, const char *key, bool required, enum kind k,
			json_t **out, char *sub, struct cella_err *err)
{
	json_t *j = NULL;
	int r = member(obj, path, key, required, &j, sub, err);
	if (r <= 0)
		return r;
	if (!is_kind(j, k))
		return type_error(j, sub, kind_names[k], err);
	*out = j;
	return 1;
}

int cj_get_string(const json_t *obj, const char *path, const char *key, bool required, const char **out,
		  struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	json_t *j = NULL;
	int r = typed_member(obj, path, key, required, K_STRING, &j, sub, err);
	if (r <= 0)
		return r;
	*out = json_string_value(j);
	return 1;
}

int cj_get_strdup(const json_t *obj, const char *path, const char *key, bool required, char **out,
		  struct cella_err *err)
{
	const char *s;
	int r = cj_get_string(obj, path, key, required, &s, err);
	if (r <= 0)
		return r;
	char *copy = strdup(s);
	if (!copy)
		return cella_err_set(err, ENOMEM, "out of memory");
	free(*out);
	*out = copy;
	return 1;
}

int cj_get_bool(const json_t *obj, const char *path, const char *key, bool required, bool *out,
		struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	json_t *j = NULL;
	int r = typed_member(obj, path, key, required, K_BOOLEAN, &j, sub, err);
	if (r <= 0)
		return r;
	*out = json_is_true(j);
	return 1;
}

int cj_get_int64(const json_t *obj, const char *path, const char *key, bool required, int64_t *out,
		 struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	json_t *j = NULL;
	int r = typed_member(obj, path, key, required, K_INTEGER, &j, sub, err);
	if (r <= 0)
		return r;
	*out = json_integer_value(j);
	return 1;
}

int cj_get_uint64(const json_t *obj, const char *path, const char *key, bool required, uint64_t *out,
		  struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	json_t *j = NULL;
	int r = typed_member(obj, path, key, required, K_INTEGER, &j, sub, err);
	if (r <= 0)
		return r;
	json_int_t v = json_integer_value(j);
	if (v < 0)
		return cella_err_set(err, EINVAL, "%s: expected non-negative integer, got %" JSON_INTEGER_FORMAT,
				     sub, v);
	*out = (uint64_t)v;
	return 1;
}

int cj_get_uint32(const json_t *obj, const char *path, const char *key, bool required, uint32_t *out,
		  struct cella_err *err)
{
	uint64_t v = 0;
	int r = cj_get_uint64(obj, path, key, required, &v, err);
	if (r <= 0)
		return r;
	if (v > UINT32_MAX) {
		char sub[CJ_PATH_MAX];
		cj_subpath(sub, sizeof(sub), path, key);
		return cella_err_set(err, ERANGE, "%s: %" PRIu64 " is out of range (max %u)", sub, v, UINT32_MAX);
	}
	*out = (uint32_t)v;
	return 1;
}

int cj_get_double(const json_t *obj, const char *path, const char *key, bool required, double *out,
		  struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	json_t *j = NULL;
	int r = typed_member(obj, path, key, required, K_NUMBER, &j, sub, err);
	if (r <= 0)
		return r;
	*out = json_number_value(j);
	return 1;
}

int cj_get_object(const json_t *obj, const char *path, const char *key, bool required, json_t **out,
		  struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	return typed_member(obj, path, key, required, K_OBJECT, out, sub, err);
}

int cj_get_array(const json_t *obj, const char *path, const char *key, bool required, json_t **out,
		 struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	return typed_member(obj, path, key, required, K_ARRAY, out, sub, err);
}

int cj_get_strv(const json_t *obj, const char *path, const char *key, bool required, char ***out,
		struct cella_err *err)
{
	char sub[CJ_PATH_MAX];
	json_t *arr;
	int r = cj_get_array(obj, path, key, required, &arr, err);
	if (r <= 0)
		return r;
	cj_subpath(sub, sizeof(sub), path, key);
	size_t n = json_array_size(arr);
	_cleanup_strv_ char **v = calloc(n + 1, sizeof(char *));
	if (!v)
		return cella_err_set(err, ENOMEM, "%s: out of memory", sub);
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(arr, i);
		if (!json_is_string(e)) {
			char el[CJ_PATH_MAX];
			cj_subpath_index(el, sizeof(el), sub, i);
			return type_error(e, el, "string", err);
		}
		v[i] = strdup(json_string_value(e));
		if (!v[i])
			return cella_err_set(err, ENOMEM, "%s: out of memory", sub);
	}
	*out = TAKE_PTR(v);
	return 1;
}

int cj_reject_unknown(const json_t *obj, const char *path, const char *const *known, struct cella_err *err)
{
	const char *key;
	json_t *val;
	json_object_foreach((json_t *)obj, key, val) {
		bool ok = false;
		for (size_t i = 0; known[i]; i++)
			if (!strcmp(known[i], key)) {
				ok = true;
				break;
			}
		if (!ok) {
			char sub[CJ_PATH_MAX];
			cj_subpath(sub, sizeof(sub), path, key);
			return cella_err_set(err, EINVAL, "%s: unknown field", sub);
		}
	}
	return 0;
}

char *cj_dump(const json_t *j, size_t flags)
{
	return json_dumps(j, flags);
}
