/* vmm/x86/cpuid.c against a fake KVM_GET_SUPPORTED_CPUID table (no /dev/kvm): what the guest is
 * told about itself (hypervisor bit, topology of ncpus single-thread cores, KVM paravirt leaves),
 * what is hidden (MONITOR/MWAIT, MWAITX, EPB, the PMU), what is passed through untouched, and that
 * the supported table is never modified. Then the baseline table flat binaries get, checked against
 * this host's real KVM_GET_SUPPORTED_CPUID where /dev/kvm opens. */
#include "base/err.h"
#include "vmm/x86/cpu.h"
#include "tap.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIG KVM_CPUID_FLAG_SIGNIFCANT_INDEX

/* Leaf values shaped like an AMD host's, with every bit the filter touches set the "wrong" way, so
 * a test fails if the filter forgets one. */
static const struct kvm_cpuid_entry2 fake[] = {
	{ .function = 0x0, .eax = 0xd, .ebx = 0x68747541, .ecx = 0x444d4163, .edx = 0x69746e65 },
	/* EBX: APIC ID 7, 64 logical CPUs, CLFLUSH 8; ECX: MONITOR, SSE3, XSAVE, no hypervisor bit;
	 * EDX: HTT clear, FPU set. */
	{ .function = 0x1, .eax = 0x00a00f11, .ebx = 0x07400800, .ecx = 0x0400000d, .edx = 0x00000001 },
	{ .function = 0x4, .index = 0, .flags = SIG, .eax = 0xfc004121, .ebx = 0x01c0003f },  /* L1d */
	{ .function = 0x4, .index = 1, .flags = SIG, .eax = 0xfc004143, .ebx = 0x01c0003f },  /* L2 */
	{ .function = 0x4, .index = 2, .flags = SIG, .eax = 0xfc01c163, .ebx = 0x03c0003f },  /* L3 */
	{ .function = 0x4, .index = 3, .flags = SIG, .eax = 0 },                            /* end */
	{ .function = 0x6, .eax = 0x4, .ecx = 0x9 }, /* ECX: APERF/MPERF + EPB */
	{ .function = 0x7, .index = 0, .flags = SIG, .ebx = 0x219c91a9, .ecx = 0x40068c },
	{ .function = 0xa, .eax = 0x07300805, .ebx = 0x7, .edx = 0x603 },
	/* The host's own topology: 2 threads per core, 32 cores; must be replaced, not merged. */
	{ .function = 0xb, .index = 0, .flags = SIG, .eax = 1, .ebx = 2, .ecx = 0x100, .edx = 7 },
	{ .function = 0xb, .index = 1, .flags = SIG, .eax = 6, .ebx = 64, .ecx = 0x201, .edx = 7 },
	{ .function = 0xb, .index = 2, .flags = SIG, .eax = 0, .ebx = 0, .ecx = 0x002, .edx = 7 },
	{ .function = 0xb, .index = 3, .flags = SIG, .eax = 0, .ebx = 0, .ecx = 0x003, .edx = 7 },
	{ .function = 0xd, .index = 0, .flags = SIG, .eax = 0x207, .ebx = 0x340, .ecx = 0x988, .edx = 0 },
	{ .function = 0xd, .index = 1, .flags = SIG, .eax = 0xf },
	{ .function = 0xd, .index = 2, .flags = SIG, .eax = 0x100, .ebx = 0x240 },
	{ .function = 0xd, .index = 9, .flags = SIG, .eax = 0x8, .ebx = 0x980 },
	{ .function = 0x40000001, .eax = 0x01007afb }, /* kvmclock, async PF, PV EOI, ... */
	{ .function = 0x80000000, .eax = 0x80000021, .ebx = 0x68747541 },
	/* ECX: CMP_LEGACY clear, SVM, MWAITX; EDX: LM. */
	{ .function = 0x80000001, .ecx = 0x20000004 | 0x75c237ff, .edx = 0x2fd3fbff },
	/* ECX: perf TSC size [17:16] = 2, APIC ID size [15:12] = 7, NC [7:0] = 63. */
	{ .function = 0x80000008, .eax = 0x3030, .ebx = 0x1, .ecx = 0x2703f },
	{ .function = 0x8000001e, .eax = 0x3f, .ebx = 0x11f, .ecx = 0x3, .edx = 0 },
};

/* The fake table as KVM would return it, without leaf `omit` (NONE: complete). */
#define NONE 0xffffffffu
static struct kvm_cpuid2 *fake_table(uint32_t omit)
{
	size_t n = sizeof(fake) / sizeof(fake[0]);
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + (n + 4) * sizeof(c->entries[0]));
	if (!c)
		abort();
	for (size_t i = 0; i < n; i++)
		if (fake[i].function != omit)
			c->entries[c->nent++] = fake[i];
	return c;
}

static size_t table_bytes(const struct kvm_cpuid2 *c)
{
	return sizeof(*c) + c->nent * sizeof(c->entries[0]);
}

static unsigned count(struct kvm_cpuid2 *c, uint32_t function)
{
	unsigned n = 0;
	for (uint32_t i = 0; i < c->nent; i++)
		n += c->entries[i].function == function;
	return n;
}

static const struct kvm_cpuid_entry2 *orig(uint32_t function, uint32_t index)
{
	for (size_t i = 0; i < sizeof(fake) / sizeof(fake[0]); i++)
		if (fake[i].function == function && (!(fake[i].flags & SIG) || fake[i].index == index))
			return &fake[i];
	return NULL;
}

static struct kvm_cpuid2 *build(const struct kvm_cpuid2 *sup, unsigned index, unsigned ncpus)
{
	struct cella_err err = { 0 };
	struct kvm_cpuid2 *c = NULL;
	int r = x86_cpuid_for_vcpu(sup, index, ncpus, &c, &err);
	TAP_OK(r == 0 && c, "x86_cpuid_for_vcpu(vCPU %u of %u) succeeds (%s)", index, ncpus, err.msg);
	if (!c)
		exit(tap_done() | 1);
	return c;
}

static void check_topology_leaf(struct kvm_cpuid2 *c, uint32_t function, unsigned apic, unsigned ncpus,
				unsigned bits)
{
	TAP_OK(count(c, function) == 3, "0x%x: exactly 3 subleaves (SMT, core, end), host's dropped", function);
	struct kvm_cpuid_entry2 *smt = x86_cpuid_find(c, function, 0);
	struct kvm_cpuid_entry2 *core = x86_cpuid_find(c, function, 1);
	struct kvm_cpuid_entry2 *end = x86_cpuid_find(c, function, 2);
	TAP_OK(smt && smt->eax == 0 && smt->ebx == 1 && smt->ecx == 0x100 && smt->edx == apic,
	       "0x%x.0: SMT level, 1 thread per core, shift 0, x2APIC ID %u", function, apic);
	TAP_OK(core && core->eax == bits && core->ebx == ncpus && core->ecx == 0x201 && core->edx == apic,
	       "0x%x.1: core level, %u cores, shift %u", function, ncpus, bits);
	TAP_OK(end && end->ebx == 0 && (end->ecx & 0xff00) == 0 && (end->ecx & 0xff) == 2 && end->edx == apic,
	       "0x%x.2: invalid level ends the list", function);
	TAP_OK(smt && core && end && (smt->flags & SIG) && (core->flags & SIG) && (end->flags & SIG),
	       "0x%x subleaves are index-significant", function);
}

/* Everything the filter promises for vCPU `apic` of ncpus. */
static void check_vcpu(const struct kvm_cpuid2 *sup, unsigned apic, unsigned ncpus, unsigned bits)
{
	struct kvm_cpuid2 *c = build(sup, apic, ncpus);

	struct kvm_cpuid_entry2 *l1 = x86_cpuid_find(c, 1, 0);
	TAP_OK(l1 && l1->ebx >> 24 == apic, "1: EBX[31:24] initial APIC ID = %u", apic);
	TAP_OK(l1 && (l1->ebx >> 16 & 0xff) == ncpus, "1: EBX[23:16] logical processors = %u", ncpus);
	TAP_OK(l1 && (l1->ebx & 0xffff) == 0x0800, "1: EBX[15:0] (CLFLUSH size, brand) kept");
	TAP_OK(l1 && (l1->ecx & (1u << 31)), "1: ECX hypervisor bit set");
	TAP_OK(l1 && !(l1->ecx & (1u << 3)), "1: ECX MONITOR/MWAIT hidden");
	TAP_OK(l1 && (l1->ecx & 0x04000005) == 0x04000005, "1: ECX SSE3, XSAVE and others kept");
	TAP_OK(l1 && !!(l1->edx & (1u << 28)) == (ncpus > 1), "1: EDX HTT %s", ncpus > 1 ? "set" : "clear");
	TAP_OK(l1 && l1->eax == 0x00a00f11, "1: EAX (family/model/stepping) kept");

	int cache_ok = 1;
	for (unsigned i = 0; i < 3; i++) {
		struct kvm_cpuid_entry2 *e = x86_cpuid_find(c, 4, i);
		const struct kvm_cpuid_entry2 *o = orig(4, i);
		unsigned level = (o->eax >> 5) & 7;
		uint32_t want = (o->eax & 0x3fff) | (level >= 3 ? ncpus - 1 : 0) << 14 | (ncpus - 1) << 26;
		cache_ok &= e && e->eax == want && e->ebx == o->ebx;
	}
	TAP_OK(cache_ok, "4: cores per package - 1 = %u; only L3 shared by all cores; geometry kept", ncpus - 1);
	struct kvm_cpuid_entry2 *c4end = x86_cpuid_find(c, 4, 3);
	TAP_OK(c4end && c4end->eax == 0, "4.3: the null cache type that ends the list is left alone");

	struct kvm_cpuid_entry2 *l6 = x86_cpuid_find(c, 6, 0);
	TAP_OK(l6 && l6->ecx == 0x1 && l6->eax == 0x4, "6: ECX energy-performance bias hidden, rest kept");
	struct kvm_cpuid_entry2 *la = x86_cpuid_find(c, 0xa, 0);
	TAP_OK(la && !la->eax && !la->ebx && !la->ecx && !la->edx, "0xa: no architectural PMU");

	check_topology_leaf(c, 0xb, apic, ncpus, bits);
	TAP_OK(count(c, 0x1f) == 0, "0x1f not added when the max basic leaf is below it");

	struct kvm_cpuid_entry2 *sig = x86_cpuid_find(c, 0x40000000, 0);
	TAP_OK(sig && sig->eax == 0x40000001 && memcmp(&sig->ebx, "KVMK", 4) == 0 &&
		       memcmp(&sig->ecx, "VMKV", 4) == 0 && memcmp(&sig->edx, "M\0\0\0", 4) == 0,
	       "0x40000000: KVMKVMKVM signature, max leaf 0x40000001");
	struct kvm_cpuid_entry2 *kf = x86_cpuid_find(c, 0x40000001, 0);
	TAP_OK(kf && kf->eax == 0x01007afb, "0x40000001: KVM's paravirt features passed through");

	struct kvm_cpuid_entry2 *e1 = x86_cpuid_find(c, 0x80000001, 0);
	TAP_OK(e1 && !(e1->ecx & (1u << 29)), "0x80000001: ECX MWAITX hidden");
	TAP_OK(e1 && !!(e1->ecx & (1u << 1)) == (ncpus > 1), "0x80000001: ECX CMP_LEGACY %s",
	       ncpus > 1 ? "set" : "clear");
	TAP_OK(e1 && (e1->ecx & 0x4) && e1->edx == 0x2fd3fbff, "0x80000001: SVM, LM and the rest kept");

	struct kvm_cpuid_entry2 *e8 = x86_cpuid_find(c, 0x80000008, 0);
	TAP_OK(e8 && (e8->ecx >> 12 & 0xf) == bits && (e8->ecx & 0xff) == ncpus - 1,
	       "0x80000008: ECX APIC ID size %u, %u cores - 1", bits, ncpus - 1);
	TAP_OK(e8 && (e8->ecx & ~0xf0ffu) == 0x20000 && e8->eax == 0x3030, "0x80000008: other fields kept");

	struct kvm_cpuid_entry2 *e1e = x86_cpuid_find(c, 0x8000001e, 0);
	TAP_OK(e1e && e1e->eax == apic && e1e->ebx == apic && e1e->ecx == 0 && e1e->edx == 0,
	       "0x8000001e: extended APIC ID %u, own compute unit, node 0", apic);

	/* Passed through byte for byte. */
	int same = 1;
	const uint32_t keep[][2] = { { 0, 0 }, { 7, 0 }, { 0xd, 0 }, { 0xd, 1 }, { 0xd, 2 }, { 0xd, 9 }, { 0x80000000, 0 } };
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		struct kvm_cpuid_entry2 *e = x86_cpuid_find(c, keep[i][0], keep[i][1]);
		same &= e && memcmp(e, orig(keep[i][0], keep[i][1]), sizeof(*e)) == 0;
	}
	TAP_OK(same, "leaves 0, 7, 0xd.*, 0x80000000 passed through unchanged");
	free(c);
}

static unsigned bits_for(unsigned n)
{
	unsigned b = 0;
	while ((1u << b) < n)
		b++;
	return b;
}

/* x86_cpuid_baseline: a small table, and where this host has /dev/kvm, nothing KVM does not offer. */
static void baseline_checks(void)
{
	struct cella_err err = { 0 };
	struct kvm_cpuid2 *base = NULL;
	TAP_OK(x86_cpuid_baseline(&base, &err) == 0 && base, "baseline: built (%s)", err.msg);
	if (!base)
		return;
	struct kvm_cpuid_entry2 *l0 = x86_cpuid_find(base, 0, 0), *l1 = x86_cpuid_find(base, 1, 0);
	TAP_OK(l0 && l0->eax == 1 && l0->ebx && l1 && !l1->ecx && (l1->edx & 1) && (l1->edx & 1u << 26),
	       "baseline: max basic leaf 1, the host's vendor, x87..SSE2 and no leaf-1 ECX feature");
	struct kvm_cpuid_entry2 *x1 = x86_cpuid_find(base, 0x80000001u, 0);
	TAP_OK(x1 && (x1->edx & 1u << 29), "baseline: long mode");
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	struct kvm_cpuid2 *sup = NULL;
	if (kvm >= 0 && x86_cpuid_supported(kvm, &sup, &err) == 0) {
		/* register order in kvm_cpuid_entry2: eax, ebx, ecx, edx */
		static const struct { uint32_t fn; int reg; } features[] = {
			{ 0x1, 2 }, { 0x1, 3 }, { 0x80000001u, 2 }, { 0x80000001u, 3 },
		};
		for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++) {
			struct kvm_cpuid_entry2 *b = x86_cpuid_find(base, features[i].fn, 0);
			struct kvm_cpuid_entry2 *k = x86_cpuid_find(sup, features[i].fn, 0);
			uint32_t bv = b ? (&b->eax)[features[i].reg] : 0, kv = k ? (&k->eax)[features[i].reg] : 0;
			TAP_OK((bv & ~kv) == 0, "baseline leaf 0x%x %s: 0x%08x within what this host's KVM supports "
			       "(0x%08x)", features[i].fn, "eax\0ebx\0ecx\0edx" + 4 * features[i].reg, bv, kv);
		}
		struct kvm_cpuid_entry2 *k0 = x86_cpuid_find(sup, 0, 0);
		TAP_OK(k0 && k0->ebx == l0->ebx && k0->ecx == l0->ecx && k0->edx == l0->edx,
		       "baseline: the vendor KVM reports");
		free(sup);
	} else {
		printf("# no usable /dev/kvm: baseline not compared with KVM_GET_SUPPORTED_CPUID\n");
	}
	if (kvm >= 0)
		close(kvm);
	free(base);
}

int main(void)
{
	struct kvm_cpuid2 *sup = fake_table(NONE);
	size_t bytes = table_bytes(sup);
	struct kvm_cpuid2 *copy = malloc(bytes);
	memcpy(copy, sup, bytes);

	const unsigned ncpus_list[] = { 1, 2, 3, 4, 32 };
	for (size_t i = 0; i < sizeof(ncpus_list) / sizeof(ncpus_list[0]); i++) {
		unsigned n = ncpus_list[i];
		check_vcpu(sup, 0, n, bits_for(n));
		if (n > 1)
			check_vcpu(sup, n - 1, n, bits_for(n));
	}
	TAP_OK(memcmp(sup, copy, bytes) == 0, "the supported table is not modified");

	/* Each vCPU of one VM gets its own APIC ID and the same everything else. */
	struct kvm_cpuid2 *a = build(sup, 1, 4), *b = build(sup, 2, 4);
	int differ_only_in_ids = a->nent == b->nent;
	for (uint32_t i = 0; differ_only_in_ids && i < a->nent; i++) {
		struct kvm_cpuid_entry2 x = a->entries[i], y = b->entries[i];
		if (x.function == 1)
			x.ebx &= 0xffffff, y.ebx &= 0xffffff;
		if (x.function == 0xb || x.function == 0x8000001e)
			x.edx = y.edx = 0;
		if (x.function == 0x8000001e)
			x.eax = y.eax = x.ebx = y.ebx = 0;
		differ_only_in_ids &= memcmp(&x, &y, sizeof(x)) == 0;
	}
	TAP_OK(differ_only_in_ids, "vCPUs 1 and 2 of 4 differ only in their APIC IDs");
	free(a);
	free(b);

	/* Max basic leaf >= 0x1f: the V2 extended topology leaf is written too. */
	struct kvm_cpuid2 *sup1f = fake_table(NONE);
	x86_cpuid_find(sup1f, 0, 0)->eax = 0x1f;
	struct kvm_cpuid2 *c = build(sup1f, 3, 6);
	check_topology_leaf(c, 0x1f, 3, 6, 3);
	check_topology_leaf(c, 0xb, 3, 6, 3);
	free(c);
	free(sup1f);

	/* A KVM without a 0x40000001 entry: an empty feature leaf is added (no PV features). */
	struct kvm_cpuid2 *nokvm = fake_table(0x40000001);
	c = build(nokvm, 0, 1);
	struct kvm_cpuid_entry2 *kf = x86_cpuid_find(c, 0x40000001, 0);
	TAP_OK(kf && !kf->eax && !kf->ebx && !kf->ecx && !kf->edx && count(c, 0x40000001) == 1,
	       "0x40000001 added empty when KVM reports none");
	TAP_OK(count(c, 0x40000000) == 1, "0x40000000 once");
	free(c);
	free(nokvm);

	/* The XCR0 a vCPU starts with: CPUID 0xd.0 EDX:EAX when XSAVE is offered, else none. */
	c = build(sup, 0, 2);
	TAP_OK(x86_cpuid_xcr0(c) == 0x207, "xcr0: every user component of 0xd.0 (0x%llx)",
	       (unsigned long long)x86_cpuid_xcr0(c));
	x86_cpuid_find(c, 0xd, 0)->edx = 0x6;
	x86_cpuid_find(c, 0xd, 0)->eax = 0x6; /* no FP bit: FP is forced on anyway */
	TAP_OK(x86_cpuid_xcr0(c) == 0x600000007ull, "xcr0: EDX is the high half; x87 always on");
	x86_cpuid_find(c, 1, 0)->ecx &= ~(1u << 26);
	TAP_OK(x86_cpuid_xcr0(c) == 0, "xcr0: none without CPUID.1:ECX.XSAVE");
	free(c);
	struct kvm_cpuid2 *noxs = fake_table(0xd);
	c = build(noxs, 0, 1);
	TAP_OK(x86_cpuid_xcr0(c) == 0, "xcr0: none without leaf 0xd");
	free(c);
	free(noxs);

	/* x86_cpuid_find: index matters only for index-significant leaves. */
	TAP_OK(x86_cpuid_find(sup, 1, 5) && x86_cpuid_find(sup, 1, 5)->function == 1,
	       "find: a leaf without significant index matches any index");
	TAP_OK(x86_cpuid_find(sup, 4, 7) == NULL, "find: a missing subleaf is NULL");
	TAP_OK(x86_cpuid_find(sup, 0x12345, 0) == NULL, "find: a missing leaf is NULL");

	free(copy);
	free(sup);
	baseline_checks();
	return tap_done();
}
