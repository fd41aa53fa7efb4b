/* Model-specific registers a booting Linux expects in a sane state. */
#include <errno.h>
#include <stdlib.h>
#include <sys/ioctl.h>

#include "base/err.h"
#include "base/util.h"
#include "vmm/x86/cpu.h"

#define MSR_IA32_TSC 0x10
#define MSR_IA32_SYSENTER_CS 0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_IA32_MISC_ENABLE 0x1a0
#define MSR_MTRR_DEF_TYPE 0x2ff
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_SYSCALL_MASK 0xc0000084
#define MSR_KERNEL_GS_BASE 0xc0000102

#define MISC_ENABLE_FAST_STRING (1ull << 0)
#define MTRR_DEF_TYPE_ENABLE (1ull << 11)
#define MTRR_TYPE_WRBACK 6ull

static const struct {
	uint32_t index;
	uint64_t value;
	const char *name;
} boot_msrs[] = {
	{ MSR_IA32_SYSENTER_CS, 0, "IA32_SYSENTER_CS" },
	{ MSR_IA32_SYSENTER_ESP, 0, "IA32_SYSENTER_ESP" },
	{ MSR_IA32_SYSENTER_EIP, 0, "IA32_SYSENTER_EIP" },
	{ MSR_STAR, 0, "STAR" },
	{ MSR_LSTAR, 0, "LSTAR" },
	{ MSR_CSTAR, 0, "CSTAR" },
	{ MSR_SYSCALL_MASK, 0, "SYSCALL_MASK" },
	{ MSR_KERNEL_GS_BASE, 0, "KERNEL_GS_BASE" },
	{ MSR_IA32_TSC, 0, "IA32_TSC" },
	{ MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING, "IA32_MISC_ENABLE" },
	{ MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLE | MTRR_TYPE_WRBACK, "MTRR_DEF_TYPE" },
};

int x86_setup_msrs(int vcpu_fd, struct cella_err *err)
{
	size_t n = ARRAY_SIZE(boot_msrs);
	_cleanup_free_ struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + n * sizeof(msrs->entries[0]));
	if (!msrs)
		return cella_err_set(err, ENOMEM, "KVM_SET_MSRS: out of memory");
	msrs->nmsrs = (uint32_t)n;
	for (size_t i = 0; i < n; i++) {
		msrs->entries[i].index = boot_msrs[i].index;
		msrs->entries[i].data = boot_msrs[i].value;
	}
	int r = ioctl(vcpu_fd, KVM_SET_MSRS, msrs);
	if (r < 0)
		return cella_err_sys(err, errno, "KVM_SET_MSRS");
	/* KVM stops at the first MSR it refuses and returns how many it set. */
	if ((size_t)r < n)
		return cella_err_set(err, EINVAL, "KVM_SET_MSRS: KVM refused MSR %s (0x%x)", boot_msrs[r].name,
				     boot_msrs[r].index);
	return 0;
}
