"""cella-vmm's x86 boot code (vmm/x86: bzImage and PVH loaders, e820, ACPI tables) booting
Debian's kernel in the nested-KVM sandbox.

One sandbox boot runs both nested guests; sections of the batch are separated by "=== NAME" lines.
- bzimage: vmlinuz, 2 vCPUs, 256 MiB: command line, vCPU count, memory, e820 and ACPI tables as
  the guest sees them, poweroff through the FADT's PM1a control block.
- pvh-high: vmlinux through its PVH entry, 1 vCPU, 3584 MiB, so RAM continues above 4 GiB
  after the MMIO gap and the memory map comes from hvm_start_info.
- truncated: a truncated bzImage is refused with one clear error and no VM.
"""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "sandbox"))
import sandbox  # noqa: E402
from sandbox import guest  # noqa: E402

CMDLINE = "console=ttyS0 reboot=k panic=1 quiet"
GUEST_CMD = ("cat /proc/cmdline; echo cpus=$(nproc); grep MemTotal /proc/meminfo; "
             "for d in /sys/firmware/memmap/*; do echo memmap $(cat $d/start) $(cat $d/end) "
             "$(cat $d/type); done; echo tables $(ls /sys/firmware/acpi/tables)")

BATCH = f"""
sec bzimage
timeout 280 cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --cpus 2 --memory 256 \\
  --cmdline '{CMDLINE} -- {GUEST_CMD}' </dev/null
echo vmm-status=$?

sec pvh-high
timeout 280 cella-vmm --kernel /kit/vmlinux --initrd /kit/initramfs.cpio.gz --cpus 1 --memory 3584 \\
  --cmdline '{CMDLINE} -- {GUEST_CMD}' </dev/null
echo vmm-status=$?

sec truncated
head -c 300000 /kit/vmlinuz >/tmp/trunc
cella-vmm --kernel /tmp/trunc --memory 256 </dev/null
echo vmm-status=$?
"""


@pytest.fixture(scope="module")
def sections():
    return sandbox.batch("x86-boot", BATCH, timeout=900)


def memmap(out):
    return [(int(a, 16), int(b, 16), t) for a, b, t in
            re.findall(r"^memmap (0x[0-9a-f]+) (0x[0-9a-f]+) (.+)$", out, re.M)]


def check_common(s, out, status, cpus):
    assert status == 0, s
    assert f"{CMDLINE} -- cat /proc/cmdline;" in out
    assert f"cpus={cpus}" in out
    tables = re.search(r"^tables (.*)$", out, re.M).group(1).split()
    assert {"APIC", "DSDT", "FACP", "FACS"} <= set(tables), tables
    mm = memmap(out)
    assert (0, 0x9fbff, "System RAM") in mm, mm
    assert (0x9fc00, 0xfffff, "Reserved") in mm, mm
    # Poweroff went through ACPI S5 (PM1a_CNT) and ended the VMM with 0.
    assert "guest poweroff" in s
    assert "vmm-status=0" in s


def test_bzimage_boots_with_e820_acpi_and_poweroff(sections):
    s = sections["bzimage"]
    out, status = guest(s)
    check_common(s, out, status, 2)
    mem = int(re.search(r"MemTotal:\s+(\d+) kB", out).group(1))
    assert 160 * 1024 < mem <= 256 * 1024, out
    assert (0x100000, 256 * 2**20 - 1, "System RAM") in memmap(out)


def test_pvh_boots_with_ram_above_4g(sections):
    s = sections["pvh-high"]
    out, status = guest(s)
    check_common(s, out, status, 1)
    mm = memmap(out)
    assert (0x100000, 0xbfffffff, "System RAM") in mm, mm
    assert (2**32, 2**32 + 512 * 2**20 - 1, "System RAM") in mm, mm
    mem = int(re.search(r"MemTotal:\s+(\d+) kB", out).group(1))
    assert 3 * 2**20 < mem <= 3584 * 1024, out


def test_truncated_bzimage_is_one_clear_error(sections):
    s = sections["truncated"]
    assert re.search(r"kernel: truncated bzImage: header says \d+ bytes of protected-mode kernel, "
                     r"file has \d+", s), s
    assert "vmm-status=0" not in s
    assert "CELLA-INIT-READY" not in s
