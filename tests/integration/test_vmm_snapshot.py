"""cella-vmm snapshot and restore on the host's KVM with the tiny counting guest (vmm_guests.COUNT).

The guest keeps a counter in memory, prints it on COM1 and spins; SIGUSR2 makes a VMM started
with --snapshot-dir pause it, write DIR/state + DIR/memory and resume. `cella-vmm --restore DIR`
runs the saved VM in a fresh process. A clone's first line may be the tail of a number the
original was printing when paused; from its second line on it counts on by one.
"""
import os
import re
import signal
import stat
import struct
import subprocess
import time
import zlib

import pytest

from conftest import BUILD, run
from vmm_guests import COUNT

VMM = str(BUILD / "cella-vmm")
HEADER = 32  # magic 8, version 4, header bytes 4, body bytes 8, body crc 4, header crc 4


def kvm_usable():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not kvm_usable(), reason="no usable /dev/kvm on this host")


def wait_for(pred, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def numbers(path):
    with open(path) as f:
        return f.read().split("\n")


class Vmm:
    """A cella-vmm in the background, stdout and stderr in files."""

    def __init__(self, tmp_path, name, args, prefix=()):
        self.out = tmp_path / f"{name}.out"
        self.err = tmp_path / f"{name}.err"
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.p = subprocess.Popen([*prefix, VMM, *args], stdin=subprocess.DEVNULL, stdout=o, stderr=e)

    def lines(self):
        return self.out.read_text().split("\n")

    def log(self):
        return self.err.read_text()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(timeout=20)
        assert "ERROR" not in self.log().upper().replace("ERROR_", ""), self.log()
        return rc


def snapshot(tmp_path, name="snap", extra=(), prefix=()):
    """Runs the counting guest, snapshots it after 20 lines, lets it run on, stops it.
    Returns (snapshot dir, count printed before the snapshot, the original's lines)."""
    d = tmp_path / name
    guest = tmp_path / "count.bin"
    guest.write_bytes(COUNT)
    v = Vmm(tmp_path, name + "-orig", ["--kernel", str(guest), "--memory", "1", "--snapshot-dir", str(d), *extra],
            prefix=prefix)
    try:
        wait_for(lambda: len(v.lines()) > 20, what="20 lines from the counting guest")
        before = len(v.lines()) - 1
        v.p.send_signal(signal.SIGUSR2)
        wait_for(lambda: "snapshot written to" in v.log(), what="snapshot written")
        n = len(v.lines())
        wait_for(lambda: len(v.lines()) > n + 8, what="the original to keep counting")
    finally:
        assert v.stop() == 128 + signal.SIGTERM
    assert os.path.getsize(d / "memory") == 1 << 20
    return d, before, v.lines()


def restore(tmp_path, name, d, extra=(), lines=30):
    v = Vmm(tmp_path, name, ["--restore", str(d), *extra])
    try:
        wait_for(lambda: len(v.lines()) > lines or v.p.poll() is not None, what=f"{lines} lines from {name}")
    finally:
        rc = v.stop()
    assert rc == 128 + signal.SIGTERM, (rc, v.log())
    assert "VM restored from" in v.log(), v.log()
    return v.lines()


def check_continues(clone, before, original):
    """clone[1:] counts on by one from a number past what was printed before the snapshot."""
    first = int(clone[1])
    assert first > before, (first, before)
    full = [int(x) for x in clone[1:-1]]
    assert full == list(range(first, first + len(full))), clone[:40]
    # the first line is the rest of the number the guest was printing when paused
    assert str(first - 1).endswith(clone[0]), clone[:3]
    # the original went through the same numbers
    assert str(first) in original and str(first + 3) in original
    return first


def test_count_continues_after_restore_and_two_clones_are_identical(tmp_path):
    d, before, original = snapshot(tmp_path)
    a = restore(tmp_path, "clone-a", d)
    b = restore(tmp_path, "clone-b", d)
    fa = check_continues(a, before, original)
    fb = check_continues(b, before, original)
    assert fa == fb and a[:25] == b[:25], (a[:5], b[:5])
    # the snapshot files were only read
    assert os.path.getsize(d / "memory") == 1 << 20


def test_restored_vm_snapshots_again(tmp_path):
    """A clone (RAM mapped from the first memory file) snapshots into a second directory."""
    d, before, original = snapshot(tmp_path)
    d2 = tmp_path / "snap2"
    v = Vmm(tmp_path, "clone", ["--restore", str(d), "--snapshot-dir", str(d2)])
    try:
        wait_for(lambda: len(v.lines()) > 10, what="clone output")
        last = int(v.lines()[-2])  # the last complete line before the signal
        v.p.send_signal(signal.SIGUSR2)
        wait_for(lambda: "snapshot written to" in v.log(), what="second snapshot")
    finally:
        v.stop()
    second = restore(tmp_path, "clone2", d2)
    first = int(second[1])
    assert first > last, (first, last)
    full = [int(x) for x in second[1:-1]]
    assert full == list(range(first, first + len(full)))


def test_snapshot_with_two_vcpus(tmp_path):
    """The AP never started (KVM_MP_STATE_UNINITIALIZED): saved and restored as such."""
    d, before, original = snapshot(tmp_path, extra=("--cpus", "2"))
    c = restore(tmp_path, "clone", d)
    check_continues(c, before, original)


def test_snapshot_with_devices(tmp_path):
    """A tiny guest with a disk, vsock and rng (no driver ever starts them here: the transport state and
    the devices' own sections still go through save and restore; the sandbox test drives them from a
    Linux guest). A disk that changed size or vanished since the snapshot is refused, and --disk or
    --net next to --restore is refused rather than ignored."""
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * (1 << 20))
    uds = tmp_path / "v.sock"
    d, before, original = snapshot(tmp_path, extra=("--disk", str(disk), "--vsock", f"cid=3,uds={uds}", "--rng"))
    assert not uds.exists()
    c = restore(tmp_path, "clone", d)
    check_continues(c, before, original)
    assert not uds.exists()  # the clone made it again and removed it at exit
    os.truncate(disk, 1 << 19)
    vmm_refuses(d, match=rf"disk {re.escape(str(disk))}: 1024 sectors of 512 bytes now, 2048 when the snapshot "
                         r"was taken: restore with the disk as it was then")
    os.unlink(disk)
    vmm_refuses(d, match=rf"disk {re.escape(str(disk))}: No such file or directory")
    vmm_refuses(d, "--disk", str(disk), match=r"--disk and --net cannot be given with it")


def vmm_refuses(d, *extra, match):
    p = run([VMM, "--restore", str(d), *extra])
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert p.stdout == "", "no VM may run"
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("cella-vmm: "), p.stderr
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def good_snapshot(tmp_path_factory):
    d, _, _ = snapshot(tmp_path_factory.mktemp("good"))
    return d


def copy_snapshot(src, dst, state=None, memory=None):
    dst.mkdir()
    (dst / "state").write_bytes(state if state is not None else (src / "state").read_bytes())
    (dst / "memory").write_bytes(memory if memory is not None else (src / "memory").read_bytes())
    return dst


def test_corrupted_state_is_refused(good_snapshot, tmp_path):
    s = bytearray((good_snapshot / "state").read_bytes())
    s[len(s) // 2] ^= 0x40
    d = copy_snapshot(good_snapshot, tmp_path / "bad", state=bytes(s))
    vmm_refuses(d, match=r"state file .*: CRC mismatch \(corrupted\)")


def test_corrupted_header_is_refused(good_snapshot, tmp_path):
    s = bytearray((good_snapshot / "state").read_bytes())
    s[16] ^= 1  # body length
    d = copy_snapshot(good_snapshot, tmp_path / "bad", state=bytes(s))
    vmm_refuses(d, match=r"header CRC mismatch \(corrupted\)")


def test_truncated_state_is_refused(good_snapshot, tmp_path):
    s = (good_snapshot / "state").read_bytes()
    d = copy_snapshot(good_snapshot, tmp_path / "bad", state=s[: len(s) - 100])
    vmm_refuses(d, match=r"state file .*: truncated")
    d2 = copy_snapshot(good_snapshot, tmp_path / "bad2", state=s[:20])
    vmm_refuses(d2, match=r"state file .*: truncated \(20 bytes")


def test_other_version_is_refused(good_snapshot, tmp_path):
    s = bytearray((good_snapshot / "state").read_bytes())
    struct.pack_into("<I", s, 8, 99)
    struct.pack_into("<I", s, 28, zlib.crc32(bytes(s[:28])))  # a well-formed header of version 99
    d = copy_snapshot(good_snapshot, tmp_path / "bad", state=bytes(s))
    vmm_refuses(d, match=r"format version 99, this cella-vmm reads version 1")


def test_not_a_snapshot_is_refused(good_snapshot, tmp_path):
    d = copy_snapshot(good_snapshot, tmp_path / "bad", state=b"x" * 100)
    vmm_refuses(d, match=r"not a cella-vmm snapshot \(bad magic\)")


def test_truncated_memory_is_refused(good_snapshot, tmp_path):
    m = (good_snapshot / "memory").read_bytes()
    d = copy_snapshot(good_snapshot, tmp_path / "bad", memory=m[: len(m) // 2])
    vmm_refuses(d, match=r"memory file .*: 524288 bytes, the snapshot's guest has 1048576 \(truncated\)")


def test_wrong_cpu_count_or_memory_is_refused(good_snapshot):
    vmm_refuses(good_snapshot, "--cpus", "2", match=r"cpus: 2 requested, the snapshot has 1 vCPU")
    vmm_refuses(good_snapshot, "--memory", "2", match=r"memory: 2 MiB requested, the snapshot has 1 MiB")


def test_missing_snapshot_is_refused(tmp_path):
    vmm_refuses(tmp_path / "nothing", match=r"state file.*No such file or directory")


def test_restore_takes_no_machine_flags(good_snapshot):
    vmm_refuses(good_snapshot, "--kernel", "/x", match=r"--restore: the machine comes from the snapshot")


def test_matching_cpus_and_memory_are_accepted(good_snapshot, tmp_path):
    c = restore(tmp_path, "clone", good_snapshot, extra=("--cpus", "1", "--memory", "1"), lines=5)
    assert int(c[2]) == int(c[1]) + 1


def test_garbage_with_a_valid_crc_never_crashes(good_snapshot, tmp_path):
    """Bytes flipped all over the state file, CRCs fixed up so that every section parser sees them:
    the VMM refuses with one error line, or runs the damaged guest (which may fail or reboot); it
    never crashes or trips the sanitizers."""
    import random
    rnd = random.Random(6)
    orig = (good_snapshot / "state").read_bytes()
    outcomes = {}
    for i in range(40):
        s = bytearray(orig)
        for _ in range(rnd.choice((1, 4, 32))):
            s[rnd.randrange(HEADER, len(s))] ^= 1 << rnd.randrange(8)
        struct.pack_into("<I", s, 24, zlib.crc32(bytes(s[HEADER:])))
        struct.pack_into("<I", s, 28, zlib.crc32(bytes(s[:28])))
        d = copy_snapshot(good_snapshot, tmp_path / f"g{i}", state=bytes(s))
        p = subprocess.Popen([VMM, "--restore", str(d), "--console", "none"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=1)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=20)
        assert p.returncode in (0, 1, 2, 128 + signal.SIGTERM), (i, p.returncode, err[-2000:])
        if p.returncode == 1:
            lines = [l for l in err.splitlines() if l.strip()]
            assert len(lines) == 1 and lines[0].startswith("cella-vmm: "), err
        outcomes[p.returncode] = outcomes.get(p.returncode, 0) + 1
    assert outcomes.get(1, 0) > 0, outcomes  # most damage is caught by a section's checks


def test_pit_only_when_asked_and_restored_the_same(good_snapshot, tmp_path):
    """A flat binary runs without the in-kernel PIT (its creation and teardown cost tens of ms on
    some hosts): its snapshot has no "vm.pit2" section and its config says "pit": false. With --pit
    the section and the setting are saved, and the restored VM (built with a PIT) counts on."""
    plain = (good_snapshot / "state").read_bytes()
    assert b"vm.pit2" not in plain and b'"pit":false' in plain
    d, before, original = snapshot(tmp_path, extra=("--pit",))
    state = (d / "state").read_bytes()
    assert b"vm.pit2" in state and b'"pit":true' in state
    check_continues(restore(tmp_path, "clone", d), before, original)
    vmm_refuses(d, "--pit", match=r"--restore: the machine comes from the snapshot")


def open_files(pid):
    """The paths a process has open (its /proc/PID/fd links)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_two_clones_at_once_with_overrides(tmp_path):
    """--restore-disk / --restore-vsock-uds let two clones of one snapshot run side by side: each gets
    its own copy of the disk and its own vsock socket (the saved ones are not touched; the saved disk
    is even gone), both count on from the snapshot, and each removes its socket at exit."""
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\1" * (1 << 20))
    uds = tmp_path / "v.sock"
    d, before, original = snapshot(tmp_path, extra=("--disk", f"{disk},id=root", "--vsock", f"cid=3,uds={uds}"))
    copies = [tmp_path / "a.img", tmp_path / "b.img"]
    for c in copies:
        c.write_bytes(disk.read_bytes())
    os.unlink(disk)  # a clone that opened the saved path would fail
    socks = [tmp_path / "a.sock", tmp_path / "b.sock"]
    entries = set(os.listdir(tmp_path))
    # by id for one clone, by position for the other
    clones = [Vmm(tmp_path, "clone-a", ["--restore", str(d), "--restore-disk", f"root={copies[0]}",
                                        "--restore-vsock-uds", str(socks[0])]),
              Vmm(tmp_path, "clone-b", ["--restore", str(d), "--restore-disk", f"vda={copies[1]}",
                                        "--restore-vsock-uds", str(socks[1])])]
    try:
        for v in clones:
            wait_for(lambda: len(v.lines()) > 10 or v.p.poll() is not None, what="clone output")
            assert v.p.poll() is None, v.log()
        # both run at once, each on its own disk copy and socket
        for v, copy, sock in zip(clones, copies, socks):
            assert stat.S_ISSOCK(os.stat(sock).st_mode), sock
            files = open_files(v.p.pid)
            assert str(copy) in files and str(disk) not in files, files
        assert not uds.exists()
        n = [len(v.lines()) for v in clones]
        wait_for(lambda: all(len(v.lines()) > k + 5 for v, k in zip(clones, n)), what="both clones counting")
    finally:
        rcs = [v.stop() for v in clones]
    assert rcs == [128 + signal.SIGTERM] * 2, rcs
    for v in clones:
        assert "VM restored from" in v.log(), v.log()
        check_continues(v.lines(), before, original)
    assert not any(s.exists() for s in socks) and not uds.exists()
    left = set(os.listdir(tmp_path)) - entries - {"clone-a.out", "clone-a.err", "clone-b.out", "clone-b.err"}
    assert not left, left
    assert all(c.read_bytes() == b"\1" * (1 << 20) for c in copies)  # this guest never writes


def test_bad_overrides_are_refused(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * (1 << 20))
    uds = tmp_path / "v.sock"
    d, _, _ = snapshot(tmp_path, extra=("--disk", f"{disk},id=root", "--vsock", f"cid=3,uds={uds}"))
    small = tmp_path / "small.img"
    small.write_bytes(b"\0" * (1 << 19))
    vmm_refuses(d, "--restore-disk", f"data={disk}",
                match=r'disk override "data": the snapshot has no such disk \(its disks: vda \(id root\)\)')
    vmm_refuses(d, "--restore-disk", f"vdb={disk}", match=r'disk override "vdb": the snapshot has no such disk')
    vmm_refuses(d, "--restore-disk", f"root={small}",
                match=rf"disk {re.escape(str(small))}: 1024 sectors of 512 bytes now, 2048 when the snapshot was taken")
    vmm_refuses(d, "--restore-disk", f"root={tmp_path / 'nope.img'}",
                match=rf"disk {re.escape(str(tmp_path / 'nope.img'))}: No such file or directory")
    vmm_refuses(d, "--restore-net", "eth0=tapx",
                match=r'network override "eth0": the snapshot has no such interface \(it has none\)')
    vmm_refuses(d, "--restore-disk", "root", match=r'--restore-disk: expected ID=VALUE, got "root"')
    vmm_refuses(d, "--restore-disk", f"root={disk}", "--restore-disk", f"root={small}",
                match=r'--restore-disk: "root" is overridden twice')
    vmm_refuses(d, "--restore-vsock-uds", str(tmp_path / ("x" * 120)), match=r"vsock: uds .*bytes, at most 95")
    p = run([VMM, "--kernel", "/x", "--restore-disk", f"root={disk}"])
    assert p.returncode == 1 and "need --restore DIR" in p.stderr, p.stderr
    # a snapshot without a vsock takes no vsock override; nothing was left by any refusal
    d2, _, _ = snapshot(tmp_path, name="plain")
    vmm_refuses(d2, "--restore-vsock-uds", str(uds), match=r"vsock override .*: the snapshot has no vsock device")
    assert not uds.exists()
    assert disk.stat().st_size == 1 << 20


def test_two_clones_at_once_with_net_overrides(tmp_path):
    """--restore-net gives each clone its own TAP (by iface id or by the saved TAP's name); all in a
    private network namespace, so the TAPs the VMMs create are nobody else's."""
    if not os.path.exists("/dev/net/tun") or os.geteuid() != 0:
        pytest.skip("needs root and /dev/net/tun")
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "120"])
    try:
        wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
                 what="the network namespace")
        ns = ("nsenter", "-t", str(holder.pid), "-n", "--")

        def links():
            return subprocess.run([*ns, "ip", "-o", "link"], capture_output=True, text=True, check=True).stdout

        def names():
            return [l.split(":")[1].strip() for l in links().splitlines()]

        d, before, original = snapshot(tmp_path, extra=("--net", "tap=tsnap0"), prefix=ns)
        assert "tsnap0" not in links()
        clones = [Vmm(tmp_path, "clone-a", ["--restore", str(d), "--restore-net", "eth0=tclone1"], prefix=ns),
                  Vmm(tmp_path, "clone-b", ["--restore", str(d), "--restore-net", "tsnap0=tclone2"], prefix=ns)]
        try:
            for v in clones:
                wait_for(lambda: len(v.lines()) > 10 or v.p.poll() is not None, what="clone output")
                assert v.p.poll() is None, v.log()
            now = links()
            assert "tclone1" in now and "tclone2" in now and "tsnap0" not in now, now
        finally:
            rcs = [v.stop() for v in clones]
        assert rcs == [128 + signal.SIGTERM] * 2, rcs
        for v in clones:
            check_continues(v.lines(), before, original)
        assert "tclone" not in links()
        refuse = [*ns, VMM, "--restore", str(d)]
        p = run([*refuse, "--restore-net", "eth1=tx"])
        assert p.returncode == 1 and re.search(r'network override "eth1": the snapshot has no such interface '
                                               r'\(its interfaces: eth0 \(tap tsnap0\)\)', p.stderr), p.stderr
        p = run([*refuse, "--restore-net", "eth0=bad/name"])
        assert p.returncode == 1 and 'tap "bad/name" is not a valid interface name' in p.stderr, p.stderr
        assert names() == ["lo"] and p.stdout == ""  # nothing left by the clones or the refusals
    finally:
        holder.kill()
        holder.wait()
