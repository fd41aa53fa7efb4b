/* ACPI fixed-hardware PM1a event block (status + enable, X86_ACPI_PM1A_EVT) and control block
 * (X86_ACPI_PM1A_CNT), as the FADT describes them. The one action: SLP_EN with SLP_TYP = S5 powers
 * the machine off. SCI_EN reads as set (the machine is always in ACPI mode: no SMI command port). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"
#include "vmm/x86/boot.h"

#define PM1_CNT_SCI_EN 0x0001
#define PM1_CNT_SLP_TYP_SHIFT 10
#define PM1_CNT_SLP_TYP_MASK (7u << PM1_CNT_SLP_TYP_SHIFT)
#define PM1_CNT_SLP_EN 0x2000

struct acpi_pm {
	pthread_mutex_t lock;
	const struct hw_host *host;
	uint16_t status, enable, control;
};

int acpi_pm_new(const struct hw_host *host, struct acpi_pm **out, struct cella_err *err)
{
	struct acpi_pm *pm = calloc(1, sizeof(*pm));
	if (!pm)
		return cella_err_set(err, ENOMEM, "acpi-pm: out of memory");
	pthread_mutex_init(&pm->lock, NULL);
	pm->host = host;
	pm->control = PM1_CNT_SCI_EN;
	*out = pm;
	return 0;
}

void acpi_pm_free(struct acpi_pm *pm)
{
	if (!pm)
		return;
	pthread_mutex_destroy(&pm->lock);
	free(pm);
}

/* Event block: bytes 0-1 status (write 1 to clear), bytes 2-3 enable. */
static void evt_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	struct acpi_pm *pm = opaque;
	pthread_mutex_lock(&pm->lock);
	uint32_t v = pm->status | (uint32_t)pm->enable << 16;
	pthread_mutex_unlock(&pm->lock);
	hw_put_le(data, len, offset < 4 ? v >> (8 * offset) : 0xffffffffu);
}

static void evt_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct acpi_pm *pm = opaque;
	pthread_mutex_lock(&pm->lock);
	for (uint32_t i = 0; i < len; i++) {
		uint64_t at = offset + i;
		uint16_t bits = (uint16_t)(data[i] << (8 * (at & 1)));
		if (at < 2)
			pm->status &= (uint16_t)~bits;
		else if (at < 4)
			pm->enable = (uint16_t)((pm->enable & ~(0xffu << (8 * (at & 1)))) | bits);
	}
	pthread_mutex_unlock(&pm->lock);
}

static void cnt_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	struct acpi_pm *pm = opaque;
	pthread_mutex_lock(&pm->lock);
	uint16_t v = pm->control;
	pthread_mutex_unlock(&pm->lock);
	uint64_t word = 0xffffffffffff0000ull | v; /* beyond the 2-byte register reads float high */
	hw_put_le(data, len, offset < 2 ? word >> (8 * offset) : ~0ull);
}

static void cnt_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct acpi_pm *pm = opaque;
	pthread_mutex_lock(&pm->lock);
	uint16_t v = pm->control;
	for (uint32_t i = 0; i < len && offset + i < 2; i++) {
		unsigned shift = 8 * (unsigned)(offset + i);
		v = (uint16_t)((v & ~(0xffu << shift)) | ((unsigned)data[i] << shift));
	}
	bool sleep = v & PM1_CNT_SLP_EN;
	unsigned typ = (v & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT;
	pm->control = (uint16_t)((v & ~PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN); /* SLP_EN reads as 0 */
	pthread_mutex_unlock(&pm->lock);
	if (!sleep)
		return;
	if (typ == X86_ACPI_S5_SLP_TYP) {
		if (pm->host && pm->host->event)
			pm->host->event(pm->host->ctx, HW_EVENT_POWEROFF, "guest poweroff");
	} else {
		log_warn("acpi-pm: guest asked for sleep type %u; only S5 (poweroff) is supported", typ);
	}
}

const struct bus_ops acpi_pm_evt_ops = { .read = evt_read, .write = evt_write };
const struct bus_ops acpi_pm_cnt_ops = { .read = cnt_read, .write = cnt_write };

void acpi_pm_save(struct acpi_pm *pm, struct snap_writer *w)
{
	pthread_mutex_lock(&pm->lock);
	uint16_t v[] = { pm->status, pm->enable, pm->control };
	pthread_mutex_unlock(&pm->lock);
	snap_put(w, v, sizeof(v));
}

int acpi_pm_load(struct acpi_pm *pm, struct snap_sec *sec, struct cella_err *err)
{
	uint16_t v[3];
	snap_get(sec, v, sizeof(v));
	pthread_mutex_lock(&pm->lock);
	pm->status = v[0];
	pm->enable = v[1];
	pm->control = (uint16_t)((v[2] & ~PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN);
	pthread_mutex_unlock(&pm->lock);
	return 0;
}
