"""Hardening: the runtime binary is never exposed to the container (CVE-2019-5736), no file
descriptor leaks in and the cwd cannot point outside the root (CVE-2024-21626), and capabilities
outside the runtime's bounding set are refused before anything is created."""
import errno
import hashlib
import json
import os

import pytest

from cella_rt import CELLA, rt  # noqa: F401  (fixture)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_runtime_binary_not_reachable_from_container(rt):
    d = rt.tmp / "marks"
    d.mkdir()
    before = sha(CELLA)
    # createContainer runs in the container (host /proc still mounted, full capabilities): it
    # finds the init (the runtime, its parent) and tries to write through /proc/PID/exe.
    hook = rt.tmp / "attack.sh"
    hook.write_text(f"""#!/bin/sh
# In the container's pid namespace $$ is not a host pid: go through sed's own (host) PPid.
me=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/self/status)
ppid=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$me/status)
readlink /proc/$ppid/exe > {d}/exe
if echo pwned >> /proc/$ppid/exe 2>{d}/write.err; then echo yes; else echo no; fi > {d}/wrote
""")
    hook.chmod(0o755)
    start = ["sh", "-c", "readlink /proc/1/exe > /mnt/start.exe; echo x >> /proc/1/exe && echo yes > /mnt/start.wrote; true"]

    def edit(c):
        c["hooks"] = {"createContainer": [{"path": str(hook)}],
                      "startContainer": [{"path": "/bin/sh", "args": start}]}
        c["mounts"].append({"destination": "/mnt", "type": "bind", "source": str(d), "options": ["rbind", "rw"]})
        c["process"]["capabilities"] = {k: ["CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE"] for k in
                                        ("bounding", "effective", "permitted")}
    os.chmod(d, 0o777)
    r = rt.run(rt.bundle(["sh", "-c", "readlink /proc/self/exe"], edit=edit))
    assert r.returncode == 0, r
    # The root of the read-only detached mount of the binary ("/"), or the sealed memfd copy on
    # kernels without the new mount API; never the host path.
    exe = (d / "exe").read_text().strip()
    assert exe == "/" or exe.startswith("/memfd:cella"), exe
    assert (d / "wrote").read_text().strip() == "no", (d / "write.err").read_text()
    start_exe = (d / "start.exe").read_text().strip()
    assert start_exe == "/" or start_exe.startswith("/memfd:cella"), start_exe
    assert not (d / "start.wrote").exists()
    assert sha(CELLA) == before


def test_runtime_binary_stays_readonly_after_init_exits(rt):
    """The attack's second half: hold /proc/PID/exe open (O_PATH) while the init runs, reopen it
    for writing once the init is gone. The binary's mount is read-only, so EROFS."""
    b = rt.bundle(["sleep", "30"])
    cid = rt.new_id()
    rt.ok("create", "--bundle", b, cid)
    pid = json.loads(rt.ok("state", cid).stdout)["pid"]
    held = os.open(f"/proc/{pid}/exe", os.O_PATH)
    try:
        rt.ok("delete", "-f", cid)
        with pytest.raises(OSError) as e:
            os.open(f"/proc/self/fd/{held}", os.O_WRONLY)
        assert e.value.errno in (errno.EROFS, errno.EPERM), e.value
    finally:
        os.close(held)


def test_exec_also_runs_from_sealed_copy(rt):
    b = rt.bundle(["sleep", "30"])
    cid = rt.new_id()
    rt.ok("run", "-d", "--bundle", b, cid)
    try:
        r = rt.cmd("exec", cid, "sh", "-c", "ls -l /proc/$PPID/exe 2>&1; readlink /proc/$PPID/exe")
        # The exec'd process's parent is gone or the sealed copy; never the host binary path.
        assert str(CELLA) not in r.stdout, r
    finally:
        rt.ok("delete", "-f", cid)


def test_no_fd_leaks_into_container(rt):
    # An inheritable fd in cella's own table must not reach the container.
    extra = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(extra, True)
    try:
        r = rt.cmd("run", "--bundle", rt.bundle(["sh", "-c", "ls /proc/$$/fd; true"]), rt.new_id(), pass_fds=(extra,))
    finally:
        os.close(extra)
    assert r.returncode == 0, r
    assert sorted(r.stdout.split()) == ["0", "1", "2"], r


def test_preserved_fds_pass(rt):
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(2)]
    for f in fds:
        os.set_inheritable(f, True)
    try:
        # --preserve-fds 2 keeps fds 3 and 4: give cella exactly those.
        r = rt.cmd("run", "--preserve-fds", "2", "--bundle", rt.bundle(["sh", "-c", "ls /proc/$$/fd; true"]), rt.new_id(),
                   fd_map={3: fds[0], 4: fds[1]})
    finally:
        for f in fds:
            os.close(f)
    assert r.returncode == 0, r
    assert sorted(r.stdout.split()) == ["0", "1", "2", "3", "4"], r


@pytest.mark.parametrize("cwd", ["/proc/self/fd/3", "/proc/self/fd/4", "/proc/self/fd/5", "/proc/self/fd/6",
                                 "/proc/self/fd/7", "/proc/self/fd/8", "/proc/self/cwd", "/proc/1/root"])
def test_cwd_escape_refused(rt, cwd):
    b = rt.bundle(["sh", "-c", "pwd; ls /"], edit=lambda c: c["process"].update(cwd=cwd))
    r = rt.run(b)
    # Either refused, or (a magic link that stays inside) never a host directory.
    if r.returncode == 0:
        assert "(unreachable)" not in r.stdout and "home" not in r.stdout.split(), r
    else:
        assert "process.cwd" in r.stderr, r
    assert cwd.startswith("/proc/self/fd") is False or r.returncode != 0, r


def test_cwd_symlink_inside_root_ok(rt):
    b = rt.bundle(["pwd"], edit=lambda c: c["process"].update(cwd="/tmp/newdir"))
    r = rt.run(b)
    assert r.returncode == 0 and r.stdout.strip() == "/tmp/newdir", r


def test_capability_outside_bounding_set_refused(rt):
    with open("/proc/self/status") as f:
        bnd = int(next(l for l in f if l.startswith("CapBnd:")).split()[1], 16)
    if bnd & (1 << 24):
        pytest.skip("CAP_SYS_RESOURCE is in this host's bounding set")
    b = rt.bundle(["true"], edit=lambda c: c["process"]["capabilities"].update(
        bounding=["CAP_KILL", "CAP_SYS_RESOURCE"], effective=["CAP_KILL", "CAP_SYS_RESOURCE"]))
    cid = rt.new_id()
    r = rt.cmd("create", "--bundle", b, cid)
    assert r.returncode != 0, r
    assert "process.capabilities.bounding: CAP_SYS_RESOURCE is not in the runtime's bounding set" in r.stderr, r
    assert not (rt.root / cid).exists()
    r = rt.cmd("run", "--bundle", b, cid)
    assert r.returncode != 0 and "CAP_SYS_RESOURCE" in r.stderr, r


def test_exec_cap_outside_bounding_set_and_cwd_escape_refused(rt):
    with open("/proc/self/status") as f:
        bnd = int(next(l for l in f if l.startswith("CapBnd:")).split()[1], 16)
    cid = rt.new_id()
    rt.ok("run", "-d", "--bundle", rt.bundle(["sleep", "30"]), cid)
    try:
        if not bnd & (1 << 24):
            r = rt.cmd("exec", "--cap", "CAP_SYS_RESOURCE", cid, "true")
            assert r.returncode != 0, r
            assert "process.capabilities.bounding: CAP_SYS_RESOURCE is not in the runtime's bounding set" in r.stderr, r
        for n in range(3, 9):
            r = rt.cmd("exec", "--cwd", f"/proc/self/fd/{n}", cid, "pwd")
            assert "(unreachable)" not in r.stdout, r
            assert r.returncode != 0 or not r.stdout.startswith("/proc"), r
        assert rt.cmd("exec", cid, "true").returncode == 0
    finally:
        rt.ok("delete", "-f", cid)
