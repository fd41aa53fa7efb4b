/* Emulated chips, one file each. A device gets a struct hw_host through which it raises interrupt
 * lines and reports machine-level events; it knows nothing of KVM, so unit tests drive it directly
 * through its bus_ops. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/bus.h"

struct cella_err;
struct snap_writer;
struct snap_sec;

/* Snapshots: every chip has NAME_save (its state appended to the open section; called with the vCPUs
 * paused) and NAME_load (read back into a freshly made chip in the restoring process, values
 * checked; interrupt lines that were high are raised again). */

enum hw_event {
	HW_EVENT_POWEROFF, /* ACPI S5 */
	HW_EVENT_REBOOT,   /* i8042 reset line, PCI reset control register */
};

struct hw_host {
	/* level 1 = asserted. Returns 0 or -errno. */
	int (*set_irq)(void *ctx, unsigned irq, int level);
	void (*event)(void *ctx, enum hw_event event, const char *why);
	/* Input side has room again (the serial RX FIFO drained): wake whoever feeds it. */
	void (*wake)(void *ctx);
	void *ctx;
};

/* --- 8250/16550A UART (serial_8250.c) --- */
#define SERIAL_COM1_BASE 0x3f8
#define SERIAL_COM1_IRQ 4
#define SERIAL_RX_FIFO 256

struct serial_8250;
extern const struct bus_ops serial_8250_ops;
/* out_fd: where transmitted bytes go (-1 = dropped); not owned. */
int serial_8250_new(const struct hw_host *host, unsigned irq, int out_fd, struct serial_8250 **out,
		    struct cella_err *err);
void serial_8250_free(struct serial_8250 *s);
/* Free room in the RX FIFO. */
size_t serial_8250_rx_room(struct serial_8250 *s);
/* Queues received bytes (as many as fit); returns how many were taken. */
size_t serial_8250_receive(struct serial_8250 *s, const uint8_t *buf, size_t len);
uint64_t serial_8250_tx_count(struct serial_8250 *s);
void serial_8250_save(struct serial_8250 *s, struct snap_writer *w);
int serial_8250_load(struct serial_8250 *s, struct snap_sec *sec, struct cella_err *err);

/* --- i8042 keyboard controller with a keyboard, and its reset line (i8042.c) --- */
#define I8042_DATA_PORT 0x60
#define I8042_CMD_PORT 0x64
#define I8042_KBD_IRQ 1
struct i8042;
extern const struct bus_ops i8042_data_ops, i8042_cmd_ops;
int i8042_new(const struct hw_host *host, struct i8042 **out, struct cella_err *err);
void i8042_free(struct i8042 *k);
void i8042_save(struct i8042 *k, struct snap_writer *w);
int i8042_load(struct i8042 *k, struct snap_sec *sec, struct cella_err *err);
/* Types Ctrl+Alt+Delete on the keyboard port (press and release; scan code set 2, or set 1 when the
 * guest enabled translation): bytes reach the guest one at a time through the data port, on IRQ 1
 * when the command byte enables it. -ENOSPC while an earlier sequence is still unread. */
int i8042_send_ctrl_alt_del(struct i8042 *k);
uint64_t i8042_keys_sent(struct i8042 *k); /* sequences injected so far */

/* --- ACPI PM1a event and control blocks (acpi_pm.c) --- */
struct acpi_pm;
extern const struct bus_ops acpi_pm_evt_ops, acpi_pm_cnt_ops;
int acpi_pm_new(const struct hw_host *host, struct acpi_pm **out, struct cella_err *err);
void acpi_pm_free(struct acpi_pm *pm);
void acpi_pm_save(struct acpi_pm *pm, struct snap_writer *w);
int acpi_pm_load(struct acpi_pm *pm, struct snap_sec *sec, struct cella_err *err);

/* --- boot timer port (boot_timer.c): the guest writes 123 when its init starts --- */
#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_MAGIC 123
struct boot_timer;
extern const struct bus_ops boot_timer_ops;
/* start_ns: cella_now_ns() at VMM start. */
int boot_timer_new(uint64_t start_ns, struct boot_timer **out, struct cella_err *err);
void boot_timer_free(struct boot_timer *t);
/* ns from VMM start to the first magic write, 0 if none yet. */
uint64_t boot_timer_elapsed_ns(struct boot_timer *t);
void boot_timer_save(struct boot_timer *t, struct snap_writer *w);
int boot_timer_load(struct boot_timer *t, struct snap_sec *sec, struct cella_err *err);

/* --- legacy ports Linux probes (legacy.c): POST 0x80, CMOS RTC 0x70/0x71, PCI config 0xcf8..0xcff
 * (all-ones: no PCI; a byte write of RST_CPU to 0xcf9 resets) --- */
struct legacy;
int legacy_new(const struct hw_host *host, struct legacy **out, struct cella_err *err);
void legacy_free(struct legacy *l);
/* Registers all of its ports on the PIO bus. */
int legacy_register(struct legacy *l, struct bus *pio, struct cella_err *err);
void legacy_save(struct legacy *l, struct snap_writer *w);
int legacy_load(struct legacy *l, struct snap_sec *sec, struct cella_err *err);

/* --- test-only MMIO device (debug_device.c): 8 bytes of scratch register at its base; every write
 * is logged at info level --- */
#define DEBUG_DEVICE_LEN 0x1000
struct debug_device;
extern const struct bus_ops debug_device_ops;
int debug_device_new(struct debug_device **out, struct cella_err *err);
void debug_device_free(struct debug_device *d);
void debug_device_save(struct debug_device *d, struct snap_writer *w);
int debug_device_load(struct debug_device *d, struct snap_sec *sec, struct cella_err *err);

/* Little-endian helpers for register accesses of 1..8 bytes. */
static inline uint64_t hw_get_le(const uint8_t *data, uint32_t len)
{
	uint64_t v = 0;
	for (uint32_t i = 0; i < len && i < 8; i++)
		v |= (uint64_t)data[i] << (8 * i);
	return v;
}
static inline void hw_put_le(uint8_t *data, uint32_t len, uint64_t v)
{
	for (uint32_t i = 0; i < len; i++)
		data[i] = i < 8 ? (uint8_t)(v >> (8 * i)) : 0xff;
}
