"""Snapshot and restore of a Linux guest in the nested-KVM sandbox, one boot for the batch.

A 2-vCPU Debian guest (guest kit, virtio-rng on) runs a shell counter in the background of its
console shell; SIGUSR2 writes a snapshot (--snapshot-dir); the original is stopped; two clones are
restored from the snapshot in fresh processes. Each clone must continue the count from where the
snapshot was taken (both from the same number), answer a command typed on its console, read
/dev/hwrng (virtio queue state restored) and power off when the shell exits.
"""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402

CMDLINE = "console=ttyS0 quiet panic=-1"
VMM = "/bin/cella-vmm"
MACHINE = "--kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 2 --rng"

BATCH = f"""
{sandbox.SH_CLONES}
sec original
# the VMM's log apart from the console: a log line written while the guest is mid-line would
# glue the guest's digits to the timestamp's ("count=52026-11-23T...")
mkfifo /tmp/in0
{VMM} {MACHINE} --cmdline '{CMDLINE}' --snapshot-dir /tmp/snap </tmp/in0 >/tmp/out0 2>/tmp/log0 &
vmm=$!
exec 3>/tmp/in0
wait_for /tmp/out0 CELLA-INIT-READY 3000
printf 'i=0; while true; do i=$((i+1)); echo count=$i; sleep 0.5; done &\\n' >&3
wait_for /tmp/out0 count=4 1200
kill -USR2 $vmm
wait_for /tmp/log0 'snapshot written' 1200
at=$(grep -o 'count=[0-9]*' /tmp/out0 | tail -1)
wait_for /tmp/out0 "count=$(( ${{at#count=}} + 2 ))" 600
kill -TERM $vmm; wait $vmm; echo orig-rc=$?
exec 3>&-
echo "at-snapshot=$at"
cat /tmp/out0 /tmp/log0
ls -ls /tmp/snap

for c in a b; do
  sec clone-$c
  clone_start $c
  wait_for /tmp/out-$c 'count=' 1200
  printf 'echo typed-$((6*7))-%s\\n' $c >&4
  wait_for /tmp/out-$c "typed-42-$c" 600
  printf 'echo hwrng=$(head -c 64 /dev/hwrng | wc -c)\\n' >&4
  wait_for /tmp/out-$c "hwrng=" 600
  wait_for /tmp/out-$c "count=$(( ${{at#count=}} + 4 ))" 600
  printf 'exit 5\\n' >&4
  clone_end $c
  cat /tmp/out-$c
done
"""


@pytest.fixture(scope="module")
def sections():
    return sandbox.batch("vmm-snapshot", BATCH, timeout=900, refuse=("TIMEOUT", "HUNG"))


def counts(text):
    # the counter's lines may share a line with what the shell echoes of typed commands
    return [int(n) for n in re.findall(r"count=(\d+)", text)]


def test_snapshot_written_while_counting(sections):
    s = sections["original"]
    assert re.search(r"info: snapshot written to /tmp/snap in [0-9.]+ ms", s), s
    # the original kept counting after the snapshot
    assert counts(s)[-1] > int(re.search(r"at-snapshot=count=(\d+)", s).group(1)), s
    assert "orig-rc=143" in s, s
    at = int(re.search(r"at-snapshot=count=(\d+)", s).group(1))
    assert at >= 4
    assert re.search(r"268435456 .*memory$", s, re.M), s  # 256 MiB, sparse


def clone_counts(sections, c):
    s = sections[f"clone-{c}"]
    assert "VM restored from /tmp/snap/state" in s, s
    return s, counts(s)


@pytest.mark.parametrize("c", ["a", "b"])
def test_clone_continues_the_count(sections, c):
    at = int(re.search(r"at-snapshot=count=(\d+)", sections["original"]).group(1))
    s, n = clone_counts(sections, c)
    assert n, s
    # the first count a clone prints is the one after the last the original printed before the
    # snapshot (or that one again, if the snapshot caught it mid-echo)
    assert n[0] in (at, at + 1), (at, n[:5])
    assert n == list(range(n[0], n[0] + len(n))), n


def test_two_clones_are_identical(sections):
    _, a = clone_counts(sections, "a")
    _, b = clone_counts(sections, "b")
    assert a[0] == b[0], (a[:3], b[:3])


@pytest.mark.parametrize("c", ["a", "b"])
def test_clone_console_and_virtio_work(sections, c):
    s, _ = clone_counts(sections, c)
    assert re.search(rf"^typed-42-{c}\r?$", s, re.M), s
    assert re.search(r"^hwrng=64\r?$", s, re.M), s
    assert "CELLA-EXIT-STATUS=5" in s, s
    assert re.search(r"^rc=0$", s, re.M), s
