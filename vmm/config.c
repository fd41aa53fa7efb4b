/* VM settings: defaults, the JSON form, static checks. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/json.h"
#include "base/util.h"
#include "vmm/vmm.h"

#define CONFIG_MAX_BYTES (1 << 20)

void vmm_config_init(struct vmm_config *cfg)
{
	*cfg = (struct vmm_config){ .cpus = 1, .memory_mib = VMM_DEFAULT_MEMORY_MIB, .console = VMM_CONSOLE_STDIO };
}

void vmm_config_free(struct vmm_config *cfg)
{
	free(cfg->kernel);
	free(cfg->initrd);
	free(cfg->cmdline);
	free(cfg->console_path);
	free(cfg->kvm_device);
	free(cfg->snapshot_dir);
	free(cfg->restore_state);
	free(cfg->restore_memory);
	vmm_config_init(cfg);
}

static int replace(char **slot, const char *value, struct cella_err *err)
{
	char *copy = strdup(value);
	if (!copy)
		return cella_err_set(err, ENOMEM, "out of memory");
	free(*slot);
	*slot = copy;
	return 0;
}

int vmm_config_set_console(struct vmm_config *cfg, const char *spec, struct cella_err *err)
{
	if (!strcmp(spec, "stdio")) {
		cfg->console = VMM_CONSOLE_STDIO;
		return 0;
	}
	if (!strcmp(spec, "none")) {
		cfg->console = VMM_CONSOLE_NONE;
		return 0;
	}
	if (!*spec)
		return cella_err_set(err, EINVAL, "console: expected stdio, none or a file path, got \"\"");
	cfg->console = VMM_CONSOLE_FILE;
	return replace(&cfg->console_path, spec, err);
}

/* Every field of the JSON form. vmm_config_to_json must write each one (a unit test checks it). */
static const char *const known[] = { "kernel", "initrd", "cmdline", "cpus", "memory_mib", "console", "rng", NULL };

static int from_json(struct vmm_config *cfg, json_t *j, const char *path, struct cella_err *err)
{
	int r;
	const char *s;
	uint32_t cpus;
	uint64_t mib;
	bool b;
	if ((r = cj_expect_object(j, "config", err)) < 0 || (r = cj_reject_unknown(j, "", known, err)) < 0)
		goto fail;
	if ((r = cj_get_string(j, "", "kernel", false, &s, err)) < 0 || (r > 0 && (r = replace(&cfg->kernel, s, err)) < 0))
		goto fail;
	if ((r = cj_get_string(j, "", "initrd", false, &s, err)) < 0 || (r > 0 && (r = replace(&cfg->initrd, s, err)) < 0))
		goto fail;
	if ((r = cj_get_string(j, "", "cmdline", false, &s, err)) < 0 ||
	    (r > 0 && (r = replace(&cfg->cmdline, s, err)) < 0))
		goto fail;
	if ((r = cj_get_string(j, "", "console", false, &s, err)) < 0 ||
	    (r > 0 && (r = vmm_config_set_console(cfg, s, err)) < 0))
		goto fail;
	if ((r = cj_get_uint32(j, "", "cpus", false, &cpus, err)) < 0)
		goto fail;
	if (r > 0)
		cfg->cpus = cpus;
	if ((r = cj_get_uint64(j, "", "memory_mib", false, &mib, err)) < 0)
		goto fail;
	if (r > 0)
		cfg->memory_mib = mib;
	if ((r = cj_get_bool(j, "", "rng", false, &b, err)) < 0)
		goto fail;
	if (r > 0)
		cfg->rng = b;
	return 0;
fail:
	return cella_err_wrap(err, "%s", path);
}

int vmm_config_load_json(struct vmm_config *cfg, const char *path, struct cella_err *err)
{
	_cleanup_json_ json_t *j = NULL;
	int r = cj_load_file(path, path, CONFIG_MAX_BYTES, &j, err);
	if (r < 0)
		return r;
	return from_json(cfg, j, path, err);
}

int vmm_config_from_json_text(struct vmm_config *cfg, const char *text, size_t len, const char *what,
			      struct cella_err *err)
{
	_cleanup_json_ json_t *j = NULL;
	int r = cj_load_string(text, len, what, &j, err);
	if (r < 0)
		return r;
	return from_json(cfg, j, what, err);
}

int vmm_config_to_json(const struct vmm_config *cfg, char **out, struct cella_err *err)
{
	_cleanup_json_ json_t *j = json_object();
	if (!j)
		return cella_err_set(err, ENOMEM, "out of memory");
	const char *console = cfg->console == VMM_CONSOLE_STDIO ? "stdio"
			      : cfg->console == VMM_CONSOLE_NONE ? "none" : cfg->console_path;
	int bad = 0;
	if (cfg->kernel)
		bad |= json_object_set_new(j, "kernel", json_string(cfg->kernel));
	if (cfg->initrd)
		bad |= json_object_set_new(j, "initrd", json_string(cfg->initrd));
	if (cfg->cmdline)
		bad |= json_object_set_new(j, "cmdline", json_string(cfg->cmdline));
	bad |= json_object_set_new(j, "cpus", json_integer(cfg->cpus));
	bad |= json_object_set_new(j, "memory_mib", json_integer((json_int_t)cfg->memory_mib));
	if (console)
		bad |= json_object_set_new(j, "console", json_string(console));
	bad |= json_object_set_new(j, "rng", json_boolean(cfg->rng));
	char *text = bad ? NULL : json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	if (!text)
		return cella_err_set(err, ENOMEM, "config: cannot write it as JSON");
	*out = text;
	return 0;
}

int vmm_config_check(const struct vmm_config *cfg, struct cella_err *err)
{
	if (!cfg->kernel || !*cfg->kernel)
		return cella_err_set(err, EINVAL, "kernel: required (--kernel PATH or \"kernel\" in the config)");
	if (cfg->cpus < 1 || cfg->cpus > VMM_MAX_CPUS)
		return cella_err_set(err, EINVAL, "cpus: %u is out of range (1..%d)", cfg->cpus, VMM_MAX_CPUS);
	if (cfg->memory_mib < VMM_MIN_MEMORY_MIB_FLAT || cfg->memory_mib > VMM_MAX_MEMORY_MIB)
		return cella_err_set(err, EINVAL, "memory: %llu MiB is out of range (%d..%llu MiB)",
				     (unsigned long long)cfg->memory_mib, VMM_MIN_MEMORY_MIB_FLAT,
				     (unsigned long long)VMM_MAX_MEMORY_MIB);
	if (cfg->cmdline && strlen(cfg->cmdline) >= 4096)
		return cella_err_set(err, E2BIG, "cmdline: %zu bytes, at most 4095", strlen(cfg->cmdline));
	return 0;
}

const char *vmm_outcome_name(enum vmm_outcome outcome)
{
	switch (outcome) {
	case VMM_POWEROFF: return "poweroff";
	case VMM_REBOOT: return "reboot";
	case VMM_FAILED: return "failed";
	case VMM_SIGNALED: return "signaled";
	}
	return "unknown";
}
