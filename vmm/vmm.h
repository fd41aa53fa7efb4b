/* libcella-vmm: a KVM micro-VM monitor. One call runs one VM from a config to its end:
 *
 *	struct vmm_config cfg; vmm_config_init(&cfg); ...fill...;
 *	struct vmm_result res; int r = vmm_run(&cfg, &res, &err);
 *
 * vmm_run returns a negative errno with err filled when the VM could not be set up (bad input, no
 * usable KVM): no guest ran. Otherwise it returns 0 and res says how the VM ended. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/ratelimit.h"

struct cella_err;

#define VMM_MAX_CPUS 32
#define VMM_MAX_MEMORY_MIB (1024ull * 1024) /* 1 TiB: anonymous memory is reserved lazily */
#define VMM_MIN_MEMORY_MIB_FLAT 1          /* flat test binaries run in the first MiB */
#define VMM_MIN_MEMORY_MIB_LINUX 32        /* below this no Linux kernel gets to its init */
#define VMM_DEFAULT_MEMORY_MIB 128
#define VMM_DEFAULT_CMDLINE "console=ttyS0 reboot=k panic=1"
#define VMM_MAX_KERNEL_BYTES (512ull << 20)
#define VMM_DEBUG_DEVICE_ADDR 0xd0000000ull /* --debug-device: a test-only MMIO scratch register */
/* virtio-mmio devices: slot i at VMM_VIRTIO_MMIO_BASE + i * 0x200, each on its own IOAPIC line (the
 * first device gets IRQ 5; see vm_alloc_gsi). */
#define VMM_VIRTIO_MMIO_BASE 0xd0001000ull
#define VMM_VSOCK_UDS_MAX 95 /* sun_path holds 108 bytes: room for "_4294967295" */
/* File names inside a snapshot directory (cella-vmm --snapshot-dir, --restore DIR). */
#define VMM_SNAPSHOT_STATE_FILE "state"
#define VMM_SNAPSHOT_MEMORY_FILE "memory"
#define VMM_MAX_VIRTIO_DEVS 16

#define VMM_MAX_DISKS 8
#define VMM_DISK_ID_MAX 20 /* virtio-blk GET_ID: 20 bytes */

/* --disk PATH[,ro][,id=NAME][,RATE-LIMIT...] / "disks": [{"path", "ro", "id", RATE-LIMIT...}] */
struct vmm_disk {
	char *path;
	char *id;   /* NULL = none (GET_ID answers UNSUPP) */
	bool ro;    /* VIRTIO_BLK_F_RO; the file is opened read-only */
	struct ratelimit_cfg rl;
};

/* Rate-limit settings shared by devices (disks now, network next), the same names on the command
 * line (KEY=VALUE) and in JSON ("KEY": number); sizes take K/M/G suffixes (1024-based) on the
 * command line:
 *	bw=BYTES           bandwidth bucket size, refilled every bw_refill_ms: BYTES per second by default
 *	bw_refill_ms=MS    (default 1000)
 *	bw_burst=BYTES     one-time burst on top of the bucket
 *	iops=N, iops_refill_ms=MS, iops_burst=N   the same for operations
 * Returns 1 when key is one of these (value stored), 0 when it is not. */
int vmm_ratelimit_set(struct ratelimit_cfg *rl, const char *key, uint64_t value);
/* The keys above, NULL-terminated (for JSON unknown-field checks). */
extern const char *const vmm_ratelimit_keys[];

#define VMM_MAX_NETS 4

/* --net tap=NAME[,mac=MAC][,RATE-LIMIT...] / "nets": [{"tap", "mac", RATE-LIMIT...}]. The rate-limit
 * keys are the disks' (vmm_ratelimit_keys; "iops" counts packets, "pps", "pps_refill_ms" and
 * "pps_burst" are accepted as its names too); each direction gets its own buckets of that size. */
struct vmm_net {
	char *tap;      /* TAP interface: created (and gone when the VMM exits) or attached if it exists */
	uint8_t mac[6]; /* the guest's; random locally administered when not given */
	struct ratelimit_cfg rl;
};

/* A restore override: the backend (disk path, TAP name) for the snapshot's device named id. */
struct vmm_override {
	char *id;
	char *value;
};

enum vmm_console {
	VMM_CONSOLE_STDIO, /* guest serial to stdout; stdin to the guest (raw mode on a tty) */
	VMM_CONSOLE_FILE,  /* guest serial appended to console_path; no input */
	VMM_CONSOLE_NONE,  /* guest serial dropped; no input */
};

struct vmm_config {
	char *kernel;       /* required */
	char *initrd;       /* NULL = none */
	char *cmdline;      /* NULL = VMM_DEFAULT_CMDLINE */
	unsigned cpus;      /* 1..VMM_MAX_CPUS */
	uint64_t memory_mib;
	enum vmm_console console;
	char *console_path; /* VMM_CONSOLE_FILE */
	char *kvm_device;   /* NULL = /dev/kvm */
	bool debug_device;  /* test-only MMIO device at VMM_DEBUG_DEVICE_ADDR */
	bool rng;           /* virtio-rng */
	/* In-kernel PIT (i8254) for a flat binary; Linux kernels always get one. Creating and destroying
	 * it costs tens of ms on some hosts, so tiny guests that never program it go without. */
	bool pit;
	struct vmm_disk disks[VMM_MAX_DISKS]; /* virtio-blk, in order (vda, vdb, ...) */
	unsigned ndisks;
	struct vmm_net nets[VMM_MAX_NETS]; /* virtio-net, in order (eth0, eth1, ...) */
	unsigned nnets;
	/* virtio-vsock, Firecracker-style hybrid: --vsock cid=N,uds=PATH / "vsock": {"cid": N, "uds": PATH}.
	 * The VMM listens on uds (host -> guest: "CONNECT <port>\n"); guest connections to host port P go to
	 * the unix socket "<uds>_P". */
	uint64_t vsock_cid; /* 0 = no vsock device */
	char *vsock_uds;

	/* Snapshots (issue 6, vmm/snapshot.h). Not part of the JSON config. */
	char *snapshot_dir;    /* SIGUSR2 pauses the VM, writes DIR/state and DIR/memory, resumes */
	char *restore_state;   /* non-NULL: restore from this state file instead of booting a kernel */
	char *restore_memory;  /* its memory file */
	bool restore_paused;   /* restored vCPUs stay paused until vm_resume */
	/* Restore overrides, so that clones of one snapshot can run side by side (Firecracker's
	 * network_overrides / vsock_override): another file for the disk with that id (or "vda".. by
	 * position), another TAP for the interface "eth<i>" (or named by its saved TAP), another vsock
	 * socket. An id the snapshot does not have is an error. */
	struct vmm_override restore_disks[VMM_MAX_DISKS];
	unsigned nrestore_disks;
	struct vmm_override restore_nets[VMM_MAX_NETS];
	unsigned nrestore_nets;
	char *restore_vsock_uds;

	char *id;           /* instance id the API reports; NULL = VMM_DEFAULT_ID */
	char *api_sock;     /* control API socket path; NULL = no API. Without a kernel, the VM waits for
			     * the API's configuration and InstanceStart */
};

#define VMM_DEFAULT_ID "anonymous-instance"
#define VMM_VERSION "0.1.0"

void vmm_config_init(struct vmm_config *cfg);
void vmm_config_free(struct vmm_config *cfg);

/* "stdio", "none" or a file path. */
int vmm_config_set_console(struct vmm_config *cfg, const char *spec, struct cella_err *err);

/* Parses one --vsock value ("cid=N,uds=PATH"). */
int vmm_config_set_vsock(struct vmm_config *cfg, const char *spec, struct cella_err *err);

/* Parses one --disk value ("PATH[,ro][,id=NAME][,bw=..]...") and appends the disk. */
int vmm_config_add_disk(struct vmm_config *cfg, const char *spec, struct cella_err *err);

/* Parses one --net value ("tap=NAME[,mac=MAC][,bw=..]...") and appends the network device. */
int vmm_config_add_net(struct vmm_config *cfg, const char *spec, struct cella_err *err);

/* Parses one "ID=VALUE" restore override (--restore-disk, --restore-net; what names the flag in
 * errors) and appends it to list (*n entries, at most max; an id given twice is an error). */
int vmm_config_add_override(struct vmm_override *list, unsigned *n, unsigned max, const char *spec,
			    const char *what, struct cella_err *err);
/* Restore: points the snapshot's config (saved) at given's restore overrides' disks, TAPs and vsock
 * socket. A disk is named by its id or "vd<letter>", an interface by "eth<i>" or its saved TAP; a
 * name the snapshot lacks is an error listing the snapshot's names. */
int vmm_config_apply_overrides(struct vmm_config *saved, const struct vmm_config *given, struct cella_err *err);
/* Frees cfg's restore overrides (the rest of cfg stays). */
void vmm_config_clear_overrides(struct vmm_config *cfg);

/* Reads a JSON config ({"kernel", "initrd", "cmdline", "cpus", "memory_mib", "console", "rng", "disks",
 * "nets", "vsock"}) over cfg: fields present replace cfg's values ("disks" and "nets" replace the lists). Unknown
 * fields are errors naming the field. */
int vmm_config_load_json(struct vmm_config *cfg, const char *path, struct cella_err *err);

/* The config as the JSON that vmm_config_load_json reads (every field it knows; a snapshot stores it
 * so that restore rebuilds the same machine). *out is malloc'd. */
int vmm_config_to_json(const struct vmm_config *cfg, char **out, struct cella_err *err);
/* vmm_config_load_json over a string; what names it in errors. */
int vmm_config_from_json_text(struct vmm_config *cfg, const char *text, size_t len, const char *what,
			      struct cella_err *err);

/* Checks what can be checked without files or KVM (vCPU count, memory range, kernel given). */
int vmm_config_check(const struct vmm_config *cfg, struct cella_err *err);

enum vmm_outcome {
	VMM_POWEROFF, /* the guest powered off (ACPI S5) */
	VMM_REBOOT,   /* the guest rebooted (i8042 reset, reset register, triple fault) */
	VMM_FAILED,   /* a vCPU hit an unrecoverable exit; details were logged */
	VMM_SIGNALED, /* the VMM was asked to stop by a signal */
};

struct vmm_result {
	enum vmm_outcome outcome;
	int signal;            /* VMM_SIGNALED: which */
	char reason[256];      /* one line: "guest poweroff", "KVM_EXIT_INTERNAL_ERROR ..." */
	uint64_t boot_timer_ns; /* time from VMM start to the guest's boot-timer write, 0 if none */
	bool abandoned;         /* a vCPU would not stop: the VM's resources were left to process exit */
};

const char *vmm_outcome_name(enum vmm_outcome outcome);

/* With cfg->api_sock, the API's configuration requests update *cfg before the VM starts. */
int vmm_run(struct vmm_config *cfg, struct vmm_result *res, struct cella_err *err);
