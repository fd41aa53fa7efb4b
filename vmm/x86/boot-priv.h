/* Helpers shared by the x86 boot code (loaders, MP and ACPI tables). Not part of the VMM's API. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/x86/boot.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

/* Page tables: PML4, PDPT, then four page directories mapping 4 GiB with 2 MiB pages. */
#define X86_PT_PAGES 6
#define X86_PT_END (X86_PML4_ADDR + X86_PT_PAGES * 0x1000ull)

/* Little-endian field access on byte buffers (guest structures and kernel images). */
static inline uint16_t get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}
static inline uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_le64(const uint8_t *p)
{
	return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}
static inline void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32(p + 4, (uint32_t)(v >> 32));
}

/* Byte that makes the sum of buf[0..len) zero once stored in the checksum field (which must be
 * zero while computing). */
uint8_t x86_checksum(const uint8_t *buf, size_t len);

/* End of guest RAM below the MMIO gap. */
static inline uint64_t x86_low_ram_end(const struct x86_guest_mem *mem)
{
	return mem->size < X86_MMIO_GAP_START ? mem->size : X86_MMIO_GAP_START;
}

enum { X86_E820_RAM = 1, X86_E820_RESERVED = 2 };
struct x86_e820_entry {
	uint64_t addr, size;
	uint32_t type;
};
#define X86_E820_MAX 8
/* The guest's memory map; returns the number of entries (at most X86_E820_MAX). */
unsigned x86_build_e820(const struct x86_guest_mem *mem, struct x86_e820_entry *out);

/* Writes cmdline (NUL-terminated) at X86_CMDLINE_ADDR; max_len excludes the NUL. */
int x86_write_cmdline(const struct x86_guest_mem *mem, const char *cmdline, uint64_t max_len,
		      struct cella_err *err);

/* Copies the initrd to the highest page-aligned address with addr + len <= min(low RAM end,
 * limit) and addr >= kernel_end; fills *addr. */
int x86_place_initrd(const struct x86_guest_mem *mem, const uint8_t *initrd, size_t len,
		     uint64_t kernel_end, uint64_t limit, uint64_t *addr, struct cella_err *err);

/* Writes the 4-entry boot GDT (null, null, code 0x10, data 0x18) and a zero IDT descriptor area;
 * fills entry->gdt_base/gdt_limit. */
int x86_write_gdt(const struct x86_guest_mem *mem, uint64_t code, uint64_t data,
		  struct x86_boot_entry *entry, struct cella_err *err);

/* Identity-maps the first 4 GiB with 2 MiB pages at X86_PML4_ADDR. */
int x86_write_page_tables(const struct x86_guest_mem *mem, struct cella_err *err);

/* Does [a, b) overlap one of the fixed low-memory boot structures? Fills [*lo, *hi) with it. */
bool x86_overlaps_boot_area(uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi);

int x86_load_bzimage(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
		     struct x86_boot_entry *entry, struct cella_err *err);
int x86_load_elf_pvh(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
		     struct x86_boot_entry *entry, struct cella_err *err);
