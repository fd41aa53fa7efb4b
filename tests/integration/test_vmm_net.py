"""cella-vmm --net on this host, each case in a network namespace of its own (unshare -n), so every
TAP dies with it: a TAP cella-vmm created is up while the VM runs and gone after a clean exit,
SIGTERM and SIGKILL; a TAP that existed before is attached and left as it was; a TAP in use is
refused; bad --net values fail with one clear error. The guests are tiny flat binaries
(vmm_guests.py) on the host's KVM; the traffic tests are in test_virtio_net_sandbox.py."""
import os
import subprocess

import pytest

from conftest import BUILD, need_root, need_tool, run
from vmm_guests import REBOOT, SPIN

VMM = str(BUILD / "cella-vmm")


@pytest.fixture
def guests(tmp_path):
    need_root()
    need_tool("ip")
    need_tool("unshare")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    (tmp_path / "reboot.bin").write_bytes(REBOOT)
    (tmp_path / "spin.bin").write_bytes(SPIN)
    p = run([VMM, "--kernel", str(tmp_path / "reboot.bin"), "--memory", "1", "--console", "none"])
    if p.returncode != 0:
        pytest.skip(f"the host's KVM does not run a tiny guest: {p.stderr.strip()[-200:]}")
    return tmp_path


def netns(script, timeout=60):
    """Runs script with sh in a fresh network namespace; returns (status, output)."""
    p = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "VMM": VMM})
    return p.returncode, p.stdout + p.stderr


WAIT_TAP = 'i=0; while ! ip link show {0} >/dev/null 2>&1 && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.05; done\n'


def test_created_tap_removed_after_clean_exit(guests):
    st, out = netns(f'"$VMM" --kernel {guests}/reboot.bin --memory 1 --console none --net tap=ct0 -v; echo rc=$?\n'
                    'ip link show ct0 2>/dev/null && echo STILL-THERE || echo GONE\n')
    assert "rc=0" in out and "GONE" in out, out
    assert "TAP ct0 (created; removed at exit)" in out, out


@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_created_tap_up_while_running_gone_after_signal(guests, sig):
    st, out = netns(f'"$VMM" --kernel {guests}/spin.bin --memory 1 --console none --net tap=ct1 & pid=$!\n' +
                    WAIT_TAP.format("ct1") +
                    'ip link show ct1 | head -1\n'
                    f'kill -{sig} $pid; wait $pid; echo rc=$?\n'
                    'ip link show ct1 2>/dev/null && echo STILL-THERE || echo GONE\n')
    assert "ct1: <" in out and ",UP" in out.split("ct1: <", 1)[1].split(">", 1)[0] + ",", out
    assert "GONE" in out, out


def test_existing_tap_attached_and_left_alone(guests):
    st, out = netns('ip tuntap add dev pt0 mode tap && echo MADE\n'
                    f'"$VMM" --kernel {guests}/reboot.bin --memory 1 --console none --net tap=pt0,mac=52:54:00:ab:cd:ef -v;'
                    ' echo rc=$?\n'
                    'ip link show pt0 | head -1\n')
    assert "MADE" in out and "rc=0" in out, out
    assert "TAP pt0 (attached)" in out and "mac 52:54:00:ab:cd:ef" in out, out
    assert "pt0: <" in out and "UP" not in out.split("pt0: <", 1)[1].split(">", 1)[0], out  # left down


def test_tap_in_use_refused(guests):
    st, out = netns(f'"$VMM" --kernel {guests}/spin.bin --memory 1 --console none --net tap=ct2 & pid=$!\n' +
                    WAIT_TAP.format("ct2") +
                    f'"$VMM" --kernel {guests}/reboot.bin --memory 1 --console none --net tap=ct2; echo rc2=$?\n'
                    'kill $pid; wait $pid\n'
                    'ip link show ct2 2>/dev/null && echo STILL-THERE || echo GONE\n')
    assert "rc2=1" in out and "tap ct2: attach (already attached by another process)" in out, out
    assert "GONE" in out, out


@pytest.mark.parametrize("spec,match", [
    ("mac=52:54:00:00:00:01", "a network device needs tap=NAME"),
    ("tap=t0,mac=01:00:5e:00:00:01", "a multicast address"),
    ("tap=t0,mac=52:54:00", "expected six hex pairs"),
    ("tap=t0,speed=fast", 'unknown option "speed"'),
    ("tap=t0,bw=lots", "bw: expected a number"),
    ("tap=a/b", "not a valid interface name"),
    ("tap=sixteen-bytes-xy", "not a valid interface name"),
])
def test_bad_net_values(tmp_path, spec, match):
    p = run([VMM, "--kernel", str(tmp_path / "none"), "--net", spec])
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 1 and len(lines) == 1 and match in lines[0], p.stderr


def test_bad_nets_json(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"kernel": "/k", "nets": [{"tap": "t0", "colour": 1}]}')
    p = run([VMM, "--config", str(cfg)])
    assert p.returncode == 1 and "nets[0].colour: unknown field" in p.stderr, p.stderr
    cfg.write_text('{"kernel": "/k", "nets": [{"mac": "52:54:00:00:00:01"}]}')
    p = run([VMM, "--config", str(cfg)])
    assert p.returncode == 1 and "nets[0]" in p.stderr and "tap" in p.stderr, p.stderr
