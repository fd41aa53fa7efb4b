#!/usr/bin/python3
"""Density benchmark (issue 4): how many `sleep 3600` containers each runtime starts serially
with `RUNTIME run -d` in D seconds (30), the host memory each costs, and the time to
`delete -f` them all. cella (build/cella) vs runc vs crun, one runtime after the other, same
bundle, same config, same cgroup view (bench/runtime.py's pure-v1 private mount namespace: Debian's
crun 1.8.1 refuses this hybrid host).

Memory per container, with all of a round's containers running, two figures averaged over them:
- PSS: the sum of Pss (/proc/PID/smaps_rollup) of every process the runtime left for the
  containers: the processes in the containers' cgroups (here: the sleep) and any process of the
  runtime's own binary that is a parent of one (a shim or monitor; runc and crun leave none,
  neither does cella). Shared pages are split among their users, so the sum is what the
  containers cost in user memory, without the noise of whole-host counters.
- cgroup: memory.usage_in_bytes of each container's memory cgroup (v1): the pages charged to it,
  user and kernel (page tables, kernel stacks, slab of its namespaces and mounts as far as the
  kernel charges them), kmem part printed beside it.
Processes and cgroups are found by the round's container ids, so other load on the host does
not enter the figures (an earlier MemAvailable-drop figure did: 0.38 vs 0.02 MiB of noise).

Every round is cleaned up even on Ctrl-C or an error: delete -f of every container it started,
its --root state dir removed, and a leak check (cgroups, mounts) after.

Usage: bench/density.py [-d SECONDS] [-m MAX]   (root; prints a table on stdout)
"""
import argparse
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runtime as rtb  # noqa: E402  (bundle, runtimes, v1 view, cgroup listing, log)
from runtime import log  # noqa: E402

ID_PREFIX = "cdens"


def read_first(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def container_memory(name, argv0):
    """Memory of the round's running containers (ids f"{ID_PREFIX}-{name}-N"): a dict with the
    number of containers seen, their processes and the runtime's processes beside them, the
    summed PSS (KiB) of those processes, and the summed usage and kmem usage (KiB) of the
    containers' memory cgroups."""
    tag = f"/{ID_PREFIX}-{name}-"
    exe = os.path.realpath(argv0)
    in_ct, cgroups, ppids = [], set(), {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        cg = read_first(f"/proc/{d}/cgroup", "")
        mem = [l.split(":", 2)[2] for l in cg.splitlines() if l.count(":") >= 2 and
               "memory" in l.split(":", 2)[1].split(",")]
        if mem and tag in mem[0] + "/":
            in_ct.append(int(d))
            cgroups.add(mem[0])
        st = read_first(f"/proc/{d}/status", "")
        for l in st.splitlines():
            if l.startswith("PPid:"):
                ppids[int(d)] = int(l.split()[1])
    # A shim/monitor: a process of the runtime's own binary that is the parent of a container
    # process (found by the parent link, so another user's runtime processes do not count).
    monitors = set()
    for pid in in_ct:
        pp = ppids.get(pid, 0)
        if pp > 1 and pp not in in_ct:
            try:
                if os.path.realpath(f"/proc/{pp}/exe") == exe:
                    monitors.add(pp)
            except OSError:
                pass
    pss = 0
    for pid in in_ct + sorted(monitors):
        for l in read_first(f"/proc/{pid}/smaps_rollup", "").splitlines():
            if l.startswith("Pss:"):
                pss += int(l.split()[1])
    usage = kmem = 0
    for cg in cgroups:
        base = f"/sys/fs/cgroup/memory{cg}"
        usage += int(read_first(f"{base}/memory.usage_in_bytes", "0")) // 1024
        kmem += int(read_first(f"{base}/memory.kmem.usage_in_bytes", "0")) // 1024
    return {"cgroups": len(cgroups), "procs": len(in_ct), "monitors": len(monitors), "pss_kib": pss,
            "cg_kib": usage, "kmem_kib": kmem}


def capacity(maxn):
    """How many containers the host lets us start (each is one sleep process plus the runtime's
    short-lived ones): pid_max, threads-max and our pids cgroup, with headroom; and MAX."""
    limits = [maxn]
    with open("/proc/sys/kernel/pid_max") as f:
        limits.append(int(f.read()) // 2)
    with open("/proc/sys/kernel/threads-max") as f:
        limits.append(int(f.read()) // 2)
    with open("/proc/self/cgroup") as f:
        for l in f:
            _, ctl, path = l.rstrip("\n").split(":", 2)
            if "pids" in ctl.split(","):
                try:
                    with open(f"/sys/fs/cgroup/pids{path}/pids.max") as g:
                        v = g.read().strip()
                    if v != "max":
                        limits.append(int(v) // 2)
                except OSError:
                    pass
    return min(limits)


def round_(name, argv0, bundle, duration, cap):
    """One runtime's round. Returns a dict of figures (count, rate, kib_each, teardown_ms_each,
    error) after cleaning up."""
    root = tempfile.mkdtemp(prefix=f"{ID_PREFIX}-{name}-root-", dir="/run")
    started = []
    res = {"count": 0, "error": None}
    errf = os.path.join(rtb.WORK, f"density-{name}.err")
    cg_before = rtb.cgroup_dirs()
    try:
        t0 = time.monotonic()
        while len(started) < cap and time.monotonic() - t0 < duration:
            cid = f"{ID_PREFIX}-{name}-{len(started)}"
            started.append(cid)  # before run: an interrupted run -d may leave it half-created
            # stderr to a file: the detached container inherits the runtime's stdio, so a pipe
            # would never see EOF.
            with open(errf, "w+") as e:
                rc = subprocess.run([argv0, "--root", root, "run", "-d", "--bundle", bundle, cid],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e).returncode
                if rc != 0:
                    e.seek(0)
                    res["error"] = f"run -d #{len(started)} exited {rc}: {e.read().strip()[-200:]}"
                    break
        if res["error"]:
            subprocess.run([argv0, "--root", root, "delete", "-f", started.pop()], capture_output=True)
        elapsed = time.monotonic() - t0
        res["count"] = len(started)
        res["rate"] = len(started) / elapsed if elapsed else 0
        time.sleep(1)  # let the runtimes' exiting processes go before reading memory
        n = max(1, len(started))
        mem = container_memory(name, argv0)
        res.update(mem)
        res["pss_each"] = mem["pss_kib"] / n
        res["cg_each"] = mem["cg_kib"] / n
        res["kmem_each"] = mem["kmem_kib"] / n
        t1 = time.monotonic()
        while started:
            cid = started[-1]
            subprocess.run([argv0, "--root", root, "delete", "-f", cid],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.pop()
        res["teardown_ms_each"] = (time.monotonic() - t1) * 1000 / n
    finally:
        # Ctrl-C or an error mid-round: what is still running goes now.
        for cid in started:
            subprocess.run([argv0, "--root", root, "delete", "-f", cid], capture_output=True)
        leaks = []
        left = [e for e in os.listdir(root) if not e.startswith(".")] if os.path.isdir(root) else []
        if left:
            leaks.append(f"state under {root}: {left[:3]} ({len(left)})")
        shutil.rmtree(root, ignore_errors=True)
        leaks += [f"cgroup {p}" for p in sorted(rtb.cgroup_dirs() - cg_before) if ID_PREFIX in p]
        with open("/proc/self/mountinfo") as f:
            leaks += [f"mount {l.split()[4]}" for l in f if ID_PREFIX in l]
        for l in leaks:
            log(f"LEAK ({name}): {l}")
        if not leaks:
            log(f"cleanup ({name}): no containers, state dirs, cgroups or mounts left behind")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-d", type=float, default=30, help="seconds of `run -d` per runtime (30)")
    ap.add_argument("-m", type=int, default=10000, help="at most this many containers per runtime")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("skip density bench: needs root")
        return 0
    os.makedirs(rtb.WORK, exist_ok=True)
    if not args.inner:
        # The pure-v1 view lives in a private mount namespace: run ourselves inside one. The
        # child gets Ctrl-C too and cleans up; we wait for it rather than kill it.
        p = subprocess.Popen(["unshare", "-m", "--propagation", "private", sys.executable,
                              os.path.abspath(__file__), "--inner", "-d", str(args.d), "-m", str(args.m)])
        while True:
            try:
                return p.wait()
            except KeyboardInterrupt:
                continue
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rtb.make_v1_view()
    rootfs, origin = rtb.make_rootfs()
    bundle = rtb.make_bundle(rootfs, args=("/bin/sleep", "3600"), name="density-bundle")
    cap = capacity(args.m)
    log(f"bundle: {bundle} (rootfs from {origin}); runc spec default, args /bin/sleep 3600, "
        f"namespaces pid/net/ipc/uts/mount; pure-v1 cgroup view (as bench/runtime.py)")
    log(f"method: `run -d` serially for {args.d:g} s (at most {cap}: pid/thread limits halved), "
        "memory = PSS of the processes left per container and its memory cgroup's usage, "
        "then `delete -f` of each; one runtime after the other")
    results = {}
    for name, argv0 in rtb.runtimes():
        log(f"round {name}: {argv0}")
        results[name] = round_(name, argv0, bundle, args.d, cap)
        if results[name]["error"]:
            log(f"  stopped early: {results[name]['error']}")
    log("")
    log(f"density: `run -d` of sleep 3600 for {args.d:g} s, then `delete -f` of each")
    log(f"  {'runtime':<8} {'started':>8} {'per s':>7} {'procs':>6} {'PSS KiB each':>13} "
        f"{'cgroup KiB each':>16} {'(kmem':>7} {'teardown ms each':>17}")
    for name, r in results.items():
        if "pss_each" not in r:
            log(f"  {name:<8} {r['count']:8d}  (interrupted)")
            continue
        procs = f"{r['procs']}+{r['monitors']}" if r["monitors"] else f"{r['procs']}"
        log(f"  {name:<8} {r['count']:8d} {r['rate']:7.1f} {procs:>6} {r['pss_each']:13.1f} "
            f"{r['cg_each']:16.1f} {r['kmem_each']:6.1f}) {r['teardown_ms_each']:17.2f}")
        if r["cgroups"] != r["count"]:
            log(f"  note: {name}: {r['cgroups']} container memory cgroups for {r['count']} containers")
    log("  procs: container processes found (+ runtime processes beside them); PSS from smaps_rollup; "
        "cgroup: memory.usage_in_bytes (kmem part)")
    c = results.get("cella")
    ratio = lambda a, b: a / b if b else float("nan")
    for peer in ("crun", "runc"):
        p = results.get(peer)
        if not c or not p or "pss_each" not in c or "pss_each" not in p or not p["count"]:
            continue
        cnt = ratio(c["count"], p["count"])
        td = ratio(c["teardown_ms_each"], p["teardown_ms_each"])
        verdict = ""
        if peer == "crun":
            ok = cnt >= 1.2 and td < 1.0
            verdict = f"  [target >= 1.20x count, teardown < 1.00x: {'MET' if ok else 'NOT MET'}]"
        log(f"  cella/{peer}: count {cnt:.2f}x, PSS {ratio(c['pss_each'], p['pss_each']):.2f}x, "
            f"cgroup {ratio(c['cg_each'], p['cg_each']):.2f}x, teardown {td:.2f}x{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
