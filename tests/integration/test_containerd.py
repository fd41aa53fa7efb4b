"""containerd drives cella through its runc shim (`ctr run --runc-binary build/.../cella`), with runc
as the control: run --rm, run -d + task exec + task kill + delete, task ps, task pause/resume,
a tty. containerd runs with its own config, root, state, sockets and namespace (clients.py);
every test ends with a leak check and the module stops containerd and removes all it made."""
import os
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BUILD
from clients import (RUNTIMES, TRAP_LOOP, Containerd, client_fixture, leak_checked, ok, runtime_for_test,
                     shell_on_pty)

CELLA = BUILD / "cella"


def runtime_path(name):
    return runtime_for_test(name, CELLA)


@pytest.fixture(scope="module")
def containerd_env():
    # In /tmp itself: see Containerd's note on searchable parents (client_fixture removes it).
    yield from client_fixture(Containerd,
                              lambda: Path(tempfile.mkdtemp(prefix="cellatest-containerd-", dir="/tmp")),
                              ("containerd", "ctr", "containerd-shim-runc-v2", "umoci"), CELLA)


@pytest.fixture
def cd(containerd_env):
    yield from leak_checked(containerd_env, containerd_env.remove_all)


def task_status(cd, cid):
    for line in cd.ctr("task", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == cid:
            return f[2]
    return None


def wait_status(cd, cid, want, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = task_status(cd, cid)
        if st == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"task {cid} never became {want} (is {st})")


class Detached:
    """`ctr run -d` of the trap loop; deleted (task and container) on exit."""

    def __init__(self, cd, rt, cid):
        self.cd, self.rt, self.cid = cd, rt, cid

    def __enter__(self):
        ok(self.cd.ctr("run", "-d", *self.cd.runtime_opts(runtime_path(self.rt), self.rt),
                       self.cd.image, self.cid, *TRAP_LOOP))
        wait_status(self.cd, self.cid, "RUNNING")
        return self

    def exec(self, exec_id, *args, **kw):
        return self.cd.ctr("task", "exec", "--fifo-dir", self.cd.fifo_dir, "--exec-id", exec_id,
                           *args, **kw)

    def __exit__(self, *exc):
        if task_status(self.cd, self.cid) not in (None, "STOPPED"):
            self.cd.ctr("task", "kill", "-s", "KILL", self.cid)
            wait_status(self.cd, self.cid, "STOPPED")
        self.cd.ctr("task", "delete", self.cid)
        self.cd.ctr("container", "delete", self.cid)


@pytest.mark.parametrize("rt", RUNTIMES)
def test_run_rm(cd, rt):
    opts = cd.runtime_opts(runtime_path(rt), rt)
    p = ok(cd.ctr("run", "--rm", *opts, cd.image, f"rm1-{rt}", "echo", "hi"))
    assert p.stdout == "hi\n"
    p = cd.ctr("run", "--rm", *opts, cd.image, f"rm2-{rt}", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")
    # (No stdin test: ctr does not pass the end of its stdin on to the task, whatever the runtime.)
    # The image's config reached the process: its env, cwd /, and ctr's hostname default.
    p = ok(cd.ctr("run", "--rm", *opts, cd.image, f"rm4-{rt}", "sh", "-c", 'echo "$PATH"; pwd; id -u'))
    assert p.stdout.split() == ["/usr/sbin:/usr/bin:/sbin:/bin", "/", "0"]


@pytest.mark.parametrize("rt", RUNTIMES)
def test_exec_kill_delete(cd, rt):
    cid = f"det-{rt}"
    with Detached(cd, rt, cid) as c:
        p = ok(c.exec("e1", cid, "sh", "-c", "echo exec-ok; cat /proc/1/cmdline | tr '\\0' ' '"))
        assert p.stdout.startswith("exec-ok\nsh -c trap")
        assert c.exec("e2", cid, "sh", "-c", "exit 5").returncode == 5
        p = ok(c.exec("e3", "--cwd", "/tmp", "--user", "65534", cid, "sh", "-c", "id -u; pwd"))
        assert p.stdout.split() == ["65534", "/tmp"]
        # A detached exec keeps running next to the init until the container is killed.
        ok(c.exec("e5", "--detach", cid, "sleep", "100"))
        assert "sleep 100" in ok(c.exec("e6", cid, "ps", "-o", "args")).stdout
        ok(cd.ctr("task", "kill", cid))  # SIGTERM: the trap exits 7
        wait_status(cd, cid, "STOPPED")
        p = ok(cd.ctr("task", "delete", cid))
        assert "exit code 7" in p.stderr, p
        # kill --all on a second run: every process of the container gets the signal.
        ok(cd.ctr("container", "delete", cid))
    cid2 = f"det2-{rt}"
    with Detached(cd, rt, cid2) as c:
        ok(c.exec("e1", "--detach", cid2, "sleep", "100"))
        ok(cd.ctr("task", "kill", "--all", "-s", "KILL", cid2))
        wait_status(cd, cid2, "STOPPED")


@pytest.mark.parametrize("rt", RUNTIMES)
def test_task_ps(cd, rt):
    """Needs the runtime's ps (`ps --format json`)."""
    cid = f"ps-{rt}"
    with Detached(cd, rt, cid) as c:
        ok(c.exec("e1", "--detach", cid, "sleep", "100"))
        p = ok(cd.ctr("task", "ps", cid))
        pids = [int(l.split()[0]) for l in p.stdout.splitlines()[1:] if l.split()]
        assert len(pids) >= 2, p.stdout
        cmds = []
        for pid in pids:
            try:  # the loop's `sleep 0.1` may be gone already
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmds.append(f.read().replace(b"\0", b" ").decode())
            except FileNotFoundError:
                pass
        assert any(cmd.startswith("sleep 100") for cmd in cmds), cmds
        assert any(cmd.startswith("sh -c trap") for cmd in cmds), cmds


def freezer_state(cd, cid):
    if not os.path.isdir("/sys/fs/cgroup/freezer"):
        return None
    with open(f"/sys/fs/cgroup/freezer/{cd.ns}/{cid}/freezer.state") as f:
        return f.read().strip()


@pytest.mark.parametrize("rt", RUNTIMES)
def test_pause_resume(cd, rt):
    """Needs the runtime's pause and resume."""
    cid = f"pause-{rt}"
    with Detached(cd, rt, cid) as c:
        ok(cd.ctr("task", "pause", cid))
        assert task_status(cd, cid) == "PAUSED"
        assert freezer_state(cd, cid) in ("FROZEN", None)
        ok(cd.ctr("task", "resume", cid))
        assert task_status(cd, cid) == "RUNNING"
        assert freezer_state(cd, cid) in ("THAWED", None)
        assert ok(c.exec("e1", cid, "echo", "alive")).stdout == "alive\n"


@pytest.mark.parametrize("rt", RUNTIMES)
def test_run_tty(cd, rt):
    argv = ["ctr", "--address", str(cd.sock), "--namespace", cd.ns, "run", "--rm", "-t",
            *cd.runtime_opts(runtime_path(rt), rt), cd.image, f"tty-{rt}", "sh"]
    text, status = shell_on_pty(argv, dict(os.environ), 3)
    assert "/dev/pts/0\n" in text, text
    assert "stdin-is-a-tty\n" in text, text
    assert status == 3, text


@pytest.mark.parametrize("rt", RUNTIMES)
def test_exec_tty(cd, rt):
    cid = f"exectty-{rt}"
    with Detached(cd, rt, cid):
        argv = ["ctr", "--address", str(cd.sock), "--namespace", cd.ns, "task", "exec", "-t",
                "--fifo-dir", str(cd.fifo_dir), "--exec-id", "tty1", cid, "sh"]
        text, status = shell_on_pty(argv, dict(os.environ), 4)
        assert "/dev/pts/0\n" in text and "stdin-is-a-tty\n" in text, text
        assert status == 4, text


@pytest.mark.parametrize("rt", RUNTIMES)
def test_init_fds_and_cgroup(cd, rt):
    """The container process holds only stdio (no fd of the shim or the runtime) and sits in
    the cgroup containerd named (/NAMESPACE/ID)."""
    cid = f"fds-{rt}"
    with Detached(cd, rt, cid):
        line = [l.split() for l in cd.ctr("task", "ls").stdout.splitlines() if l.startswith(cid + " ")]
        pid = int(line[0][1])
        assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
        with open(f"/proc/{pid}/cgroup") as f:
            paths = {l.split(":", 2)[1]: l.rstrip("\n").split(":", 2)[2] for l in f}
        if "memory" in paths:
            assert paths["memory"] == f"/{cd.ns}/{cid}", paths


@pytest.mark.parametrize("rt", RUNTIMES)
def test_run_options(cd, rt, tmp_path):
    """ctr's spec options reach the process as with runc: env, cwd, a read-only root, a read-only
    bind mount, host network, the default seccomp profile; a user namespace (--uidmap)."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("volume data\n")
    opts = cd.runtime_opts(runtime_path(rt), rt)
    p = ok(cd.ctr("run", "--rm", *opts, "--env", "FOO=bar", "--cwd", "/tmp", "--read-only", "--net-host",
                  "--mount", f"type=bind,src={vol},dst=/data,options=rbind:ro", "--seccomp",
                  cd.image, f"opt1-{rt}", "sh", "-c",
                  "echo $FOO; pwd; cat /data/f; touch /x 2>/dev/null || echo ro-root; "
                  "touch /data/x 2>/dev/null || echo ro-volume; readlink /proc/self/ns/net; "
                  "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '"))
    assert p.stdout.splitlines() == ["bar", "/tmp", "volume data", "ro-root", "ro-volume",
                                     os.readlink("/proc/self/ns/net"), "NoNewPrivs: 1", "Seccomp: 2"], p.stdout
    p = ok(cd.ctr("run", "--rm", *opts, "--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536",
                  cd.image, f"opt2-{rt}", "sh", "-c", "cat /proc/self/uid_map; id -u; stat -c %u /bin/busybox"))
    assert p.stdout.split() == ["0", "100000", "65536", "0", "0"], p.stdout


@pytest.mark.parametrize("rt", RUNTIMES)
def test_resources_in_cgroups(cd, rt):
    """--memory-limit and --cpus land in the container's cgroup files (v1 hierarchies here)."""
    cid = f"res-{rt}"
    ok(cd.ctr("run", "-d", *cd.runtime_opts(runtime_path(rt), rt), "--memory-limit", str(64 << 20),
              "--cpus", "0.5", cd.image, cid, *TRAP_LOOP))
    try:
        wait_status(cd, cid, "RUNNING")
        if os.path.isdir("/sys/fs/cgroup/memory"):
            with open(f"/sys/fs/cgroup/memory/{cd.ns}/{cid}/memory.limit_in_bytes") as f:
                assert f.read().strip() == str(64 << 20)
        if os.path.isdir("/sys/fs/cgroup/cpu"):
            d = f"/sys/fs/cgroup/cpu/{cd.ns}/{cid}"
            quota, period = (int(open(f"{d}/cpu.cfs_{k}_us").read()) for k in ("quota", "period"))
            assert quota * 2 == period, (quota, period)
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        wait_status(cd, cid, "STOPPED")
        cd.ctr("task", "delete", cid)
        cd.ctr("container", "delete", cid)
