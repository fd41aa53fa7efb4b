#!/usr/bin/python3
"""Runtime benchmark (issue 2): `RUNTIME run` of /bin/true in one busybox bundle.

For each runtime (cella = build/cella, runc, crun) it measures, in the same run and on the same
bundle and config, the wall time of `RUNTIME --root DIR run --bundle B ID` and the peak RSS of
the runtime's process tree (bench/benchtime: wait4() rusage, subreaper; same method for all).
Runs are interleaved (one of each runtime per round) so drift hits all runtimes alike. In the
pure-v1 view it also times `RUNTIME exec ID /bin/true` into a running container of each runtime.

Cgroup view. This host is "hybrid": cgroup v1 controllers plus a cgroup2 mount at
/sys/fs/cgroup/unified holding no controllers. Debian's crun 1.8.1 refuses that ("cgroups in
hybrid mode not supported"). So the main table runs every runtime in one private mount
namespace (unshare -m, propagation private) whose /sys/fs/cgroup is a fresh tmpfs holding bind
mounts of the host's v1 hierarchies only (no "unified" directory at all): a pure cgroup v1 view,
the layout of a v1-only host. Merely unmounting /sys/fs/cgroup/unified is not enough: crun then
mkdirs its "0::" cgroup in the plain tmpfs directory left underneath and never removes it. The
same namespace is used for all three runtimes; it and its tmpfs vanish when the bench ends. A second table runs
cella and runc on the host's own (hybrid) view, for reference; crun cannot run there.

Usage: bench/runtime.py [-n RUNS] [-w WARMUP]   (run as root; prints tables on stdout)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(TOP, "build")
BENCHTIME = os.path.join(BUILD, "bench", "benchtime")
WORK = os.path.join(BUILD, "bench", "runtime")
ID_PREFIX = "cbench"


def log(msg):
    print(msg, flush=True)


def make_rootfs():
    """A busybox rootfs: from scripts/mk-bundle.sh when it exists, else from /bin/busybox
    (Debian's busybox-static). Returns the rootfs path."""
    mk = os.path.join(TOP, "scripts", "mk-bundle.sh")
    if os.access(mk, os.X_OK):
        r = subprocess.run([mk], capture_output=True, text=True)
        lines = r.stdout.strip().splitlines()
        if r.returncode == 0 and lines:
            path = lines[-1].strip()
            path = path.split("=", 1)[1] if "=" in path else path
            for cand in (os.path.join(path, "rootfs"), path):
                if os.path.exists(os.path.join(cand, "bin", "true")):
                    return cand, "scripts/mk-bundle.sh"
        log(f"note: scripts/mk-bundle.sh gave no usable rootfs (rc {r.returncode}); "
            "building one from /bin/busybox")
    bb = shutil.which("busybox") or "/bin/busybox"
    out = subprocess.run(["file", "-L", bb], capture_output=True, text=True).stdout
    if "statically linked" not in out:
        sys.exit(f"runtime bench: {bb} is not static busybox (apt-get install busybox-static)")
    rootfs = os.path.join(WORK, "rootfs")
    if not os.path.exists(os.path.join(rootfs, "bin", "true")):
        shutil.rmtree(rootfs, ignore_errors=True)
        for d in ("bin", "proc", "sys", "dev", "tmp", "etc"):
            os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        shutil.copy2(bb, os.path.join(rootfs, "bin", "busybox"))
        for applet in ("sh", "true", "false", "echo", "cat", "ls", "sleep"):
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    return rootfs, "/bin/busybox (busybox-static)"


def make_bundle(rootfs, args=("/bin/true",), name="bundle"):
    """config.json = `runc spec`'s default with terminal off and the given args: namespaces
    pid, network, ipc, uts, mount; readonly root; the usual /proc /dev /sys mounts,
    capabilities, rlimit, masked and readonly paths; devices cgroup deny-all."""
    bundle = os.path.join(WORK, name)
    os.makedirs(bundle, exist_ok=True)
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    config = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return bundle


def runtimes():
    """(name, argv0) of every runtime present; a missing one is reported and skipped."""
    found = []
    cella = os.path.join(BUILD, "cella")
    if os.access(cella, os.X_OK):
        found.append(("cella", cella))
    else:
        log("skip cella: build/cella not built yet (make)")
    for name in ("runc", "crun"):
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
        if path:
            found.append((name, path))
        else:
            log(f"skip {name}: not installed (apt-get install -y {name})")
    return found


def measure(argv, label):
    r = subprocess.run([BENCHTIME, "-t", "30", "-l", label, "-o", os.path.join(WORK, f"{label}.out"),
                        "--"] + argv, capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith(label + " "):
        raise RuntimeError(f"benchtime failed: {r.stderr.strip()}")
    fields = dict(kv.split("=", 1) for kv in r.stdout.split()[1:])
    return float(fields["wall_ms"]), int(fields["maxrss_kb"]), int(fields["status"])


def cgroup_dirs():
    """Every cgroup directory down to 4 levels below /sys/fs/cgroup (a set of paths)."""
    found = set()
    for base, dirs, _ in os.walk("/sys/fs/cgroup"):
        found.update(os.path.join(base, d) for d in dirs)
        if base[len("/sys/fs/cgroup"):].count("/") >= 3:
            dirs[:] = []
    return found


def bench_view(view, rts, bundle, runs, warmup):
    """Runs every runtime WARMUP + RUNS times, interleaved. Returns {name: (times, rss)} for
    the runtimes that worked; a runtime whose first run fails is reported and dropped."""
    roots = {name: tempfile.mkdtemp(prefix=f"{ID_PREFIX}-{name}-root-", dir="/run") for name, _ in rts}
    results = {name: ([], []) for name, _ in rts}
    cgroups_before = cgroup_dirs()
    alive = dict(rts)
    try:
        for i in range(warmup + runs):
            for name in list(alive):
                cid = f"{ID_PREFIX}-{view}-{name}-{i}"
                argv = [alive[name], "--root", roots[name], "run", "--bundle", bundle, cid]
                wall, rss, status = measure(argv, name)
                if status != 0:
                    out = open(os.path.join(WORK, f"{name}.out")).read().strip().splitlines()
                    log(f"skip {name} ({view} view): `run` exited {status}: "
                        f"{out[-1] if out else 'no output'}")
                    subprocess.run([alive[name], "--root", roots[name], "delete", "--force", cid],
                                   capture_output=True)
                    del alive[name]
                    del results[name]
                    continue
                if i >= warmup:
                    results[name][0].append(wall)
                    results[name][1].append(rss)
    finally:
        leak_check(f"{view} view", roots, cgroups_before, (ID_PREFIX, bundle))
    return results


def leak_check(label, roots, cgroups_before, mount_marks):
    """Reports (and removes) what the runs left: entries in the runtimes' --root dirs, new cgroup
    directories, mounts naming one of mount_marks."""
    leaks = []
    for name, root in roots.items():
        left = [e for e in os.listdir(root) if not e.startswith(".")] if os.path.isdir(root) else []
        if left:
            leaks.append(f"{name} --root {root}: {left[:3]}")
        shutil.rmtree(root, ignore_errors=True)
    leaks += [f"cgroup {p}" for p in sorted(cgroup_dirs() - cgroups_before)]
    with open("/proc/self/mountinfo") as f:
        leaks += [f"mount {l.split()[4]}" for l in f if any(m in l for m in mount_marks)]
    for l in leaks:
        log(f"LEAK ({label}): {l}")
    if not leaks:
        log(f"leak check ({label}): no state dirs, cgroups or mounts left behind")


def med(xs):
    return statistics.median(xs)


def table(title, results):
    """The per-runtime rows: median, min and p90 wall time, median and range of peak RSS."""
    log("")
    log(title)
    log(f"  {'runtime':<8} {'wall ms':>9} {'min ms':>8} {'p90 ms':>8} {'peak RSS MiB':>13} {'(min-max)':>12}")
    for name, (t, r) in results.items():
        p90 = sorted(t)[max(0, int(len(t) * 0.9) - 1)]
        log(f"  {name:<8} {med(t):9.2f} {min(t):8.2f} {p90:8.2f} {med(r) / 1024:13.2f} "
            f"{min(r) / 1024:5.2f}-{max(r) / 1024:.2f}")


def report(view, results, runs):
    table(f"runtime `run /bin/true`, {view} cgroup view: median of {runs} runs", results)
    if "cella" not in results:
        log("  cella/crun, cella/runc: n/a (cella was not measured: see the skip line above)")
    else:
        ct, cr = med(results["cella"][0]), med(results["cella"][1])
        for peer, tgt in (("crun", "target <= 0.80x time, <= 1.00x RSS"), ("runc", "")):
            if peer not in results:
                continue
            pt, pr = med(results[peer][0]), med(results[peer][1])
            verdict = ""
            if peer == "crun":
                ok = ct <= 0.8 * pt and cr <= pr
                verdict = f"  [{tgt}: {'MET' if ok else 'NOT MET'}]"
            t_c, t_p = results["cella"][0], results[peer][0]
            per_round = (f"; median of per-round ratios {statistics.median(a / b for a, b in zip(t_c, t_p)):.2f}x"
                         if len(t_c) == len(t_p) else "")
            log(f"  cella/{peer}: time {ct / pt:.2f}x, RSS {cr / pr:.2f}x{verdict}{per_round}")


def bench_exec(view, rts, rootfs, runs, warmup):
    """`RUNTIME exec ID /bin/true` into a running `sleep` container of each runtime, interleaved
    round by round (what a probe or `kubectl exec` costs). Returns {name: (times, rss)}."""
    bundle = make_bundle(rootfs, args=("/bin/sleep", "3600"), name="bundle-sleep")
    roots = {name: tempfile.mkdtemp(prefix=f"{ID_PREFIX}-{name}-exec-", dir="/run") for name, _ in rts}
    results, alive = {}, {}
    cgroups_before = cgroup_dirs()
    try:
        for name, path in rts:
            cid = f"{ID_PREFIX}-{view}-{name}-exec"
            # The detached container keeps its stdio: a file, not a pipe we would wait on.
            errf = os.path.join(WORK, f"{name}-run-d.err")
            with open(errf, "w") as e:
                r = subprocess.run([path, "--root", roots[name], "run", "-d", "--bundle", bundle, cid],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e)
            if r.returncode != 0:
                log(f"skip {name} exec ({view} view): `run -d` exited {r.returncode}: "
                    f"{open(errf).read().strip()[-200:]}")
                continue
            alive[name] = (path, cid)
            results[name] = ([], [])
        for i in range(warmup + runs):
            for name, (path, cid) in alive.items():
                wall, rss, status = measure([path, "--root", roots[name], "exec", cid, "/bin/true"], name)
                if status != 0:
                    raise RuntimeError(f"{name} exec exited {status}")
                if i >= warmup:
                    results[name][0].append(wall)
                    results[name][1].append(rss)
    finally:
        for name, (path, cid) in alive.items():
            subprocess.run([path, "--root", roots[name], "delete", "--force", cid], capture_output=True)
        leak_check(f"exec, {view} view", roots, cgroups_before, (ID_PREFIX, bundle))
    return results


def report_exec(view, results, runs):
    table(f"runtime `exec ID /bin/true` into a running container, {view} cgroup view: median of {runs} runs",
          results)
    if "cella" in results:
        for peer in ("crun", "runc"):
            if peer in results:
                log(f"  cella/{peer}: exec time {med(results['cella'][0]) / med(results[peer][0]):.2f}x")


def make_v1_view():
    """In our private mount namespace: replace /sys/fs/cgroup by a tmpfs that holds only the
    v1 hierarchies (bind mounts of the host's). Returns the controllers' directory names."""
    hier = []
    with open("/proc/self/mountinfo") as f:
        for l in f:
            a = l.split()
            mnt, fstype = a[4], a[a.index("-") + 1]
            if os.path.dirname(mnt) == "/sys/fs/cgroup" and fstype == "cgroup":
                hier.append(os.path.basename(mnt))
    if not hier:
        sys.exit("runtime bench: no cgroup v1 hierarchy under /sys/fs/cgroup")
    tmp = os.path.join(WORK, "cgroot")
    os.makedirs(tmp, exist_ok=True)
    run = lambda *a: subprocess.run(list(a), check=True)
    run("mount", "-t", "tmpfs", "-o", "mode=755,size=64k", "cgroup_v1_view", tmp)
    for h in hier:
        os.mkdir(os.path.join(tmp, h))
        run("mount", "--bind", f"/sys/fs/cgroup/{h}", os.path.join(tmp, h))
    run("umount", "-l", "/sys/fs/cgroup")
    run("mount", "--move", tmp, "/sys/fs/cgroup")
    return hier


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50, help="measured runs per runtime (default 50)")
    ap.add_argument("-w", type=int, default=5, help="warmup runs per runtime (default 5)")
    ap.add_argument("--view", choices=["v1", "host", "both"], default="both")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("skip runtime bench: needs root")
        return 0
    os.makedirs(WORK, exist_ok=True)

    if args.view == "v1":  # we are the child in the private mount namespace
        make_v1_view()
        rootfs, _ = make_rootfs()
        bundle = make_bundle(rootfs)
        res = bench_view("v1", runtimes_cached(), bundle, args.n, args.w)
        report("pure-v1 (private mount ns: /sys/fs/cgroup = tmpfs + the v1 hierarchies only)",
               res, args.n)
        report_exec("pure-v1", bench_exec("v1", runtimes_cached(), rootfs, args.n, args.w), args.n)
        return 0

    rootfs, origin = make_rootfs()
    bundle = make_bundle(rootfs)
    rts = runtimes()
    if not rts:
        log("skip runtime bench: no runtime to measure")
        return 0
    log(f"bundle: {bundle} (rootfs from {origin}); config: runc spec default, terminal false, "
        "args /bin/true, namespaces pid/net/ipc/uts/mount")
    log(f"method: benchtime (fork+exec, pidfd exit time, wait4 ru_maxrss over the tree as "
        f"subreaper); {args.w} warmup + {args.n} measured runs per runtime, interleaved")
    os.environ["CELLA_BENCH_RTS"] = json.dumps(rts)
    # Pure-v1 view: a private mount namespace where the cgroup2 mount is gone (all runtimes).
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                        os.path.abspath(__file__), "--view", "v1", "-n", str(args.n), "-w", str(args.w)])
    if r.returncode != 0:
        log(f"runtime bench (v1 view) failed with status {r.returncode}")
    if args.view == "both":
        host_rts = [(n, p) for n, p in rts if n != "crun"]
        res = bench_view("host", host_rts, bundle, args.n, args.w)
        report("host hybrid (v1 controllers + empty cgroup2 at /sys/fs/cgroup/unified; "
               "crun refuses it)", res, args.n)
    return r.returncode


def runtimes_cached():
    env = os.environ.get("CELLA_BENCH_RTS")
    return [tuple(x) for x in json.loads(env)] if env else runtimes()


if __name__ == "__main__":
    sys.exit(main())
