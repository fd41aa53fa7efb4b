"""virtio-vsock in the nested-KVM sandbox, one boot for all of it, with the Debian kernel and its
vsock modules (vsock, vmw_vsock_virtio_transport_common, vmw_vsock_virtio_transport from the guest
kit). tests/guest/vsock-echo (static) is the tool on both ends: AF_VSOCK in the guest, the VMM's
hybrid unix sockets in the sandbox.

- host -> guest through the uds and "CONNECT 1234": 4 MiB echoed and checked, then 4 concurrent
  connections of 512 KiB each, while a host client that never reads holds a connection (it must not
  stall anyone else);
- guest -> host through <uds>_5000: 4 MiB, then 4 concurrent connections, checked;
- a host client that disconnects mid-stream (256 KiB sent, echo never read), and a connection after it;
- a guest port nobody listens on: the host client gets no OK; a host port nobody listens on: the
  guest's connect fails;
- the VMM logs no malformed packet, exits 0 when the guest powers off, and leaves no socket file.
"""
import os
import re
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402

TOOL = os.path.join(sandbox.TOP, "build", "tests", "guest", "vsock-echo")
MIB = 1 << 20
BIG = 4 * MIB
CONC_N, CONC = 4, 512 * 1024
# sent, then the client closes without reading the echo (small enough that the echo loop's buffers
# take it all: a client that never reads cannot send more than they hold)
ABORT = 256 * 1024

GUEST = rf"""
echo vsock-dev=$(ls /dev/vsock)
/bin/vsock-echo listen 1234 &
sleep 0.5
echo GUEST-LISTENING
/bin/vsock-echo connect 2 5000 {BIG} 1; echo g2h-big-rc=$?
/bin/vsock-echo connect 2 5000 {CONC} {CONC_N}; echo g2h-conc-rc=$?
/bin/vsock-echo connect 2 5999 16 1 2>&1; echo g2h-refused-rc=$?
echo G2H-DONE
/bin/vsock-echo once 1235
"""

CMDLINE = "console=ttyS0 quiet panic=-1"
E = "/g/vsock-echo"
BATCH = rf"""
sec vsock
{E} uds-listen /tmp/v.sock_5000 &
echo_pid=$!
timeout 500 /bin/cella-vmm --kernel /kit/vmlinuz --initrd /g/initrd --memory 256 --cpus 1 \
	--console /tmp/c.log --vsock cid=3,uds=/tmp/v.sock \
	--cmdline '{CMDLINE} -- sh /vsock-test.sh' </dev/null > /tmp/v.log 2>&1 &
vmm=$!
i=0
while ! grep -q GUEST-LISTENING /tmp/c.log 2>/dev/null && [ $i -lt 2000 ] && kill -0 $vmm 2>/dev/null; do
	sleep 0.2; i=$((i + 1))
done
[ -S /tmp/v.sock ] && echo uds-is-socket
i=0
while ! {E} uds-connect /tmp/v.sock 1234 16 1 >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
{E} uds-stuck /tmp/v.sock 1234 {MIB} 600 > /tmp/stuck.log 2>&1 &
stuck=$!
i=0  # the stuck client has filled what it can and stopped reading before the transfers start
while ! grep -q '^stuck: sent' /tmp/stuck.log 2>/dev/null && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
{E} uds-connect /tmp/v.sock 1234 {BIG} 1; echo h2g-big-rc=$?
{E} uds-connect /tmp/v.sock 1234 {CONC} {CONC_N}; echo h2g-conc-rc=$?
{E} uds-abort /tmp/v.sock 1234 {ABORT}; echo abort-rc=$?
{E} uds-connect /tmp/v.sock 1234 65536 1; echo after-abort-rc=$?
{E} uds-connect /tmp/v.sock 4321 16 1 2>&1; echo h2g-refused-rc=$?
i=0
while ! grep -q G2H-DONE /tmp/c.log 2>/dev/null && [ $i -lt 2000 ] && kill -0 $vmm 2>/dev/null; do
	sleep 0.2; i=$((i + 1))
done
cat /tmp/stuck.log
echo stuck-alive=$(kill -0 $stuck 2>/dev/null && echo yes || echo no)
kill $stuck; wait $stuck 2>/dev/null
{E} uds-send /tmp/v.sock 1235 quit; echo quit-rc=$?
wait $vmm; echo vmm-rc=$?
kill $echo_pid; wait $echo_pid 2>/dev/null; rm -f /tmp/v.sock_5000
[ -e /tmp/v.sock ] && echo uds-left || echo uds-gone
echo leftover=$(ls /tmp | grep -c '^v\.sock')
echo vmm-procs=$(pidof cella-vmm | wc -w)
echo "--- vmm log"; cat /tmp/v.log
echo "--- console"; cat /tmp/c.log
"""


@pytest.fixture(scope="module")
def section():
    def ship(g):
        # the guest's initramfs: the kit's plus the tool and the test script
        sandbox.kit_initrd(g / "initrd", files=[(TOOL, "/bin/vsock-echo")], scripts={"/vsock-test.sh": GUEST})
        shutil.copy(TOOL, g / "vsock-echo")
    return sandbox.batch("vsock", BATCH, prepare=ship, timeout=1200, needs={TOOL: "make"})["vsock"]


def value(s, key):
    m = re.findall(rf"^{re.escape(key)}=(\S+)", s, re.M)
    assert m, f"{key} missing:\n{s}"
    return m[-1]


def test_host_to_guest_echo(section):
    assert "uds-is-socket" in section, section
    assert value(section, "h2g-big-rc") == "0", section
    assert re.search(rf"host->guest: 1 connection\(s\) x {BIG} bytes echoed and checked: ok", section), section
    assert value(section, "h2g-conc-rc") == "0", section
    assert f"host->guest: {CONC_N} connection(s) x {CONC} bytes echoed and checked: ok" in section, section


def test_guest_to_host_echo(section):
    out, status = sandbox.guest(section)
    assert "vsock-dev=/dev/vsock" in out, out
    assert value(out, "g2h-big-rc") == "0", out
    assert f"guest->host: 1 connection(s) x {BIG} bytes echoed and checked: ok" in out, out
    assert value(out, "g2h-conc-rc") == "0", out
    assert f"guest->host: {CONC_N} connection(s) x {CONC} bytes echoed and checked: ok" in out, out
    assert status == 0, out


def test_stuck_and_departing_host_clients(section):
    # the client that never reads held its connection through every transfer above
    assert re.search(r"^stuck: sent \d+ bytes, not reading", section, re.M), section
    assert value(section, "stuck-alive") == "yes", section
    assert value(section, "abort-rc") == "0", section
    assert value(section, "after-abort-rc") == "0", section


def test_refused_connections(section):
    assert value(section, "h2g-refused-rc") == "1", section
    assert "CONNECT 4321: connection closed before OK" in section, section
    out, _ = sandbox.guest(section)
    assert value(out, "g2h-refused-rc") == "1", out
    assert "connect to vsock 2:5999" in out, out


def test_vmm_exit_and_cleanup(section):
    assert "once: got \"quit\"" in section, section
    assert value(section, "vmm-rc") == "0", section
    assert "uds-gone" in section, section
    assert value(section, "leftover") == "0", section
    assert value(section, "vmm-procs") == "0", section
    log = section.split("--- vmm log", 1)[1].split("--- console", 1)[0]
    assert "malformed" not in log and "guest error" not in log, log
