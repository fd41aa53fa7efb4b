/* x86 guest boot: loads a kernel (bzImage, ELF vmlinux via PVH, or a flat binary) and writes the
 * boot-time structures into guest memory. Pure functions over a guest-memory buffer, so they are
 * unit-testable without KVM; vCPU register setup from the result lives with the vCPU code. */
#pragma once
#include <stddef.h>
#include <stdint.h>

struct cella_err;

/* Guest-physical layout (shared by loaders, ACPI/MP tables and the VMM core). */
#define X86_FLAT_LOAD_ADDR 0x10000ull  /* flat binaries: CS=0x1000, IP=0 */
#define X86_BOOT_GDT_ADDR 0x500ull
#define X86_BOOT_IDT_ADDR 0x520ull
#define X86_ZERO_PAGE_ADDR 0x7000ull   /* boot_params, or PVH hvm_start_info */
#define X86_PML4_ADDR 0x9000ull        /* identity page tables: PML4, PDPT, PDs follow */
#define X86_CMDLINE_ADDR 0x20000ull
#define X86_CMDLINE_MAX 4096
#define X86_MPTABLE_ADDR 0x9fc00ull    /* MP floating pointer + table in the EBDA area */
#define X86_EBDA_START 0x9fc00ull
#define X86_ACPI_ADDR 0xe0000ull       /* RSDP must be found in 0xe0000..0xfffff */
#define X86_ACPI_RSDP_ADDR X86_ACPI_ADDR /* the RSDP is the first ACPI structure written */
#define X86_HIMEM_START 0x100000ull    /* protected-mode kernel load address */
#define X86_BOOT_STACK 0x8ff0ull
#define X86_MMIO_GAP_START 0xc0000000ull /* 32-bit MMIO hole: devices live at and above this */
#define X86_MMIO_GAP_END 0x100000000ull

enum x86_entry_mode {
	X86_ENTRY_REAL16, /* flat binary: real mode, cs = real_cs, ip = rip */
	X86_ENTRY_LONG64, /* bzImage 64-bit entry: long mode, paging via cr3, rsi = zero page */
	X86_ENTRY_PVH32,  /* PVH: 32-bit protected mode, paging off, ebx = hvm_start_info */
};

/* What the vCPU code needs to start the boot processor. */
struct x86_boot_entry {
	enum x86_entry_mode mode;
	uint64_t rip;
	uint64_t rsi, rbx, rsp;
	uint16_t real_cs;  /* REAL16 only */
	uint64_t gdt_base; /* GDT written by the loader (LONG64/PVH32): 0 null, 1 (unused), 2 code, 3 data */
	uint16_t gdt_limit;
	uint64_t cr3;      /* LONG64: PML4 guest-physical address */
};

/* Guest RAM is one host buffer of size bytes. Guest-physical [0, min(size, MMIO_GAP_START)) is
 * host[0..]; if size > X86_MMIO_GAP_START, guest-physical [4 GiB, 4 GiB + size - MMIO_GAP_START)
 * is host[X86_MMIO_GAP_START..] (two KVM memory slots over the same buffer). */
struct x86_guest_mem {
	uint8_t *host;  /* host mapping of guest-physical 0 */
	uint64_t size;  /* RAM bytes (below the MMIO gap first, the rest above 4 GiB if any) */
};

/* Host pointer for guest-physical [gpa, gpa + len) per the layout above, or NULL if that range is
 * not entirely inside one RAM range (never crosses the MMIO gap). len 0 is allowed. */
uint8_t *x86_guest_ptr(const struct x86_guest_mem *mem, uint64_t gpa, uint64_t len);

struct x86_boot_params {
	const uint8_t *kernel; /* kernel image bytes */
	size_t kernel_len;
	const uint8_t *initrd; /* NULL = none */
	size_t initrd_len;
	const char *cmdline;   /* "" allowed */
	unsigned ncpus;
};

enum x86_kernel_kind { X86_KERNEL_BZIMAGE, X86_KERNEL_ELF_PVH, X86_KERNEL_FLAT };

/* Detects the kind by content: bzImage by "HdrS" at 0x202, ELF by its magic; anything else is flat. */
enum x86_kernel_kind x86_kernel_kind(const uint8_t *kernel, size_t len);

/* Loads the kernel (and initrd, command line, zero page or start_info with the e820 map, GDT and
 * page tables as the mode needs) and fills entry. Errors name the problem: "kernel: bzImage boot
 * protocol 2.06 is too old for 64-bit boot (need 2.12)", "initrd: 300 MiB does not fit in 256 MiB of
 * guest memory", "kernel: ELF has no PVH entry note". */
int x86_load_kernel(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
		    struct x86_boot_entry *entry, struct cella_err *err);

/* Writes the MP table (for ncpus, IOAPIC, ISA IRQ routing) and ACPI tables (RSDP, XSDT, FADT with
 * a PM1a control block at X86_ACPI_PM1A_CNT so poweroff works, DSDT, MADT). Returns 0 or -errno. */
#define X86_ACPI_PM1A_EVT 0x600 /* 4 bytes: status + enable */
#define X86_ACPI_PM1A_CNT 0x604 /* 2 bytes: SLP_TYP/SLP_EN: write SLP_EN with S5 = poweroff */
#define X86_ACPI_S5_SLP_TYP 5
/* Interrupt routing the tables describe: LAPIC ids 0..ncpus-1, one IOAPIC with id ncpus at
 * X86_IOAPIC_ADDR, ISA IRQ n -> IOAPIC pin n (edge, active high) for n < 16, which is KVM's default
 * GSI routing after KVM_CREATE_IRQCHIP (the in-kernel PIT raises GSI 0 = pin 0, so there is no
 * IRQ0 -> GSI2 override as on QEMU, which re-routes GSI 0). The ACPI SCI is IRQ 9, level, active
 * high. ncpus must be 1..X86_TABLES_MAX_CPUS. */
#define X86_IOAPIC_ADDR 0xfec00000u
#define X86_LAPIC_ADDR 0xfee00000u
#define X86_ACPI_SCI_IRQ 9
#define X86_TABLES_MAX_CPUS 32 /* the MP table must fit in the 1 KiB EBDA */
int x86_write_mptable(const struct x86_guest_mem *mem, unsigned ncpus, struct cella_err *err);
int x86_write_acpi(const struct x86_guest_mem *mem, unsigned ncpus, struct cella_err *err);
/* The DSDT always lists the i8042 keyboard controller (\_SB.KBD_, PNP0303) at its ISA ports and IRQ;
 * the VMM's i8042 (vmm/hw) sits there. x86_write_acpi_devs adds virtio-mmio devices (\_SB.VRnn,
 * _HID LNRO0005, memory + edge IRQ). */
#define X86_ACPI_I8042_DATA_PORT 0x60
#define X86_ACPI_I8042_CMD_PORT 0x64
#define X86_ACPI_I8042_IRQ 1
#define X86_ACPI_MAX_DEVS 16
struct x86_acpi_dev {
	uint64_t addr;
	uint32_t len, irq;
};
int x86_write_acpi_devs(const struct x86_guest_mem *mem, unsigned ncpus, const struct x86_acpi_dev *devs,
			unsigned ndevs, struct cella_err *err);
