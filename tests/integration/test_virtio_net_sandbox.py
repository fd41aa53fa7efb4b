"""virtio-net in the nested-KVM sandbox, one boot for the whole batch (tun.ko is in the sandbox's
module list, virtio_net.ko in the guest's; addresses are 10.x on TAPs inside the throwaway sandbox).

created  cella-vmm --net tap=ctap0 creates the TAP; the host side gets 10.0.2.1, the guest configures
         10.0.2.2 on eth0; ping both ways; 4 MiB of random bytes host->guest and guest->host over TCP
         (busybox nc), sha256 compared on both ends; after the VMM exits the TAP is gone.
         The same guest then sends 8 MiB to bench/netsink (times first byte to end of file): the
         unlimited rate U of this sandbox run.
limited  a persistent TAP made beforehand (tunctl) is attached with --net tap=ptap0,bw=B,
         bw_refill_ms=250, B set for N = min(U / 4, 2 MiB/s) per direction; the guest sends about
         20 s worth (at most 12 MiB) to netsink: the rate is N within 10%; the TAP is still there
         after the VMM exits (it was not ours).
"""
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402

CMDLINE = "console=ttyS0 quiet panic=-1"
VMM = "timeout 400 /bin/cella-vmm --kernel /kit/vmlinuz --initrd /kit/initramfs.cpio.gz --memory 256 --cpus 1"
UNLIMITED_MIB = 8


def cmd_param(script):
    """cella.cmd=VALUE for the guest's init: spaces and other specials percent-encoded."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=,:;|&<>$()+*[]!{}@^~")
    return "cella.cmd=" + "".join(c if c in safe else "%%%02X" % ord(c) for c in script)


# Guest side of "created": address, ping the host, receive 4 MiB (stdin held open by a FIFO so
# busybox nc does not quit at its own EOF), send 4 MiB.
GUEST_CREATED = (
    "ip link set lo up; ip link set eth0 up; ip addr add 10.0.2.2/24 dev eth0; "
    "echo GUEST-MAC=$(cat /sys/class/net/eth0/address); "
    "for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 1 10.0.2.1 >/dev/null && break; done; "
    "ping -c 3 -W 2 10.0.2.1 | grep -q ' 0% packet loss' && echo G2H-PING-OK; "
    "mkfifo /tmp/hold; (sleep 600 > /tmp/hold &); "
    "nc -l -p 5001 < /tmp/hold > /tmp/h2g; echo GUEST-GOT=$(sha256sum < /tmp/h2g | cut -c1-64) $(wc -c < /tmp/h2g); "
    "dd if=/dev/urandom of=/tmp/g2h bs=1024 count=4096 2>/dev/null; "
    "echo GUEST-SENT=$(sha256sum < /tmp/g2h | cut -c1-64); "
    "for i in 1 2 3 4 5; do nc 10.0.2.1 5000 < /tmp/g2h && break; sleep 1; done; "
    f"dd if=/dev/zero bs=65536 count={UNLIMITED_MIB * 16} 2>/dev/null | nc 10.0.2.1 5004; "
    "echo rx=$(cat /sys/class/net/eth0/statistics/rx_packets) tx=$(cat /sys/class/net/eth0/statistics/tx_packets)"
)

GUEST_LIMITED = (
    "ip link set eth0 up; ip addr add 10.0.3.2/24 dev eth0; "
    "for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 1 10.0.3.1 >/dev/null && break; done; "
    "dd if=/dev/zero bs=65536 count=@@COUNT@@ 2>/dev/null | nc 10.0.3.1 5002; echo GUEST-SENT-LIMITED"
)

BATCH = f"""
lsmod | grep -q '^tun ' && echo TUN-LOADED

sec created
head -c 4194304 /dev/urandom > /tmp/h2g
echo HOST-SENT=$(sha256sum < /tmp/h2g | cut -c1-64)
mkfifo /tmp/hold; (sleep 600 > /tmp/hold &)
nc -l -p 5000 < /tmp/hold > /tmp/g2h &
{VMM} --net tap=ctap0,mac=52:54:00:12:34:56 --cmdline '{CMDLINE} {cmd_param(GUEST_CREATED)}' </dev/null >/tmp/vm.log 2>&1 &
VM=$!
i=0; while ! ip link show ctap0 >/dev/null 2>&1 && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.1; done
ip link show ctap0 | head -1
ip addr add 10.0.2.1/24 dev ctap0
/g/netsink -t 400 10.0.2.1 5004 1 > /tmp/sinkU &
ok=0; i=0; while [ $i -lt 240 ]; do ping -c 1 -W 1 10.0.2.2 >/dev/null 2>&1 && {{ ok=1; break; }}; i=$((i+1)); done
ping -c 3 -W 2 10.0.2.2 | grep -q ' 0% packet loss' && echo H2G-PING-OK
i=0; while [ $i -lt 120 ]; do nc 10.0.2.2 5001 < /tmp/h2g && break; i=$((i+1)); sleep 0.5; done
wait $VM; echo vm-rc=$?
i=0; while [ -n "$(jobs -p)" ] && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.1; done
echo HOST-GOT=$(sha256sum < /tmp/g2h | cut -c1-64) $(wc -c < /tmp/g2h)
cat /tmp/vm.log
ip link show ctap0 >/dev/null 2>&1 && echo CTAP-STILL-THERE || echo CTAP-GONE

sec limited
# The limit is a quarter of what this (loaded, emulated) sandbox reached unlimited, at most 2 MiB/s,
# and the transfer about 20 s of it (at most 12 MiB): then it is the limiter that sets the pace.
cat /tmp/sinkU
U=$(grep -o 'mibps=[0-9.]*' /tmp/sinkU | cut -d= -f2)
N=$(awk -v u="${{U:-0}}" 'BEGIN {{ n = u / 4; if (n > 2) n = 2; printf "%.4f", n }}')
BW=$(awk -v n="$N" 'BEGIN {{ printf "%d", n * 262144 }}')
COUNT=$(awk -v n="$N" 'BEGIN {{ c = int(n * 320); if (c > 192) c = 192; if (c < 16) c = 16; print c }}')
echo LIMIT-MIBPS=$(awk -v b="$BW" 'BEGIN {{ printf "%.4f", b * 4 / 1048576 }}')
echo LIMIT-BYTES=$((COUNT * 65536))
tunctl -t ptap0 >/dev/null && ip addr add 10.0.3.1/24 dev ptap0 && ip link set ptap0 up
/g/netsink -t 300 10.0.3.1 5002 1 > /tmp/sink.out &
SINK=$!
CMD2=$(echo '{CMDLINE} {cmd_param(GUEST_LIMITED)}' | sed "s/@@COUNT@@/$COUNT/")
{VMM} --net tap=ptap0,bw=$BW,bw_refill_ms=250 --cmdline "$CMD2" </dev/null >/tmp/vm2.log 2>&1
echo vm-rc=$?
wait $SINK
cat /tmp/sink.out
cat /tmp/vm2.log
ip link show ptap0 >/dev/null 2>&1 && echo PTAP-STILL-THERE
tunctl -d ptap0 >/dev/null
kill $(pidof sleep) 2>/dev/null
true
"""


@pytest.fixture(scope="module")
def sections():
    def netsink(g):
        subprocess.run(["gcc", "-static", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", str(g / "netsink"),
                        os.path.join(sandbox.TOP, "bench", "netsink.c")], check=True)
    return sandbox.batch("virtio-net", BATCH, prepare=netsink, timeout=1200, expect=("TUN-LOADED",))


def field(section, name):
    m = re.findall(rf"^{name}=(.*)$", section, re.M)
    assert m, f"no {name}= in:\n{section}"
    return m[-1].strip()


def test_created_tap_ping_both_ways(sections):
    s = sections["created"]
    out, status = sandbox.guest(s)
    assert "GUEST-MAC=52:54:00:12:34:56" in out, s
    assert "G2H-PING-OK" in out, s
    assert "H2G-PING-OK" in s, s
    assert status == 0, s
    assert field(s, "vm-rc") == "0", s


def test_created_tap_tcp_both_ways_bytes_intact(sections):
    s = sections["created"]
    out, _ = sandbox.guest(s)
    sent = field(s, "HOST-SENT")
    assert field(out, "GUEST-GOT") == f"{sent} 4194304", s
    gsent = field(out, "GUEST-SENT")
    assert field(s, "HOST-GOT") == f"{gsent} 4194304", s
    assert "dropped" not in s, s  # the device logs its counters when it dropped anything


def test_created_tap_gone_after_exit(sections):
    s = sections["created"]
    assert "CTAP-GONE" in s, s
    assert re.search(r"ctap0: <[^>]*\bUP\b", s), s  # cella-vmm brought the TAP it created up


def test_rate_limit_holds_and_attached_tap_stays(sections):
    s = sections["limited"]
    assert field(s, "vm-rc") == "0", s
    assert "GUEST-SENT-LIMITED" in s, s
    unlimited = float(re.search(r"SINK n=0 bytes=\d+ ms=[0-9.]+ mibps=([0-9.]+)", s).group(1))
    limit = float(field(s, "LIMIT-MIBPS"))
    assert 0.05 < limit <= 2.0 and unlimited >= 3.9 * limit, s
    m = re.findall(r"SINK n=0 bytes=(\d+) ms=([0-9.]+) mibps=([0-9.]+)", s)
    assert len(m) == 2, s
    assert int(m[1][0]) == int(field(s, "LIMIT-BYTES")), s
    rate = float(m[1][2])
    assert abs(rate - limit) <= 0.1 * limit, f"{rate} MiB/s, want {limit} +-10% (unlimited: {unlimited})\n{s}"
    assert "PTAP-STILL-THERE" in s, s
