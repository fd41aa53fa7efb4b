"""cella lifecycle against busybox bundles: create/start/state/kill/delete/list, run exit codes,
stdio, pid files, --preserve-fds, the console socket, runc's error messages, and a runtime
SIGKILLed in the middle of create."""
import json
import os
import random
import signal
import socket
import subprocess
import time

import pytest

from cella_rt import CELLA, recv_fds, rt  # noqa: F401  (rt: fixture)


def test_run_exit_codes(rt):
    b = rt.bundle(["true"])
    assert rt.run(b).returncode == 0
    rt.edit_config(b, lambda c: c["process"].update(args=["sh", "-c", "exit 3"]))
    assert rt.run(b).returncode == 3
    # pid 1 cannot SIGKILL itself: kill it from outside while `run` waits for it.
    rt.edit_config(b, lambda c: c["process"].update(args=["sleep", "100"]))
    cid = rt.new_id()
    p = subprocess.Popen([str(CELLA), "--root", str(rt.root), "run", "--bundle", str(b), cid],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.time() + 10
    while time.time() < end:
        r = rt.cmd("state", cid)
        if r.returncode == 0 and json.loads(r.stdout)["status"] == "running":
            break
        time.sleep(0.02)
    rt.ok("kill", cid, "KILL")
    assert p.wait(timeout=20) == 137
    assert p.stderr.read() == b""
    assert not (rt.root / cid).exists()  # run deletes the container afterwards


def test_run_stdio_passthrough(rt):
    b = rt.bundle(["sh", "-c", "cat; echo to-stderr >&2"])
    inp = rt.tmp / "input"
    inp.write_text("hello through stdin\n")
    with open(inp) as f:
        r = rt.run(b, stdin=f)
    assert r.returncode == 0, r
    assert r.stdout == "hello through stdin\n"
    assert "to-stderr" in r.stderr


def test_lifecycle_create_start_state_kill_delete(rt):
    b = rt.bundle(["sleep", "100"])
    cid = rt.new_id()
    pidfile = rt.tmp / "pid"
    rt.ok("create", "--bundle", b, "--pid-file", pidfile, cid)
    st = rt.state(cid)
    assert st["status"] == "created"
    assert st["id"] == cid and st["bundle"] == str(b) and st["ociVersion"]
    assert int(pidfile.read_text()) == st["pid"] > 0
    # The init waits for start: it has not exec'd sleep yet.
    assert "sleep" not in open(f"/proc/{st['pid']}/cmdline").read()

    rt.ok("start", cid)
    assert rt.state(cid)["status"] == "running"
    assert open(f"/proc/{st['pid']}/cmdline").read().startswith("sleep")

    r = rt.cmd("start", cid)
    assert r.returncode == 1 and r.stderr.strip() == "cella: cannot start an already running container"
    r = rt.cmd("delete", cid)
    assert r.returncode == 1
    assert r.stderr.strip() == f"cella: cannot delete container {cid} that is not stopped: running"

    rt.ok("kill", cid, "KILL")
    rt.wait_status(cid, "stopped")
    r = rt.cmd("start", cid)
    assert r.stderr.strip() == "cella: cannot start a container that has stopped"
    r = rt.cmd("kill", cid)
    assert r.returncode == 1 and "container not running" in r.stderr
    rt.ok("delete", cid)
    r = rt.cmd("state", cid)
    assert r.returncode == 1 and r.stderr.strip() == "cella: container does not exist"


def test_kill_signal_names_and_numbers(rt):
    # pid 1 only gets signals it handles (except KILL): trap TERM and INT.
    b = rt.bundle(["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 0.05; done"])
    for sig, all_ in (("TERM", False), ("SIGINT", False), ("9", False), ("sigkill", True), ("15", True)):
        cid = rt.new_id()
        rt.ok("run", "-d", "-b", b, cid)
        assert rt.state(cid)["status"] == "running"
        time.sleep(0.1)  # let sh install its traps
        rt.ok("kill", *(["--all"] if all_ else []), cid, sig)
        rt.wait_status(cid, "stopped")
        rt.ok("delete", cid)
    r = rt.cmd("kill", "nonexistent", "KILL")
    assert r.stderr.strip() == "cella: container does not exist"
    cid = rt.new_id()
    rt.ok("create", "-b", b, cid)
    r = rt.cmd("kill", cid, "NOSUCHSIG")
    assert r.returncode == 1 and "NOSUCHSIG" in r.stderr
    rt.ok("delete", "--force", cid)


def test_delete_created_and_force(rt):
    b = rt.bundle(["sleep", "100"])
    cid = rt.new_id()
    rt.ok("create", "-b", b, cid)
    rt.ok("delete", cid)  # a created container is deleted without --force, as runc does
    cid = rt.new_id()
    rt.ok("run", "--detach", "--bundle", b, cid)
    pid = rt.state(cid)["pid"]
    rt.ok("delete", "--force", cid)
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[1][:3]
    assert rt.cmd("delete", "--force", cid).returncode == 0  # like runc: nothing to do


def test_duplicate_unknown_invalid(rt):
    b = rt.bundle(["sleep", "100"])
    cid = rt.new_id()
    rt.ok("create", "--bundle", b, cid)
    r = rt.cmd("create", "--bundle", b, cid)
    assert r.returncode == 1 and r.stderr.strip() == f"cella: container with given ID already exists: {cid}"
    assert rt.state(cid)["status"] == "created"  # the duplicate did not disturb it
    for verb in ("start", "state", "kill", "delete"):
        r = rt.cmd(verb, "no-such-container")
        assert r.returncode == 1 and r.stderr.strip() == "cella: container does not exist", (verb, r)
    r = rt.cmd("create", "--bundle", b, "bad/id")
    assert r.returncode == 1 and "invalid container ID format" in r.stderr
    rt.ok("delete", cid)


def test_list_table_json_quiet(rt):
    b = rt.bundle(["sleep", "100"])
    a, c = rt.new_id(), rt.new_id()
    rt.ok("create", "-b", b, a)
    rt.ok("run", "-d", "-b", b, c)
    table = rt.ok("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    rows = {l.split()[0]: l.split() for l in table[1:]}
    assert rows[a][2] == "created" and rows[c][2] == "running"
    assert rows[a][5] == "root" and rows[a][3] == str(b)
    assert table[0].index("PID") == max(12, len(a) + 3)
    js = json.loads(rt.ok("list", "--format", "json").stdout)
    assert {x["id"]: x["status"] for x in js} == {a: "created", c: "running"}
    assert sorted(rt.ok("list", "-q").stdout.split()) == sorted([a, c])
    for x in (a, c):
        rt.ok("delete", "-f", x)
    assert rt.ok("list", "--format=json").stdout.strip() == "[]"


def test_preserve_fds(rt):
    show = "for f in 3 4 5; do readlink /proc/$$/fd/$f || echo none; done; true"
    b = rt.bundle(["sh", "-c", "echo via-fd3 >&3; " + show])
    rfd, wfd = os.pipe()
    # The runtime must see the pipe as fd 3: let a shell place it there.
    cid = rt.new_id()
    p = subprocess.run(["bash", "-c", f'exec "$@" 3>&{wfd}', "bash", str(CELLA), "--root", str(rt.root), "run",
                        "--preserve-fds", "1", "--bundle", str(b), cid],
                       pass_fds=(wfd,), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    os.close(wfd)
    assert p.returncode == 0, p
    assert os.read(rfd, 100) == b"via-fd3\n"
    os.close(rfd)
    lines = p.stdout.split()
    assert lines[0].startswith("pipe:") and lines[1:] == ["none", "none"], p.stdout
    # Without --preserve-fds nothing beyond stdio reaches the container.
    b2 = rt.bundle(["sh", "-c", show], name="b2")
    r = rt.run(b2)
    assert r.stdout.split() == ["none", "none", "none"], r


def test_pid_file_and_detach(rt):
    b = rt.bundle(["sleep", "100"])
    cid = rt.new_id()
    rt.ok("run", "--detach", "--pid-file", rt.tmp / "p", "--bundle", b, cid)
    st = rt.state(cid)
    assert st["status"] == "running" and int((rt.tmp / "p").read_text()) == st["pid"]
    rt.ok("delete", "--force", cid)


def test_terminal_console_socket(rt):
    b = rt.bundle(["sh", "-c", "tty; echo term-ok; sleep 0.5"])
    rt.edit_config(b, lambda c: c["process"].update(terminal=True, consoleSize={"height": 25, "width": 90}))
    sock_path = str(rt.tmp / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    cid = rt.new_id()
    r = rt.cmd("create", "--bundle", b, "--console-socket", sock_path, cid)
    assert r.returncode == 0, r
    conn, _ = srv.accept()
    name, fds = recv_fds(conn)
    conn.close()
    srv.close()
    assert len(fds) == 1 and name.startswith(b"/dev/pts/")
    master = fds[0]
    rt.ok("start", cid)
    out = b""
    end = time.time() + 5
    while time.time() < end and b"term-ok" not in out:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert b"/dev/pts/0" in out and b"term-ok" in out, out
    rt.wait_status(cid, "stopped")
    rt.ok("delete", cid)


def test_terminal_needs_console_socket(rt):
    b = rt.bundle(["true"])
    rt.edit_config(b, lambda c: c["process"].update(terminal=True))
    r = rt.cmd("create", "--bundle", b, rt.new_id())
    assert r.returncode == 1 and "console socket" in r.stderr


def test_version_features_spec(rt, tmp_path):
    r = rt.ok("--version")
    assert r.stdout.startswith("cella version ") and "spec: 1.2.0" in r.stdout
    f = json.loads(rt.ok("features").stdout)
    assert f["ociVersionMax"] == "1.2.0" and f["ociVersionMin"]
    assert set(f["linux"]["namespaces"]) >= {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"}
    assert "CAP_SYS_ADMIN" in f["linux"]["capabilities"]
    assert f["linux"]["cgroup"] == {"v1": True, "v2": True, "systemd": False}
    assert f["linux"]["seccomp"]["enabled"] is True
    assert "rbind" in f["mountOptions"] and "hooks" in f
    d = tmp_path / "spec"
    d.mkdir()
    rt.ok("spec", "--bundle", d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["ociVersion"] and cfg["process"]["args"] and cfg["root"]["path"] == "rootfs"
    r = rt.cmd("spec", "-b", d)
    assert r.returncode == 1 and "exists" in r.stderr


def test_verb_help_lists_its_options(rt):
    """`cella VERB --help` (as runc users type it) prints the verb's own options and exits 0."""
    r = rt.ok("run", "--help")
    assert r.stdout.startswith("usage: cella run ") and "  --bundle, -b VALUE\n" in r.stdout, r
    assert "  --detach, -d\n" in r.stdout and "  --pid-file VALUE\n" in r.stdout, r
    r = rt.ok("create", "-h")
    assert "--bundle, -b VALUE" in r.stdout and "--detach" not in r.stdout, r
    assert "  --all, -a\n" in rt.ok("kill", "--help").stdout
    assert "(no command options)" in rt.ok("state", "--help").stdout
    r = rt.cmd("run", "--bogus")
    assert r.returncode == 1 and "flag provided but not defined: --bogus" in r.stderr, r


def test_systemd_cgroup_and_log_json(rt):
    r = rt.cmd("--systemd-cgroup", "list")
    assert r.returncode == 1 and "systemd cgroup driver is not supported by cella" in r.stderr
    log = rt.tmp / "log.json"
    r = rt.cmd("state", "nope", global_args=("--log", log, "--log-format", "json"))
    assert r.returncode == 1
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["level"] == "error" and line["msg"] == "container does not exist"
    r = rt.cmd("--log-format=text", "--debug", "state", "nope")
    assert r.stderr.strip().endswith("container does not exist")
    r = rt.cmd("frobnicate")
    assert r.returncode == 1


def test_sigkill_create_midway_then_delete_force(rt):
    b = rt.bundle(["sleep", "100"])
    random.seed(os.getpid())
    delays = [0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08] + [random.uniform(0, 0.1) for _ in range(5)]
    for delay in delays:
        cid = rt.new_id()
        p = subprocess.Popen([str(CELLA), "--root", str(rt.root), "create", "--bundle", str(b), cid],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = rt.cmd("delete", "--force", cid)
        assert r.returncode == 0, (delay, r)
        assert not (rt.root / cid).exists()


def test_run_foreground_terminal_proxy(rt):
    # terminal: true without --console-socket: `run` holds the pty and copies our stdio, like runc.
    b = rt.bundle(["sh", "-c", "tty; read x; echo got=$x; exit 5"])
    rt.edit_config(b, lambda c: c["process"].update(terminal=True))
    inp = rt.tmp / "in"
    inp.write_text("typed\n")
    with open(inp) as f:
        r = rt.run(b, stdin=f)
    assert r.returncode == 5, r
    assert "/dev/pts/0" in r.stdout and "got=typed" in r.stdout


def test_setup_failures_leave_nothing(rt):
    # Valid config, but the init fails: the error comes back and everything is undone.
    cases = [
        (lambda c: c["mounts"].append({"destination": "/x", "type": "nosuchfs", "source": "none"}),
         "mount none (type nosuchfs"),
        (lambda c: c["process"].update(args=["/no/such/binary"]), "/no/such/binary"),
        (lambda c: c["process"].update(args=["nosuchcmd"]), "executable file not found in $PATH"),
        (lambda c: c["process"].update(cwd="/etc/passwd"), "process.cwd"),
    ]
    for i, (edit, msg) in enumerate(cases):
        b = rt.bundle(["true"], name=f"b{i}", edit=edit)
        for verb in ("create", "run"):
            cid = rt.new_id()
            r = rt.cmd(verb, "--bundle", b, cid)
            assert r.returncode == 1 and msg in r.stderr, (verb, msg, r)
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert not (rt.root / cid).exists()


def test_state_annotations(rt):
    b = rt.bundle(["sleep", "10"], edit=lambda c: c.update(annotations={"org.example.key": "value"}))
    cid = rt.new_id()
    rt.ok("create", "--bundle", b, cid)
    st = rt.state(cid)
    assert st["annotations"] == {"org.example.key": "value"} and st["rootfs"] == str(b / "rootfs")
    assert st["created"].endswith("Z") and "T" in st["created"]
    rt.ok("delete", cid)
