/* crun_v1 ARGS... — runs /usr/bin/crun ARGS... in a private mount namespace whose /sys/fs/cgroup
 * holds only the host's cgroup v1 hierarchies (bind mounts on a fresh tmpfs): the layout of a
 * pure-v1 host. Debian's crun 1.8.1 refuses this hybrid host ("cgroups in hybrid mode not
 * supported"); bench/clients.py gives this wrapper to podman and containerd as the OCI runtime so
 * crun can be measured next to cella and runc. It costs one unshare and a dozen mount calls
 * (well under a millisecond), no extra process. Same view as bench/runtime.py's main table. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define CRUN "/usr/bin/crun"
#define MAX_HIER 32

static void die(const char *what)
{
	fprintf(stderr, "crun_v1: %s: %s\n", what, strerror(errno));
	exit(125);
}

int main(int argc, char **argv)
{
	(void)argc;
	char hier[MAX_HIER][64];
	int n = 0;
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		die("/proc/self/mountinfo");
	char line[4096];
	while (fgets(line, sizeof(line), f) && n < MAX_HIER) {
		char mnt[1024], fstype[64];
		const char *dash = strstr(line, " - ");
		if (!dash || sscanf(line, "%*s %*s %*s %*s %1023s", mnt) != 1 || sscanf(dash + 3, "%63s", fstype) != 1)
			continue;
		if (strcmp(fstype, "cgroup") || strncmp(mnt, "/sys/fs/cgroup/", 15) || strchr(mnt + 15, '/') ||
		    strlen(mnt + 15) >= sizeof(hier[0]))
			continue;
		memcpy(hier[n++], mnt + 15, strlen(mnt + 15) + 1);
	}
	fclose(f);

	if (unshare(CLONE_NEWNS) < 0)
		die("unshare(CLONE_NEWNS)");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("make / private");
	char tmp[] = "/tmp/crun_v1.XXXXXX";
	if (!mkdtemp(tmp))
		die("mkdtemp");
	if (mount("cgroup_v1_view", tmp, "tmpfs", 0, "mode=755,size=64k") < 0)
		die("mount tmpfs");
	for (int i = 0; i < n; i++) {
		char src[128], dst[128]; /* names are < 64 bytes */
		snprintf(src, sizeof(src), "/sys/fs/cgroup/%.63s", hier[i]);
		snprintf(dst, sizeof(dst), "%s/%.63s", tmp, hier[i]);
		if (mkdir(dst, 0755) < 0)
			die(dst);
		if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
			die(src);
	}
	if (umount2("/sys/fs/cgroup", MNT_DETACH) < 0)
		die("umount /sys/fs/cgroup");
	if (mount(tmp, "/sys/fs/cgroup", NULL, MS_MOVE, NULL) < 0)
		die("move the v1 view to /sys/fs/cgroup");
	rmdir(tmp);
	argv[0] = (char *)"crun";
	execv(CRUN, argv);
	die(CRUN);
}
