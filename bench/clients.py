#!/usr/bin/python3
"""Real-client benchmark (issue 4): wall time of `podman run --rm IMAGE echo hi` and
`ctr run --rm IMAGE ID echo hi` with cella (build/cella, release) and runc as the OCI runtime.

Both clients run with the private configuration of the integration tests
(tests/integration/clients.py): podman with its own containers.conf/storage.conf (overlay storage,
netns none, cgroupfs) and an image imported from the busybox rootfs; containerd as its own daemon
(own root, state, socket, namespace) with a single-layer OCI image built by umoci, ctr using
`--runc-binary`. Only the runtime differs between the cella and runc columns. Runs are
interleaved (one of each client x runtime per round) so load drift hits all alike; the time is
the client command's wall time (fork to exit) as seen from here. Afterwards it checks that
nothing was left behind (containers, conmon/shim processes, mounts, cgroups, runtime state).

crun: Debian's crun 1.8.1 refuses this hybrid-cgroup host, so it runs through
build/bench/crun_v1 (bench/crun_v1.c, built by bench/run): a static wrapper that execs crun in a
private mount namespace whose /sys/fs/cgroup holds only the v1 hierarchies (bench/runtime.py's
view); it adds one unshare and a dozen mounts per runtime call. Measured when both exist.

Usage: bench/clients.py [-n RUNS] [-w WARMUP]   (run as root; prints a table on stdout)
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "tests" / "integration"))
from clients import Containerd, Podman, busybox_rootfs  # noqa: E402

CELLA = TOP / "build" / "cella"


def log(msg):
    print(msg, flush=True)


def timed(fn):
    t0 = time.perf_counter()
    p = fn()
    return (time.perf_counter() - t0) * 1000, p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10, help="measured rounds (default 10)")
    ap.add_argument("-w", type=int, default=2, help="warm-up rounds (default 2)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("skip clients bench: needs root")
        return 0
    if not CELLA.exists():
        log("skip clients bench: build/cella not built yet (make)")
        return 0
    runc = shutil.which("runc")
    if runc is None:
        log("skip clients bench: runc (the peer) is not installed")
        return 0
    runtimes = {"cella": str(CELLA), "runc": runc}
    crun_v1 = TOP / "build" / "bench" / "crun_v1"
    if crun_v1.exists() and os.access("/usr/bin/crun", os.X_OK):
        runtimes["crun"] = str(crun_v1)
    else:
        log("note: crun not measured (needs /usr/bin/crun and build/bench/crun_v1 from bench/run)")
    try:
        rootfs = busybox_rootfs()
    except RuntimeError as e:
        log(f"skip clients bench: {e}")
        return 0

    work = Path(tempfile.mkdtemp(prefix="cella-bench-clients-"))
    clients = {}
    cleanup = []
    status = 0
    try:
        if shutil.which("podman") and shutil.which("conmon"):
            pm = Podman(work / "podman")
            cleanup.append(pm)
            pm.import_rootfs(rootfs)
            clients["podman"] = lambda rt, i: pm("run", "--rm", "--pull=never", pm.IMAGE, "echo", "hi",
                                                 runtime=runtimes[rt])
        else:
            log("skip podman: not installed (apt-get install podman)")
        if all(shutil.which(t) for t in ("containerd", "ctr", "containerd-shim-runc-v2", "umoci")):
            cd = Containerd(work / "containerd")
            cleanup.append(cd)
            cd.start()
            cd.import_rootfs(rootfs)
            clients["ctr"] = lambda rt, i: cd.ctr("run", "--rm", *cd.runtime_opts(runtimes[rt], rt),
                                                  cd.image, f"bench-{rt}-{i}", "echo", "hi")
        else:
            log("skip ctr: containerd, ctr, containerd-shim-runc-v2 or umoci missing "
                "(apt-get install containerd umoci)")
        if not clients:
            return 0

        log(f"clients: {', '.join(clients)}; runtimes: " + ", ".join(f"{k} = {v}" for k, v in runtimes.items())
            + f"; {args.w} warm-up + {args.n} measured rounds, interleaved")
        times = {(c, rt): [] for c in clients for rt in runtimes}
        failed = set()
        for rnd in range(args.w + args.n):
            for c, fn in clients.items():
                for rt in runtimes:
                    if (c, rt) in failed:
                        continue
                    ms, p = timed(lambda: fn(rt, rnd))
                    if p.returncode != 0 or p.stdout != "hi\n":
                        log(f"{c} with {rt} failed (rc {p.returncode}): {p.stderr.strip()[-300:]}")
                        failed.add((c, rt))
                        status = 1
                    elif rnd >= args.w:
                        times[(c, rt)].append(ms)

        log("")
        log(f"`CLIENT run --rm IMAGE echo hi` wall time, median of {args.n} runs")
        log(f"  {'client':<8} {'runtime':<8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
        for (c, rt), t in times.items():
            if t:
                log(f"  {c:<8} {rt:<8} {statistics.median(t):10.1f} {min(t):8.1f} {max(t):8.1f}")
        for c in clients:
            for peer in [p for p in runtimes if p != "cella"]:
                ct, pt = times[(c, "cella")], times[(c, peer)]
                if ct and pt and len(ct) == len(pt):
                    paired = statistics.median(a / b for a, b in zip(ct, pt))
                    log(f"  {c}: cella/{peer} {statistics.median(ct) / statistics.median(pt):.2f}x "
                        f"(median of per-round ratios {paired:.2f}x)")
                else:
                    log(f"  {c}: cella/{peer} n/a")
        log("  (issue 4 measured here: ctr/podman with crun-wrapped 107/148 ms, runc 121/167 ms)")
    except RuntimeError as e:
        log(f"clients bench: setup failed: {e}")
        status = 1
    finally:
        leaks = []
        for obj in cleanup:
            if isinstance(obj, Podman) and obj.mounts_baseline is not None:
                leaks += [f"podman: {l}" for l in obj.leaks()]
            elif isinstance(obj, Containerd) and obj.proc is not None:
                leaks += [f"containerd: {l}" for l in obj.leaks(runtime_names=tuple(runtimes))]
            leaks += [f"teardown: {l}" for l in obj.teardown()]
        shutil.rmtree(work, ignore_errors=True)
        for l in leaks:
            log(f"LEAK: {l}")
        if not leaks and clients:
            log("leak check: no containers, conmon/shim processes, mounts, cgroups or runtime state left")
        if leaks:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
