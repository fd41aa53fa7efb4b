/* vCPU threads: set up from the boot entry, run KVM_RUN, dispatch exits.
 *
 * Stopping never hangs: vcpus_stop sets vm->stopping, sets kvm_run->immediate_exit on every vCPU
 * (so a thread about to enter KVM_RUN returns at once) and sends each thread VCPU_KICK_SIGNAL (so a
 * thread inside KVM_RUN, including an AP still waiting for INIT/SIPI, returns with EINTR). The kick
 * signal's handler does nothing; it is unblocked only in vCPU threads. Kicks repeat until every
 * thread has been joined.
 *
 * A VM with one vCPU whose VMM thread has nothing else to serve runs that vCPU on the VMM thread
 * (vcpu_here_init, vcpu_run_here; vmm.c says when): no thread to create, wake and join. That thread
 * keeps its signals blocked and takes them from its signalfd; KVM_SET_SIGNAL_MASK unblocks them
 * only inside KVM_RUN, which a signal then ends with EINTR, leaving it pending for the signalfd. */
#include <errno.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/vm.h"
#include "vmm/x86/cpu.h"

#define VCPU_KICK_SIGNAL SIGUSR1

static void kick_handler(int sig)
{
	(void)sig;
}

int vcpu_signals_init(struct cella_err *err)
{
	struct sigaction sa = { .sa_handler = kick_handler, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	if (sigaction(VCPU_KICK_SIGNAL, &sa, NULL) < 0)
		return cella_err_sys(err, errno, "sigaction(SIGUSR1)");
	return 0;
}

int vcpu_create(struct vm *vm, unsigned index, const struct x86_boot_entry *boot, struct cella_err *err)
{
	struct vcpu *v = &vm->vcpus[index];
	v->vm = vm;
	v->index = index;
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
	if (v->fd < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_CREATE_VCPU", index);
	cella_set_cloexec(v->fd, true);
	void *run = mmap(NULL, vm->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (run == MAP_FAILED)
		return cella_err_sys(err, errno, "vcpu%u: mmap of kvm_run", index);
	v->run = run;
	v->run_size = vm->vcpu_mmap_size;
	if (!boot)
		return 0; /* restore: the snapshot sets every register (snapshot.c) */

	_cleanup_free_ struct kvm_cpuid2 *cpuid = NULL;
	int r = x86_cpuid_for_vcpu(vm->cpuid, index, vm->ncpus, &cpuid, err);
	if (r == 0)
		r = x86_setup_cpuid(v->fd, cpuid, err);
	if (r == 0 && vm->has_xcrs)
		r = x86_setup_xcr0(v->fd, x86_cpuid_xcr0(cpuid), err);
	if (r == 0)
		r = x86_setup_msrs(v->fd, err);
	if (r == 0)
		r = x86_setup_fpu(v->fd, err);
	if (r == 0 && vm->has_irqchip)
		r = x86_setup_lapic(v->fd, err);
	/* The boot processor starts at the entry; APs stay in KVM_MP_STATE_UNINITIALIZED (KVM's default for
	 * every vCPU but the boot one) until the guest's INIT/SIPI reaches the in-kernel local APIC. */
	if (r == 0 && index == 0)
		r = x86_setup_boot_regs(v->fd, boot, err);
	if (r < 0)
		return cella_err_wrap(err, "vcpu%u", index);
	return 0;
}

void vcpu_destroy(struct vcpu *v)
{
	if (v->run)
		munmap(v->run, v->run_size);
	v->run = NULL;
	if (v->fd >= 0)
		close(v->fd);
	v->fd = -1;
}

static const char *exit_reason_name(uint32_t reason)
{
	static const char *const names[] = {
		[KVM_EXIT_UNKNOWN] = "KVM_EXIT_UNKNOWN",
		[KVM_EXIT_EXCEPTION] = "KVM_EXIT_EXCEPTION",
		[KVM_EXIT_IO] = "KVM_EXIT_IO",
		[KVM_EXIT_HYPERCALL] = "KVM_EXIT_HYPERCALL",
		[KVM_EXIT_DEBUG] = "KVM_EXIT_DEBUG",
		[KVM_EXIT_HLT] = "KVM_EXIT_HLT",
		[KVM_EXIT_MMIO] = "KVM_EXIT_MMIO",
		[KVM_EXIT_IRQ_WINDOW_OPEN] = "KVM_EXIT_IRQ_WINDOW_OPEN",
		[KVM_EXIT_SHUTDOWN] = "KVM_EXIT_SHUTDOWN",
		[KVM_EXIT_FAIL_ENTRY] = "KVM_EXIT_FAIL_ENTRY",
		[KVM_EXIT_INTR] = "KVM_EXIT_INTR",
		[KVM_EXIT_SET_TPR] = "KVM_EXIT_SET_TPR",
		[KVM_EXIT_TPR_ACCESS] = "KVM_EXIT_TPR_ACCESS",
		[KVM_EXIT_NMI] = "KVM_EXIT_NMI",
		[KVM_EXIT_INTERNAL_ERROR] = "KVM_EXIT_INTERNAL_ERROR",
		[KVM_EXIT_SYSTEM_EVENT] = "KVM_EXIT_SYSTEM_EVENT",
	};
	if (reason < ARRAY_SIZE(names) && names[reason])
		return names[reason];
	return "unknown exit";
}

static void handle_io(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint32_t size = run->io.size;
	/* String I/O (rep ins/outs) comes as count items back to back in the kvm_run page. */
	if (run->io.data_offset + (uint64_t)size * run->io.count > v->run_size)
		return;
	for (uint32_t i = 0; i < run->io.count; i++, data += size) {
		if (run->io.direction == KVM_EXIT_IO_OUT)
			bus_write(&v->vm->pio, run->io.port, data, size);
		else
			bus_read(&v->vm->pio, run->io.port, data, size);
	}
}

static void handle_mmio(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	uint32_t len = run->mmio.len;
	if (len == 0 || len > sizeof(run->mmio.data))
		return;
	if (run->mmio.is_write)
		bus_write(&v->vm->mmio, run->mmio.phys_addr, run->mmio.data, len);
	else
		bus_read(&v->vm->mmio, run->mmio.phys_addr, run->mmio.data, len);
}

/* Ends the VM because of this vCPU: logs reason and registers. */
static void fatal_exit(struct vcpu *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fatal_exit(struct vcpu *v, const char *fmt, ...)
{
	char msg[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_error("vcpu%u: %s", v->index, msg);
	x86_dump_regs(v->fd, v->index);
	vm_request_end(v->vm, VMM_FAILED, 0, "vcpu%u: %s", v->index, msg);
}

static void handle_system_event(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	switch (run->system_event.type) {
	case KVM_SYSTEM_EVENT_SHUTDOWN:
		log_info("guest poweroff");
		vm_request_end(v->vm, VMM_POWEROFF, 0, "guest poweroff");
		break;
	case KVM_SYSTEM_EVENT_RESET:
		log_info("guest reboot");
		vm_request_end(v->vm, VMM_REBOOT, 0, "guest reboot");
		break;
	default:
		fatal_exit(v, "KVM_EXIT_SYSTEM_EVENT type %u", run->system_event.type);
		break;
	}
}

const char *const vcpu_exit_kind_names[VCPU_EXIT_KINDS] = {
	[VCPU_EXIT_IO] = "io", [VCPU_EXIT_MMIO] = "mmio", [VCPU_EXIT_HLT] = "hlt", [VCPU_EXIT_INTR] = "intr",
	[VCPU_EXIT_SHUTDOWN] = "shutdown", [VCPU_EXIT_SYSTEM_EVENT] = "system_event",
	[VCPU_EXIT_FAILURE] = "failure", [VCPU_EXIT_OTHER] = "other",
};

static void count_exit(struct vcpu *v, uint32_t reason)
{
	enum vcpu_exit_kind k;
	switch (reason) {
	case KVM_EXIT_IO: k = VCPU_EXIT_IO; break;
	case KVM_EXIT_MMIO: k = VCPU_EXIT_MMIO; break;
	case KVM_EXIT_HLT: k = VCPU_EXIT_HLT; break;
	case KVM_EXIT_INTR:
	case KVM_EXIT_IRQ_WINDOW_OPEN: k = VCPU_EXIT_INTR; break;
	case KVM_EXIT_SHUTDOWN: k = VCPU_EXIT_SHUTDOWN; break;
	case KVM_EXIT_SYSTEM_EVENT: k = VCPU_EXIT_SYSTEM_EVENT; break;
	case KVM_EXIT_FAIL_ENTRY:
	case KVM_EXIT_INTERNAL_ERROR: k = VCPU_EXIT_FAILURE; break;
	default: k = VCPU_EXIT_OTHER; break;
	}
	atomic_fetch_add_explicit(&v->exits[k], 1, memory_order_relaxed);
}

/* One exit; returns false when the vCPU must stop. */
static bool handle_exit(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	count_exit(v, run->exit_reason);
	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		handle_io(v);
		return true;
	case KVM_EXIT_MMIO:
		handle_mmio(v);
		return true;
	case KVM_EXIT_INTR:
	case KVM_EXIT_IRQ_WINDOW_OPEN:
		return true;
	case KVM_EXIT_HLT:
		/* Only without an in-kernel LAPIC; nothing will wake a halted CPU, so it waits for the stop:
		 * the VMM thread's own vCPU in its event loop (vcpu_loop's caller), a thread here. */
		log_debug("vcpu%u: KVM_EXIT_HLT", v->index);
		if (v->here)
			return false;
		pthread_mutex_lock(&v->vm->pause_lock);
		while (!atomic_load(&v->vm->stopping))
			pthread_cond_wait(&v->vm->pause_cond, &v->vm->pause_lock);
		pthread_mutex_unlock(&v->vm->pause_lock);
		return true;
	case KVM_EXIT_SHUTDOWN:
		/* A triple fault resets a PC. */
		log_info("guest reboot (triple fault on vcpu%u)", v->index);
		vm_request_end(v->vm, VMM_REBOOT, 0, "guest reboot (triple fault)");
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		handle_system_event(v);
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		fatal_exit(v, "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x%llx",
			   (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		return false;
	case KVM_EXIT_INTERNAL_ERROR: {
		char extra[128] = "";
		size_t off = 0;
		for (uint32_t i = 0; i < run->internal.ndata && i < 4 && off < sizeof(extra); i++)
			off += (size_t)snprintf(extra + off, sizeof(extra) - off, " 0x%llx",
						(unsigned long long)run->internal.data[i]);
		fatal_exit(v, "KVM_EXIT_INTERNAL_ERROR: suberror %u%s%s", run->internal.suberror,
			   run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? " (emulation failure)" : "",
			   extra[0] ? extra : "");
		return false;
	}
	default:
		fatal_exit(v, "%s (exit reason %u)", exit_reason_name(run->exit_reason), run->exit_reason);
		return false;
	}
}

/* Parks the vCPU while a pause is requested (snapshot.c). Called only right after KVM_RUN returned
 * EINTR: that entry completed any I/O or MMIO exit handled before it, so the vCPU's state is at an
 * instruction boundary and can be read and saved from another thread. */
static void park(struct vcpu *v)
{
	struct vm *vm = v->vm;
	pthread_mutex_lock(&vm->pause_lock);
	vm->nparked++;
	pthread_cond_broadcast(&vm->pause_cond);
	while (atomic_load(&vm->pause_req) && !atomic_load(&vm->stopping))
		pthread_cond_wait(&vm->pause_cond, &vm->pause_lock);
	vm->nparked--;
	pthread_mutex_unlock(&vm->pause_lock);
}

/* The KVM_RUN loop, until the VM stops. A vCPU thread handles its kicks (and pauses) itself; the VMM
 * thread's vCPU (v->here) returns VCPU_HERE_SIGNAL when KVM_RUN was interrupted, so that its caller
 * takes the signal, and VCPU_HERE_HALTED when the guest halted with no interrupt controller to wake
 * it. */
static enum vcpu_here_result vcpu_loop(struct vcpu *v)
{
	struct vm *vm = v->vm;
	while (!atomic_load(&vm->stopping)) {
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			int e = errno;
			/* EINTR: kicked (or immediate_exit); EAGAIN: an AP woke without SIPI yet. */
			if (e == EINTR || e == EAGAIN) {
				atomic_fetch_add_explicit(&v->kicks, 1, memory_order_relaxed);
				if (!v->here && atomic_load(&vm->pause_req))
					park(v);
				/* A kick that found no pause (or a finished one) must not keep KVM_RUN returning at
				 * once. A stop sets stopping before immediate_exit, and the loop checks stopping next. */
				if (!atomic_load(&vm->pause_req))
					__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
				if (v->here)
					return VCPU_HERE_SIGNAL;
				continue;
			}
			log_error("vcpu%u: KVM_RUN: %s", v->index, strerror(e));
			x86_dump_regs(v->fd, v->index);
			vm_request_end(vm, VMM_FAILED, 0, "vcpu%u: KVM_RUN: %s", v->index, strerror(e));
			break;
		}
		if (!handle_exit(v))
			break;
	}
	/* handle_exit returns false without ending the VM only for the VMM thread's halted vCPU */
	return atomic_load(&vm->stopping) ? VCPU_HERE_STOPPED : VCPU_HERE_HALTED;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vm *vm = v->vm;
	char name[16];
	snprintf(name, sizeof(name), "vcpu%u", v->index);
	pthread_setname_np(pthread_self(), name);
	vcpu_loop(v);
	log_debug("vcpu%u: stopped", v->index);
	pthread_mutex_lock(&vm->pause_lock);
	vm->nrunning--;
	pthread_cond_broadcast(&vm->pause_cond);
	pthread_mutex_unlock(&vm->pause_lock);
	return NULL;
}

int vcpu_here_init(struct vcpu *v, const sigset_t *run_blocked, struct cella_err *err)
{
	/* The kernel's sigset is 64 bits on x86-64: the first 8 bytes of glibc's sigset_t. */
	_Alignas(struct kvm_signal_mask) uint8_t buf[sizeof(struct kvm_signal_mask) + 8];
	struct kvm_signal_mask *sm = (struct kvm_signal_mask *)buf;
	sigset_t blocked = *run_blocked;
	sigdelset(&blocked, VCPU_KICK_SIGNAL);
	sm->len = 8;
	memcpy(sm->sigset, &blocked, 8);
	if (ioctl(v->fd, KVM_SET_SIGNAL_MASK, sm) < 0)
		return cella_err_sys(err, errno, "vcpu%u: KVM_SET_SIGNAL_MASK", v->index);
	v->here = true;
	v->thread = pthread_self();
	return 0;
}

enum vcpu_here_result vcpu_run_here(struct vcpu *v)
{
	return vcpu_loop(v);
}

void vcpu_kick(struct vcpu *v)
{
	if (v->run)
		__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	/* The VMM thread's vCPU is kicked only from another thread: in its own thread the stop is seen
	 * when KVM_RUN returns. */
	if (v->thread_started || (v->here && !pthread_equal(v->thread, pthread_self())))
		pthread_kill(v->thread, VCPU_KICK_SIGNAL);
}

int vcpus_start(struct vm *vm, struct cella_err *err)
{
	if (vm->ncpus == 1 && vm->vcpus[0].here)
		return 0;
	/* Threads inherit the mask: everything blocked (the VMM thread takes signals through its
	 * signalfd) except the kick and the synchronous faults. */
	sigset_t all, old;
	sigfillset(&all);
	sigdelset(&all, VCPU_KICK_SIGNAL);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	sigdelset(&all, SIGABRT);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = 0;
	for (unsigned i = 0; i < vm->ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		if (v->here)
			continue; /* the VMM thread runs it (vcpu_run_here) */
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 256 * 1024);
		pthread_mutex_lock(&vm->pause_lock);
		int e = pthread_create(&v->thread, &attr, vcpu_thread, v);
		if (e == 0)
			vm->nrunning++;
		pthread_mutex_unlock(&vm->pause_lock);
		pthread_attr_destroy(&attr);
		if (e) {
			r = cella_err_sys(err, e, "vcpu%u: creating its thread", i);
			break;
		}
		v->thread_started = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r;
}

/* Kicks every running vCPU and reaps the threads as they leave: each join waits on a monotonic
 * deadline (no wall-clock deadlines: the guest of a nested sandbox may see its wall clock jump) and
 * returns the moment the thread ends, so a normal stop costs no sleep. Gives up after
 * VCPU_STOP_GIVE_UP_MS with the stuck vCPUs logged: returns false, and the caller must then leave
 * the vCPUs' resources alone (the process is about to exit and takes the threads with it). */
#define VCPU_STOP_KICK_MS 20
#define VCPU_STOP_WARN_MS 1000
#define VCPU_STOP_GIVE_UP_MS 10000

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool vcpus_stop(struct vm *vm)
{
	atomic_store(&vm->stopping, true);
	/* Parked vCPUs (a paused VM) wake up, see stopping and leave. */
	pthread_mutex_lock(&vm->pause_lock);
	pthread_cond_broadcast(&vm->pause_cond);
	pthread_mutex_unlock(&vm->pause_lock);
	for (unsigned i = 0; i < vm->ncpus; i++)
		if (vm->vcpus[i].thread_started)
			vcpu_kick(&vm->vcpus[i]);
	uint64_t start = mono_ms();
	bool warned = false;
	for (unsigned i = 0; i < vm->ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		while (v->thread_started) {
			struct timespec deadline;
			clock_gettime(CLOCK_MONOTONIC, &deadline);
			deadline.tv_nsec += VCPU_STOP_KICK_MS * 1000000L;
			if (deadline.tv_nsec >= 1000000000L) {
				deadline.tv_sec++;
				deadline.tv_nsec -= 1000000000L;
			}
			if (pthread_clockjoin_np(v->thread, NULL, CLOCK_MONOTONIC, &deadline) == 0) {
				v->thread_started = false;
				break;
			}
			uint64_t waited = mono_ms() - start;
			if (waited >= VCPU_STOP_GIVE_UP_MS) {
				for (unsigned j = i; j < vm->ncpus; j++)
					if (vm->vcpus[j].thread_started)
						log_error("vcpu%u: did not leave KVM_RUN within %u ms of the stop request; "
							  "abandoning it", j, (unsigned)waited);
				return false;
			}
			if (waited >= VCPU_STOP_WARN_MS && !warned) {
				log_warn("vcpu%u: still running %u ms after the stop request; kicking again", i,
					 (unsigned)waited);
				warned = true;
			}
			/* Kick again: a signal may have landed just before a thread entered KVM_RUN. */
			for (unsigned j = i; j < vm->ncpus; j++)
				if (vm->vcpus[j].thread_started)
					vcpu_kick(&vm->vcpus[j]);
		}
	}
	return true;
}
