/* Internal to libcella-vmm: the VM object shared by the VMM thread, the vCPU threads and devices.
 *
 * Threads: the VMM thread (vmm_run's caller) sets everything up, then runs the event loop (console
 * input, signals, the "VM ended" notification) and tears down; one thread per vCPU runs KVM_RUN and
 * dispatches exits to the buses. A vCPU never tears anything down: it records why the VM ends
 * (vm_request_end) and the VMM thread stops the others. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/bus.h"
#include "vmm/virtio/mmio.h"
#include "vmm/hw/hw.h"
#include "vmm/vmm.h"

#define VMM_MAX_VIRTIO 16

struct kvm_run;
struct kvm_cpuid2;
struct x86_boot_entry;

struct vcpu {
	struct vm *vm;
	unsigned index;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	bool thread_started;
};

struct vm {
	/* KVM */
	int kvm_fd, vm_fd;
	size_t vcpu_mmap_size;
	struct kvm_cpuid2 *cpuid; /* supported table; per-vCPU tables are derived from it */

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
	struct virtio_mmio *rng;   /* --rng */
	/* Every virtio-mmio transport, in registration order (vm_add_virtio): snapshots, pause and
	 * restore walk this list. */
	struct vm_virtio {
		struct virtio_mmio *t;
		uint64_t base;
		const char *name;
	} virtio[VMM_MAX_VIRTIO];
	unsigned nvirtio;
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

/* vm.c */
/* Opens the KVM device and checks the API version and capabilities the VMM needs. */
int vm_open_kvm(struct vm *vm, const char *path, unsigned ncpus, struct cella_err *err);
/* Creates the VM: TSS and identity map, in-kernel irqchip and PIT, guest memory slots. */
int vm_create(struct vm *vm, struct cella_err *err);
/* Maps guest RAM (anonymous, MAP_NORESERVE). */
int vm_alloc_ram(struct vm *vm, uint64_t size, struct cella_err *err);
int vm_set_irq(struct vm *vm, unsigned irq, int level);
/* Puts a virtio-mmio transport on the MMIO bus at base and in vm->virtio (snapshots find it there).
 * name ("virtio-blk0") must outlive the VM and be unique: it names the device's snapshot section. */
int vm_add_virtio(struct vm *vm, struct virtio_mmio *t, uint64_t base, const char *name, struct cella_err *err);
void vm_close(struct vm *vm);

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
/* Kicks one vCPU out of KVM_RUN (immediate_exit + signal); its thread then checks stopping/pause_req. */
void vcpu_kick(struct vcpu *v);
/* Asks every vCPU to leave KVM_RUN and joins the threads; never blocks for long. false = some
 * vCPU thread would not stop (logged) and still uses its kvm_run and the VM. */
bool vcpus_stop(struct vm *vm);
void vcpu_destroy(struct vcpu *vcpu);
