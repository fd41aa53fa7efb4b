/* x86 boot: kernel kind detection, the flat-binary loader, and what every loader shares (guest
 * address translation, e820 map, command line, initrd placement, GDT, identity page tables). */
#include "vmm/x86/boot.h"

#include <errno.h>
#include <string.h>

#include "base/err.h"
#include "vmm/x86/boot-priv.h"

uint8_t *x86_guest_ptr(const struct x86_guest_mem *mem, uint64_t gpa, uint64_t len)
{
	if (!mem || !mem->host)
		return NULL;
	uint64_t low = x86_low_ram_end(mem);
	uint64_t end;
	if (__builtin_add_overflow(gpa, len, &end))
		return NULL;
	if (end <= low)
		return mem->host + gpa;
	uint64_t high = mem->size - low; /* RAM above 4 GiB */
	if (gpa >= X86_MMIO_GAP_END && end - X86_MMIO_GAP_END <= high)
		return mem->host + low + (gpa - X86_MMIO_GAP_END);
	return NULL;
}

uint8_t x86_checksum(const uint8_t *buf, size_t len)
{
	uint8_t sum = 0;
	for (size_t i = 0; i < len; i++)
		sum = (uint8_t)(sum + buf[i]);
	return (uint8_t)(0x100 - sum);
}

enum x86_kernel_kind x86_kernel_kind(const uint8_t *kernel, size_t len)
{
	if (kernel && len >= 0x206 && memcmp(kernel + 0x202, "HdrS", 4) == 0)
		return X86_KERNEL_BZIMAGE;
	if (kernel && len >= 4 && memcmp(kernel, "\x7f" "ELF", 4) == 0)
		return X86_KERNEL_ELF_PVH;
	return X86_KERNEL_FLAT;
}

unsigned x86_build_e820(const struct x86_guest_mem *mem, struct x86_e820_entry *out)
{
	uint64_t low = x86_low_ram_end(mem);
	unsigned n = 0;
	uint64_t base_end = low < X86_EBDA_START ? low : X86_EBDA_START;
	out[n++] = (struct x86_e820_entry){ 0, base_end, X86_E820_RAM };
	/* EBDA (MP table), VGA hole, option ROM and BIOS area (ACPI tables at 0xe0000). */
	out[n++] = (struct x86_e820_entry){ X86_EBDA_START, X86_HIMEM_START - X86_EBDA_START,
					    X86_E820_RESERVED };
	if (low > X86_HIMEM_START)
		out[n++] = (struct x86_e820_entry){ X86_HIMEM_START, low - X86_HIMEM_START, X86_E820_RAM };
	if (mem->size > low)
		out[n++] = (struct x86_e820_entry){ X86_MMIO_GAP_END, mem->size - low, X86_E820_RAM };
	return n;
}

int x86_write_cmdline(const struct x86_guest_mem *mem, const char *cmdline, uint64_t max_len,
		      struct cella_err *err)
{
	if (!cmdline)
		cmdline = "";
	size_t len = strlen(cmdline);
	if (max_len > X86_CMDLINE_MAX - 1)
		max_len = X86_CMDLINE_MAX - 1;
	if (len > max_len)
		return cella_err_set(err, E2BIG, "kernel: command line is %zu bytes, the kernel accepts at most %llu",
				     len, (unsigned long long)max_len);
	uint8_t *p = x86_guest_ptr(mem, X86_CMDLINE_ADDR, X86_CMDLINE_MAX);
	if (!p)
		return cella_err_set(err, ENOMEM, "kernel: guest memory does not reach the command line at 0x%llx",
				     X86_CMDLINE_ADDR);
	memset(p, 0, X86_CMDLINE_MAX);
	memcpy(p, cmdline, len);
	return 0;
}

static unsigned long long mib_up(uint64_t bytes)
{
	return (unsigned long long)((bytes + MiB - 1) / MiB);
}

int x86_place_initrd(const struct x86_guest_mem *mem, const uint8_t *initrd, size_t len,
		     uint64_t kernel_end, uint64_t limit, uint64_t *addr, struct cella_err *err)
{
	uint64_t top = x86_low_ram_end(mem);
	if (limit < top)
		top = limit;
	uint64_t a = 0;
	if (len <= top)
		a = (top - len) & ~0xfffull;
	if (len > top || a < kernel_end) {
		if (len > top || kernel_end >= top)
			return cella_err_set(err, ENOMEM, "initrd: %llu MiB does not fit in %llu MiB of guest memory",
					     mib_up(len), (unsigned long long)(mem->size / MiB));
		return cella_err_set(err, ENOMEM,
				     "initrd: %llu MiB does not fit in %llu MiB of guest memory next to the kernel, "
				     "which uses memory up to %llu MiB",
				     mib_up(len), (unsigned long long)(mem->size / MiB), mib_up(kernel_end));
	}
	uint8_t *p = x86_guest_ptr(mem, a, len);
	if (!p) /* cannot happen: [a, a + len) is below the low RAM end */
		return cella_err_set(err, EFAULT, "initrd: placement 0x%llx is outside guest memory",
				     (unsigned long long)a);
	memcpy(p, initrd, len);
	*addr = a;
	return 0;
}

int x86_write_gdt(const struct x86_guest_mem *mem, uint64_t code, uint64_t data,
		  struct x86_boot_entry *entry, struct cella_err *err)
{
	uint8_t *gdt = x86_guest_ptr(mem, X86_BOOT_GDT_ADDR, 4 * 8);
	uint8_t *idt = x86_guest_ptr(mem, X86_BOOT_IDT_ADDR, 8);
	if (!gdt || !idt)
		return cella_err_set(err, ENOMEM, "boot: guest memory does not reach the GDT at 0x%llx",
				     X86_BOOT_GDT_ADDR);
	put_le64(gdt + 0, 0);
	put_le64(gdt + 8, 0);
	put_le64(gdt + 16, code); /* __BOOT_CS = 0x10 */
	put_le64(gdt + 24, data); /* __BOOT_DS = 0x18 */
	memset(idt, 0, 8);
	entry->gdt_base = X86_BOOT_GDT_ADDR;
	entry->gdt_limit = 4 * 8 - 1;
	return 0;
}

int x86_write_page_tables(const struct x86_guest_mem *mem, struct cella_err *err)
{
	uint8_t *pt = x86_guest_ptr(mem, X86_PML4_ADDR, X86_PT_PAGES * 0x1000ull);
	if (!pt)
		return cella_err_set(err, ENOMEM, "boot: guest memory does not reach the page tables at 0x%llx",
				     X86_PML4_ADDR);
	memset(pt, 0, X86_PT_PAGES * 0x1000ull);
	uint8_t *pml4 = pt, *pdpt = pt + 0x1000, *pd = pt + 0x2000;
	const uint64_t present_rw = 0x3, page_size = 0x80;
	put_le64(pml4, (X86_PML4_ADDR + 0x1000) | present_rw);
	for (uint64_t i = 0; i < 4; i++)
		put_le64(pdpt + 8 * i, (X86_PML4_ADDR + 0x2000 + i * 0x1000) | present_rw);
	for (uint64_t i = 0; i < 4 * 512; i++)
		put_le64(pd + 8 * i, (i << 21) | page_size | present_rw);
	return 0;
}

bool x86_overlaps_boot_area(uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi)
{
	static const uint64_t areas[][2] = {
		{ 0, X86_PT_END }, /* IVT, BDA, GDT, IDT, zero page, stack, page tables */
		{ X86_CMDLINE_ADDR, X86_CMDLINE_ADDR + X86_CMDLINE_MAX },
		{ X86_EBDA_START, X86_HIMEM_START }, /* MP table, ACPI tables, BIOS area */
	};
	for (size_t i = 0; i < sizeof(areas) / sizeof(areas[0]); i++) {
		if (a < areas[i][1] && b > areas[i][0]) {
			*lo = areas[i][0];
			*hi = areas[i][1];
			return true;
		}
	}
	return false;
}

static int load_flat(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
		     struct x86_boot_entry *entry, struct cella_err *err)
{
	if (params->kernel_len == 0)
		return cella_err_set(err, EINVAL, "kernel: file is empty");
	uint64_t end = x86_low_ram_end(mem);
	if (end > X86_EBDA_START)
		end = X86_EBDA_START;
	uint64_t room = end > X86_FLAT_LOAD_ADDR ? end - X86_FLAT_LOAD_ADDR : 0;
	if (params->kernel_len > room)
		return cella_err_set(err, EFBIG,
				     "kernel: flat binary of %zu bytes does not fit at 0x%llx (at most %llu bytes)",
				     params->kernel_len, X86_FLAT_LOAD_ADDR, (unsigned long long)room);
	memcpy(x86_guest_ptr(mem, X86_FLAT_LOAD_ADDR, params->kernel_len), params->kernel, params->kernel_len);
	*entry = (struct x86_boot_entry){
		.mode = X86_ENTRY_REAL16,
		.real_cs = X86_FLAT_LOAD_ADDR >> 4,
		.rip = 0,
	};
	return 0;
}

int x86_load_kernel(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
		    struct x86_boot_entry *entry, struct cella_err *err)
{
	if (!mem || !mem->host || !params || !entry || (!params->kernel && params->kernel_len))
		return cella_err_set(err, EINVAL, "kernel: invalid arguments");
	if (params->initrd_len && !params->initrd)
		return cella_err_set(err, EINVAL, "initrd: invalid arguments");
	*entry = (struct x86_boot_entry){ 0 };
	switch (x86_kernel_kind(params->kernel, params->kernel_len)) {
	case X86_KERNEL_BZIMAGE:
		return x86_load_bzimage(mem, params, entry, err);
	case X86_KERNEL_ELF_PVH:
		return x86_load_elf_pvh(mem, params, entry, err);
	case X86_KERNEL_FLAT:
		break;
	}
	if (params->initrd)
		return cella_err_set(err, EINVAL, "initrd: a flat binary kernel takes no initrd");
	return load_flat(mem, params, entry, err);
}
