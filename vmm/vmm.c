/* vmm_run: one VM from config to end.
 *
 * Order: everything that can be checked without KVM first (config, kernel and initrd files, memory
 * floor, loading the kernel and writing boot tables into freshly mapped guest memory), so bad input
 * fails before /dev/kvm is touched; then KVM (VM, irqchip, PIT, memory slots), devices on the buses,
 * vCPUs, the console, and the event loop. Teardown runs in reverse on every path. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/console.h"
#include "vmm/snapfile.h"
#include "vmm/snapshot.h"
#include "vmm/virtio/blk.h"
#include "vmm/vm.h"
#include "vmm/x86/boot.h"
#include "vmm/x86/cpu.h"
#include "vmm/x86/state.h"

/* A read-only private mapping of a whole file (kernel, initrd). */
struct mapped_file {
	const uint8_t *data;
	size_t len;
};

static void unmap_file(struct mapped_file *f)
{
	if (f->data && f->len)
		munmap((void *)f->data, f->len);
	f->data = NULL;
	f->len = 0;
}

static int map_file(const char *what, const char *path, uint64_t max, struct mapped_file *out,
		    struct cella_err *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cella_err_sys(err, errno, "%s: %s", what, path);
	struct stat st;
	if (fstat(fd, &st) < 0)
		return cella_err_sys(err, errno, "%s: %s", what, path);
	if (!S_ISREG(st.st_mode))
		return cella_err_set(err, EINVAL, "%s: %s: not a regular file", what, path);
	if (st.st_size == 0)
		return cella_err_set(err, EINVAL, "%s: %s: empty file", what, path);
	if ((uint64_t)st.st_size > max)
		return cella_err_set(err, EFBIG, "%s: %s: %" PRIu64 " MiB does not fit in %" PRIu64 " MiB", what, path,
				     ((uint64_t)st.st_size + (1 << 20) - 1) >> 20, max >> 20);
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		return cella_err_sys(err, errno, "%s: %s: mmap", what, path);
	out->data = p;
	out->len = (size_t)st.st_size;
	return 0;
}

/* --- hooks devices call --- */

static int host_set_irq(void *ctx, unsigned irq, int level)
{
	return vm_set_irq(ctx, irq, level);
}

static void host_event(void *ctx, enum hw_event event, const char *why)
{
	struct vm *vm = ctx;
	log_info("%s", why);
	vm_request_end(vm, event == HW_EVENT_POWEROFF ? VMM_POWEROFF : VMM_REBOOT, 0, "%s", why);
}

static void host_wake(void *ctx)
{
	vm_wake(ctx);
}

/* --- setup --- */

/* *is_linux: the kernel is a Linux one (boot tables and ACPI wanted), not a flat test binary. */
static int load_guest(struct vm *vm, const struct vmm_config *cfg, struct x86_boot_entry *entry, bool *is_linux,
		      struct cella_err *err)
{
	struct mapped_file kernel = { 0 }, initrd = { 0 };
	uint64_t mem = cfg->memory_mib << 20;
	int r = map_file("kernel", cfg->kernel, VMM_MAX_KERNEL_BYTES, &kernel, err);
	if (r < 0)
		return r;
	enum x86_kernel_kind kind = x86_kernel_kind(kernel.data, kernel.len);
	uint64_t floor = kind == X86_KERNEL_FLAT ? VMM_MIN_MEMORY_MIB_FLAT : VMM_MIN_MEMORY_MIB_LINUX;
	if (cfg->memory_mib < floor) {
		r = cella_err_set(err, EINVAL, "memory: %" PRIu64 " MiB is below the minimum of %" PRIu64
				  " MiB for a %s kernel", cfg->memory_mib, floor,
				  kind == X86_KERNEL_FLAT ? "flat-binary" : "Linux");
		goto out;
	}
	if (cfg->initrd && (r = map_file("initrd", cfg->initrd, mem, &initrd, err)) < 0) {
		if (r == -EFBIG)
			r = cella_err_set(err, EFBIG, "initrd: %s: does not fit in %" PRIu64 " MiB of guest memory",
					  cfg->initrd, cfg->memory_mib);
		goto out;
	}
	if ((r = vm_alloc_ram(vm, mem, err)) < 0)
		goto out;
	struct x86_guest_mem gm = { .host = vm->ram, .size = vm->ram_size };
	struct x86_boot_params params = {
		.kernel = kernel.data,
		.kernel_len = kernel.len,
		.initrd = initrd.data,
		.initrd_len = initrd.len,
		.cmdline = cfg->cmdline ? cfg->cmdline : (kind == X86_KERNEL_FLAT ? "" : VMM_DEFAULT_CMDLINE),
		.ncpus = cfg->cpus,
	};
	r = x86_load_kernel(&gm, &params, entry, err);
	*is_linux = kind != X86_KERNEL_FLAT;
	if (r == 0 && *is_linux) /* ACPI comes once the devices are known (write_acpi) */
		r = x86_write_mptable(&gm, cfg->cpus, err);
	if (r == 0)
		log_debug("kernel %s loaded as %s; entry mode %d at 0x%" PRIx64, cfg->kernel,
			  kind == X86_KERNEL_BZIMAGE ? "bzImage" : kind == X86_KERNEL_ELF_PVH ? "ELF (PVH)" : "flat binary",
			  (int)entry->mode, entry->rip);
out:
	unmap_file(&kernel);
	unmap_file(&initrd);
	return r;
}

/* Guest RAM as virtio queues see it: the two KVM slots. */
static void setup_gmem(struct vm *vm)
{
	uint64_t low = vm->ram_size < X86_MMIO_GAP_START ? vm->ram_size : X86_MMIO_GAP_START;
	vm->gmem = (struct vq_mem){ .r = { { .gpa = 0, .size = low, .host = vm->ram } }, .n = 1 };
	if (vm->ram_size > low)
		vm->gmem.r[vm->gmem.n++] = (struct vq_mem_region){ .gpa = X86_MMIO_GAP_END, .size = vm->ram_size - low,
								   .host = vm->ram + low };
}

/* The DSDT lists every virtio-mmio device (Debian's kernel lacks the virtio_mmio.device= option). */
static int write_acpi(struct vm *vm, const struct vmm_config *cfg, struct cella_err *err)
{
	struct x86_guest_mem gm = { .host = vm->ram, .size = vm->ram_size };
	struct x86_acpi_dev devs[VMM_MAX_VIRTIO_DEVS];
	for (unsigned i = 0; i < vm->nvirtio; i++)
		devs[i] = (struct x86_acpi_dev){ vm->virtio[i]->base, VIRTIO_MMIO_SIZE, vm->virtio[i]->gsi };
	return x86_write_acpi_devs(&gm, cfg->cpus, devs, vm->nvirtio, err);
}

static int add_devices(struct vm *vm, const struct vmm_config *cfg, int out_fd, struct cella_err *err)
{
	int r;
	vm->host = (struct hw_host){ .set_irq = host_set_irq, .event = host_event, .wake = host_wake, .ctx = vm };
	if ((r = serial_8250_new(&vm->host, SERIAL_COM1_IRQ, out_fd, &vm->serial, err)) < 0 ||
	    (r = i8042_new(&vm->host, &vm->i8042, err)) < 0 || (r = acpi_pm_new(&vm->host, &vm->acpi_pm, err)) < 0 ||
	    (r = boot_timer_new(vm->start_ns, &vm->boot_timer, err)) < 0 ||
	    (r = legacy_new(&vm->host, &vm->legacy, err)) < 0)
		return r;
	struct {
		struct bus *bus;
		uint64_t base, len;
		const struct bus_ops *ops;
		void *opaque;
		const char *name;
	} table[] = {
		{ &vm->pio, SERIAL_COM1_BASE, 8, &serial_8250_ops, vm->serial, "serial (COM1)" },
		{ &vm->pio, I8042_DATA_PORT, 1, &i8042_data_ops, vm->i8042, "i8042 data" },
		{ &vm->pio, I8042_CMD_PORT, 1, &i8042_cmd_ops, vm->i8042, "i8042 command" },
		{ &vm->pio, X86_ACPI_PM1A_EVT, 4, &acpi_pm_evt_ops, vm->acpi_pm, "acpi pm1a event" },
		{ &vm->pio, X86_ACPI_PM1A_CNT, 2, &acpi_pm_cnt_ops, vm->acpi_pm, "acpi pm1a control" },
		{ &vm->pio, BOOT_TIMER_PORT, 1, &boot_timer_ops, vm->boot_timer, "boot timer" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(table); i++)
		if ((r = bus_register(table[i].bus, table[i].base, table[i].len, table[i].ops, table[i].opaque,
				      table[i].name, err)) < 0)
			return r;
	if ((r = legacy_register(vm->legacy, &vm->pio, err)) < 0)
		return r;
	/* IOAPIC lines of the emulated chips and the ISA legacy ones never go to virtio devices */
	vm->gsi_used = 1u << 0 | 1u << 1 | 1u << 2 | 1u << SERIAL_COM1_IRQ | 1u << 8 | 1u << X86_ACPI_SCI_IRQ |
		       1u << 12 | 1u << 13;
	setup_gmem(vm);
	if (cfg->rng && (r = vm_virtio_add(vm, &virtio_rng_ops, NULL, NULL, 0, NULL, err)) < 0)
		return r;
	for (unsigned i = 0; i < cfg->ndisks; i++)
		if ((r = blk_add(vm, &cfg->disks[i], err)) < 0)
			return r;
	if (cfg->debug_device) {
		if ((r = debug_device_new(&vm->debug_device, err)) < 0 ||
		    (r = bus_register(&vm->mmio, VMM_DEBUG_DEVICE_ADDR, DEBUG_DEVICE_LEN, &debug_device_ops,
				      vm->debug_device, "debug device", err)) < 0)
			return r;
	}
	return 0;
}

static void free_devices(struct vm *vm)
{
	serial_8250_free(vm->serial);
	i8042_free(vm->i8042);
	acpi_pm_free(vm->acpi_pm);
	boot_timer_free(vm->boot_timer);
	legacy_free(vm->legacy);
	debug_device_free(vm->debug_device);
	vm_virtio_free(vm);
	vm->serial = NULL;
	vm->i8042 = NULL;
	vm->acpi_pm = NULL;
	vm->boot_timer = NULL;
	vm->legacy = NULL;
	vm->debug_device = NULL;
	bus_free(&vm->pio);
	bus_free(&vm->mmio);
}

/* --- snapshots without the API: SIGUSR2 with --snapshot-dir --- */

#define SNAPSHOT_SIGNAL SIGUSR2

/* Pauses, writes DIR/state and DIR/memory, resumes. A failure is logged; the VM keeps running. */
static void snapshot_to_dir(struct vm *vm, const char *dir)
{
	struct cella_err err = { 0 };
	struct vm_snapshot_stats st = { 0 };
	_cleanup_free_ char *state = cella_path_join(dir, VMM_SNAPSHOT_STATE_FILE);
	_cleanup_free_ char *mem = cella_path_join(dir, VMM_SNAPSHOT_MEMORY_FILE);
	uint64_t t0 = cella_now_ns();
	int r = state && mem ? 0 : cella_err_set(&err, ENOMEM, "out of memory");
	if (r == 0)
		r = cella_mkdir_p(dir, 0700, &err);
	if (r == 0)
		r = vm_pause(vm, &err);
	if (r < 0) {
		log_error("snapshot to %s: %s", dir, err.msg);
		return;
	}
	uint64_t paused = cella_now_ns();
	r = vm_snapshot_create(vm, state, mem, &st, &err);
	vm_resume(vm, NULL);
	if (r < 0) {
		log_error("snapshot to %s: %s", dir, err.msg);
		return;
	}
	log_info("snapshot written to %s in %.3f ms (pause %.3f ms, state %" PRIu64 " bytes, memory %" PRIu64
		 " MiB with %" PRIu64 " KiB of data)", dir, (cella_now_ns() - t0) / 1e6, (paused - t0) / 1e6,
		 st.state_bytes, st.memory_bytes >> 20, st.written_bytes >> 10);
}

/* --- the VMM thread's event loop --- */

#define INPUT_CHUNK 256

static void event_loop(struct vm *vm, struct console *con, int sig_fd)
{
	uint8_t pending[INPUT_CHUNK];
	size_t pending_len = 0;
	bool input = con->in_fd >= 0;

	while (!atomic_load(&vm->stopping)) {
		/* Hand over what was read but did not fit; read more only when it all fit. */
		if (pending_len) {
			size_t n = serial_8250_receive(vm->serial, pending, pending_len);
			memmove(pending, pending + n, pending_len - n);
			pending_len -= n;
		}
		struct pollfd fds[3] = {
			{ .fd = vm->wake_fd, .events = POLLIN },
			{ .fd = sig_fd, .events = POLLIN },
			{ .fd = input && !pending_len ? con->in_fd : -1, .events = POLLIN },
		};
		int n = poll(fds, 3, pending_len ? 20 : -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("event loop: poll: %s", strerror(errno));
			vm_request_end(vm, VMM_FAILED, 0, "event loop: poll: %s", strerror(errno));
			break;
		}
		if (fds[0].revents & POLLIN) {
			uint64_t v;
			if (read(vm->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_debug("wake fd: %s", strerror(errno));
		}
		if (fds[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			ssize_t got = read(sig_fd, &si, sizeof(si));
			if (got == (ssize_t)sizeof(si) && si.ssi_signo == SNAPSHOT_SIGNAL && vm->cfg->snapshot_dir) {
				snapshot_to_dir(vm, vm->cfg->snapshot_dir);
			} else if (got == (ssize_t)sizeof(si)) {
				log_info("stopping the VM: %s", strsignal((int)si.ssi_signo));
				vm_request_end(vm, VMM_SIGNALED, (int)si.ssi_signo, "stopped by signal %s",
					       strsignal((int)si.ssi_signo));
			}
		}
		if (fds[2].revents & (POLLIN | POLLHUP | POLLERR)) {
			size_t room = serial_8250_rx_room(vm->serial);
			if (room == 0) {
				pending_len = 0; /* nothing read: wait for the guest to drain (woken by host_wake) */
				continue;
			}
			ssize_t got = read(con->in_fd, pending, room < sizeof(pending) ? room : sizeof(pending));
			if (got > 0) {
				pending_len = (size_t)got;
			} else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
				log_debug("console input: %s", got == 0 ? "end of file" : strerror(errno));
				input = false;
			}
		}
	}
}

/* The machine a restore rebuilds is the snapshot's: what the caller gave may only say where the
 * console goes, which KVM device to use, where the next snapshots go, and whether to start paused.
 * A vCPU count or memory size given (non-zero) must match the snapshot's. */
static int restore_config(struct vmm_config *saved, const struct vmm_config *given, struct cella_err *err)
{
	if (given->cpus && given->cpus != saved->cpus)
		return cella_err_set(err, EINVAL, "cpus: %u requested, the snapshot has %u vCPU(s)", given->cpus,
				     saved->cpus);
	if (given->memory_mib && given->memory_mib != saved->memory_mib)
		return cella_err_set(err, EINVAL, "memory: %" PRIu64 " MiB requested, the snapshot has %" PRIu64 " MiB",
				     given->memory_mib, saved->memory_mib);
	const char *copy[] = { given->console_path, given->kvm_device, given->snapshot_dir, given->restore_state,
			       given->restore_memory };
	char **slot[] = { &saved->console_path, &saved->kvm_device, &saved->snapshot_dir, &saved->restore_state,
			  &saved->restore_memory };
	for (size_t i = 0; i < ARRAY_SIZE(copy); i++) {
		free(*slot[i]);
		*slot[i] = copy[i] ? strdup(copy[i]) : NULL;
		if (copy[i] && !*slot[i])
			return cella_err_set(err, ENOMEM, "out of memory");
	}
	saved->console = given->console;
	saved->restore_paused = given->restore_paused;
	saved->debug_device = given->debug_device;
	return 0;
}

int vmm_run(const struct vmm_config *given, struct vmm_result *res, struct cella_err *err)
{
	memset(res, 0, sizeof(*res));
	uint64_t start_ns = cella_now_ns();
	/* Restore: the config comes from the snapshot. */
	struct snap_file snap = { 0 };
	struct vmm_config saved;
	vmm_config_init(&saved);
	const struct vmm_config *cfg = given;
	bool restore = given->restore_state != NULL;
	if (restore) {
		int r = given->restore_memory ? 0 : cella_err_set(err, EINVAL, "restore: no memory file given");
		if (r == 0)
			r = vm_restore_open(given->restore_state, &snap, &saved, err);
		if (r == 0 && (r = restore_config(&saved, given, err)) < 0)
			snap_file_close(&snap);
		if (r < 0) {
			vmm_config_free(&saved);
			return r;
		}
		cfg = &saved;
	}
	struct vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		snap_file_close(&snap);
		vmm_config_free(&saved);
		return cella_err_set(err, ENOMEM, "out of memory");
	}
	vm->start_ns = start_ns;
	vm->kvm_fd = vm->vm_fd = vm->wake_fd = -1;
	vm->cfg = cfg;
	vm->ncpus = cfg->cpus;
	for (unsigned i = 0; i < VMM_MAX_CPUS; i++)
		vm->vcpus[i].fd = -1;
	pthread_mutex_init(&vm->end_lock, NULL);
	pthread_mutex_init(&vm->pause_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&vm->pause_cond, &ca);
	pthread_condattr_destroy(&ca);
	bus_init(&vm->pio, "pio");
	bus_init(&vm->mmio, "mmio");

	struct console con = { .out_fd = -1, .in_fd = -1 };
	int sig_fd = -1;
	sigset_t stop_sigs, old_mask;
	sigemptyset(&stop_sigs);
	sigaddset(&stop_sigs, SIGINT);
	sigaddset(&stop_sigs, SIGTERM);
	sigaddset(&stop_sigs, SIGHUP);
	sigaddset(&stop_sigs, SIGQUIT);
	sigaddset(&stop_sigs, SIGPIPE);
	if (cfg->snapshot_dir)
		sigaddset(&stop_sigs, SNAPSHOT_SIGNAL);
	bool masked = false, stopped = true;
	struct x86_boot_entry entry = { 0 };
	bool linux_guest = false;

	int r = vmm_config_check(cfg, err);
	if (r == 0 && restore)
		r = vm_restore_memory(vm, cfg->restore_memory, cfg->memory_mib << 20, err);
	else if (r == 0)
		r = load_guest(vm, cfg, &entry, &linux_guest, err);
	for (unsigned i = 0; i < cfg->ndisks && r == 0; i++)
		r = blk_check(&cfg->disks[i], err);
	if (r == 0)
		r = vm_open_kvm(vm, cfg->kvm_device ? cfg->kvm_device : "/dev/kvm", cfg->cpus, err);
	if (r == 0)
		r = vm_create(vm, err);
	if (r == 0)
		r = x86_cpuid_supported(vm->kvm_fd, &vm->cpuid, err);
	if (r < 0)
		goto out;
	vm->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->wake_fd < 0) {
		r = cella_err_sys(err, errno, "eventfd");
		goto out;
	}
	if ((r = console_open(&con, cfg, err)) < 0)
		goto out;
	if ((r = add_devices(vm, cfg, con.out_fd, err)) < 0 ||
	    (linux_guest && (r = write_acpi(vm, cfg, err)) < 0))
		goto out;
	for (unsigned i = 0; i < cfg->cpus && r == 0; i++)
		r = vcpu_create(vm, i, restore ? NULL : &entry, err);
	if (r == 0 && restore) {
		/* vCPUs, then PIT and irqchips, then devices (which raise their lines again), the clock last */
		r = vm_restore_vcpus(vm, &snap, err);
		if (r == 0)
			r = vm_restore_devices(vm, &snap, err);
		if (r == 0)
			r = x86_vm_load_clock(vm->vm_fd, &snap, err);
		if (r < 0)
			cella_err_wrap(err, "restore from %s", cfg->restore_state);
	}
	if (r == 0)
		r = vcpu_signals_init(err);
	if (r < 0)
		goto out;

	/* Termination signals arrive through a signalfd; vCPU threads inherit the blocked mask. */
	pthread_sigmask(SIG_BLOCK, &stop_sigs, &old_mask);
	masked = true;
	sigset_t sfd_sigs = stop_sigs;
	sigdelset(&sfd_sigs, SIGPIPE); /* broken console pipe: writes fail with EPIPE instead */
	sig_fd = signalfd(-1, &sfd_sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sig_fd < 0) {
		r = cella_err_sys(err, errno, "signalfd");
		goto out;
	}
	if (restore)
		log_info("VM restored from %s in %.3f ms: %u vCPU(s), %" PRIu64 " MiB%s", cfg->restore_state,
			 (cella_now_ns() - vm->start_ns) / 1e6, cfg->cpus, cfg->memory_mib,
			 cfg->restore_paused ? ", paused" : "");
	else
		log_debug("VM ready in %.3f ms: %u vCPU(s), %" PRIu64 " MiB", (cella_now_ns() - vm->start_ns) / 1e6,
			  cfg->cpus, cfg->memory_mib);
	if (restore && cfg->restore_paused) {
		/* The threads park on their first KVM_RUN (immediate_exit) until vm_resume. */
		atomic_store(&vm->pause_req, true);
		for (unsigned i = 0; i < cfg->cpus; i++)
			vcpu_kick(&vm->vcpus[i]);
	}
	r = vm_virtio_start(vm, err);
	if (r == 0)
		r = vcpus_start(vm, err);
	if (r == 0)
		event_loop(vm, &con, sig_fd);
	else
		vm_request_end(vm, VMM_FAILED, 0, "%s", err->msg);
	stopped = vcpus_stop(vm);
	if (r == 0) {
		pthread_mutex_lock(&vm->end_lock);
		res->outcome = vm->outcome;
		res->signal = vm->end_signal;
		snprintf(res->reason, sizeof(res->reason), "%s", vm->end_reason);
		pthread_mutex_unlock(&vm->end_lock);
		res->boot_timer_ns = boot_timer_elapsed_ns(vm->boot_timer);
	}
out:
	console_close(&con);
	if (sig_fd >= 0)
		close(sig_fd);
	if (masked) {
		/* Drop termination signals that arrived while we were stopping, then unblock. */
		struct timespec zero = { 0 };
		while (sigtimedwait(&stop_sigs, NULL, &zero) > 0)
			;
		pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
	}
	if (!stopped) {
		/* A vCPU thread is stuck in the kernel: its kvm_run, the devices it may call and the VM must
		 * outlive it. Leave them to process exit rather than hang or free memory in use. */
		res->abandoned = true;
		return 0;
	}
	for (unsigned i = 0; i < VMM_MAX_CPUS; i++)
		vcpu_destroy(&vm->vcpus[i]);
	free_devices(vm);
	free(vm->cpuid);
	if (vm->wake_fd >= 0)
		close(vm->wake_fd);
	vm_close(vm);
	pthread_mutex_destroy(&vm->end_lock);
	pthread_mutex_destroy(&vm->pause_lock);
	pthread_cond_destroy(&vm->pause_cond);
	free(vm);
	snap_file_close(&snap);
	vmm_config_free(&saved);
	return r;
}
