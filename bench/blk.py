#!/usr/bin/python3
"""virtio-blk benchmark (issue 5), in one boot of the nested-KVM sandbox (tests/sandbox/).

Sequential read of a 256 MiB disk file in the guest: `dd if=/dev/vda of=/dev/null bs=1M
iflag=direct` (O_DIRECT: the guest's page cache plays no part), timed by the guest's
/proc/uptime around it. The same file (random bytes, in the sandbox's RAM), the same Debian
kernel and guest-kit initramfs, 256 MiB, 1 vCPU, for:
  cella-vmm  --disk disk.img,ro
  qemu       -M microvm -accel kvm -cpu host -drive file=disk.img,format=raw,if=none,readonly=on
             -device virtio-blk-device (QEMU's defaults otherwise: cache=writeback, aio=threads)
Rounds alternate between the two programs (one boot each per round, after one warm-up round);
figures are medians of MiB/s and the median of per-round ratios. Target: cella-vmm >= QEMU.
Absolute figures are those of nested KVM on an emulated CPU: only the ratio matters.

Usage: bench/blk.py [-r ROUNDS]
"""
import argparse
import os
import re
import shutil
import sys

from vmbench import log, report_vs_qemu

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(TOP, "build", "bench", "blk")
VMM_STATIC = os.path.join(TOP, "build", "cella-vmm-static")
DISK_MIB = 256

SCRIPT = r'''
[ -c /dev/kvm ] || { echo "SKIP no /dev/kvm in the sandbox"; exit 1; }
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=$DISK_MIB 2>/dev/null
CMD="console=ttyS0 quiet panic=-1 -- read a b < /proc/uptime; echo T0=\$a; dd if=/dev/vda of=/dev/null bs=1M iflag=direct; echo dd-rc=\$?; read a b < /proc/uptime; echo T1=\$a"
K="-kernel /kit/vmlinuz -initrd /kit/initramfs.cpio.gz"
one() { # LABEL ROUND CMD...
	l=$1; r=$2; shift 2
	timeout 600 "$@" </dev/null > /tmp/out 2>&1
	rc=$?
	t0=$(grep -o 'T0=[0-9.]*' /tmp/out | head -1 | cut -d= -f2)
	t1=$(grep -o 'T1=[0-9.]*' /tmp/out | head -1 | cut -d= -f2)
	echo "RES $l $r rc=$rc t0=${t0:--1} t1=${t1:--1} $(grep -o 'dd-rc=[0-9]*' /tmp/out | head -1)"
	[ $rc = 0 ] && grep -q dd-rc=0 /tmp/out || { echo "ERR $l $r"; tail -c 1500 /tmp/out; }
}
echo "INFO kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo)"
i=0
while [ $i -le $ROUNDS ]; do
	one cella-vmm $i /bin/cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 1 \
		--disk /tmp/disk.img,ro --cmdline "$CMD"
	one qemu $i qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
		-nographic -serial stdio -no-reboot $K -append "$CMD" \
		-drive id=d0,file=/tmp/disk.img,format=raw,if=none,readonly=on -device virtio-blk-device,drive=d0
	i=$((i + 1))
done
echo DONE
'''



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", type=int, default=5, help="measured rounds (default 5, after 1 warm-up)")
    ap.add_argument("--timeout", type=float, default=2400)
    args = ap.parse_args()
    if not shutil.which("qemu-system-x86_64"):
        log("skip blk bench: qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86)")
        return 0
    if not os.access(VMM_STATIC, os.X_OK):
        log("skip blk bench: build/cella-vmm-static not built (make)")
        return 0
    sys.path.insert(0, os.path.join(TOP, "tests", "sandbox"))
    import sandbox
    ok, reason = sandbox.available()
    if not ok:
        log(f"skip blk bench: sandbox unavailable: {reason}")
        return 0
    os.makedirs(WORK, exist_ok=True)
    logpath = os.path.join(WORK, "sandbox.log")
    log(f"blk bench: one sandbox boot, {args.r} rounds (+1 warm-up) of a {DISK_MIB} MiB O_DIRECT read per "
        f"program; raw log: {os.path.relpath(logpath, TOP)}")
    with open(logpath, "w") as logf:
        try:
            status, output = sandbox.run(f"ROUNDS={args.r} DISK_MIB={DISK_MIB}\n" + SCRIPT, with_qemu=True,
                                         timeout=args.timeout, stream=logf)
        except sandbox.SandboxError as e:
            logf.write(e.output or "")
            log(f"blk bench failed: sandbox: {e}")
            return 1
    rates = {}
    for line in output.splitlines():
        if line.startswith(("INFO", "ERR", "SKIP")):
            log(line)
        m = re.match(r"RES (\S+) (\d+) rc=(\d+) t0=([-0-9.]+) t1=([-0-9.]+) dd-rc=0", line)
        if not m or int(m.group(2)) == 0 or m.group(3) != "0":  # round 0 is the warm-up
            continue
        secs = float(m.group(5)) - float(m.group(4))
        if secs > 0:
            rates.setdefault(m.group(1), {})[int(m.group(2))] = DISK_MIB / secs
    log("")
    log(f"sequential read, {DISK_MIB} MiB, dd bs=1M iflag=direct in the guest (MiB/s, median of {args.r})")
    report_vs_qemu(rates, "runs")
    if "DONE" not in output:
        log(f"blk bench: sandbox script ended early (status {status})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
