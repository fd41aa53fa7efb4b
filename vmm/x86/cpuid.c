/* CPUID: start from what KVM supports on this host, then say what the guest machine looks like:
 * a hypervisor, ncpus single-thread cores in one package, KVM's paravirt features. */
#include <cpuid.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "base/err.h"
#include "vmm/x86/cpu.h"

#define CPUID_MAX_ENTRIES 256

/* Leaf 0x1 */
#define L1_ECX_MONITOR (1u << 3)
#define L1_ECX_XSAVE (1u << 26)
#define L1_ECX_TSC_DEADLINE (1u << 24)
#define L1_ECX_HYPERVISOR (1u << 31)
#define L1_EDX_HTT (1u << 28)
/* Leaf 0x6 */
#define L6_ECX_EPB (1u << 3)
/* Leaf 0xb/0x1f level types */
#define TOPO_LEVEL_SMT 1
#define TOPO_LEVEL_CORE 2
/* Leaf 0x80000001 */
#define L80000001_ECX_CMP_LEGACY (1u << 1)
#define L80000001_ECX_MWAITX (1u << 29)

#define KVM_CPUID_SIGNATURE_LEAF 0x40000000u
#define KVM_CPUID_FEATURES_LEAF 0x40000001u

static struct kvm_cpuid2 *cpuid_alloc(unsigned nent)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
	if (c)
		c->nent = nent;
	return c;
}

int x86_cpuid_supported(int kvm_fd, struct kvm_cpuid2 **out, struct cella_err *err)
{
	for (unsigned nent = 256; nent <= 4096; nent *= 2) {
		struct kvm_cpuid2 *c = cpuid_alloc(nent);
		if (!c)
			return cella_err_set(err, ENOMEM, "KVM_GET_SUPPORTED_CPUID: out of memory");
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			*out = c;
			return 0;
		}
		int e = errno;
		free(c);
		if (e != E2BIG)
			return cella_err_sys(err, e, "KVM_GET_SUPPORTED_CPUID");
	}
	return cella_err_set(err, E2BIG, "KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

/* The x86-64 baseline that every 64-bit CPU has and every KVM passes through: leaf 1 EDX x87, DE,
 * PSE, TSC, MSR, PAE, MCE, CX8, APIC, SEP, MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFLUSH, MMX, FXSR,
 * SSE, SSE2; leaf 0x80000001 EDX SYSCALL, NX, LM. */
#define BASELINE_L1_EDX                                                                                 \
	(1u << 0 | 1u << 2 | 1u << 3 | 1u << 4 | 1u << 5 | 1u << 6 | 1u << 7 | 1u << 8 | 1u << 9 | 1u << 11 | \
	 1u << 12 | 1u << 13 | 1u << 14 | 1u << 15 | 1u << 16 | 1u << 17 | 1u << 19 | 1u << 23 | 1u << 24 |  \
	 1u << 25 | 1u << 26)
#define BASELINE_X1_EDX ((1u << 11) | (1u << 20) | (1u << 29))
#define BASELINE_X8_EAX 0xffffu /* physical and linear address bits */

int x86_cpuid_baseline(struct kvm_cpuid2 **out, struct cella_err *err)
{
	struct kvm_cpuid2 *c = cpuid_alloc(5);
	if (!c)
		return cella_err_set(err, ENOMEM, "cpuid: out of memory");
	unsigned a, b, cx, d, max_ext;
	__cpuid(0, a, b, cx, d);
	c->entries[0] = (struct kvm_cpuid_entry2){ .function = 0, .eax = 1, .ebx = b, .ecx = cx, .edx = d };
	__cpuid(1, a, b, cx, d);
	/* EAX: family, model, stepping; EBX: only the CLFLUSH line size (x86_cpuid_for_vcpu sets APIC
	 * ID and count); ECX: no optional feature. */
	c->entries[1] = (struct kvm_cpuid_entry2){ .function = 1, .eax = a, .ebx = b & 0xff00u,
						   .edx = d & BASELINE_L1_EDX };
	c->nent = 2;
	__cpuid(0x80000000u, max_ext, b, cx, d);
	if (max_ext >= 0x80000008u) {
		c->entries[2] = (struct kvm_cpuid_entry2){ .function = 0x80000000u, .eax = 0x80000008u, .ebx = b,
							   .ecx = cx, .edx = d };
		__cpuid(0x80000001u, a, b, cx, d);
		c->entries[3] = (struct kvm_cpuid_entry2){ .function = 0x80000001u, .eax = a,
							   .edx = d & BASELINE_X1_EDX };
		__cpuid(0x80000008u, a, b, cx, d);
		c->entries[4] = (struct kvm_cpuid_entry2){ .function = 0x80000008u, .eax = a & BASELINE_X8_EAX };
		c->nent = 5;
	}
	*out = c;
	return 0;
}

struct kvm_cpuid_entry2 *x86_cpuid_find(struct kvm_cpuid2 *c, uint32_t function, uint32_t index)
{
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		if (e->function != function)
			continue;
		if (!(e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e->index == index)
			return e;
	}
	return NULL;
}

static unsigned bits_for(unsigned n)
{
	unsigned b = 0;
	while ((1u << b) < n)
		b++;
	return b;
}

/* Appends (or replaces) an entry. */
static int put(struct kvm_cpuid2 *c, unsigned cap, struct kvm_cpuid_entry2 e)
{
	struct kvm_cpuid_entry2 *old = x86_cpuid_find(c, e.function, e.index);
	if (old && ((old->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || !(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX))) {
		*old = e;
		return 0;
	}
	if (c->nent == cap)
		return -E2BIG;
	c->entries[c->nent++] = e;
	return 0;
}

/* Drops every entry of a function (all subleaves). */
static void drop(struct kvm_cpuid2 *c, uint32_t function)
{
	uint32_t j = 0;
	for (uint32_t i = 0; i < c->nent; i++)
		if (c->entries[i].function != function)
			c->entries[j++] = c->entries[i];
	c->nent = j;
}

/* Extended topology (0xb, and 0x1f when present): level 0 = SMT (1 thread per core), level 1 = core
 * (ncpus cores per package), then the invalid level that ends the list. */
static int put_topology(struct kvm_cpuid2 *c, unsigned cap, uint32_t function, unsigned apic_id, unsigned ncpus)
{
	drop(c, function);
	const uint32_t f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
	struct kvm_cpuid_entry2 smt = { .function = function, .index = 0, .flags = f, .eax = 0, .ebx = 1,
					.ecx = 0 | TOPO_LEVEL_SMT << 8, .edx = apic_id };
	struct kvm_cpuid_entry2 core = { .function = function, .index = 1, .flags = f, .eax = bits_for(ncpus),
					 .ebx = ncpus, .ecx = 1 | TOPO_LEVEL_CORE << 8, .edx = apic_id };
	struct kvm_cpuid_entry2 end = { .function = function, .index = 2, .flags = f, .ecx = 2, .edx = apic_id };
	int r = put(c, cap, smt);
	if (r == 0)
		r = put(c, cap, core);
	if (r == 0)
		r = put(c, cap, end);
	return r;
}

int x86_cpuid_for_vcpu(const struct kvm_cpuid2 *supported, unsigned index, unsigned ncpus,
		       struct kvm_cpuid2 **out, struct cella_err *err)
{
	unsigned cap = supported->nent + 16;
	struct kvm_cpuid2 *c = cpuid_alloc(cap);
	if (!c)
		return cella_err_set(err, ENOMEM, "cpuid: out of memory");
	memcpy(c->entries, supported->entries, supported->nent * sizeof(c->entries[0]));
	c->nent = supported->nent;
	unsigned apic_id = index;
	int r = 0;

	struct kvm_cpuid_entry2 *leaf0 = x86_cpuid_find(c, 0, 0);
	uint32_t max_basic = leaf0 ? leaf0->eax : 0;

	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		switch (e->function) {
		case 0x1:
			/* EBX: [31:24] initial APIC ID, [23:16] logical processors per package, [15:8] CLFLUSH. */
			e->ebx = (e->ebx & 0x0000ffffu) | apic_id << 24 | (ncpus & 0xff) << 16;
			e->ecx |= L1_ECX_HYPERVISOR;
			e->ecx &= ~L1_ECX_MONITOR; /* MONITOR/MWAIT exit to nowhere useful */
			if (ncpus > 1)
				e->edx |= L1_EDX_HTT;
			else
				e->edx &= ~L1_EDX_HTT;
			break;
		case 0x4:
			/* Deterministic cache parameters: [31:26] cores per package - 1, [25:14] sharing. */
			if (e->eax & 0x1f) {
				unsigned cache_level = (e->eax >> 5) & 0x7;
				uint32_t sharing = cache_level >= 3 ? ncpus - 1 : 0;
				e->eax = (e->eax & 0x3fffu) | (sharing & 0xfff) << 14 | ((ncpus - 1) & 0x3f) << 26;
			}
			break;
		case 0x6:
			e->ecx &= ~L6_ECX_EPB;
			break;
		case 0xa:
			/* No architectural PMU: the guest should not program counters we do not virtualize. */
			e->eax = e->ebx = e->ecx = e->edx = 0;
			break;
		case 0x80000001u:
			e->ecx &= ~L80000001_ECX_MWAITX;
			if (ncpus > 1)
				e->ecx |= L80000001_ECX_CMP_LEGACY;
			else
				e->ecx &= ~L80000001_ECX_CMP_LEGACY;
			break;
		case 0x80000008u:
			/* ECX: [15:12] APIC ID bits for cores, [7:0] cores per package - 1. */
			e->ecx = (e->ecx & ~0xf0ffu) | bits_for(ncpus) << 12 | ((ncpus - 1) & 0xff);
			break;
		case 0x8000001eu:
			/* EAX extended APIC ID; EBX compute unit ID, 1 thread per unit; ECX node 0 of 1. */
			e->eax = apic_id;
			e->ebx = apic_id & 0xff;
			e->ecx = 0;
			e->edx = 0;
			break;
		}
	}

	if (max_basic >= 0xb)
		r = put_topology(c, cap, 0xb, apic_id, ncpus);
	if (r == 0 && max_basic >= 0x1f)
		r = put_topology(c, cap, 0x1f, apic_id, ncpus);

	/* KVM paravirt: signature leaf, and the feature leaf KVM reported (kvmclock, async PF, ...). */
	if (r == 0) {
		struct kvm_cpuid_entry2 sig = { .function = KVM_CPUID_SIGNATURE_LEAF, .eax = KVM_CPUID_FEATURES_LEAF };
		memcpy(&sig.ebx, "KVMK", 4);
		memcpy(&sig.ecx, "VMKV", 4);
		memcpy(&sig.edx, "M\0\0\0", 4);
		r = put(c, cap, sig);
	}
	if (r == 0 && !x86_cpuid_find(c, KVM_CPUID_FEATURES_LEAF, 0))
		r = put(c, cap, (struct kvm_cpuid_entry2){ .function = KVM_CPUID_FEATURES_LEAF });
	if (r < 0) {
		free(c);
		return cella_err_set(err, r, "cpuid: table for vCPU %u does not fit", index);
	}
	*out = c;
	return 0;
}

int x86_setup_cpuid(int vcpu_fd, const struct kvm_cpuid2 *cpuid, struct cella_err *err)
{
	if (ioctl(vcpu_fd, KVM_SET_CPUID2, cpuid) < 0)
		return cella_err_sys(err, errno, "KVM_SET_CPUID2");
	return 0;
}

uint64_t x86_cpuid_xcr0(struct kvm_cpuid2 *cpuid)
{
	struct kvm_cpuid_entry2 *l1 = x86_cpuid_find(cpuid, 0x1, 0);
	struct kvm_cpuid_entry2 *xs = x86_cpuid_find(cpuid, 0xd, 0);
	if (!l1 || !(l1->ecx & L1_ECX_XSAVE) || !xs)
		return 0;
	return ((uint64_t)xs->edx << 32 | xs->eax) | 1; /* x87 state can never be disabled */
}

/* Why XCR0 is set here and not left at its reset value 1 for the guest kernel to raise: CPUID
 * 0xd.0 EBX (the XSAVE area size for the current XCR0) is computed by KVM from the XCR0 it knows,
 * and it learns of the guest's own XSETBV only through an intercept. An outer hypervisor that
 * does not forward that intercept (QEMU 7.2's TCG SVM, our nested sandbox) leaves KVM at XCR0 = 1:
 * Linux then reads a 576-byte size for 2696 bytes of enabled state, warns "XSAVE consistency
 * problem" with a stack trace, and falls back to FXSAVE. Starting at the full mask gives the same
 * answer on every host; Linux enables that same mask anyway, and without CR4.OSXSAVE (real mode,
 * tiny guests) XCR0 has no effect. */
int x86_setup_xcr0(int vcpu_fd, uint64_t xcr0, struct cella_err *err)
{
	if (!xcr0)
		return 0;
	struct kvm_xcrs xcrs = { .nr_xcrs = 1, .xcrs = { { .xcr = 0, .value = xcr0 } } };
	if (ioctl(vcpu_fd, KVM_SET_XCRS, &xcrs) < 0)
		return cella_err_sys(err, errno, "KVM_SET_XCRS (XCR0 = 0x%llx)", (unsigned long long)xcr0);
	return 0;
}
