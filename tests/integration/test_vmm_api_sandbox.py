"""The control API with a Linux guest, in the nested-KVM sandbox (one boot): the guest kit's kernel
runs under cella-vmm --api-sock with no i8042 option on its command line: its i8042 driver finds
the keyboard controller (PNP0303) in the DSDT, binds atkbd without errors, and SendCtrlAltDel
reaches it and the kernel reboots (its default Ctrl-Alt-Del action), which ends the VM with
status 0. The sandbox has no curl: tests/guest/api-call.c, built static here, makes the requests.
"""
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402
from sandbox import rc  # noqa: E402

# atkbd binds from serio's thread, after init may have started: wait for the keyboard (5 s at most),
# then show what the kernel said about the controller and the keyboard. One quoted cella.cmd: the
# kernel refuses more than 32 words after " -- " (they become init's arguments).
CMDLINE = "console=ttyS0 quiet panic=-1 reboot=k cella.cmd=\"i=0; while ! grep -q AT.*keyboard " \
          "/proc/bus/input/devices && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; " \
          "grep -c AT.*keyboard /proc/bus/input/devices; dmesg | grep -i -e i8042 -e atkbd -e serio; " \
          "echo KBD-CHECKED; sleep 300\""

BATCH = r"""
api() { /g/api-call /tmp/api.sock "$@"; }

sec linux-api
/bin/cella-vmm --api-sock /tmp/api.sock --console /tmp/guest.out --kernel /kit/vmlinuz \
  --initrd /kit/initramfs.cpio.gz --memory 256 --cmdline 'CMDLINE' </dev/null >/tmp/vmm.log 2>&1 &
vmm=$!
i=0
while kill -0 $vmm 2>/dev/null && ! grep -q '^KBD-CHECKED' /tmp/guest.out 2>/dev/null && [ $i -lt 2400 ]; do
  sleep 0.1; i=$((i+1))
done
grep -q '^KBD-CHECKED' /tmp/guest.out && echo booted
echo "mode $(stat -c %a /tmp/api.sock)"
api GET /
api PUT /actions '{"action_type": "SendCtrlAltDel"}'
i=0; while kill -0 $vmm 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
kill -0 $vmm 2>/dev/null && { echo "HUNG"; kill -9 $vmm; }
wait $vmm
echo "vmm-rc=$?"
echo "socket-left $(ls /tmp/api.sock 2>/dev/null || echo none)"
echo "--- guest"; cat /tmp/guest.out
echo "--- vmm"; cat /tmp/vmm.log
echo rc=0
""".replace("CMDLINE", CMDLINE)


@pytest.fixture(scope="module")
def section():
    def api_call(g):
        src = os.path.join(sandbox.TOP, "tests", "guest", "api-call.c")
        subprocess.run(["cc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(g / "api-call"), src],
                       check=True)
    return sandbox.batch("vmm-api", BATCH, prepare=api_call, timeout=600)["linux-api"]


def test_linux_boots_under_the_api_with_an_i8042_keyboard(section):
    assert "booted" in section and "mode 600" in section, section
    assert '"state":"Running"' in section, section
    guest = section.split("--- guest", 1)[1].split("--- vmm", 1)[0]
    assert re.search(r"^1\s*$", guest, re.M), guest  # one AT keyboard: atkbd bound to the i8042


def test_the_dsdt_keyboard_controller_probes_without_errors(section):
    guest = section.split("--- guest", 1)[1].split("--- vmm", 1)[0]
    kernel = [ln for ln in guest.splitlines()  # the kernel's lines, not its echo of our grep
              if re.search(r"i8042|atkbd|serio", ln, re.I) and "command line" not in ln.lower()]
    print("\n".join(kernel))
    assert any("PNP: PS/2 Controller [PNP0303:KBD" in ln and "at 0x60,0x64 irq 1" in ln for ln in kernel), guest
    assert any("serio: i8042 KBD port at 0x60,0x64 irq 1" in ln for ln in kernel), guest
    # Anything going wrong in the probe (a reply that never came, a failed command) shows up here.
    bad = [ln for ln in kernel if re.search(r"fail|error|timeout|can't|no response|spurious|unknown", ln, re.I)]
    assert not bad, guest
    boot = re.search(r"guest boot timer: ([0-9.]+) ms since VMM start", section)
    assert boot, section
    print(f"boot to the init marker: {boot.group(1)} ms")


def test_send_ctrl_alt_del_reboots_linux(section):
    assert "HUNG" not in section, section
    assert "204 " in section, section
    assert "vmm-rc=0" in section, section
    assert "guest reboot" in section.split("--- vmm", 1)[1], section
    assert "socket-left none" in section, section
    assert rc(section) == 0
