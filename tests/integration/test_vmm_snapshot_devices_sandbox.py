"""Snapshot and restore of a Linux guest WITH devices (virtio-blk, virtio-vsock, virtio-net) in the
nested-KVM sandbox, one boot for the batch (issue 6).

The original VM (guest kit, 1 vCPU, --disk, --vsock, --net on a persistent TAP) writes 2 MiB of
random data to its raw disk and flushes it, pings the host over the TAP, and runs a vsock echo
server; a vsock session works both ways (host->guest through the uds, guest->host through
<uds>_5000), and one host client holds an established connection while SIGUSR2 writes the
snapshot. The original is stopped, then two clones are restored one after the other in fresh
processes from the same snapshot. In each clone:

- disk: the 2 MiB read back with O_DIRECT (from the device, not the restored page cache) match the
  checksum taken before the snapshot; a write after restore (O_DIRECT + fsync) reads back in the
  guest and lands in the host's disk file;
- vsock: the device sent VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, so the guest's side of the connection
  held across the snapshot is gone (its echo child exits on the reset); NEW sessions work both ways
  (the guest's listener from before the snapshot accepts the host's CONNECT, the guest connects to
  the host's <uds>_5000);
- net: the TAP is attached again by name and the guest, with the address it had, pings the host;
- the VMM logs no malformed vsock packet, exits 0 with the guest, and no cella-vmm is left.

A third restore after the TAP was deleted: cella-vmm makes a TAP of that name again (and removes it at
exit); the guest runs on. Clones share the guest's random state (no VM generation ID): the test
prints what /dev/urandom gave each.
"""
import os
import re
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402

TOOL = os.path.join(sandbox.TOP, "build", "tests", "guest", "vsock-echo")
CMDLINE = "console=ttyS0 quiet panic=-1"
VMM = "/bin/cella-vmm"
MACHINE = ("--kernel /kit/vmlinuz --initrd /g/initrd --memory 256 --cpus 1 --disk /tmp/d.img "
           "--vsock cid=3,uds=/tmp/v.sock --net tap=ptap0")
DATA_BLOCKS = 32   # x 64 KiB written before the snapshot, at offset 0
AFTER_SEEK = 64    # x 64 KiB: where each clone writes after restore (4 MiB)
AFTER_BLOCKS = 8

# Scripts in the guest's initramfs, typed on its console as "sh /NAME.sh" (their output lines do
# not appear in what is typed, so a wait for them never matches the shell's echo).
PRE = rf"""
ip link set lo up; ip link set eth0 up; ip addr add 10.0.3.2/24 dev eth0
i=0; while ! ping -c 1 -W 1 10.0.3.1 >/dev/null 2>&1 && [ $i -lt 10 ]; do i=$((i+1)); done
ping -c 1 -W 2 10.0.3.1 >/dev/null 2>&1; echo pre-ping-rc=$?
dd if=/dev/urandom of=/tmp/data bs=64k count={DATA_BLOCKS} 2>/dev/null
dd if=/tmp/data of=/dev/vda bs=64k conv=fsync 2>/dev/null; echo pre-write-rc=$?
sync
echo pre-sum=$(sha256sum </tmp/data | cut -c1-16)
echo pre-disk-sum=$(dd if=/dev/vda bs=64k count={DATA_BLOCKS} iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
/bin/vsock-echo listen 1234 </dev/null >/tmp/listen.log 2>&1 &
sleep 0.5
/bin/vsock-echo connect 2 5000 65536 1; echo pre-g2h-rc=$?
echo PRE-DONE
"""
COUNT = r"""
echo echo-procs-$1=$(pidof vsock-echo | wc -w)
"""
POST = rf"""
c=$1
echo post-disk-sum-$c=$(dd if=/dev/vda bs=64k count={DATA_BLOCKS} iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
# the clone's name first: clones restored from one snapshot share the guest's random state (no
# VM generation ID yet), so /dev/urandom alone gives both the same bytes
{{ echo clone-$c; dd if=/dev/urandom bs=64k count={AFTER_BLOCKS} 2>/dev/null; }} | head -c {AFTER_BLOCKS * 65536} >/tmp/after
echo urandom-$c=$(head -c 32 /dev/urandom | sha256sum | cut -c1-16)
dd if=/tmp/after of=/dev/vda bs=64k seek={AFTER_SEEK} oflag=direct conv=fsync 2>/dev/null; echo after-write-rc-$c=$?
echo after-sum-$c=$(sha256sum </tmp/after | cut -c1-16)
echo after-read-$c=$(dd if=/dev/vda bs=64k skip={AFTER_SEEK} count={AFTER_BLOCKS} iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
echo echo-procs-post-$c=$(pidof vsock-echo | wc -w)
/bin/vsock-echo connect 2 5000 262144 1; echo post-g2h-rc-$c=$?
ping -c 1 -W 2 10.0.3.1 >/dev/null 2>&1; echo post-ping-rc-$c=$?
echo POST-DONE-$c
"""

E = "/g/vsock-echo"
BATCH = rf"""
{sandbox.SH_CLONES}sum() {{ dd if=/tmp/d.img bs=64k skip=$1 count=$2 2>/dev/null | sha256sum | cut -c1-16; }}

sec original
tunctl -t ptap0 >/dev/null && ip addr add 10.0.3.1/24 dev ptap0 && ip link set ptap0 up; echo tap-rc=$?
dd if=/dev/zero of=/tmp/d.img bs=1M count=16 2>/dev/null
{E} uds-listen /tmp/v.sock_5000 &
echo_pid=$!
mkfifo /tmp/in0
{VMM} {MACHINE} --cmdline '{CMDLINE}' --snapshot-dir /tmp/snap </tmp/in0 >/tmp/out0 2>&1 &
vmm=$!
exec 3>/tmp/in0
wait_for /tmp/out0 CELLA-INIT-READY 3000
printf 'sh /pre.sh\n' >&3
wait_for /tmp/out0 PRE-DONE 1200
{E} uds-connect /tmp/v.sock 1234 65536 1; echo pre-h2g-rc=$?
{E} uds-stuck /tmp/v.sock 1234 4096 600 >/tmp/stuck.log 2>&1 &
stuck=$!
wait_for /tmp/stuck.log 'stuck: sent' 300
cat /tmp/stuck.log
printf 'sh /count.sh pre\n' >&3
wait_for /tmp/out0 'echo-procs-pre=' 600
kill -USR2 $vmm
wait_for /tmp/out0 'snapshot written' 1200
kill -TERM $vmm; wait $vmm; echo orig-rc=$?
exec 3>&-
kill $stuck; wait $stuck 2>/dev/null
echo host-pre-sum=$(sum 0 {DATA_BLOCKS})
cat /tmp/out0
ls -ls /tmp/snap

for c in a b; do
  sec clone-$c
  clone_start $c
  wait_for /tmp/out-$c 'VM restored' 600
  sleep 1
  printf 'sh /post.sh %s\n' $c >&4
  wait_for /tmp/out-$c "POST-DONE-$c" 1800
  {E} uds-connect /tmp/v.sock 1234 262144 1; echo post-h2g-rc=$?
  echo host-pre-sum=$(sum 0 {DATA_BLOCKS})
  echo host-after-sum=$(sum {AFTER_SEEK} {AFTER_BLOCKS})
  printf 'exit 7\n' >&4
  clone_end $c
  [ -e /tmp/v.sock ] && echo uds-left || echo uds-gone
  cat /tmp/out-$c
done

ip link show ptap0 >/dev/null 2>&1 && echo tap-still-there

sec clone-notap
tunctl -d ptap0 >/dev/null; ip link show ptap0 >/dev/null 2>&1 && echo tap-not-deleted
clone_start notap
wait_for /tmp/out-notap 'VM restored' 600
sleep 1
ip link show ptap0 >/dev/null 2>&1 && echo tap-made-by-restore
printf 'sh /count.sh notap\n' >&4
wait_for /tmp/out-notap 'echo-procs-notap=' 600
printf 'exit 9\n' >&4
clone_end notap
ip link show ptap0 >/dev/null 2>&1 && echo tap-left || echo tap-removed
cat /tmp/out-notap

sec leaks
kill $echo_pid; wait $echo_pid 2>/dev/null
echo vmm-procs=$(pidof cella-vmm | wc -w)
echo leak-check-done
"""


@pytest.fixture(scope="module")
def sections():
    def ship(g):
        sandbox.kit_initrd(g / "initrd", files=[(TOOL, "/bin/vsock-echo")],
                           scripts={"/pre.sh": PRE, "/post.sh": POST, "/count.sh": COUNT})
        shutil.copy(TOOL, g / "vsock-echo")
    return sandbox.batch("vmm-snapshot-devices", BATCH, prepare=ship, timeout=1200, needs={TOOL: "make"},
                         refuse=("TIMEOUT", "HUNG"))


def value(s, key):
    m = re.findall(rf"{re.escape(key)}=(\S+)", s)
    assert m, f"{key} missing:\n{s}"
    return m[-1]


def test_original_wrote_and_snapshot_taken(sections):
    s = sections["original"]
    assert value(s, "tap-rc") == "0", s
    assert value(s, "pre-write-rc") == "0", s
    assert value(s, "pre-sum") == value(s, "pre-disk-sum") == value(s, "host-pre-sum"), s
    assert value(s, "pre-ping-rc") == "0", s
    assert re.search(r"info: snapshot written to /tmp/snap in [0-9.]+ ms", s), s
    assert "orig-rc=143" in s, s


def test_vsock_session_before_snapshot(sections):
    s = sections["original"]
    assert value(s, "pre-g2h-rc") == "0", s
    assert value(s, "pre-h2g-rc") == "0", s
    assert re.search(r"^stuck: sent 4096 bytes", s, re.M), s
    # the listener and the echo child serving the connection held across the snapshot
    assert value(s, "echo-procs-pre") == "2", s


@pytest.mark.parametrize("c", ["a", "b"])
def test_clone_reads_disk_data_written_before_snapshot(sections, c):
    s = sections[f"clone-{c}"]
    assert "VM restored from /tmp/snap/state" in s, s
    pre = value(sections["original"], "pre-sum")
    assert value(s, f"post-disk-sum-{c}") == pre, s
    assert value(s, "host-pre-sum") == pre, s


@pytest.mark.parametrize("c", ["a", "b"])
def test_clone_writes_after_restore(sections, c):
    s = sections[f"clone-{c}"]
    assert value(s, f"after-write-rc-{c}") == "0", s
    after = value(s, f"after-sum-{c}")
    assert value(s, f"after-read-{c}") == after, s
    assert value(s, "host-after-sum") == after, s  # in the host's disk file


def test_clones_wrote_different_data(sections):
    # each clone's write is its own; the host file has the last one (checked per clone above)
    a, b = (value(sections[f"clone-{c}"], f"after-sum-{c}") for c in "ab")
    assert a != b
    ra, rb = (value(sections[f"clone-{c}"], f"urandom-{c}") for c in "ab")
    print(f"note: /dev/urandom right after restore: clone a {ra}, clone b {rb}"
          f"{' (the same: clones share the random state)' if ra == rb else ''}")


@pytest.mark.parametrize("c", ["a", "b"])
def test_clone_vsock_reset_and_new_sessions(sections, c):
    s = sections[f"clone-{c}"]
    # TRANSPORT_RESET reached the guest: the echo child of the pre-snapshot connection is gone,
    # the listener stays
    assert value(s, f"echo-procs-post-{c}") == "1", s
    assert value(s, f"post-g2h-rc-{c}") == "0", s
    assert "guest->host: 1 connection(s) x 262144 bytes echoed and checked: ok" in s, s
    assert value(s, "post-h2g-rc") == "0", s
    assert "host->guest: 1 connection(s) x 262144 bytes echoed and checked: ok" in s, s
    assert "malformed" not in s and "guest error" not in s, s


@pytest.mark.parametrize("c", ["a", "b"])
def test_clone_net_works_after_restore(sections, c):
    s = sections[f"clone-{c}"]
    assert value(s, f"post-ping-rc-{c}") == "0", s


@pytest.mark.parametrize("c", ["a", "b"])
def test_clone_exits_cleanly(sections, c):
    s = sections[f"clone-{c}"]
    assert "CELLA-EXIT-STATUS=7" in s, s
    assert re.search(r"^rc=0$", s, re.M), s
    assert "uds-gone" in s, s


def test_persistent_tap_is_kept(sections):
    s = sections["clone-b"]
    assert "tap-still-there" in s, s  # persistent: neither the original nor a clone removes it


def test_restore_when_the_tap_is_gone(sections):
    # the TAP the snapshot names was deleted: the restore makes a new one of that name (removed at
    # exit, as any TAP cella-vmm made), the guest runs on, its NIC just has no peer configured
    s = sections["clone-notap"]
    assert "tap-not-deleted" not in s, s
    assert "VM restored from /tmp/snap/state" in s, s
    assert "tap-made-by-restore" in s, s
    assert re.search(r"^echo-procs-notap=\d", s, re.M), s
    assert "CELLA-EXIT-STATUS=9" in s, s
    assert re.search(r"^rc=0$", s, re.M), s
    assert "tap-removed" in s, s


def test_no_vmm_left(sections):
    s = sections["leaks"]
    assert "leak-check-done" in s, s
    assert value(s, "vmm-procs") == "0", s
