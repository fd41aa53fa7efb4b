/* The PC ports a Linux guest probes that need only a token answer:
 *   0x80         POST diagnostic port (also used as an I/O delay): writes ignored.
 *   0x70, 0x71   MC146818 CMOS RTC, minimal: index + data, the clock reads the host's UTC time in BCD,
 *                the rest is 128 bytes of CMOS RAM; no alarms, no periodic interrupt.
 *   0xcf8..0xcff PCI configuration mechanism #1, absent: reads are all-ones, so the guest finds no
 *                PCI bus. A byte write to 0xcf9 (reset control) with RST_CPU set reboots.
 * The PIC, PIT and speaker port live in KVM. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"

#define POST_PORT 0x80
#define RTC_PORT 0x70
#define PCI_CONFIG_PORT 0xcf8
#define PCI_RESET_CONTROL 0x1 /* offset of 0xcf9 from 0xcf8 */
#define RESET_CONTROL_RST_CPU 0x04

enum { RTC_SEC = 0, RTC_MIN = 2, RTC_HOUR = 4, RTC_WDAY = 6, RTC_MDAY = 7, RTC_MON = 8, RTC_YEAR = 9,
       RTC_STATUS_A = 0x0a, RTC_STATUS_B = 0x0b, RTC_STATUS_C = 0x0c, RTC_STATUS_D = 0x0d,
       RTC_CENTURY = 0x32 };

struct legacy {
	pthread_mutex_t lock;
	const struct hw_host *host;
	uint8_t rtc_index;
	uint8_t cmos[128];
};

int legacy_new(const struct hw_host *host, struct legacy **out, struct cella_err *err)
{
	struct legacy *l = calloc(1, sizeof(*l));
	if (!l)
		return cella_err_set(err, ENOMEM, "legacy ports: out of memory");
	pthread_mutex_init(&l->lock, NULL);
	l->host = host;
	l->cmos[RTC_STATUS_A] = 0x26; /* 32.768 kHz time base, 1024 Hz rate, no update in progress */
	l->cmos[RTC_STATUS_B] = 0x02; /* 24-hour, BCD */
	l->cmos[RTC_STATUS_D] = 0x80; /* valid RAM and time */
	*out = l;
	return 0;
}

void legacy_free(struct legacy *l)
{
	if (!l)
		return;
	pthread_mutex_destroy(&l->lock);
	free(l);
}

static uint8_t bcd(int v)
{
	return (uint8_t)(((v / 10) % 10) << 4 | (v % 10));
}

static uint8_t rtc_value(struct legacy *l, uint8_t index)
{
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	switch (index) {
	case RTC_SEC: return bcd(tm.tm_sec);
	case RTC_MIN: return bcd(tm.tm_min);
	case RTC_HOUR: return bcd(tm.tm_hour);
	case RTC_WDAY: return bcd(tm.tm_wday + 1);
	case RTC_MDAY: return bcd(tm.tm_mday);
	case RTC_MON: return bcd(tm.tm_mon + 1);
	case RTC_YEAR: return bcd(tm.tm_year % 100);
	case RTC_CENTURY: return bcd((tm.tm_year + 1900) / 100);
	case RTC_STATUS_C: return 0; /* no interrupt flags */
	default: return l->cmos[index];
	}
}

static void rtc_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	struct legacy *l = opaque;
	pthread_mutex_lock(&l->lock);
	for (uint32_t i = 0; i < len; i++)
		data[i] = offset + i == 1 ? rtc_value(l, l->rtc_index) : 0xff;
	pthread_mutex_unlock(&l->lock);
}

static void rtc_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct legacy *l = opaque;
	pthread_mutex_lock(&l->lock);
	for (uint32_t i = 0; i < len; i++) {
		if (offset + i == 0)
			l->rtc_index = data[i] & 0x7f; /* bit 7 masks NMI */
		else if (offset + i == 1 && l->rtc_index > RTC_STATUS_D && l->rtc_index != RTC_CENTURY)
			l->cmos[l->rtc_index] = data[i]; /* time and status registers stay ours */
	}
	pthread_mutex_unlock(&l->lock);
}

static void pci_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	for (uint32_t i = 0; i < len; i++)
		data[i] = 0xff;
}

static void pci_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct legacy *l = opaque;
	if (offset == PCI_RESET_CONTROL && len == 1 && (data[0] & RESET_CONTROL_RST_CPU) && l->host &&
	    l->host->event)
		l->host->event(l->host->ctx, HW_EVENT_REBOOT, "guest reboot (reset control register)");
}

static const struct bus_ops post_ops = { 0 };
static const struct bus_ops rtc_ops = { .read = rtc_read, .write = rtc_write };
static const struct bus_ops pci_ops = { .read = pci_read, .write = pci_write };

int legacy_register(struct legacy *l, struct bus *pio, struct cella_err *err)
{
	int r = bus_register(pio, POST_PORT, 1, &post_ops, l, "post", err);
	if (r == 0)
		r = bus_register(pio, RTC_PORT, 2, &rtc_ops, l, "cmos-rtc", err);
	if (r == 0)
		r = bus_register(pio, PCI_CONFIG_PORT, 8, &pci_ops, l, "pci-config (absent)", err);
	return r;
}

void legacy_save(struct legacy *l, struct snap_writer *w)
{
	pthread_mutex_lock(&l->lock);
	snap_put_u8(w, l->rtc_index);
	snap_put(w, l->cmos, sizeof(l->cmos));
	pthread_mutex_unlock(&l->lock);
}

int legacy_load(struct legacy *l, struct snap_sec *sec, struct cella_err *err)
{
	pthread_mutex_lock(&l->lock);
	l->rtc_index = snap_get_u8(sec) & 0x7f;
	snap_get(sec, l->cmos, sizeof(l->cmos));
	pthread_mutex_unlock(&l->lock);
	return 0;
}
