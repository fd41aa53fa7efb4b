"""virtio in the nested-KVM sandbox, one boot: the Debian kernel finds virtio-rng through the ACPI
DSDT (LNRO0005) and /dev/hwrng gives bytes."""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402

CMDLINE = "console=ttyS0 quiet panic=-1"
VMM = "timeout 240 /bin/cella-vmm --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 1"
RNG_PROBE = ("cat /sys/class/misc/hw_random/rng_current; "
             "echo hwrng-bytes=$(head -c 4096 /dev/hwrng | wc -c); "
             "head -c 32 /dev/hwrng | od -An -tx1; exit 3")

BATCH = f"""
sec() {{ echo; echo "=== $1"; }}

sec rng
{VMM} --kernel /kit/vmlinuz --rng --cmdline '{CMDLINE} -- {RNG_PROBE}' </dev/null; echo rc=$?
"""


@pytest.fixture(scope="module")
def sections():
    ok, reason = sandbox.available()
    if not ok:
        pytest.skip(reason)
    if not os.path.exists(sandbox.VMM_STATIC):
        pytest.skip("build/cella-vmm-static not built")
    with open(os.path.join(sandbox.TOP, "build", "sandbox-virtio.log"), "w") as log:
        status, output = sandbox.run(BATCH, timeout=900, stream=log)
    assert status == 0, output
    parts = {}
    for chunk in re.split(r"^=== ", output, flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        parts[name.strip()] = body
    return parts


def test_rng_gives_bytes(sections):
    s = sections["rng"]
    m = re.search(r"CELLA-INIT-READY uptime=[0-9.]+\n(.*?)CELLA-EXIT-STATUS=(\d+)\n", s, re.S)
    assert m, s
    out = m.group(1)
    assert "virtio_rng" in out, out
    assert "hwrng-bytes=4096" in out, out
    assert re.findall(r"^rc=(\d+)$", s, re.M)[-1] == "0", s
