"""virtio-blk in the nested-KVM sandbox, one boot for all of it, with the Debian kernel:

- root file system on virtio-blk: an ext4 image built here with `mkfs.ext4 -d` (busybox + probe
  scripts); the guest kit's init switches root to /dev/vda (cella.root=) and runs the probe from it;
- the disk serial (GET_ID) reaches /sys/block/vda/serial; fstrim on the root (discard) succeeds;
- a read-only disk: the kernel sees it read-only, and with the kernel's flag forced off
  (blockdev --setrw) the device itself answers writes with an I/O error; the file is unchanged;
- data written and flushed (sync) survives a VM killed with SIGKILL right after: a second
  cella-vmm run on the same file reads it back;
- a rate limit of 2 MiB/s holds within 10% (O_DIRECT dd of 8 MiB in the guest; the same file on an
  unlimited disk is read first, to show the guest could go faster);
- no cella-vmm process is left behind.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402
from sandbox import rc  # noqa: E402

RATE_MIB = 2
RATE_READ_MIB = 8
RATE_BS_KIB = 256
# a bucket of 512 KiB refilled every 250 ms = 2 MiB/s; it starts full, so the read takes
# (8 MiB - 512 KiB) / 2 MiB/s
RATE_BUCKET_KIB = 512
RATE_OPTS = f"bw={RATE_BUCKET_KIB}K,bw_refill_ms={RATE_BUCKET_KIB * 1000 // (RATE_MIB * 1024)}"

CMDLINE = "console=ttyS0 quiet panic=-1 cella.root=/dev/vda"
VMM_BARE = "/bin/cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 1"
VMM = "timeout 300 /bin/cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 1"

# Scripts inside the root image (the kernel command line is too short for them).
PROBE = r"""
echo marker=$(cat /etc/cella-marker)
grep ' / ' /proc/mounts
echo serial=$(cat /sys/block/vda/serial)
echo vdb-ro=$(cat /sys/block/vdb/ro)
fstrim / >/dev/null 2>&1; echo fstrim-rc=$?
dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; echo ro-kernel-rc=$?
blockdev --setrw /dev/vdb; echo setrw-rc=$?
dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; echo ro-device-rc=$?
echo ro-head=$(dd if=/dev/vdb bs=4096 count=1 iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
echo persisted-$(cat /proc/sys/kernel/random/boot_id) > /persist.txt
sync
echo SYNCED=$(cat /persist.txt)
sleep 600
"""
REREAD = r"""
echo reread=$(cat /persist.txt)
"""
RATE = rf"""
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vdb of=/dev/null bs={RATE_BS_KIB}k count={RATE_READ_MIB * 1024 // RATE_BS_KIB} iflag=direct 2>/dev/null
echo free-rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vdc of=/dev/null bs={RATE_BS_KIB}k count={RATE_READ_MIB * 1024 // RATE_BS_KIB} iflag=direct 2>/dev/null
echo dd-rc=$?
t2=$(cut -d' ' -f1 /proc/uptime)
echo rate-time $t0 $t1 $t2
"""

BATCH = rf"""
sec prelude
cp /g/root.img /tmp/root.img
dd if=/dev/urandom of=/tmp/ro.img bs=1M count=4 2>/dev/null
dd if=/dev/urandom of=/tmp/rate.img bs=1M count={RATE_READ_MIB + 4} 2>/dev/null
echo ro-before=$(sha256sum < /tmp/ro.img | cut -c1-16) ro-head-host=$(head -c 4096 /tmp/ro.img | sha256sum | cut -c1-16)

sec root
{VMM_BARE} --console /tmp/c1.log --disk /tmp/root.img,id=cella-root --disk /tmp/ro.img,ro \
	--cmdline '{CMDLINE} -- sh /probe.sh' </dev/null > /tmp/v1.log 2>&1 &
vmm=$!
i=0
while ! grep -q SYNCED= /tmp/c1.log 2>/dev/null && [ $i -lt 1200 ] && kill -0 $vmm 2>/dev/null; do
	sleep 0.2; i=$((i + 1))
done
kill -9 $vmm; wait $vmm; echo killed-rc=$?
cat /tmp/c1.log; cat /tmp/v1.log
echo ro-after=$(sha256sum < /tmp/ro.img | cut -c1-16)

sec restart
{VMM} --disk /tmp/root.img --cmdline '{CMDLINE} -- sh /reread.sh' </dev/null; echo rc=$?

sec rate
{VMM} --disk /tmp/root.img --disk /tmp/rate.img,ro --disk /tmp/rate.img,ro,{RATE_OPTS} --cmdline '{CMDLINE} -- sh /rate.sh' </dev/null
echo rc=$?

sec leaks
for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = cella-vmm ] && echo "left: $p"; done
echo leak-check-done
"""


def build_root(d):
    """An ext4 image from a directory: busybox (static, from busybox-static), its applet links,
    mount points, a marker and the probe scripts."""
    root = d / "rootdir"
    for sub in ("bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "newroot"):
        (root / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run([str(root / "bin" / "busybox"), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "cella-marker").write_text("root-from-virtio-blk\n")
    (root / "probe.sh").write_text(PROBE)
    (root / "reread.sh").write_text(REREAD)
    (root / "rate.sh").write_text(RATE)
    img = d / "root.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), "-L", "cella-root", str(img), "24M"], check=True,
                   capture_output=True)
    shutil.rmtree(root)  # only the image goes to the sandbox
    return img


@pytest.fixture(scope="module")
def sections():
    return sandbox.batch("virtio-blk", BATCH, prepare=build_root, timeout=900,
                         needs={"mkfs.ext4": "e2fsprogs; scripts/install-deps installs it",
                                "/bin/busybox": "busybox-static"})


def test_root_filesystem_on_virtio_blk(sections):
    s = sections["root"]
    assert "marker=root-from-virtio-blk" in s, s
    assert re.search(r"^/dev/vda / ext4 rw", s, re.M), s


def test_serial_and_discard(sections):
    s = sections["root"]
    assert "serial=cella-root" in s, s
    assert "fstrim-rc=0" in s, s


def test_read_only_disk_refuses_writes(sections):
    s, pre = sections["root"], sections["prelude"]
    assert "vdb-ro=1" in s, s
    assert "ro-kernel-rc=0" not in s and "ro-kernel-rc=" in s, s  # the kernel refuses
    assert "setrw-rc=0" in s, s
    assert "ro-device-rc=0" not in s and "ro-device-rc=" in s, s  # the device answers IOERR
    head_host = re.search(r"ro-head-host=(\w+)", pre).group(1)
    assert f"ro-head={head_host}" in s, s  # the guest still reads the original first block
    before = re.search(r"ro-before=(\w+)", pre).group(1)
    assert f"ro-after={before}" in s, s  # the file is unchanged


def test_flushed_data_survives_a_killed_vm(sections):
    s = sections["root"]
    m = re.search(r"SYNCED=(persisted-[0-9a-f-]+)", s)
    assert m, s
    assert "killed-rc=137" in s, s  # it was killed, not shut down
    r = sections["restart"]
    assert f"reread={m.group(1)}" in r, r
    assert rc(r) == 0, r


def test_rate_limit_holds_within_10_percent(sections):
    s = sections["rate"]
    assert "dd-rc=0" in s, s
    assert "free-rc=0" in s, s
    t0, t1, t2 = map(float, re.search(r"rate-time ([0-9.]+) ([0-9.]+) ([0-9.]+)", s).groups())
    free, secs = t1 - t0, t2 - t1
    expected = (RATE_READ_MIB - RATE_BUCKET_KIB / 1024) / RATE_MIB  # the bucket starts full
    rate = RATE_READ_MIB / secs
    print(f"unlimited: {RATE_READ_MIB} MiB in {free:.2f} s = {RATE_READ_MIB / max(free, 0.01):.1f} MiB/s; "
          f"limit {RATE_MIB} MiB/s: {secs:.2f} s = {rate:.2f} MiB/s (expected {expected:.2f} s)")
    # the limit must be what slows the guest down, else this proves nothing
    assert free < 0.5 * expected, (free, expected, s)
    assert abs(secs - expected) <= 0.1 * expected, (secs, expected, s)
    assert rc(s) == 0, s


def test_no_vmm_left(sections):
    s = sections["leaks"]
    assert "leak-check-done" in s and "left:" not in s, s
