/* FPU, local APIC and the boot processor's registers for each entry mode the loaders produce. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/ioctl.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/x86/cpu.h"

#define CR0_PE (1ull << 0)
#define CR0_ET (1ull << 4)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)

#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_MODE_NMI 0x4
#define APIC_MODE_EXTINT 0x7

/* GDT slots the loaders use (boot.h): 2 = code, 3 = data. */
#define GDT_CODE_SEL (2 << 3)
#define GDT_DATA_SEL (3 << 3)

int x86_setup_fpu(int vcpu_fd, struct cella_err *err)
{
	struct kvm_fpu fpu = { .fcw = 0x37f, .mxcsr = 0x1f80 };
	if (ioctl(vcpu_fd, KVM_SET_FPU, &fpu) < 0)
		return cella_err_sys(err, errno, "KVM_SET_FPU");
	return 0;
}

static uint32_t apic_get(const struct kvm_lapic_state *s, unsigned reg)
{
	uint32_t v;
	memcpy(&v, s->regs + reg, sizeof(v));
	return v;
}

static void apic_set(struct kvm_lapic_state *s, unsigned reg, uint32_t v)
{
	memcpy(s->regs + reg, &v, sizeof(v));
}

static uint32_t lvt_with_mode(uint32_t lvt, uint32_t mode)
{
	return (lvt & ~0x700u) | mode << 8;
}

int x86_setup_lapic(int vcpu_fd, struct cella_err *err)
{
	struct kvm_lapic_state s;
	if (ioctl(vcpu_fd, KVM_GET_LAPIC, &s) < 0)
		return cella_err_sys(err, errno, "KVM_GET_LAPIC");
	apic_set(&s, APIC_LVT_LINT0, lvt_with_mode(apic_get(&s, APIC_LVT_LINT0), APIC_MODE_EXTINT));
	apic_set(&s, APIC_LVT_LINT1, lvt_with_mode(apic_get(&s, APIC_LVT_LINT1), APIC_MODE_NMI));
	if (ioctl(vcpu_fd, KVM_SET_LAPIC, &s) < 0)
		return cella_err_sys(err, errno, "KVM_SET_LAPIC");
	return 0;
}

static struct kvm_segment flat_segment(uint16_t selector, uint8_t type, bool code64)
{
	return (struct kvm_segment){
		.base = 0,
		.limit = 0xffffffff,
		.selector = selector,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = code64 ? 0 : 1,
		.s = 1,
		.l = code64 ? 1 : 0,
		.g = 1,
	};
}

static struct kvm_segment real_segment(uint16_t selector, uint8_t type)
{
	return (struct kvm_segment){
		.base = (uint64_t)selector << 4,
		.limit = 0xffff,
		.selector = selector,
		.type = type,
		.present = 1,
		.s = 1,
	};
}

int x86_setup_boot_regs(int vcpu_fd, const struct x86_boot_entry *e, struct cella_err *err)
{
	struct kvm_sregs sregs;
	if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		return cella_err_sys(err, errno, "KVM_GET_SREGS");
	struct kvm_regs regs = { .rflags = 0x2, .rip = e->rip, .rsi = e->rsi, .rbx = e->rbx, .rsp = e->rsp,
				 .rbp = e->rsp };

	switch (e->mode) {
	case X86_ENTRY_REAL16:
		sregs.cs = real_segment(e->real_cs, 0xb);
		sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = real_segment(e->real_cs, 0x3);
		sregs.cr0 = CR0_ET;
		sregs.cr3 = sregs.cr4 = sregs.efer = 0;
		break;
	case X86_ENTRY_LONG64:
	case X86_ENTRY_PVH32: {
		bool long64 = e->mode == X86_ENTRY_LONG64;
		sregs.gdt.base = e->gdt_base;
		sregs.gdt.limit = e->gdt_limit;
		/* A zero-length IDT: nothing may fault before the kernel installs its own. */
		sregs.idt.base = X86_BOOT_IDT_ADDR;
		sregs.idt.limit = 0;
		sregs.cs = flat_segment(GDT_CODE_SEL, 0xb, long64);
		sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat_segment(GDT_DATA_SEL, 0x3, false);
		sregs.cr0 = CR0_PE | CR0_ET;
		sregs.cr4 = 0;
		sregs.efer = 0;
		sregs.cr3 = 0;
		if (long64) {
			sregs.cr3 = e->cr3;
			sregs.cr4 |= CR4_PAE;
			sregs.cr0 |= CR0_PG;
			sregs.efer |= EFER_LME | EFER_LMA;
		}
		break;
	}
	default:
		return cella_err_set(err, EINVAL, "boot entry: unknown mode %d", (int)e->mode);
	}
	if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
		return cella_err_sys(err, errno, "KVM_SET_SREGS");
	if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0)
		return cella_err_sys(err, errno, "KVM_SET_REGS");
	return 0;
}

static void log_segment(unsigned index, const char *name, const struct kvm_segment *s)
{
	log_error("vcpu%u: %s sel=0x%04x base=0x%" PRIx64 " limit=0x%x type=%u p=%u dpl=%u db=%u s=%u l=%u g=%u",
		  index, name, s->selector, (uint64_t)s->base, s->limit, s->type, s->present, s->dpl, s->db, s->s,
		  s->l, s->g);
}

void x86_dump_regs(int vcpu_fd, unsigned index)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	if (ioctl(vcpu_fd, KVM_GET_REGS, &r) < 0) {
		log_error("vcpu%u: KVM_GET_REGS: %s", index, strerror(errno));
		return;
	}
	log_error("vcpu%u: rip=0x%016llx rsp=0x%016llx rflags=0x%016llx", index, r.rip, r.rsp, r.rflags);
	log_error("vcpu%u: rax=0x%016llx rbx=0x%016llx rcx=0x%016llx rdx=0x%016llx", index, r.rax, r.rbx, r.rcx,
		  r.rdx);
	log_error("vcpu%u: rsi=0x%016llx rdi=0x%016llx rbp=0x%016llx r8=0x%016llx", index, r.rsi, r.rdi, r.rbp,
		  r.r8);
	if (ioctl(vcpu_fd, KVM_GET_SREGS, &s) < 0) {
		log_error("vcpu%u: KVM_GET_SREGS: %s", index, strerror(errno));
		return;
	}
	log_error("vcpu%u: cr0=0x%llx cr2=0x%llx cr3=0x%llx cr4=0x%llx efer=0x%llx apic_base=0x%llx", index, s.cr0,
		  s.cr2, s.cr3, s.cr4, s.efer, s.apic_base);
	log_segment(index, "cs", &s.cs);
	log_segment(index, "ss", &s.ss);
	log_segment(index, "ds", &s.ds);
	log_error("vcpu%u: gdt base=0x%llx limit=0x%x idt base=0x%llx limit=0x%x", index, s.gdt.base, s.gdt.limit,
		  s.idt.base, s.idt.limit);
}
