#include "base/err.h"
#include "base/json.h"
#include "base/util.h"
#include "tap.h"

#include <errno.h>
#include <sys/stat.h>

static void test_err(void)
{
	struct cella_err err = { 0 };
	int r = cella_err_set(&err, ENOENT, "open %s", "x");
	TAP_OK(r == -ENOENT, "err_set returns -code");
	cella_err_wrap(&err, "load config");
	TAP_STREQ(err.msg, "load config: open x", "wrap prefixes context");
	r = cella_err_sys(&err, -EACCES, "mkdir %s", "/y");
	TAP_OK(r == -EACCES && strstr(err.msg, "Permission denied"), "err_sys appends strerror");
	TAP_OK(cella_err_set(NULL, EINVAL, "x") == -EINVAL, "NULL err is allowed");
}

static void test_numbers(void)
{
	int64_t v;
	uint64_t u;
	TAP_OK(cella_parse_int64("-42", &v) == 0 && v == -42, "parse int64");
	TAP_OK(cella_parse_int64("12x", &v) == -EINVAL, "trailing junk rejected");
	TAP_OK(cella_parse_int64("", &v) == -EINVAL, "empty rejected");
	TAP_OK(cella_parse_uint64("-1", &u) == -EINVAL, "negative uint rejected");
	TAP_OK(cella_parse_uint64("99999999999999999999999", &u) == -ERANGE, "overflow rejected");
}

static void test_paths(void)
{
	_cleanup_free_ char *a = cella_path_join("/run/cella/", "/x/state.json");
	TAP_STREQ(a, "/run/cella/x/state.json", "path_join collapses slashes");
	_cleanup_free_ char *b = cella_path_join("/", "etc");
	TAP_STREQ(b, "/etc", "path_join from root");

	char tmpl[] = "/tmp/cella-test-XXXXXX";
	TAP_OK(mkdtemp(tmpl) != NULL, "mkdtemp");
	_cleanup_free_ char *deep = cella_path_join(tmpl, "a/b/c");
	TAP_OK(cella_mkdir_p(deep, 0755, NULL) == 0, "mkdir_p creates nested dirs");
	_cleanup_free_ char *f = cella_path_join(deep, "f");
	TAP_OK(cella_write_file_atomic(f, "hello", 5, 0644, NULL) == 0, "atomic write");
	_cleanup_free_ char *content = NULL;
	size_t len;
	TAP_OK(cella_read_file(f, 1024, &content, &len, NULL) == 0 && len == 5, "read back");
	TAP_STREQ(content, "hello", "content matches");
	struct cella_err err = { 0 };
	char *small = NULL;
	TAP_OK(cella_read_file(f, 3, &small, &len, &err) == -EFBIG, "read limit enforced");
	TAP_OK(cella_rm_rf(tmpl, NULL) == 0, "rm_rf");
	struct stat st;
	TAP_OK(stat(tmpl, &st) < 0 && errno == ENOENT, "tree gone");
}

static void test_passwd(void)
{
	char path[] = "/tmp/cella-passwd-XXXXXX";
	int fd = mkstemp(path);
	const char *text = "root:x:0:0:root:/root:/bin/sh\n# comment\nbad:x:12x:0::/nope:/bin/sh\n"
			   "nohome:x:7:7:n::/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh";
	TAP_OK(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text), "passwd file written");
	if (fd >= 0)
		close(fd);
	_cleanup_free_ char *root = cella_passwd_field(path, 0, 0);
	TAP_STREQ(root, "root", "uid 0 -> name");
	_cleanup_free_ char *home = cella_passwd_field(path, 1000, 5);
	TAP_STREQ(home, "/home/web", "last line without newline -> home");
	_cleanup_free_ char *shell = cella_passwd_field(path, 0, 6);
	TAP_STREQ(shell, "/bin/sh", "shell has no trailing newline");
	TAP_OK(!cella_passwd_field(path, 7, 5), "empty home -> NULL");
	TAP_OK(!cella_passwd_field(path, 12, 0), "uid with junk never matches");
	TAP_OK(!cella_passwd_field(path, 4242, 0), "unknown uid -> NULL");
	TAP_OK(!cella_passwd_field("/nonexistent/passwd", 0, 0), "missing file -> NULL");
	unlink(path);
}

static void test_json(void)
{
	struct cella_err err = { 0 };
	_cleanup_json_ json_t *j = NULL;
	const char *text = "{\"a\": {\"n\": \"1G\", \"m\": -1, \"s\": [\"x\", 2]}}";
	TAP_OK(cj_load_string(text, strlen(text), "config.json", &j, &err) == 0, "load");
	json_t *a = NULL;
	TAP_OK(cj_get_object(j, "", "a", true, &a, &err) == 1, "get object");
	int64_t v;
	TAP_OK(cj_get_int64(a, "a", "n", false, &v, &err) == -EINVAL, "string is not integer");
	TAP_STREQ(err.msg, "a.n: expected integer, got string", "error names path and types");
	uint64_t u;
	TAP_OK(cj_get_uint64(a, "a", "m", false, &u, &err) < 0, "negative rejected for uint");
	TAP_STREQ(err.msg, "a.m: expected non-negative integer, got -1", "negative message");
	TAP_OK(cj_get_int64(a, "a", "zz", false, &v, &err) == 0, "absent optional is 0");
	TAP_OK(cj_get_int64(a, "a", "zz", true, &v, &err) < 0, "absent required fails");
	TAP_STREQ(err.msg, "a.zz: required", "required message");
	_cleanup_free_ char *dup = strdup("old");
	TAP_OK(cj_get_strdup(a, "a", "zz", false, &dup, &err) == 0 && !strcmp(dup, "old"), "strdup: absent keeps the value");
	TAP_OK(cj_get_strdup(a, "a", "n", false, &dup, &err) == 1 && !strcmp(dup, "1G"), "strdup: present replaces it");
	TAP_OK(cj_get_strdup(a, "a", "m", false, &dup, &err) == -EINVAL && !strcmp(dup, "1G"), "strdup: wrong type fails");
	TAP_STREQ(err.msg, "a.m: expected string, got integer", "strdup: error names path and type");
	char **sv = NULL;
	TAP_OK(cj_get_strv(a, "a", "s", false, &sv, &err) < 0, "mixed array rejected");
	TAP_STREQ(err.msg, "a.s[1]: expected string, got integer", "array element path");

	_cleanup_json_ json_t *bad = NULL;
	TAP_OK(cj_load_string("{\"a\":\n 1,}", 10, "config.json", &bad, &err) < 0, "syntax error");
	TAP_OK(strstr(err.msg, "config.json: line 2") != NULL, "syntax error has line: %s", err.msg);
	static const char *const known[] = { "a", NULL };
	_cleanup_json_ json_t *u2 = json_pack("{s:i,s:i}", "a", 1, "b", 2);
	TAP_OK(cj_reject_unknown(u2, "cfg", known, &err) < 0, "unknown field rejected");
	TAP_STREQ(err.msg, "cfg.b: unknown field", "unknown field message");
}

int main(void)
{
	test_err();
	test_numbers();
	test_paths();
	test_passwd();
	test_json();
	return tap_done();
}
