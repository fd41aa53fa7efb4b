/*
 * cella-init: PID 1 of Cella's guest kit (and of the nested-KVM sandbox).
 *
 * Boot sequence:
 *   1. mount /proc, /sys, /dev (devtmpfs), /dev/pts; make sure fds 0-2 are the console;
 *   2. load the kernel modules named in /lib/modules/cella-modules.list, one path per
 *      line (relative to /lib/modules/ or absolute; '#' starts a comment), in order;
 *      a missing file or an already loaded / built-in module is not an error;
 *      "MOD.param=value" words on the kernel command line are passed to MOD, as kmod does;
 *   2b. with "cella.root=DEV" (e.g. /dev/vda): wait up to 10 s for DEV, mount it
 *      ("cella.rootfstype=", default ext4; "cella.rootflags=ro" mounts read-only) and switch
 *      to it as the root (/dev, /proc, /sys move along); the command then runs from that disk;
 *      on failure the reason is printed and the initramfs stays the root;
 *   3. write 123 to the boot-timer I/O port 0x440 (the VMM logs the time it sees it);
 *   4. print "CELLA-INIT-READY uptime=<seconds>" on the console;
 *   5. run the command, if any, with /bin/sh -c, else an interactive /bin/sh on the
 *      console; print "CELLA-EXIT-STATUS=<n>" (128+signal if it was killed);
 *   6. kill what is left, sync, and power off — or reboot if "cella.reboot=1".
 *      BusyBox's poweroff/halt/reboot (without -f) signal PID 1 with SIGUSR2/SIGUSR1/SIGTERM:
 *      these end the session early the same way (SIGTERM reboots).
 *
 * The command is, in this order of preference:
 *   - cella.cmd=VALUE on the kernel command line: VALUE is percent-decoded (%20 is a space,
 *     %25 a '%'), and may be double-quoted (cella.cmd="ls -l /");
 *   - the raw text after the first " -- " of /proc/cmdline, verbatim (quotes kept; the kernel
 *     also hands those words to init as argv, but splits them and allows at most ~30);
 *   - argv[1..] joined by spaces (only if /proc/cmdline cannot be read).
 *
 * PID 1 never returns: if power-off fails it sleeps forever.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MODULE_LIST "/lib/modules/cella-modules.list"
#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_VALUE 123
#define CMDLINE_MAX 65536

static volatile sig_atomic_t shutdown_signal;

static void on_shutdown_signal(int sig)
{
	shutdown_signal = sig;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	for (int off = 0; off < n;) {
		ssize_t w = write(STDOUT_FILENO, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += w;
	}
}

/* Reads a small file into buf (NUL-terminated); returns its length or -1. */
static ssize_t read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	while (len + 1 < size) {
		ssize_t r = read(fd, buf + len, size - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += r;
	}
	close(fd);
	buf[len] = '\0';
	return len;
}

static void mount_one(const char *src, const char *dir, const char *type, const char *opts)
{
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		say("cella-init: mkdir %s: %s\n", dir, strerror(errno));
	if (mount(src, dir, type, MS_NOSUID, opts) < 0 && errno != EBUSY)
		say("cella-init: mount %s on %s: %s\n", type, dir, strerror(errno));
}

static void attach_console(void)
{
	if (fcntl(STDIN_FILENO, F_GETFD) >= 0)
		return;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/*
 * Cuts the kernel command line (already NUL-terminated, trailing newline removed) into
 * the kernel part and the init part after " -- ". Returns the init part or NULL.
 * Quotes are honoured as the kernel does: "--" inside quotes does not count.
 */
static char *split_dashes(char *cmdline)
{
	bool quoted = false;
	char *p = cmdline;

	while (*p) {
		while (*p == ' ')
			p++;
		char *word = p;
		while (*p && (quoted || *p != ' ')) {
			if (*p == '"')
				quoted = !quoted;
			p++;
		}
		if (p - word == 2 && word[0] == '-' && word[1] == '-') {
			*word = '\0';
			while (*p == ' ')
				p++;
			return p;
		}
	}
	return NULL;
}

/* Steps *p over the next word of a command line (spaces separate words, except inside double
 * quotes); returns its start, its length in *len, or NULL at the end. */
static const char *next_word(const char **p, size_t *len)
{
	const char *s = *p;
	while (*s == ' ')
		s++;
	const char *word = s;
	bool quoted = false;
	while (*s && (quoted || *s != ' ')) {
		if (*s == '"')
			quoted = !quoted;
		s++;
	}
	*p = s;
	*len = (size_t)(s - word);
	return *len ? word : NULL;
}

/* Finds "key=" as a whole word in the kernel part; returns a malloc'ed value or NULL. */
static char *cmdline_value(const char *kernel, const char *key)
{
	size_t klen = strlen(key), wlen;
	const char *p = kernel, *word;

	while ((word = next_word(&p, &wlen))) {
		if (wlen > klen && strncmp(word, key, klen) == 0 && word[klen] == '=') {
			const char *v = word + klen + 1;
			size_t vlen = wlen - klen - 1;
			if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
				v++;
				vlen -= 2;
			}
			return strndup(v, vlen);
		}
	}
	return NULL;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void percent_decode(char *s)
{
	char *out = s;
	for (char *in = s; *in; in++) {
		int hi, lo;
		if (in[0] == '%' && (hi = hexval(in[1])) >= 0 && (lo = hexval(in[2])) >= 0) {
			*out++ = (char)(hi << 4 | lo);
			in += 2;
		} else {
			*out++ = *in;
		}
	}
	*out = '\0';
}

/* Collects "MOD.param=value" words for module MOD ('-' and '_' equal) into a param string. */
static void module_params(const char *kernel, const char *mod, char *out, size_t size)
{
	size_t mlen = strlen(mod), used = 0, wlen;
	const char *p = kernel, *word;

	out[0] = '\0';
	while ((word = next_word(&p, &wlen))) {
		if (wlen <= mlen + 1 || word[mlen] != '.')
			continue;
		bool same = true;
		for (size_t i = 0; i < mlen && same; i++) {
			char a = word[i] == '-' ? '_' : word[i];
			char b = mod[i] == '-' ? '_' : mod[i];
			same = a == b;
		}
		size_t plen = wlen - mlen - 1;
		if (!same || used + plen + 2 > size)
			continue;
		if (used)
			out[used++] = ' ';
		memcpy(out + used, word + mlen + 1, plen);
		used += plen;
		out[used] = '\0';
	}
}

static void load_modules(const char *kernel)
{
	static char list[65536];
	if (read_file(MODULE_LIST, list, sizeof(list)) < 0)
		return;

	for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		while (*line == ' ' || *line == '\t')
			line++;
		size_t n = strlen(line);
		while (n && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (!n)
			continue;

		char path[4096];
		snprintf(path, sizeof(path), "%s%s", line[0] == '/' ? "" : "/lib/modules/", line);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (errno != ENOENT)
				say("cella-init: module %s: %s\n", path, strerror(errno));
			continue;
		}

		char name[256];
		const char *base = strrchr(path, '/') + 1;
		snprintf(name, sizeof(name), "%s", base);
		char *dot = strchr(name, '.');
		if (dot)
			*dot = '\0';
		char params[1024];
		module_params(kernel, name, params, sizeof(params));

		if (syscall(SYS_finit_module, fd, params, 0) < 0 && errno != EEXIST)
			say("cella-init: module %s: %s\n", name, strerror(errno));
		close(fd);
	}
}

static void boot_timer(void)
{
	if (ioperm(BOOT_TIMER_PORT, 1, 1) == 0) {
		outb(BOOT_TIMER_VALUE, BOOT_TIMER_PORT);
		ioperm(BOOT_TIMER_PORT, 1, 0);
	}
}

/*
 * Opens the console's real tty (e.g. /dev/ttyS0) and makes it our controlling tty. PID 1 stays
 * the session leader and the shell runs in its own foreground process group: it gets job
 * control, and its exit does not hang the tty up — a hangup flushes output still queued in the
 * UART, which would lose the command's last lines.
 */
static int take_console_tty(void)
{
	char active[256], path[300];
	const char *dev = "console";

	if (read_file("/sys/class/tty/console/active", active, sizeof(active)) > 0) {
		char *last = NULL;
		for (char *w = strtok(active, " \n"); w; w = strtok(NULL, " \n"))
			last = w;
		if (last)
			dev = last;
	}
	snprintf(path, sizeof(path), "/dev/%s", dev);
	int fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (ioctl(fd, TIOCSCTTY, 0) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static pid_t spawn_shell(const char *cmd, int tty)
{
	pid_t pid = fork();
	if (pid != 0) {
		if (pid > 0)
			setpgid(pid, pid);
		return pid;
	}

	setpgid(0, 0);
	if (tty >= 0) {
		sigset_t ttou;
		sigemptyset(&ttou);
		sigaddset(&ttou, SIGTTOU);
		sigprocmask(SIG_BLOCK, &ttou, NULL);
		tcsetpgrp(tty, getpid());
		for (int i = 0; i < 3; i++)
			dup2(tty, i);
	}
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (cmd)
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
	else
		execl("/bin/sh", "-sh", (char *)NULL);
	say("cella-init: exec /bin/sh: %s\n", strerror(errno));
	_exit(127);
}

/* Waits for pid while reaping every other child (orphans get re-parented to us). */
static int wait_for(pid_t pid)
{
	for (;;) {
		int st;
		pid_t r = waitpid(-1, &st, 0);
		if (r < 0) {
			if (errno == EINTR && !shutdown_signal)
				continue;
			return 255;
		}
		if (r != pid)
			continue;
		if (WIFEXITED(st))
			return WEXITSTATUS(st);
		if (WIFSIGNALED(st))
			return 128 + WTERMSIG(st);
	}
}

static void reap_all(void)
{
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
		;
}

/* Mounts dev as the new root and moves into it (switch_root without deleting the initramfs: it
 * is small and the guest short-lived). Returns 0 or -1 after saying why. */
static int switch_root(const char *dev, const char *fstype, const char *flags)
{
	struct stat st;
	int tries = 0;
	/* the disk's driver probes asynchronously: give it a moment to appear */
	while (stat(dev, &st) < 0 && tries++ < 1000)
		usleep(10000);
	if (tries > 1000) {
		say("cella-init: root %s: does not appear\n", dev);
		return -1;
	}
	unsigned long mflags = flags && strcmp(flags, "ro") == 0 ? MS_RDONLY : 0;
	if (mkdir("/newroot", 0755) < 0 && errno != EEXIST) {
		say("cella-init: mkdir /newroot: %s\n", strerror(errno));
		return -1;
	}
	if (mount(dev, "/newroot", fstype, mflags, NULL) < 0) {
		say("cella-init: mount %s (%s) as root: %s\n", dev, fstype, strerror(errno));
		return -1;
	}
	static const char *const keep[] = { "/dev", "/proc", "/sys" };
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		char to[64];
		snprintf(to, sizeof(to), "/newroot%s", keep[i]);
		mkdir(to, 0755); /* fails on a read-only root that lacks it: the move then says why */
		if (mount(keep[i], to, NULL, MS_MOVE, NULL) < 0)
			say("cella-init: move %s to the new root: %s\n", keep[i], strerror(errno));
	}
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
		say("cella-init: switch to root %s: %s\n", dev, strerror(errno));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_shutdown_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	mount_one("proc", "/proc", "proc", NULL);
	mount_one("sysfs", "/sys", "sysfs", NULL);
	mount_one("devtmpfs", "/dev", "devtmpfs", "mode=0755");
	mount_one("devpts", "/dev/pts", "devpts", "gid=5,mode=620,ptmxmode=666");
	attach_console();
	setenv("PATH", "/sbin:/bin:/usr/sbin:/usr/bin", 1);
	setenv("HOME", "/", 1);
	setenv("TERM", "linux", 0);

	static char cmdline[CMDLINE_MAX];
	char *after = NULL;
	ssize_t len = read_file("/proc/cmdline", cmdline, sizeof(cmdline));
	if (len > 0) {
		if (cmdline[len - 1] == '\n')
			cmdline[len - 1] = '\0';
		after = split_dashes(cmdline);
	}

	load_modules(cmdline);
	char *root = cmdline_value(cmdline, "cella.root");
	if (root) {
		char *fstype = cmdline_value(cmdline, "cella.rootfstype");
		char *rflags = cmdline_value(cmdline, "cella.rootflags");
		switch_root(root, fstype ? fstype : "ext4", rflags);
		free(fstype);
		free(rflags);
		free(root);
	}
	boot_timer();

	char uptime[64] = "?";
	if (read_file("/proc/uptime", uptime, sizeof(uptime)) > 0)
		uptime[strcspn(uptime, " \n")] = '\0';
	say("CELLA-INIT-READY uptime=%s\n", uptime);

	char *cmd = cmdline_value(cmdline, "cella.cmd");
	if (cmd) {
		percent_decode(cmd);
	} else if (after && *after) {
		cmd = after;
	} else if (len < 0 && argc > 1) {
		static char joined[CMDLINE_MAX];
		size_t used = 0;
		for (int i = 1; i < argc; i++) {
			int n = snprintf(joined + used, sizeof(joined) - used, "%s%s", i > 1 ? " " : "", argv[i]);
			if (n < 0 || (size_t)n >= sizeof(joined) - used)
				break;
			used += n;
		}
		cmd = joined;
	}
	char *reboot_opt = cmdline_value(cmdline, "cella.reboot");
	bool want_reboot = reboot_opt && strcmp(reboot_opt, "1") == 0;
	bool ask_power_off = false;

	int status = 127;
	setsid();
	int tty = take_console_tty();
	pid_t pid = spawn_shell(cmd, tty);
	if (pid < 0)
		say("cella-init: fork: %s\n", strerror(errno));
	else
		status = wait_for(pid);
	if (shutdown_signal) {
		want_reboot = shutdown_signal == SIGTERM;
		ask_power_off = true;
	}
	reap_all();
	if (!ask_power_off)
		say("CELLA-EXIT-STATUS=%d\n", status);
	tcdrain(STDOUT_FILENO); /* power-off must not cut the queued console output */
	sync();

	reboot(want_reboot ? RB_AUTOBOOT : RB_POWER_OFF);
	say("cella-init: reboot: %s\n", strerror(errno));
	for (;;)
		pause();
}
