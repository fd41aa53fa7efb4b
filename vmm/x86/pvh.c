/* ELF vmlinux loader, entered through the PVH boot ABI (Xen's HVM direct boot, used by Firecracker,
 * Cloud Hypervisor and QEMU): PT_LOAD segments go to their physical addresses, the 32-bit entry
 * comes from the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY, and the vCPU starts in 32-bit protected
 * mode with paging off and ebx = hvm_start_info. The image is untrusted: every offset and size is
 * checked before use. */
#include <errno.h>
#include <string.h>

#include "base/err.h"
#include "vmm/x86/boot-priv.h"

#define EHDR_SIZE 64
#define PHDR_SIZE 56
#define SHDR_SIZE 64
#define PT_LOAD 1
#define PT_NOTE 4
#define SHT_NOTE 7
#define EM_X86_64 62
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h), version 1. */
#define HVM_START_MAGIC 0x336ec578
#define SI_MAGIC 0
#define SI_VERSION 4
#define SI_NR_MODULES 12
#define SI_MODLIST 16
#define SI_CMDLINE 24
#define SI_RSDP 32
#define SI_MEMMAP 40
#define SI_MEMMAP_ENTRIES 48
#define SI_MODLIST_OFF 0x40 /* our layout inside the zero page: start_info, modlist, memmap */
#define SI_MEMMAP_OFF 0x80
#define MODLIST_ENTRY 32
#define MEMMAP_ENTRY 24

/* Is [off, off + size) inside a file of len bytes? */
static bool in_file(uint64_t off, uint64_t size, size_t len)
{
	return off <= len && size <= len - off;
}

/* Scans the notes in file[off, off + size) for the PVH entry. 1 = found, 0 = not there. */
static int scan_notes(const uint8_t *f, uint64_t off, uint64_t size, uint64_t *entry)
{
	uint64_t end = off + size;
	while (end - off >= 12) {
		uint64_t namesz = get_le32(f + off), descsz = get_le32(f + off + 4);
		uint32_t type = get_le32(f + off + 8);
		uint64_t name = off + 12;
		uint64_t desc = name + ((namesz + 3) & ~3ull); /* < 2^34 more: no overflow */
		uint64_t next = desc + ((descsz + 3) & ~3ull);
		if (desc > end || next > end || desc + descsz > end)
			return 0; /* malformed: stop */
		if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && memcmp(f + name, "Xen", 4) == 0) {
			if (descsz == 4)
				*entry = get_le32(f + desc);
			else if (descsz == 8)
				*entry = get_le64(f + desc);
			else
				return 0;
			return 1;
		}
		off = next;
	}
	return 0;
}

struct elf_info {
	uint64_t phoff, shoff;
	unsigned phnum, phentsize, shnum, shentsize;
};

static int find_pvh_entry(const uint8_t *f, size_t len, const struct elf_info *e, uint64_t *entry)
{
	for (unsigned i = 0; i < e->phnum; i++) {
		const uint8_t *ph = f + e->phoff + (uint64_t)i * e->phentsize;
		if (get_le32(ph) != PT_NOTE)
			continue;
		uint64_t off = get_le64(ph + 8), filesz = get_le64(ph + 32);
		if (in_file(off, filesz, len) && scan_notes(f, off, filesz, entry))
			return 1;
	}
	/* Section headers are optional; only use them if they are all inside the file. */
	if (e->shnum && e->shentsize >= SHDR_SIZE &&
	    in_file(e->shoff, (uint64_t)e->shnum * e->shentsize, len)) {
		for (unsigned i = 0; i < e->shnum; i++) {
			const uint8_t *sh = f + e->shoff + (uint64_t)i * e->shentsize;
			if (get_le32(sh + 4) != SHT_NOTE)
				continue;
			uint64_t off = get_le64(sh + 24), size = get_le64(sh + 32);
			if (in_file(off, size, len) && scan_notes(f, off, size, entry))
				return 1;
		}
	}
	return 0;
}

static int write_start_info(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
			    uint64_t initrd_addr, struct cella_err *err)
{
	uint8_t *si = x86_guest_ptr(mem, X86_ZERO_PAGE_ADDR, 4096);
	if (!si)
		return cella_err_set(err, ENOMEM, "kernel: guest memory does not reach the PVH start info");
	memset(si, 0, 4096);
	put_le32(si + SI_MAGIC, HVM_START_MAGIC);
	put_le32(si + SI_VERSION, 1);
	put_le64(si + SI_CMDLINE, X86_CMDLINE_ADDR);
	put_le64(si + SI_RSDP, X86_ACPI_RSDP_ADDR);
	if (params->initrd) {
		uint8_t *m = si + SI_MODLIST_OFF;
		put_le64(m, initrd_addr);
		put_le64(m + 8, params->initrd_len);
		put_le32(si + SI_NR_MODULES, 1);
		put_le64(si + SI_MODLIST, X86_ZERO_PAGE_ADDR + SI_MODLIST_OFF);
	}
	struct x86_e820_entry e820[X86_E820_MAX];
	unsigned n = x86_build_e820(mem, e820);
	for (unsigned i = 0; i < n; i++) {
		uint8_t *m = si + SI_MEMMAP_OFF + MEMMAP_ENTRY * i;
		put_le64(m, e820[i].addr);
		put_le64(m + 8, e820[i].size);
		put_le32(m + 16, e820[i].type);
	}
	put_le64(si + SI_MEMMAP, X86_ZERO_PAGE_ADDR + SI_MEMMAP_OFF);
	put_le32(si + SI_MEMMAP_ENTRIES, n);
	return 0;
}

int x86_load_elf_pvh(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
		     struct x86_boot_entry *entry, struct cella_err *err)
{
	const uint8_t *f = params->kernel;
	size_t len = params->kernel_len;
	if (len < EHDR_SIZE)
		return cella_err_set(err, ENOEXEC, "kernel: truncated ELF header (%zu bytes)", len);
	if (f[4] != 2)
		return cella_err_set(err, ENOEXEC, "kernel: ELF class %u is not supported (need 64-bit ELF)", f[4]);
	if (f[5] != 1)
		return cella_err_set(err, ENOEXEC, "kernel: ELF is not little-endian");
	if (get_le16(f + 18) != EM_X86_64)
		return cella_err_set(err, ENOEXEC, "kernel: ELF machine %u is not x86-64", get_le16(f + 18));

	struct elf_info e = {
		.phoff = get_le64(f + 32),
		.shoff = get_le64(f + 40),
		.phentsize = get_le16(f + 54),
		.phnum = get_le16(f + 56),
		.shentsize = get_le16(f + 58),
		.shnum = get_le16(f + 60),
	};
	if (e.phnum == 0)
		return cella_err_set(err, ENOEXEC, "kernel: ELF has no program headers");
	if (e.phentsize < PHDR_SIZE)
		return cella_err_set(err, ENOEXEC, "kernel: ELF program header size %u is too small",
				     e.phentsize);
	if (!in_file(e.phoff, (uint64_t)e.phnum * e.phentsize, len))
		return cella_err_set(err, ENOEXEC, "kernel: truncated ELF: %u program headers at offset %llu "
				     "are beyond the %zu-byte file",
				     e.phnum, (unsigned long long)e.phoff, len);

	uint64_t pvh_entry = 0;
	if (!find_pvh_entry(f, len, &e, &pvh_entry))
		return cella_err_set(err, ENOEXEC, "kernel: ELF has no PVH entry note");

	/* Validate every segment before copying anything. */
	uint64_t kernel_end = 0;
	bool entry_loaded = false;
	unsigned nload = 0;
	for (unsigned i = 0; i < e.phnum; i++) {
		const uint8_t *ph = f + e.phoff + (uint64_t)i * e.phentsize;
		if (get_le32(ph) != PT_LOAD)
			continue;
		uint64_t off = get_le64(ph + 8), paddr = get_le64(ph + 24);
		uint64_t filesz = get_le64(ph + 32), memsz = get_le64(ph + 40);
		if (filesz > memsz)
			return cella_err_set(err, ENOEXEC, "kernel: ELF segment %u has file size %llu > memory size %llu",
					     i, (unsigned long long)filesz, (unsigned long long)memsz);
		if (!in_file(off, filesz, len))
			return cella_err_set(err, ENOEXEC, "kernel: truncated ELF: segment %u [%llu, +%llu) is beyond "
					     "the %zu-byte file",
					     i, (unsigned long long)off, (unsigned long long)filesz, len);
		if (memsz == 0)
			continue;
		uint64_t end;
		if (__builtin_add_overflow(paddr, memsz, &end) || !x86_guest_ptr(mem, paddr, memsz))
			return cella_err_set(err, ENOMEM, "kernel: ELF segment %u [0x%llx, 0x%llx) is outside guest "
					     "memory (%llu MiB)",
					     i, (unsigned long long)paddr, (unsigned long long)(paddr + memsz),
					     (unsigned long long)(mem->size / MiB));
		uint64_t lo, hi;
		if (x86_overlaps_boot_area(paddr, end, &lo, &hi))
			return cella_err_set(err, EINVAL, "kernel: ELF segment %u [0x%llx, 0x%llx) overlaps the boot "
					     "structures at [0x%llx, 0x%llx)",
					     i, (unsigned long long)paddr, (unsigned long long)end,
					     (unsigned long long)lo, (unsigned long long)hi);
		if (pvh_entry >= paddr && pvh_entry < paddr + filesz)
			entry_loaded = true;
		if (end > kernel_end)
			kernel_end = end;
		nload++;
	}
	if (nload == 0)
		return cella_err_set(err, ENOEXEC, "kernel: ELF has no loadable segments");
	if (!entry_loaded || pvh_entry >= X86_MMIO_GAP_START)
		return cella_err_set(err, ENOEXEC, "kernel: ELF PVH entry 0x%llx is not inside a loaded segment",
				     (unsigned long long)pvh_entry);

	int r = x86_write_cmdline(mem, params->cmdline, X86_CMDLINE_MAX - 1, err);
	if (r < 0)
		return r;
	uint64_t initrd_addr = 0;
	if (params->initrd) {
		r = x86_place_initrd(mem, params->initrd, params->initrd_len, kernel_end, X86_MMIO_GAP_START,
				     &initrd_addr, err);
		if (r < 0)
			return r;
	}

	for (unsigned i = 0; i < e.phnum; i++) {
		const uint8_t *ph = f + e.phoff + (uint64_t)i * e.phentsize;
		uint64_t off = get_le64(ph + 8), paddr = get_le64(ph + 24);
		uint64_t filesz = get_le64(ph + 32), memsz = get_le64(ph + 40);
		if (get_le32(ph) != PT_LOAD || memsz == 0)
			continue;
		uint8_t *dst = x86_guest_ptr(mem, paddr, memsz);
		memcpy(dst, f + off, filesz);
		memset(dst + filesz, 0, memsz - filesz);
	}

	r = write_start_info(mem, params, initrd_addr, err);
	if (r < 0)
		return r;
	r = x86_write_gdt(mem, 0x00cf9b000000ffffull, 0x00cf93000000ffffull, entry, err);
	if (r < 0)
		return r;
	entry->mode = X86_ENTRY_PVH32;
	entry->rip = pvh_entry;
	entry->rbx = X86_ZERO_PAGE_ADDR;
	entry->rsp = X86_BOOT_STACK;
	return 0;
}
