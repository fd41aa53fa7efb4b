/* The config.json `cella spec` writes: the same document as `runc spec` (hostname "cella"), which
 * runs `sh` from a busybox rootfs in ./rootfs. The rootless flavour follows `runc spec --rootless`. */
#include "runtime/config.h"

#include <string.h>
#include <unistd.h>

static const char default_spec[] =
	"{"
	"  \"ociVersion\": \"1.0.2\","
	"  \"process\": {"
	"    \"terminal\": true,"
	"    \"user\": { \"uid\": 0, \"gid\": 0 },"
	"    \"args\": [ \"sh\" ],"
	"    \"env\": [ \"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\", \"TERM=xterm\" ],"
	"    \"cwd\": \"/\","
	"    \"capabilities\": {"
	"      \"bounding\": [ \"CAP_AUDIT_WRITE\", \"CAP_KILL\", \"CAP_NET_BIND_SERVICE\" ],"
	"      \"effective\": [ \"CAP_AUDIT_WRITE\", \"CAP_KILL\", \"CAP_NET_BIND_SERVICE\" ],"
	"      \"permitted\": [ \"CAP_AUDIT_WRITE\", \"CAP_KILL\", \"CAP_NET_BIND_SERVICE\" ],"
	"      \"ambient\": [ \"CAP_AUDIT_WRITE\", \"CAP_KILL\", \"CAP_NET_BIND_SERVICE\" ]"
	"    },"
	"    \"rlimits\": [ { \"type\": \"RLIMIT_NOFILE\", \"hard\": 1024, \"soft\": 1024 } ],"
	"    \"noNewPrivileges\": true"
	"  },"
	"  \"root\": { \"path\": \"rootfs\", \"readonly\": true },"
	"  \"hostname\": \"cella\","
	"  \"mounts\": ["
	"    { \"destination\": \"/proc\", \"type\": \"proc\", \"source\": \"proc\" },"
	"    { \"destination\": \"/dev\", \"type\": \"tmpfs\", \"source\": \"tmpfs\","
	"      \"options\": [ \"nosuid\", \"strictatime\", \"mode=755\", \"size=65536k\" ] },"
	"    { \"destination\": \"/dev/pts\", \"type\": \"devpts\", \"source\": \"devpts\","
	"      \"options\": [ \"nosuid\", \"noexec\", \"newinstance\", \"ptmxmode=0666\", \"mode=0620\", \"gid=5\" ] },"
	"    { \"destination\": \"/dev/shm\", \"type\": \"tmpfs\", \"source\": \"shm\","
	"      \"options\": [ \"nosuid\", \"noexec\", \"nodev\", \"mode=1777\", \"size=65536k\" ] },"
	"    { \"destination\": \"/dev/mqueue\", \"type\": \"mqueue\", \"source\": \"mqueue\","
	"      \"options\": [ \"nosuid\", \"noexec\", \"nodev\" ] },"
	"    { \"destination\": \"/sys\", \"type\": \"sysfs\", \"source\": \"sysfs\","
	"      \"options\": [ \"nosuid\", \"noexec\", \"nodev\", \"ro\" ] },"
	"    { \"destination\": \"/sys/fs/cgroup\", \"type\": \"cgroup\", \"source\": \"cgroup\","
	"      \"options\": [ \"nosuid\", \"noexec\", \"nodev\", \"relatime\", \"ro\" ] }"
	"  ],"
	"  \"linux\": {"
	"    \"resources\": { \"devices\": [ { \"allow\": false, \"access\": \"rwm\" } ] },"
	"    \"namespaces\": [ { \"type\": \"pid\" }, { \"type\": \"network\" }, { \"type\": \"ipc\" },"
	"                      { \"type\": \"uts\" }, { \"type\": \"mount\" }, { \"type\": \"cgroup\" } ],"
	"    \"maskedPaths\": [ \"/proc/acpi\", \"/proc/asound\", \"/proc/kcore\", \"/proc/keys\","
	"                       \"/proc/latency_stats\", \"/proc/timer_list\", \"/proc/timer_stats\","
	"                       \"/proc/sched_debug\", \"/sys/firmware\", \"/proc/scsi\" ],"
	"    \"readonlyPaths\": [ \"/proc/bus\", \"/proc/fs\", \"/proc/irq\", \"/proc/sys\", \"/proc/sysrq-trigger\" ]"
	"  }"
	"}";

/* runc's ToRootless: no network namespace, a user namespace mapping the caller to root, /sys as a
 * read-only rbind (sysfs cannot be mounted without a network namespace we own), no uid=/gid= mount
 * options, and no cgroup resources. */
static int make_rootless(json_t *spec)
{
	json_t *lnx = json_object_get(spec, "linux");
	json_t *old_ns = json_object_get(lnx, "namespaces");
	json_t *ns = json_array();
	if (!ns)
		return -1;
	size_t i;
	json_t *v;
	json_array_foreach(old_ns, i, v) {
		const char *t = json_string_value(json_object_get(v, "type"));
		if (t && (!strcmp(t, "network") || !strcmp(t, "user")))
			continue;
		json_array_append(ns, v);
	}
	json_array_append_new(ns, json_pack("{s:s}", "type", "user"));
	json_object_set_new(lnx, "namespaces", ns);
	json_object_set_new(lnx, "uidMappings",
			    json_pack("[{s:i,s:I,s:i}]", "containerID", 0, "hostID", (json_int_t)geteuid(), "size", 1));
	json_object_set_new(lnx, "gidMappings",
			    json_pack("[{s:i,s:I,s:i}]", "containerID", 0, "hostID", (json_int_t)getegid(), "size", 1));
	json_object_del(lnx, "resources");

	json_t *mounts = json_object_get(spec, "mounts");
	json_array_foreach(mounts, i, v) {
		const char *dst = json_string_value(json_object_get(v, "destination"));
		if (dst && !strcmp(dst, "/sys")) {
			json_t *sys = json_pack("{s:s,s:s,s:s,s:[s,s,s,s,s]}", "destination", "/sys", "type", "none",
						"source", "/sys", "options", "rbind", "nosuid", "noexec", "nodev", "ro");
			if (!sys || json_array_set_new(mounts, i, sys) < 0)
				return -1;
			continue;
		}
		json_t *opts = json_object_get(v, "options");
		for (size_t k = json_array_size(opts); k-- > 0;) {
			const char *o = json_string_value(json_array_get(opts, k));
			if (o && (!strncmp(o, "uid=", 4) || !strncmp(o, "gid=", 4)))
				json_array_remove(opts, k);
		}
	}
	return 0;
}

json_t *oci_config_default(bool rootless)
{
	json_t *spec = json_loads(default_spec, 0, NULL);
	if (!spec)
		return NULL;
	if (rootless && make_rootless(spec) < 0) {
		json_decref(spec);
		return NULL;
	}
	return spec;
}
