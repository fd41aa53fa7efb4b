/* Pause, resume, snapshot and restore (snapshot.h). */
#include "vmm/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/snapfile.h"
#include "vmm/vm.h"
#include "vmm/x86/state.h"

/* --- pause / resume --- */

#define PAUSE_KICK_MS 20
#define PAUSE_GIVE_UP_MS 5000

static void devices_pause(struct vm *vm, bool pause)
{
	if (vm->devices_paused == pause)
		return;
	/* I/O threads held first: then no queue work is in flight while the hooks run */
	if (pause)
		vm_virtio_quiesce(vm, true);
	for (unsigned i = 0; i < vm->nvirtio; i++) {
		struct virtio_mmio *t = &vm->virtio[i]->t;
		void (*hook)(void *) = pause ? t->ops->pause : t->ops->resume;
		if (hook)
			hook(t->dev);
	}
	if (!pause)
		vm_virtio_quiesce(vm, false);
	vm->devices_paused = pause;
}

bool vm_is_paused(struct vm *vm)
{
	pthread_mutex_lock(&vm->pause_lock);
	bool paused = atomic_load(&vm->pause_req) && vm->nparked == vm->nrunning;
	pthread_mutex_unlock(&vm->pause_lock);
	return paused;
}

int vm_pause(struct vm *vm, struct cella_err *err)
{
	if (atomic_load(&vm->stopping))
		return cella_err_set(err, ESHUTDOWN, "pause: the VM is shutting down");
	atomic_store(&vm->pause_req, true);
	pthread_mutex_lock(&vm->pause_lock);
	unsigned waited = 0;
	while (vm->nparked < vm->nrunning && !atomic_load(&vm->stopping) && waited < PAUSE_GIVE_UP_MS) {
		/* Kick again now and then: a kick that lands between a vCPU's check and its KVM_RUN is lost. */
		if (waited % PAUSE_KICK_MS == 0)
			for (unsigned i = 0; i < vm->ncpus; i++)
				vcpu_kick(&vm->vcpus[i]);
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += 2 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&vm->pause_cond, &vm->pause_lock, &ts);
		waited += 2;
	}
	bool parked = vm->nparked == vm->nrunning;
	pthread_mutex_unlock(&vm->pause_lock);
	if (atomic_load(&vm->stopping)) {
		vm_resume(vm, NULL);
		return cella_err_set(err, ESHUTDOWN, "pause: the VM is shutting down");
	}
	if (!parked) {
		vm_resume(vm, NULL);
		return cella_err_set(err, ETIMEDOUT, "pause: a vCPU did not stop within %d ms", PAUSE_GIVE_UP_MS);
	}
	devices_pause(vm, true);
	return 0;
}

int vm_resume(struct vm *vm, struct cella_err *err)
{
	devices_pause(vm, false);
	pthread_mutex_lock(&vm->pause_lock);
	atomic_store(&vm->pause_req, false);
	pthread_cond_broadcast(&vm->pause_cond);
	pthread_mutex_unlock(&vm->pause_lock);
	return 0;
}

/* --- snapshot --- */

#define CHUNK (2u << 20)
#define PAGE 4096u

static bool page_is_zero(const uint8_t *p)
{
	const uint64_t *q = (const uint64_t *)p;
	for (unsigned i = 0; i < PAGE / 8; i += 8)
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7])
			return false;
	return true;
}

/* Guest RAM to a sparse file: pages never touched (not resident in anonymous RAM) and all-zero pages
 * stay holes, so the file costs what the guest used and restore reads zeros there for free. */
static int write_memory(struct vm *vm, const char *path, uint64_t *written, struct cella_err *err)
{
	_cleanup_free_ char *tmp = cella_strdup_printf("%s.tmp", path);
	if (!tmp)
		return cella_err_set(err, ENOMEM, "out of memory");
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return cella_err_sys(err, errno, "memory file %s", tmp);
	int r = 0;
	if (ftruncate(fd, (off_t)vm->ram_size) < 0) {
		r = cella_err_sys(err, errno, "memory file %s: ftruncate to %" PRIu64 " bytes", tmp, vm->ram_size);
		goto fail;
	}
	unsigned char vec[CHUNK / PAGE];
	*written = 0;
	for (uint64_t off = 0; off < vm->ram_size; off += CHUNK) {
		uint64_t len = vm->ram_size - off < CHUNK ? vm->ram_size - off : CHUNK;
		size_t pages = (size_t)((len + PAGE - 1) / PAGE);
		/* mincore tells which anonymous pages exist; a file-backed (restored) RAM has data everywhere */
		if (vm->ram_from_file || mincore(vm->ram + off, len, vec) < 0)
			memset(vec, 1, pages);
		size_t run_start = 0, run_len = 0;
		for (size_t i = 0; i <= pages; i++) {
			bool data = i < pages && (vec[i] & 1) && !page_is_zero(vm->ram + off + i * PAGE);
			if (data) {
				if (!run_len)
					run_start = i;
				run_len++;
				continue;
			}
			if (!run_len)
				continue;
			uint64_t at = off + run_start * PAGE;
			uint64_t n = run_len * PAGE;
			if (at + n > vm->ram_size)
				n = vm->ram_size - at;
			for (uint64_t done = 0; done < n;) {
				ssize_t w = pwrite(fd, vm->ram + at + done, n - done, (off_t)(at + done));
				if (w < 0 && errno == EINTR)
					continue;
				if (w <= 0) {
					r = cella_err_sys(err, w < 0 ? errno : EIO, "memory file %s: write", tmp);
					goto fail;
				}
				done += (uint64_t)w;
			}
			*written += n;
			run_len = 0;
		}
	}
	if (rename(tmp, path) < 0) {
		r = cella_err_sys(err, errno, "rename %s to %s", tmp, path);
		goto fail;
	}
	return 0;
fail:
	unlink(tmp);
	return r;
}

static void save_devices(struct vm *vm, struct snap_writer *w)
{
	snap_begin(w, "dev.serial");
	serial_8250_save(vm->serial, w);
	snap_begin(w, "dev.i8042");
	i8042_save(vm->i8042, w);
	snap_begin(w, "dev.acpi-pm");
	acpi_pm_save(vm->acpi_pm, w);
	snap_begin(w, "dev.boot-timer");
	boot_timer_save(vm->boot_timer, w);
	snap_begin(w, "dev.legacy");
	legacy_save(vm->legacy, w);
	if (vm->debug_device) {
		snap_begin(w, "dev.debug");
		debug_device_save(vm->debug_device, w);
	}
	snap_end(w);
}

int vm_snapshot_create(struct vm *vm, const char *state_path, const char *mem_path,
		       struct vm_snapshot_stats *stats, struct cella_err *err)
{
	uint64_t t0 = cella_now_ns();
	if (!vm_is_paused(vm))
		return cella_err_set(err, EBUSY, "snapshot: the VM must be paused first");
	/* Paused by a restore (restore_paused) rather than vm_pause: hold the devices too. */
	devices_pause(vm, true);
	struct snap_writer w;
	snap_writer_init(&w);
	struct x86_msr_list msrs = { 0 };
	char *json = NULL;
	uint64_t written = 0;

	/* A virtio device put on the bus without vm_add_virtio would be silently left out. */
	for (size_t i = 0; i < vm->mmio.n; i++) {
		const struct bus_range *b = &vm->mmio.ranges[i];
		bool known = b->ops != &virtio_mmio_ops;
		for (unsigned j = 0; j < vm->nvirtio && !known; j++)
			known = &vm->virtio[j]->t == b->opaque;
		if (!known)
			return cella_err_set(err, ENOTSUP, "snapshot: %s is not registered for snapshots (vm_add_virtio)",
					     b->name);
	}
	/* The saved config says whether the machine has a PIT (a Linux guest gets one without asking). */
	struct vmm_config cfg = *vm->cfg;
	cfg.pit = vm->has_pit;
	int r = vmm_config_to_json(&cfg, &json, err);
	if (r < 0)
		goto out;
	snap_begin(&w, "vm.meta");
	snap_put_u32(&w, vm->ncpus);
	snap_put_u64(&w, vm->ram_size);
	snap_begin(&w, "config");
	snap_put(&w, json, strlen(json));
	snap_end(&w);

	if ((r = x86_msr_list(vm->kvm_fd, &msrs, err)) < 0)
		goto out;
	for (unsigned i = 0; i < vm->ncpus && r == 0; i++)
		r = x86_vcpu_save(vm->vcpus[i].fd, vm->vm_fd, i, &msrs, &w, err);
	if (r == 0)
		r = x86_vm_save(vm->vm_fd, vm->has_pit, &w, err);
	if (r < 0)
		goto out;
	save_devices(vm, &w);
	for (unsigned i = 0; i < vm->nvirtio && r == 0; i++) {
		snap_begin(&w, "virtio.%s", vm->virtio[i]->name);
		snap_put_u64(&w, vm->virtio[i]->base);
		r = virtio_mmio_save(&vm->virtio[i]->t, &w, err);
		snap_end(&w);
	}
	if (r < 0)
		goto out;
	/* Memory first, state last: a state file in place means the memory file beside it is complete. */
	if ((r = write_memory(vm, mem_path, &written, err)) < 0)
		goto out;
	if ((r = snap_writer_finish(&w, state_path, err)) < 0)
		goto out;
	if (stats)
		*stats = (struct vm_snapshot_stats){ .state_bytes = w.len + SNAP_HEADER_BYTES, .memory_bytes = vm->ram_size,
						     .written_bytes = written, .total_ns = cella_now_ns() - t0 };
out:
	if (r < 0)
		cella_err_wrap(err, "snapshot");
	free(json);
	x86_msr_list_free(&msrs);
	snap_writer_free(&w);
	return r;
}

/* --- restore --- */

int vm_restore_open(const char *state_path, struct snap_file *f, struct vmm_config *saved, struct cella_err *err)
{
	int r = snap_file_open(f, state_path, err);
	if (r < 0)
		return r;
	struct snap_sec s;
	if ((r = snap_need(f, &s, err, "config")) < 0)
		goto fail;
	if ((r = vmm_config_from_json_text(saved, (const char *)s.p, s.len, "state file: config", err)) < 0)
		goto fail;
	if ((r = snap_need(f, &s, err, "vm.meta")) < 0)
		goto fail;
	uint32_t ncpus = snap_get_u32(&s);
	uint64_t ram = snap_get_u64(&s);
	if ((r = snap_sec_done(&s, err)) < 0)
		goto fail;
	if (ncpus != saved->cpus || ram != saved->memory_mib << 20) {
		r = cella_err_set(err, EINVAL, "state file %s: %u vCPUs and %" PRIu64 " bytes of RAM disagree with its "
				  "config (%u vCPUs, %" PRIu64 " MiB)", state_path, ncpus, ram, saved->cpus, saved->memory_mib);
		goto fail;
	}
	return 0;
fail:
	snap_file_close(f);
	return r;
}

int vm_restore_memory(struct vm *vm, const char *mem_path, uint64_t size, struct cella_err *err)
{
	_cleanup_close_ int fd = open(mem_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cella_err_sys(err, errno, "memory file %s", mem_path);
	struct stat st;
	if (fstat(fd, &st) < 0)
		return cella_err_sys(err, errno, "memory file %s", mem_path);
	if (!S_ISREG(st.st_mode))
		return cella_err_set(err, EINVAL, "memory file %s: not a regular file", mem_path);
	if ((uint64_t)st.st_size != size)
		return cella_err_set(err, EINVAL, "memory file %s: %" PRIu64 " bytes, the snapshot's guest has %" PRIu64
				     " (%s)", mem_path, (uint64_t)st.st_size, size,
				     (uint64_t)st.st_size < size ? "truncated" : "not this snapshot's memory");
	/* Private: the guest's writes stay in this process, the file is never modified, pages fault in
	 * from the page cache on first touch. */
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
	if (p == MAP_FAILED)
		return cella_err_sys(err, errno, "memory file %s: mmap", mem_path);
	madvise(p, size, MADV_DONTDUMP);
	vm->ram = p;
	vm->ram_size = size;
	vm->ram_from_file = true;
	return 0;
}

int vm_restore_vcpus(struct vm *vm, const struct snap_file *f, struct cella_err *err)
{
	for (unsigned i = 0; i < vm->ncpus; i++) {
		int r = x86_vcpu_load(vm->vcpus[i].fd, vm->vm_fd, i, f, err);
		if (r < 0)
			return r;
	}
	struct snap_sec s;
	if (snap_find(f, &s, "vcpu%u.regs", vm->ncpus) == 1)
		return cella_err_set(err, EINVAL, "state file: holds more than the %u vCPUs its config says", vm->ncpus);
	return x86_vm_load(vm->vm_fd, f, err);
}

struct virtio_count {
	struct vm *vm;
	unsigned n;
	const char *unknown;
};

static int count_virtio(struct snap_sec *s, void *ctx)
{
	struct virtio_count *c = ctx;
	c->n++;
	for (unsigned i = 0; i < c->vm->nvirtio; i++)
		if (!strcmp(s->name + strlen("virtio."), c->vm->virtio[i]->name))
			return 0;
	c->unknown = s->name;
	return -1;
}

typedef int (*load_fn)(void *dev, struct snap_sec *s, struct cella_err *err);

/* Each chip's load takes its own type: adapt them to one signature. */
#define LOADER(name, type) \
	static int load_##name(void *dev, struct snap_sec *s, struct cella_err *err) \
	{ \
		return name##_load((type *)dev, s, err); \
	}
LOADER(serial_8250, struct serial_8250)
LOADER(i8042, struct i8042)
LOADER(acpi_pm, struct acpi_pm)
LOADER(boot_timer, struct boot_timer)
LOADER(legacy, struct legacy)
LOADER(debug_device, struct debug_device)

static int load_one(const struct snap_file *f, const char *name, void *dev, load_fn fn, struct cella_err *err)
{
	struct snap_sec s;
	int r = snap_need(f, &s, err, "%s", name);
	if (r == 0)
		r = fn(dev, &s, err);
	if (r == 0)
		r = snap_sec_done(&s, err);
	return r < 0 ? cella_err_wrap(err, "restoring %s", name) : 0;
}

int vm_restore_devices(struct vm *vm, const struct snap_file *f, struct cella_err *err)
{
	int r;
	if ((r = load_one(f, "dev.serial", vm->serial, load_serial_8250, err)) < 0 ||
	    (r = load_one(f, "dev.i8042", vm->i8042, load_i8042, err)) < 0 ||
	    (r = load_one(f, "dev.acpi-pm", vm->acpi_pm, load_acpi_pm, err)) < 0 ||
	    (r = load_one(f, "dev.boot-timer", vm->boot_timer, load_boot_timer, err)) < 0 ||
	    (r = load_one(f, "dev.legacy", vm->legacy, load_legacy, err)) < 0)
		return r;
	if (vm->debug_device &&
	    (r = load_one(f, "dev.debug", vm->debug_device, load_debug_device, err)) < 0)
		return r;
	struct snap_sec dbg;
	if (!vm->debug_device && snap_find(f, &dbg, "dev.debug") == 1)
		return cella_err_set(err, EINVAL, "the snapshot's VM had the debug device: restore with --debug-device");
	struct virtio_count c = { .vm = vm };
	if (snap_each(f, "virtio.", count_virtio, &c) < 0 || c.n != vm->nvirtio)
		return cella_err_set(err, EINVAL, "state file: %s%s", c.unknown ? "no device for section " : "",
				     c.unknown ? c.unknown : "virtio devices differ from the config");
	for (unsigned i = 0; i < vm->nvirtio; i++) {
		struct snap_sec s;
		if ((r = snap_need(f, &s, err, "virtio.%s", vm->virtio[i]->name)) < 0)
			return r;
		uint64_t base = snap_get_u64(&s);
		if (base != vm->virtio[i]->base)
			return cella_err_set(err, EINVAL, "state file: %s at 0x%" PRIx64 ", this VM has it at 0x%" PRIx64,
					     vm->virtio[i]->name, base, vm->virtio[i]->base);
		if ((r = virtio_mmio_load(&vm->virtio[i]->t, &s, err)) < 0 || (r = snap_sec_done(&s, err)) < 0)
			return cella_err_wrap(err, "restoring %s", vm->virtio[i]->name);
	}
	/* A notification the old process had not served yet (its I/O thread was held by the pause) died
	 * with it, and the guest will not repeat it: one extra kick per ready queue (the spec allows
	 * spurious ones) serves whatever the avail rings hold once the I/O threads run. */
	for (unsigned i = 0; i < vm->nvirtio; i++) {
		struct virtio_slot *sl = vm->virtio[i];
		for (unsigned q = 0; q < sl->t.ops->nqueues; q++) {
			if (!sl->t.q[q].ready)
				continue;
			uint64_t one = 1;
			if (sl->kick_fd[q] >= 0) {
				if (write(sl->kick_fd[q], &one, sizeof(one)) < 0)
					log_debug("%s: kick after restore: %s", sl->name, strerror(errno));
			} else {
				virtio_mmio_kick(&sl->t, q);
			}
		}
	}
	return 0;
}
