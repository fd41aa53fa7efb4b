/* Internal to libcella-vmm: pause, resume, snapshot and restore of a running VM (issue 6).
 *
 * Who calls what: the VMM thread (its event loop; the API thread hands it typed actions) calls
 * vm_pause / vm_resume / vm_snapshot_create. Never from a vCPU thread. Restore happens in a fresh
 * process inside vmm_run when cfg->restore_state is set (cella-vmm --restore DIR, or the API's
 * PUT /snapshot/load filling those fields before start).
 *
 * A snapshot is two files: the state file (snapfile.h: versioned, CRC'd sections — the VM config as
 * JSON, every vCPU's registers, the in-kernel irqchip/PIT/clock, every device) and the memory file
 * (guest RAM, byte for byte, sparse where RAM is zero). Restore maps the memory file MAP_PRIVATE, so
 * pages fault in lazily and the files are never written; one snapshot restores any number of
 * identical clones. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct vm;
struct cella_err;
struct snap_file;
struct vmm_config;

/* Stops every vCPU at an instruction boundary: each leaves KVM_RUN (kick signal + immediate_exit,
 * after KVM completed any pending I/O exit) and parks. Returns once all are parked, then quiesces the
 * virtio devices (their pause hook). Idempotent. -ESHUTDOWN when the VM is ending, -ETIMEDOUT when a
 * vCPU would not park within a few seconds (the VM is then resumed). */
int vm_pause(struct vm *vm, struct cella_err *err);
/* Restarts devices and vCPUs. Idempotent. */
int vm_resume(struct vm *vm, struct cella_err *err);
bool vm_is_paused(struct vm *vm);

struct vm_snapshot_stats {
	uint64_t state_bytes;  /* size of the state file */
	uint64_t memory_bytes; /* guest RAM size (the file may be sparse) */
	uint64_t written_bytes; /* RAM bytes actually written (non-zero pages) */
	uint64_t total_ns;     /* from the call to both files in place */
};

/* Writes the state file and the memory file (each through PATH.tmp + rename, so a snapshot being
 * written never clobbers the one a VM was restored from). The VM must be paused (-EBUSY otherwise)
 * and stays paused. stats may be NULL. */
int vm_snapshot_create(struct vm *vm, const char *state_path, const char *mem_path,
		       struct vm_snapshot_stats *stats, struct cella_err *err);

/* Restore steps, in vmm_run's order (a fresh process; nothing has run yet):
 * vm_restore_open: reads and checks the state file (snapfile.h) and the VM config saved in it.
 * vm_restore_memory: maps the memory file as guest RAM (its size must be exactly size).
 * vm_restore_vcpus: after the VM and its vCPUs exist: every vCPU's state, then PIT and irqchips.
 * vm_restore_devices: after the devices are on their buses: their state; they reattach backends.
 * Then x86_vm_load_clock right before the vCPUs start. Errors name the file, section and problem. */
int vm_restore_open(const char *state_path, struct snap_file *f, struct vmm_config *saved, struct cella_err *err);
int vm_restore_memory(struct vm *vm, const char *mem_path, uint64_t size, struct cella_err *err);
int vm_restore_vcpus(struct vm *vm, const struct snap_file *f, struct cella_err *err);
int vm_restore_devices(struct vm *vm, const struct snap_file *f, struct cella_err *err);

