#!/usr/bin/python3
"""VMM benchmark (issue 3), run in one boot of the nested-KVM sandbox (tests/sandbox/).

This host has no usable /dev/kvm, so every figure is taken inside the sandbox: a QEMU TCG
machine with kvm-amd, i.e. nested KVM on an emulated CPU. Absolute times are therefore many
times those of real hardware; the ratios between programs measured in the same sandbox run
are what this benchmark is for.

(a) Tiny guest. One 64 KiB flat binary, byte for byte the same for every program:
      offset 0:      mov dx,0x3f8; mov al,'X'; out dx,al     one byte to the serial port
                     mov al,0xfe; out 0x64,al                 i8042 reset: VMM exits here
                     cs lidt [idt0]; int3; jmp $              triple fault (machines without
                                                              an i8042, i.e. QEMU microvm)
      offset 20:     idt0: limit 0, base 0
      offset 0xfff0: jmp 0 (near)                             reset vector
    cella-vmm and kvm_floor load it at 0x10000 and enter it at CS=0x1000, IP=0; QEMU microvm
    takes it as its firmware (-bios): QEMU maps it below 4 GiB and the CPU starts at the
    reset vector, CS base 0xffff0000, whose near jump lands on offset 0. The same real-mode
    instructions run in every case. QEMU microvm has no i8042, so it ends by the triple fault
    (-no-reboot turns the reset into an exit); the others exit at the i8042 write, two
    instructions earlier. Memory is 16 MiB for all three.
      floor      bench/kvm_floor.c: one memory region, one vCPU, no irqchip, no threads
      cella-vmm  build/cella-vmm-static --kernel tiny.bin --memory 16 --cpus 1 --console stdio
      qemu       qemu-system-x86_64 -M microvm -accel kvm -nodefaults -no-user-config
                 -nographic -serial stdio -no-reboot -m 16 -bios tiny.bin
    (a1) on this host's /dev/kvm (kvm_pvm, where tiny real-mode guests run), floor and
    cella-vmm in alternating rounds; QEMU is left out there: kvm_pvm cannot emulate its
    triple-fault exit (an emulation failure after the serial byte). (a2) the same three
    programs inside the sandbox, i.e. on a standard KVM (nested, under TCG).
    Figures: VMM start to first serial byte, to process exit, peak RSS (bench/benchtime), and
    the median over rounds of each round's cella-vmm/floor ratio (the programs of one round
    run back to back, so load from other work on the host moves both). The RSS range shows
    transparent huge pages: the sandbox kernel has THP "always", so the first touch of guest
    RAM may fault in a 2 MiB page (RSS +2 MiB) or not.
    Targets: cella-vmm exit within 1.3x of the floor's, peak RSS <= 2 MiB.

(b) Linux. The guest kit's Debian kernel (bzImage) + initramfs, 256 MiB, 1 vCPU, command
    line "console=ttyS0 quiet -- true" (init prints CELLA-INIT-READY, runs `true`, powers
    off); cella-vmm vs qemu -M microvm,rtc=off -accel kvm -cpu host (same kernel, initrd,
    cmdline, memory, cpus), one boot of each per round, after a warm-up round. QEMU runs
    without its RTC (rtc=off) because cella-vmm declares none (FADT IAPC_BOOT_ARCH "CMOS RTC
    not present"): with one, the guest kernel spends seconds probing it nested, which would
    flatter cella-vmm. Figures: VMM start to the marker line (host side), the guest's uptime
    at the marker, cella-vmm's boot-timer log line, process exit, peak RSS, all as medians
    with min-max, and the median of per-round cella/QEMU ratios. Target: cella-vmm reaches
    the marker faster than QEMU.

Usage: bench/vmm.py [-n HOST_TINY_RUNS] [-s SANDBOX_TINY_RUNS] [-b BOOTS]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(TOP, "build")
HELPERS = os.path.join(BUILD, "bench")
WORK = os.path.join(BUILD, "bench", "vmm")
VMM_STATIC = os.path.join(BUILD, "cella-vmm-static")
QEMU = "qemu-system-x86_64"
CMDLINE = "console=ttyS0 quiet -- true"


def log(msg=""):
    print(msg, flush=True)


def tiny_guest():
    code = bytes([
        0xBA, 0xF8, 0x03,              # mov dx, 0x3f8
        0xB0, 0x58,                    # mov al, 'X'
        0xEE,                          # out dx, al
        0xB0, 0xFE,                    # mov al, 0xfe
        0xE6, 0x64,                    # out 0x64, al
        0x2E, 0x0F, 0x01, 0x1E, 20, 0,  # lidt cs:[20]
        0xCC,                          # int3 -> #GP -> #DF -> triple fault
        0xEB, 0xFE,                    # jmp $
        0x90,                          # nop (pad)
    ]) + bytes(6)                      # offset 20: IDT descriptor, limit 0, base 0
    img = bytearray(65536)
    img[:len(code)] = code
    img[0xFFF0:0xFFF3] = bytes([0xE9, 0x0D, 0x00])  # jmp near 0 (0xfff3 + 0x000d wraps to 0)
    path = os.path.join(WORK, "tiny.bin")
    with open(path, "wb") as f:
        f.write(img)
    return path


SCRIPT = r'''
B=/bench
QEMU_BASE="qemu-system-x86_64 -M microvm -accel kvm -nodefaults -no-user-config -nographic -serial stdio -no-reboot"
QEMU_LINUX="qemu-system-x86_64 -M microvm,rtc=off -accel kvm -nodefaults -no-user-config -nographic -serial stdio -no-reboot"
have_vmm=0; [ -x /bin/cella-vmm ] && have_vmm=1
[ -c /dev/kvm ] || { echo "SKIP no /dev/kvm in the sandbox"; exit 1; }
m() { # GROUP LABEL TIMEOUT CMD...: one measured run; prints RES, OUT, and for Linux, UPT/BT
	g=$1; l=$2; t=$3; shift 3
	r=$($B/benchtime -l "$g" -t "$t" -m CELLA-INIT-READY -o /tmp/o -e /tmp/e -- "$@")
	echo "RES $l $r"
	printf 'OUT %s %s | %s\n' "$g" "$l" "$(head -c 300 /tmp/o | tr -c 'A-Za-z0-9=._:-' ' ' | tr -s ' ' | head -c 100)"
	if [ "$g" = linux ]; then
		echo "UPT $l $(grep -o 'CELLA-INIT-READY uptime=[0-9.]*' /tmp/o | head -1 | cut -d= -f2)"
		echo "BT $l $(grep -i 'boot.timer' /tmp/e | head -1)"
	fi
	case "$r" in *status=0) ;; *) echo "ERR $g $l: $(tail -c 400 /tmp/e | tr '\n' ' ')" ;; esac
}
echo "INFO kernel $(uname -r) cpus $(grep -c ^processor /proc/cpuinfo) mem $(grep MemTotal /proc/meminfo | tr -s ' ')"
i=0
while [ $i -lt $((TINY_WARMUP + TINY_RUNS)) ]; do
	[ $i -lt $TINY_WARMUP ] && g=warm || g=tiny
	m $g floor 30 $B/kvm_floor $B/tiny.bin 16
	[ $have_vmm = 1 ] && m $g cella-vmm 30 cella-vmm --kernel $B/tiny.bin --memory 16 --cpus 1 --console stdio
	m $g qemu 30 $QEMU_BASE -m 16 -bios $B/tiny.bin
	i=$((i + 1))
done
i=0
while [ $i -lt $((BOOT_WARMUP + BOOTS)) ]; do
	[ $i -lt $BOOT_WARMUP ] && g=warmlinux || g=linux
	[ $have_vmm = 1 ] && m $g cella-vmm 120 cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --cmdline "$CMDLINE" --memory 256 --cpus 1 --console stdio
	m $g qemu 120 $QEMU_LINUX -cpu host -m 256 -smp 1 -kernel /kit/vmlinuz -initrd /kit/initramfs.cpio.gz -append "$CMDLINE"
	i=$((i + 1))
done
echo DONE
'''


def parse(output):
    """{(group, label): [dict(fields)]}, plus notes and errors."""
    res, outs, notes = {}, {}, []
    pending = {}
    for line in output.splitlines():
        a = line.split(" ", 2)
        if a[0] == "RES" and len(a) == 3:
            f = a[2].split()
            rec = dict(kv.split("=", 1) for kv in f[1:] if "=" in kv)
            rec = {k: float(v) for k, v in rec.items()}
            res.setdefault((f[0], a[1]), []).append(rec)
            pending[a[1]] = rec
        elif a[0] == "UPT" and a[1] in pending:
            try:
                pending[a[1]]["uptime_s"] = float(a[2])
            except (IndexError, ValueError):
                pass
        elif a[0] == "BT" and a[1] in pending and len(a) == 3 and a[2].strip():
            pending[a[1]]["bt"] = a[2].strip()
        elif a[0] == "OUT":
            outs.setdefault(a[1] + " " + a[2].split(" | ")[0], a[2].split(" | ", 1)[-1])
        elif a[0] in ("ERR", "SKIP", "INFO"):
            notes.append(line)
    return res, outs, notes


def bt_ms(text):
    """The time in a boot-timer log line, in ms ('... 123.4 ms' or '... 0.1234 s')."""
    text = re.split(r"(?i)boot.timer", text, maxsplit=1)[-1]  # past the log line's timestamp
    m = re.search(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|us|µs|s)\b", text)
    if not m:
        return None
    v = float(m.group(1))
    return {"ms": v, "us": v / 1e3, "µs": v / 1e3, "s": v * 1e3}[m.group(2)]


def med(recs, key):
    xs = [r[key] for r in recs if key in r and r[key] >= 0]
    return statistics.median(xs) if xs else None


def paired(a, b, key):
    """Median over rounds of a[i][key] / b[i][key]: runs i of both programs were back to back,
    so this ratio is robust to load drifting during the sandbox run. None if not paired."""
    if not a or not b or len(a) != len(b):
        return None
    rs = [x[key] / y[key] for x, y in zip(a, b) if x.get(key, -1) > 0 and y.get(key, -1) > 0]
    return statistics.median(rs) if rs else None


def pr(v):
    return f"{v:.2f}x" if v is not None else "n/a"


def rss_range(recs):
    xs = [r["maxrss_kb"] / 1024 for r in recs]
    return f"{min(xs):.2f}-{max(xs):.2f}"


def fmt(v, spec="9.1f"):
    return format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0])


def rng(recs, key):
    xs = [r[key] for r in recs if key in r and r[key] >= 0]
    return f"{min(xs):.0f}-{max(xs):.0f}" if xs else "-"


def report_tiny(res, outs, group, title):
    log(title)
    log(f"  {'program':<10} {'first byte ms':>14} {'exit ms':>9} {'(min-max)':>12} {'peak RSS MiB':>13} "
        f"{'(min-max)':>12} {'ok':>5}  output")
    rows = {}
    for label in ("floor", "cella-vmm", "qemu"):
        recs = res.get((group, label))
        if not recs:
            continue
        ok = sum(1 for r in recs if r["status"] == 0)
        fb, ex, rss = med(recs, "first_byte_ms"), med(recs, "wall_ms"), med(recs, "maxrss_kb")
        rows[label] = (fb, ex, rss)
        log(f"  {label:<10} {fmt(fb, '14.2f')} {fmt(ex, '9.2f')} {rng(recs, 'wall_ms'):>12} {rss / 1024:13.2f} "
            f"{rss_range(recs):>12} {ok:>2}/{len(recs):<2}  {outs.get(group + ' ' + label, '')[:30]!r}")
    if "cella-vmm" in rows:
        fb, ex, rss = rows["cella-vmm"]
        if "floor" in rows:
            r = paired(res.get((group, "cella-vmm")), res.get((group, "floor")), "wall_ms")
            r = ex / rows["floor"][1] if r is None else r
            log(f"  cella-vmm/floor: exit {r:.2f}x (median of per-round ratios) "
                f"[target <= 1.30x: {'MET' if r <= 1.3 else 'NOT MET'}], ratio of medians: exit "
                f"{ex / rows['floor'][1]:.2f}x, first byte {fb / rows['floor'][0]:.2f}x, "
                f"RSS {rss / rows['floor'][2]:.2f}x")
        log(f"  cella-vmm peak RSS {rss / 1024:.2f} MiB [target <= 2 MiB: {'MET' if rss <= 2048 else 'NOT MET'}]")
        if "qemu" in rows:
            q = rows["qemu"]
            log(f"  cella-vmm/qemu: first byte {fb / q[0]:.2f}x, exit {ex / q[1]:.2f}x, RSS {rss / q[2]:.2f}x")
    log("")


def report(res, outs, notes, host_runs, tiny_runs, boots):
    for n in notes:
        log(n)
    log("")
    if any(g == "host" for g, _ in res):
        report_tiny(res, outs, "host", f"(a1) tiny guest (serial byte, then i8042 reset), median of {host_runs} "
                    "rounds, on this host's /dev/kvm")
    report_tiny(res, outs, "tiny", f"(a2) tiny guest (serial byte, then i8042 reset / triple fault), median "
                f"of {tiny_runs} rounds, in the nested sandbox")
    log(f"(b) Linux boot (Debian bzImage + guest-kit initramfs, 256 MiB, 1 vCPU, \"{CMDLINE}\"), "
        f"median of {boots} boots, in the same sandbox run")
    log(f"  {'program':<10} {'marker ms':>10} {'(min-max)':>12} {'guest uptime ms':>16} {'boot timer ms':>14} "
        f"{'exit ms':>9} {'peak RSS MiB':>13} {'(min-max)':>14} {'ok':>5}")
    rows = {}
    for label in ("cella-vmm", "qemu"):
        recs = res.get(("linux", label))
        if not recs:
            continue
        for r in recs:
            if "bt" in r and bt_ms(r["bt"]) is not None:
                r["bt_ms"] = bt_ms(r["bt"])
            if "uptime_s" in r:
                r["uptime_ms"] = r["uptime_s"] * 1e3
        ok = sum(1 for r in recs if r["status"] == 0 and r["marker_ms"] >= 0)
        mk, up, bt = med(recs, "marker_ms"), med(recs, "uptime_ms"), med(recs, "bt_ms")
        ex, rss = med(recs, "wall_ms"), med(recs, "maxrss_kb")
        rows[label] = (mk, ex, rss)
        log(f"  {label:<10} {fmt(mk, '10.1f')} {rng(recs, 'marker_ms'):>12} {fmt(up, '16.1f')} {fmt(bt, '14.1f')} {fmt(ex, '9.1f')} "
            f"{rss / 1024:13.2f} {rss_range(recs):>14} {ok:>2}/{len(recs):<2}")
    if "cella-vmm" in rows and "qemu" in rows and rows["cella-vmm"][0] and rows["qemu"][0]:
        c, q = rows["cella-vmm"], rows["qemu"]
        r = c[0] / q[0]
        log(f"  cella-vmm/qemu: marker {r:.2f}x [target < 1.00x: {'MET' if r < 1 else 'NOT MET'}], "
            f"exit {c[1] / q[1]:.2f}x, RSS {c[2] / q[2]:.2f}x")
        cr, qr = res.get(("linux", "cella-vmm")), res.get(("linux", "qemu"))
        log(f"  cella-vmm/qemu, median of per-boot ratios (boots back to back): marker "
            f"{pr(paired(cr, qr, 'marker_ms'))}, exit {pr(paired(cr, qr, 'wall_ms'))}")


def host_tiny(tiny, runs, warmup=3):
    """(a1): floor and cella-vmm on this host's /dev/kvm, alternating; RES lines as in the sandbox."""
    bt = os.path.join(HELPERS, "benchtime")
    progs = [("floor", [os.path.join(HELPERS, "kvm_floor"), tiny, "16"])]
    if os.access(VMM_STATIC, os.X_OK):
        progs.append(("cella-vmm", [VMM_STATIC, "--kernel", tiny, "--memory", "16", "--cpus", "1",
                                    "--console", "stdio"]))
    lines = []
    for i in range(warmup + runs):
        group = "warm" if i < warmup else "host"
        for label, cmd in progs:
            p = subprocess.run([bt, "-l", group, "-t", "30", "-o", os.path.join(WORK, "host.out"),
                                "-e", os.path.join(WORK, "host.err"), "--"] + cmd,
                               stdout=subprocess.PIPE, text=True)
            lines.append(f"RES {label} {p.stdout.strip()}")
            with open(os.path.join(WORK, "host.out"), errors="replace") as f:
                lines.append(f"OUT {group} {label} | {f.read(100).strip()}")
            if " status=0" not in p.stdout:
                with open(os.path.join(WORK, "host.err"), errors="replace") as f:
                    lines.append(f"ERR host {label}: {f.read()[-300:]}")
    return "\n".join(lines) + "\n"


def host_kvm_usable():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30, help="tiny-guest rounds on the host KVM (default 30)")
    ap.add_argument("-s", type=int, default=10, help="tiny-guest rounds in the sandbox (default 10)")
    ap.add_argument("-b", type=int, default=6, help="Linux boots per VMM (default 6)")
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--host-only", action="store_true",
                    help="only part (a1): the tiny guest on this host's /dev/kvm, no sandbox boot")
    args = ap.parse_args()

    if not shutil.which(QEMU):
        log(f"skip vmm bench: {QEMU} not installed (apt-get install -y qemu-system-x86)")
        return 0
    for h in ("benchtime", "kvm_floor"):
        if not os.access(os.path.join(HELPERS, h), os.X_OK):
            log(f"skip vmm bench: build/bench/{h} missing (bench/run builds it)")
            return 0
    sys.path.insert(0, os.path.join(TOP, "tests", "sandbox"))
    try:
        import sandbox
    except ImportError as e:
        log(f"skip vmm bench: the nested-KVM sandbox (tests/sandbox/sandbox.py) is not there ({e})")
        return 0
    ok, reason = sandbox.available()
    if not ok:
        log(f"skip vmm bench: sandbox unavailable: {reason}")
        return 0
    os.makedirs(WORK, exist_ok=True)
    if not os.access(VMM_STATIC, os.X_OK):
        log("skip cella-vmm rows: build/cella-vmm-static not built yet (make)")
    tiny = tiny_guest()

    host_out = ""
    if host_kvm_usable():
        log(f"vmm bench (a1): {args.n} tiny-guest rounds on this host's /dev/kvm")
        host_out = host_tiny(tiny, args.n)
    else:
        log("skip (a1): this host's /dev/kvm cannot be opened")
    if args.host_only:
        res, outs, _ = parse(host_out)
        if any(g == "host" for g, _ in res):
            report_tiny(res, outs, "host", f"(a1) tiny guest (serial byte, then i8042 reset), median of "
                        f"{args.n} rounds, on this host's /dev/kvm")
        return 0
    script = (f"TINY_WARMUP=2 TINY_RUNS={args.s} BOOT_WARMUP=1 BOOTS={args.b}\n"
              f"CMDLINE='{CMDLINE}'\n" + SCRIPT)
    files = [(os.path.join(HELPERS, "benchtime"), "/bench/benchtime"),
             (os.path.join(HELPERS, "kvm_floor"), "/bench/kvm_floor"),
             (tiny, "/bench/tiny.bin")]
    log(f"vmm bench (a2, b): one sandbox boot (QEMU TCG -cpu {sandbox.CPU}, {sandbox.CPUS} vCPU(s), "
        f"nested kvm-amd), {args.s} tiny rounds and {args.b} Linux boots per program; raw log: "
        f"{os.path.relpath(WORK, TOP)}/sandbox.log")
    with open(os.path.join(WORK, "sandbox.log"), "w") as logf:
        try:
            status, output = sandbox.run(script, files=files, with_qemu=True, timeout=args.timeout,
                                         stream=logf)
        except sandbox.SandboxError as e:
            logf.write(e.output or "")
            # The script's own DONE line proves every measurement was printed: keep them even
            # when the sandbox lost its end-of-script marker.
            if "\nDONE\n" not in (e.output or ""):
                log(f"vmm bench failed: sandbox: {e} (see {os.path.relpath(WORK, TOP)}/sandbox.log)")
                return 1
            log(f"note: sandbox reported \"{e}\" after the script printed DONE; figures kept")
            output = e.output[e.output.find("\nINFO "):]
    res, outs, notes = parse(host_out + output)
    if "DONE" not in output:
        log(f"vmm bench: sandbox script ended early (status {status})")
    report(res, outs, notes, args.n, args.s, args.b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
