/* Saving and restoring the KVM side of an x86 VM for snapshots: every vCPU's architectural state
 * and the in-kernel irqchip, PIT and clock. KVM structs go into sections byte for byte (their layout
 * is KVM's stable ABI); a section of the wrong size is refused.
 *
 * Restore order (per vCPU), the one KVM's interdependencies want: CPUID first (it decides which MSRs
 * and XSAVE features exist), TSC frequency, sregs (CR0/CR4/EFER and the APIC base: before registers
 * whose meaning depends on the mode, and before the LAPIC), regs, XSAVE, XCRs, debug registers,
 * LAPIC, MSRs (after the LAPIC, so the TSC deadline sticks; TSC before the deadline), MP state, and
 * the pending events last (they depend on everything above and KVM_SET_MP_STATE may touch them). */
#include "vmm/x86/state.h"

#include <errno.h>
#include <linux/kvm.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/snapfile.h"

#define MSR_IA32_TSC 0x10
#define MSR_IA32_TSC_DEADLINE 0x6e0
#define MSR_LIST_MAX 4096

int x86_msr_list(int kvm_fd, struct x86_msr_list *out, struct cella_err *err)
{
	memset(out, 0, sizeof(*out));
	struct kvm_msr_list probe = { .nmsrs = 0 };
	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return cella_err_sys(err, errno, "KVM_GET_MSR_INDEX_LIST");
	if (probe.nmsrs == 0 || probe.nmsrs > MSR_LIST_MAX)
		return cella_err_set(err, EINVAL, "KVM_GET_MSR_INDEX_LIST: %u MSRs", probe.nmsrs);
	_cleanup_free_ struct kvm_msr_list *l = calloc(1, sizeof(*l) + probe.nmsrs * sizeof(uint32_t));
	if (!l)
		return cella_err_set(err, ENOMEM, "out of memory");
	l->nmsrs = probe.nmsrs;
	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0)
		return cella_err_sys(err, errno, "KVM_GET_MSR_INDEX_LIST");
	out->idx = calloc(l->nmsrs, sizeof(uint32_t));
	if (!out->idx)
		return cella_err_set(err, ENOMEM, "out of memory");
	/* TSC first: KVM interprets the TSC deadline (and TSC_ADJUST) relative to the TSC it has. */
	out->idx[out->n++] = MSR_IA32_TSC;
	for (uint32_t i = 0; i < l->nmsrs; i++)
		if (l->indices[i] != MSR_IA32_TSC && l->indices[i] != MSR_IA32_TSC_DEADLINE)
			out->idx[out->n++] = l->indices[i];
	for (uint32_t i = 0; i < l->nmsrs; i++)
		if (l->indices[i] == MSR_IA32_TSC_DEADLINE)
			out->idx[out->n++] = MSR_IA32_TSC_DEADLINE;
	return 0;
}

void x86_msr_list_free(struct x86_msr_list *l)
{
	free(l->idx);
	memset(l, 0, sizeof(*l));
}

/* Reads every listed MSR KVM will give for this vCPU. KVM_GET_MSRS stops at the first MSR it
 * refuses (one this vCPU's CPUID does not have) and returns how many it read: skip that one, go on. */
static int get_msrs(int fd, const struct x86_msr_list *list, struct kvm_msrs **out, struct cella_err *err)
{
	struct kvm_msrs *m = calloc(1, sizeof(*m) + list->n * sizeof(m->entries[0]));
	if (!m)
		return cella_err_set(err, ENOMEM, "out of memory");
	_cleanup_free_ struct kvm_msrs *batch = calloc(1, sizeof(*batch) + list->n * sizeof(batch->entries[0]));
	if (!batch) {
		free(m);
		return cella_err_set(err, ENOMEM, "out of memory");
	}
	unsigned next = 0;
	while (next < list->n) {
		batch->nmsrs = list->n - next;
		for (unsigned i = 0; i < batch->nmsrs; i++)
			batch->entries[i] = (struct kvm_msr_entry){ .index = list->idx[next + i] };
		int r = ioctl(fd, KVM_GET_MSRS, batch);
		if (r < 0) {
			int e = errno;
			free(m);
			return cella_err_sys(err, e, "KVM_GET_MSRS");
		}
		for (int i = 0; i < r; i++)
			m->entries[m->nmsrs++] = batch->entries[i];
		next += (unsigned)r + 1; /* entry r was refused (or r == the whole batch) */
	}
	*out = m;
	return 0;
}

/* One raw KVM struct as a section. */
static void put_raw(struct snap_writer *w, unsigned index, const char *what, const void *p, size_t len)
{
	snap_begin(w, "vcpu%u.%s", index, what);
	snap_put(w, p, len);
	snap_end(w);
}

int x86_vcpu_save(int fd, int vm_fd, unsigned index, const struct x86_msr_list *msrs, struct snap_writer *w,
		  struct cella_err *err)
{
	/* MP state first: reading it makes KVM process pending INIT/SIPI into the LAPIC and registers. */
	struct kvm_mp_state mp;
	if (ioctl(fd, KVM_GET_MP_STATE, &mp) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_GET_MP_STATE", index);
	put_raw(w, index, "mp", &mp, sizeof(mp));

	struct kvm_regs regs;
	if (ioctl(fd, KVM_GET_REGS, &regs) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_GET_REGS", index);
	put_raw(w, index, "regs", &regs, sizeof(regs));
	struct kvm_sregs sregs;
	if (ioctl(fd, KVM_GET_SREGS, &sregs) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_GET_SREGS", index);
	put_raw(w, index, "sregs", &sregs, sizeof(sregs));

	/* FPU/SSE/AVX...: XSAVE2 (size from KVM) > XSAVE (4 KiB) > legacy FPU. */
	int xsave2 = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	int xsave = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE);
	if (xsave2 > 0 || xsave > 0) {
		size_t size = xsave2 > (int)sizeof(struct kvm_xsave) ? (size_t)xsave2 : sizeof(struct kvm_xsave);
		_cleanup_free_ struct kvm_xsave *x = calloc(1, size);
		if (!x)
			return cella_err_set(err, ENOMEM, "out of memory");
		if (ioctl(fd, xsave2 > 0 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, x) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_GET_XSAVE", index);
		put_raw(w, index, "xsave", x, size);
	} else {
		struct kvm_fpu fpu;
		if (ioctl(fd, KVM_GET_FPU, &fpu) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_GET_FPU", index);
		put_raw(w, index, "fpu", &fpu, sizeof(fpu));
	}
	if (ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0) {
		struct kvm_xcrs xcrs;
		if (ioctl(fd, KVM_GET_XCRS, &xcrs) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_GET_XCRS", index);
		put_raw(w, index, "xcrs", &xcrs, sizeof(xcrs));
	}
	if (ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DEBUGREGS) > 0) {
		struct kvm_debugregs dr;
		if (ioctl(fd, KVM_GET_DEBUGREGS, &dr) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_GET_DEBUGREGS", index);
		put_raw(w, index, "debugregs", &dr, sizeof(dr));
	}
	struct kvm_lapic_state lapic;
	if (ioctl(fd, KVM_GET_LAPIC, &lapic) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_GET_LAPIC", index);
	put_raw(w, index, "lapic", &lapic, sizeof(lapic));

	/* The CPUID the guest saw: restore sets exactly this table again. */
	for (unsigned nent = 64; nent <= 4096; nent *= 2) {
		_cleanup_free_ struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
		if (!c)
			return cella_err_set(err, ENOMEM, "out of memory");
		c->nent = nent;
		if (ioctl(fd, KVM_GET_CPUID2, c) == 0) {
			snap_begin(w, "vcpu%u.cpuid", index);
			snap_put_u32(w, c->nent);
			snap_put(w, c->entries, c->nent * sizeof(c->entries[0]));
			snap_end(w);
			break;
		}
		if (errno != E2BIG || nent == 4096)
			return cella_err_sys(err, errno, "vcpu%u: KVM_GET_CPUID2", index);
	}
	int khz = ioctl(fd, KVM_GET_TSC_KHZ, 0);
	snap_begin(w, "vcpu%u.tsc_khz", index);
	snap_put_u32(w, khz > 0 ? (uint32_t)khz : 0);
	snap_end(w);

	_cleanup_free_ struct kvm_msrs *m = NULL;
	int r = get_msrs(fd, msrs, &m, err);
	if (r < 0)
		return cella_err_wrap(err, "vcpu%u", index);
	snap_begin(w, "vcpu%u.msrs", index);
	snap_put_u32(w, m->nmsrs);
	snap_put(w, m->entries, m->nmsrs * sizeof(m->entries[0]));
	snap_end(w);

	/* Pending exception/interrupt/NMI, interrupt shadow: last, once nothing else can change them. */
	struct kvm_vcpu_events ev;
	if (ioctl(fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_GET_VCPU_EVENTS", index);
	put_raw(w, index, "events", &ev, sizeof(ev));
	return 0;
}

/* Reads a section holding exactly one struct of len bytes. */
static int get_raw(const struct snap_file *f, unsigned index, const char *what, void *out, size_t len,
		   struct cella_err *err)
{
	struct snap_sec s;
	int r = snap_need(f, &s, err, "vcpu%u.%s", index, what);
	if (r < 0)
		return r;
	if (s.len != len)
		return cella_err_set(err, EINVAL, "state file: section \"%s\": %zu bytes, expected %zu", s.name, s.len, len);
	snap_get(&s, out, len);
	return snap_sec_done(&s, err);
}

int x86_vcpu_load(int fd, int vm_fd, unsigned index, const struct snap_file *f, struct cella_err *err)
{
	struct snap_sec s;
	int r;

	/* CPUID */
	if ((r = snap_need(f, &s, err, "vcpu%u.cpuid", index)) < 0)
		return r;
	uint32_t nent = snap_get_u32(&s);
	if (nent == 0 || nent > 4096 || snap_left(&s) != nent * sizeof(struct kvm_cpuid_entry2))
		return cella_err_set(err, EINVAL, "state file: section \"%s\": malformed", s.name);
	_cleanup_free_ struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
	if (!c)
		return cella_err_set(err, ENOMEM, "out of memory");
	c->nent = nent;
	snap_get(&s, c->entries, nent * sizeof(c->entries[0]));
	if ((r = snap_sec_done(&s, err)) < 0)
		return r;
	if (ioctl(fd, KVM_SET_CPUID2, c) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_CPUID2 (the snapshot's CPU features are not "
				     "available on this host?)", index);

	/* TSC frequency: only when it differs and the host can scale */
	if ((r = snap_need(f, &s, err, "vcpu%u.tsc_khz", index)) < 0)
		return r;
	uint32_t khz = snap_get_u32(&s);
	if ((r = snap_sec_done(&s, err)) < 0)
		return r;
	int cur = ioctl(fd, KVM_GET_TSC_KHZ, 0);
	if (khz && cur > 0 && (uint32_t)cur != khz) {
		if (ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) <= 0 ||
		    ioctl(fd, KVM_SET_TSC_KHZ, (unsigned long)khz) < 0)
			log_warn("vcpu%u: the snapshot's TSC runs at %u kHz, this host's at %d kHz and KVM cannot "
				 "scale it; guest time may drift", index, khz, cur);
	}

	struct kvm_sregs sregs;
	if ((r = get_raw(f, index, "sregs", &sregs, sizeof(sregs), err)) < 0)
		return r;
	if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_SREGS", index);
	struct kvm_regs regs;
	if ((r = get_raw(f, index, "regs", &regs, sizeof(regs), err)) < 0)
		return r;
	if (ioctl(fd, KVM_SET_REGS, &regs) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_REGS", index);

	if (snap_find(f, &s, "vcpu%u.xsave", index) == 1) {
		/* KVM_SET_XSAVE reads as many bytes as this host's XSAVE2 size: pad with zeros. */
		int xsave2 = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
		size_t size = s.len;
		if (xsave2 > 0 && (size_t)xsave2 > size)
			size = (size_t)xsave2;
		if (size < sizeof(struct kvm_xsave))
			size = sizeof(struct kvm_xsave);
		_cleanup_free_ struct kvm_xsave *x = calloc(1, size);
		if (!x)
			return cella_err_set(err, ENOMEM, "out of memory");
		snap_get(&s, x, s.len);
		if ((r = snap_sec_done(&s, err)) < 0)
			return r;
		if (ioctl(fd, KVM_SET_XSAVE, x) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_SET_XSAVE", index);
	} else {
		struct kvm_fpu fpu;
		if ((r = get_raw(f, index, "fpu", &fpu, sizeof(fpu), err)) < 0)
			return cella_err_wrap(err, "vcpu%u: neither XSAVE nor FPU state", index);
		if (ioctl(fd, KVM_SET_FPU, &fpu) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_SET_FPU", index);
	}
	if (snap_find(f, &s, "vcpu%u.xcrs", index) == 1) {
		struct kvm_xcrs xcrs;
		if ((r = get_raw(f, index, "xcrs", &xcrs, sizeof(xcrs), err)) < 0)
			return r;
		if (ioctl(fd, KVM_SET_XCRS, &xcrs) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_SET_XCRS", index);
	}
	if (snap_find(f, &s, "vcpu%u.debugregs", index) == 1) {
		struct kvm_debugregs dr;
		if ((r = get_raw(f, index, "debugregs", &dr, sizeof(dr), err)) < 0)
			return r;
		if (ioctl(fd, KVM_SET_DEBUGREGS, &dr) < 0)
			return cella_err_sys(err, errno, "vcpu%u: KVM_SET_DEBUGREGS", index);
	}
	struct kvm_lapic_state lapic;
	if ((r = get_raw(f, index, "lapic", &lapic, sizeof(lapic), err)) < 0)
		return r;
	if (ioctl(fd, KVM_SET_LAPIC, &lapic) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_LAPIC", index);
	/* MSRs after the LAPIC: KVM drops a TSC deadline written while the LAPIC timer is not in
	 * TSC-deadline mode. */
	if ((r = snap_need(f, &s, err, "vcpu%u.msrs", index)) < 0)
		return r;
	uint32_t nmsrs = snap_get_u32(&s);
	if (nmsrs > MSR_LIST_MAX || snap_left(&s) != nmsrs * sizeof(struct kvm_msr_entry))
		return cella_err_set(err, EINVAL, "state file: section \"%s\": malformed", s.name);
	_cleanup_free_ struct kvm_msrs *m = calloc(1, sizeof(*m) + nmsrs * sizeof(m->entries[0]));
	if (!m)
		return cella_err_set(err, ENOMEM, "out of memory");
	m->nmsrs = nmsrs;
	snap_get(&s, m->entries, nmsrs * sizeof(m->entries[0]));
	if ((r = snap_sec_done(&s, err)) < 0)
		return r;
	r = ioctl(fd, KVM_SET_MSRS, m);
	if (r < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_MSRS", index);
	if ((uint32_t)r < nmsrs)
		return cella_err_set(err, EINVAL, "vcpu%u: KVM_SET_MSRS: KVM refused MSR 0x%x (value 0x%llx)", index,
				     m->entries[r].index, (unsigned long long)m->entries[r].data);

	struct kvm_mp_state mp;
	if ((r = get_raw(f, index, "mp", &mp, sizeof(mp), err)) < 0)
		return r;
	if (ioctl(fd, KVM_SET_MP_STATE, &mp) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_MP_STATE (%u)", index, mp.mp_state);
	struct kvm_vcpu_events ev;
	if ((r = get_raw(f, index, "events", &ev, sizeof(ev), err)) < 0)
		return r;
	ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
	if (ioctl(fd, KVM_SET_VCPU_EVENTS, &ev) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_VCPU_EVENTS", index);
	return 0;
}

/* --- VM-wide: PIC master/slave, IOAPIC, PIT, kvmclock --- */

static const char *const chip_names[] = { "vm.pic-master", "vm.pic-slave", "vm.ioapic" };

int x86_vm_save(int vm_fd, bool has_pit, struct snap_writer *w, struct cella_err *err)
{
	for (unsigned id = 0; id < 3; id++) {
		struct kvm_irqchip chip = { .chip_id = id };
		if (ioctl(vm_fd, KVM_GET_IRQCHIP, &chip) < 0)
			return cella_err_sys(err, errno, "KVM_GET_IRQCHIP (%s)", chip_names[id] + 3);
		snap_begin(w, "%s", chip_names[id]);
		snap_put(w, &chip, sizeof(chip));
		snap_end(w);
	}
	struct kvm_pit_state2 pit;
	if (has_pit) {
		if (ioctl(vm_fd, KVM_GET_PIT2, &pit) < 0)
			return cella_err_sys(err, errno, "KVM_GET_PIT2");
		snap_begin(w, "vm.pit2");
		snap_put(w, &pit, sizeof(pit));
		snap_end(w);
	}
	struct kvm_clock_data clock = { 0 };
	if (ioctl(vm_fd, KVM_GET_CLOCK, &clock) < 0)
		return cella_err_sys(err, errno, "KVM_GET_CLOCK");
	snap_begin(w, "vm.clock");
	snap_put(w, &clock, sizeof(clock));
	snap_end(w);
	return 0;
}

static int vm_raw(const struct snap_file *f, const char *name, void *out, size_t len, struct cella_err *err)
{
	struct snap_sec s;
	int r = snap_need(f, &s, err, "%s", name);
	if (r < 0)
		return r;
	if (s.len != len)
		return cella_err_set(err, EINVAL, "state file: section \"%s\": %zu bytes, expected %zu", name, s.len, len);
	snap_get(&s, out, len);
	return snap_sec_done(&s, err);
}

int x86_vm_load(int vm_fd, const struct snap_file *f, struct cella_err *err)
{
	int r;
	struct kvm_pit_state2 pit;
	struct snap_sec s;
	/* No section: the VM was saved (and rebuilt) without a PIT. */
	if (snap_find(f, &s, "vm.pit2") == 1) {
		if ((r = vm_raw(f, "vm.pit2", &pit, sizeof(pit), err)) < 0)
			return r;
		if (ioctl(vm_fd, KVM_SET_PIT2, &pit) < 0)
			return cella_err_sys(err, errno, "KVM_SET_PIT2");
	}
	for (unsigned id = 0; id < 3; id++) {
		struct kvm_irqchip chip;
		if ((r = vm_raw(f, chip_names[id], &chip, sizeof(chip), err)) < 0)
			return r;
		if (chip.chip_id != id)
			return cella_err_set(err, EINVAL, "state file: section \"%s\": chip id %u", chip_names[id],
					     chip.chip_id);
		if (ioctl(vm_fd, KVM_SET_IRQCHIP, &chip) < 0)
			return cella_err_sys(err, errno, "KVM_SET_IRQCHIP (%s)", chip_names[id] + 3);
	}
	return 0;
}

int x86_vm_load_clock(int vm_fd, const struct snap_file *f, struct cella_err *err)
{
	struct kvm_clock_data clock;
	int r = vm_raw(f, "vm.clock", &clock, sizeof(clock), err);
	if (r < 0)
		return r;
	/* Only the clock value: the guest's kvmclock continues from where it was paused. */
	struct kvm_clock_data set = { .clock = clock.clock };
	if (ioctl(vm_fd, KVM_SET_CLOCK, &set) < 0)
		return cella_err_sys(err, errno, "KVM_SET_CLOCK");
	return 0;
}
