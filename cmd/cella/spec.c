/* cella spec [--bundle DIR] [--rootless]: writes a default config.json (refuses to overwrite). */
#include "cmd/cella/cella.h"

#include "base/json.h"
#include "base/util.h"
#include "runtime/config.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

enum { O_BUNDLE = 1, O_ROOTLESS };
static const struct opt spec_opts[] = {
	{ "bundle", 'b', true, O_BUNDLE },
	{ "rootless", 0, false, O_ROOTLESS },
	{ NULL, 0, false, 0 },
};

int verb_spec(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	const char *val, *bundle = ".";
	bool rootless = false;
	int i = 1, k;
	while ((k = opt_next(argc, argv, &i, spec_opts, &val, err)) != -1) {
		if (k == -2)
			return -EINVAL;
		if (k == O_BUNDLE)
			bundle = val;
		else if (k == O_ROOTLESS)
			rootless = !strcmp(val, "true");
		else
			return cella_err_set(err, EINVAL, "spec: unexpected argument \"%s\"", val);
	}
	_cleanup_free_ char *path = cella_path_join(bundle, "config.json");
	if (!path)
		return cella_err_set(err, ENOMEM, "spec");
	if (access(path, F_OK) == 0)
		return cella_err_set(err, EEXIST, "File %s exists. Remove it first", path);
	_cleanup_json_ json_t *j = oci_config_default(rootless);
	if (!j)
		return cella_err_set(err, ENOMEM, "spec");
	_cleanup_free_ char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (!text)
		return cella_err_set(err, ENOMEM, "spec");
	size_t len = strlen(text);
	text[len] = '\0';
	_cleanup_free_ char *with_nl = cella_strdup_printf("%s\n", text);
	return cella_write_file(path, with_nl, strlen(with_nl), 0644, err);
}
