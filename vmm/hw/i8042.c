/* Intel 8042 keyboard controller: the status and command port 0x64, the data port 0x60, the
 * controller commands Linux's probe sends, and the reset line: command 0xFE (pulse output line 0 =
 * CPU reset) reboots the machine.
 *
 * A keyboard is plugged in, with no keys but the host's Ctrl+Alt+Delete (the API's SendCtrlAltDel):
 * it answers the commands a driver sends (ACK, identify as an MF2 keyboard, reset self-test passed,
 * the scan code set) at once, so Linux's atkbd binds without probe timeouts and the guest reacts to
 * Ctrl+Alt+Delete. Its bytes queue and reach the guest one at a time through the output buffer, on
 * IRQ 1 when the command byte enables it. A byte sent to the (absent) mouse is answered the way a
 * real controller answers when no device clocks it in: 0xFE with the timeout bit (on IRQ 12). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"

#define STATUS_OBF 0x01 /* output buffer full: data for the guest at 0x60 */
#define STATUS_SYS 0x04 /* system flag: self test passed */
#define STATUS_CMD 0x08 /* last write was a command */
#define STATUS_KEYLOCK 0x10 /* keyboard not inhibited by the key lock */
#define STATUS_AUXDATA 0x20 /* output buffer holds mouse (AUX) data */
#define STATUS_TIMEOUT 0x40 /* the device did not answer */

#define IRQ_KBD I8042_KBD_IRQ
#define IRQ_AUX 12
#define REPLY_NO_DEVICE 0xfe

/* keyboard commands and replies (PS/2) */
#define KBD_SET_LEDS 0xed
#define KBD_ECHO 0xee
#define KBD_SCAN_SET 0xf0
#define KBD_IDENTIFY 0xf2
#define KBD_TYPEMATIC 0xf3
#define KBD_RESET 0xff
#define KBD_ACK 0xfa
#define KBD_BAT_OK 0xaa
#define KBD_RESEND 0xfe

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
#define CMD_WRITE_KBD_OUTBUF 0xd2 /* next data byte appears as if from the keyboard */
#define CMD_WRITE_AUX_OUTBUF 0xd3 /* ... as if from the mouse */
#define CMD_WRITE_AUX 0xd4        /* next data byte goes to the mouse */
#define CMD_PULSE_RESET 0xfe

#define CTR_KBD_INT 0x01
#define CTR_AUX_INT 0x02
#define CTR_KBD_DISABLED 0x10
#define CTR_AUX_DISABLED 0x20
#define CTR_XLATE 0x40 /* translate the keyboard's scan code set 2 to set 1 */

#define KBD_QUEUE 32

struct i8042 {
	pthread_mutex_t lock;
	const struct hw_host *host;
	uint8_t status, ctr, outbuf, pending_cmd, output_port;
	int irq_raised; /* 0, IRQ_KBD or IRQ_AUX: the line we hold high until the guest reads */
	/* Key bytes injected by the host (i8042_send_ctrl_alt_del), handed to the guest one at a time
	 * while the keyboard port is enabled and the output buffer is free. */
	uint8_t kbd_queue[KBD_QUEUE];
	unsigned kq_head, kq_len;
	uint64_t keys_sent;
	uint8_t kbd_param; /* keyboard command waiting for its parameter byte, or 0 */
	uint8_t kbd_set;   /* scan code set the keyboard sends: 1..3 (2 after reset) */
};

int i8042_new(const struct hw_host *host, struct i8042 **out, struct cella_err *err)
{
	struct i8042 *k = calloc(1, sizeof(*k));
	if (!k)
		return cella_err_set(err, ENOMEM, "i8042: out of memory");
	pthread_mutex_init(&k->lock, NULL);
	k->host = host;
	k->status = STATUS_SYS | STATUS_KEYLOCK;
	k->ctr = CTR_KBD_DISABLED | CTR_AUX_DISABLED | 0x04;
	k->output_port = 0x01; /* reset line not asserted */
	k->kbd_set = 2;
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

static void set_irq(struct i8042 *k, int irq, int level)
{
	if (k->host && k->host->set_irq)
		k->host->set_irq(k->host->ctx, (unsigned)irq, level);
}

static void lower_irq(struct i8042 *k)
{
	if (k->irq_raised)
		set_irq(k, k->irq_raised, 0);
	k->irq_raised = 0;
}

/* A controller reply (polled by the guest: no interrupt). */
static void put_output(struct i8042 *k, uint8_t v)
{
	lower_irq(k);
	k->outbuf = v;
	k->status = (uint8_t)((k->status & ~(STATUS_AUXDATA | STATUS_TIMEOUT)) | STATUS_OBF);
}

/* A byte from a device port: interrupts if the command byte enables that port's interrupt. */
static void put_device_output(struct i8042 *k, uint8_t v, bool aux, bool timeout)
{
	put_output(k, v);
	if (aux)
		k->status |= STATUS_AUXDATA;
	if (timeout)
		k->status |= STATUS_TIMEOUT;
	int irq = aux ? IRQ_AUX : IRQ_KBD;
	if (k->ctr & (aux ? CTR_AUX_INT : CTR_KBD_INT)) {
		set_irq(k, irq, 1);
		k->irq_raised = irq;
	}
}

/* Next injected key byte into the output buffer, when the guest can take it. Lock held. */
static void feed_keys(struct i8042 *k)
{
	if (!k->kq_len || (k->status & STATUS_OBF) || (k->ctr & CTR_KBD_DISABLED) || k->pending_cmd)
		return;
	uint8_t v = k->kbd_queue[k->kq_head];
	k->kq_head = (k->kq_head + 1) % KBD_QUEUE;
	k->kq_len--;
	put_device_output(k, v, false, false);
}

/* Queues keyboard bytes (dropped when the queue is full: a real keyboard overruns too). Lock held. */
static void kbd_put(struct i8042 *k, const uint8_t *b, unsigned n)
{
	for (unsigned i = 0; i < n && k->kq_len < KBD_QUEUE; i++)
		k->kbd_queue[(k->kq_head + k->kq_len++) % KBD_QUEUE] = b[i];
}

/* A byte the guest sends to the keyboard: a command, or the parameter of the last one. Lock held. */
static void kbd_command(struct i8042 *k, uint8_t b)
{
	static const uint8_t ack[] = { KBD_ACK };
	if (k->kbd_param) {
		uint8_t cmd = k->kbd_param;
		k->kbd_param = 0;
		if (cmd == KBD_SCAN_SET && b == 0) {
			uint8_t r[] = { KBD_ACK, k->kbd_set };
			kbd_put(k, r, 2);
			return;
		}
		if (cmd == KBD_SCAN_SET && b <= 3)
			k->kbd_set = b;
		kbd_put(k, ack, 1);
		return;
	}
	switch (b) {
	case KBD_SET_LEDS:
	case KBD_TYPEMATIC:
	case KBD_SCAN_SET:
		k->kbd_param = b;
		kbd_put(k, ack, 1);
		break;
	case KBD_ECHO:
		kbd_put(k, &b, 1);
		break;
	case KBD_IDENTIFY: {
		/* MF2 keyboard: AB 83, or AB 41 through the controller's translation */
		uint8_t r[] = { KBD_ACK, 0xab, k->ctr & CTR_XLATE ? 0x41 : 0x83 };
		kbd_put(k, r, 3);
		break;
	}
	case KBD_RESET: {
		uint8_t r[] = { KBD_ACK, KBD_BAT_OK };
		k->kbd_set = 2;
		kbd_put(k, r, 2);
		break;
	}
	default:
		if (b >= 0xf4) { /* enable, disable, defaults, the typematic/make-break modes, resend */
			kbd_put(k, ack, 1);
		} else {
			uint8_t r = KBD_RESEND;
			kbd_put(k, &r, 1);
		}
		break;
	}
}

int i8042_send_ctrl_alt_del(struct i8042 *k)
{
	/* Ctrl, Alt, Delete pressed, then released in reverse order. */
	static const uint8_t set2[] = { 0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14 };
	static const uint8_t set1[] = { 0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d };
	pthread_mutex_lock(&k->lock);
	bool set1_codes = (k->ctr & CTR_XLATE) || k->kbd_set == 1;
	const uint8_t *seq = set1_codes ? set1 : set2;
	unsigned n = set1_codes ? sizeof(set1) : sizeof(set2);
	if (k->kq_len + n > KBD_QUEUE) {
		pthread_mutex_unlock(&k->lock);
		return -ENOSPC;
	}
	for (unsigned i = 0; i < n; i++)
		k->kbd_queue[(k->kq_head + k->kq_len++) % KBD_QUEUE] = seq[i];
	k->keys_sent++;
	feed_keys(k);
	pthread_mutex_unlock(&k->lock);
	return 0;
}

uint64_t i8042_keys_sent(struct i8042 *k)
{
	pthread_mutex_lock(&k->lock);
	uint64_t n = k->keys_sent;
	pthread_mutex_unlock(&k->lock);
	return n;
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
	k->status &= ~(STATUS_OBF | STATUS_AUXDATA | STATUS_TIMEOUT);
	lower_irq(k);
	feed_keys(k);
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
	case CMD_WRITE_KBD_OUTBUF:
		put_device_output(k, data[0], false, false);
		break;
	case CMD_WRITE_AUX_OUTBUF:
		put_device_output(k, data[0], true, false);
		break;
	case CMD_WRITE_AUX:
		put_device_output(k, REPLY_NO_DEVICE, true, true); /* no mouse */
		break;
	default:
		kbd_command(k, data[0]);
		break;
	}
	k->pending_cmd = 0;
	feed_keys(k); /* the command byte may have enabled the keyboard port */
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
	case CMD_WRITE_KBD_OUTBUF:
	case CMD_WRITE_AUX_OUTBUF:
	case CMD_WRITE_AUX:
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
		feed_keys(k);
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

void i8042_save(struct i8042 *k, struct snap_writer *w)
{
	pthread_mutex_lock(&k->lock);
	uint8_t v[] = { k->status, k->ctr, k->outbuf, k->pending_cmd, k->output_port, (uint8_t)k->irq_raised };
	snap_put(w, v, sizeof(v));
	/* the keyboard's side: a command waiting for its parameter, the scan code set, and the bytes
	 * not yet handed to the guest (a snapshot taken mid-answer must not lose them) */
	snap_put_u8(w, k->kbd_param);
	snap_put_u8(w, k->kbd_set);
	snap_put_u64(w, k->keys_sent);
	snap_put_u8(w, (uint8_t)k->kq_len);
	for (unsigned i = 0; i < k->kq_len; i++)
		snap_put_u8(w, k->kbd_queue[(k->kq_head + i) % KBD_QUEUE]);
	pthread_mutex_unlock(&k->lock);
}

int i8042_load(struct i8042 *k, struct snap_sec *sec, struct cella_err *err)
{
	uint8_t v[6];
	snap_get(sec, v, sizeof(v));
	uint8_t kbd_param = snap_get_u8(sec), kbd_set = snap_get_u8(sec);
	uint64_t keys_sent = snap_get_u64(sec);
	unsigned kq_len = snap_get_u8(sec);
	if (v[5] != 0 && v[5] != IRQ_KBD && v[5] != IRQ_AUX)
		return cella_err_set(err, EINVAL, "i8042: raised IRQ %u is neither %d nor %d", v[5], IRQ_KBD, IRQ_AUX);
	if (kbd_param != 0 && kbd_param != KBD_SET_LEDS && kbd_param != KBD_TYPEMATIC && kbd_param != KBD_SCAN_SET)
		return cella_err_set(err, EINVAL, "i8042: keyboard command 0x%02x takes no parameter", kbd_param);
	if (kbd_set < 1 || kbd_set > 3)
		return cella_err_set(err, EINVAL, "i8042: scan code set %u is not 1, 2 or 3", kbd_set);
	if (kq_len > KBD_QUEUE)
		return cella_err_set(err, EINVAL, "i8042: %u queued keyboard bytes, the queue holds %d", kq_len,
				     KBD_QUEUE);
	pthread_mutex_lock(&k->lock);
	k->status = v[0];
	k->ctr = v[1];
	k->outbuf = v[2];
	k->pending_cmd = v[3];
	k->output_port = v[4];
	k->irq_raised = v[5];
	k->kbd_param = kbd_param;
	k->kbd_set = kbd_set;
	k->keys_sent = keys_sent;
	k->kq_head = 0;
	k->kq_len = kq_len;
	for (unsigned i = 0; i < kq_len; i++)
		k->kbd_queue[i] = snap_get_u8(sec);
	if (k->irq_raised)
		set_irq(k, k->irq_raised, 1);
	pthread_mutex_unlock(&k->lock);
	return 0;
}
