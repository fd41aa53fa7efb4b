#!/usr/bin/python3
"""Snapshot benchmark (issue 6): snapshot creation time and restore-to-running time, cella-vmm vs
QEMU (migration to a file, the way QEMU saves a VM to disk), medians over several runs.

(a) Host KVM, tiny guest. The counting guest of the tests (vmm_guests.COUNT) without its delay
    loop, so it prints numbers on COM1 back to back; 16 MiB of RAM. QEMU -M microvm runs the same
    real-mode code as its firmware (-bios, a 64 KiB image whose reset vector jumps to it; DS = 0
    there, so the counter sits at 0x3c of RAM in both).
      create   cella-vmm: SIGUSR2 with --snapshot-dir; the figure is its own log line (pause +
               state file + memory file, both in place). QEMU: QMP stop, then migrate
               "exec:cat > FILE" of the paused guest (what libvirt's `virsh save` does: one
               consistent pass over RAM, like cella-vmm's); the figure is query-migrate's
               total-time once completed (the stop itself not counted).
      restore  spawn of `cella-vmm --restore DIR` / `qemu ... -incoming "exec:cat FILE"` to the
               first byte the guest prints afterwards (host clock, process start included).
(b) Nested sandbox, Linux. The guest kit's kernel and initramfs, 1 vCPU, 256 MiB and 1 GiB, booted
    to its console shell (idle), in one sandbox boot (QEMU -M microvm -accel kvm -cpu host as the
    peer, same kernel, initrd, command line, memory).
      create   as in (a); QEMU's monitor is HMP over a pipe chardev. A restore that fails prints
               the guest's panic lines as ERR.
      restore  spawn to the guest's answer to a command typed on its console ("echo pong-$((6*7))",
               typed every 100 ms until "pong-42" appears, because QEMU drops input that arrives
               before its incoming migration finished), measured by bench/benchtime.
    Absolute times in the sandbox are those of nested KVM on an emulated CPU; the ratios are what
    counts there.

Usage: bench/snapshot.py [-n RUNS] [--no-sandbox] [--no-host]
"""
import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(TOP, "build")
WORK = os.path.join(BUILD, "bench", "snapshot")
VMM = os.path.join(BUILD, "cella-vmm")
QEMU = "qemu-system-x86_64"
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
from vmm_guests import COUNT  # noqa: E402

# the counting guest with its delay loop cut to one iteration: it prints all the time
TICKER = COUNT.replace(bytes.fromhex("66b900100000"), bytes.fromhex("66b901000000"))
assert TICKER != COUNT


def log(msg=""):
    print(msg, flush=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec="8.2f"):
    return format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0])


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


# --- (a) host ---

def first_byte_ms(cmd, timeout=10.0):
    """Spawns cmd, returns (ms to its first stdout byte, process); the caller stops it."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.set_blocking(p.stdout.fileno(), True)
    # a guest that never prints (e.g. restored paused) must not hang the bench: wait at most timeout
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    b = p.stdout.read(1) if ready else b""
    t = (time.monotonic() - t0) * 1e3 if b else None
    return t, p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err.decode(errors="replace") if err else ""


def drain_until(p, pred, timeout=10.0):
    """Reads p's stdout (discarding) until pred() or timeout."""
    os.set_blocking(p.stdout.fileno(), False)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            p.stdout.read(65536)
        except (BlockingIOError, TypeError):
            pass
        if pred():
            return True
        time.sleep(0.005)
    return False


def cella_host(work, runs):
    guest = os.path.join(work, "ticker.bin")
    with open(guest, "wb") as f:
        f.write(TICKER)
    create, restore, inproc = [], [], []
    for i in range(runs):
        d = os.path.join(work, f"cella-{i}")
        errf = os.path.join(work, "cella-orig.err")
        with open(errf, "w") as e:
            p = subprocess.Popen([VMM, "--kernel", guest, "--memory", "16", "--snapshot-dir", d],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=e)
        try:
            drain_until(p, lambda: False, timeout=0.3)
            p.send_signal(signal.SIGUSR2)
            ok = drain_until(p, lambda: "snapshot written" in open(errf).read())
        finally:
            stop(p)
        m = re.search(r"snapshot written to \S+ in ([0-9.]+) ms", open(errf).read())
        if not ok or not m:
            log(f"  cella-vmm snapshot {i} failed: {open(errf).read()[-300:]}")
            continue
        create.append(float(m.group(1)))
        t, q = first_byte_ms([VMM, "--restore", d])
        err = stop(q)
        restore.append(t)
        m = re.search(r"VM restored from \S+ in ([0-9.]+) ms", err)
        inproc.append(float(m.group(1)) if m else None)
        shutil.rmtree(d, ignore_errors=True)
    return create, restore, inproc


class Qmp:
    def __init__(self, path, timeout=10.0):
        end = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.01)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r

    def close(self):
        self.s.close()


def qemu_host(work, runs):
    img = bytearray(65536)
    img[:len(TICKER)] = TICKER
    img[0xFFF0:0xFFF3] = bytes([0xE9, 0x0D, 0x00])  # reset vector: jmp near 0
    bios = os.path.join(work, "ticker-bios.bin")
    with open(bios, "wb") as f:
        f.write(img)
    # store-global-state=off: the saved run state (paused) is not in the file, so -incoming starts the
    # guest once loaded, as `cella-vmm --restore` does
    base = [QEMU, "-M", "microvm", "-accel", "kvm", "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio", "-no-reboot", "-m", "16", "-bios", bios, "-global", "migration.store-global-state=off"]
    create, restore = [], []
    for i in range(runs):
        state = os.path.join(work, f"qemu-{i}.state")
        sock = os.path.join(work, "qmp.sock")
        p = subprocess.Popen(base + ["-qmp", f"unix:{sock},server=on,wait=off"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            drain_until(p, lambda: os.path.exists(sock), timeout=5)
            qmp = Qmp(sock)
            drain_until(p, lambda: False, timeout=0.3)
            qmp.cmd("stop")  # paused first, as cella-vmm is and as libvirt's `virsh save` does
            qmp.cmd("migrate", uri=f"exec:cat > {state}")
            total = None
            for _ in range(2000):
                r = qmp.cmd("query-migrate")["return"]
                if r.get("status") == "completed":
                    total = r.get("total-time")
                    break
                if r.get("status") == "failed":
                    break
                drain_until(p, lambda: False, timeout=0.002)
            qmp.close()
        finally:
            stop(p)
            if os.path.exists(sock):
                os.unlink(sock)
        if total is None:
            log(f"  qemu migrate {i} did not complete")
            continue
        create.append(float(total))
        t, q = first_byte_ms(base + ["-incoming", f"exec:cat {state}"])
        stop(q)
        restore.append(t)
        os.unlink(state)
    return create, restore


def host_part(runs):
    log(f"(a) host KVM ({os.uname().release}), tiny counting guest, 16 MiB, median of {runs} runs")
    work = tempfile.mkdtemp(prefix="snap-", dir=WORK)
    try:
        cc, cr, ci = cella_host(work, runs)
        qc, qr = qemu_host(work, runs) if shutil.which(QEMU) else ([], [])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"  {'program':<10} {'create ms':>10} {'restore->running ms':>20} {'(in-process ms)':>16} {'runs':>5}")
    log(f"  {'cella-vmm':<10} {fmt(med(cc), '10.3f')} {fmt(med(cr), '20.3f')} {fmt(med(ci), '16.3f')} {len(cr):>5}")
    if qr:
        log(f"  {'qemu':<10} {fmt(med(qc), '10.3f')} {fmt(med(qr), '20.3f')} {'':>16} {len(qr):>5}")
        log(f"  cella-vmm/qemu: create {ratio(med(cc), med(qc))}, restore->running {ratio(med(cr), med(qr))}")
    else:
        log(f"  qemu: not measured ({QEMU} missing)")
    log("  restore->running target (issue 6: a 256 MiB guest under 5 ms on real hardware; "
        f"this tiny guest): {fmt(med(cr), '.2f')} ms")


# --- (b) sandbox ---

SCRIPT = r'''
B=/bench
CMD='console=ttyS0 quiet panic=-1'
KIT="-kernel /kit/vmlinuz -initrd /kit/initramfs.cpio.gz"
# store-global-state=off: the paused run state is not saved, so -incoming starts the guest once loaded
QEMU_BASE="qemu-system-x86_64 -M microvm -accel kvm -cpu host -nodefaults -no-user-config -nographic -no-reboot -smp 1 -global migration.store-global-state=off"
[ -c /dev/kvm ] || { echo "SKIP no /dev/kvm in the sandbox"; exit 1; }
echo "INFO kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo) mem $(grep MemTotal /proc/meminfo | tr -s ' ')"
# wait_for FILE PATTERN TENTHS
wait_for() { i=0; while ! grep -q "$2" "$1" && [ $i -lt $3 ]; do sleep 0.1; i=$((i+1)); done; grep -q "$2" "$1"; }
restore() { # LABEL CMD...: one measured restore
	l=$1; shift
	rm -f /tmp/o
	r=$($B/benchtime -l restore -t 120 -m pong-42 -o /tmp/o -e /tmp/e -- sh -c "$B/feed.sh | $*")
	echo "RES $M $l $r"
	case "$r" in *marker_ms=-1*)
		echo "ERR $M $l restore: $(tail -c 300 /tmp/e | tr '\n' ' ') | $(tail -c 200 /tmp/o | tr '\n' ' ')"
		# why the guest died, if it did: the kernel's own lines
		grep -a -m 8 -E 'Kernel panic|BUG:|Oops|RIP:|watchdog|lockup|Call Trace' /tmp/o | sed "s/^/ERR $M $l guest: /" ;;
	esac
}
for M in $SIZES; do
	# cella-vmm: boot, snapshots while idle at the shell prompt, then restores
	rm -rf /tmp/cs; mkfifo /tmp/cin
	cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --cmdline "$CMD" --memory $M --cpus 1 \
		--snapshot-dir /tmp/cs </tmp/cin >/tmp/cout 2>&1 &
	vmm=$!; exec 3>/tmp/cin
	wait_for /tmp/cout CELLA-INIT-READY 3000 || echo "ERR $M cella-vmm boot: $(tail -c 300 /tmp/cout)"
	sleep 2
	n=0
	while [ $n -lt $RUNS ]; do
		kill -USR2 $vmm
		i=0; while [ $(grep -c 'snapshot written' /tmp/cout) -le $n ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
		n=$((n+1))
		sleep 0.5
	done
	grep -o 'snapshot written to [^ ]* in [0-9.]* ms' /tmp/cout | sed "s/^/CREATE $M cella-vmm /"
	echo "SIZE $M cella-vmm $(du -k /tmp/cs/memory | cut -f1) $(du -k /tmp/cs/state | cut -f1)"
	kill -TERM $vmm; wait $vmm; exec 3>&-; rm -f /tmp/cin
	n=0; while [ $n -lt $RUNS ]; do restore cella-vmm cella-vmm --restore /tmp/cs; n=$((n+1)); done
	rm -rf /tmp/cs

	# QEMU: the same machine; HMP over a pipe chardev; live migration to a file
	# /tmp/qout too: QEMU truncates it only once it runs, and the previous size's READY line in it
	# would have the wait below return at once and the saves catch the guest mid-boot
	rm -f /tmp/qm.in /tmp/qm.out /tmp/q.state /tmp/qout /tmp/qmon; mkfifo /tmp/qm.in /tmp/qm.out
	$QEMU_BASE -m $M $KIT -append "$CMD" -serial file:/tmp/qout -chardev pipe,id=mon,path=/tmp/qm \
		-mon chardev=mon,mode=readline </dev/null >/tmp/qerr 2>&1 &
	q=$!
	cat /tmp/qm.out >/tmp/qmon &
	mcat=$!
	exec 5>/tmp/qm.in
	wait_for /tmp/qout CELLA-INIT-READY 3000 || echo "ERR $M qemu boot: $(tail -c 300 /tmp/qout) $(cat /tmp/qerr)"
	sleep 2
	n=0
	while [ $n -lt $RUNS ]; do
		start=$(wc -l </tmp/qmon)
		echo stop >&5
		echo "migrate \"exec:cat > /tmp/q.state\"" >&5
		i=0
		while ! tail -n +$((start + 1)) /tmp/qmon | grep -q 'Migration status: completed' && [ $i -lt 1200 ]; do
			echo "info migrate" >&5; sleep 0.05; i=$((i+1))
		done
		sleep 0.2
		tail -n +$((start + 1)) /tmp/qmon | grep -A3 'Migration status: completed' |
			grep -m1 -o 'total time: [0-9]* ms' | sed "s/^/CTOTAL $M qemu /"
		n=$((n+1))
		echo "cont" >&5
		sleep 0.5
	done
	echo "SIZE $M qemu $(du -k /tmp/q.state | cut -f1)"
	echo quit >&5; wait $q; exec 5>&-; kill $mcat 2>/dev/null
	n=0
	while [ $n -lt $RUNS ]; do
		restore qemu $QEMU_BASE -m $M $KIT -append "\"$CMD\"" -serial stdio -incoming "\"exec:cat /tmp/q.state\""
		n=$((n+1))
	done
	rm -f /tmp/q.state /tmp/qm.in /tmp/qm.out
done
echo DONE
'''


def sandbox_part(runs, sizes, timeout):
    sys.path.insert(0, os.path.join(TOP, "tests", "sandbox"))
    import sandbox
    ok, reason = sandbox.available()
    if not ok:
        log(f"skip sandbox part: {reason}")
        return
    static = os.path.join(BUILD, "cella-vmm-static")
    bt = os.path.join(BUILD, "bench", "benchtime")
    for f in (static, bt):
        if not os.access(f, os.X_OK):
            log(f"skip sandbox part: {os.path.relpath(f, TOP)} missing (make; bench/run builds benchtime)")
            return
    script = f"RUNS={runs}\nSIZES='{' '.join(str(s) for s in sizes)}'\n" + SCRIPT
    # the typed probe, every 100 ms until the answer is in /tmp/o (benchtime's copy of the output):
    # a probe typed before QEMU's incoming migration is done is lost, cella-vmm's first one is answered
    feed = os.path.join(WORK, "feed.sh")
    with open(feed, "w") as f:
        f.write("#!/bin/sh\ni=0\nwhile ! grep -q pong-42 /tmp/o 2>/dev/null && [ $i -lt 3000 ]; do\n"
                "  printf 'echo pong-$((6*7))\\n'; sleep 0.1; i=$((i+1))\ndone\nprintf 'exit 0\\n'\n")
    os.chmod(feed, 0o755)
    logpath = os.path.join(WORK, "sandbox.log")
    log(f"(b) nested sandbox, Linux guest kit, 1 vCPU, {'/'.join(f'{s} MiB' for s in sizes)}, median of {runs} "
        f"runs per VMM, one sandbox boot (raw log: {os.path.relpath(logpath, TOP)})")
    with open(logpath, "w") as lf:
        try:
            status, output = sandbox.run(script, files=[(bt, "/bench/benchtime"), (feed, "/bench/feed.sh")], with_qemu=True,
                                         timeout=timeout, memory=4096, stream=lf)
        except sandbox.SandboxError as e:
            # keep what was measured before the sandbox ended (its raw log has every line)
            output = e.output or open(logpath).read()
            if "\nDONE\n" not in output:
                log(f"  note: the sandbox ended early ({e}); figures below are the runs that completed")
    report_sandbox(output, sizes)


def report_sandbox(output, sizes):
    create, restore, sizes_kb, notes = {}, {}, {}, []
    for line in output.splitlines():
        a = line.split()
        if not a:
            continue
        if a[0] == "CREATE" and a[2] == "cella-vmm":
            m = re.search(r"in ([0-9.]+) ms", line)
            create.setdefault((a[1], a[2]), []).append(float(m.group(1)))
        elif a[0] == "CTOTAL":
            m = re.search(r"total time: ([0-9]+) ms", line)
            create.setdefault((a[1], a[2]), []).append(float(m.group(1)))
        elif a[0] == "RES":
            kv = dict(x.split("=", 1) for x in a[4:] if "=" in x)
            mk = float(kv.get("marker_ms", -1))
            restore.setdefault((a[1], a[2]), []).append(mk if mk >= 0 else None)
        elif a[0] == "SIZE":
            sizes_kb[(a[1], a[2])] = " + ".join(f"{int(x) / 1024:.1f}" for x in a[3:] if x.isdigit())
        elif a[0] in ("ERR", "SKIP", "INFO"):
            notes.append(line)
    for n in notes:
        log("  " + n)
    log(f"  {'guest':>7} {'program':<10} {'create ms':>10} {'restore->running ms':>20} {'files MiB':>16} {'ok':>6}")
    for s in sizes:
        s = str(s)
        for prog in ("cella-vmm", "qemu"):
            c, r = create.get((s, prog), []), restore.get((s, prog), [])
            okn = sum(1 for x in r if x is not None)
            log(f"  {s + ' MiB':>7} {prog:<10} {fmt(med(c), '10.1f')} {fmt(med(r), '20.1f')} "
                f"{sizes_kb.get((s, prog), '-'):>16} {okn:>3}/{len(r):<2}")
        cc, qc = med(create.get((s, "cella-vmm"), [])), med(create.get((s, "qemu"), []))
        cr, qr = med(restore.get((s, "cella-vmm"), [])), med(restore.get((s, "qemu"), []))
        log(f"  {s + ' MiB':>7} cella-vmm/qemu: create {ratio(cc, qc)}, restore->running {ratio(cr, qr)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=int(os.environ.get("BENCH_SNAPSHOT_RUNS", "3")))
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--no-sandbox", action="store_true")
    ap.add_argument("--no-host", action="store_true")
    ap.add_argument("--timeout", type=float, default=2400)
    ap.add_argument("--parse", metavar="LOG", help="only report the sandbox part from a saved raw log")
    args = ap.parse_args()
    if args.parse:
        report_sandbox(open(args.parse).read(), [int(x) for x in args.sizes.split(",")])
        return 0
    os.makedirs(WORK, exist_ok=True)
    if not os.access(VMM, os.X_OK):
        log("skip snapshot bench: build/cella-vmm not built (make)")
        return 0
    if not args.no_host:
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
            host_part(max(args.n, 10))
        except OSError as e:
            log(f"skip host part: /dev/kvm: {e.strerror}")
    if not args.no_sandbox:
        log("")
        sandbox_part(args.n, [int(x) for x in args.sizes.split(",")], args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
