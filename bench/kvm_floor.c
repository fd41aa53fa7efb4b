/* kvm_floor: the least a KVM process can do to run a flat-binary guest — the floor that the
 * VMM benchmark compares cella-vmm against.
 *
 *   kvm_floor GUEST.bin [MEMORY_MiB]
 *
 * Creates a VM with one memory region (default 16 MiB) and one vCPU, loads GUEST.bin at
 * guest-physical 0x10000, enters it in 16-bit real mode at CS=0x1000, IP=0 (cella-vmm's flat
 * binary convention), copies bytes written to the serial port 0x3f8 to stdout, and exits 0 when
 * the guest writes 0xFE to port 0x64 (i8042 reset), halts or shuts down. No irqchip, no
 * devices, no threads. Built static so that it runs inside the nested sandbox. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define LOAD_ADDR 0x10000

static int die(const char *what)
{
	fprintf(stderr, "kvm_floor: %s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: kvm_floor GUEST.bin [MEMORY_MiB]\n");
		return 2;
	}
	size_t mem_size = (argc > 2 ? strtoul(argv[2], NULL, 0) : 16) << 20;

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return die("KVM_CREATE_VM");

	uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		return die("mmap guest memory");
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return die(argv[1]);
	ssize_t n = read(fd, mem + LOAD_ADDR, mem_size - LOAD_ADDR);
	if (n <= 0)
		return die(argv[1]);
	close(fd);

	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = mem_size,
		.userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return die("KVM_SET_USER_MEMORY_REGION");

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		return die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0)
		return die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return die("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		return die("KVM_GET_SREGS");
	struct kvm_segment *segs[] = { &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs,
				       &sregs.ss };
	for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
		segs[i]->selector = LOAD_ADDR >> 4;
		segs[i]->base = LOAD_ADDR;
	}
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		return die("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = 0, .rsp = 0xfff0, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		return die("KVM_SET_REGS");

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return die("KVM_RUN");
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			if (run->io.direction != KVM_EXIT_IO_OUT)
				break; /* reads: leave the zero KVM put there */
			if (run->io.port == 0x3f8 && write(1, data, run->io.size * run->io.count) < 0)
				return die("write stdout");
			if (run->io.port == 0x64 && data[0] == 0xfe)
				return 0;
			break;
		}
		case KVM_EXIT_HLT:
		case KVM_EXIT_SHUTDOWN:
			return 0;
		default:
			fprintf(stderr, "kvm_floor: unexpected exit reason %u\n", run->exit_reason);
			return 1;
		}
	}
}
