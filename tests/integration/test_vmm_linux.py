"""cella-vmm boots the Debian cloud kernel of the guest kit (bzImage and ELF vmlinux via PVH)
inside the nested-KVM sandbox, all cases batched into one sandbox boot.

Sections are "=== NAME" blocks ending in "rc=N" (the VMM's exit status); the guest's own
output sits between cella-init's CELLA-INIT-READY and CELLA-EXIT-STATUS markers.
"""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402
from sandbox import guest, rc  # noqa: E402

CMDLINE = "console=ttyS0 quiet panic=-1"
VMM = "timeout 240 /bin/cella-vmm --initrd /kit/initramfs.cpio.gz --memory 256"
PROBE = "cat /proc/cmdline; grep MemTotal /proc/meminfo; echo cpus=$(nproc); exit 3"

BATCH = f"""

sec bzimage-1
{VMM} --kernel /kit/vmlinuz --cpus 1 --cmdline '{CMDLINE} -- {PROBE}' </dev/null; echo rc=$?

sec bzimage-2
{VMM} --kernel /kit/vmlinuz --cpus 2 --cmdline '{CMDLINE} -- {PROBE}' </dev/null; echo rc=$?

sec reboot
{VMM} --kernel /kit/vmlinuz --cmdline '{CMDLINE} cella.reboot=1 cella.cmd=echo%20bye-$((6*7))' </dev/null
echo rc=$?

sec interactive
mkfifo /tmp/in
{VMM} --kernel /kit/vmlinuz --cmdline '{CMDLINE}' </tmp/in >/tmp/out 2>&1 &
vmm=$!
exec 3>/tmp/in
i=0
# wait for the shell's banner: typed too early, the echo lands inside the init's marker line
while ! grep -q 'built-in shell' /tmp/out && [ $i -lt 1000 ]; do sleep 0.2; i=$((i+1)); done
printf 'echo typed-$((6*7))\\nexit 4\\n' >&3
wait $vmm
echo rc=$?
exec 3>&-
cat /tmp/out

sec pvh-1
{VMM} --kernel /kit/vmlinux --cpus 1 --cmdline '{CMDLINE} -- {PROBE}' </dev/null; echo rc=$?

sec pvh-2-reboot
{VMM} --kernel /kit/vmlinux --cpus 2 --cmdline '{CMDLINE} cella.reboot=1 -- echo cpus=$(nproc)' </dev/null
echo rc=$?
"""


@pytest.fixture(scope="module")
def sections():
    return sandbox.batch("vmm-linux", BATCH, timeout=600)


def check_probe(section, cpus):
    out, status = guest(section)
    assert status == 3, section
    assert f"{CMDLINE} -- cat /proc/cmdline;" in out, out
    mem = int(re.search(r"MemTotal:\s+(\d+) kB", out).group(1))
    assert 128 * 1024 < mem <= 256 * 1024, out
    assert f"cpus={cpus}\n" in out, out
    assert re.search(r"info: guest boot timer: [0-9.]+ ms since VMM start", section), section
    assert "info: guest poweroff" in section
    assert rc(section) == 0


def test_bzimage_one_cpu_sees_cmdline_memory_cpus(sections):
    check_probe(sections["bzimage-1"], 1)


def test_bzimage_two_cpus(sections):
    check_probe(sections["bzimage-2"], 2)


def test_guest_reboot_ends_vmm_with_0(sections):
    s = sections["reboot"]
    out, status = guest(s)
    assert out == "bye-42\n" and status == 0, s
    assert "info: guest reboot" in s
    assert rc(s) == 0


def test_line_typed_on_stdin_runs_in_guest_shell(sections):
    s = sections["interactive"]
    out, status = guest(s)
    assert status == 4, s
    assert re.search(r"^typed-42\r?$", out, re.M), out
    assert rc(s) == 0


def test_pvh_vmlinux_boots(sections):
    check_probe(sections["pvh-1"], 1)


def test_pvh_two_cpus_and_reboot(sections):
    s = sections["pvh-2-reboot"]
    out, status = guest(s)
    assert out == "cpus=2\n" and status == 0, s
    assert "info: guest reboot" in s
    assert rc(s) == 0
