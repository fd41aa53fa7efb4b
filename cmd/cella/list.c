/* cella list [--format table|json] [--quiet]: runc's columns ID PID STATUS BUNDLE CREATED OWNER. */
#include "cmd/cella/cella.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

enum { O_FORMAT = 1, O_QUIET };
static const struct opt list_opts[] = {
	{ "format", 'f', true, O_FORMAT },
	{ "quiet", 'q', false, O_QUIET },
	{ NULL, 0, false, 0 },
};

#define NCOL 6

static const char *cell(json_t *c, int col, char *buf, size_t cap)
{
	static const char *const keys[NCOL] = { "id", "pid", "status", "bundle", "created", "owner" };
	json_t *v = json_object_get(c, keys[col]);
	if (json_is_integer(v)) {
		snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
		return buf;
	}
	return json_string_value(v) ? json_string_value(v) : "";
}

int verb_list(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *val, *format = "table";
	bool quiet = false;
	int i = 1, k;
	while ((k = opt_next(argc, argv, &i, list_opts, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		if (k == O_FORMAT)
			format = val;
		else if (k == O_QUIET)
			quiet = !strcmp(val, "true");
		else
			return cella_err_set(err, EINVAL, "list: unexpected argument \"%s\"", val);
	}
	if (strcmp(format, "table") && strcmp(format, "json"))
		return cella_err_set(err, EINVAL, "invalid format option");
	json_t *arr = NULL;
	int r = container_list(&g->rt, &arr, err);
	if (r < 0)
		return r;
	size_t n = json_array_size(arr);
	if (quiet) {
		for (size_t c = 0; c < n; c++)
			printf("%s\n", json_string_value(json_object_get(json_array_get(arr, c), "id")));
	} else if (!strcmp(format, "json")) {
		r = print_json(arr, false, err);
	} else {
		/* Go tabwriter(minwidth 12, padding 3), as runc prints it. */
		static const char *const heads[NCOL] = { "ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER" };
		size_t width[NCOL];
		char buf[32];
		for (int col = 0; col < NCOL; col++) {
			width[col] = strlen(heads[col]);
			for (size_t c = 0; c < n; c++) {
				size_t l = strlen(cell(json_array_get(arr, c), col, buf, sizeof(buf)));
				if (l > width[col])
					width[col] = l;
			}
			width[col] += 3;
			if (width[col] < 12)
				width[col] = 12;
		}
		for (int col = 0; col < NCOL - 1; col++)
			printf("%-*s", (int)width[col], heads[col]);
		printf("%s\n", heads[NCOL - 1]);
		for (size_t c = 0; c < n; c++)
			for (int col = 0; col < NCOL; col++) {
				const char *s = cell(json_array_get(arr, c), col, buf, sizeof(buf));
				if (col < NCOL - 1)
					printf("%-*s", (int)width[col], s);
				else
					printf("%s\n", s);
			}
	}
	json_decref(arr);
	return r;
}
