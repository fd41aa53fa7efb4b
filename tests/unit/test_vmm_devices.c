/* i8042, ACPI PM1a, boot timer and legacy ports, driven through their bus ops (no KVM). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/util.h"
#include "tap.h"
#include "vmm/bus.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"
#include "vmm/x86/boot.h"

struct fake_host {
	int events, last_event;
	char why[128];
	int irq_level[16];
};

static int fake_set_irq(void *ctx, unsigned irq, int level)
{
	struct fake_host *h = ctx;
	if (irq < 16)
		h->irq_level[irq] = level;
	return 0;
}

static void fake_event(void *ctx, enum hw_event ev, const char *why)
{
	struct fake_host *h = ctx;
	h->events++;
	h->last_event = (int)ev;
	snprintf(h->why, sizeof(h->why), "%s", why);
}

static uint8_t rd8(const struct bus_ops *ops, void *dev, uint64_t off)
{
	uint8_t v;
	ops->read(dev, off, &v, 1);
	return v;
}

static void wr8(const struct bus_ops *ops, void *dev, uint64_t off, uint8_t v)
{
	ops->write(dev, off, &v, 1);
}

static void test_i8042(void)
{
	struct cella_err err = { 0 };
	struct fake_host h = { 0 };
	struct hw_host host = { .set_irq = fake_set_irq, .event = fake_event, .ctx = &h };
	struct i8042 *k;
	TAP_OK(i8042_new(&host, &k, &err) == 0, "i8042: create");
	uint8_t st = rd8(&i8042_cmd_ops, k, 0);
	TAP_OK(!(st & 0x01) && !(st & 0x02) && (st & 0x10), "i8042: status idle, input empty, not key-locked");
	wr8(&i8042_cmd_ops, k, 0, 0xaa);
	TAP_OK((rd8(&i8042_cmd_ops, k, 0) & 0x01) && rd8(&i8042_data_ops, k, 0) == 0x55, "i8042: self test 0x55");
	TAP_OK(!(rd8(&i8042_cmd_ops, k, 0) & 0x01), "i8042: output buffer drained by the read");
	wr8(&i8042_cmd_ops, k, 0, 0x60);
	wr8(&i8042_data_ops, k, 0, 0x03);
	wr8(&i8042_cmd_ops, k, 0, 0x20);
	TAP_OK(rd8(&i8042_data_ops, k, 0) == 0x03, "i8042: command byte written and read back");
	/* The keyboard answers at once: identify = ACK, AB 83, each byte on IRQ 1 as the last is read. */
	wr8(&i8042_data_ops, k, 0, 0xf2);
	st = rd8(&i8042_cmd_ops, k, 0);
	TAP_OK((st & 0x61) == 0x01, "i8042: keyboard data, no timeout, not AUX");
	TAP_OK(h.irq_level[1] == 1, "i8042: IRQ 1 raised (keyboard interrupt enabled)");
	TAP_OK(rd8(&i8042_data_ops, k, 0) == 0xfa, "i8042: identify ACKed");
	TAP_OK(h.irq_level[1] == 1 && rd8(&i8042_data_ops, k, 0) == 0xab && rd8(&i8042_data_ops, k, 0) == 0x83,
	       "i8042: identify answers AB 83 (MF2 keyboard)");
	TAP_OK(!(rd8(&i8042_cmd_ops, k, 0) & 0x01) && h.irq_level[1] == 0, "i8042: queue drained, IRQ 1 dropped");
	uint8_t b[12];
	wr8(&i8042_data_ops, k, 0, 0xff);
	b[0] = rd8(&i8042_data_ops, k, 0);
	b[1] = rd8(&i8042_data_ops, k, 0);
	TAP_OK(b[0] == 0xfa && b[1] == 0xaa, "i8042: keyboard reset: ACK, self-test passed");
	wr8(&i8042_data_ops, k, 0, 0xf0);
	b[0] = rd8(&i8042_data_ops, k, 0);
	wr8(&i8042_data_ops, k, 0, 0x00);
	b[1] = rd8(&i8042_data_ops, k, 0);
	b[2] = rd8(&i8042_data_ops, k, 0);
	TAP_OK(b[0] == 0xfa && b[1] == 0xfa && b[2] == 0x02, "i8042: get scan code set: ACK ACK 2");
	wr8(&i8042_data_ops, k, 0, 0xed);
	wr8(&i8042_data_ops, k, 0, 0x07);
	b[0] = rd8(&i8042_data_ops, k, 0);
	b[1] = rd8(&i8042_data_ops, k, 0);
	TAP_OK(b[0] == 0xfa && b[1] == 0xfa, "i8042: set LEDs: ACK for the command and its parameter");
	/* Ctrl+Alt+Delete from the host: set 2 without translation, set 1 with it */
	TAP_OK(i8042_send_ctrl_alt_del(k) == 0 && i8042_send_ctrl_alt_del(k) == 0 && i8042_send_ctrl_alt_del(k) == 0 &&
		       i8042_send_ctrl_alt_del(k) == -ENOSPC, "i8042: Ctrl+Alt+Del queued three times, then the queue is full");
	bool same = true;
	for (int i = 0; i < 33; i++) {
		b[i % 11] = rd8(&i8042_data_ops, k, 0);
		same = same && b[i % 11] == (uint8_t)"\x14\x11\xe0\x71\xe0\xf0\x71\xf0\x11\xf0\x14"[i % 11];
	}
	TAP_OK(same, "i8042: set 2 press + release, three times, in order");
	TAP_OK(!(rd8(&i8042_cmd_ops, k, 0) & 0x01), "i8042: all sequences read");
	wr8(&i8042_cmd_ops, k, 0, 0x60);
	wr8(&i8042_data_ops, k, 0, 0x41); /* translate, keyboard interrupt */
	TAP_OK(i8042_send_ctrl_alt_del(k) == 0 && i8042_keys_sent(k) == 4, "i8042: third sequence");
	for (int i = 0; i < 8; i++)
		b[i] = rd8(&i8042_data_ops, k, 0);
	TAP_OK(!memcmp(b, "\x1d\x38\xe0\x53\xe0\xd3\xb8\x9d", 8), "i8042: set 1 through translation");
	wr8(&i8042_cmd_ops, k, 0, 0xad); /* keyboard port disabled: keys wait */
	i8042_send_ctrl_alt_del(k);
	TAP_OK(!(rd8(&i8042_cmd_ops, k, 0) & 0x01), "i8042: nothing delivered while the keyboard port is disabled");
	wr8(&i8042_cmd_ops, k, 0, 0xae);
	TAP_OK((rd8(&i8042_cmd_ops, k, 0) & 0x01) && rd8(&i8042_data_ops, k, 0) == 0x1d, "i8042: delivered once enabled");
	for (int i = 0; i < 7; i++)
		rd8(&i8042_data_ops, k, 0);
	wr8(&i8042_cmd_ops, k, 0, 0x60);
	wr8(&i8042_data_ops, k, 0, 0x03);
	/* AUX loop: the byte comes back as mouse data on IRQ 12. */
	wr8(&i8042_cmd_ops, k, 0, 0xd3);
	wr8(&i8042_data_ops, k, 0, 0x5a);
	st = rd8(&i8042_cmd_ops, k, 0);
	TAP_OK((st & 0x21) == 0x21 && h.irq_level[12] == 1, "i8042: AUX loop data flagged AUX, IRQ 12");
	TAP_OK(rd8(&i8042_data_ops, k, 0) == 0x5a && h.irq_level[12] == 0, "i8042: AUX loop echoes the byte");
	TAP_OK(h.events == 0, "i8042: no machine event so far");
	wr8(&i8042_cmd_ops, k, 0, 0xfe);
	TAP_OK(h.events == 1 && h.last_event == HW_EVENT_REBOOT && strstr(h.why, "guest reboot"),
	       "i8042: 0xFE pulses reset: reboot (%s)", h.why);
	i8042_free(k);
}

/* Saves k into a state file (byte corrupt_off of its section set to corrupt_to, unless negative) and
 * loads it into a fresh i8042; returns it, or NULL with the error in err. */
static struct i8042 *i8042_clone(struct i8042 *k, const struct hw_host *host, int corrupt_off, uint8_t corrupt_to,
				 struct cella_err *err)
{
	char path[] = "/tmp/cella-i8042-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return NULL;
	close(fd);
	struct snap_writer w;
	snap_writer_init(&w);
	snap_begin(&w, "dev.i8042");
	size_t start = w.len;
	i8042_save(k, &w);
	if (corrupt_off >= 0)
		w.buf[start + (size_t)corrupt_off] = corrupt_to;
	snap_end(&w);
	struct i8042 *copy = NULL;
	struct snap_file f;
	struct snap_sec sec;
	if (snap_writer_finish(&w, path, err) == 0 && snap_file_open(&f, path, err) == 0) {
		if (snap_need(&f, &sec, err, "dev.i8042") == 0 && i8042_new(host, &copy, err) == 0 &&
		    (i8042_load(copy, &sec, err) < 0 || snap_sec_done(&sec, err) < 0)) {
			i8042_free(copy);
			copy = NULL;
		}
		snap_file_close(&f);
	}
	snap_writer_free(&w);
	unlink(path);
	return copy;
}

/* A snapshot taken while the keyboard still has bytes for the guest keeps them, in order. */
static void test_i8042_snapshot(void)
{
	struct cella_err err = { 0 };
	struct fake_host h = { 0 };
	struct hw_host host = { .set_irq = fake_set_irq, .event = fake_event, .ctx = &h };
	struct i8042 *k;
	TAP_OK(i8042_new(&host, &k, &err) == 0, "i8042 snapshot: create");
	wr8(&i8042_cmd_ops, k, 0, 0x60);
	wr8(&i8042_data_ops, k, 0, 0x01); /* keyboard interrupt, no translation */
	wr8(&i8042_data_ops, k, 0, 0xf0); /* select scan code set 3 */
	rd8(&i8042_data_ops, k, 0);
	wr8(&i8042_data_ops, k, 0, 0x03);
	rd8(&i8042_data_ops, k, 0);
	wr8(&i8042_data_ops, k, 0, 0xed); /* set LEDs: its parameter still to come */
	rd8(&i8042_data_ops, k, 0);
	TAP_OK(i8042_send_ctrl_alt_del(k) == 0, "i8042 snapshot: keys queued");
	uint8_t first = rd8(&i8042_data_ops, k, 0), want[10], got[10];
	struct i8042 *c = i8042_clone(k, &host, -1, 0, &err);
	TAP_OK(c != NULL, "i8042 snapshot: saved and loaded: %s", err.msg);
	if (!c) {
		i8042_free(k);
		return;
	}
	for (int i = 0; i < 10; i++) {
		want[i] = rd8(&i8042_data_ops, k, 0);
		got[i] = rd8(&i8042_data_ops, c, 0);
	}
	TAP_OK(first == 0x14 && !memcmp(want, got, sizeof(want)),
	       "i8042 snapshot: the clone hands out the 10 key bytes the original had left");
	TAP_OK(i8042_keys_sent(c) == 1, "i8042 snapshot: keys-sent counter kept");
	wr8(&i8042_data_ops, c, 0, 0x07);
	TAP_OK(rd8(&i8042_data_ops, c, 0) == 0xfa, "i8042 snapshot: the clone takes the LEDs parameter it was waiting for");
	wr8(&i8042_data_ops, c, 0, 0xf0);
	rd8(&i8042_data_ops, c, 0);
	wr8(&i8042_data_ops, c, 0, 0x00);
	rd8(&i8042_data_ops, c, 0);
	TAP_OK(rd8(&i8042_data_ops, c, 0) == 3, "i8042 snapshot: scan code set 3 kept");
	i8042_free(c);
	/* damaged sections are refused, naming the field (offsets: 6 = pending keyboard command, 7 = set,
	 * 16 = queue length) */
	c = i8042_clone(k, &host, 7, 9, &err);
	TAP_OK(!c && strstr(err.msg, "scan code set 9"), "i8042 snapshot: bad scan code set refused: %s", err.msg);
	c = i8042_clone(k, &host, 6, 0x42, &err);
	TAP_OK(!c && strstr(err.msg, "0x42 takes no parameter"), "i8042 snapshot: bad pending command refused: %s",
	       err.msg);
	c = i8042_clone(k, &host, 16, 200, &err);
	TAP_OK(!c && strstr(err.msg, "200 queued keyboard bytes"), "i8042 snapshot: overlong queue refused: %s",
	       err.msg);
	i8042_free(c);
	i8042_free(k);
}

static void test_acpi_pm(void)
{
	struct cella_err err = { 0 };
	struct fake_host h = { 0 };
	struct hw_host host = { .event = fake_event, .ctx = &h };
	struct acpi_pm *pm;
	TAP_OK(acpi_pm_new(&host, &pm, &err) == 0, "acpi-pm: create");
	uint8_t v[2];
	acpi_pm_cnt_ops.read(pm, 0, v, 2);
	TAP_OK(v[0] & 0x01, "acpi-pm: SCI_EN reads set");
	uint8_t s3[2] = { 0x00, (uint8_t)((3 << 10 | 1 << 13) >> 8) };
	acpi_pm_cnt_ops.write(pm, 0, s3, 2);
	TAP_OK(h.events == 0, "acpi-pm: S3 request is not a poweroff");
	uint16_t typ_only = X86_ACPI_S5_SLP_TYP << 10;
	uint8_t t[2] = { (uint8_t)typ_only, (uint8_t)(typ_only >> 8) };
	acpi_pm_cnt_ops.write(pm, 0, t, 2);
	TAP_OK(h.events == 0, "acpi-pm: SLP_TYP without SLP_EN does nothing");
	uint16_t s5 = X86_ACPI_S5_SLP_TYP << 10 | 1 << 13;
	uint8_t hi = (uint8_t)(s5 >> 8);
	acpi_pm_cnt_ops.write(pm, 1, &hi, 1); /* a byte write of the high half, as some guests do */
	TAP_OK(h.events == 1 && h.last_event == HW_EVENT_POWEROFF && !strcmp(h.why, "guest poweroff"),
	       "acpi-pm: SLP_EN + S5 powers off");
	uint8_t en[2] = { 0x21, 0x01 };
	acpi_pm_evt_ops.write(pm, 2, en, 2);
	uint8_t ev[4];
	acpi_pm_evt_ops.read(pm, 0, ev, 4);
	TAP_OK(ev[2] == 0x21 && ev[3] == 0x01 && ev[0] == 0 && ev[1] == 0, "acpi-pm: enable register kept");
	acpi_pm_free(pm);
}

static void test_boot_timer_and_legacy(void)
{
	struct cella_err err = { 0 };
	struct boot_timer *t;
	TAP_OK(boot_timer_new(cella_now_ns(), &t, &err) == 0, "boot-timer: create");
	TAP_OK(boot_timer_elapsed_ns(t) == 0, "boot-timer: nothing recorded yet");
	wr8(&boot_timer_ops, t, 0, 7);
	TAP_OK(boot_timer_elapsed_ns(t) == 0, "boot-timer: other values ignored");
	wr8(&boot_timer_ops, t, 0, BOOT_TIMER_MAGIC);
	uint64_t first = boot_timer_elapsed_ns(t);
	TAP_OK(first > 0, "boot-timer: magic value recorded");
	wr8(&boot_timer_ops, t, 0, BOOT_TIMER_MAGIC);
	TAP_OK(boot_timer_elapsed_ns(t) == first, "boot-timer: first write kept");
	boot_timer_free(t);

	struct fake_host h = { 0 };
	struct hw_host host = { .event = fake_event, .ctx = &h };
	struct legacy *l;
	struct bus pio;
	bus_init(&pio, "pio");
	TAP_OK(legacy_new(&host, &l, &err) == 0 && legacy_register(l, &pio, &err) == 0, "legacy: registered");
	uint8_t v[4];
	TAP_OK(bus_read(&pio, 0xcfc, v, 4) && v[0] == 0xff && v[3] == 0xff, "legacy: PCI config reads all-ones");
	uint8_t idx = 0x0b;
	bus_write(&pio, 0x70, &idx, 1);
	bus_read(&pio, 0x71, v, 1);
	TAP_OK(v[0] == 0x02, "legacy: RTC status B: 24-hour BCD");
	idx = 0x00;
	bus_write(&pio, 0x70, &idx, 1);
	bus_read(&pio, 0x71, v, 1);
	TAP_OK((v[0] & 0x0f) <= 9 && (v[0] >> 4) <= 5, "legacy: RTC seconds in BCD (0x%02x)", v[0]);
	uint8_t post = 0x42;
	TAP_OK(bus_write(&pio, 0x80, &post, 1) && pio.unhandled_writes == 0, "legacy: POST port swallowed");
	uint8_t rst = 0x06;
	bus_write(&pio, 0xcf9, &rst, 1);
	TAP_OK(h.events == 1 && h.last_event == HW_EVENT_REBOOT, "legacy: reset control RST_CPU reboots");
	legacy_free(l);
	bus_free(&pio);
}

int main(void)
{
	test_i8042();
	test_i8042_snapshot();
	test_acpi_pm();
	test_boot_timer_and_legacy();
	return tap_done();
}
