"""Helpers for the runtime integration tests: a private --root per test, busybox bundles, and a
leak check (mounts, cgroups, state dir, processes) after every test."""
import array
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import BUILD, REPO, need_root
from clients import mounts_under, rmdir_deepest_first

CELLA = BUILD / "cella"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def mountinfo():
    with open("/proc/self/mountinfo") as f:
        # mount id, mount point
        return {(l.split()[0], l.split()[4]) for l in f}


def pid_namespaces():
    """pid -> pid namespace inode, for every process we can see."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = os.readlink(f"/proc/{d}/ns/pid")
            except OSError:
                pass
    return out


def cgroup_dirs_named(names):
    """Directories under any hierarchy (and /sys/fs/cgroup/unified) whose name is in names."""
    found = []
    if not names:
        return found
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        depth = Path(top).relative_to(CGROUP_ROOT).parts
        if len(depth) > 5:
            dirs[:] = []
            continue
        for d in dirs:
            if d in names:
                found.append(os.path.join(top, d))
    return found


_bundle_cache = {}


def base_bundle():
    if "path" not in _bundle_cache:
        p = subprocess.run([str(REPO / "scripts/mk-bundle.sh")], capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            pytest.skip(f"cannot build the busybox bundle: {p.stderr.strip()[-200:]}")
        _bundle_cache["path"] = Path(p.stdout.strip().splitlines()[-1])
    return _bundle_cache["path"]


class Result:
    def __init__(self, rc, out, err):
        self.returncode, self.stdout, self.stderr = rc, out, err

    def __repr__(self):
        return f"<rc={self.returncode} out={self.stdout!r} err={self.stderr!r}>"


class Runtime:
    """One test's runtime: a private state root, bundles, and the ids it used."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        # A container root in a user namespace (host uid 100000) must reach the bundle: make
        # the directory (mkdtemp: 0700) and its parents searchable.
        for d in [tmp, *tmp.parents]:
            if str(d) in ("/", "/tmp"):
                break
            os.chmod(d, os.stat(d).st_mode | 0o011)
        self.root = tmp / "state"
        self.ids = set()
        self.cgroup_names = set()
        self.n = 0
        self.tag = f"ct{os.getpid()}x{int(time.time() * 1000) % 100000000}"

    def new_id(self):
        self.n += 1
        cid = f"{self.tag}-{self.n}"
        self.ids.add(cid)
        self.cgroup_names.add(cid)
        return cid

    def bundle(self, args=None, name="bundle", edit=None):
        dst = self.tmp / name
        if not dst.exists():
            shutil.copytree(base_bundle(), dst, symlinks=True)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["process"]["terminal"] = False
        if args is not None:
            cfg["process"]["args"] = args
        if edit:
            edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg, indent=1))
        return dst

    def edit_config(self, bundle, fn):
        cfg = json.loads((bundle / "config.json").read_text())
        fn(cfg)
        (bundle / "config.json").write_text(json.dumps(cfg, indent=1))

    def cmd(self, *args, timeout=60, stdin=subprocess.DEVNULL, pass_fds=(), fd_map=None, env=None,
            global_args=()):
        """Runs cella with stdout/stderr in files (a created container inherits them).

        fd_map {child_fd: our_fd} places fds at fixed numbers in the child only: pytest's own
        capture fds live at low numbers in this process and must not be clobbered."""
        self.n += 1
        outp, errp = self.tmp / f"out.{self.n}", self.tmp / f"err.{self.n}"
        preexec = None
        if fd_map:
            pass_fds = tuple(pass_fds) + tuple(fd_map)

            def preexec():
                # Move the sources out of the way first so no target overwrites a source.
                high = {dst: fcntl.fcntl(src, fcntl.F_DUPFD, 100) for dst, src in fd_map.items()}
                for dst, src in high.items():
                    os.dup2(src, dst)
                    os.close(src)
        with open(outp, "w") as o, open(errp, "w") as e:
            p = subprocess.run([str(CELLA), "--root", str(self.root), *global_args, *map(str, args)],
                               stdin=stdin, stdout=o, stderr=e, timeout=timeout, pass_fds=pass_fds,
                               preexec_fn=preexec, env=env)
        return Result(p.returncode, outp.read_text(), errp.read_text())

    def ok(self, *args, **kw):
        r = self.cmd(*args, **kw)
        assert r.returncode == 0, f"cella {' '.join(map(str, args))}: {r}"
        return r

    def state(self, cid):
        return json.loads(self.ok("state", cid).stdout)

    def run(self, bundle, *extra, cid=None, **kw):
        cid = cid or self.new_id()
        return self.cmd("run", "--bundle", bundle, *extra, cid, **kw)

    def wait_status(self, cid, status, timeout=5):
        end = time.time() + timeout
        while time.time() < end:
            if self.state(cid)["status"] == status:
                return
            time.sleep(0.02)
        raise AssertionError(f"{cid} never reached {status}: {self.state(cid)}")

    def force_cleanup(self):
        if self.root.exists():
            for cid in os.listdir(self.root):
                self.cmd("delete", "--force", cid)


def reaped_by_init(pid):
    """A zombie whose parent is the host's pid 1: dead, only waiting for init to reap it (this
    host's pid 1 reaps about once a second), so not a leak."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] == "Z" and fields[1] == "1"


def check_leaks(rt: Runtime, mounts_before, pidns_before):
    problems = []
    time.sleep(0.05)
    # Under /tmp only this test's directory is ours: other sessions on this host (Podman and
    # containerd tests, benchmarks) mount under their own /tmp directories meanwhile.
    mine = (str(rt.tmp), str(base_bundle()))
    new_mounts = {m for m in mountinfo() - mounts_before
                  if not m[1].startswith("/tmp/") or m[1].startswith(mine)}
    if new_mounts:
        problems.append(f"new mounts: {sorted(new_mounts)}")
    cgs = cgroup_dirs_named(rt.cgroup_names)
    if cgs:
        problems.append(f"cgroup dirs left: {cgs}")
    if rt.root.exists() and os.listdir(rt.root):
        problems.append(f"state dir not empty: {os.listdir(rt.root)}")
    own = os.readlink("/proc/self/ns/pid")
    for _ in range(50):
        now = pid_namespaces()
        strays = {p: ns for p, ns in now.items() if ns != own and p not in pidns_before and not reaped_by_init(p)}
        if not strays:
            break
        time.sleep(0.05)
    if strays:
        desc = []
        for p in strays:
            try:
                desc.append(f"{p}:{open(f'/proc/{p}/cmdline').read().replace(chr(0), ' ')}")
            except OSError:
                pass
        if desc:
            problems.append(f"processes left in container pid namespaces: {desc}")
    return problems


@pytest.fixture
def rt():
    need_root()
    if not CELLA.exists():
        pytest.skip(f"{CELLA} not built")
    base_bundle()
    mounts_before = mountinfo()
    pidns_before = set(pid_namespaces())
    # Directly under /tmp, not pytest's tmp_path: a container root in a user namespace must
    # search the bundle's parents, and any other pytest session starting on this host resets
    # /tmp/pytest-of-USER to 0700 (a userns test then fails with EACCES on its rootfs).
    r = Runtime(Path(tempfile.mkdtemp(prefix="cellatest-rt-", dir="/tmp")))
    try:
        yield r
        problems = check_leaks(r, mounts_before, pidns_before)
        if problems:
            r.force_cleanup()
            for cid in r.cgroup_names:
                rmdir_deepest_first(cgroup_dirs_named({cid}))
            pytest.fail("leaks after test: " + "; ".join(problems))
    finally:
        if not mounts_under(r.tmp):
            shutil.rmtree(r.tmp, ignore_errors=True)


def status_field(text, key):
    m = re.search(rf"^{key}:\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else None


def recv_fds(conn, size=4096):
    """One message from a unix socket and the fds it carried (SCM_RIGHTS): (bytes, [fd, ...])."""
    fds = array.array("i")
    msg, anc, _, _ = conn.recvmsg(size, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def seccomp_agent(path, got, answers, errno_for=lambda nr: 0):
    """A seccomp agent on a unix socket, in a thread (returned). Connection i brings the container
    state and its notify fd; the agent then answers answers[i] notifications: with -errno_for(nr)
    when that is not 0, else SECCOMP_USER_NOTIF_FLAG_CONTINUE. It records in got: "states" (the
    state JSONs), "nr" (the syscalls), "continued" (how many went on), "error" (if it failed)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(30)

    def serve():
        try:
            for n_answers in answers:
                conn, _ = srv.accept()
                msg, fds = recv_fds(conn, 65536)
                got.setdefault("states", []).append(json.loads(msg.decode()))
                conn.close()
                for _ in range(n_answers):
                    req = bytearray(80)  # struct seccomp_notif
                    fcntl.ioctl(fds[0], 0xC0502100, req)  # SECCOMP_IOCTL_NOTIF_RECV
                    nid, _pid, _flags, nr = struct.unpack_from("=QIIi", req)
                    got.setdefault("nr", []).append(nr)
                    errno = errno_for(nr)
                    if errno:
                        resp = struct.pack("=QqiI", nid, 0, -errno, 0)
                    else:
                        resp = struct.pack("=QqiI", nid, 0, 0, 1)
                        got["continued"] = got.get("continued", 0) + 1
                    fcntl.ioctl(fds[0], 0xC0182101, bytearray(resp))  # SECCOMP_IOCTL_NOTIF_SEND
                for fd in fds:
                    os.close(fd)
        except Exception as e:  # reported by the test
            got["error"] = repr(e)
        finally:
            srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t
