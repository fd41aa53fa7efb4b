/* vmm_run: one VM from config to end.
 *
 * Order: termination signals to a signalfd and the API socket (--api-sock) first; then, at once or on
 * the API's InstanceStart / snapshot load, the VM: everything that can be checked without KVM first
 * (config, kernel and initrd files, memory floor, loading the kernel and writing boot tables into
 * freshly mapped guest memory), so bad input fails before /dev/kvm is touched; then KVM (VM, irqchip,
 * PIT, memory slots), devices on the buses, vCPUs, the console, and the event loop. Teardown runs in
 * reverse on every path, the API socket last. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>

#include "base/err.h"
#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/api/api.h"
#include "vmm/console.h"
#include "vmm/iothread.h"
#include "vmm/snapfile.h"
#include "vmm/snapshot.h"
#include "vmm/virtio/blk.h"
#include "vmm/virtio/net.h"
#include "vmm/virtio/vsock.h"
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

/* The DSDT lists every virtio-mmio device (Debian's kernel lacks the virtio_mmio.device= option)
 * and the i8042, where add_devices puts it. */
_Static_assert(I8042_DATA_PORT == X86_ACPI_I8042_DATA_PORT && I8042_CMD_PORT == X86_ACPI_I8042_CMD_PORT &&
		       I8042_KBD_IRQ == X86_ACPI_I8042_IRQ,
	       "the DSDT's keyboard controller is the i8042 at its ports and IRQ");
static int write_acpi(struct vm *vm, const struct vmm_config *cfg, struct cella_err *err)
{
	struct x86_guest_mem gm = { .host = vm->ram, .size = vm->ram_size };
	struct x86_acpi_dev devs[VMM_MAX_VIRTIO_DEVS];
	for (unsigned i = 0; i < vm->nvirtio; i++)
		devs[i] = (struct x86_acpi_dev){ vm->virtio[i]->base, VIRTIO_MMIO_SIZE, vm->virtio[i]->gsi };
	return x86_write_acpi_devs(&gm, cfg->cpus, devs, vm->nvirtio, err);
}

static void vsock_dev_free(void *dev)
{
	vsock_free(dev); /* also removes the socket file */
}

static void on_vsock(void *opaque, uint32_t events)
{
	vsock_run(opaque);
}

/* virtio-vsock: its host sockets sit in one epoll fd that the shared I/O thread watches. */
static int add_vsock(struct vm *vm, const struct vmm_config *cfg, struct cella_err *err)
{
	struct vsock *v;
	struct vsock_config vc = { .guest_cid = cfg->vsock_cid, .uds = cfg->vsock_uds };
	int r = vsock_new(&vc, &v, err);
	if (r < 0)
		return r;
	struct virtio_slot *slot;
	if ((r = vm_virtio_add(vm, &virtio_vsock_ops, v, vsock_dev_free, 0, &slot, err)) < 0)
		return r; /* v was freed */
	vsock_attach(v, &slot->t);
	log_debug("%s: guest cid %" PRIu64 ", host socket %s", slot->name, cfg->vsock_cid, cfg->vsock_uds);
	return iothread_add(slot->io, vsock_fd(v), EPOLLIN, on_vsock, v, err);
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
	for (unsigned i = 0; i < cfg->nnets; i++)
		if ((r = net_add(vm, &cfg->nets[i], err)) < 0)
			return r;
	if (cfg->vsock_cid && (r = add_vsock(vm, cfg, err)) < 0)
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
	int r = vmm_config_apply_overrides(saved, given, err);
	if (r < 0)
		return r;
	saved->console = given->console;
	saved->restore_paused = given->restore_paused;
	saved->debug_device = given->debug_device;
	return 0;
}

/* --- the VMM thread's world --- */

struct vmm {
	struct vmm_config *cfg;  /* the caller's; the API's PUTs change it until the VM is built */
	struct vm *vm;           /* NULL until the VM is built */
	struct vmm_config saved; /* restore: the snapshot's config, which the VM is built from */
	struct snap_file snap;   /* restore: the open state file */
	struct console con;
	enum api_state state;
	struct api_server *api;  /* NULL without --api-sock */
	int sig_fd;
	sigset_t sig_fd_set;     /* the signals sig_fd takes */
	int quit_signal;         /* a stop signal before the VM existed */
	uint64_t start_ns;
	uint64_t console_rx;     /* bytes handed to the guest's serial port */
	char net_ids[VMM_MAX_NETS][API_ID_MAX]; /* iface_id per cfg->nets[i]; "" = "eth<i>" */
};

/* Frees a VM whose vCPU threads are not running (never started, or joined). */
static void vm_destroy(struct vm *vm)
{
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
}

/* Restore: reads the snapshot's config into m->saved (the machine is the snapshot's). */
static int restore_prepare(struct vmm *m, struct cella_err *err)
{
	const struct vmm_config *given = m->cfg;
	int r = given->restore_memory ? 0 : cella_err_set(err, EINVAL, "restore: no memory file given");
	if (r == 0)
		r = vm_restore_open(given->restore_state, &m->snap, &m->saved, err);
	if (r == 0 && (r = restore_config(&m->saved, given, err)) < 0)
		snap_file_close(&m->snap);
	if (r < 0) {
		vmm_config_free(&m->saved);
		vmm_config_init(&m->saved);
	}
	return r;
}

static void restore_done(struct vmm *m)
{
	snap_file_close(&m->snap);
	vmm_config_free(&m->saved);
	vmm_config_init(&m->saved);
}

/* Builds the VM from m->cfg, or from the snapshot m->cfg->restore_state names (vCPUs created, not
 * started). On failure nothing is left behind. */
static int vm_build(struct vmm *m, struct cella_err *err)
{
	bool restore = m->cfg->restore_state != NULL;
	int r = restore ? restore_prepare(m, err) : 0;
	if (r < 0)
		return r;
	const struct vmm_config *cfg = restore ? &m->saved : m->cfg;
	struct vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		restore_done(m);
		return cella_err_set(err, ENOMEM, "out of memory");
	}
	vm->start_ns = cella_now_ns();
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
	struct x86_boot_entry entry = { 0 };
	bool linux_guest = false;

	r = vmm_config_check(cfg, err);
	if (r == 0 && restore)
		r = vm_restore_memory(vm, cfg->restore_memory, cfg->memory_mib << 20, err);
	else if (r == 0)
		r = load_guest(vm, cfg, &entry, &linux_guest, err);
	/* A restored VM has a PIT exactly when its snapshot saved one. */
	struct snap_sec pit_sec;
	vm->has_pit = restore ? snap_find(&m->snap, &pit_sec, "vm.pit2") == 1 : linux_guest || cfg->pit;
	/* Only a lone flat binary with no device, snapshot or API that could want interrupts or the
	 * irqchip's state goes without one. */
	vm->has_irqchip = restore || vm->has_pit || cfg->cpus > 1 || cfg->rng || cfg->ndisks || cfg->nnets ||
			  cfg->vsock_cid || cfg->snapshot_dir || cfg->api_sock;
	if (r == 0 && restore && cfg->pit && !vm->has_pit)
		r = cella_err_set(err, EINVAL, "restore from %s: its config has a PIT but the state file has no "
				  "\"vm.pit2\" section", cfg->restore_state);
	for (unsigned i = 0; i < cfg->ndisks && r == 0; i++)
		r = blk_check(&cfg->disks[i], err);
	if (r == 0)
		r = vm_open_kvm(vm, cfg->kvm_device ? cfg->kvm_device : "/dev/kvm", cfg->cpus, err);
	if (r == 0)
		r = vm_create(vm, err);
	/* The vCPUs' CPUID: Linux gets KVM's supported table, filtered (x86_cpuid_for_vcpu); a flat binary
	 * the baseline x86-64 CPU (x86_cpuid_baseline), a sane table without the query, which costs
	 * ~0.3 ms where CPUID traps (a KVM host that is itself a VM: ~80 host CPUIDs at ~5 us), a third
	 * of a tiny guest's whole run, for host features a test payload does not use. A restore needs
	 * neither: its vCPUs get the snapshot's tables. */
	if (r == 0 && !restore)
		r = linux_guest ? x86_cpuid_supported(vm->kvm_fd, &vm->cpuid, err) : x86_cpuid_baseline(&vm->cpuid, err);
	if (r == 0 && (vm->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
		r = cella_err_sys(err, errno, "eventfd");
	if (r == 0)
		r = console_open(&m->con, cfg, err);
	if (r == 0 && ((r = add_devices(vm, cfg, m->con.out_fd, err)) == 0) && linux_guest)
		r = write_acpi(vm, cfg, err);
	for (unsigned i = 0; i < cfg->cpus && r == 0; i++)
		r = vcpu_create(vm, i, restore ? NULL : &entry, err);
	if (r == 0 && restore) {
		/* vCPUs, then PIT and irqchips, then devices (which raise their lines again), the clock last */
		r = vm_restore_vcpus(vm, &m->snap, err);
		if (r == 0)
			r = vm_restore_devices(vm, &m->snap, err);
		if (r == 0)
			r = x86_vm_load_clock(vm->vm_fd, &m->snap, err);
		if (r < 0)
			cella_err_wrap(err, "restore from %s", cfg->restore_state);
	}
	if (r == 0)
		r = vcpu_signals_init(err);
	if (r < 0) {
		console_close(&m->con);
		vm_destroy(vm);
		restore_done(m);
		return r;
	}
	if (restore)
		log_info("VM restored from %s in %.3f ms: %u vCPU(s), %" PRIu64 " MiB%s", cfg->restore_state,
			 (cella_now_ns() - vm->start_ns) / 1e6, cfg->cpus, cfg->memory_mib,
			 cfg->restore_paused ? ", paused" : "");
	else
		log_debug("VM ready in %.3f ms: %u vCPU(s), %" PRIu64 " MiB", (cella_now_ns() - vm->start_ns) / 1e6,
			  cfg->cpus, cfg->memory_mib);
	m->vm = vm;
	return 0;
}

/* vCPU 0 runs on the VMM thread (vcpu.c) when that thread would only wait for the VM to end: one
 * vCPU, no API to serve, no snapshot signal (a snapshot pauses the vCPUs from the VMM thread) and no
 * console input to forward. Creating, waking and joining a vCPU thread cost a tiny guest ~1 ms on
 * this project's 2-core host under load (a third of its run: bench/vmm.py), whatever the guest. */
static bool vcpu_here_fits(const struct vmm *m)
{
	return m->vm->ncpus == 1 && !m->api && !m->vm->cfg->snapshot_dir && m->con.in_fd < 0;
}

static void vcpu_here_setup(struct vmm *m)
{
	/* KVM_RUN lets through what the signalfd takes (and the kick); everything else stays as it is. */
	sigset_t run;
	pthread_sigmask(SIG_BLOCK, NULL, &run);
	for (int sig = 1; sig < NSIG; sig++)
		if (sigismember(&m->sig_fd_set, sig) == 1)
			sigdelset(&run, sig);
	struct cella_err err = { 0 };
	if (vcpu_here_init(&m->vm->vcpus[0], &run, &err) < 0)
		log_debug("vCPU 0 on its own thread: %s", err.msg); /* as with any other VM */
	else
		log_debug("vCPU 0 runs on the VMM thread");
}

/* Builds and starts the VM (a restored one stays paused when restore_paused). A failure to build
 * leaves the VMM as it was (not started); a failure to start the vCPU threads ends the VM. */
static int vm_boot(struct vmm *m, struct cella_err *err)
{
	int r = vm_build(m, err);
	if (r < 0)
		return r;
	struct vm *vm = m->vm;
	bool paused = vm->cfg->restore_state && vm->cfg->restore_paused;
	if (paused) {
		/* The threads park on their first KVM_RUN (immediate_exit) until vm_resume. */
		atomic_store(&vm->pause_req, true);
		for (unsigned i = 0; i < vm->ncpus; i++)
			vcpu_kick(&vm->vcpus[i]);
	}
	m->state = paused ? API_STATE_PAUSED : API_STATE_RUNNING;
	r = vm_virtio_start(vm, err);
	if (r == 0 && !paused && vcpu_here_fits(m))
		vcpu_here_setup(m);
	if (r == 0)
		r = vcpus_start(vm, err);
	if (r < 0)
		vm_request_end(vm, VMM_FAILED, 0, "%s", err->msg);
	return r;
}

/* --- API actions, on the VMM thread --- */

/* The iface_id of cfg->nets[i]: the API's, or "eth<i>" for one from --net / the JSON config. */
static const char *net_id(const struct vmm *m, unsigned i, char buf[API_ID_MAX])
{
	if (m->net_ids[i][0])
		return m->net_ids[i];
	snprintf(buf, API_ID_MAX, "eth%u", i);
	return buf;
}

static json_t *bucket_json(const struct ratelimit_bucket_cfg *b)
{
	if (!b->size)
		return json_null();
	return json_pack("{s:I, s:I, s:I}", "size", (json_int_t)b->size, "one_time_burst", (json_int_t)b->one_time_burst,
			 "refill_time", (json_int_t)(b->refill_ms ? b->refill_ms : 1000));
}

/* Firecracker's rate_limiter shape */
static json_t *limiter_json(const struct ratelimit_cfg *rl)
{
	return json_pack("{s:o, s:o}", "bandwidth", bucket_json(&rl->bw), "ops", bucket_json(&rl->ops));
}

static json_t *config_json(const struct vmm *m, const struct vmm_config *cfg)
{
	json_t *boot = json_object(), *machine = json_object(), *j = json_object();
	if (!boot || !machine || !j) {
		json_decref(boot);
		json_decref(machine);
		json_decref(j);
		return NULL;
	}
	json_object_set_new(boot, "kernel_image_path", cfg->kernel ? json_string(cfg->kernel) : json_null());
	json_object_set_new(boot, "initrd_path", cfg->initrd ? json_string(cfg->initrd) : json_null());
	json_object_set_new(boot, "boot_args", cfg->cmdline ? json_string(cfg->cmdline) : json_null());
	json_object_set_new(machine, "vcpu_count", json_integer(cfg->cpus));
	json_object_set_new(machine, "mem_size_mib", json_integer((json_int_t)cfg->memory_mib));
	json_object_set_new(machine, "smt", json_false());
	json_object_set_new(j, "boot-source", boot);
	json_object_set_new(j, "machine-config", machine);
	json_object_set_new(j, "rng", json_boolean(cfg->rng));
	json_t *drives = json_array();
	for (unsigned i = 0; drives && i < cfg->ndisks; i++)
		json_array_append_new(drives, json_pack("{s:s?, s:s, s:b, s:b, s:o}", "drive_id", cfg->disks[i].id,
							"path_on_host", cfg->disks[i].path, "is_root_device", i == 0,
							"is_read_only", cfg->disks[i].ro, "rate_limiter",
							limiter_json(&cfg->disks[i].rl)));
	json_object_set_new(j, "drives", drives);
	json_t *nets = json_array();
	for (unsigned i = 0; nets && i < cfg->nnets; i++) {
		char buf[API_ID_MAX], mac[18];
		const uint8_t *b = cfg->nets[i].mac;
		snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
		json_array_append_new(nets, json_pack("{s:s, s:s, s:s, s:o, s:o}", "iface_id", net_id(m, i, buf),
						      "host_dev_name", cfg->nets[i].tap, "guest_mac", mac,
						      "rx_rate_limiter", limiter_json(&cfg->nets[i].rl), "tx_rate_limiter",
						      limiter_json(&cfg->nets[i].rl)));
	}
	json_object_set_new(j, "network-interfaces", nets);
	json_object_set_new(j, "vsock", cfg->vsock_cid ? json_pack("{s:I, s:s}", "guest_cid", (json_int_t)cfg->vsock_cid,
								   "uds_path", cfg->vsock_uds ? cfg->vsock_uds : "")
						       : json_null());
	return j;
}

static char *info_json(const struct vmm *m)
{
	_cleanup_json_ json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:o?}", "id",
					     m->cfg->id ? m->cfg->id : VMM_DEFAULT_ID, "state", api_state_name(m->state),
					     "vmm_version", VMM_VERSION, "app_name", "cella-vmm", "config",
					     config_json(m, m->vm ? m->vm->cfg : m->cfg));
	return j ? cj_dump(j, JSON_COMPACT) : NULL;
}

static json_t *counter(atomic_uint_fast64_t *c)
{
	return json_integer((json_int_t)atomic_load_explicit(c, memory_order_relaxed));
}

static char *metrics_json(struct vmm *m)
{
	_cleanup_json_ json_t *j = json_object(), *vcpus = json_array(), *dev = json_object(), *api = json_object();
	if (!j || !vcpus || !dev || !api)
		return NULL;
	struct vm *vm = m->vm;
	for (unsigned i = 0; vm && i < vm->ncpus; i++) {
		json_t *exits = json_object(), *total = NULL;
		uint64_t sum = 0;
		for (unsigned k = 0; exits && k < VCPU_EXIT_KINDS; k++) {
			uint64_t n = atomic_load_explicit(&vm->vcpus[i].exits[k], memory_order_relaxed);
			sum += n;
			json_object_set_new(exits, vcpu_exit_kind_names[k], json_integer((json_int_t)n));
		}
		total = json_integer((json_int_t)sum);
		json_array_append_new(vcpus, json_pack("{s:I, s:o, s:o, s:o}", "id", (json_int_t)i, "exits", exits,
						       "exits_total", total, "kicks", counter(&vm->vcpus[i].kicks)));
	}
	if (vm) {
		json_object_set_new(dev, "serial", json_pack("{s:I, s:I}", "tx_bytes",
							      (json_int_t)serial_8250_tx_count(vm->serial), "rx_bytes",
							      (json_int_t)m->console_rx));
		json_object_set_new(dev, "i8042", json_pack("{s:I}", "ctrl_alt_del_sent",
							     (json_int_t)i8042_keys_sent(vm->i8042)));
		json_object_set_new(dev, "pio_bus", json_pack("{s:o, s:o}", "unhandled_reads",
							       counter(&vm->pio.unhandled_reads), "unhandled_writes",
							       counter(&vm->pio.unhandled_writes)));
		json_object_set_new(dev, "mmio_bus", json_pack("{s:o, s:o}", "unhandled_reads",
								counter(&vm->mmio.unhandled_reads), "unhandled_writes",
								counter(&vm->mmio.unhandled_writes)));
		for (unsigned i = 0; i < vm->nvirtio; i++) {
			struct virtio_mmio *t = &vm->virtio[i]->t;
			json_t *d = json_pack("{s:I, s:b, s:b, s:o, s:o}", "device_id", (json_int_t)t->ops->device_id,
					      "driver_ok", (t->status & VIRTIO_STATUS_DRIVER_OK) != 0, "needs_reset",
					      (t->status & VIRTIO_STATUS_NEEDS_RESET) != 0, "interrupts",
					      counter(&t->interrupts), "used_batches", counter(&t->used_batches));
			if (d && t->ops->device_id == VIRTIO_ID_NET) {
				struct virtio_net_stats st;
				virtio_net_get_stats(vm->virtio[i]->dev, &st);
				json_object_set_new(d, "rx_packets", json_integer((json_int_t)st.rx_packets));
				json_object_set_new(d, "rx_bytes", json_integer((json_int_t)st.rx_bytes));
				json_object_set_new(d, "rx_dropped", json_integer((json_int_t)st.rx_dropped));
				json_object_set_new(d, "tx_packets", json_integer((json_int_t)st.tx_packets));
				json_object_set_new(d, "tx_bytes", json_integer((json_int_t)st.tx_bytes));
				json_object_set_new(d, "tx_dropped", json_integer((json_int_t)st.tx_dropped));
			}
			json_object_set_new(dev, vm->virtio[i]->name, d);
		}
		uint64_t bt = boot_timer_elapsed_ns(vm->boot_timer);
		json_object_set_new(dev, "boot_timer", json_pack("{s:o}", "boot_ms", bt ? json_real(bt / 1e6) : json_null()));
	}
	struct api_chan *ch = api_server_chan(m->api);
	json_object_set_new(api, "requests", counter(&ch->requests));
	json_object_set_new(api, "rejected", counter(&ch->rejected));
	json_object_set_new(api, "disconnects_mid_request", counter(&ch->disconnects));
	json_object_set_new(j, "state", json_string(api_state_name(m->state)));
	json_object_set_new(j, "uptime_ms", json_real((cella_now_ns() - m->start_ns) / 1e6));
	json_object_set(j, "vcpus", vcpus);
	json_object_set(j, "devices", dev);
	json_object_set(j, "api", api);
	return cj_dump(j, JSON_COMPACT);
}

/* A readable regular file named by a configuration request ("boot-source.kernel_image_path"). */
static int check_file(const char *what, const char *path, struct cella_err *err)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return cella_err_sys(err, errno, "%s: %s", what, path);
	if (!S_ISREG(st.st_mode))
		return cella_err_set(err, EINVAL, "%s: %s: not a regular file", what, path);
	return 0;
}

static struct vmm_disk *find_disk(const struct vmm_config *cfg, const char *id)
{
	for (unsigned i = 0; i < cfg->ndisks; i++)
		if (cfg->disks[i].id && !strcmp(cfg->disks[i].id, id))
			return (struct vmm_disk *)&cfg->disks[i];
	return NULL;
}

static void ratelimit_from_api(struct ratelimit_cfg *rl, const struct api_rate_limiter *in)
{
	*rl = (struct ratelimit_cfg){
		.bw = { in->bandwidth.size, in->bandwidth.one_time_burst, in->bandwidth.refill_time_ms },
		.ops = { in->ops.size, in->ops.one_time_burst, in->ops.refill_time_ms },
	};
}

/* PUT /drives/{id}: adds the disk (or replaces the one with that id); the root device goes first
 * (vda). The file is opened and closed once here so a bad path fails now, not at InstanceStart. */
static int put_drive(struct vmm_config *cfg, struct api_action *a, struct cella_err *err)
{
	if (strlen(a->id) > VMM_DISK_ID_MAX)
		return cella_err_set(err, EINVAL, "drive \"%s\": ids are at most %d bytes (the guest reads the id as "
				     "the disk's serial)", a->id, VMM_DISK_ID_MAX), 400;
	struct vmm_disk d = { .path = a->drive.path, .id = a->id, .ro = a->drive.read_only };
	ratelimit_from_api(&d.rl, &a->drive.rl);
	if (blk_check(&d, err) < 0)
		return cella_err_wrap(err, "drive \"%s\"", a->id), 400;
	struct vmm_disk *slot = find_disk(cfg, a->id);
	if (!slot) {
		if (cfg->ndisks == VMM_MAX_DISKS)
			return cella_err_set(err, ENOSPC, "drive \"%s\": at most %d drives", a->id, VMM_MAX_DISKS), 400;
		slot = &cfg->disks[cfg->ndisks++];
		*slot = (struct vmm_disk){ 0 };
	}
	char *id = strdup(a->id);
	if (!id)
		return cella_err_set(err, ENOMEM, "out of memory"), 500;
	free(slot->path);
	free(slot->id);
	*slot = d;
	slot->path = TAKE_PTR(a->drive.path);
	slot->id = id;
	if (a->drive.root && slot != &cfg->disks[0]) {
		struct vmm_disk root = *slot;
		memmove(&cfg->disks[1], &cfg->disks[0], (size_t)(slot - cfg->disks) * sizeof(*slot));
		cfg->disks[0] = root;
	}
	return 204;
}

static int find_net(const struct vmm *m, const struct vmm_config *cfg, const char *id)
{
	char buf[API_ID_MAX];
	for (unsigned i = 0; i < cfg->nnets; i++)
		if (!strcmp(net_id(m, i, buf), id))
			return (int)i;
	return -1;
}

static bool same_bucket(const struct api_bucket *a, const struct api_bucket *b)
{
	return a->set == b->set && a->size == b->size && a->one_time_burst == b->one_time_burst &&
	       a->refill_time_ms == b->refill_time_ms;
}

/* cella-vmm limits a network device's two directions with one setting (struct vmm_net): the API's rx
 * and tx limiters must say the same thing. */
static int net_limiter(const struct api_action *a, struct ratelimit_cfg *rl, struct cella_err *err)
{
	const struct api_rate_limiter *rx = &a->net.rx, *tx = &a->net.tx;
	*rl = (struct ratelimit_cfg){ 0 };
	if (!rx->set && !tx->set)
		return 0;
	if (rx->set != tx->set || !same_bucket(&rx->bandwidth, &tx->bandwidth) || !same_bucket(&rx->ops, &tx->ops))
		return cella_err_set(err, EINVAL, "network-interface \"%s\": rx_rate_limiter and tx_rate_limiter must be "
				     "given together and be equal (each direction gets its own buckets of that one setting)",
				     a->id);
	ratelimit_from_api(rl, rx);
	struct ratelimit probe;
	int r = ratelimit_init(&probe, rl, err);
	ratelimit_destroy(&probe);
	return r < 0 ? cella_err_wrap(err, "network-interface \"%s\"", a->id) : 0;
}

/* PUT /network-interfaces/{id}: adds the interface (or replaces the one with that id). The TAP is
 * opened (created or attached) at InstanceStart. */
static int put_net(struct vmm *m, struct api_action *a, struct cella_err *err)
{
	struct vmm_config *cfg = m->cfg;
	const char *tap = a->net.host_dev;
	if (strlen(tap) >= 16 || strpbrk(tap, "/: \t\n") || !strcmp(tap, ".") || !strcmp(tap, ".."))
		return cella_err_set(err, EINVAL, "network-interface \"%s\": host_dev_name \"%s\" is not a valid interface "
				     "name (1..15 bytes, no '/', ':' or spaces)", a->id, tap), 400;
	struct vmm_net n = { 0 };
	if (a->net.guest_mac && virtio_net_parse_mac(a->net.guest_mac, n.mac, err) < 0)
		return cella_err_wrap(err, "network-interface \"%s\": guest_mac", a->id), 400;
	if (!a->net.guest_mac)
		virtio_net_random_mac(n.mac);
	if (net_limiter(a, &n.rl, err) < 0)
		return 400;
	int i = find_net(m, cfg, a->id);
	char buf[API_ID_MAX];
	for (unsigned k = 0; k < cfg->nnets; k++)
		if ((int)k != i && !strcmp(cfg->nets[k].tap, tap))
			return cella_err_set(err, EBUSY, "network-interface \"%s\": TAP %s is already \"%s\"'s", a->id, tap,
					     net_id(m, k, buf)), 400;
	if (i < 0) {
		if (cfg->nnets == VMM_MAX_NETS)
			return cella_err_set(err, ENOSPC, "network-interface \"%s\": at most %d interfaces", a->id,
					     VMM_MAX_NETS), 400;
		i = (int)cfg->nnets++;
		cfg->nets[i] = (struct vmm_net){ 0 };
	}
	free(cfg->nets[i].tap);
	n.tap = TAKE_PTR(a->net.host_dev);
	cfg->nets[i] = n;
	snprintf(m->net_ids[i], API_ID_MAX, "%s", a->id);
	return 204;
}

/* The virtio slot of the index-th device of a kind (disks and interfaces are added in config order). */
static struct virtio_slot *nth_slot(struct vm *vm, uint32_t device_id, unsigned index)
{
	unsigned seen = 0;
	for (unsigned i = 0; i < vm->nvirtio; i++)
		if (vm->virtio[i]->t.ops->device_id == device_id && seen++ == index)
			return vm->virtio[i];
	return NULL;
}

/* PATCH /network-interfaces/{id}: new rate limits for a running interface. */
static int patch_net(struct vmm *m, struct api_action *a, struct cella_err *err)
{
	struct vmm_config *cfg = (struct vmm_config *)m->vm->cfg; /* m->cfg or m->saved: ours */
	int i = find_net(m, cfg, a->id);
	if (i < 0)
		return cella_err_set(err, ENOENT, "network-interfaces: no interface \"%s\"", a->id), 404;
	struct ratelimit_cfg rl;
	if (net_limiter(a, &rl, err) < 0)
		return 400;
	struct virtio_slot *slot = nth_slot(m->vm, VIRTIO_ID_NET, (unsigned)i);
	if (!slot)
		return cella_err_set(err, ENODEV, "network-interface \"%s\": its virtio-net device is missing", a->id), 500;
	if (virtio_net_set_ratelimit(slot->dev, &rl, err) < 0)
		return 400;
	cfg->nets[i].rl = rl;
	log_info("network-interface %s: rate limits changed (bandwidth %" PRIu64 " bytes per %" PRIu64 " ms, %" PRIu64
		 " packets per %" PRIu64 " ms, each direction)", a->id, rl.bw.size, rl.bw.refill_ms, rl.ops.size,
		 rl.ops.refill_ms);
	return 204;
}

/* PATCH /drives/{id}: new rate limits for a running disk; the config the VM was built from follows,
 * so GET / and later snapshots see them. */
static int patch_drive(struct vmm *m, struct api_action *a, struct cella_err *err)
{
	struct vmm_config *cfg = (struct vmm_config *)m->vm->cfg; /* m->cfg or m->saved: ours */
	struct vmm_disk *d = find_disk(cfg, a->id);
	if (!d)
		return cella_err_set(err, ENOENT, "drives: no drive \"%s\"", a->id), 404;
	unsigned index = (unsigned)(d - cfg->disks), seen = 0;
	struct virtio_slot *slot = NULL;
	for (unsigned i = 0; i < m->vm->nvirtio && !slot; i++)
		if (m->vm->virtio[i]->t.ops->device_id == VIRTIO_ID_BLOCK && seen++ == index)
			slot = m->vm->virtio[i];
	if (!slot)
		return cella_err_set(err, ENODEV, "drive \"%s\": its virtio-blk device is missing", a->id), 500;
	struct ratelimit_cfg rl;
	ratelimit_from_api(&rl, &a->drive.rl);
	if (blk_set_ratelimit(slot, &rl, err) < 0)
		return 400;
	d->rl = rl;
	log_info("drive %s: rate limits changed (bandwidth %" PRIu64 " bytes per %" PRIu64 " ms, %" PRIu64
		 " operations per %" PRIu64 " ms)", a->id, rl.bw.size, rl.bw.refill_ms, rl.ops.size, rl.ops.refill_ms);
	return 204;
}

/* PUT /snapshot/load: builds the VM from the snapshot (the machine is the snapshot's: the vCPU count
 * and memory size configured so far are not checked against it). Paused unless resume_vm. */
static int load_snapshot(struct vmm *m, struct api_action *a, struct cella_err *err)
{
	struct vmm_config *cfg = m->cfg;
	if (a->snap.ndrives > VMM_MAX_DISKS || a->snap.nnets > VMM_MAX_NETS)
		return cella_err_set(err, E2BIG, "snapshot-load: %u drive and %u network overrides, at most %d and %d",
				     a->snap.ndrives, a->snap.nnets, VMM_MAX_DISKS, VMM_MAX_NETS), 400;
	unsigned cpus = cfg->cpus;
	uint64_t mib = cfg->memory_mib;
	cfg->restore_state = TAKE_PTR(a->snap.state_path);
	cfg->restore_memory = TAKE_PTR(a->snap.mem_path);
	cfg->restore_paused = !a->snap.resume;
	/* the overrides move to cfg (a->snap's strings become cfg's) */
	vmm_config_clear_overrides(cfg);
	for (unsigned i = 0; i < a->snap.ndrives; i++)
		cfg->restore_disks[i] = (struct vmm_override){ a->snap.drives[i].id, a->snap.drives[i].value };
	for (unsigned i = 0; i < a->snap.nnets; i++)
		cfg->restore_nets[i] = (struct vmm_override){ a->snap.nets[i].id, a->snap.nets[i].value };
	cfg->nrestore_disks = a->snap.ndrives;
	cfg->nrestore_nets = a->snap.nnets;
	cfg->restore_vsock_uds = TAKE_PTR(a->snap.vsock_uds);
	a->snap.ndrives = a->snap.nnets = 0;
	cfg->cpus = 0;
	cfg->memory_mib = 0;
	int r = vm_boot(m, err);
	cfg->cpus = cpus;
	cfg->memory_mib = mib;
	if (r < 0 && !m->vm) {
		free(cfg->restore_state);
		free(cfg->restore_memory);
		cfg->restore_state = cfg->restore_memory = NULL;
		vmm_config_clear_overrides(cfg);
		return 400;
	}
	if (r < 0)
		return 500;
	log_info("VM loaded from a snapshot by the API%s", cfg->restore_paused ? " (paused)" : "");
	return 204;
}

/* Runs one action the state machine allowed. Returns the HTTP status; *body for 200, err for >= 400. */
static int do_action(struct vmm *m, struct api_action *a, char **body, struct cella_err *err)
{
	struct vmm_config *cfg = m->cfg;
	switch (a->kind) {
	case API_GET_INFO:
		return (*body = info_json(m)) ? 200 : (cella_err_set(err, ENOMEM, "out of memory"), 500);
	case API_GET_METRICS:
		return (*body = metrics_json(m)) ? 200 : (cella_err_set(err, ENOMEM, "out of memory"), 500);
	case API_PUT_BOOT_SOURCE:
		if (check_file("boot-source.kernel_image_path", a->boot.kernel, err) < 0 ||
		    (a->boot.initrd && check_file("boot-source.initrd_path", a->boot.initrd, err) < 0))
			return 400;
		if (a->boot.cmdline && strlen(a->boot.cmdline) >= 4096)
			return cella_err_set(err, E2BIG, "boot-source.boot_args: %zu bytes, at most 4095",
					     strlen(a->boot.cmdline)), 400;
		free(cfg->kernel);
		free(cfg->initrd);
		free(cfg->cmdline);
		cfg->kernel = TAKE_PTR(a->boot.kernel);
		cfg->initrd = TAKE_PTR(a->boot.initrd);
		cfg->cmdline = TAKE_PTR(a->boot.cmdline);
		return 204;
	case API_PUT_MACHINE_CONFIG:
		if (a->machine.cpus < 1 || a->machine.cpus > VMM_MAX_CPUS)
			return cella_err_set(err, EINVAL, "machine-config.vcpu_count: %u is out of range (1..%d)",
					     a->machine.cpus, VMM_MAX_CPUS), 400;
		if (a->machine.mem_mib < VMM_MIN_MEMORY_MIB_FLAT || a->machine.mem_mib > VMM_MAX_MEMORY_MIB)
			return cella_err_set(err, EINVAL, "machine-config.mem_size_mib: %" PRIu64
					     " is out of range (%d..%llu)", a->machine.mem_mib, VMM_MIN_MEMORY_MIB_FLAT,
					     (unsigned long long)VMM_MAX_MEMORY_MIB), 400;
		cfg->cpus = a->machine.cpus;
		cfg->memory_mib = a->machine.mem_mib;
		return 204;
	case API_PUT_DRIVE:
		return put_drive(cfg, a, err);
	case API_PATCH_DRIVE:
		return patch_drive(m, a, err);
	case API_PUT_NET:
		return put_net(m, a, err);
	case API_PATCH_NET:
		return patch_net(m, a, err);
	case API_PUT_VSOCK:
		if (a->vsock.guest_cid >= UINT32_MAX)
			return cella_err_set(err, EINVAL, "vsock.guest_cid: %u is reserved", a->vsock.guest_cid), 400;
		if (strlen(a->vsock.uds_path) > VMM_VSOCK_UDS_MAX)
			return cella_err_set(err, ENAMETOOLONG, "vsock.uds_path: %zu bytes, at most %d (room is kept for "
					     "\"_PORT\")", strlen(a->vsock.uds_path), VMM_VSOCK_UDS_MAX), 400;
		free(cfg->vsock_uds);
		cfg->vsock_uds = TAKE_PTR(a->vsock.uds_path);
		cfg->vsock_cid = a->vsock.guest_cid;
		return 204;
	case API_INSTANCE_START:
		if (!cfg->kernel)
			return cella_err_set(err, EINVAL, "InstanceStart: no kernel configured (PUT /boot-source first)"),
			       400;
		if (vm_boot(m, err) < 0)
			return m->vm ? 500 : 400;
		log_info("VM started by the API: %u vCPU(s), %" PRIu64 " MiB", cfg->cpus, cfg->memory_mib);
		return 204;
	case API_SEND_CTRL_ALT_DEL: {
		int r = i8042_send_ctrl_alt_del(m->vm->i8042);
		if (r < 0)
			return cella_err_set(err, -r, "SendCtrlAltDel: the guest has not read the previous "
					     "Ctrl+Alt+Del yet"), 409;
		return 204;
	}
	case API_PAUSE:
		if (vm_pause(m->vm, err) < 0)
			return 500;
		m->state = API_STATE_PAUSED;
		return 204;
	case API_RESUME:
		if (vm_resume(m->vm, err) < 0)
			return 500;
		m->state = API_STATE_RUNNING;
		return 204;
	case API_SNAPSHOT_CREATE: {
		struct vm_snapshot_stats st = { 0 };
		if (vm_snapshot_create(m->vm, a->snap.state_path, a->snap.mem_path, &st, err) < 0)
			return 400;
		log_info("snapshot written to %s + %s in %.3f ms (state %" PRIu64 " bytes, memory %" PRIu64 " MiB)",
			 a->snap.state_path, a->snap.mem_path, st.total_ns / 1e6, st.state_bytes, st.memory_bytes >> 20);
		return 204;
	}
	case API_SNAPSHOT_LOAD:
		return load_snapshot(m, a, err);
	case API_KIND_COUNT:
		break;
	}
	return cella_err_set(err, EINVAL, "unknown action"), 500;
}

static void handle_call(struct vmm *m, struct api_call *call)
{
	struct cella_err err = { 0 };
	char *body = NULL;
	int status = api_check_state(m->state, &call->action, &err);
	if (status == 0)
		status = do_action(m, &call->action, &body, &err);
	if (status >= 400) {
		log_debug("api: %s: %d %s", api_kind_name(call->action.kind), status, err.msg);
		free(body);
		body = api_fault_json(err.msg[0] ? err.msg : http_status_text(status));
	}
	api_chan_reply(api_server_chan(m->api), call, status, body);
}

/* --- the VMM thread's event loop --- */

#define INPUT_CHUNK 256

/* Reads one signal from the signalfd and acts on it; false when there was none. */
static bool take_signal(struct vmm *m)
{
	struct vm *vm = m->vm;
	struct signalfd_siginfo si;
	if (read(m->sig_fd, &si, sizeof(si)) != (ssize_t)sizeof(si))
		return false;
	if (si.ssi_signo == SNAPSHOT_SIGNAL) {
		/* --snapshot-dir; a VM the API paused is left to the API's snapshot/create */
		if (vm && m->state == API_STATE_RUNNING)
			snapshot_to_dir(vm, m->cfg->snapshot_dir);
		else
			log_warn("snapshot signal ignored: the VM is %s", api_state_name(m->state));
		return true;
	}
	log_info("stopping the VM: %s", strsignal((int)si.ssi_signo));
	if (vm)
		vm_request_end(vm, VMM_SIGNALED, (int)si.ssi_signo, "stopped by signal %s", strsignal((int)si.ssi_signo));
	else
		m->quit_signal = (int)si.ssi_signo;
	return true;
}

/* vCPU 0 on this thread (vcpu_here_fits) until the VM stops or the guest halts for good; the event
 * loop then waits for the end. */
static void run_vcpu_here(struct vmm *m)
{
	while (vcpu_run_here(&m->vm->vcpus[0]) == VCPU_HERE_SIGNAL)
		while (take_signal(m))
			;
}

/* Runs until the VM ends, or (before a VM exists) until a stop signal. */
static void event_loop(struct vmm *m)
{
	uint8_t pending[INPUT_CHUNK];
	size_t pending_len = 0;
	bool input = true;
	int api_fd = m->api ? api_server_chan(m->api)->wake_fd : -1;

	for (;;) {
		struct vm *vm = m->vm;
		if (vm ? atomic_load(&vm->stopping) : m->quit_signal != 0)
			break;
		/* Console input only reaches a running guest. */
		bool feed = vm && m->state == API_STATE_RUNNING && input && m->con.in_fd >= 0;
		/* Hand over what was read but did not fit; read more only when it all fit. */
		if (feed && pending_len) {
			size_t n = serial_8250_receive(vm->serial, pending, pending_len);
			m->console_rx += n;
			memmove(pending, pending + n, pending_len - n);
			pending_len -= n;
		}
		struct pollfd fds[4] = {
			{ .fd = vm ? vm->wake_fd : -1, .events = POLLIN },
			{ .fd = m->sig_fd, .events = POLLIN },
			{ .fd = feed && !pending_len ? m->con.in_fd : -1, .events = POLLIN },
			{ .fd = api_fd, .events = POLLIN },
		};
		int n = poll(fds, 4, feed && pending_len ? 20 : -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("event loop: poll: %s", strerror(errno));
			if (!vm) {
				m->quit_signal = SIGTERM;
				break;
			}
			vm_request_end(vm, VMM_FAILED, 0, "event loop: poll: %s", strerror(errno));
			break;
		}
		if (fds[0].revents & POLLIN) {
			uint64_t v;
			if (read(vm->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_debug("wake fd: %s", strerror(errno));
		}
		if (fds[1].revents & POLLIN)
			take_signal(m);
		if (fds[2].revents & (POLLIN | POLLHUP | POLLERR)) {
			size_t room = serial_8250_rx_room(vm->serial);
			if (room == 0) {
				pending_len = 0; /* nothing read: wait for the guest to drain (woken by host_wake) */
			} else {
				ssize_t got = read(m->con.in_fd, pending, room < sizeof(pending) ? room : sizeof(pending));
				if (got > 0) {
					pending_len = (size_t)got;
				} else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
					log_debug("console input: %s", got == 0 ? "end of file" : strerror(errno));
					input = false;
				}
			}
		}
		if (fds[3].revents & POLLIN) {
			struct api_call *call = api_chan_take(api_server_chan(m->api));
			if (call)
				handle_call(m, call);
		}
	}
}

int vmm_run(struct vmm_config *cfg, struct vmm_result *res, struct cella_err *err)
{
	memset(res, 0, sizeof(*res));
	struct vmm m = { .cfg = cfg, .con = { .out_fd = -1, .in_fd = -1 }, .sig_fd = -1, .start_ns = cella_now_ns() };
	vmm_config_init(&m.saved);
	sigset_t stop_sigs, old_mask;
	sigemptyset(&stop_sigs);
	sigaddset(&stop_sigs, SIGINT);
	sigaddset(&stop_sigs, SIGTERM);
	sigaddset(&stop_sigs, SIGHUP);
	sigaddset(&stop_sigs, SIGQUIT);
	sigaddset(&stop_sigs, SIGPIPE);
	if (cfg->snapshot_dir)
		sigaddset(&stop_sigs, SNAPSHOT_SIGNAL);
	bool stopped = true;
	int r = 0;

	/* Termination signals arrive through a signalfd; the API and vCPU threads inherit the blocked mask. */
	pthread_sigmask(SIG_BLOCK, &stop_sigs, &old_mask);
	sigset_t sfd_sigs = stop_sigs;
	sigdelset(&sfd_sigs, SIGPIPE); /* broken console pipe: writes fail with EPIPE instead */
	m.sig_fd_set = sfd_sigs;
	m.sig_fd = signalfd(-1, &sfd_sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (m.sig_fd < 0) {
		r = cella_err_sys(err, errno, "signalfd");
		goto out;
	}
	if (cfg->api_sock && (r = api_server_start(cfg->api_sock, &m.api, err)) < 0)
		goto out;

	/* Without an API there is nothing to wait for; with one, a kernel or snapshot given up front
	 * starts at once. */
	if (!m.api || cfg->kernel || cfg->restore_state) {
		r = vm_boot(&m, err);
		if (r < 0 && !m.vm)
			goto out;
		r = 0; /* the VM existed: its end is the result */
	} else {
		log_info("waiting for configuration on %s", cfg->api_sock);
	}
	if (m.vm && m.vm->vcpus[0].here)
		run_vcpu_here(&m);
	event_loop(&m);
	m.state = API_STATE_ENDED;
	if (m.api)
		api_chan_close(api_server_chan(m.api));
	if (m.vm) {
		stopped = vcpus_stop(m.vm);
		pthread_mutex_lock(&m.vm->end_lock);
		res->outcome = m.vm->outcome;
		res->signal = m.vm->end_signal;
		snprintf(res->reason, sizeof(res->reason), "%s", m.vm->end_reason);
		pthread_mutex_unlock(&m.vm->end_lock);
		res->boot_timer_ns = boot_timer_elapsed_ns(m.vm->boot_timer);
	} else {
		res->outcome = VMM_SIGNALED;
		res->signal = m.quit_signal;
		snprintf(res->reason, sizeof(res->reason), "stopped by signal %s before the VM started",
			 strsignal(m.quit_signal));
	}
out:
	console_close(&m.con);
	api_server_stop(m.api);
	if (m.sig_fd >= 0)
		close(m.sig_fd);
	/* Drop termination signals that arrived while we were stopping, then unblock. */
	struct timespec zero = { 0 };
	while (sigtimedwait(&stop_sigs, NULL, &zero) > 0)
		;
	pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
	if (!stopped) {
		/* A vCPU thread is stuck in the kernel: its kvm_run, the devices it may call and the VM must
		 * outlive it. Leave them to process exit rather than hang or free memory in use. */
		res->abandoned = true;
		if (cfg->vsock_uds)
			unlink(cfg->vsock_uds); /* the one thing process exit would not clean up */
		return 0;
	}
	if (m.vm)
		vm_destroy(m.vm);
	restore_done(&m);
	return r;
}
