/* Snapshot state of the KVM side of an x86 VM (vcpu_state.c): every vCPU's registers, FPU/XSAVE,
 * XCRs, debug registers, LAPIC, MSRs, CPUID, TSC frequency, MP state and pending events; the VM's
 * PIC, IOAPIC, PIT and kvmclock. Sections "vcpuN.*" and "vm.*" (snapfile.h). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct cella_err;
struct snap_writer;
struct snap_file;

/* The MSRs KVM says it can save and restore (KVM_GET_MSR_INDEX_LIST), TSC first and the TSC
 * deadline last. Per vCPU, x86_vcpu_save keeps the ones KVM_GET_MSRS actually returns. */
struct x86_msr_list {
	uint32_t *idx;
	unsigned n;
};
int x86_msr_list(int kvm_fd, struct x86_msr_list *out, struct cella_err *err);
void x86_msr_list_free(struct x86_msr_list *l);

/* The vCPU must be out of KVM_RUN (paused). */
int x86_vcpu_save(int vcpu_fd, int vm_fd, unsigned index, const struct x86_msr_list *msrs, struct snap_writer *w,
		  struct cella_err *err);
/* Into a freshly created vCPU that never ran. */
int x86_vcpu_load(int vcpu_fd, int vm_fd, unsigned index, const struct snap_file *f, struct cella_err *err);

/* The PIT section ("vm.pit2") only when the VM has a PIT. */
int x86_vm_save(int vm_fd, bool pit, struct snap_writer *w, struct cella_err *err);
/* PIT (when the file has its section) and irqchips; then, right before the vCPUs start, the clock. */
int x86_vm_load(int vm_fd, const struct snap_file *f, struct cella_err *err);
int x86_vm_load_clock(int vm_fd, const struct snap_file *f, struct cella_err *err);
