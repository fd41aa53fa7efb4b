"""cella-vmm --api-sock: the control API on the host KVM with tiny flat guests (vmm_guests.py).

Each test starts its own cella-vmm with an API socket, drives it over AF_UNIX with Python's
http.client (and curl where a real client matters), and checks on exit that the process is gone and
the socket file removed. The host's KVM emulates real mode, so the guests are the tiny ones.
"""
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import BUILD
from vmm_guests import write_guests

VMM = str(BUILD / "cella-vmm")


def need_kvm():
    if not os.path.exists("/dev/kvm"):
        pytest.skip("needs /dev/kvm")


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Vmm:
    """One cella-vmm process with an API socket; console to a file."""

    def __init__(self, tmp_path, *args, prefix=()):
        self.sock = str(tmp_path / "api.sock")
        self.console = tmp_path / "console.out"
        self.log = open(tmp_path / "vmm.log", "w+")
        self.proc = subprocess.Popen([*prefix, VMM, "--api-sock", self.sock, "--console", str(self.console), *args],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "the API socket did not appear"
            time.sleep(0.02)
        self.conn = UnixHTTP(self.sock)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def call(self, method, path, body=None, raw=None):
        """One request on the keep-alive connection: (status, parsed JSON or None)."""
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        text = r.read()
        if r.getheader("Connection", "").lower() == "close":
            self.conn.close()
        return r.status, (json.loads(text) if text else None)

    def ok(self, method, path, body=None):
        status, reply = self.call(method, path, body)
        assert status in (200, 204), (method, path, status, reply)
        return reply

    def fault(self, method, path, body=None, status=400, match="", raw=None):
        st, reply = self.call(method, path, body, raw=raw)
        assert st == status, (method, path, st, reply)
        assert set(reply) == {"fault_message"} and match in reply["fault_message"], reply
        return reply["fault_message"]

    def state(self):
        return self.ok("GET", "/")["state"]

    def lines(self):
        try:
            text = self.console.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [l for l in text.split("\n")[:-1] if l]  # complete lines only

    def wait_lines(self, n, timeout=20):
        deadline = time.monotonic() + timeout
        while len(self.lines()) < n:
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, f"guest printed {len(self.lines())} lines, wanted {n}"
            time.sleep(0.05)
        return self.lines()

    def stop(self, sig=signal.SIGTERM, expect=None):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        self.conn.close()
        if expect is not None:
            assert rc == expect, (rc, self.output())
        assert not os.path.exists(self.sock), "socket file left behind"
        return rc


@pytest.fixture
def guests(tmp_path):
    need_kvm()
    d = tmp_path / "guests"
    d.mkdir()
    return write_guests(str(d))


@pytest.fixture
def vmm(tmp_path, guests):
    vms = []

    def start(*args, prefix=()):
        v = Vmm(tmp_path / f"vm{len(vms)}" if vms else tmp_path, *args, prefix=prefix)
        vms.append(v)
        return v

    (tmp_path / "vm1").mkdir()
    (tmp_path / "vm2").mkdir()
    yield start
    for v in vms:
        if v.proc.poll() is None:
            v.proc.kill()
            v.proc.wait()
        v.log.close()


def configure(v, kernel, cpus=1, mem=2):
    v.ok("PUT", "/boot-source", {"kernel_image_path": kernel})
    v.ok("PUT", "/machine-config", {"vcpu_count": cpus, "mem_size_mib": mem})


def threads(pid):
    names = []
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/comm") as f:
            names.append(f.read().strip())
    return sorted(names)


def test_waits_for_configuration_and_cleans_up(vmm, tmp_path):
    v = vmm()
    st = os.stat(v.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    info = v.ok("GET", "/")
    assert info["state"] == "Not started" and info["id"] == "anonymous-instance", info
    assert info["app_name"] == "cella-vmm" and info["config"]["machine-config"]["vcpu_count"] == 1
    assert "api" in threads(v.proc.pid)
    v.stop(expect=128 + signal.SIGTERM)
    assert "waiting for configuration" in v.output()


def test_start_pause_resume_metrics(vmm, guests):
    v = vmm("--id", "counter-1")
    configure(v, guests["count.bin"], cpus=2)
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    assert v.state() == "Running"
    assert v.ok("GET", "/")["id"] == "counter-1"
    v.wait_lines(5)
    assert threads(v.proc.pid).count("vcpu0") == 1 and "vcpu1" in threads(v.proc.pid)

    v.ok("PATCH", "/vm", {"state": "Paused"})
    assert v.state() == "Paused"
    time.sleep(0.2)  # a line being written when the pause hit is complete by now
    frozen = v.console.read_bytes()
    time.sleep(1.0)
    assert v.console.read_bytes() == frozen, "the guest kept printing while paused"
    v.ok("PATCH", "/vm", {"state": "Paused"})  # idempotent
    m = v.ok("GET", "/metrics")
    assert m["state"] == "Paused" and len(m["vcpus"]) == 2
    io = m["vcpus"][0]["exits"]["io"]
    assert io >= len(frozen) and m["vcpus"][0]["exits_total"] >= io, m
    assert m["devices"]["serial"]["tx_bytes"] == len(frozen), (m, len(frozen))
    assert m["api"]["requests"] >= 8

    v.ok("PATCH", "/vm", {"state": "Resumed"})
    n = int(v.lines()[-1])
    after = v.wait_lines(len(frozen.split(b"\n")) + 5)
    nums = [int(x) for x in after]
    assert nums == list(range(1, len(nums) + 1)), "count skipped or repeated across pause/resume"
    assert nums[-1] > n
    m2 = v.ok("GET", "/metrics")
    assert m2["vcpus"][0]["exits"]["io"] > io
    v.stop(expect=128 + signal.SIGTERM)


def test_state_machine_refusals(vmm, guests, tmp_path):
    v = vmm()
    # not started
    v.fault("PATCH", "/vm", {"state": "Paused"}, 409, "not allowed while the VM is Not started")
    v.fault("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, 409, "Not started")
    v.fault("PUT", "/snapshot/create", {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}, 409)
    v.fault("PATCH", "/drives/d", {"drive_id": "d", "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}, 409)
    v.fault("PUT", "/actions", {"action_type": "InstanceStart"}, 400, "PUT /boot-source first")
    v.fault("PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "nope")}, 400,
            "kernel_image_path: " + str(tmp_path / "nope") + ": No such file")
    v.fault("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 2}, 400, "vcpu_count: 33 is out of range")
    v.fault("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 0}, 400, "mem_size_mib")
    v.fault("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "a/b"}, 400,
            "not a valid interface name")
    v.fault("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/" + "v" * 100}, 400, "at most 95")
    v.fault("PUT", "/vsock", {"guest_cid": 2, "uds_path": "/tmp/v"}, 400, "reserved")
    # a kernel the loader refuses: 400 and still not started
    bad = tmp_path / "empty.bin"
    bad.write_bytes(b"")
    v.ok("PUT", "/boot-source", {"kernel_image_path": str(bad)})
    v.fault("PUT", "/actions", {"action_type": "InstanceStart"}, 400, "empty file")
    assert v.state() == "Not started"
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    # running
    v.fault("PUT", "/actions", {"action_type": "InstanceStart"}, 409, "a VM starts once")
    v.fault("PUT", "/boot-source", {"kernel_image_path": guests["hello.bin"]}, 409, "configuration is fixed")
    v.fault("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 2}, 409)
    v.fault("PUT", "/snapshot/create", {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}, 409,
            "pause it first")
    v.fault("PUT", "/snapshot/load", {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}, 409)
    v.fault("PATCH", "/drives/nope", {"drive_id": "nope", "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}},
            404, 'no drive "nope"')
    v.fault("PATCH", "/network-interfaces/eth0",
            {"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}, 404,
            'no interface "eth0"')
    v.ok("PATCH", "/vm", {"state": "Paused"})
    v.fault("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, 409, "while the VM is Paused")
    v.ok("PATCH", "/vm", {"state": "Resumed"})
    v.ok("PATCH", "/vm", {"state": "Resumed"})  # idempotent
    assert v.state() == "Running"
    v.stop(expect=128 + signal.SIGTERM)


def raw(sock_path, data, shut=True, timeout=5):
    """Sends bytes on a fresh connection; returns everything the server sent before closing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before taking it all (503, 413): read what it said
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def statuses(reply):
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]


def test_malformed_requests_leave_the_vm_alone(vmm, guests):
    v = vmm()
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    v.wait_lines(3)
    cases = [
        (b"\x00\x01\x02garbage\r\n\r\n", 400, b"control or non-ASCII"),
        (b"GET / HTTP/1.1\n\n", 400, b"bare LF"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, b"HTTP/1.0 and HTTP/1.1"),
        (b"get / HTTP/1.1\r\n\r\n", 400, b"request line"),
        (b"GET /?x=1 HTTP/1.1\r\n\r\n", 400, b"query strings"),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, b"header line 1"),
        (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400, b"folded"),
        (b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, b"Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", 413, b"65536"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", 400, b"twice"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, b"8192"),
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", 414, b"255 bytes"),
        (b"PUT /actions HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417, b"100-continue"),
    ]
    for data, status, why in cases:
        reply = raw(v.sock, data)
        assert statuses(reply) == [status], (data[:60], reply)
        assert why in reply and b"Connection: close" in reply, (data[:60], reply)
        body = reply.split(b"\r\n\r\n", 1)[1]
        assert set(json.loads(body)) == {"fault_message"}
    # well-formed HTTP, wrong request
    v.fault("GET", "/nope", status=404, match="/nope: no such resource")
    v.fault("DELETE", "/", status=405, match="method DELETE not supported")
    v.fault("PUT", "/metrics", {}, 405, "allowed: GET")
    v.fault("PUT", "/actions", status=400, match="JSON body is required", raw="")
    v.fault("PUT", "/actions", status=400, match="body: line 1", raw='{"action_type": ')
    v.fault("PUT", "/actions", status=400, match="expected object", raw="[]")
    v.fault("PUT", "/actions", {"action_type": "InstanceStart", "extra": 1}, 400, "actions.extra: unknown field")
    v.fault("PUT", "/actions", status=400, raw='{"action_type":"InstanceStart","action_type":"InstanceStart"}')
    v.fault("PUT", "/actions", {"action_type": "Reboot"}, 400, '"Reboot" is not InstanceStart or SendCtrlAltDel')
    v.fault("PATCH", "/vm", {"state": 1}, 400, "vm.state: expected string")
    v.fault("PUT", "/drives/a%2Fb", {"drive_id": "a"}, 404, "{id}")
    # the VM never noticed
    before = len(v.lines())
    v.wait_lines(before + 3)
    assert v.state() == "Running"
    m = v.ok("GET", "/metrics")
    assert m["api"]["rejected"] >= len(cases) + 11, m["api"]
    assert v.proc.poll() is None
    v.stop(expect=128 + signal.SIGTERM)


def test_keepalive_pipelining_continue_and_close(vmm, guests):
    v = vmm()
    # keep-alive: several requests on one connection (http.client reuses it)
    for _ in range(5):
        assert v.state() == "Not started"
    # pipelining: three requests in one write, answered in order
    boot = json.dumps({"kernel_image_path": guests["count.bin"]}).encode()
    data = (b"GET / HTTP/1.1\r\n\r\n"
            b"PUT /boot-source HTTP/1.1\r\nContent-Length: " + str(len(boot)).encode() + b"\r\n\r\n" + boot +
            b"PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}"
            b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    reply = raw(v.sock, data, shut=False)
    assert statuses(reply) == [200, 204, 409, 200], reply
    assert reply.count(b"Connection: close") == 1, reply
    # the same requests split across many small writes
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(v.sock)
    for i in range(0, len(data), 7):
        s.sendall(data[i:i + 7])
        time.sleep(0.002)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    assert statuses(out) == [200, 204, 409, 200], out
    # Expect: 100-continue gets an interim 100 before the body is sent
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(v.sock)
    body = json.dumps({"vcpu_count": 1, "mem_size_mib": 2}).encode()
    s.sendall(b"PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: " +
              str(len(body)).encode() + b"\r\n\r\n")
    assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(body)
    assert s.recv(1000).startswith(b"HTTP/1.1 204 No Content\r\n")
    s.close()
    # HTTP/1.0 closes unless asked not to
    reply = raw(v.sock, b"GET / HTTP/1.0\r\n\r\n", shut=False)
    assert statuses(reply) == [200] and b"Connection: close" in reply
    v.stop(expect=128 + signal.SIGTERM)


def test_client_disconnects_mid_request(vmm, guests):
    v = vmm()
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    v.wait_lines(2)
    for partial in (b"GET / HT", b"PUT /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"sta"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(v.sock)
        s.sendall(partial)
        s.close()
    # a client that starts a request and stalls: 408 after 5 s, connection closed
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.settimeout(15)
    stalled.connect(v.sock)
    t0 = time.monotonic()
    stalled.sendall(b"PUT /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"st")
    reply = b""
    while True:
        chunk = stalled.recv(4096)
        if not chunk:
            break
        reply += chunk
    waited = time.monotonic() - t0
    stalled.close()
    assert statuses(reply) == [408] and b"not completed within 5 s" in reply, reply
    assert 4.5 < waited < 10, waited
    # a client that sends a request and leaves before the reply
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(v.sock)
    s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    s.close()
    # 16 idle connections fill the table; the 17th is told so, and the old ones still work
    idle = []
    for _ in range(16):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(v.sock)
        idle.append(c)
    v.conn.close()
    time.sleep(0.2)
    reply = raw(v.sock, b"GET / HTTP/1.1\r\n\r\n", shut=False)
    assert statuses(reply) == [503] and b"too many API connections" in reply, reply
    idle[0].sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert idle[0].recv(1000).startswith(b"HTTP/1.1 200 OK")
    for c in idle:
        c.close()
    time.sleep(0.2)
    v.conn = UnixHTTP(v.sock)
    m = v.ok("GET", "/metrics")
    assert m["api"]["disconnects_mid_request"] >= 2, m["api"]
    assert m["state"] == "Running"
    n = len(v.lines())
    v.wait_lines(n + 3)
    v.stop(expect=128 + signal.SIGTERM)


def test_send_ctrl_alt_del_reaches_the_guest_keyboard(vmm, guests):
    v = vmm()
    configure(v, guests["kbd.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    deadline = time.monotonic() + 10
    while v.console.read_bytes()[:1] != b"K":
        assert time.monotonic() < deadline, v.output()
        time.sleep(0.05)
    v.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    want = b"K" + bytes.fromhex("1411e071e0f071f011f014")  # set 2: Ctrl Alt Del down, then up
    deadline = time.monotonic() + 10
    while v.console.read_bytes() != want:
        assert time.monotonic() < deadline, v.console.read_bytes()
        time.sleep(0.05)
    assert v.ok("GET", "/metrics")["devices"]["i8042"]["ctrl_alt_del_sent"] == 1
    v.stop(expect=128 + signal.SIGTERM)


def test_guest_poweroff_ends_the_process(vmm, guests):
    v = vmm()
    configure(v, guests["hello.bin"], mem=1)
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    assert v.proc.wait(timeout=20) == 0, v.output()
    assert not os.path.exists(v.sock)
    assert v.console.read_text() == "Hello\n"


def test_kernel_on_the_command_line_starts_at_once(vmm, guests):
    v = vmm("--kernel", guests["count.bin"], "--memory", "2")
    v.wait_lines(2)
    assert v.state() == "Running"
    v.fault("PUT", "/actions", {"action_type": "InstanceStart"}, 409)
    v.stop(sig=signal.SIGINT, expect=128 + signal.SIGINT)


def first_line(v, partial):
    """The first number a restored counter prints, completing the line the snapshot cut."""
    return int(partial + v.console.read_text().split("\n", 1)[0])


def test_snapshot_create_and_load(vmm, guests, tmp_path):
    v = vmm()
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    v.wait_lines(5)
    v.ok("PATCH", "/vm", {"state": "Paused"})
    time.sleep(0.2)
    state, mem = str(tmp_path / "snap.state"), str(tmp_path / "snap.mem")
    v.ok("PUT", "/snapshot/create", {"snapshot_path": state, "mem_file_path": mem, "snapshot_type": "Full"})
    v.fault("PUT", "/snapshot/create", {"snapshot_path": "/nonexistent/dir/s", "mem_file_path": mem}, 400,
            "/nonexistent/dir")
    # the pause may fall between two digits of a number: the snapshot holds the rest of that line
    printed = v.console.read_text()
    last, partial = int(v.lines()[-1]), printed[printed.rfind("\n") + 1:]
    v.ok("PATCH", "/vm", {"state": "Resumed"})
    v.wait_lines(last + 2)
    v.stop(expect=128 + signal.SIGTERM)

    # a fresh process: load and resume; the count goes on from where the snapshot was taken
    w = vmm()
    w.fault("PUT", "/snapshot/load", {"snapshot_path": state + ".nope", "mem_file_path": mem}, 400, ".nope")
    assert w.state() == "Not started"
    w.ok("PUT", "/snapshot/load", {"snapshot_path": state,
                                   "mem_backend": {"backend_type": "File", "backend_path": mem},
                                   "resume_vm": True})
    assert w.state() == "Running"
    w.wait_lines(3)
    assert first_line(w, partial) == last + 1, (last, partial, w.lines()[:3])
    assert w.ok("GET", "/")["config"]["machine-config"]["mem_size_mib"] == 2
    w.stop(expect=128 + signal.SIGTERM)

    # load paused: nothing runs until Resumed
    x = vmm()
    x.ok("PUT", "/snapshot/load", {"snapshot_path": state, "mem_file_path": mem})
    assert x.state() == "Paused"
    time.sleep(0.5)
    assert x.lines() == []
    x.ok("PATCH", "/vm", {"state": "Resumed"})
    x.wait_lines(1)
    assert first_line(x, partial) == last + 1, (last, partial, x.lines()[:3])
    x.stop(expect=128 + signal.SIGTERM)


def test_drives_and_runtime_rate_limits(vmm, guests, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    data = tmp_path / "data.img"
    data.write_bytes(b"\0" * 4096)
    v = vmm()
    v.fault("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(tmp_path / "nope")}, 400,
            'drive "rootfs": disk ' + str(tmp_path / "nope"))
    v.fault("PUT", "/drives/" + "x" * 21, {"drive_id": "x" * 21, "path_on_host": str(disk)}, 400, "at most 20 bytes")
    v.ok("PUT", "/drives/data", {"drive_id": "data", "path_on_host": str(data), "is_read_only": True})
    v.ok("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(disk), "is_root_device": True,
                                   "rate_limiter": {"bandwidth": {"size": 1 << 20, "refill_time": 1000}}})
    drives = v.ok("GET", "/")["config"]["drives"]
    assert [d["drive_id"] for d in drives] == ["rootfs", "data"], drives  # the root device is vda
    assert drives[0]["rate_limiter"]["bandwidth"]["size"] == 1 << 20 and drives[1]["is_read_only"]
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    v.wait_lines(2)
    # drives are configuration: fixed once the VM runs
    v.fault("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(disk)}, 409)
    v.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {
        "bandwidth": {"size": 4 << 20, "one_time_burst": 1 << 20, "refill_time": 500},
        "ops": {"size": 100, "refill_time": 1000}}})
    rl = v.ok("GET", "/")["config"]["drives"][0]["rate_limiter"]
    assert rl == {"bandwidth": {"size": 4 << 20, "one_time_burst": 1 << 20, "refill_time": 500},
                  "ops": {"size": 100, "one_time_burst": 0, "refill_time": 1000}}, rl
    v.ok("PATCH", "/drives/data", {"drive_id": "data", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}})
    dev = v.ok("GET", "/metrics")["devices"]
    blks = sorted(k for k in dev if dev[k].get("device_id") == 2)
    assert len(blks) == 2, dev  # both disks, not driven by this guest
    assert all(not dev[k]["driver_ok"] and dev[k]["interrupts"] == 0 for k in blks), dev
    v.fault("PATCH", "/drives/data", {"drive_id": "rootfs", "rate_limiter": {}}, 400, "does not match")
    v.wait_lines(len(v.lines()) + 2)
    v.stop(expect=128 + signal.SIGTERM)


def test_network_interfaces_and_runtime_rate_limits(vmm, guests):
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")
    # a private network namespace: the TAP the VMM creates is nobody else's business
    v = vmm(prefix=("unshare", "--net", "--"))
    lim = {"bandwidth": {"size": 1 << 20, "refill_time": 100}}
    v.fault("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tapapi0",
                                                "guest_mac": "01:00:5e:00:00:01"}, 400, "guest_mac")
    v.fault("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tapapi0",
                                                "rx_rate_limiter": lim}, 400, "given together and be equal")
    v.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tapapi0",
                                             "guest_mac": "06:00:ac:10:00:02",
                                             "rx_rate_limiter": lim, "tx_rate_limiter": lim})
    v.fault("PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "tapapi0"}, 400,
            'already "eth0"')
    v.ok("PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "tapapi1"})
    nets = v.ok("GET", "/")["config"]["network-interfaces"]
    assert [(n["iface_id"], n["host_dev_name"]) for n in nets] == [("eth0", "tapapi0"), ("eth1", "tapapi1")]
    assert nets[0]["guest_mac"] == "06:00:ac:10:00:02" and nets[0]["rx_rate_limiter"]["bandwidth"]["size"] == 1 << 20
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    v.wait_lines(2)
    links = subprocess.run(["nsenter", "-t", str(v.proc.pid), "-n", "ip", "-o", "link"], capture_output=True,
                           text=True).stdout
    assert "tapapi0" in links and "tapapi1" in links, links
    new = {"bandwidth": {"size": 4096, "one_time_burst": 0, "refill_time": 10}, "ops": None}
    v.ok("PATCH", "/network-interfaces/eth1", {"iface_id": "eth1",
                                               "rx_rate_limiter": {"bandwidth": new["bandwidth"]},
                                               "tx_rate_limiter": {"bandwidth": new["bandwidth"]}})
    nets = v.ok("GET", "/")["config"]["network-interfaces"]
    assert nets[1]["rx_rate_limiter"] == new and nets[1]["tx_rate_limiter"] == new, nets
    v.fault("PATCH", "/network-interfaces/eth1", {"iface_id": "eth1", "tx_rate_limiter": new}, 400)
    v.fault("PATCH", "/network-interfaces/eth9", {"iface_id": "eth9", "tx_rate_limiter": {"ops": {"size": 1,
            "refill_time": 1}}}, 404)
    dev = v.ok("GET", "/metrics")["devices"]
    nics = [d for d in dev.values() if isinstance(d, dict) and d.get("device_id") == 1]
    assert len(nics) == 2 and all(n["tx_packets"] == 0 and n["rx_dropped"] >= 0 for n in nics), dev
    v.stop(expect=128 + signal.SIGTERM)


def test_vsock(vmm, guests, tmp_path):
    v = vmm()
    uds = str(tmp_path / "v.sock")
    v.ok("PUT", "/vsock", {"guest_cid": 7, "uds_path": uds})
    assert v.ok("GET", "/")["config"]["vsock"] == {"guest_cid": 7, "uds_path": uds}
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    v.wait_lines(2)
    assert stat.S_ISSOCK(os.stat(uds).st_mode), "the vsock device listens on uds_path"
    dev = v.ok("GET", "/metrics")["devices"]
    assert [k for k, d in dev.items() if isinstance(d, dict) and d.get("device_id") == 19], dev
    v.fault("PUT", "/vsock", {"guest_cid": 8, "uds_path": uds}, 409)
    v.stop(expect=128 + signal.SIGTERM)
    assert not os.path.exists(uds)


def test_curl_drives_the_api(vmm, guests):
    curl = "/usr/bin/curl"
    if not os.path.exists(curl):
        pytest.skip("needs curl (scripts/install-deps)")
    v = vmm()

    def c(*args):
        p = subprocess.run([curl, "-sS", "--unix-socket", v.sock, "-w", "\n%{http_code}", *args],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        body, code = p.stdout.rsplit("\n", 1)
        return int(code), body

    code, body = c("http://localhost/")
    assert code == 200 and json.loads(body)["state"] == "Not started"
    # curl -d says application/x-www-form-urlencoded; the body is JSON all the same
    assert c("-X", "PUT", "http://localhost/boot-source", "-d",
             json.dumps({"kernel_image_path": guests["count.bin"]}))[0] == 204
    assert c("-X", "PUT", "http://localhost/machine-config", "-H", "Content-Type: application/json", "-d",
             '{"vcpu_count": 1, "mem_size_mib": 2}')[0] == 204
    assert c("-X", "PUT", "http://localhost/actions", "-d", '{"action_type": "InstanceStart"}')[0] == 204
    # a body over curl's Expect: 100-continue threshold
    code, body = c("-X", "PUT", "http://localhost/actions", "-d",
                   json.dumps({"action_type": "InstanceStart", "pad": "x" * 2000}))
    assert code == 400 and "actions.pad: unknown field" in body
    code, body = c("-X", "PATCH", "http://localhost/vm", "-d", '{"state": "Paused"}')
    assert code == 204
    code, body = c("http://localhost/metrics")
    assert code == 200 and json.loads(body)["state"] == "Paused"
    v.stop(expect=128 + signal.SIGTERM)


def test_sigkill_leaves_a_stale_socket_the_next_run_replaces(vmm, guests):
    v = vmm()
    v.proc.kill()
    v.proc.wait()
    old = os.stat(v.sock)
    assert stat.S_ISSOCK(old.st_mode)  # nothing runs on SIGKILL
    w = Vmm(v.console.parent, "--log-level", "warn")  # same path
    deadline = time.monotonic() + 10
    while "a socket nobody listens on" not in w.output() or os.stat(w.sock).st_ino == old.st_ino:
        assert time.monotonic() < deadline and w.proc.poll() is None, w.output()
        time.sleep(0.05)
    assert "removing " + v.sock + ", a socket nobody listens on" in w.output()
    assert w.state() == "Not started"
    # a live VMM's socket is never taken over
    p = subprocess.run([VMM, "--api-sock", w.sock], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and "already exists (and is not a stale socket)" in p.stderr, p.stderr
    w.stop(expect=128 + signal.SIGTERM)
    w.log.close()


def test_socket_path_refusals(tmp_path, guests):
    taken = tmp_path / "taken.sock"
    taken.write_text("not mine")
    p = subprocess.run([VMM, "--api-sock", str(taken)], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and "already exists" in p.stderr, p.stderr
    assert taken.read_text() == "not mine"
    p = subprocess.run([VMM, "--api-sock", str(tmp_path / ("x" * 120))], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and "a path of 1..91 bytes" in p.stderr, p.stderr
    # a kernel that fails before the VM exists: error, and the socket is gone too
    sock = tmp_path / "api.sock"
    p = subprocess.run([VMM, "--api-sock", str(sock), "--kernel", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=20)
    assert p.returncode == 1 and "No such file" in p.stderr, p.stderr
    assert not sock.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["guests", "taken.sock"], "temporary socket left behind"


def snapshot_with_devices(vmm, guests, tmp_path):
    """Runs the counter with a disk and a vsock, pauses it, snapshots it and stops it while paused
    (the paused devices' I/O threads must let go: this once hung in their join).
    Returns (disk, vsock socket path, load body)."""
    disk, uds = tmp_path / "disk.img", str(tmp_path / "v.sock")
    disk.write_bytes(b"\0" * (1 << 20))
    v = vmm()
    v.ok("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(disk), "is_root_device": True})
    v.ok("PUT", "/vsock", {"guest_cid": 3, "uds_path": uds})
    configure(v, guests["count.bin"])
    v.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    v.wait_lines(3)
    v.ok("PATCH", "/vm", {"state": "Paused"})
    state, mem = str(tmp_path / "snap.state"), str(tmp_path / "snap.mem")
    v.ok("PUT", "/snapshot/create", {"snapshot_path": state, "mem_file_path": mem})
    t0 = time.monotonic()
    v.stop(expect=128 + signal.SIGTERM)
    assert time.monotonic() - t0 < 10 and not os.path.exists(uds)
    return disk, uds, {"snapshot_path": state, "mem_file_path": mem}


def test_snapshot_load_overrides_run_two_clones_at_once(vmm, guests, tmp_path):
    """PUT /snapshot/load with drive_overrides (a cella extension) and vsock_override (Firecracker's):
    two clones of one snapshot run at once, each on its own disk copy and socket. Overrides naming
    what the snapshot lacks are refused with 400 and leave the process ready for a good load."""
    disk, uds, load = snapshot_with_devices(vmm, guests, tmp_path)
    os.unlink(disk)  # only the copies exist now

    load["resume_vm"] = True
    clones = []
    for i in (1, 2):
        copy, sock = tmp_path / f"disk{i}.img", str(tmp_path / f"v{i}.sock")
        copy.write_bytes(b"\0" * (1 << 20))
        w = vmm()
        w.fault("PUT", "/snapshot/load", {**load, "drive_overrides": [{"drive_id": "data", "path_on_host": str(copy)}]},
                400, 'disk override "data": the snapshot has no such disk (its disks: vda (id rootfs))')
        w.fault("PUT", "/snapshot/load", {**load, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "t0"}]},
                400, 'network override "eth0": the snapshot has no such interface')
        w.fault("PUT", "/snapshot/load", {**load, "drive_overrides": [{"drive_id": "rootfs",
                "path_on_host": str(tmp_path / "nope.img")}]}, 400, "nope.img: No such file or directory")
        w.fault("PUT", "/snapshot/load", {**load, "vsock_override": {"uds_path": sock, "guest_cid": 4}}, 400,
                "guest_cid")
        assert w.state() == "Not started" and not os.path.exists(sock)
        w.ok("PUT", "/snapshot/load", {**load, "drive_overrides": [{"drive_id": "rootfs", "path_on_host": str(copy)}],
                                       "vsock_override": {"uds_path": sock}})
        clones.append((w, copy, sock))
    for w, copy, sock in clones:
        assert w.state() == "Running"
        w.wait_lines(3)
        cfg = w.ok("GET", "/")["config"]
        assert cfg["drives"][0]["path_on_host"] == str(copy) and cfg["vsock"]["uds_path"] == sock, cfg
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
    n = [len(w.lines()) for w, _, _ in clones]
    for (w, _, _), k in zip(clones, n):
        w.wait_lines(k + 3)  # both count on at the same time
    for w, _, sock in clones:
        w.stop(expect=128 + signal.SIGTERM)
        assert not os.path.exists(sock)
    assert not os.path.exists(uds)


def test_paused_vm_with_devices_stops_on_sigterm(vmm, guests, tmp_path):
    """A VM paused by the API (snapshot_with_devices) or loaded paused holds its devices' I/O
    threads; SIGTERM still ends it at once."""
    disk, uds, load = snapshot_with_devices(vmm, guests, tmp_path)
    w = vmm()
    w.ok("PUT", "/snapshot/load", load)
    assert w.state() == "Paused" and stat.S_ISSOCK(os.stat(uds).st_mode)
    t0 = time.monotonic()
    w.stop(expect=128 + signal.SIGTERM)
    assert time.monotonic() - t0 < 10 and not os.path.exists(uds)
