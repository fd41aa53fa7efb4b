#!/usr/bin/python3
"""virtio-net benchmark (issue 5), in one boot of the nested-KVM sandbox (tests/sandbox/).

Guest->host TCP throughput: the guest (Debian kernel + guest-kit initramfs, 256 MiB, 1 vCPU) sends
N MiB of zeros with `dd | nc` to bench/netsink on the sandbox side of a TAP (10.0.4.1 <-> 10.0.4.2),
TRANSFERS times per boot; netsink times each from first byte to end of file. Both programs use the
same persistent TAP (made with tunctl), the same kernel, initramfs and command line:
  cella-vmm  --net tap=tapb
  qemu       -M microvm -accel kvm -cpu host -netdev tap,ifname=tapb,script=no,downscript=no
             -device virtio-net-device (QEMU's user-space virtio-net: the sandbox has no vhost-net)
Rounds alternate between the two programs (one boot each per round, after one warm-up round); a
boot's figure is the median of its transfers; the report gives medians over rounds and the median
of per-round ratios. Target: cella-vmm >= QEMU. Absolute figures are those of nested KVM on an
emulated CPU: only the ratio matters.

Usage: bench/net.py [-r ROUNDS] [-m MIB] [-t TRANSFERS]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys

from vmbench import log, report_vs_qemu

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(TOP, "build", "bench", "net")
VMM_STATIC = os.path.join(TOP, "build", "cella-vmm-static")


def cmd_param(script):
    """cella.cmd=VALUE for the guest's init: spaces and other specials percent-encoded."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=,:;|&<>$()+*[]!{}@^~")
    return "cella.cmd=" + "".join(c if c in safe else "%%%02X" % ord(c) for c in script)


SCRIPT = r'''
[ -c /dev/kvm ] || { echo "SKIP no /dev/kvm in the sandbox"; exit 1; }
tunctl -t tapb >/dev/null && ip addr add 10.0.4.1/24 dev tapb && ip link set tapb up || { echo "SKIP no TAP"; exit 1; }
K="-kernel /kit/vmlinuz -initrd /kit/initramfs.cpio.gz"
one() { # LABEL ROUND CMD...
	l=$1; r=$2; shift 2
	/g/netsink -t 900 10.0.4.1 5003 $TRANSFERS > /tmp/sink &
	sink=$!
	timeout 900 "$@" </dev/null > /tmp/out 2>&1
	rc=$?
	kill $sink 2>/dev/null; wait $sink 2>/dev/null
	for x in $(grep -o 'mibps=[0-9.]*' /tmp/sink | cut -d= -f2); do echo "RES $l $r rc=$rc mibps=$x"; done
	n=$(grep -c mibps= /tmp/sink)
	[ $rc = 0 ] && [ "$n" = "$TRANSFERS" ] || { echo "ERR $l $r rc=$rc transfers=$n"; tail -c 1500 /tmp/out; }
}
echo "INFO kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo)"
i=0
while [ $i -le $ROUNDS ]; do
	one cella-vmm $i /bin/cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 1 \
		--net tap=tapb --cmdline "$CMD"
	one qemu $i qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
		-nographic -serial stdio -no-reboot $K -append "$CMD" \
		-netdev tap,id=n0,ifname=tapb,script=no,downscript=no -device virtio-net-device,netdev=n0
	i=$((i + 1))
done
tunctl -d tapb >/dev/null
echo DONE
'''



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", type=int, default=3, help="measured rounds (default 3, after 1 warm-up)")
    ap.add_argument("-m", type=int, default=16, help="MiB per transfer (default 16)")
    ap.add_argument("-t", type=int, default=3, help="transfers per boot (default 3)")
    ap.add_argument("--timeout", type=float, default=3000)
    args = ap.parse_args()
    if not shutil.which("qemu-system-x86_64"):
        log("skip net bench: qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86)")
        return 0
    if not os.access(VMM_STATIC, os.X_OK):
        log("skip net bench: build/cella-vmm-static not built (make)")
        return 0
    sys.path.insert(0, os.path.join(TOP, "tests", "sandbox"))
    import sandbox
    ok, reason = sandbox.available()
    if not ok:
        log(f"skip net bench: sandbox unavailable: {reason}")
        return 0
    os.makedirs(WORK, exist_ok=True)
    sink = os.path.join(WORK, "netsink")
    subprocess.run(["gcc", "-static", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", sink,
                    os.path.join(TOP, "bench", "netsink.c")], check=True)
    guest = ("ip link set eth0 up; ip addr add 10.0.4.2/24 dev eth0; "
             "for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 1 10.0.4.1 >/dev/null && break; done; "
             f"for i in $(seq {args.t}); do dd if=/dev/zero bs=65536 count={args.m * 16} 2>/dev/null | "
             "nc 10.0.4.1 5003; sleep 0.2; done")
    head = (f"ROUNDS={args.r} TRANSFERS={args.t}\n"
            f"CMD='console=ttyS0 quiet panic=-1 {cmd_param(guest)}'\n")
    logpath = os.path.join(WORK, "sandbox.log")
    log(f"net bench: one sandbox boot, {args.r} rounds (+1 warm-up) of {args.t} x {args.m} MiB guest->host TCP "
        f"per program; raw log: {os.path.relpath(logpath, TOP)}")
    with open(logpath, "w") as logf:
        try:
            status, output = sandbox.run(head + SCRIPT, files=[(sink, "/g/netsink")], with_qemu=True,
                                         timeout=args.timeout, stream=logf)
        except sandbox.SandboxError as e:
            logf.write(e.output or "")
            log(f"net bench failed: sandbox: {e}")
            return 1
    runs = {}
    for line in output.splitlines():
        if line.startswith(("INFO", "ERR", "SKIP")):
            log(line)
        m = re.match(r"RES (\S+) (\d+) rc=0 mibps=([0-9.]+)", line)
        if m and int(m.group(2)) > 0:  # round 0 is the warm-up
            runs.setdefault(m.group(1), {}).setdefault(int(m.group(2)), []).append(float(m.group(3)))
    rates = {label: {r: statistics.median(xs) for r, xs in per.items()} for label, per in runs.items()}
    log("")
    log(f"guest->host TCP, {args.m} MiB x {args.t} per boot, timed by netsink on the TAP side "
        f"(MiB/s, median over {args.r} boots of each boot's median)")
    report_vs_qemu(rates, "boots")
    if "DONE" not in output:
        log(f"net bench: sandbox script ended early (status {status})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
