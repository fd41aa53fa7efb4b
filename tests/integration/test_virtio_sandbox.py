"""virtio in the nested-KVM sandbox, one boot: the Debian kernel finds virtio-rng through the ACPI
DSDT (LNRO0005) and /dev/hwrng gives bytes; a hostile tiny guest hands virtio-rng a garbage ring and
the VMM logs it once, sets DEVICE_NEEDS_RESET and keeps running until the guest powers off."""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402

# Hostile flat binary (real mode at 0x1000:0, GNU as .code16/.code32, assembled with as + ld
# --oformat binary): switch to flat 32-bit protected mode; on the virtio-mmio device at 0xd0001000:
# status 0,1,3, DriverFeatures[1] = VERSION_1, status 0xb, queue 0 of 8 at desc 0x20000 / driver
# 0x21000 / device 0x22000, QueueReady, status 0xf; descriptor 0 = {0xdeadbeef000 (not RAM), 0x1000,
# NEXT, next 0 (itself)}; avail idx 1, ring[0] = 0; QueueNotify 0 twice; wait (at most 2^20 reads)
# for Status to show NEEDS_RESET, since the queue is served by the VMM's I/O thread, not inside the
# notify write; print 'N' if Status has
# NEEDS_RESET (0x40) else 'X', 'C' if InterruptStatus has the config bit else 'x', '\n'; ACPI S5.
HOSTILE = bytes.fromhex(
    "fa2e660f011658010f20c00c010f22c066ea18000100080066b810008ed88ec08ed0bf001000d0c7477000000000"
    "c7477001000000c7477003000000c7472401000000c7472001000000c747700b000000c7473000000000c7473808"
    "000000c7878000000000000200c7878400000000000000c7879000000000100200c7879400000000000000c787a0"
    "00000000200200c787a400000000000000c7474401000000c747700f000000c7050000020000f0ee00c705040002"
    "00dbea0d00c7050800020000100000c7050c0002000100000066c70500100200000066c70504100200000066c705"
    "021002000100c7475000000000c7475000000000b900001000f74770400000007504f390e2f366baf8038b4770a9"
    "40000000b0587402b04eee8b4760a902000000b0787402b043eeb00aee66ba040666b8003466eff4ebfd66900000"
    "000000000000ffff0000009acf00ffff00000092cf00170040010100")

CMDLINE = "console=ttyS0 quiet panic=-1"
VMM = "timeout 240 /bin/cella-vmm --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 1"
RNG_PROBE = ("cat /sys/class/misc/hw_random/rng_current; "
             "echo hwrng-bytes=$(head -c 4096 /dev/hwrng | wc -c); "
             "head -c 32 /dev/hwrng | od -An -tx1; exit 3")

BATCH = f"""

sec hostile
timeout 60 /bin/cella-vmm --kernel /g/hostile.bin --memory 1 --rng </dev/null; echo rc=$?

sec rng
{VMM} --kernel /kit/vmlinuz --rng --cmdline '{CMDLINE} -- {RNG_PROBE}' </dev/null; echo rc=$?
"""


@pytest.fixture(scope="module")
def sections():
    return sandbox.batch("virtio", BATCH, prepare=lambda g: (g / "hostile.bin").write_bytes(HOSTILE), timeout=900)


def test_rng_gives_bytes(sections):
    s = sections["rng"]
    out, _ = sandbox.guest(s)
    assert "virtio_rng" in out, out
    assert "hwrng-bytes=4096" in out, out
    assert re.findall(r"^rc=(\d+)$", s, re.M)[-1] == "0", s


def test_hostile_guest_garbage_ring_logged_once_vmm_survives(sections):
    s = sections["hostile"]
    assert "NC\n" in s, s  # the guest saw NEEDS_RESET and the config interrupt bit
    assert s.count("virtio-rng: guest error, device needs reset") == 1, s
    assert "outside guest RAM" in s, s
    assert "info: guest poweroff" in s, s
    assert re.findall(r"^rc=(\d+)$", s, re.M)[-1] == "0", s
