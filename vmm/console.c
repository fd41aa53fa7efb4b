/* Host end of the guest console. */
#include "vmm/console.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"

/* The one terminal in raw mode, for the crash handler (which may only call async-signal-safe code). */
static struct termios crash_saved;
static atomic_int crash_fd = -1;

static void crash_restore(int sig)
{
	int fd = atomic_exchange(&crash_fd, -1);
	if (fd >= 0)
		tcsetattr(fd, TCSANOW, &crash_saved);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void install_crash_handlers(void)
{
	static const int sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };
	struct sigaction sa = { .sa_handler = crash_restore, .sa_flags = SA_RESETHAND | SA_NODEFER };
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

int console_open(struct console *c, const struct vmm_config *cfg, struct cella_err *err)
{
	*c = (struct console){ .out_fd = -1, .in_fd = -1 };
	switch (cfg->console) {
	case VMM_CONSOLE_NONE:
		return 0;
	case VMM_CONSOLE_FILE:
		c->out_fd = open(cfg->console_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0644);
		if (c->out_fd < 0)
			return cella_err_sys(err, errno, "console: %s", cfg->console_path);
		c->own_out = true;
		return 0;
	case VMM_CONSOLE_STDIO:
		break;
	}
	c->out_fd = STDOUT_FILENO;
	c->in_fd = STDIN_FILENO;
	/* No input when stdin is closed or /dev/null (char device 1:3 on Linux): nothing to watch, and
	 * vCPU 0 may then run on the VMM thread (vmm.c). */
	struct stat st;
	if (fstat(STDIN_FILENO, &st) < 0 || (S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3))) {
		c->in_fd = -1;
		return 0;
	}
	if (!isatty(STDIN_FILENO))
		return 0;
	if (tcgetattr(STDIN_FILENO, &c->saved) < 0)
		return cella_err_sys(err, errno, "console: tcgetattr on stdin");
	struct termios raw = c->saved;
	cfmakeraw(&raw);
	crash_saved = c->saved;
	atomic_store(&crash_fd, STDIN_FILENO);
	install_crash_handlers();
	if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) < 0) {
		atomic_store(&crash_fd, -1);
		return cella_err_sys(err, errno, "console: tcsetattr on stdin");
	}
	c->raw = true;
	return 0;
}

void console_close(struct console *c)
{
	if (c->raw) {
		atomic_store(&crash_fd, -1);
		if (tcsetattr(c->in_fd, TCSANOW, &c->saved) < 0)
			log_warn("console: restoring the terminal: %s", strerror(errno));
		c->raw = false;
	}
	if (c->own_out && c->out_fd >= 0)
		close(c->out_fd);
	c->out_fd = c->in_fd = -1;
	c->own_out = false;
}
