/* x86 vCPU setup from the VMM core's side: CPUID, MSRs, FPU, local APIC and the boot processor's
 * entry registers. Each takes a vCPU fd and returns 0 or -errno with err naming the ioctl. */
#pragma once
#include <linux/kvm.h>
#include <stdint.h>

#include "vmm/x86/boot.h"

struct cella_err;

/* KVM_GET_SUPPORTED_CPUID on the /dev/kvm fd; *out is malloc'd. */
int x86_cpuid_supported(int kvm_fd, struct kvm_cpuid2 **out, struct cella_err *err);
/* A baseline table for guests that need no more than a sane x86-64 CPU (flat binaries): the host's
 * vendor, family/model/stepping and address sizes, and only the features every x86-64 CPU has
 * and every KVM virtualizes (x87 to SSE2, APIC, PAE, NX, long mode); no KVM query: the host's own
 * CPUID, 5 leaves. *out is malloc'd. */
int x86_cpuid_baseline(struct kvm_cpuid2 **out, struct cella_err *err);

/* The CPUID table for vCPU `index` (APIC ID = index) of ncpus, built from the supported table: the
 * hypervisor bit, topology leaves (0x1, 0x4, 0xb, 0x1f, 0x80000008, 0x8000001e), the KVM paravirt
 * leaves 0x40000000/0x40000001, and bits we do not emulate cleared (MONITOR/MWAIT, PMU).
 * Pure: no ioctl. *out is malloc'd. */
int x86_cpuid_for_vcpu(const struct kvm_cpuid2 *supported, unsigned index, unsigned ncpus,
		       struct kvm_cpuid2 **out, struct cella_err *err);

/* Finds an entry (NULL if absent). */
struct kvm_cpuid_entry2 *x86_cpuid_find(struct kvm_cpuid2 *c, uint32_t function, uint32_t index);

int x86_setup_cpuid(int vcpu_fd, const struct kvm_cpuid2 *cpuid, struct cella_err *err);
/* The XCR0 a vCPU starts with: every user state component the table offers (CPUID 0xd.0 EDX:EAX,
 * FP always), or 0 when the table has no XSAVE. Pure. */
uint64_t x86_cpuid_xcr0(struct kvm_cpuid2 *cpuid);
/* KVM_SET_XCRS with XCR0 = xcr0 (after x86_setup_cpuid: KVM checks it against the CPUID table);
 * nothing when xcr0 is 0. */
int x86_setup_xcr0(int vcpu_fd, uint64_t xcr0, struct cella_err *err);
/* The MSRs Linux expects at boot: SYSENTER/SYSCALL targets zeroed, TSC, MISC_ENABLE fast strings,
 * MTRR default type write-back. */
int x86_setup_msrs(int vcpu_fd, struct cella_err *err);
int x86_setup_fpu(int vcpu_fd, struct cella_err *err);
/* LINT0 = ExtINT (the 8259 PIC's output), LINT1 = NMI, as firmware leaves them. */
int x86_setup_lapic(int vcpu_fd, struct cella_err *err);
/* Registers and segments for the boot processor's first instruction. */
int x86_setup_boot_regs(int vcpu_fd, const struct x86_boot_entry *entry, struct cella_err *err);

/* Logs general and segment registers at error level (for fatal exits). */
void x86_dump_regs(int vcpu_fd, unsigned index);
