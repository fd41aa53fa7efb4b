/* Intel 8042 keyboard controller, reduced to what a keyboard-less guest touches: the status and
 * command port 0x64, the data port 0x60, a few controller commands Linux's probe sends, and the
 * reset line: command 0xFE (pulse output line 0 = CPU reset) reboots the machine. No keyboard or
 * mouse is attached, so device commands on the data port get no answer. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/hw/hw.h"

#define STATUS_OBF 0x01 /* output buffer full: data for the guest at 0x60 */
#define STATUS_SYS 0x04 /* system flag: self test passed */
#define STATUS_CMD 0x08 /* last write was a command */

#define CMD_READ_CTR 0x20
#define CMD_WRITE_CTR 0x60
#define CMD_DISABLE_AUX 0xa7
#define CMD_ENABLE_AUX 0xa8
#define CMD_TEST_AUX 0xa9
#define CMD_SELF_TEST 0xaa
#define CMD_TEST_KBD 0xab
#define CMD_DISABLE_KBD 0xad
#define CMD_ENABLE_KBD 0xae
#define CMD_READ_OUTPUT 0xd0
#define CMD_WRITE_OUTPUT 0xd1
#define CMD_PULSE_RESET 0xfe

#define CTR_KBD_DISABLED 0x10
#define CTR_AUX_DISABLED 0x20

struct i8042 {
	pthread_mutex_t lock;
	const struct hw_host *host;
	uint8_t status, ctr, outbuf, pending_cmd, output_port;
};

int i8042_new(const struct hw_host *host, struct i8042 **out, struct cella_err *err)
{
	struct i8042 *k = calloc(1, sizeof(*k));
	if (!k)
		return cella_err_set(err, ENOMEM, "i8042: out of memory");
	pthread_mutex_init(&k->lock, NULL);
	k->host = host;
	k->status = STATUS_SYS;
	k->ctr = CTR_KBD_DISABLED | CTR_AUX_DISABLED | 0x04;
	k->output_port = 0x01; /* reset line not asserted */
	*out = k;
	return 0;
}

void i8042_free(struct i8042 *k)
{
	if (!k)
		return;
	pthread_mutex_destroy(&k->lock);
	free(k);
}

static void put_output(struct i8042 *k, uint8_t v)
{
	k->outbuf = v;
	k->status |= STATUS_OBF;
}

static void reboot(struct i8042 *k, const char *why)
{
	if (k->host && k->host->event)
		k->host->event(k->host->ctx, HW_EVENT_REBOOT, why);
}

static void data_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	struct i8042 *k = opaque;
	pthread_mutex_lock(&k->lock);
	data[0] = k->outbuf;
	k->status &= ~STATUS_OBF;
	pthread_mutex_unlock(&k->lock);
	for (uint32_t i = 1; i < len; i++)
		data[i] = 0xff;
}

static void data_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct i8042 *k = opaque;
	bool do_reboot = false;
	pthread_mutex_lock(&k->lock);
	k->status &= ~STATUS_CMD;
	switch (k->pending_cmd) {
	case CMD_WRITE_CTR:
		k->ctr = data[0];
		break;
	case CMD_WRITE_OUTPUT:
		k->output_port = data[0];
		do_reboot = !(data[0] & 0x01);
		break;
	default:
		break; /* to the (absent) keyboard */
	}
	k->pending_cmd = 0;
	pthread_mutex_unlock(&k->lock);
	if (do_reboot)
		reboot(k, "guest reboot (i8042 output port reset line)");
}

static void cmd_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	struct i8042 *k = opaque;
	pthread_mutex_lock(&k->lock);
	data[0] = k->status;
	pthread_mutex_unlock(&k->lock);
	for (uint32_t i = 1; i < len; i++)
		data[i] = 0xff;
}

static void cmd_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct i8042 *k = opaque;
	uint8_t cmd = data[0];
	bool do_reboot = false;
	pthread_mutex_lock(&k->lock);
	k->status |= STATUS_CMD;
	k->pending_cmd = 0;
	switch (cmd) {
	case CMD_READ_CTR:
		put_output(k, k->ctr);
		break;
	case CMD_WRITE_CTR:
	case CMD_WRITE_OUTPUT:
		k->pending_cmd = cmd;
		break;
	case CMD_DISABLE_AUX:
		k->ctr |= CTR_AUX_DISABLED;
		break;
	case CMD_ENABLE_AUX:
		k->ctr &= ~CTR_AUX_DISABLED;
		break;
	case CMD_DISABLE_KBD:
		k->ctr |= CTR_KBD_DISABLED;
		break;
	case CMD_ENABLE_KBD:
		k->ctr &= ~CTR_KBD_DISABLED;
		break;
	case CMD_SELF_TEST:
		put_output(k, 0x55);
		break;
	case CMD_TEST_KBD:
	case CMD_TEST_AUX:
		put_output(k, 0x00);
		break;
	case CMD_READ_OUTPUT:
		put_output(k, k->output_port);
		break;
	default:
		/* 0xf0..0xff pulse output lines for 6 us; a clear bit 0 pulses CPU reset. */
		if (cmd >= 0xf0 && !(cmd & 0x01))
			do_reboot = true;
		else
			log_debug("i8042: ignoring command 0x%02x", cmd);
		break;
	}
	pthread_mutex_unlock(&k->lock);
	if (do_reboot)
		reboot(k, cmd == CMD_PULSE_RESET ? "guest reboot (i8042 reset)" : "guest reboot (i8042 pulse)");
}

const struct bus_ops i8042_data_ops = { .read = data_read, .write = data_write };
const struct bus_ops i8042_cmd_ops = { .read = cmd_read, .write = cmd_write };
