/* Internal: the host end of the guest console. Raw terminal mode when stdin is a tty, restored on
 * every exit path: console_close, and a crash handler for fatal signals (termination signals reach
 * the VMM thread's signalfd and end in console_close). */
#pragma once
#include <stdbool.h>
#include <termios.h>

#include "vmm/vmm.h"

struct console {
	int out_fd;     /* guest output goes here; -1 = dropped */
	bool own_out;   /* out_fd is a file we opened */
	int in_fd;      /* host input for the guest; -1 = none */
	bool raw;       /* in_fd is a tty we put in raw mode */
	struct termios saved;
};

int console_open(struct console *c, const struct vmm_config *cfg, struct cella_err *err);
void console_close(struct console *c);
