/* x86 boot code over a plain memory buffer (no KVM): bzImage, ELF/PVH and flat loaders, e820,
 * page tables, MP and ACPI tables, plus mutation fuzzing of the parsers and, when the guest kit is
 * built, Debian's real kernel. */
#include "base/err.h"
#include "base/util.h"
#include "vmm/x86/boot.h"
#include "tap.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>

#define MiB (1ull << 20)
#define GiB (1ull << 30)

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16;
}
static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}
static void wr16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static void wr32(uint8_t *p, uint32_t v)
{
	wr16(p, (uint16_t)v);
	wr16(p + 2, (uint16_t)(v >> 16));
}
static void wr64(uint8_t *p, uint64_t v)
{
	wr32(p, (uint32_t)v);
	wr32(p + 4, (uint32_t)(v >> 32));
}
static uint8_t sum8(const uint8_t *p, size_t n)
{
	uint8_t s = 0;
	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

/* Guest memory: a lazily-backed anonymous mapping. */
static struct x86_guest_mem mem_new(uint64_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		printf("Bail out! mmap %llu bytes failed\n", (unsigned long long)size);
		exit(1);
	}
	return (struct x86_guest_mem){ .host = p, .size = size };
}
static void mem_free(struct x86_guest_mem *m)
{
	munmap(m->host, m->size);
	m->host = NULL;
}
static uint8_t *G(const struct x86_guest_mem *m, uint64_t gpa)
{
	return x86_guest_ptr(m, gpa, 1);
}

/* ---- synthetic bzImage ---- */
struct bz_opts {
	uint16_t version;
	uint16_t xloadflags;
	uint8_t setup_sects; /* as stored; 0 means 4 */
	size_t payload_len;
	uint32_t cmdline_size;
	uint32_t init_size;
	uint32_t initrd_addr_max;
};

static const struct bz_opts bz_default = {
	.version = 0x020f, .xloadflags = 0x7f, .setup_sects = 7, .payload_len = 8192,
	.cmdline_size = 2047, .init_size = 32 * MiB, .initrd_addr_max = 0x7fffffff,
};

static uint8_t *make_bzimage(const struct bz_opts *o, size_t *len)
{
	unsigned sects = o->setup_sects ? o->setup_sects : 4;
	size_t setup = (sects + 1) * 512ul;
	*len = setup + o->payload_len;
	uint8_t *k = calloc(1, *len);
	k[0x1f1] = o->setup_sects;
	wr32(k + 0x1f4, (uint32_t)(o->payload_len / 16));
	wr16(k + 0x1fe, 0xaa55);
	k[0x200] = 0xeb;
	k[0x201] = 0x6a; /* header ends at 0x26c */
	memcpy(k + 0x202, "HdrS", 4);
	wr16(k + 0x206, o->version);
	k[0x211] = 0x01; /* LOADED_HIGH */
	wr32(k + 0x22c, o->initrd_addr_max);
	wr32(k + 0x230, 0x200000);
	k[0x234] = 1;
	wr16(k + 0x236, o->xloadflags);
	wr32(k + 0x238, o->cmdline_size);
	wr32(k + 0x248, 0x100);
	wr32(k + 0x24c, (uint32_t)(o->payload_len > 0x200 ? o->payload_len - 0x200 : 0));
	wr64(k + 0x258, 0x1000000);
	wr32(k + 0x260, o->init_size);
	for (size_t i = 0; i < o->payload_len; i++)
		k[setup + i] = (uint8_t)(i * 7 + 3);
	return k;
}

static int load(const struct x86_guest_mem *m, const uint8_t *k, size_t klen, const uint8_t *initrd,
		size_t ilen, const char *cmdline, struct x86_boot_entry *e, struct cella_err *err)
{
	struct x86_boot_params p = { .kernel = k, .kernel_len = klen, .initrd = initrd, .initrd_len = ilen,
				     .cmdline = cmdline, .ncpus = 1 };
	cella_err_clear(err);
	return x86_load_kernel(m, &p, e, err);
}

static void check_page_tables(const struct x86_guest_mem *m)
{
	uint8_t *pml4 = G(m, 0x9000), *pdpt = G(m, 0xa000);
	bool ok = rd64(pml4) == (0xa000 | 3) && rd64(pml4 + 8) == 0;
	for (int i = 0; i < 4; i++)
		ok = ok && rd64(pdpt + 8 * i) == ((0xb000ull + 0x1000ull * i) | 3);
	for (uint64_t i = 0; i < 2048; i++)
		ok = ok && rd64(G(m, 0xb000 + 8 * i)) == ((i << 21) | 0x83);
	TAP_OK(ok, "identity page tables map 4 GiB with 2 MiB pages at 0x9000");
}

static void test_bzimage(void)
{
	struct cella_err err = { 0 };
	struct x86_boot_entry e;
	size_t klen;
	_cleanup_free_ uint8_t *k = make_bzimage(&bz_default, &klen);
	TAP_OK(x86_kernel_kind(k, klen) == X86_KERNEL_BZIMAGE, "bzImage detected by HdrS");

	struct x86_guest_mem m = mem_new(256 * MiB);
	uint8_t initrd[3 * 4096 + 5];
	for (size_t i = 0; i < sizeof(initrd); i++)
		initrd[i] = (uint8_t)(i ^ 0x5a);
	int r = load(&m, k, klen, initrd, sizeof(initrd), "console=ttyS0 quiet", &e, &err);
	TAP_OK(r == 0, "bzImage loads (%s)", err.msg);
	TAP_OK(e.mode == X86_ENTRY_LONG64 && e.rip == 0x100200 && e.rsi == 0x7000 && e.cr3 == 0x9000 &&
	       e.rsp == X86_BOOT_STACK, "64-bit entry at 1 MiB + 0x200, rsi = zero page, cr3 = PML4");
	TAP_OK(e.gdt_base == 0x500 && e.gdt_limit == 31 && rd64(G(&m, 0x510)) == 0x00af9b000000ffffull &&
	       rd64(G(&m, 0x518)) == 0x00cf93000000ffffull && rd64(G(&m, 0x500)) == 0,
	       "GDT: 64-bit code at 0x10, data at 0x18");
	TAP_OK(memcmp(G(&m, 0x100000), k + 8 * 512, 8192) == 0, "protected-mode kernel copied to 1 MiB");

	uint8_t *bp = G(&m, 0x7000);
	TAP_OK(memcmp(bp + 0x202, "HdrS", 4) == 0 && rd16(bp + 0x206) == 0x020f && bp[0x1f1] == 7 &&
	       rd32(bp + 0x260) == 32 * MiB, "setup header copied into the zero page");
	TAP_OK(bp[0x210] == 0xff, "type_of_loader 0xff");
	TAP_OK((bp[0x211] & 0x81) == 0x81, "loadflags LOADED_HIGH | CAN_USE_HEAP");
	TAP_OK(rd16(bp + 0x224) != 0, "heap_end_ptr set");
	TAP_OK(rd32(bp + 0x228) == 0x20000, "cmd_line_ptr");
	TAP_STREQ((const char *)G(&m, 0x20000), "console=ttyS0 quiet", "command line in guest memory");
	uint32_t ri = rd32(bp + 0x218), rs = rd32(bp + 0x21c);
	TAP_OK(rs == sizeof(initrd) && ri % 4096 == 0, "ramdisk size and page-aligned address 0x%x", ri);
	TAP_OK(ri + rs <= 256 * MiB && ri + rs > 256 * MiB - 2 * 4096, "initrd at the top of RAM");
	TAP_OK(ri >= 0x1000000 + 32 * MiB, "initrd above pref_address + init_size");
	TAP_OK(memcmp(G(&m, ri), initrd, sizeof(initrd)) == 0, "initrd bytes copied");

	uint8_t n = bp[0x1e8];
	uint8_t *t = bp + 0x2d0;
	TAP_OK(n == 3, "3 e820 entries for 256 MiB (got %u)", n);
	TAP_OK(rd64(t) == 0 && rd64(t + 8) == 0x9fc00 && rd32(t + 16) == 1, "e820: base RAM below the EBDA");
	TAP_OK(rd64(t + 20) == 0x9fc00 && rd64(t + 28) == 0x100000 - 0x9fc00 && rd32(t + 36) == 2,
	       "e820: EBDA..1 MiB reserved (MP and ACPI tables)");
	TAP_OK(rd64(t + 40) == 0x100000 && rd64(t + 48) == 255 * MiB && rd32(t + 56) == 1,
	       "e820: 1 MiB..256 MiB RAM");
	check_page_tables(&m);

	/* initrd_addr_max lower than RAM: the initrd ends below it. */
	struct bz_opts o = bz_default;
	o.initrd_addr_max = 128 * MiB - 1;
	_cleanup_free_ uint8_t *k2 = make_bzimage(&o, &klen);
	r = load(&m, k2, klen, initrd, sizeof(initrd), "", &e, &err);
	ri = rd32(bp + 0x218);
	TAP_OK(r == 0 && ri + sizeof(initrd) <= 128 * MiB && ri > 120 * MiB, "initrd below initrd_addr_max");
	TAP_OK(rd32(bp + 0x218 + 0) && *(char *)G(&m, 0x20000) == 0, "empty command line");
	mem_free(&m);

	/* setup_sects 0 means 4. */
	o = bz_default;
	o.setup_sects = 0;
	_cleanup_free_ uint8_t *k3 = make_bzimage(&o, &klen);
	m = mem_new(128 * MiB);
	r = load(&m, k3, klen, NULL, 0, "", &e, &err);
	TAP_OK(r == 0 && memcmp(G(&m, 0x100000), k3 + 5 * 512, 8192) == 0, "setup_sects 0 is read as 4");
	TAP_OK(rd32(G(&m, 0x7218)) == 0 && rd32(G(&m, 0x721c)) == 0, "no initrd: ramdisk fields 0");
	mem_free(&m);
}

static void test_bzimage_errors(void)
{
	struct cella_err err = { 0 };
	struct x86_boot_entry e;
	size_t klen;
	struct x86_guest_mem m = mem_new(256 * MiB);

	struct bz_opts o = bz_default;
	o.version = 0x0206;
	_cleanup_free_ uint8_t *old = make_bzimage(&o, &klen);
	TAP_OK(load(&m, old, klen, NULL, 0, "", &e, &err) == -ENOEXEC, "protocol 2.06 rejected");
	TAP_STREQ(err.msg, "kernel: bzImage boot protocol 2.06 is too old for 64-bit boot (need 2.12)",
		  "too-old message");
	o.version = 0x020b;
	_cleanup_free_ uint8_t *old2 = make_bzimage(&o, &klen);
	load(&m, old2, klen, NULL, 0, "", &e, &err);
	TAP_STREQ(err.msg, "kernel: bzImage boot protocol 2.11 is too old for 64-bit boot (need 2.12)",
		  "protocol minor printed in decimal");

	o = bz_default;
	o.xloadflags = 0x2;
	_cleanup_free_ uint8_t *no64 = make_bzimage(&o, &klen);
	TAP_OK(load(&m, no64, klen, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "XLF_KERNEL_64"),
	       "no XLF_KERNEL_64 rejected: %s", err.msg);

	_cleanup_free_ uint8_t *k = make_bzimage(&bz_default, &klen);
	TAP_OK(load(&m, k, 3000, NULL, 0, "", &e, &err) < 0 &&
	       strstr(err.msg, "kernel: truncated bzImage: setup code is 4096 bytes"),
	       "truncated in setup: %s", err.msg);
	TAP_OK(load(&m, k, klen - 100, NULL, 0, "", &e, &err) < 0 &&
	       strstr(err.msg, "kernel: truncated bzImage: header says 8192 bytes"),
	       "truncated payload: %s", err.msg);
	TAP_OK(load(&m, k, 0x300, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "truncated bzImage"),
	       "truncated just after the header");

	char longcmd[3000];
	memset(longcmd, 'a', sizeof(longcmd) - 1);
	longcmd[sizeof(longcmd) - 1] = 0;
	TAP_OK(load(&m, k, klen, NULL, 0, longcmd, &e, &err) == -E2BIG, "command line too long");
	TAP_STREQ(err.msg, "kernel: command line is 2999 bytes, the kernel accepts at most 2047", "cmdline message");
	longcmd[2047] = 0;
	TAP_OK(load(&m, k, klen, NULL, 0, longcmd, &e, &err) == 0, "command line of exactly cmdline_size fits");

	/* An initrd bigger than memory. Only its length is looked at before it fails. */
	size_t big = 300 * MiB;
	void *huge = mmap(NULL, big, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	TAP_OK(load(&m, k, klen, huge, big, "", &e, &err) == -ENOMEM, "300 MiB initrd rejected");
	TAP_STREQ(err.msg, "initrd: 300 MiB does not fit in 256 MiB of guest memory", "initrd message");
	/* Fits alone, not next to the kernel (16 MiB + 32 MiB init_size). */
	TAP_OK(load(&m, k, klen, huge, 220 * MiB, "", &e, &err) == -ENOMEM &&
	       strstr(err.msg, "initrd: 220 MiB does not fit in 256 MiB of guest memory next to the kernel"),
	       "initrd colliding with the kernel rejected: %s", err.msg);
	TAP_OK(load(&m, k, klen, huge, 200 * MiB, "", &e, &err) == 0, "200 MiB initrd fits (%s)", err.msg);
	munmap(huge, big);
	mem_free(&m);

	m = mem_new(40 * MiB);
	TAP_OK(load(&m, k, klen, NULL, 0, "", &e, &err) == -ENOMEM &&
	       strstr(err.msg, "kernel: bzImage needs memory up to 48 MiB"), "init_size beyond memory: %s",
	       err.msg);
	mem_free(&m);
}

static void test_high_memory(void)
{
	struct cella_err err = { 0 };
	struct x86_boot_entry e;
	size_t klen;
	_cleanup_free_ uint8_t *k = make_bzimage(&bz_default, &klen);
	struct x86_guest_mem m = mem_new(5 * GiB);
	TAP_OK(x86_guest_ptr(&m, 4 * GiB, 4096) == m.host + 3 * GiB, "4 GiB maps to host offset 3 GiB");
	TAP_OK(x86_guest_ptr(&m, 3 * GiB - 4096, 8192) == NULL, "range crossing the MMIO gap rejected");
	TAP_OK(x86_guest_ptr(&m, 6 * GiB - 4096, 4096) != NULL && x86_guest_ptr(&m, 6 * GiB - 4096, 4097) == NULL,
	       "end of high RAM");
	TAP_OK(x86_guest_ptr(&m, UINT64_MAX - 10, 100) == NULL, "overflowing range rejected");
	uint8_t initrd[100] = { 1 };
	TAP_OK(load(&m, k, klen, initrd, sizeof(initrd), "", &e, &err) == 0, "loads with 5 GiB");
	uint8_t *bp = G(&m, 0x7000), *t = bp + 0x2d0;
	TAP_OK(bp[0x1e8] == 4, "4 e820 entries with memory above the gap");
	TAP_OK(rd64(t + 40) == 0x100000 && rd64(t + 48) == 3 * GiB - 0x100000, "e820: RAM up to the MMIO gap");
	TAP_OK(rd64(t + 60) == 4 * GiB && rd64(t + 68) == 2 * GiB && rd32(t + 76) == 1, "e820: 2 GiB above 4 GiB");
	uint32_t ri = rd32(bp + 0x218);
	TAP_OK(ri + sizeof(initrd) <= 0x80000000u && ri > 0x7ff00000u, "initrd below initrd_addr_max (2 GiB)");
	mem_free(&m);
}

/* ---- synthetic ELF ---- */
struct elf_opts {
	bool note_in_phdr, note_in_section, desc4;
	uint64_t paddr;
	uint64_t entry;
};

static const struct elf_opts elf_default = { .note_in_phdr = true, .paddr = 0x1000000, .entry = 0x1000100 };

/* Layout: ehdr 0, phdrs 64 (2 x 56), notes 0x100, segment data 0x200 (0x3000 bytes, memsz 0x5000),
 * section headers 0x3200 (null + note). */
static uint8_t *make_elf(const struct elf_opts *o, size_t *len)
{
	*len = 0x3200 + 2 * 64;
	uint8_t *f = calloc(1, *len);
	memcpy(f, "\x7f" "ELF", 4);
	f[4] = 2, f[5] = 1, f[6] = 1;
	wr16(f + 16, 2);
	wr16(f + 18, 62);
	wr32(f + 20, 1);
	wr64(f + 24, 0xffffffff81000000ull);
	wr64(f + 32, 64);
	wr64(f + 40, o->note_in_section ? 0x3200 : 0);
	wr16(f + 52, 64);
	wr16(f + 54, 56);
	wr16(f + 56, 2);
	wr16(f + 58, 64);
	wr16(f + 60, o->note_in_section ? 2 : 0);

	/* notes: a GNU build id first, then Xen PHYS32_ENTRY */
	uint8_t *n = f + 0x100;
	wr32(n, 4), wr32(n + 4, 8), wr32(n + 8, 3);
	memcpy(n + 12, "GNU", 4);
	memset(n + 16, 0xee, 8);
	n += 24;
	wr32(n, 4), wr32(n + 4, o->desc4 ? 4 : 8), wr32(n + 8, 18);
	memcpy(n + 12, "Xen", 4);
	if (o->desc4)
		wr32(n + 16, (uint32_t)o->entry);
	else
		wr64(n + 16, o->entry);
	uint64_t notes_len = 24 + 16 + (o->desc4 ? 4 : 8);

	uint8_t *ph = f + 64;
	wr32(ph, 1);
	wr32(ph + 4, 7);
	wr64(ph + 8, 0x200);
	wr64(ph + 16, 0xffffffff81000000ull);
	wr64(ph + 24, o->paddr);
	wr64(ph + 32, 0x3000);
	wr64(ph + 40, 0x5000);
	ph += 56;
	wr32(ph, o->note_in_phdr ? 4 : 6 /* PT_PHDR: ignored */);
	wr64(ph + 8, 0x100);
	wr64(ph + 32, notes_len);
	wr64(ph + 40, notes_len);
	for (int i = 0; i < 0x3000; i++)
		f[0x200 + i] = (uint8_t)(i * 13 + 1);
	if (o->note_in_section) {
		uint8_t *sh = f + 0x3200 + 64;
		wr32(sh + 4, 7);
		wr64(sh + 24, 0x100);
		wr64(sh + 32, notes_len);
	}
	return f;
}

static void test_elf(void)
{
	struct cella_err err = { 0 };
	struct x86_boot_entry e;
	size_t len;
	_cleanup_free_ uint8_t *f = make_elf(&elf_default, &len);
	TAP_OK(x86_kernel_kind(f, len) == X86_KERNEL_ELF_PVH, "ELF detected by magic");
	struct x86_guest_mem m = mem_new(128 * MiB);
	memset(G(&m, 0x1000000), 0xaa, 0x6000);
	uint8_t initrd[5000];
	memset(initrd, 0x77, sizeof(initrd));
	int r = load(&m, f, len, initrd, sizeof(initrd), "console=ttyS0", &e, &err);
	TAP_OK(r == 0, "ELF loads via PVH (%s)", err.msg);
	TAP_OK(e.mode == X86_ENTRY_PVH32 && e.rip == 0x1000100 && e.rbx == 0x7000 && e.cr3 == 0,
	       "PVH entry from the Xen note, ebx = start_info");
	TAP_OK(e.gdt_base == 0x500 && rd64(G(&m, 0x510)) == 0x00cf9b000000ffffull &&
	       rd64(G(&m, 0x518)) == 0x00cf93000000ffffull, "GDT: 32-bit flat code 0x10, data 0x18");
	TAP_OK(memcmp(G(&m, 0x1000000), f + 0x200, 0x3000) == 0, "segment loaded at p_paddr");
	uint8_t zero[0x2000] = { 0 };
	TAP_OK(memcmp(G(&m, 0x1003000), zero, 0x2000) == 0 && *G(&m, 0x1005000) == 0xaa,
	       "memsz beyond filesz zeroed, nothing more");

	uint8_t *si = G(&m, 0x7000);
	TAP_OK(rd32(si) == 0x336ec578 && rd32(si + 4) == 1, "hvm_start_info magic and version 1");
	TAP_OK(rd64(si + 24) == 0x20000, "cmdline_paddr");
	TAP_STREQ((const char *)G(&m, 0x20000), "console=ttyS0", "command line in guest memory");
	TAP_OK(rd64(si + 32) == X86_ACPI_RSDP_ADDR, "rsdp_paddr");
	TAP_OK(rd32(si + 12) == 1, "one module (the initrd)");
	uint8_t *mod = G(&m, rd64(si + 16));
	uint64_t ia = rd64(mod);
	TAP_OK(rd64(mod + 8) == sizeof(initrd) && ia % 4096 == 0 && ia + sizeof(initrd) <= 128 * MiB &&
	       ia >= 0x1005000 && memcmp(G(&m, ia), initrd, sizeof(initrd)) == 0,
	       "modlist entry: initrd at the top of RAM, copied");
	uint32_t n = rd32(si + 48);
	uint8_t *mm = G(&m, rd64(si + 40));
	TAP_OK(n == 3, "3 memmap entries");
	TAP_OK(rd64(mm) == 0 && rd64(mm + 8) == 0x9fc00 && rd32(mm + 16) == 1 && rd32(mm + 24 + 16) == 2 &&
	       rd64(mm + 48) == 0x100000 && rd64(mm + 56) == 127 * MiB && rd32(mm + 64) == 1,
	       "memmap: RAM, reserved, RAM");

	struct elf_opts o = elf_default;
	o.note_in_phdr = false;
	o.note_in_section = true;
	o.desc4 = true;
	_cleanup_free_ uint8_t *f2 = make_elf(&o, &len);
	r = load(&m, f2, len, NULL, 0, "", &e, &err);
	TAP_OK(r == 0 && e.rip == 0x1000100, "PVH note found through SHT_NOTE section, 4-byte desc (%s)", err.msg);
	TAP_OK(rd32(G(&m, 0x7000 + 12)) == 0, "no initrd: no modules");

	o = elf_default;
	o.note_in_phdr = false;
	_cleanup_free_ uint8_t *f3 = make_elf(&o, &len);
	TAP_OK(load(&m, f3, len, NULL, 0, "", &e, &err) == -ENOEXEC, "ELF without PVH note rejected");
	TAP_STREQ(err.msg, "kernel: ELF has no PVH entry note", "no-note message");

	o = elf_default;
	o.paddr = 128 * MiB - 0x4000;
	o.entry = o.paddr + 0x100;
	_cleanup_free_ uint8_t *f4 = make_elf(&o, &len);
	TAP_OK(load(&m, f4, len, NULL, 0, "", &e, &err) == -ENOMEM, "segment beyond RAM rejected");
	TAP_STREQ(err.msg, "kernel: ELF segment 0 [0x7ffc000, 0x8001000) is outside guest memory (128 MiB)",
		  "outside-memory message");

	o = elf_default;
	o.paddr = 0x8000;
	o.entry = 0x8100;
	_cleanup_free_ uint8_t *f5 = make_elf(&o, &len);
	TAP_OK(load(&m, f5, len, NULL, 0, "", &e, &err) == -EINVAL && strstr(err.msg, "overlaps the boot structures"),
	       "segment over the zero page rejected: %s", err.msg);

	o = elf_default;
	o.entry = 0x2000000;
	_cleanup_free_ uint8_t *f6 = make_elf(&o, &len);
	TAP_OK(load(&m, f6, len, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "not inside a loaded segment"),
	       "entry outside the segments rejected: %s", err.msg);

	TAP_OK(load(&m, f, 40, NULL, 0, "", &e, &err) == -ENOEXEC && strstr(err.msg, "truncated ELF header"),
	       "truncated ELF header: %s", err.msg);
	TAP_OK(load(&m, f, 100, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "program headers"),
	       "program headers beyond the file: %s", err.msg);
	TAP_OK(load(&m, f, 0x1000, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "segment 0"),
	       "segment data beyond the file: %s", err.msg);
	_cleanup_free_ uint8_t *f7 = malloc(len);
	memcpy(f7, f, len);
	f7[4] = 1;
	TAP_OK(load(&m, f7, len, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "64-bit"), "ELF32 rejected: %s",
	       err.msg);
	f7[4] = 2;
	wr16(f7 + 18, 3);
	TAP_OK(load(&m, f7, len, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "not x86-64"),
	       "wrong machine rejected: %s", err.msg);
	mem_free(&m);
}

static void test_flat(void)
{
	struct cella_err err = { 0 };
	struct x86_boot_entry e;
	struct x86_guest_mem m = mem_new(2 * MiB);
	const uint8_t code[] = { 0xb0, 0x41, 0xe6, 0xf4 };
	TAP_OK(x86_kernel_kind(code, sizeof(code)) == X86_KERNEL_FLAT, "anything else is flat");
	TAP_OK(load(&m, code, sizeof(code), NULL, 0, NULL, &e, &err) == 0, "flat binary loads");
	TAP_OK(memcmp(G(&m, 0x10000), code, sizeof(code)) == 0, "copied at 0x10000");
	TAP_OK(e.mode == X86_ENTRY_REAL16 && e.real_cs == 0x1000 && e.rip == 0, "real mode at 1000:0000");
	size_t big = 0x9fc00 - 0x10000 + 1;
	_cleanup_free_ uint8_t *b = calloc(1, big);
	TAP_OK(load(&m, b, big, NULL, 0, "", &e, &err) == -EFBIG && strstr(err.msg, "does not fit at 0x10000"),
	       "flat binary over the EBDA rejected: %s", err.msg);
	TAP_OK(load(&m, b, big - 1, NULL, 0, "", &e, &err) == 0, "flat binary up to the EBDA fits");
	TAP_OK(load(&m, b, 0, NULL, 0, "", &e, &err) < 0 && strstr(err.msg, "empty"), "empty kernel rejected");
	mem_free(&m);
	m = mem_new(0x11000);
	TAP_OK(load(&m, code, sizeof(code), NULL, 0, "", &e, &err) == 0, "flat binary in 68 KiB of memory");
	TAP_OK(load(&m, b, 0x1001, NULL, 0, "", &e, &err) < 0, "but not one bigger than memory");
	mem_free(&m);
}

/* ---- MP table ---- */
static void test_mptable(unsigned ncpus)
{
	struct cella_err err = { 0 };
	struct x86_guest_mem m = mem_new(64 * MiB);
	TAP_OK(x86_write_mptable(&m, ncpus, &err) == 0, "MP table for %u vCPUs (%s)", ncpus, err.msg);
	/* Linux scans the first KiB of the EBDA (from the BDA) on 16-byte boundaries. */
	uint64_t ebda = (uint64_t)rd16(G(&m, 0x40e)) << 4;
	uint8_t *mpf = NULL;
	for (uint64_t a = ebda; a < ebda + 1024; a += 16)
		if (memcmp(G(&m, a), "_MP_", 4) == 0 && sum8(G(&m, a), 16) == 0)
			mpf = G(&m, a);
	TAP_OK(ebda == 0x9fc00 && mpf, "floating pointer found in the EBDA with a valid checksum");
	if (!mpf) {
		mem_free(&m);
		return;
	}
	TAP_OK(mpf[8] == 1 && mpf[9] == 4 && mpf[11] == 0, "floating pointer: length 1, spec 1.4, table present");
	uint8_t *c = G(&m, rd32(mpf + 4));
	uint16_t clen = rd16(c + 4);
	TAP_OK(memcmp(c, "PCMP", 4) == 0 && sum8(c, clen) == 0, "config table signature and checksum");
	TAP_OK(rd32(c + 36) == 0xfee00000, "local APIC address");
	unsigned cpus = 0, bsp = 0, buses = 0, ioapics = 0, ints = 0, lints = 0, count = rd16(c + 34);
	uint8_t *p = c + 44, *end = c + clen;
	bool ok = true, irq_identity = true;
	for (unsigned i = 0; i < count && ok; i++) {
		switch (p[0]) {
		case 0:
			if (p[1] != cpus || !(p[3] & 1))
				ok = false;
			cpus++;
			bsp += (p[3] & 2) ? 1 : 0;
			if ((p[3] & 2) && p[1] != 0)
				ok = false;
			p += 20;
			break;
		case 1:
			buses += memcmp(p + 2, "ISA   ", 6) == 0;
			p += 8;
			break;
		case 2:
			ioapics++;
			ok = ok && p[1] == ncpus && rd32(p + 4) == 0xfec00000 && (p[3] & 1);
			p += 8;
			break;
		case 3:
			irq_identity = irq_identity && p[5] == p[7] && p[6] == ncpus && p[1] == 0;
			ints++;
			p += 8;
			break;
		case 4:
			lints++;
			p += 8;
			break;
		default:
			ok = false;
		}
		ok = ok && p <= end;
	}
	TAP_OK(ok && p == end, "entries parse to the end of the table");
	TAP_OK(cpus == ncpus && bsp == 1, "%u processor entries, BSP flag on cpu 0 only", cpus);
	TAP_OK(buses == 1 && ioapics == 1, "ISA bus and IOAPIC (id %u)", ncpus);
	TAP_OK(ints == 16 && irq_identity, "16 ISA IRQs routed to IOAPIC pins 0..15");
	TAP_OK(lints == 2, "ExtINT and NMI local interrupts");
	mem_free(&m);
}

static void test_mptable_errors(void)
{
	struct cella_err err = { 0 };
	struct x86_guest_mem m = mem_new(64 * MiB);
	TAP_OK(x86_write_mptable(&m, 0, &err) == -EINVAL, "0 vCPUs rejected: %s", err.msg);
	TAP_OK(x86_write_mptable(&m, X86_TABLES_MAX_CPUS + 1, &err) == -EINVAL, "too many vCPUs rejected");
	TAP_OK(x86_write_acpi(&m, X86_TABLES_MAX_CPUS + 1, &err) == -EINVAL, "ACPI: too many vCPUs rejected");
	mem_free(&m);
	m = mem_new(512 * 1024);
	TAP_OK(x86_write_mptable(&m, 1, &err) == -ENOMEM, "MP table needs memory at the EBDA: %s", err.msg);
	TAP_OK(x86_write_acpi(&m, 1, &err) == -ENOMEM, "ACPI needs memory at 0xe0000: %s", err.msg);
	mem_free(&m);
}

/* ---- ACPI ---- */
static uint8_t *acpi_table(const struct x86_guest_mem *m, uint64_t gpa, const char *sig)
{
	uint8_t *t = x86_guest_ptr(m, gpa, 36);
	if (!t || memcmp(t, sig, 4) != 0)
		return NULL;
	uint32_t len = rd32(t + 4);
	if (len < 36 || !x86_guest_ptr(m, gpa, len) || sum8(t, len) != 0)
		return NULL;
	return t;
}

static void test_acpi(unsigned ncpus)
{
	struct cella_err err = { 0 };
	struct x86_guest_mem m = mem_new(64 * MiB);
	TAP_OK(x86_write_acpi(&m, ncpus, &err) == 0, "ACPI tables for %u vCPUs (%s)", ncpus, err.msg);
	/* As Linux does without a hint: scan 0xe0000..0xfffff on 16-byte boundaries. */
	uint8_t *rsdp = NULL;
	uint64_t rsdp_at = 0;
	for (uint64_t a = 0xe0000; a < 0x100000 && !rsdp; a += 16) {
		uint8_t *p = G(&m, a);
		if (memcmp(p, "RSD PTR ", 8) == 0 && sum8(p, 20) == 0)
			rsdp = p, rsdp_at = a;
	}
	TAP_OK(rsdp && rsdp_at == X86_ACPI_RSDP_ADDR, "RSDP found by scanning the BIOS area");
	if (!rsdp) {
		mem_free(&m);
		return;
	}
	TAP_OK(rsdp[15] == 2 && rd32(rsdp + 20) == 36 && sum8(rsdp, 36) == 0, "RSDP v2, extended checksum");
	uint8_t *xsdt = acpi_table(&m, rd64(rsdp + 24), "XSDT");
	TAP_OK(xsdt != NULL, "XSDT valid");
	uint8_t *fadt = NULL, *madt = NULL;
	for (uint32_t off = 36; xsdt && off + 8 <= rd32(xsdt + 4); off += 8) {
		uint64_t a = rd64(xsdt + off);
		fadt = fadt ? fadt : acpi_table(&m, a, "FACP");
		madt = madt ? madt : acpi_table(&m, a, "APIC");
	}
	TAP_OK(fadt && madt, "XSDT lists a valid FADT and MADT");
	if (!fadt || !madt) {
		mem_free(&m);
		return;
	}
	TAP_OK(rd32(fadt + 4) == 276 && fadt[8] >= 5, "FADT revision %u, %u bytes", fadt[8], rd32(fadt + 4));
	TAP_OK(rd32(fadt + 56) == X86_ACPI_PM1A_EVT && rd32(fadt + 64) == X86_ACPI_PM1A_CNT && fadt[88] == 4 &&
	       fadt[89] == 2, "PM1a event/control blocks at the boot.h ports, lengths 4/2");
	TAP_OK(rd64(fadt + 148 + 4) == X86_ACPI_PM1A_EVT && rd64(fadt + 172 + 4) == X86_ACPI_PM1A_CNT &&
	       fadt[148] == 1 && fadt[172] == 1, "X_PM1a blocks in system I/O space");
	TAP_OK(rd16(fadt + 46) == 9, "SCI IRQ 9");
	TAP_OK(!(rd32(fadt + 112) & (1u << 20)), "HW_REDUCED_ACPI not set");
	TAP_OK((rd16(fadt + 109) & 0x26) == 0x26, "IAPC_BOOT_ARCH: no VGA, no CMOS RTC, an 8042");
	uint8_t *facs = x86_guest_ptr(&m, rd32(fadt + 36), 64);
	TAP_OK(facs && memcmp(facs, "FACS", 4) == 0 && rd32(fadt + 36) % 64 == 0, "FACS present, 64-byte aligned");
	uint8_t *dsdt = acpi_table(&m, rd64(fadt + 140), "DSDT");
	TAP_OK(dsdt && rd32(fadt + 40) == rd64(fadt + 140), "DSDT valid, DSDT and X_DSDT agree");
	const uint8_t s5[] = { 0x08, '_', 'S', '5', '_', 0x12, 0x08, 0x04, 0x0a, X86_ACPI_S5_SLP_TYP,
			       0x0a, X86_ACPI_S5_SLP_TYP, 0x00, 0x00 };
	TAP_OK(dsdt && memcmp(dsdt + 36, s5, sizeof(s5)) == 0, "DSDT AML: Name(_S5_, Package(){%u, %u, 0, 0})",
	       X86_ACPI_S5_SLP_TYP, X86_ACPI_S5_SLP_TYP);
	/* Scope (\_SB) { Device (KBD_) { Name (_HID, EisaId ("PNP0303")), Name (_CRS, ResourceTemplate () {
	 * IO (Decode16, 0x60, 0x60, 1, 1), IO (Decode16, 0x64, 0x64, 1, 1), IRQNoFlags () {1} }) } },
	 * encoded by hand from the ACPI spec's AML grammar and small resource descriptor formats. */
	const uint8_t kbd[] = { 0x10, 0x35, '\\', '_', 'S', 'B', '_',
				0x5b, 0x82, 0x2d, 'K', 'B', 'D', '_',
				0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x03, 0x03,
				0x08, '_', 'C', 'R', 'S', 0x11, 0x18, 0x0a, 0x15,
				0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01,
				0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01,
				0x22, 0x02, 0x00,
				0x79, 0x00 };
	TAP_OK(dsdt && rd32(dsdt + 4) == 36 + sizeof(s5) + sizeof(kbd) &&
		       memcmp(dsdt + 36 + sizeof(s5), kbd, sizeof(kbd)) == 0,
	       "DSDT AML: \\_SB.KBD_, PNP0303 at IO 0x60 and 0x64, IRQ 1, and nothing else");

	TAP_OK(rd32(madt + 36) == 0xfee00000 && (rd32(madt + 40) & 1), "MADT: LAPIC address, PCAT_COMPAT");
	unsigned lapics = 0, ioapics = 0, irq0_override = 0;
	bool ok = true;
	for (uint32_t off = 44; off + 2 <= rd32(madt + 4);) {
		uint8_t *s = madt + off;
		if (s[1] < 2) {
			ok = false;
			break;
		}
		if (s[0] == 0) {
			ok = ok && s[3] == lapics && (rd32(s + 4) & 1);
			lapics++;
		} else if (s[0] == 1) {
			ok = ok && s[2] == ncpus && rd32(s + 4) == 0xfec00000 && rd32(s + 8) == 0;
			ioapics++;
		} else if (s[0] == 2 && s[3] == 0) {
			irq0_override++;
		}
		off += s[1];
		ok = ok && off <= rd32(madt + 4);
	}
	TAP_OK(ok && lapics == ncpus && ioapics == 1, "MADT: %u local APICs, one IOAPIC (id %u)", lapics, ncpus);
	TAP_OK(irq0_override == 0, "no IRQ0 override (KVM routes GSI 0 to pin 0)");
	mem_free(&m);
}

/* AML PkgLength at p: its value (which counts its own bytes) and, in *size, how many bytes it takes. */
static uint32_t pkglen(const uint8_t *p, unsigned *size)
{
	unsigned extra = p[0] >> 6;
	uint32_t v = extra ? p[0] & 0xf : p[0] & 0x3f;
	for (unsigned i = 0; i < extra; i++)
		v |= (uint32_t)p[1 + i] << (4 + 8 * i);
	*size = 1 + extra;
	return v;
}

/* With virtio devices, \_SB holds KBD_ and then VR00.., each Device's PkgLength ending where the
 * next begins and the last where the scope (now longer than a one-byte PkgLength) ends. */
static void test_acpi_devs(void)
{
	struct cella_err err = { 0 };
	struct x86_guest_mem m = mem_new(64 * MiB);
	struct x86_acpi_dev devs[X86_ACPI_MAX_DEVS];
	for (unsigned i = 0; i < X86_ACPI_MAX_DEVS; i++)
		devs[i] = (struct x86_acpi_dev){ 0xd0000000u + i * 0x1000, 0x200, 5 + i };
	TAP_OK(x86_write_acpi_devs(&m, 2, devs, X86_ACPI_MAX_DEVS, &err) == 0, "ACPI tables with %d virtio devices (%s)",
	       X86_ACPI_MAX_DEVS, err.msg);
	TAP_OK(x86_write_acpi_devs(&m, 2, devs, X86_ACPI_MAX_DEVS + 1, &err) == -EINVAL, "one device too many: %s",
	       err.msg);
	uint8_t *rsdp = G(&m, X86_ACPI_RSDP_ADDR);
	uint8_t *xsdt = acpi_table(&m, rd64(rsdp + 24), "XSDT");
	uint8_t *fadt = xsdt ? acpi_table(&m, rd64(xsdt + 36), "FACP") : NULL;
	uint8_t *dsdt = fadt ? acpi_table(&m, rd64(fadt + 140), "DSDT") : NULL;
	TAP_OK(dsdt != NULL, "DSDT valid (checksum, length)");
	if (!dsdt) {
		mem_free(&m);
		return;
	}
	uint32_t end = rd32(dsdt + 4), off = 36 + 14; /* after Name (_S5_, ...) */
	unsigned sz;
	bool scope = dsdt[off] == 0x10 && off + 1 + pkglen(dsdt + off + 1, &sz) == end && sz == 2 &&
		     memcmp(dsdt + off + 1 + sz, "\\_SB_", 5) == 0;
	TAP_OK(scope, "Scope (\\_SB) with a two-byte PkgLength ends where the DSDT ends");
	off += 1 + sz + 5;
	unsigned n = 0;
	bool ok = scope;
	char names[X86_ACPI_MAX_DEVS + 1][5] = { { 0 } };
	while (ok && off < end && n <= X86_ACPI_MAX_DEVS) {
		ok = dsdt[off] == 0x5b && dsdt[off + 1] == 0x82;
		uint32_t len = pkglen(dsdt + off + 2, &sz);
		memcpy(names[n++], dsdt + off + 2 + sz, 4);
		off += 2 + len;
	}
	TAP_OK(ok && off == end && n == X86_ACPI_MAX_DEVS + 1, "%u Devices, back to back, filling the scope", n);
	TAP_OK(strcmp(names[0], "KBD_") == 0 && strcmp(names[1], "VR00") == 0 &&
		       strcmp(names[X86_ACPI_MAX_DEVS], "VR15") == 0,
	       "KBD_ first, then VR00..VR15 (%s %s .. %s)", names[0], names[1], names[X86_ACPI_MAX_DEVS]);
	mem_free(&m);
}

/* ---- fuzzing ---- */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fuzz(const char *what, const uint8_t *seed, size_t seed_len, size_t hot, unsigned iters)
{
	struct x86_guest_mem m = mem_new(64 * MiB);
	uint8_t *f = malloc(seed_len);
	unsigned ok = 0, failed = 0, bad_msg = 0;
	uint8_t initrd[64] = { 0 };
	for (unsigned it = 0; it < iters; it++) {
		memcpy(f, seed, seed_len);
		unsigned nmut = 1 + rnd() % 8;
		for (unsigned j = 0; j < nmut; j++) {
			size_t at = (rnd() % 2) ? rnd() % hot : rnd() % seed_len;
			switch (rnd() % 4) {
			case 0:
				f[at] = (uint8_t)rnd();
				break;
			case 1:
				f[at] ^= (uint8_t)(1u << (rnd() % 8));
				break;
			case 2: /* an extreme 32-bit value */
				if (at + 4 <= seed_len)
					wr32(f + at, (rnd() % 2) ? 0xffffffffu : (uint32_t)rnd() % 0x10000);
				break;
			default: /* an extreme 64-bit value */
				if (at + 8 <= seed_len)
					wr64(f + at, (rnd() % 2) ? UINT64_MAX - rnd() % 4096 : rnd());
				break;
			}
		}
		size_t len = (rnd() % 8 == 0) ? rnd() % (seed_len + 1) : seed_len;
		struct x86_boot_entry e;
		struct cella_err err = { 0 };
		int r = load(&m, f, len, (rnd() % 2) ? initrd : NULL, sizeof(initrd), "console=ttyS0", &e, &err);
		if (r == 0)
			ok++;
		else
			failed++;
		if (r < 0 && strncmp(err.msg, "kernel: ", 8) != 0 && strncmp(err.msg, "initrd: ", 8) != 0)
			bad_msg++;
	}
	free(f);
	mem_free(&m);
	TAP_OK(bad_msg == 0, "fuzz %s: %u mutations, %u loaded, %u rejected, every error names its subject", what,
	       iters, ok, failed);
}

/* ---- the real Debian kernel from the guest kit ---- */
static void test_real_kernel(void)
{
	const char *cache = getenv("CELLA_CACHE");
	_cleanup_free_ char *dir = cella_strdup_printf("%s/guest-kit", cache && *cache ? cache : "/var/cache/cella");
	_cleanup_free_ char *bz_path = cella_path_join(dir, "vmlinuz");
	_cleanup_free_ char *elf_path = cella_path_join(dir, "vmlinux");
	_cleanup_free_ char *rd_path = cella_path_join(dir, "initramfs.cpio.gz");
	_cleanup_free_ char *bz = NULL, *elf = NULL, *rd = NULL;
	size_t bz_len = 0, elf_len = 0, rd_len = 0;
	if (access(bz_path, R_OK) != 0 || access(elf_path, R_OK) != 0) {
		printf("ok %d - # SKIP no guest kit kernel at %s (run scripts/guest-kit.sh)\n", ++tap_n, dir);
		return;
	}
	struct cella_err err = { 0 };
	TAP_OK(cella_read_file(bz_path, 512 * MiB, &bz, &bz_len, &err) == 0, "read %s", bz_path);
	TAP_OK(cella_read_file(elf_path, 512 * MiB, &elf, &elf_len, &err) == 0, "read %s", elf_path);
	if (cella_read_file(rd_path, 512 * MiB, &rd, &rd_len, &err) < 0)
		rd = NULL;
	if (!bz || !elf)
		return;
	struct x86_guest_mem m = mem_new(256 * MiB);
	struct x86_boot_entry e;
	const uint8_t *k = (const uint8_t *)bz;
	TAP_OK(x86_kernel_kind(k, bz_len) == X86_KERNEL_BZIMAGE, "Debian vmlinuz is a bzImage");
	int r = load(&m, k, bz_len, (const uint8_t *)rd, rd_len, "console=ttyS0", &e, &err);
	TAP_OK(r == 0, "Debian bzImage loads (%s)", err.msg);
	TAP_OK(rd16(k + 0x206) >= 0x020c && (rd16(k + 0x236) & 1), "boot protocol 2.%02u with XLF_KERNEL_64",
	       rd16(k + 0x206) & 0xff);
	TAP_OK(e.mode == X86_ENTRY_LONG64 && e.rip == 0x100200, "64-bit entry");
	uint32_t ri = rd32(G(&m, 0x7218));
	TAP_OK(!rd || (ri >= rd64(k + 0x258) + rd32(k + 0x260) && rd32(G(&m, 0x721c)) == rd_len),
	       "initramfs (%zu bytes) at 0x%x, above pref_address + init_size", rd_len, ri);

	memset(m.host, 0, 128 * MiB);
	const uint8_t *v = (const uint8_t *)elf;
	TAP_OK(x86_kernel_kind(v, elf_len) == X86_KERNEL_ELF_PVH, "Debian vmlinux is ELF");
	r = load(&m, v, elf_len, (const uint8_t *)rd, rd_len, "console=ttyS0", &e, &err);
	TAP_OK(r == 0, "Debian vmlinux loads via PVH (%s)", err.msg);
	TAP_OK(e.mode == X86_ENTRY_PVH32 && e.rip >= 0x1000000 && e.rip < 0x4000000,
	       "PVH entry note found: entry 0x%llx", (unsigned long long)e.rip);
	mem_free(&m);
}

int main(void)
{
	test_bzimage();
	test_bzimage_errors();
	test_high_memory();
	test_elf();
	test_flat();
	test_mptable(1);
	test_mptable(4);
	test_mptable(X86_TABLES_MAX_CPUS);
	test_mptable_errors();
	test_acpi(1);
	test_acpi(2);
	test_acpi(X86_TABLES_MAX_CPUS);
	test_acpi_devs();

	size_t len;
	_cleanup_free_ uint8_t *bz = make_bzimage(&bz_default, &len);
	fuzz("bzImage", bz, len, 0x300, 3000);
	_cleanup_free_ uint8_t *elf = make_elf(&elf_default, &len);
	fuzz("ELF", elf, len, 0x200, 3000);
	struct elf_opts o = elf_default;
	o.note_in_phdr = false;
	o.note_in_section = true;
	_cleanup_free_ uint8_t *elf2 = make_elf(&o, &len);
	fuzz("ELF (section notes)", elf2, len, len, 2000);

	test_real_kernel();
	return tap_done();
}
