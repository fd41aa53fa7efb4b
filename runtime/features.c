/* The runtime-spec "features" document: what this build of cella understands. */
#include "runtime/container.h"

#include "runtime/names.h"
#include "runtime/seccomp.h"

#include <string.h>

static const char *const mount_options[] = {
	"acl", "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion",
	"lazytime", "loud", "mand", "noacl", "noatime", "nodev", "nodiratime", "noexec", "noiversion",
	"nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime",
	"remount", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "silent", "slave",
	"strictatime", "suid", "sync", "tmpcopyup", "unbindable",
};

static const char *const hooks[] = { "prestart", "createRuntime", "createContainer", "startContainer",
				     "poststart", "poststop" };

static const char *const namespaces[] = { "cgroup", "ipc", "mount", "network", "pid", "user", "uts" };

static json_t *strings(const char *const *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

json_t *container_features(void)
{
	json_t *caps = json_array();
	for (int c = 0; caps && c <= cella_cap_last(); c++)
		json_array_append_new(caps, json_string(cella_cap_name(c)));
	return json_pack("{s:s, s:s, s:o, s:o, s:{s:o, s:o, s:{s:b, s:b, s:b}, s:o, s:{s:b}, s:{s:b}},"
			 " s:{s:s}}",
			 "ociVersionMin", "1.0.0", "ociVersionMax", CELLA_OCI_VERSION,
			 "hooks", strings(hooks, sizeof(hooks) / sizeof(hooks[0])),
			 "mountOptions", strings(mount_options, sizeof(mount_options) / sizeof(mount_options[0])),
			 "linux",
			 "namespaces", strings(namespaces, sizeof(namespaces) / sizeof(namespaces[0])),
			 "capabilities", caps,
			 "cgroup", "v1", 1, "v2", 1, "systemd", 0,
			 "seccomp", cella_seccomp_features(),
			 "apparmor", "enabled", 0,
			 "selinux", "enabled", 0,
			 "annotations", "io.cella.runtime", "cella");
}
