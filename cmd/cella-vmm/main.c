/* cella-vmm: runs one micro-VM. Parses flags (over an optional JSON config), makes one library call,
 * and turns the way the VM ended into an exit status:
 *   0    the guest powered off or rebooted
 *   1    bad input or no usable KVM: nothing ran
 *   2    the VM failed (an unrecoverable vCPU exit, or a vCPU that would not stop; details logged)
 *   128+N  stopped by signal N */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/vmm.h"

static const char usage[] =
	"Usage: cella-vmm --kernel PATH [options]\n"
	"       cella-vmm --config FILE.json [options]\n"
	"       cella-vmm --restore DIR [--restore-disk ID=PATH]... [--restore-net ID=TAP]...\n"
	"                 [--restore-vsock-uds PATH] [--console SPEC] [--snapshot-dir DIR2] [options]\n"
	"       cella-vmm --api-sock PATH [options]\n"
	"\n"
	"Runs one KVM micro-VM until the guest powers off or reboots.\n"
	"\n"
	"  --kernel PATH        bzImage, ELF vmlinux (PVH entry), or a flat binary (real mode at 0x1000:0,\n"
	"                       baseline x86-64 CPUID: the host's vendor, x87..SSE2, no optional feature)\n"
	"  --initrd PATH        initial ramdisk\n"
	"  --cmdline STR        kernel command line (default: \"" VMM_DEFAULT_CMDLINE "\")\n"
	"  --cpus N             vCPUs, 1..32 (default 1)\n"
	"  --memory MiB         guest RAM (default 128; at least 32 for Linux, 1 for flat binaries)\n"
	"  --console SPEC       stdio (default), none, or a file to append guest output to\n"
	"  --config FILE.json   settings {kernel, initrd, cmdline, cpus, memory_mib, console, rng, pit, disks,\n"
	"                       nets, vsock}; flags override, --disk / --net add to the config's lists\n"
	"  --log-level LEVEL    debug, info (default), warn or error; -v is --log-level debug\n"
	"  --kvm-device PATH    KVM device (default /dev/kvm)\n"
	"  --debug-device       test-only MMIO scratch device at 0xd0000000\n"
	"  --rng                virtio-rng (entropy from the host's getrandom); JSON: \"rng\": true\n"
	"  --pit                in-kernel PIT (i8254) for a flat binary that programs it (Linux kernels always\n"
	"                       get one); JSON: \"pit\": true\n"
	"  --disk PATH[,OPT...] virtio-blk on a raw disk file (repeatable, up to 8: vda, vdb, ...). OPT:\n"
	"                         ro               read-only (VIRTIO_BLK_F_RO; the file is opened read-only)\n"
	"                         id=NAME          serial the guest reads (/sys/block/vdX/serial), <= 20 bytes\n"
	"                         bw=BYTES         bandwidth limit: bucket of BYTES refilled every bw_refill_ms\n"
	"                                          (default 1000, so BYTES per second); K/M/G suffixes\n"
	"                         bw_refill_ms=MS  bw_burst=BYTES (one-time burst on top)\n"
	"                         iops=N iops_refill_ms=MS iops_burst=N   the same for requests\n"
	"                       JSON: \"disks\": [{\"path\": P, \"ro\": true, \"id\": S, \"bw\": N, ...}]\n"
	"  --net tap=NAME[,OPT...]  virtio-net on a TAP interface (repeatable, up to 4: eth0, eth1, ...);\n"
	"                       the TAP is created (and removed when cella-vmm exits) or, if it exists,\n"
	"                       attached and left as it was. OPT:\n"
	"                         mac=MAC          the guest's address (default: random, locally administered)\n"
	"                         bw=, bw_refill_ms=, bw_burst=   as for --disk, per direction\n"
	"                         pps=N pps_refill_ms=MS pps_burst=N   packets (iops= etc. also accepted)\n"
	"                       JSON: \"nets\": [{\"tap\": NAME, \"mac\": MAC, \"bw\": N, ...}]\n"
	"                       Virtio devices sit at 0xd0001000 + 0x200 * i (rng first, then disks, then\n"
	"                       nets), each on\n"
	"                       its own IRQ (5, 6, 7, 10, 11, 16...), listed in the ACPI DSDT.\n"
	"  --vsock cid=N,uds=PATH  virtio-vsock for guest CID N (3..4294967294). Host -> guest: connect to the\n"
	"                       unix socket PATH, write \"CONNECT <port>\\n\", read \"OK <host port>\\n\", then the\n"
	"                       stream; guest -> host port P: forwarded to the unix socket PATH_P.\n"
	"                       PATH is created and removed by the VMM; JSON: \"vsock\": {\"cid\": N, \"uds\": PATH}\n"
	"  --snapshot-dir DIR   on SIGUSR2: pause the VM, write DIR/state and DIR/memory, resume\n"
	"                       (the control API's PUT /snapshot/create is the other way in)\n"
	"  --restore DIR        run the VM saved in DIR/state + DIR/memory instead of booting: the\n"
	"                       machine (kernel, cpus, memory, devices) is the snapshot's; --cpus and\n"
	"                       --memory, if given, must match it. Disks are reopened at their paths\n"
	"                       (same size: the guest remembers it), TAPs attached (or created) by name,\n"
	"                       the vsock socket created again; vsock connections do not survive (the\n"
	"                       guest gets a transport reset), a frame in flight on a NIC may be lost\n"
	"  --restore-disk ID=PATH  with --restore: open PATH instead of the saved path of disk ID (its\n"
	"                       id, or vda, vdb.. by position); PATH must have the saved size\n"
	"  --restore-net ID=TAP with --restore: attach interface ID (eth0, eth1.. or its saved TAP name)\n"
	"                       to TAP instead\n"
	"  --restore-vsock-uds PATH  with --restore: the vsock's host socket is PATH (and PATH_<port>)\n"
	"                       instead of the saved one. These let clones of one snapshot run at once;\n"
	"                       an ID the snapshot lacks is an error\n"
	"  --api-sock PATH      control API (HTTP/1.1 + JSON, Firecracker's endpoints) on a unix socket\n"
	"                       created mode 0600 and removed on exit; without --kernel the VM waits for\n"
	"                       PUT /boot-source, /machine-config and PUT /actions InstanceStart\n"
	"  --id ID              instance id reported by GET / (default " VMM_DEFAULT_ID ")\n"
	"  -h, --help           this text\n"
	"\n"
	"Exit status: 0 guest poweroff or reboot, 1 bad input or no usable KVM, 2 VM failure,\n"
	"128+N stopped by signal N.\n";

enum {
	OPT_KERNEL = 256,
	OPT_INITRD,
	OPT_CMDLINE,
	OPT_CPUS,
	OPT_MEMORY,
	OPT_CONSOLE,
	OPT_CONFIG,
	OPT_LOG_LEVEL,
	OPT_KVM_DEVICE,
	OPT_DEBUG_DEVICE,
	OPT_RNG,
	OPT_PIT,
	OPT_VSOCK,
	OPT_SNAPSHOT_DIR,
	OPT_RESTORE,
	OPT_DISK,
	OPT_API_SOCK,
	OPT_ID,
	OPT_NET,
	OPT_RESTORE_DISK,
	OPT_RESTORE_NET,
	OPT_RESTORE_VSOCK_UDS,
};

static const struct option options[] = {
	{ "kernel", required_argument, NULL, OPT_KERNEL },
	{ "initrd", required_argument, NULL, OPT_INITRD },
	{ "cmdline", required_argument, NULL, OPT_CMDLINE },
	{ "cpus", required_argument, NULL, OPT_CPUS },
	{ "memory", required_argument, NULL, OPT_MEMORY },
	{ "console", required_argument, NULL, OPT_CONSOLE },
	{ "config", required_argument, NULL, OPT_CONFIG },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "kvm-device", required_argument, NULL, OPT_KVM_DEVICE },
	{ "debug-device", no_argument, NULL, OPT_DEBUG_DEVICE },
	{ "rng", no_argument, NULL, OPT_RNG },
	{ "pit", no_argument, NULL, OPT_PIT },
	{ "vsock", required_argument, NULL, OPT_VSOCK },
	{ "snapshot-dir", required_argument, NULL, OPT_SNAPSHOT_DIR },
	{ "restore", required_argument, NULL, OPT_RESTORE },
	{ "disk", required_argument, NULL, OPT_DISK },
	{ "api-sock", required_argument, NULL, OPT_API_SOCK },
	{ "id", required_argument, NULL, OPT_ID },
	{ "net", required_argument, NULL, OPT_NET },
	{ "restore-disk", required_argument, NULL, OPT_RESTORE_DISK },
	{ "restore-net", required_argument, NULL, OPT_RESTORE_NET },
	{ "restore-vsock-uds", required_argument, NULL, OPT_RESTORE_VSOCK_UDS },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("cella-vmm: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	return 1;
}

static int set_string(char **slot, const char *value)
{
	char *copy = strdup(value);
	if (!copy)
		return -1;
	free(*slot);
	*slot = copy;
	return 0;
}

static int parse_level(const char *s, enum cella_log_level *out)
{
	static const struct {
		const char *name;
		enum cella_log_level level;
	} levels[] = { { "debug", CELLA_LOG_DEBUG }, { "info", CELLA_LOG_INFO }, { "warn", CELLA_LOG_WARN },
		       { "error", CELLA_LOG_ERROR } };
	for (size_t i = 0; i < ARRAY_SIZE(levels); i++)
		if (!strcmp(s, levels[i].name)) {
			*out = levels[i].level;
			return 0;
		}
	return -1;
}

int main(int argc, char **argv)
{
	struct cella_err err = { 0 };
	struct vmm_config cfg;
	vmm_config_init(&cfg);
	struct vmm_config flags; /* flags collected first, applied over the JSON config */
	vmm_config_init(&flags);
	const char *config_path = NULL, *console = NULL, *restore = NULL;
	bool have_cpus = false, have_memory = false;
	enum cella_log_level level = CELLA_LOG_INFO;
	int status = 1;

	int opt;
	while ((opt = getopt_long(argc, argv, "hv", options, NULL)) != -1) {
		int r = 0;
		switch (opt) {
		case OPT_KERNEL: r = set_string(&flags.kernel, optarg); break;
		case OPT_INITRD: r = set_string(&flags.initrd, optarg); break;
		case OPT_CMDLINE: r = set_string(&flags.cmdline, optarg); break;
		case OPT_CPUS: {
			int64_t n;
			if (cella_parse_int64(optarg, &n) < 0 || n < 0 || n > 1000000) {
				status = fail("--cpus: expected a number of vCPUs, got \"%s\"", optarg);
				goto out;
			}
			flags.cpus = (unsigned)n;
			have_cpus = true;
			break;
		}
		case OPT_MEMORY:
			if (cella_parse_uint64(optarg, &flags.memory_mib) < 0) {
				status = fail("--memory: expected a size in MiB, got \"%s\"", optarg);
				goto out;
			}
			have_memory = true;
			break;
		case OPT_CONSOLE: console = optarg; break;
		case OPT_CONFIG: config_path = optarg; break;
		case OPT_LOG_LEVEL:
			if (parse_level(optarg, &level) < 0) {
				status = fail("--log-level: expected debug, info, warn or error, got \"%s\"", optarg);
				goto out;
			}
			break;
		case 'v': level = CELLA_LOG_DEBUG; break;
		case OPT_KVM_DEVICE: r = set_string(&flags.kvm_device, optarg); break;
		case OPT_DEBUG_DEVICE: flags.debug_device = true; break;
		case OPT_RNG: flags.rng = true; break;
		case OPT_PIT: flags.pit = true; break;
		case OPT_VSOCK:
			if (vmm_config_set_vsock(&flags, optarg, &err) < 0) {
				status = fail("%s", err.msg);
				goto out;
			}
			break;
		case OPT_SNAPSHOT_DIR: r = set_string(&flags.snapshot_dir, optarg); break;
		case OPT_RESTORE: restore = optarg; break;
		case OPT_DISK:
			if (vmm_config_add_disk(&flags, optarg, &err) < 0) {
				status = fail("%s", err.msg);
				goto out;
			}
			break;
		case OPT_API_SOCK: r = set_string(&flags.api_sock, optarg); break;
		case OPT_ID: r = set_string(&flags.id, optarg); break;
		case OPT_RESTORE_DISK:
		case OPT_RESTORE_NET: {
			bool disk = opt == OPT_RESTORE_DISK;
			if (vmm_config_add_override(disk ? flags.restore_disks : flags.restore_nets,
						    disk ? &flags.nrestore_disks : &flags.nrestore_nets,
						    disk ? VMM_MAX_DISKS : VMM_MAX_NETS, optarg,
						    disk ? "--restore-disk" : "--restore-net", &err) < 0) {
				status = fail("%s", err.msg);
				goto out;
			}
			break;
		}
		case OPT_RESTORE_VSOCK_UDS: r = set_string(&flags.restore_vsock_uds, optarg); break;
		case OPT_NET:
			if (vmm_config_add_net(&flags, optarg, &err) < 0) {
				status = fail("%s", err.msg);
				goto out;
			}
			break;
		case 'h':
			fputs(usage, stdout);
			status = 0;
			goto out;
		default:
			fputs("Try 'cella-vmm --help'.\n", stderr);
			goto out;
		}
		if (r < 0) {
			status = fail("%s", "out of memory");
			goto out;
		}
	}
	if (optind < argc) {
		status = fail("unexpected argument \"%s\" (try 'cella-vmm --help')", argv[optind]);
		goto out;
	}
	if (cella_log_open(NULL, CELLA_LOG_TEXT, level, &err) < 0) {
		status = fail("%s", err.msg);
		goto out;
	}

	if (!restore && (flags.nrestore_disks || flags.nrestore_nets || flags.restore_vsock_uds)) {
		status = fail("--restore-disk, --restore-net and --restore-vsock-uds need --restore DIR");
		goto out;
	}
	if (restore) {
		/* The snapshot says what the machine is; only these may be given with it. */
		if (config_path || flags.kernel || flags.initrd || flags.cmdline || flags.rng || flags.pit ||
		    flags.vsock_uds || flags.ndisks || flags.nnets) {
			status = fail("--restore: the machine comes from the snapshot; --config, --kernel, --initrd, "
				      "--cmdline, --rng, --pit, --vsock, --disk and --net cannot be given with it "
				      "(its disks, TAPs and vsock socket are the ones it was taken with; "
				      "--restore-disk, --restore-net and --restore-vsock-uds point them elsewhere)");
			goto out;
		}
		/* the overrides move over (flags no longer owns them) */
		memcpy(cfg.restore_disks, flags.restore_disks, sizeof(cfg.restore_disks));
		memcpy(cfg.restore_nets, flags.restore_nets, sizeof(cfg.restore_nets));
		cfg.nrestore_disks = flags.nrestore_disks;
		cfg.nrestore_nets = flags.nrestore_nets;
		cfg.restore_vsock_uds = flags.restore_vsock_uds;
		memset(flags.restore_disks, 0, sizeof(flags.restore_disks));
		memset(flags.restore_nets, 0, sizeof(flags.restore_nets));
		flags.nrestore_disks = flags.nrestore_nets = 0;
		flags.restore_vsock_uds = NULL;
		cfg.restore_state = cella_path_join(restore, VMM_SNAPSHOT_STATE_FILE);
		cfg.restore_memory = cella_path_join(restore, VMM_SNAPSHOT_MEMORY_FILE);
		if (!cfg.restore_state || !cfg.restore_memory) {
			status = fail("%s", "out of memory");
			goto out;
		}
		cfg.cpus = have_cpus ? flags.cpus : 0; /* 0 = the snapshot's */
		cfg.memory_mib = have_memory ? flags.memory_mib : 0;
		have_cpus = have_memory = false;
	}
	if (flags.snapshot_dir && set_string(&cfg.snapshot_dir, flags.snapshot_dir) < 0) {
		status = fail("%s", "out of memory");
		goto out;
	}
	if (config_path && vmm_config_load_json(&cfg, config_path, &err) < 0) {
		status = fail("%s", err.msg);
		goto out;
	}
	if ((flags.kernel && set_string(&cfg.kernel, flags.kernel) < 0) ||
	    (flags.initrd && set_string(&cfg.initrd, flags.initrd) < 0) ||
	    (flags.cmdline && set_string(&cfg.cmdline, flags.cmdline) < 0) ||
	    (flags.kvm_device && set_string(&cfg.kvm_device, flags.kvm_device) < 0) ||
	    (flags.api_sock && set_string(&cfg.api_sock, flags.api_sock) < 0) ||
	    (flags.id && set_string(&cfg.id, flags.id) < 0)) {
		status = fail("%s", "out of memory");
		goto out;
	}
	if (have_cpus)
		cfg.cpus = flags.cpus;
	if (have_memory)
		cfg.memory_mib = flags.memory_mib;
	cfg.debug_device = flags.debug_device;
	if (flags.rng)
		cfg.rng = true;
	if (flags.pit)
		cfg.pit = true;
	for (unsigned i = 0; i < flags.ndisks; i++) {
		if (cfg.ndisks >= VMM_MAX_DISKS) {
			status = fail("--disk %s: at most %d disks (with the config's)", flags.disks[i].path, VMM_MAX_DISKS);
			goto out;
		}
		cfg.disks[cfg.ndisks++] = flags.disks[i]; /* moved: flags no longer owns it */
		flags.disks[i] = (struct vmm_disk){ 0 };
	}
	flags.ndisks = 0;
	for (unsigned i = 0; i < flags.nnets; i++) {
		if (cfg.nnets >= VMM_MAX_NETS) {
			status = fail("--net tap=%s: at most %d network devices (with the config's)", flags.nets[i].tap,
				      VMM_MAX_NETS);
			goto out;
		}
		cfg.nets[cfg.nnets++] = flags.nets[i]; /* moved */
		flags.nets[i] = (struct vmm_net){ 0 };
	}
	flags.nnets = 0;
	if (flags.vsock_uds) { /* --vsock given (its cid is checked with the rest of the config) */
		cfg.vsock_cid = flags.vsock_cid;
		if (set_string(&cfg.vsock_uds, flags.vsock_uds) < 0) {
			status = fail("%s", "out of memory");
			goto out;
		}
	}
	if (console && vmm_config_set_console(&cfg, console, &err) < 0) {
		status = fail("%s", err.msg);
		goto out;
	}

	struct vmm_result res;
	if (vmm_run(&cfg, &res, &err) < 0) {
		status = fail("%s", err.msg);
		goto out;
	}
	switch (res.outcome) {
	case VMM_POWEROFF:
	case VMM_REBOOT:
		status = 0;
		break;
	case VMM_FAILED:
		log_error("VM failed: %s", res.reason);
		status = 2;
		break;
	case VMM_SIGNALED:
		status = 128 + res.signal;
		break;
	}
	if (res.abandoned) {
		log_error("a vCPU thread would not stop; exiting without tearing the VM down");
		status = 2;
	}
	log_debug("VM ended: %s (%s)", vmm_outcome_name(res.outcome), res.reason);
out:
	vmm_config_free(&cfg);
	vmm_config_free(&flags);
	cella_log_close();
	return status;
}
