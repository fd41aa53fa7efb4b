/* Intel MultiProcessor Specification 1.4 tables: a floating pointer in the EBDA and a configuration
 * table listing the processors, the ISA bus, the IOAPIC and the interrupt routing (see boot.h). */
#include <errno.h>
#include <string.h>

#include "base/err.h"
#include "vmm/x86/boot-priv.h"

#define MP_AREA_SIZE 0x400 /* EBDA: 0x9fc00..0xa0000 */
#define MPF_SIZE 16
#define MPC_HDR_SIZE 44
#define MPC_CPU_SIZE 20
#define MPC_ENTRY_SIZE 8
#define MPC_NR_ISA_IRQS 16

enum { MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_INTSRC, MP_LINTSRC };
enum { MP_INT, MP_NMI, MP_SMI, MP_EXTINT };
#define CPU_ENABLED 0x01
#define CPU_BOOTPROCESSOR 0x02
#define LAPIC_VERSION 0x14
#define IOAPIC_VERSION 0x11

static uint8_t *put_intsrc(uint8_t *p, uint8_t type, uint8_t irqtype, uint8_t bus, uint8_t irq,
			   uint8_t dst, uint8_t pin)
{
	p[0] = type;
	p[1] = irqtype;
	put_le16(p + 2, 0); /* polarity and trigger conform to the bus (ISA: edge, active high) */
	p[4] = bus;
	p[5] = irq;
	p[6] = dst;
	p[7] = pin;
	return p + MPC_ENTRY_SIZE;
}

int x86_write_mptable(const struct x86_guest_mem *mem, unsigned ncpus, struct cella_err *err)
{
	if (ncpus < 1 || ncpus > X86_TABLES_MAX_CPUS)
		return cella_err_set(err, EINVAL, "mptable: %u vCPUs (supported: 1..%u)", ncpus,
				     X86_TABLES_MAX_CPUS);
	uint8_t *area = x86_guest_ptr(mem, X86_MPTABLE_ADDR, MP_AREA_SIZE);
	uint8_t *bda = x86_guest_ptr(mem, 0x40e, 2);
	if (!area || !bda)
		return cella_err_set(err, ENOMEM, "mptable: guest memory does not reach the EBDA at 0x%llx",
				     X86_MPTABLE_ADDR);
	size_t size = MPF_SIZE + MPC_HDR_SIZE + ncpus * MPC_CPU_SIZE +
		      (2 + MPC_NR_ISA_IRQS + 2) * MPC_ENTRY_SIZE;
	if (size > MP_AREA_SIZE) /* cannot happen with X86_TABLES_MAX_CPUS */
		return cella_err_set(err, ENOSPC, "mptable: %zu bytes do not fit in the EBDA", size);
	memset(area, 0, MP_AREA_SIZE);
	put_le16(bda, (uint16_t)(X86_EBDA_START >> 4)); /* BDA: EBDA segment, where Linux looks */

	uint8_t ioapic_id = (uint8_t)ncpus;
	uint8_t *mpc = area + MPF_SIZE, *p = mpc + MPC_HDR_SIZE;
	uint16_t count = 0;
	for (unsigned i = 0; i < ncpus; i++, count++) {
		p[0] = MP_PROCESSOR;
		p[1] = (uint8_t)i; /* local APIC id */
		p[2] = LAPIC_VERSION;
		p[3] = CPU_ENABLED | (i == 0 ? CPU_BOOTPROCESSOR : 0);
		put_le32(p + 4, 0x600); /* signature: family 6 */
		put_le32(p + 8, 0x201); /* features: FPU, APIC */
		p += MPC_CPU_SIZE;
	}
	p[0] = MP_BUS;
	p[1] = 0;
	memcpy(p + 2, "ISA   ", 6);
	p += MPC_ENTRY_SIZE;
	count++;
	p[0] = MP_IOAPIC;
	p[1] = ioapic_id;
	p[2] = IOAPIC_VERSION;
	p[3] = 1; /* enabled */
	put_le32(p + 4, X86_IOAPIC_ADDR);
	p += MPC_ENTRY_SIZE;
	count++;
	for (uint8_t irq = 0; irq < MPC_NR_ISA_IRQS; irq++, count++)
		p = put_intsrc(p, MP_INTSRC, MP_INT, 0, irq, ioapic_id, irq);
	/* LINT0 = ExtINT (the 8259 in virtual-wire mode), LINT1 = NMI, on every local APIC. */
	p = put_intsrc(p, MP_LINTSRC, MP_EXTINT, 0, 0, 0xff, 0);
	p = put_intsrc(p, MP_LINTSRC, MP_NMI, 0, 0, 0xff, 1);
	count += 2;

	uint16_t mpc_len = (uint16_t)(p - mpc);
	memcpy(mpc, "PCMP", 4);
	put_le16(mpc + 4, mpc_len);
	mpc[6] = 4; /* spec revision 1.4 */
	memcpy(mpc + 8, "CELLA   ", 8);
	memcpy(mpc + 16, "CELLA-VMM   ", 12);
	put_le16(mpc + 34, count);
	put_le32(mpc + 36, X86_LAPIC_ADDR);
	mpc[7] = x86_checksum(mpc, mpc_len);

	uint8_t *mpf = area;
	memcpy(mpf, "_MP_", 4);
	put_le32(mpf + 4, (uint32_t)(X86_MPTABLE_ADDR + MPF_SIZE));
	mpf[8] = 1; /* length in 16-byte units */
	mpf[9] = 4; /* spec revision 1.4 */
	/* feature bytes 0: the configuration table is present, no IMCR (virtual wire mode) */
	mpf[10] = x86_checksum(mpf, MPF_SIZE);
	return 0;
}
