/* bzImage loader: Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry.
 * The protected-mode kernel goes to 1 MiB, boot_params (the zero page) gets the setup header
 * from the image plus what a boot loader fills in, and the vCPU enters long mode at load
 * address + 0x200 with rsi = boot_params and identity-mapped page tables. */
#include <errno.h>
#include <string.h>

#include "base/err.h"
#include "vmm/x86/boot-priv.h"

/* Setup header and boot_params offsets (both count from the start of the image / zero page). */
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_E820_ENTRIES 0x1e8
#define HDR_START 0x1f1
#define HDR_SETUP_SECTS 0x1f1
#define HDR_SYSSIZE 0x1f4
#define HDR_VID_MODE 0x1fa
#define HDR_JUMP 0x200
#define HDR_VERSION 0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_HEAP_END_PTR 0x224
#define HDR_CMD_LINE_PTR 0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE 0x234
#define HDR_XLOADFLAGS 0x236
#define HDR_CMDLINE_SIZE 0x238
#define HDR_PAYLOAD_OFFSET 0x248
#define HDR_PAYLOAD_LENGTH 0x24c
#define HDR_PREF_ADDRESS 0x258
#define HDR_INIT_SIZE 0x260
#define BP_HDR_LIMIT 0x290 /* boot_params: the setup header area ends here */
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128

#define LOADED_HIGH 0x01
#define CAN_USE_HEAP 0x80
#define XLF_KERNEL_64 0x01
#define PROTOCOL_MIN 0x020c /* 2.12: xloadflags, 64-bit entry */

static unsigned long long mib(uint64_t bytes)
{
	return (unsigned long long)((bytes + MiB - 1) / MiB);
}

int x86_load_bzimage(const struct x86_guest_mem *mem, const struct x86_boot_params *params,
		     struct x86_boot_entry *entry, struct cella_err *err)
{
	const uint8_t *k = params->kernel;
	size_t len = params->kernel_len;
	if (len < HDR_VERSION + 2)
		return cella_err_set(err, EINVAL, "kernel: truncated bzImage: %zu bytes", len);

	uint16_t version = get_le16(k + HDR_VERSION);
	if (version < PROTOCOL_MIN)
		return cella_err_set(err, ENOEXEC,
				     "kernel: bzImage boot protocol %u.%02u is too old for 64-bit boot (need 2.12)",
				     version >> 8, version & 0xff);

	unsigned setup_sects = k[HDR_SETUP_SECTS] ? k[HDR_SETUP_SECTS] : 4;
	size_t setup_size = (setup_sects + 1) * 512ul;
	if (setup_size >= len)
		return cella_err_set(err, EINVAL,
				     "kernel: truncated bzImage: setup code is %zu bytes but the file has %zu",
				     setup_size, len);
	if (!(get_le16(k + HDR_XLOADFLAGS) & XLF_KERNEL_64))
		return cella_err_set(err, ENOEXEC,
				     "kernel: bzImage has no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags)");

	size_t payload_len = len - setup_size;
	uint64_t sys_bytes = (uint64_t)get_le32(k + HDR_SYSSIZE) * 16;
	if (sys_bytes > payload_len)
		return cella_err_set(err, EINVAL,
				     "kernel: truncated bzImage: header says %llu bytes of protected-mode kernel, "
				     "file has %zu",
				     (unsigned long long)sys_bytes, payload_len);
	uint64_t pl_off = get_le32(k + HDR_PAYLOAD_OFFSET), pl_len = get_le32(k + HDR_PAYLOAD_LENGTH);
	if (pl_off + pl_len > payload_len)
		return cella_err_set(err, EINVAL,
				     "kernel: truncated bzImage: compressed payload [%llu, %llu) is beyond the "
				     "%zu-byte protected-mode kernel",
				     (unsigned long long)pl_off, (unsigned long long)(pl_off + pl_len), payload_len);

	/* Where the kernel runs: the decompressor moves itself to max(load address aligned to
	 * kernel_alignment, pref_address) when relocatable, to pref_address otherwise, and needs
	 * init_size bytes there. */
	uint64_t pref = get_le64(k + HDR_PREF_ADDRESS);
	uint64_t align = get_le32(k + HDR_KERNEL_ALIGNMENT);
	uint64_t init_size = get_le32(k + HDR_INIT_SIZE);
	if (pref >= X86_MMIO_GAP_START)
		return cella_err_set(err, EINVAL, "kernel: bzImage pref_address 0x%llx is beyond 32-bit RAM",
				     (unsigned long long)pref);
	uint64_t run_at = pref;
	if (k[HDR_RELOCATABLE]) {
		uint64_t aligned = X86_HIMEM_START;
		if (align && (align & (align - 1)) == 0 && align <= GiB)
			aligned = (X86_HIMEM_START + align - 1) & ~(align - 1);
		if (aligned > run_at)
			run_at = aligned;
	}
	uint64_t kernel_end = X86_HIMEM_START + payload_len;
	if (run_at + init_size > kernel_end)
		kernel_end = run_at + init_size;
	uint64_t low = x86_low_ram_end(mem);
	if (kernel_end > low)
		return cella_err_set(err, ENOMEM,
				     "kernel: bzImage needs memory up to %llu MiB (init_size %llu MiB at 0x%llx) "
				     "but the guest has %llu MiB",
				     mib(kernel_end), mib(init_size), (unsigned long long)run_at,
				     (unsigned long long)(mem->size / MiB));

	/* Command line and initrd first: they fail on user input, before we touch the kernel. */
	int r = x86_write_cmdline(mem, params->cmdline, get_le32(k + HDR_CMDLINE_SIZE), err);
	if (r < 0)
		return r;
	uint64_t initrd_addr = 0;
	if (params->initrd) {
		uint64_t limit = get_le32(k + HDR_INITRD_ADDR_MAX);
		if (!limit)
			limit = 0x37ffffff; /* the documented default for old kernels */
		r = x86_place_initrd(mem, params->initrd, params->initrd_len, kernel_end, limit + 1,
				     &initrd_addr, err);
		if (r < 0)
			return r;
	}

	memcpy(x86_guest_ptr(mem, X86_HIMEM_START, payload_len), k + setup_size, payload_len);

	uint8_t *bp = x86_guest_ptr(mem, X86_ZERO_PAGE_ADDR, 4096);
	if (!bp)
		return cella_err_set(err, ENOMEM, "kernel: guest memory does not reach the zero page");
	memset(bp, 0, 4096);
	size_t hdr_end = HDR_JUMP + 2 + k[HDR_JUMP + 1];
	if (hdr_end > BP_HDR_LIMIT)
		hdr_end = BP_HDR_LIMIT;
	memcpy(bp + HDR_START, k + HDR_START, hdr_end - HDR_START);

	put_le16(bp + HDR_VID_MODE, 0xffff); /* "normal" */
	bp[HDR_TYPE_OF_LOADER] = 0xff;       /* undefined boot loader */
	bp[HDR_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
	put_le16(bp + HDR_HEAP_END_PTR, 0xfe00);
	put_le32(bp + HDR_CMD_LINE_PTR, (uint32_t)X86_CMDLINE_ADDR);
	put_le32(bp + HDR_RAMDISK_IMAGE, (uint32_t)initrd_addr);
	put_le32(bp + HDR_RAMDISK_SIZE, params->initrd ? (uint32_t)params->initrd_len : 0);
	put_le64(bp + BP_ACPI_RSDP_ADDR, 0); /* Linux scans 0xe0000..0xfffff for our RSDP */

	struct x86_e820_entry e820[X86_E820_MAX];
	unsigned n = x86_build_e820(mem, e820);
	for (unsigned i = 0; i < n && i < BP_E820_MAX; i++) {
		uint8_t *e = bp + BP_E820_TABLE + 20 * i;
		put_le64(e, e820[i].addr);
		put_le64(e + 8, e820[i].size);
		put_le32(e + 16, e820[i].type);
	}
	bp[BP_E820_ENTRIES] = (uint8_t)n;

	r = x86_write_gdt(mem, 0x00af9b000000ffffull, 0x00cf93000000ffffull, entry, err);
	if (r < 0)
		return r;
	r = x86_write_page_tables(mem, err);
	if (r < 0)
		return r;
	entry->mode = X86_ENTRY_LONG64;
	entry->rip = X86_HIMEM_START + 0x200;
	entry->rsi = X86_ZERO_PAGE_ADDR;
	entry->rsp = X86_BOOT_STACK;
	entry->cr3 = X86_PML4_ADDR;
	return 0;
}
