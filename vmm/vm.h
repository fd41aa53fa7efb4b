/* Internal to libcella-vmm: the VM object shared by the VMM thread, the vCPU threads and devices.
 *
 * Threads: the VMM thread (vmm_run's caller) sets everything up, then runs the event loop (console
 * input, signals, the "VM ended" notification) and tears down; one thread per vCPU runs KVM_RUN and
 * dispatches exits to the buses. A vCPU never tears anything down: it records why the VM ends
 * (vm_request_end) and the VMM thread stops the others. */
#pragma once
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/bus.h"
#include "vmm/virtio/mmio.h"
#include "vmm/hw/hw.h"
#include "vmm/vmm.h"

struct iothread;
struct kvm_run;
struct kvm_cpuid2;
struct x86_boot_entry;

/* vCPU exits by kind, for GET /metrics (vcpu.c counts, relaxed atomics). */
enum vcpu_exit_kind {
	VCPU_EXIT_IO,
	VCPU_EXIT_MMIO,
	VCPU_EXIT_HLT,
	VCPU_EXIT_INTR,       /* KVM_EXIT_INTR, IRQ window */
	VCPU_EXIT_SHUTDOWN,   /* triple fault */
	VCPU_EXIT_SYSTEM_EVENT,
	VCPU_EXIT_FAILURE,    /* FAIL_ENTRY, INTERNAL_ERROR */
	VCPU_EXIT_OTHER,
	VCPU_EXIT_KINDS,
};
extern const char *const vcpu_exit_kind_names[VCPU_EXIT_KINDS];

struct vcpu {
	atomic_uint_fast64_t exits[VCPU_EXIT_KINDS];
	atomic_uint_fast64_t kicks; /* KVM_RUN returned EINTR (a kick or a stray signal) */
	struct vm *vm;
	unsigned index;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;       /* for a vCPU run here (vcpu_here_init), the VMM thread */
	bool thread_started;
	bool here;              /* runs on the VMM thread (vcpu_run_here), not a thread of its own */
};

/* One virtio-mmio device of the VM (vdev.c): slot i sits at VMM_VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE
 * with its own GSI, and is announced in the DSDT. */
struct virtio_slot {
	struct virtio_mmio t;
	struct vm *vm;
	char name[32];           /* "virtio-blk0": unique, names the device's snapshot section */
	uint64_t base;
	unsigned gsi;
	struct iothread *io;     /* where the device's work runs (shared or its own) */
	bool own_io;
	int irq_fd;              /* KVM_IRQFD eventfd, or -1 (KVM_IRQ_LINE) */
	int kick_fd[VIRTIO_MMIO_MAX_QUEUES];
	bool ioeventfd[VIRTIO_MMIO_MAX_QUEUES]; /* kick_fd[q] registered with KVM_IOEVENTFD */
	struct virtio_kick {
		struct virtio_slot *slot;
		unsigned q;
	} kick[VIRTIO_MMIO_MAX_QUEUES];
	void *dev;
	void (*dev_free)(void *dev);
};

struct vm {
	/* KVM */
	int kvm_fd, vm_fd;
	bool has_ioeventfd, has_irqfd; /* KVM_CAP_IOEVENTFD, KVM_CAP_IRQFD */
	size_t vcpu_mmap_size;
	struct kvm_cpuid2 *cpuid; /* supported table; per-vCPU tables are derived from it */
	bool has_xcrs;            /* KVM_CAP_XCRS: vCPUs start with XCR0 set (x86_setup_xcr0) */
	bool has_pit;             /* in-kernel PIT: Linux guests, cfg->pit, or a snapshot that saved one */
	/* In-kernel PIC/IOAPIC/LAPIC. A lone flat binary goes without: tearing the irqchip down costs ~5 ms
	 * on kvm_pvm. Without it interrupt lines go nowhere and HLT parks the vCPU until the VM stops. */
	bool has_irqchip;

	/* guest memory: one host mapping; guest-physical [0, low) and, above the MMIO gap, [4G, 4G+high) */
	uint8_t *ram;
	uint64_t ram_size;

	const struct vmm_config *cfg; /* what the VM was made from (saved in snapshots) */
	unsigned ncpus;
	struct vcpu vcpus[VMM_MAX_CPUS];

	struct bus pio, mmio;
	struct hw_host host;
	struct serial_8250 *serial;
	struct i8042 *i8042;
	struct acpi_pm *acpi_pm;
	struct boot_timer *boot_timer;
	struct legacy *legacy;
	struct debug_device *debug_device;
	struct vq_mem gmem;        /* guest RAM as virtio queues see it */
	struct virtio_slot *virtio[VMM_MAX_VIRTIO_DEVS]; /* in slot order */
	unsigned nvirtio;          /* snapshots, pause and restore walk virtio[0..nvirtio) */
	uint32_t gsi_used;         /* IOAPIC pins taken (bit n = GSI n) */
	struct iothread *io;       /* the shared I/O thread; NULL until a device asks for it */
	bool ram_from_file; /* restored: ram is a MAP_PRIVATE mapping of the snapshot's memory file */

	uint64_t start_ns;
	int wake_fd;            /* eventfd: the VMM thread's event loop wakes on it */
	atomic_bool stopping;   /* vCPUs leave their loop when set */

	/* Pause (snapshot.c): vCPU threads park on pause_cond while pause_req is set. */
	pthread_mutex_t pause_lock;
	pthread_cond_t pause_cond;   /* vCPUs wait here while parked; vm_pause waits here for them */
	atomic_bool pause_req;
	unsigned nparked;            /* vCPU threads parked */
	unsigned nrunning;           /* vCPU threads started and not yet returned */
	bool devices_paused;

	pthread_mutex_t end_lock;
	bool ended;
	enum vmm_outcome outcome;
	int end_signal;
	char end_reason[256];
};

/* Guests with at least this much RAM get MADV_HUGEPAGE (see vm_alloc_ram). */
#define VM_HUGEPAGE_MIN (64ull << 20)

/* vm.c */
/* Opens the KVM device and checks the API version and capabilities the VMM needs. */
int vm_open_kvm(struct vm *vm, const char *path, unsigned ncpus, struct cella_err *err);
/* Creates the VM: TSS and identity map, in-kernel irqchip, the PIT when vm->has_pit, guest memory slots. */
int vm_create(struct vm *vm, struct cella_err *err);
/* Maps guest RAM (anonymous, MAP_NORESERVE). */
int vm_alloc_ram(struct vm *vm, uint64_t size, struct cella_err *err);
int vm_set_irq(struct vm *vm, unsigned irq, int level);
void vm_close(struct vm *vm);
/* KVM_IOEVENTFD with datamatch (assign or deassign), KVM_IRQFD. 0 or -errno. */
int vm_ioeventfd(struct vm *vm, uint64_t addr, uint32_t len, uint64_t datamatch, int fd, bool assign);
int vm_irqfd(struct vm *vm, unsigned gsi, int fd, bool assign);

/* vdev.c: the VM's virtio-mmio devices */
/* Hands out a free IOAPIC line for a device (lines of the emulated chips and ISA legacy ones are
 * never given). */
int vm_alloc_gsi(struct vm *vm, unsigned *gsi, struct cella_err *err);
#define VDEV_OWN_THREAD 1u /* the device gets an I/O thread of its own (blocking disk I/O) */
/* Adds a virtio-mmio device in the next slot: a GSI, the transport, an eventfd per queue (KVM_IOEVENTFD
 * on QueueNotify when KVM has it) watched by the I/O thread, an irqfd (when KVM has it), the bus range.
 * dev and dev_free pass to the VM in every case: on failure dev_free(dev) has been called. The device
 * may watch more fds on slot->io (iothread_add) before vm_virtio_start. */
int vm_virtio_add(struct vm *vm, const struct virtio_dev_ops *ops, void *dev, void (*dev_free)(void *dev),
		  unsigned flags, struct virtio_slot **out, struct cella_err *err);
/* Holds (pause) or releases every I/O thread: when vm_virtio_quiesce(vm, true) returns no device
 * callback runs, so no device touches guest memory or raises an interrupt (snapshots). */
void vm_virtio_quiesce(struct vm *vm, bool pause);
/* Starts the I/O threads (after every device is added, before the vCPUs). */
int vm_virtio_start(struct vm *vm, struct cella_err *err);
/* Stops the I/O threads, unbinds eventfds from KVM, frees the devices (after the vCPUs stopped). */
void vm_virtio_free(struct vm *vm);

/* First caller wins; wakes the VMM thread. Safe from any thread. */
void vm_request_end(struct vm *vm, enum vmm_outcome outcome, int sig, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void vm_wake(struct vm *vm);

/* vcpu.c */
/* boot NULL: a bare vCPU whose state a restore sets. */
int vcpu_create(struct vm *vm, unsigned index, const struct x86_boot_entry *boot, struct cella_err *err);
/* Installs the kick signal handler (once per process). */
int vcpu_signals_init(struct cella_err *err);
int vcpus_start(struct vm *vm, struct cella_err *err);
/* The VMM thread as the vCPU's runner instead of a thread (see vcpu.c): KVM_RUN runs with the
 * signal mask run_blocked (minus the kick signal), so the others interrupt it. */
int vcpu_here_init(struct vcpu *v, const sigset_t *run_blocked, struct cella_err *err);
enum vcpu_here_result {
	VCPU_HERE_STOPPED, /* the VM is stopping */
	VCPU_HERE_SIGNAL,  /* KVM_RUN was interrupted: take the signals, then run again */
	VCPU_HERE_HALTED,  /* the guest halted for good (no irqchip): wait for the stop */
};
/* Runs the vCPU on the calling thread until one of the above. */
enum vcpu_here_result vcpu_run_here(struct vcpu *v);
/* Kicks one vCPU out of KVM_RUN (immediate_exit + signal); its thread then checks stopping/pause_req. */
void vcpu_kick(struct vcpu *v);
/* Asks every vCPU to leave KVM_RUN and joins the threads; never blocks for long. false = some
 * vCPU thread would not stop (logged) and still uses its kvm_run and the VM. */
bool vcpus_stop(struct vm *vm);
void vcpu_destroy(struct vcpu *vcpu);
