/* cgroup v2 device policy: a BPF_PROG_TYPE_CGROUP_DEVICE program built from the v1-style rule
 * list and attached to the container's directory with bpf(2) (no libbpf).
 *
 * Semantics (as runc's device filter): rules are checked from last to first, the first rule that
 * matches decides; a rule matches when its type is 'a' or equal, major/minor equal or wildcard,
 * and the requested access is a subset of the rule's access. Nothing matched = deny. */
#include "base/err.h"
#include "base/util.h"
#include "runtime/cgroup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm)
{
	struct bpf_insn i = { .code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm };
	return i;
}

static uint32_t access_bits(const char *a)
{
	uint32_t v = 0;
	for (; *a; a++)
		v |= *a == 'm' ? BPF_DEVCG_ACC_MKNOD : *a == 'r' ? BPF_DEVCG_ACC_READ : *a == 'w' ? BPF_DEVCG_ACC_WRITE : 0;
	return v;
}

int cg_bpf_build(const struct cg_dev_rule *rules, size_t n, struct bpf_insn **out, size_t *n_out,
		 struct cella_err *err)
{
	/* Prologue 6 + per rule at most 4 checks (type 1, access 3, major 1, minor 1 = 6) + 2, epilogue 2. */
	size_t cap = 6 + n * 8 + 2, k = 0;
	bool unconditional = false;
	struct bpf_insn *p = calloc(cap, sizeof(*p));
	if (!p)
		return cella_err_set(err, ENOMEM, "out of memory");
	/* r2 = type, r3 = access, r4 = major, r5 = minor */
	p[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, 2, 1, 0, 0);
	p[k++] = insn(BPF_ALU64 | BPF_AND | BPF_K, 2, 0, 0, 0xffff);
	p[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, 3, 1, 0, 0);
	p[k++] = insn(BPF_ALU64 | BPF_RSH | BPF_K, 3, 0, 0, 16);
	p[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, 4, 1, 4, 0);
	p[k++] = insn(BPF_LDX | BPF_MEM | BPF_W, 5, 1, 8, 0);
	for (size_t i = n; i-- > 0;) {
		const struct cg_dev_rule *r = &rules[i];
		if (r->major > INT32_MAX || r->minor > INT32_MAX) {
			free(p);
			return cella_err_set(err, EINVAL, "cgroup v2 devices: device number %lld:%lld out of range",
					     r->major, r->minor);
		}
		struct bpf_insn blk[8];
		size_t b = 0;
		/* Jumps are patched below to land after this block. */
		if (r->type != 'a')
			blk[b++] = insn(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 0,
					r->type == 'b' ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR);
		uint32_t acc = access_bits(r->access);
		if (acc != (BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE)) {
			blk[b++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 3, 0, 0);
			blk[b++] = insn(BPF_ALU64 | BPF_AND | BPF_K, 1, 0, 0, (int32_t)(~acc & 7u));
			blk[b++] = insn(BPF_JMP | BPF_JNE | BPF_K, 1, 0, 0, 0);
		}
		if (r->major >= 0)
			blk[b++] = insn(BPF_JMP | BPF_JNE | BPF_K, 4, 0, 0, (int32_t)r->major);
		if (r->minor >= 0)
			blk[b++] = insn(BPF_JMP | BPF_JNE | BPF_K, 5, 0, 0, (int32_t)r->minor);
		blk[b++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, r->allow ? 1 : 0);
		blk[b++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
		for (size_t j = 0; j < b; j++) {
			if (BPF_CLASS(blk[j].code) == BPF_JMP && BPF_OP(blk[j].code) == BPF_JNE)
				blk[j].off = (int16_t)(b - j - 1);
			p[k++] = blk[j];
		}
		/* An unconditional rule ends the search: the rest can never be reached (and the
		 * verifier refuses unreachable instructions). */
		if (b == 2) {
			unconditional = true;
			break;
		}
	}
	if (!unconditional) {
		p[k++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0);
		p[k++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
	}
	*out = p;
	*n_out = k;
	return 0;
}

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

int cg_v2_devices(const struct cg_dir *d, bool fake, const struct cg_dev_rule *rules, size_t n,
		  struct cella_err *err)
{
	_cleanup_free_ struct bpf_insn *prog = NULL;
	size_t count = 0;
	int r = cg_bpf_build(rules, n, &prog, &count, err);
	if (r < 0 || fake)
		return r;

	char log[4096] = "";
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
	attr.insns = (uint64_t)(uintptr_t)prog;
	attr.insn_cnt = (uint32_t)count;
	attr.license = (uint64_t)(uintptr_t) "GPL";
	attr.log_buf = (uint64_t)(uintptr_t)log;
	attr.log_size = sizeof(log);
	attr.log_level = 1;
	_cleanup_close_ int prog_fd = (int)sys_bpf(BPF_PROG_LOAD, &attr);
	if (prog_fd < 0) {
		/* The verifier log only helps when the load itself was refused. */
		int e = errno;
		if (log[0])
			return cella_err_set(err, e, "cgroup v2 devices: load BPF device program: %s: %s", strerror(e),
					     log);
		return cella_err_sys(err, e, "cgroup v2 devices: load BPF device program");
	}
	_cleanup_close_ int dir_fd = open(d->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir_fd < 0)
		return cella_err_sys(err, errno, "cgroup v2 devices: open %s", d->path);
	memset(&attr, 0, sizeof(attr));
	attr.target_fd = (uint32_t)dir_fd;
	attr.attach_bpf_fd = (uint32_t)prog_fd;
	attr.attach_type = BPF_CGROUP_DEVICE;
	attr.attach_flags = BPF_F_ALLOW_MULTI;
	if (sys_bpf(BPF_PROG_ATTACH, &attr) < 0)
		return cella_err_sys(err, errno, "cgroup v2 devices: attach BPF device program to %s", d->path);
	/* The attachment holds the program until the cgroup is removed. */
	return 0;
}
