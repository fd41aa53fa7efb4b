/* Minimal ACPI tables in the BIOS area at 0xe0000: RSDP (v2) -> XSDT -> FADT (-> FACS, DSDT) and
 * MADT. The FADT describes a PM1a event/control block at fixed I/O ports so the guest's poweroff
 * writes SLP_EN | SLP_TYP(S5) to PM1a_CNT; the DSDT carries the \_S5_ package that gives SLP_TYP,
 * the i8042 keyboard controller and the virtio-mmio devices. The MADT lists one local APIC per vCPU,
 * the IOAPIC and the SCI override. */
#include <errno.h>
#include <string.h>

#include "base/err.h"
#include "vmm/x86/boot-priv.h"

#define ACPI_AREA_SIZE 0x1000 /* all our tables fit in one page */
#define HDR_SIZE 36
#define RSDP_SIZE 36
#define FACS_SIZE 64
#define FADT_SIZE 276 /* ACPI 6.0, revision 6 */

/* FADT fields */
#define FADT_FACS 36
#define FADT_DSDT 40
#define FADT_SCI_INT 46
#define FADT_PM1A_EVT_BLK 56
#define FADT_PM1A_CNT_BLK 64
#define FADT_PM1_EVT_LEN 88
#define FADT_PM1_CNT_LEN 89
#define FADT_IAPC_BOOT_ARCH 109
#define FADT_FLAGS 112
#define FADT_MINOR_VERSION 131
#define FADT_X_FACS 132
#define FADT_X_DSDT 140
#define FADT_X_PM1A_EVT_BLK 148
#define FADT_X_PM1A_CNT_BLK 172

#define IAPC_8042 (1u << 1)
#define IAPC_VGA_NOT_PRESENT (1u << 2)
#define IAPC_CMOS_RTC_NOT_PRESENT (1u << 5)
#define FADT_F_PWR_BUTTON (1u << 4) /* set = no fixed-feature power button */
#define FADT_F_SLP_BUTTON (1u << 5)

#define MADT_PCAT_COMPAT 1
enum { MADT_LAPIC, MADT_IOAPIC, MADT_ISO, MADT_NMI_SRC, MADT_LAPIC_NMI };

static void put_header(uint8_t *t, const char sig[4], uint32_t len, uint8_t rev)
{
	memcpy(t, sig, 4);
	put_le32(t + 4, len);
	t[8] = rev;
	memcpy(t + 10, "CELLA ", 6);
	memcpy(t + 16, "CELLAVM ", 8);
	put_le32(t + 24, 1);
	memcpy(t + 28, "CELA", 4);
	put_le32(t + 32, 1);
}

static void finish_table(uint8_t *t)
{
	uint32_t len = get_le32(t + 4);
	t[9] = 0;
	t[9] = x86_checksum(t, len);
}

/* System I/O generic address structure. */
static void put_gas_io(uint8_t *p, uint8_t bits, uint8_t access, uint64_t port)
{
	p[0] = 1; /* system I/O space */
	p[1] = bits;
	p[2] = 0;
	p[3] = access;
	put_le64(p + 4, port);
}

/* AML integer: ZeroOp, OneOp or BytePrefix n (enough for SLP_TYP values). */
static size_t aml_byte(uint8_t *p, uint8_t v)
{
	if (v <= 1) {
		p[0] = v;
		return 1;
	}
	p[0] = 0x0a;
	p[1] = v;
	return 2;
}

/* Name (_S5_, Package () { typ, typ, 0, 0 }) */
static size_t aml_s5(uint8_t *p)
{
	size_t n = 0;
	p[n++] = 0x08; /* NameOp */
	memcpy(p + n, "_S5_", 4);
	n += 4;
	p[n++] = 0x12; /* PackageOp */
	size_t pkglen_at = n++;
	p[n++] = 4; /* NumElements */
	n += aml_byte(p + n, X86_ACPI_S5_SLP_TYP);
	n += aml_byte(p + n, X86_ACPI_S5_SLP_TYP);
	n += aml_byte(p + n, 0);
	n += aml_byte(p + n, 0);
	p[pkglen_at] = (uint8_t)(n - pkglen_at); /* one-byte PkgLength: counts itself, < 64 */
	return n;
}

/* PkgLength (one byte up to 63, else two) in front of body_len bytes: returns its size. */
static size_t aml_pkglen(uint8_t *p, size_t body_len)
{
	if (body_len + 1 <= 63) {
		p[0] = (uint8_t)(body_len + 1);
		return 1;
	}
	size_t len = body_len + 2;
	p[0] = (uint8_t)(0x40 | (len & 0xf));
	p[1] = (uint8_t)(len >> 4);
	return 2;
}

/* Device (name) { body }: DeviceOp, PkgLength, NameSeg, then the body. Returns bytes written. */
static size_t aml_device(uint8_t *p, const char name[4], const uint8_t *body, size_t body_len)
{
	size_t m = 0;
	p[m++] = 0x5b; /* ExtOpPrefix, DeviceOp */
	p[m++] = 0x82;
	m += aml_pkglen(p + m, 4 + body_len);
	memcpy(p + m, name, 4);
	m += 4;
	memcpy(p + m, body, body_len);
	return m + body_len;
}

/* Name (_CRS, Buffer () { resource descriptors }). Returns bytes written. */
static size_t aml_crs(uint8_t *p, const uint8_t *res, size_t res_len)
{
	size_t n = 0;
	p[n++] = 0x08; /* NameOp */
	memcpy(p + n, "_CRS", 4);
	n += 4;
	p[n++] = 0x11; /* BufferOp, PkgLength, BufferSize (a ByteConst: res_len < 256), bytes */
	n += aml_pkglen(p + n, 2 + res_len);
	p[n++] = 0x0a;
	p[n++] = (uint8_t)res_len;
	memcpy(p + n, res, res_len);
	return n + res_len;
}

/* Device (VRnn) { _HID "LNRO0005", _UID n, _CRS { Memory32Fixed, Interrupt (edge, high) } }: how
 * the kernel's virtio_mmio driver finds a virtio-mmio device through ACPI. Returns bytes written. */
static size_t aml_virtio_dev(uint8_t *p, unsigned uid, const struct x86_acpi_dev *d)
{
	uint8_t body[64];
	size_t n = 0;
	body[n++] = 0x08; /* NameOp _HID */
	memcpy(body + n, "_HID\x0dLNRO0005", 13); /* NameSeg, StringPrefix, text */
	n += 13;
	body[n++] = 0x00;
	body[n++] = 0x08; /* NameOp _UID */
	memcpy(body + n, "_UID", 4);
	n += 4;
	body[n++] = 0x0a;
	body[n++] = (uint8_t)uid;
	uint8_t res[23] = { 0x86, 0x09, 0x00, 0x01 }; /* Memory32Fixed, read-write */
	put_le32(res + 4, (uint32_t)d->addr);
	put_le32(res + 8, d->len);
	res[12] = 0x89; /* Extended Interrupt: length 6, consumer | edge, active high, exclusive */
	res[13] = 6;
	res[14] = 0;
	res[15] = 0x03;
	res[16] = 1;
	put_le32(res + 17, d->irq);
	res[21] = 0x79; /* End tag */
	res[22] = 0;
	n += aml_crs(body + n, res, sizeof(res));
	char name[4] = { 'V', 'R', (char)('0' + uid / 10), (char)('0' + uid % 10) };
	return aml_device(p, name, body, n);
}

/* A compressed EISA id ("PNP0303") as the 32-bit integer AML's EisaId() yields: three letters in
 * 5 bits each, then four hex digits, stored big-endian (so the bytes in memory read 41 D0 03 03). */
static uint32_t eisa_id(const char id[7])
{
	uint32_t v = (uint32_t)(id[0] - '@') << 26 | (uint32_t)(id[1] - '@') << 21 | (uint32_t)(id[2] - '@') << 16;
	for (int i = 3; i < 7; i++) {
		char c = id[i];
		uint32_t d = (uint32_t)(c <= '9' ? c - '0' : c - 'A' + 10);
		v |= d << (4 * (6 - i));
	}
	return __builtin_bswap32(v);
}

/* Small IO resource descriptor: 16-bit decode, one fixed port (min = max, alignment 1, length 1). */
static size_t aml_io_port(uint8_t *p, uint16_t port)
{
	p[0] = 0x47;
	p[1] = 0x01;
	put_le16(p + 2, port);
	put_le16(p + 4, port);
	p[6] = 1;
	p[7] = 1;
	return 8;
}

/* Device (KBD_) { _HID EisaId ("PNP0303"), _CRS { IO (0x60), IO (0x64), IRQNoFlags () {1} } }: the
 * PS/2 keyboard controller Linux's i8042 driver looks for through PNP (without it, and without
 * i8042.nopnp on the guest's command line, the driver does not touch the ports and the keyboard,
 * hence the API's SendCtrlAltDel, is missing). The data port comes first: Linux takes the first IO
 * resource as the data register and the second as command/status. No mouse (PNP0F13) is listed:
 * there is none, and the driver then leaves the AUX port alone. Returns bytes written. */
static size_t aml_i8042(uint8_t *p)
{
	uint8_t body[64];
	size_t n = 0;
	body[n++] = 0x08; /* NameOp _HID, DWordPrefix, EisaId */
	memcpy(body + n, "_HID", 4);
	n += 4;
	body[n++] = 0x0c;
	put_le32(body + n, eisa_id("PNP0303"));
	n += 4;
	uint8_t res[21];
	size_t r = 0;
	r += aml_io_port(res + r, X86_ACPI_I8042_DATA_PORT);
	r += aml_io_port(res + r, X86_ACPI_I8042_CMD_PORT);
	res[r++] = 0x22; /* IRQ descriptor without flags byte: edge, active high, exclusive */
	put_le16(res + r, 1u << X86_ACPI_I8042_IRQ);
	r += 2;
	res[r++] = 0x79; /* End tag, checksum 0 = none */
	res[r++] = 0;
	n += aml_crs(body + n, res, r);
	return aml_device(p, "KBD_", body, n);
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

int x86_write_acpi(const struct x86_guest_mem *mem, unsigned ncpus, struct cella_err *err)
{
	return x86_write_acpi_devs(mem, ncpus, NULL, 0, err);
}

int x86_write_acpi_devs(const struct x86_guest_mem *mem, unsigned ncpus, const struct x86_acpi_dev *devs,
			unsigned ndevs, struct cella_err *err)
{
	if (ndevs > X86_ACPI_MAX_DEVS)
		return cella_err_set(err, EINVAL, "acpi: %u devices (at most %d)", ndevs, X86_ACPI_MAX_DEVS);
	if (ncpus < 1 || ncpus > X86_TABLES_MAX_CPUS)
		return cella_err_set(err, EINVAL, "acpi: %u vCPUs (supported: 1..%u)", ncpus, X86_TABLES_MAX_CPUS);
	uint8_t *area = x86_guest_ptr(mem, X86_ACPI_ADDR, ACPI_AREA_SIZE);
	if (!area)
		return cella_err_set(err, ENOMEM, "acpi: guest memory does not reach the ACPI area at 0x%llx",
				     X86_ACPI_ADDR);
	memset(area, 0, ACPI_AREA_SIZE);

	/* Layout: RSDP, XSDT, FACS (64-byte aligned), FADT, DSDT, MADT. */
	uint64_t rsdp = X86_ACPI_RSDP_ADDR;
	uint64_t xsdt = align_up(rsdp + RSDP_SIZE, 16);
	uint64_t xsdt_len = HDR_SIZE + 2 * 8;
	uint64_t facs = align_up(xsdt + xsdt_len, 64);
	uint64_t fadt = align_up(facs + FACS_SIZE, 16);
	uint64_t dsdt = align_up(fadt + FADT_SIZE, 16);
	uint8_t aml[32 + 8 + 64 + X86_ACPI_MAX_DEVS * 64];
	size_t aml_len = aml_s5(aml);
	/* Scope (\_SB) { KBD_, VR00.. } */
	uint8_t sb[64 + X86_ACPI_MAX_DEVS * 64 + 8];
	size_t sn = 0;
	memcpy(sb, "\\_SB_", 5);
	sn = 5;
	sn += aml_i8042(sb + sn);
	for (unsigned i = 0; i < ndevs; i++)
		sn += aml_virtio_dev(sb + sn, i, &devs[i]);
	aml[aml_len++] = 0x10; /* ScopeOp */
	aml_len += aml_pkglen(aml + aml_len, sn);
	memcpy(aml + aml_len, sb, sn);
	aml_len += sn;
	uint64_t dsdt_len = HDR_SIZE + aml_len;
	uint64_t madt = align_up(dsdt + dsdt_len, 16);
	uint64_t madt_len = HDR_SIZE + 8 + ncpus * 8 + 12 + 10 + 6;
	if (madt + madt_len > X86_ACPI_ADDR + ACPI_AREA_SIZE) /* cannot happen with X86_TABLES_MAX_CPUS */
		return cella_err_set(err, ENOSPC, "acpi: tables do not fit in %u bytes", ACPI_AREA_SIZE);
#define AT(gpa) (area + ((gpa) - X86_ACPI_ADDR))

	uint8_t *t = AT(facs);
	memcpy(t, "FACS", 4);
	put_le32(t + 4, FACS_SIZE);
	t[32] = 2; /* version */

	t = AT(dsdt);
	put_header(t, "DSDT", (uint32_t)dsdt_len, 2);
	memcpy(t + HDR_SIZE, aml, aml_len);
	finish_table(t);

	t = AT(fadt);
	put_header(t, "FACP", FADT_SIZE, 6);
	put_le32(t + FADT_FACS, (uint32_t)facs);
	put_le32(t + FADT_DSDT, (uint32_t)dsdt);
	put_le16(t + FADT_SCI_INT, X86_ACPI_SCI_IRQ);
	/* SMI_CMD 0: the hardware is always in ACPI mode. */
	put_le32(t + FADT_PM1A_EVT_BLK, X86_ACPI_PM1A_EVT);
	put_le32(t + FADT_PM1A_CNT_BLK, X86_ACPI_PM1A_CNT);
	t[FADT_PM1_EVT_LEN] = 4;
	t[FADT_PM1_CNT_LEN] = 2;
	/* An 8042 is there (listed in the DSDT too); its keyboard answers at once, so probing is quick. */
	put_le16(t + FADT_IAPC_BOOT_ARCH, IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT);
	put_le32(t + FADT_FLAGS, FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON);
	t[FADT_MINOR_VERSION] = 0;
	put_le64(t + FADT_X_FACS, 0); /* FIRMWARE_CTRL is set; ACPI wants only one of the two */
	put_le64(t + FADT_X_DSDT, dsdt);
	put_gas_io(t + FADT_X_PM1A_EVT_BLK, 32, 2, X86_ACPI_PM1A_EVT);
	put_gas_io(t + FADT_X_PM1A_CNT_BLK, 16, 2, X86_ACPI_PM1A_CNT);
	finish_table(t);

	t = AT(madt);
	put_header(t, "APIC", (uint32_t)madt_len, 3);
	put_le32(t + 36, X86_LAPIC_ADDR);
	put_le32(t + 40, MADT_PCAT_COMPAT);
	uint8_t *p = t + 44;
	for (unsigned i = 0; i < ncpus; i++, p += 8) {
		p[0] = MADT_LAPIC;
		p[1] = 8;
		p[2] = (uint8_t)i; /* ACPI processor UID */
		p[3] = (uint8_t)i; /* APIC id */
		put_le32(p + 4, 1); /* enabled */
	}
	p[0] = MADT_IOAPIC;
	p[1] = 12;
	p[2] = (uint8_t)ncpus;
	put_le32(p + 4, X86_IOAPIC_ADDR);
	put_le32(p + 8, 0); /* GSI base */
	p += 12;
	p[0] = MADT_ISO; /* SCI: level-triggered, active high */
	p[1] = 10;
	p[2] = 0; /* ISA */
	p[3] = X86_ACPI_SCI_IRQ;
	put_le32(p + 4, X86_ACPI_SCI_IRQ);
	put_le16(p + 8, 0x1 | 0x3 << 2);
	p += 10;
	p[0] = MADT_LAPIC_NMI; /* LINT1 of every processor is NMI */
	p[1] = 6;
	p[2] = 0xff;
	put_le16(p + 3, 0);
	p[5] = 1;
	finish_table(t);

	t = AT(xsdt);
	put_header(t, "XSDT", (uint32_t)xsdt_len, 1);
	put_le64(t + HDR_SIZE, fadt);
	put_le64(t + HDR_SIZE + 8, madt);
	finish_table(t);

	t = AT(rsdp);
	memcpy(t, "RSD PTR ", 8);
	memcpy(t + 9, "CELLA ", 6);
	t[15] = 2; /* revision: ACPI 2.0+, XSDT */
	put_le32(t + 16, 0); /* no RSDT */
	put_le32(t + 20, RSDP_SIZE);
	put_le64(t + 24, xsdt);
	t[8] = x86_checksum(t, 20);
	t[32] = x86_checksum(t, RSDP_SIZE);
#undef AT
	return 0;
}
