"""cella exec: exit status, namespaces (incl. a user namespace), cgroups, --env/--cwd/--user/--cap,
--process files, --detach with --pid-file, a terminal over --console-socket, and runc's errors."""
import json
import os
import socket
import subprocess
import time

from cella_rt import CELLA, recv_fds, rt, seccomp_agent  # noqa: F401  (rt: fixture)

USERNS = {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
          "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}


def start(rt, args=("sleep", "300"), edit=None, name="bundle"):
    b = rt.bundle(list(args), edit=edit, name=name)
    cid = rt.new_id()
    rt.ok("run", "-d", "--bundle", b, cid)
    return cid


def ns_of(pid):
    return {n: os.readlink(f"/proc/{pid}/ns/{n}") for n in ("pid", "mnt", "uts", "ipc", "net", "user", "cgroup")}


def test_exec_exit_status_and_stdio(rt):
    cid = start(rt)
    r = rt.cmd("exec", cid, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7 and r.stdout == "out\n" and r.stderr == "err\n", r
    assert rt.cmd("exec", cid, "true").returncode == 0
    # Options after the id and "--" are accepted; arguments after the command belong to it.
    r = rt.cmd("exec", cid, "--env", "A=1", "--", "sh", "-c", "echo $A")
    assert r.stdout == "1\n", r
    inp = rt.tmp / "in"
    inp.write_text("through stdin\n")
    with open(inp) as f:
        assert rt.cmd("exec", cid, "cat", stdin=f).stdout == "through stdin\n"
    # A signal that kills the process: 128 + n.
    assert rt.cmd("exec", cid, "sh", "-c", "kill -9 $$").returncode == 137
    rt.ok("delete", "-f", cid)


def test_exec_joins_namespaces_and_cgroups(rt):
    cid = start(rt, edit=lambda c: c.update(hostname="exec-host"))
    init = rt.state(cid)["pid"]
    script = ("hostname; echo pid=$$; cat /proc/self/cgroup; "
              "for n in pid mnt uts ipc net user cgroup; do echo ns-$n=$(readlink /proc/self/ns/$n); done; "
              "ps -o pid,args")
    r = rt.cmd("exec", cid, "sh", "-c", script)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == "exec-host"
    assert lines[1] != "pid=1" and int(lines[1].split("=")[1]) > 1  # in the container's pid namespace
    want = ns_of(init)
    got = dict(l[3:].split("=", 1) for l in lines if l.startswith("ns-"))
    assert got == want
    cg = [l for l in lines if ":/" in l and l.split(":")[0].isdigit()]
    assert cg and all(l.endswith(":/") for l in cg), cg  # the init's cgroup namespace, rooted at its cgroup
    assert any(l.split()[-2:] == ["sleep", "300"] and l.split()[0] == "1" for l in lines), lines
    # Seen from the host: the same cgroup as the init in every hierarchy.
    pf = rt.tmp / "p"
    rt.ok("exec", "-d", "--pid-file", pf, cid, "sleep", "60")
    pid = int(pf.read_text())
    assert open(f"/proc/{pid}/cgroup").read() == open(f"/proc/{init}/cgroup").read()
    assert any(l.endswith(f"/{cid}") for l in open(f"/proc/{pid}/cgroup").read().splitlines())
    rt.ok("delete", "-f", cid)


def test_exec_env_cwd_user_cap_nnp(rt):
    def edit(c):
        c["process"]["env"] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROMCFG=yes"]
    cid = start(rt, edit=edit)
    r = rt.cmd("exec", "--env", "FOO=bar", "-e", "BAZ=qux", "--cwd", "/tmp", "--user", "1000:1001", cid,
               "sh", "-c", "echo $FOO $BAZ $FROMCFG; pwd; id -u; id -g; grep -E 'CapEff|NoNewPrivs' /proc/self/status")
    assert r.returncode == 0, r
    out = r.stdout.splitlines()
    assert out[:4] == ["bar qux yes", "/tmp", "1000", "1001"]
    # A non-root user keeps no effective capabilities (runc's default process has ambient ones
    # only if the config asks).
    assert out[4].split()[1] == "0000000000000000"
    r = rt.cmd("exec", "--cap", "CAP_SYS_ADMIN", "--no-new-privs", cid, "grep", "-E", "CapBnd|NoNewPrivs",
               "/proc/self/status")
    assert r.returncode == 0, r
    bnd = int(r.stdout.split("CapBnd:")[1].split()[0], 16)
    assert bnd & (1 << 21)  # CAP_SYS_ADMIN
    assert "NoNewPrivs:\t1" in r.stdout
    r = rt.cmd("exec", "--cap", "CAP_TEST", cid, "true")
    assert r.returncode == 255 and "CAP_TEST" in r.stderr, r
    r = rt.cmd("exec", "--user", "abc", cid, "true")
    assert r.returncode != 0 and "--user" in r.stderr, r
    r = rt.cmd("exec", "--cwd", "/does/not/exist", cid, "true")
    assert r.returncode == 255 and "/does/not/exist" in r.stderr, r
    r = rt.cmd("exec", cid, "no-such-cmd")
    assert r.returncode == 255
    assert 'exec: "no-such-cmd": executable file not found in $PATH' in r.stderr, r
    rt.ok("delete", "-f", cid)


def test_exec_process_file_detach_pid_file(rt):
    cid = start(rt)
    proc = {"args": ["sh", "-c", "echo $X > /tmp/marker; sleep 100"], "cwd": "/", "env": ["X=from-process-json"],
            "user": {"uid": 0, "gid": 0}}
    pf = rt.tmp / "process.json"
    pf.write_text(json.dumps(proc))
    pidfile = rt.tmp / "exec.pid"
    rt.ok("exec", "--process", pf, "--detach", "--pid-file", pidfile, cid)
    pid = int(pidfile.read_text())
    assert "sleep" in open(f"/proc/{pid}/cmdline").read() or "sh" in open(f"/proc/{pid}/cmdline").read()
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{rt.state(cid)['pid']}/ns/pid")
    end = time.time() + 5
    while time.time() < end:
        r = rt.cmd("exec", cid, "cat", "/tmp/marker")
        if r.stdout:
            break
        time.sleep(0.05)
    assert r.stdout == "from-process-json\n", r
    bad = rt.tmp / "bad.json"
    bad.write_text(json.dumps({"args": [], "cwd": "/"}))
    r = rt.cmd("exec", "--process", bad, cid)
    assert r.returncode == 255 and "args" in r.stderr, r
    # delete -f takes the exec'd process with it (it is in the container's cgroup).
    rt.ok("delete", "-f", cid)
    time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_exec_in_user_namespace(rt):
    cid = start(rt, edit=lambda c: (c["linux"]["namespaces"].append({"type": "user"}), c["linux"].update(USERNS)))
    r = rt.cmd("exec", cid, "sh", "-c", "id -u; cat /proc/self/uid_map; readlink /proc/self/ns/user")
    assert r.returncode == 0, r
    out = r.stdout.splitlines()
    assert out[0] == "0" and out[1].split() == ["0", "100000", "65536"]
    assert out[2] == os.readlink(f"/proc/{rt.state(cid)['pid']}/ns/user")
    pf = rt.tmp / "p"
    rt.ok("exec", "-d", "--pid-file", pf, cid, "sleep", "50")
    status = open(f"/proc/{int(pf.read_text())}/status").read()
    assert [l for l in status.splitlines() if l.startswith("Uid:")][0].split()[1] == "100000"
    rt.ok("delete", "-f", cid)


def test_exec_tty_console_socket(rt):
    cid = start(rt)
    sock_path = str(rt.tmp / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    r = rt.cmd("exec", "-t", "-d", "--console-socket", sock_path, cid, "sh", "-c", "tty; echo exec-term-ok; sleep 0.5")
    assert r.returncode == 0, r
    conn, _ = srv.accept()
    name, fds = recv_fds(conn)
    conn.close()
    srv.close()
    assert len(fds) == 1 and name.startswith(b"/dev/pts/"), name
    out = b""
    end = time.time() + 5
    while time.time() < end and b"exec-term-ok" not in out:
        try:
            chunk = os.read(fds[0], 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(fds[0])
    assert b"/dev/pts/" in out and b"exec-term-ok" in out, out
    # runc's rules for the console socket.
    r = rt.cmd("exec", "-t", "-d", cid, "true")
    assert r.returncode == 255 and "cannot allocate tty if cella will detach without setting console socket" in r.stderr
    r = rt.cmd("exec", "--console-socket", sock_path, cid, "true")
    assert "cannot use console socket if cella will not detach or allocate tty" in r.stderr
    rt.ok("delete", "-f", cid)


def test_exec_tty_foreground(rt):
    """-t without a console socket: cella proxies the pty (stdin is not a terminal here)."""
    cid = start(rt)
    r = rt.cmd("exec", "-t", cid, "sh", "-c", "tty; exit 4")
    assert r.returncode == 4, r
    assert "/dev/pts/" in r.stdout, r
    rt.ok("delete", "-f", cid)


def test_exec_stopped_and_missing(rt):
    cid = start(rt, args=("true",))
    rt.wait_status(cid, "stopped")
    r = rt.cmd("exec", cid, "true")
    assert r.returncode == 255 and r.stderr.strip() == "cella: exec failed: cannot exec in a stopped state", r
    rt.ok("delete", cid)
    r = rt.cmd("exec", cid, "true")
    assert r.returncode == 255 and "container does not exist" in r.stderr, r
    r = rt.cmd("exec", cid)
    assert r.returncode != 0 and "args cannot be empty" in r.stderr, r


def test_exec_in_created_container_and_signal_forwarding(rt):
    b = rt.bundle(["sleep", "300"])
    cid = rt.new_id()
    rt.ok("create", "--bundle", b, cid)
    assert rt.cmd("exec", cid, "sh", "-c", "exit 5").returncode == 5
    rt.ok("start", cid)
    p = subprocess.Popen([str(CELLA), "--root", str(rt.root), "exec", cid, "sh", "-c",
                          "trap 'echo got-term; exit 9' TERM; while :; do sleep 0.05; done"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    p.send_signal(15)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 9 and b"got-term" in out, (out, err)
    rt.ok("delete", "-f", cid)


def test_exec_applies_seccomp(rt):
    def edit(c):
        c["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                 "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                               "errnoRet": 1}]}
    cid = start(rt, edit=edit)
    r = rt.cmd("exec", cid, "mkdir", "/tmp/blocked")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
    assert rt.cmd("exec", cid, "--no-new-privs", "sh", "-c", "mkdir /tmp/b2 || exit 3").returncode == 3
    rt.ok("delete", "-f", cid)


def test_exec_preserve_fds_and_additional_gids(rt):
    cid = start(rt)
    rfd, wfd = os.pipe()
    os.write(wfd, b"through fd 3\n")
    os.close(wfd)
    try:
        r = rt.cmd("exec", "--preserve-fds", "1", cid, "sh", "-c", "cat <&3; ls /proc/self/fd | sort -n | tr '\\n' ' '",
                   fd_map={3: rfd})
        assert r.returncode == 0, r
        assert r.stdout.startswith("through fd 3\n"), r
        # Only stdio, fd 3 and the fd ls itself opens.
        fds = [int(x) for x in r.stdout.splitlines()[1].split()]
        assert set(fds) <= {0, 1, 2, 3, 4}, fds
        # Without --preserve-fds nothing beyond stdio survives.
        r = rt.cmd("exec", cid, "sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' '", fd_map={3: rfd})
        assert set(int(x) for x in r.stdout.split()) <= {0, 1, 2, 3}, r  # 3 = ls's own directory fd
    finally:
        os.close(rfd)
    r = rt.cmd("exec", "--user", "1000:1000", "--additional-gids", "10", "-g", "20", cid, "id", "-G")
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["10", "1000", "20"], r
    rt.ok("delete", "-f", cid)


def test_exec_tty_interactive_through_a_pty(rt):
    """-t with a terminal on stdin: cella puts it in raw mode and proxies an interactive shell."""
    import pty
    import select
    cid = start(rt)
    master, slave = pty.openpty()
    p = subprocess.Popen([str(CELLA), "--root", str(rt.root), "exec", "-t", cid, "sh"],
                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    os.write(master, b"echo $((6*7))x; tty; exit 3\n")
    out = b""
    end = time.time() + 10
    while time.time() < end and p.poll() is None:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                out += os.read(master, 4096)
            except OSError:
                break
    assert p.wait(timeout=10) == 3, out
    try:
        while True:
            r, _, _ = select.select([master], [], [], 0.2)
            if not r:
                break
            chunk = os.read(master, 4096)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    os.close(master)
    assert b"42x" in out and b"/dev/pts/" in out, out
    rt.ok("delete", "-f", cid)


def test_exec_notify_on_execve_does_not_deadlock(rt):
    """The listener fd must reach the agent before the process's own execve (which it notifies)."""
    sock = rt.tmp / "agent.sock"
    got = {}
    t = seccomp_agent(sock, got, [1, 1])
    sc = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": str(sock),
          "syscalls": [{"names": ["execve"], "action": "SCMP_ACT_NOTIFY"}]}
    cid = start(rt, edit=lambda c: c["linux"].update(seccomp=sc))
    try:
        r = rt.cmd("exec", cid, "true", timeout=20)
        t.join(10)
        assert "error" not in got, got
        assert r.returncode == 0 and got.get("continued") == 2, (r, got)
    finally:
        rt.ok("delete", "-f", cid)
