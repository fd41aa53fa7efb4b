"""Podman drives cella (`podman --runtime build/.../cella`), with runc as the control on the same
private configuration: run --rm, run -d + exec + stop + rm, run -it on a pty, ps through the
container states, pause/unpause. Every test ends with a leak check (conmon processes, mounts,
container cgroups and their processes, runtime state); the module removes all podman made.
The configuration and what it works around on this host are explained in clients.py."""
import json
import os
import time

import pytest

from conftest import BUILD
from clients import (RUNTIMES, TRAP_LOOP, Podman, client_fixture, leak_checked, ok, runtime_for_test,
                     shell_on_pty)

CELLA = BUILD / "cella"


def runtime_path(name):
    return runtime_for_test(name, CELLA)


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory):
    yield from client_fixture(Podman, lambda: tmp_path_factory.mktemp("podman"), ("podman", "conmon"), CELLA)


@pytest.fixture
def pm(podman_env):
    yield from leak_checked(podman_env, lambda: podman_env("rm", "-af", "-t", "0"))


def ps_json(pm, *args):
    return json.loads(ok(pm("ps", "--format", "json", *args)).stdout or "[]")


@pytest.mark.parametrize("rt", RUNTIMES)
def test_run_rm(pm, rt):
    r = runtime_path(rt)
    p = ok(pm("run", "--rm", "--pull=never", pm.IMAGE, "echo", "hi", runtime=r))
    assert p.stdout == "hi\n"
    p = pm("run", "--rm", "--pull=never", pm.IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3", runtime=r)
    assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")
    p = ok(pm("run", "--rm", "-i", "--pull=never", pm.IMAGE, "cat", runtime=r, stdin=None, input="piped\n"))
    assert p.stdout == "piped\n"
    # What podman asked for arrived: hostname = short id, the rlimits of containers.conf.
    p = ok(pm("run", "--rm", "--pull=never", "--hostname", "pmhost", pm.IMAGE,
              "sh", "-c", "hostname; ulimit -n; ulimit -u; cat /proc/1/cmdline", runtime=r))
    assert p.stdout.splitlines()[:3] == ["pmhost", "1024", "4096"]


@pytest.mark.parametrize("rt", RUNTIMES)
def test_detached_exec_stop_rm(pm, rt):
    r = runtime_path(rt)
    name = f"pmdet-{rt}"
    cid = ok(pm("run", "-d", "--pull=never", "--name", name, pm.IMAGE, *TRAP_LOOP, runtime=r)).stdout.strip()
    try:
        assert len(cid) == 64
        [c] = [c for c in ps_json(pm) if c["Id"] == cid]
        assert c["State"] == "running" and c["Names"] == [name]
        p = ok(pm("exec", name, "sh", "-c", "echo exec-ok; cat /proc/1/cmdline | tr '\\0' ' '", runtime=r))
        assert p.stdout.startswith("exec-ok\nsh -c trap")
        p = pm("exec", name, "sh", "-c", "exit 5", runtime=r)
        assert p.returncode == 5, p
        p = ok(pm("exec", "-e", "FOO=bar", "-w", "/tmp", "-u", "65534", name,
                  "sh", "-c", "id -u; pwd; echo $FOO", runtime=r))
        assert p.stdout.split() == ["65534", "/tmp", "bar"]
        p = ok(pm("exec", "-i", name, "cat", runtime=r, stdin=None, input="exec stdin\n"))
        assert p.stdout == "exec stdin\n"
        # SIGTERM reaches the trap: the container exits 7 well before the 10 s timeout.
        t0 = time.monotonic()
        ok(pm("stop", "-t", "10", name, runtime=r))
        assert time.monotonic() - t0 < 8
        p = ok(pm("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name))
        assert p.stdout.split() == ["exited", "7"]
        assert not any(c["Id"] == cid for c in ps_json(pm))
    finally:
        ok(pm("rm", "-f", "-t", "0", name, runtime=r))
    assert not any(c["Id"] == cid for c in ps_json(pm, "-a"))


@pytest.mark.parametrize("rt", RUNTIMES)
def test_run_it_terminal(pm, rt):
    r = runtime_path(rt)
    argv = ["podman", "--runtime", str(r), "run", "-it", "--rm", "--pull=never", pm.IMAGE, "sh"]
    text, status = shell_on_pty(argv, pm.env, 3)
    assert "/dev/pts/0\n" in text, text
    assert "stdin-is-a-tty\n" in text, text
    assert status == 3, text


@pytest.mark.parametrize("rt", RUNTIMES)
def test_ps_states(pm, rt):
    """podman create/start/kill through the runtime, as `podman ps` sees them."""
    r = runtime_path(rt)
    name = f"pmps-{rt}"
    try:
        ok(pm("create", "--pull=never", "--name", name, pm.IMAGE, "sleep", "100", runtime=r))
        [c] = [c for c in ps_json(pm, "-a") if c["Names"] == [name]]
        assert c["State"] == "created"
        assert not [c for c in ps_json(pm) if c["Names"] == [name]]
        ok(pm("start", name, runtime=r))
        [c] = [c for c in ps_json(pm) if c["Names"] == [name]]
        assert c["State"] == "running" and c["Command"] == ["sleep", "100"]
        p = ok(pm("ps", "--format", "{{.Names}} {{.Status}}", runtime=r))
        assert any(l.startswith(f"{name} Up") for l in p.stdout.splitlines()), p.stdout
        ok(pm("kill", name, runtime=r))  # SIGKILL: sleep as pid 1 ignores SIGTERM
        ok(pm("wait", name, timeout=20))
        [c] = [c for c in ps_json(pm, "-a") if c["Names"] == [name]]
        assert c["State"] == "exited" and c["ExitCode"] == 137
    finally:
        pm("rm", "-f", "-t", "0", name, runtime=r)


def freezer_state(pm, cid):
    """The v1 freezer state of the container's cgroup (podman's cgroupfs path), or None on a
    host without a v1 freezer hierarchy."""
    if not os.path.isdir("/sys/fs/cgroup/freezer"):
        return None
    with open(f"/sys/fs/cgroup/freezer/{pm.cgroup_parent}/libpod-{cid}/freezer.state") as f:
        return f.read().strip()


@pytest.mark.parametrize("rt", RUNTIMES)
def test_pause_unpause(pm, rt):
    """Needs the runtime's pause/resume."""
    r = runtime_path(rt)
    name = f"pmpause-{rt}"
    cid = ok(pm("run", "-d", "--pull=never", "--name", name, pm.IMAGE, *TRAP_LOOP, runtime=r)).stdout.strip()
    try:
        ok(pm("pause", name, runtime=r))
        assert ok(pm("inspect", "--format", "{{.State.Status}}", name)).stdout.strip() == "paused"
        assert freezer_state(pm, cid) in ("FROZEN", None)
        ok(pm("unpause", name, runtime=r))
        assert ok(pm("inspect", "--format", "{{.State.Status}}", name)).stdout.strip() == "running"
        assert freezer_state(pm, cid) in ("THAWED", None)
        assert ok(pm("exec", name, "echo", "alive", runtime=r)).stdout == "alive\n"
        ok(pm("stop", "-t", "10", name, runtime=r))
    finally:
        pm("rm", "-f", "-t", "0", name, runtime=r)


@pytest.mark.parametrize("rt", RUNTIMES)
def test_exec_tty(pm, rt):
    r = runtime_path(rt)
    name = f"pmexectty-{rt}"
    ok(pm("run", "-d", "--pull=never", "--name", name, pm.IMAGE, *TRAP_LOOP, runtime=r))
    try:
        argv = ["podman", "--runtime", str(r), "exec", "-it", name, "sh"]
        text, status = shell_on_pty(argv, pm.env, 4)
        assert "/dev/pts/0\n" in text and "stdin-is-a-tty\n" in text, text
        assert status == 4, text
    finally:
        pm("rm", "-f", "-t", "0", name, runtime=r)


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)


@pytest.mark.parametrize("rt", RUNTIMES)
def test_security_and_resources(pm, rt):
    """What podman asks for is what the container gets: podman's default seccomp profile, no new
    privileges, dropped capabilities, read-only root, user, memory and pids limits in the
    container's cgroups, and no file descriptor beyond stdio in the container process."""
    r = runtime_path(rt)
    name = f"pmsec-{rt}"
    cid = ok(pm("run", "-d", "--pull=never", "--name", name, "--read-only",
                "--security-opt", "no-new-privileges", "--cap-drop", "ALL", "--cap-add", "KILL",
                "--memory", "64m", "--pids-limit", "100", pm.IMAGE, *TRAP_LOOP, runtime=r)).stdout.strip()
    try:
        pid = int(ok(pm("inspect", "--format", "{{.State.Pid}}", name)).stdout)
        st = proc_status(pid)
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1", st
        assert int(st["CapEff"], 16) == int(st["CapBnd"], 16) == 1 << 5, st  # CAP_KILL only
        assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
        if os.path.isdir("/sys/fs/cgroup/memory"):
            cg = f"/sys/fs/cgroup/memory/{pm.cgroup_parent}/libpod-{cid}"
            assert open(f"{cg}/memory.limit_in_bytes").read().strip() == str(64 << 20)
            assert str(pid) in open(f"{cg}/cgroup.procs").read().split()
        if os.path.isdir("/sys/fs/cgroup/pids"):
            assert open(f"/sys/fs/cgroup/pids/{pm.cgroup_parent}/libpod-{cid}/pids.max").read().strip() == "100"
        p = ok(pm("exec", "-u", "65534", name, "sh", "-c",
                  "id -u; touch /x 2>/dev/null || echo ro-root; touch /tmp/x && echo tmp-rw; "
                  "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '", runtime=r))
        assert p.stdout.splitlines() == ["65534", "ro-root", "tmp-rw", "NoNewPrivs: 1", "Seccomp: 2"]
    finally:
        pm("rm", "-f", "-t", "0", name, runtime=r)


@pytest.mark.parametrize("rt", RUNTIMES)
def test_run_options(pm, rt, tmp_path):
    """A bind volume (ro), a tmpfs, workdir, ulimits, shm size, a sysctl, host pid and network
    namespaces with a private cgroup namespace: the container sees what runc's would."""
    r = runtime_path(rt)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("volume data\n")
    script = ("cat f; pwd; ulimit -n; ulimit -u; df -k /mnt /dev/shm | tail -2 | awk '{print $2}'; "
              "cat /proc/sys/kernel/msgmax; "
              "for n in pid net cgroup; do readlink /proc/self/ns/$n; done; "
              "touch /data/x 2>/dev/null || echo ro-volume; grep -c ':/$' /proc/self/cgroup")
    p = ok(pm("run", "--rm", "--pull=never", "--network", "host", "--pid", "host", "--cgroupns", "private",
              "-v", f"{vol}:/data:ro", "--tmpfs", "/mnt:size=1m", "--workdir", "/data",
              "--ulimit", "nofile=500:500", "--ulimit", "nproc=300:300", "--shm-size", "8m",
              "--sysctl", "kernel.msgmax=4096", pm.IMAGE, "sh", "-c", script, runtime=r))
    host_ns = [os.readlink(f"/proc/self/ns/{n}") for n in ("pid", "net", "cgroup")]
    with open("/proc/self/cgroup") as f:
        n_hier = len(f.readlines())
    lines = p.stdout.splitlines()
    assert lines[:7] == ["volume data", "/data", "500", "300", "1024", "8192", "4096"], p.stdout
    assert lines[7:9] == host_ns[:2] and lines[9] != host_ns[2], (lines, host_ns)
    assert lines[10:] == ["ro-volume", str(n_hier)], p.stdout
    assert (vol / "f").read_text() == "volume data\n" and not (vol / "x").exists()


@pytest.mark.parametrize("rt", RUNTIMES)
def test_userns(pm, rt):
    """--uidmap/--gidmap: the container's root is host uid 100000; the rootfs looks root-owned."""
    r = runtime_path(rt)
    name = f"pmuserns-{rt}"
    ok(pm("run", "-d", "--pull=never", "--name", name, "--uidmap", "0:100000:65536",
          "--gidmap", "0:100000:65536", pm.IMAGE, *TRAP_LOOP, runtime=r))
    try:
        pid = int(ok(pm("inspect", "--format", "{{.State.Pid}}", name)).stdout)
        st = proc_status(pid)
        assert st["Uid"].split()[0] == "100000" and st["Gid"].split()[0] == "100000", st
        p = ok(pm("exec", name, "sh", "-c", "cat /proc/self/uid_map; id -u; stat -c '%u %g' /bin/busybox",
                  runtime=r))
        assert p.stdout.split() == ["0", "100000", "65536", "0", "0", "0"], p.stdout
        ok(pm("stop", "-t", "10", name, runtime=r))
    finally:
        pm("rm", "-f", "-t", "0", name, runtime=r)


@pytest.mark.parametrize("rt", RUNTIMES)
def test_privileged(pm, rt):
    """--privileged: every capability podman holds and the host's devices. Podman writes each
    device's fileMode with its file type bits (e.g. 020666 for a char device), as runc accepts."""
    r = runtime_path(rt)
    p = ok(pm("run", "--rm", "--pull=never", "--privileged", pm.IMAGE, "sh", "-c",
              "grep CapEff /proc/self/status | cut -f2; stat -c '%F %t:%T' /dev/null /dev/zero", runtime=r))
    lines = p.stdout.splitlines()
    assert int(lines[0], 16) == int(proc_status(os.getpid())["CapBnd"], 16), p.stdout
    assert lines[1:] == ["character special file 1:3", "character special file 1:5"], p.stdout


@pytest.mark.parametrize("rt", RUNTIMES)
def test_kill_logs_restart_cp_top(pm, rt, tmp_path):
    r = runtime_path(rt)
    name = f"pmkill-{rt}"
    ok(pm("run", "-d", "--pull=never", "--name", name, pm.IMAGE, "sh", "-c",
          'trap "echo got-hup" HUP; trap "exit 9" TERM; while :; do sleep 0.1; done', runtime=r))
    try:
        ok(pm("kill", "-s", "HUP", name, runtime=r))
        end = time.monotonic() + 5
        while "got-hup" not in pm("logs", name).stdout and time.monotonic() < end:
            time.sleep(0.05)
        assert pm("logs", name).stdout == "got-hup\n"
        ok(pm("restart", "-t", "10", name, runtime=r))
        assert ok(pm("inspect", "--format", "{{.State.Status}}", name)).stdout.strip() == "running"
        src = tmp_path / "copied"
        src.write_text("copied in\n")
        ok(pm("cp", src, f"{name}:/tmp/copied", runtime=r))
        assert ok(pm("exec", name, "cat", "/tmp/copied", runtime=r)).stdout == "copied in\n"
        p = ok(pm("top", name, "pid", "args", runtime=r))
        assert any(l.split()[:2] == ["1", "sh"] for l in p.stdout.splitlines()[1:]), p.stdout
        ok(pm("kill", name, runtime=r))  # SIGKILL
        ok(pm("wait", name, timeout=20))
        assert ok(pm("inspect", "--format", "{{.State.ExitCode}}", name)).stdout.strip() == "137"
    finally:
        pm("rm", "-f", "-t", "0", name, runtime=r)


@pytest.mark.parametrize("rt", RUNTIMES)
def test_resources(pm, rt):
    """podman's resource flags land in the container's cgroup files (v1 hierarchies here) and
    --oom-score-adj on the process, as with runc."""
    r = runtime_path(rt)
    cid = ok(pm("run", "-d", "--pull=never", "--cpu-shares", "512", "--cpuset-cpus", "0", "--memory", "64m",
                "--memory-swap", "128m", "--memory-reservation", "32m", "--cpus", "0.5",
                "--device-cgroup-rule", "c 10:229 rwm", "--oom-score-adj", "200", pm.IMAGE, *TRAP_LOOP,
                runtime=r)).stdout.strip()
    try:
        want = {"cpu/cpu.shares": "512", "cpuset/cpuset.cpus": "0", "memory/memory.limit_in_bytes": str(64 << 20),
                "memory/memory.memsw.limit_in_bytes": str(128 << 20),
                "memory/memory.soft_limit_in_bytes": str(32 << 20), "cpu/cpu.cfs_quota_us": "50000"}
        for k, v in want.items():
            ctl, fname = k.split("/")
            if not os.path.isdir(f"/sys/fs/cgroup/{ctl}"):
                continue
            with open(f"/sys/fs/cgroup/{ctl}/{pm.cgroup_parent}/libpod-{cid}/{fname}") as f:
                assert f.read().strip() == v, k
        if os.path.isdir("/sys/fs/cgroup/devices"):
            with open(f"/sys/fs/cgroup/devices/{pm.cgroup_parent}/libpod-{cid}/devices.list") as f:
                assert "c 10:229 rwm" in f.read().splitlines()
        pid = int(ok(pm("inspect", "--format", "{{.State.Pid}}", cid)).stdout)
        with open(f"/proc/{pid}/oom_score_adj") as f:
            assert f.read().strip() == "200"
    finally:
        pm("rm", "-f", "-t", "0", cid, runtime=r)
