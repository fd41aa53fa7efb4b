"""cella-vmm bad input: each case fails with one clear error, exit status 1, and no VM.

These fail before /dev/kvm is opened (or point --kvm-device elsewhere), so they run on any
host, KVM or not.
"""
import json
import os
import struct

import pytest

from conftest import BUILD, run
from vmm_guests import HELLO

VMM = str(BUILD / "cella-vmm")
NO_KVM = "/nonexistent/kvm"


@pytest.fixture
def hello(tmp_path):
    p = tmp_path / "hello.bin"
    p.write_bytes(HELLO)
    return str(p)


def bzimage(version=0x020f, setup_sects=4, total=None, xloadflags=1):
    """A synthetic bzImage header (enough for the loader's checks)."""
    size = total if total is not None else (setup_sects + 1) * 512 + 4096
    img = bytearray(max(size, 0x270))
    img[0x1f1] = setup_sects
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, version)
    struct.pack_into("<H", img, 0x236, xloadflags)
    return bytes(img[:size]) if total is not None else bytes(img)


def vmm_fails(*args, match):
    p = run([VMM, *args])
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr  # one clear error
    assert lines[0].startswith("cella-vmm: "), p.stderr
    assert match in lines[0], p.stderr
    assert p.stdout == ""
    return lines[0]


def test_help():
    p = run([VMM, "--help"])
    assert p.returncode == 0 and "--kernel PATH" in p.stdout


def test_no_kernel():
    vmm_fails(match="kernel: required")


def test_missing_kernel_file(tmp_path):
    vmm_fails("--kernel", str(tmp_path / "nope"), "--kvm-device", NO_KVM,
              match="No such file or directory")


def test_empty_kernel(tmp_path):
    k = tmp_path / "empty"
    k.write_bytes(b"")
    vmm_fails("--kernel", str(k), "--kvm-device", NO_KVM, match="empty file")


def test_truncated_bzimage(tmp_path):
    k = tmp_path / "bz"
    k.write_bytes(bzimage(total=1024))
    vmm_fails("--kernel", str(k), "--kvm-device", NO_KVM, match="truncated bzImage")


def test_bzimage_too_old_for_64bit(tmp_path):
    k = tmp_path / "bz"
    k.write_bytes(bzimage(version=0x0206))
    vmm_fails("--kernel", str(k), "--kvm-device", NO_KVM,
              match="boot protocol 2.06 is too old for 64-bit boot")


def test_memory_below_linux_floor(tmp_path):
    k = tmp_path / "bz"
    k.write_bytes(bzimage())
    vmm_fails("--kernel", str(k), "--memory", "16", "--kvm-device", NO_KVM,
              match="memory: 16 MiB is below the minimum of 32 MiB for a Linux kernel")


def test_memory_zero_and_huge(hello):
    vmm_fails("--kernel", hello, "--memory", "0", match="memory: 0 MiB is out of range")
    vmm_fails("--kernel", hello, "--memory", str(2 << 20), match="out of range")
    vmm_fails("--kernel", hello, "--memory", "lots", match="--memory: expected a size in MiB")


def test_initrd_does_not_fit(tmp_path):
    k = tmp_path / "bz"
    k.write_bytes(bzimage())
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as f:
        f.truncate(40 << 20)
    vmm_fails("--kernel", str(k), "--initrd", str(initrd), "--memory", "32", "--kvm-device", NO_KVM,
              match="initrd:")
    line = vmm_fails("--kernel", str(k), "--initrd", str(initrd), "--memory", "32",
                     "--kvm-device", NO_KVM, match="does not fit")
    assert "32 MiB" in line


def test_too_many_cpus(hello):
    vmm_fails("--kernel", hello, "--cpus", "33", match="cpus: 33 is out of range (1..32)")
    vmm_fails("--kernel", hello, "--cpus", "0", match="cpus: 0 is out of range")
    vmm_fails("--kernel", hello, "--cpus", "two", match="--cpus: expected a number")


def test_kvm_device_missing(hello):
    vmm_fails("--kernel", hello, "--kvm-device", NO_KVM,
              match=f"{NO_KVM}: not found (is the kvm module loaded")


def test_kvm_device_not_kvm(hello):
    vmm_fails("--kernel", hello, "--kvm-device", "/dev/null", match="/dev/null: not a KVM device")


def test_kvm_device_not_openable(hello, tmp_path):
    vmm_fails("--kernel", hello, "--kvm-device", str(tmp_path), match="cannot open")


def test_default_kvm_device_absent(hello):
    if os.path.exists("/dev/kvm"):
        pytest.skip("this host has /dev/kvm")
    vmm_fails("--kernel", hello, match="/dev/kvm: not found")


def test_config_unknown_field(tmp_path, hello):
    c = tmp_path / "vm.json"
    c.write_text(json.dumps({"kernel": hello, "memroy_mib": 64}))
    vmm_fails("--config", str(c), match="memroy_mib: unknown field")


def test_config_wrong_type_and_syntax(tmp_path, hello):
    c = tmp_path / "vm.json"
    c.write_text(json.dumps({"kernel": hello, "cpus": "2"}))
    vmm_fails("--config", str(c), match="cpus: expected")
    c.write_text('{"kernel": ')
    vmm_fails("--config", str(c), match="line 1")


def test_config_values_and_flag_override(tmp_path, hello):
    c = tmp_path / "vm.json"
    c.write_text(json.dumps({"kernel": hello, "cpus": 40, "memory_mib": 64}))
    vmm_fails("--config", str(c), match="cpus: 40 is out of range")
    # The flag overrides the config's value; the next error proves the config was read.
    vmm_fails("--config", str(c), "--cpus", "2", "--kvm-device", "/dev/null", match="not a KVM device")


def test_bad_log_level_and_stray_argument(hello):
    vmm_fails("--kernel", hello, "--log-level", "loud", match="--log-level: expected debug")
    vmm_fails("--kernel", hello, "extra", match='unexpected argument "extra"')


def test_disk_option_errors(tmp_path, hello):
    d = tmp_path / "d.img"
    d.write_bytes(bytes(4096))
    vmm_fails("--kernel", hello, "--disk", f"{d},rw,foo", match='unknown option "foo"')
    vmm_fails("--kernel", hello, "--disk", f"{d},bw=10Q", match='bw: expected a number')
    vmm_fails("--kernel", hello, "--disk", f"{d},id=" + "x" * 21, match="longer than 20 bytes")
    vmm_fails("--kernel", hello, "--disk", f"{d},bw_burst=1M", match="burst or refill time without a size")
    vmm_fails("--kernel", hello, *sum([["--disk", str(d)]] * 9, []), match="at most 8 disks")
    # files are checked before KVM is opened
    vmm_fails("--kernel", hello, "--disk", str(tmp_path / "nope"), "--kvm-device", NO_KVM,
              match="No such file or directory")
    (tmp_path / "tiny.img").write_bytes(b"x" * 100)
    vmm_fails("--kernel", hello, "--disk", str(tmp_path / "tiny.img"), "--kvm-device", NO_KVM,
              match="smaller than one 512-byte sector")
    vmm_fails("--kernel", hello, "--disk", str(tmp_path), "--kvm-device", NO_KVM, match="Is a directory")
    vmm_fails("--kernel", hello, "--disk", "/dev/null,ro", "--kvm-device", NO_KVM,
              match="not a regular file or block device")
    # a good disk gets as far as KVM
    vmm_fails("--kernel", hello, "--disk", f"{d},ro,id=data,bw=1M,iops=100", "--kvm-device", NO_KVM,
              match=NO_KVM)


def test_disk_locked_by_another_writer(tmp_path, hello):
    import fcntl
    d = tmp_path / "d.img"
    d.write_bytes(bytes(4096))
    with open(d, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        vmm_fails("--kernel", hello, "--disk", str(d), "--kvm-device", NO_KVM, match="already in use")


def test_config_disks(tmp_path, hello):
    d = tmp_path / "d.img"
    d.write_bytes(bytes(4096))
    c = tmp_path / "vm.json"
    c.write_text(json.dumps({"kernel": hello, "disks": [{"path": str(d), "size": 3}]}))
    vmm_fails("--config", str(c), match="disks[0].size: unknown field")
    c.write_text(json.dumps({"kernel": hello, "disks": {"path": str(d)}}))
    vmm_fails("--config", str(c), match="disks: expected array")
    c.write_text(json.dumps({"kernel": hello, "disks": [{"ro": True}]}))
    vmm_fails("--config", str(c), match="disks[0].path: required")
    c.write_text(json.dumps({"kernel": hello, "disks": [{"path": str(d), "bw": -1}]}))
    vmm_fails("--config", str(c), match="disks[0].bw")
    c.write_text(json.dumps({"kernel": hello, "disks": [{"path": str(tmp_path / "nope")}]}))
    vmm_fails("--config", str(c), "--kvm-device", NO_KVM, match="No such file")
    # config disks and --disk add up
    c.write_text(json.dumps({"kernel": hello, "disks": [{"path": str(d), "ro": True, "id": "a", "bw": 1048576,
                                                         "bw_refill_ms": 100, "iops": 10}]}))
    vmm_fails("--config", str(c), "--disk", str(tmp_path / "nope2"), "--kvm-device", NO_KVM, match="nope2")


def test_vsock_option_errors(tmp_path, hello):
    uds = str(tmp_path / "v.sock")
    vmm_fails("--kernel", hello, "--vsock", f"cid=2,uds={uds}", match="vsock: cid 2 is out of range (3..4294967294)")
    vmm_fails("--kernel", hello, "--vsock", f"cid=4294967295,uds={uds}", match="out of range")
    vmm_fails("--kernel", hello, "--vsock", "cid=3", match='--vsock: expected cid=N,uds=PATH, got "cid=3"')
    vmm_fails("--kernel", hello, "--vsock", f"cid=x,uds={uds}", match='cid: expected a number, got "x"')
    vmm_fails("--kernel", hello, "--vsock", f"cid=3,uds={uds},mtu=9", match='unknown option "mtu" (cid=, uds=)')
    vmm_fails("--kernel", hello, "--vsock", "cid=3,uds=/" + "a" * 100, match="at most 95")
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"kernel": hello, "vsock": {"cid": 3}}))
    vmm_fails("--config", str(c), match="vsock.uds: required")
    c.write_text(json.dumps({"kernel": hello, "vsock": {"cid": 3, "uds": uds, "port": 1}}))
    vmm_fails("--config", str(c), match="vsock.port: unknown field")
    c.write_text(json.dumps({"kernel": hello, "vsock": {"cid": -1, "uds": uds}}))
    vmm_fails("--config", str(c), match="vsock.cid: expected non-negative integer")
    assert not os.path.exists(uds)


def hlt_guest(tmp_path):
    p = tmp_path / "hlt.bin"
    p.write_bytes(b"\xf4\xeb\xfd")  # hlt; jmp back: runs until the VMM is stopped
    return str(p)


def test_vsock_socket_file_lifecycle(tmp_path):
    """The VMM creates the unix socket, takes over a stale one, refuses a file that is not a socket
    or a socket someone listens on, and removes its socket on exit (here: SIGTERM)."""
    import signal
    import socket
    import subprocess
    import time
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no /dev/kvm")
    guest = hlt_guest(tmp_path)
    uds = str(tmp_path / "v.sock")
    with open(uds, "w") as f:
        f.write("not a socket")
    vmm_fails("--kernel", guest, "--memory", "2", "--console", "none", "--vsock", f"cid=3,uds={uds}",
              match="exists and is not a socket")
    assert open(uds).read() == "not a socket"
    os.unlink(uds)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(uds)  # a socket file nobody listens on, as a killed VMM leaves it
    stale.close()
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"kernel": guest, "memory_mib": 2, "console": "none", "vsock": {"cid": 3, "uds": uds}}))
    p = subprocess.Popen([VMM, "--config", str(c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(uds)
                break
            except OSError:
                time.sleep(0.05)
            finally:
                s.close()
        else:
            pytest.fail("the VMM never listened on " + uds)
        vmm_fails("--kernel", guest, "--memory", "2", "--console", "none", "--vsock", f"cid=4,uds={uds}",
                  match="another process listens there")
        assert os.path.exists(uds), "the refused VMM removed the first one's socket"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert not os.path.exists(uds), "socket file left behind"


def test_pit_flag_and_config(tmp_path, hello):
    """--pit / "pit": true gives a flat binary the in-kernel PIT (it runs the same); a non-boolean is refused."""
    for args in (["--kernel", hello, "--pit"], ["--config", str(tmp_path / "vm.json")]):
        (tmp_path / "vm.json").write_text(json.dumps({"kernel": hello, "pit": True}))
        p = run([VMM, *args, "--memory", "1", "--log-level", "debug"])
        assert p.returncode == 0 and p.stdout == "Hello\n", (args, p.returncode, p.stdout, p.stderr)
    (tmp_path / "vm.json").write_text(json.dumps({"kernel": hello, "pit": 1}))
    vmm_fails("--config", str(tmp_path / "vm.json"), match="pit: expected")


def test_lone_flat_guest_halt_idles_until_stopped(tmp_path):
    """One vCPU and no devices: no in-kernel irqchip, so HLT exits to the VMM, which parks the vCPU
    (no busy re-entry) until a stop signal ends the VM."""
    import signal
    import subprocess
    import time
    from vmm_guests import GUESTS
    g = tmp_path / "halt.bin"
    g.write_bytes(GUESTS["halt.bin"])
    p = subprocess.Popen([VMM, "--kernel", str(g), "--memory", "1", "--console", "none", "-v"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        with open(f"/proc/{p.pid}/stat") as f:
            ticks = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
        assert ticks < 50, f"{ticks} clock ticks of CPU in 1 s: the halted vCPU spins"
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, err)
    assert "KVM_EXIT_HLT" in err, err


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_lone_vcpu_on_the_vmm_thread_stops_on_signals(tmp_path, sig):
    """One vCPU, no API, no console input (stdin /dev/null): the vCPU runs on the VMM thread (no
    "vcpu0" thread), and a stop signal still interrupts its KVM_RUN and ends the VM. With input to
    forward (stdin a pipe) the vCPU gets a thread of its own."""
    import signal
    import subprocess
    import time
    from vmm_guests import GUESTS
    g = tmp_path / "spin.bin"
    g.write_bytes(GUESTS["spin.bin"])
    for stdin, threads in ((subprocess.DEVNULL, 0), (subprocess.PIPE, 1)):
        p = subprocess.Popen([VMM, "--kernel", str(g), "--memory", "1", "-v"], stdin=stdin,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(100):  # the guest spins once its vCPU runs
                time.sleep(0.05)
                with open(f"/proc/{p.pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[11]) > 2:
                        break
            n = 0
            for t in os.listdir(f"/proc/{p.pid}/task"):
                with open(f"/proc/{p.pid}/task/{t}/comm") as f:
                    n += f.read().startswith("vcpu")
        finally:
            p.send_signal(getattr(signal, sig))
            _, err = p.communicate(timeout=20)
        assert p.returncode == 128 + getattr(signal, sig), (stdin, p.returncode, err)
        assert n == threads, (stdin, n, err)
        assert ("vCPU 0 runs on the VMM thread" in err) == (threads == 0), err


# Real mode: CPUID leaf 0, then the max basic leaf + '0' and the vendor (EBX, EDX, ECX) to the
# serial port, then i8042 reset.
CPUID_GUEST = bytes.fromhex(
    "6631c0" "0fa2" "6689d6" "6689cf"           # xor eax,eax; cpuid; mov esi,edx; mov edi,ecx
    "baf803" "0430" "ee"                         # mov dx,0x3f8; add al,'0'; out dx,al
    "6689d8" "e81200" "6689f0" "e80c00"          # mov eax,ebx; call put4; mov eax,esi; call put4
    "6689f8" "e80600" "b0fe" "e664" "ebfe"       # mov eax,edi; call put4; reset; jmp $
    "b90400" "ee" "66c1e808" "e2f9" "c3")        # put4: mov cx,4; 1: out; shr eax,8; loop 1b; ret


def test_flat_binary_sees_the_baseline_cpu(tmp_path):
    """A flat binary gets the baseline CPU table (no KVM_GET_SUPPORTED_CPUID): max basic leaf 1 and
    the host's vendor."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no /dev/kvm")
    g = tmp_path / "cpuid.bin"
    g.write_bytes(CPUID_GUEST)
    with open("/proc/cpuinfo") as f:
        vendor = next(l.split(":")[1].strip() for l in f if l.startswith("vendor_id"))
    p = run([VMM, "--kernel", str(g), "--memory", "1"])
    assert p.returncode == 0 and p.stdout == "1" + vendor, (p.returncode, p.stdout, p.stderr)
