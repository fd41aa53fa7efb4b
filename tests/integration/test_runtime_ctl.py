"""cella ps, pause/resume, update and events: runc's output formats and errors, effects visible in
the cgroup files and in the processes."""
import json
import os
import time

import pytest

from cella_rt import rt  # noqa: F401  (fixture)


def start(rt, args=("sleep", "300"), edit=None):
    b = rt.bundle(list(args), edit=edit)
    cid = rt.new_id()
    rt.ok("run", "-d", "--bundle", b, cid)
    return cid


def cg_dir(pid, controller):
    """The host directory of pid's cgroup for a v1 controller (or the v2 one with controller "")."""
    for line in open(f"/proc/{pid}/cgroup"):
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        if controller in ctrls.split(","):
            for mount in (f"/sys/fs/cgroup/{ctrls}", f"/sys/fs/cgroup/{controller}"):
                if os.path.isdir(mount + path):
                    return mount + path
        if ctrls == "" and controller == "" :
            for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
                if os.path.isfile(mount + path + "/cgroup.procs"):
                    return mount + path
    return None


def read(path):
    with open(path) as f:
        return f.read().strip()


def test_ps_json_and_table(rt):
    cid = start(rt)
    init = rt.state(cid)["pid"]
    pf = rt.tmp / "p"
    rt.ok("exec", "-d", "--pid-file", pf, cid, "sleep", "200")
    extra = int(pf.read_text())
    pids = json.loads(rt.ok("ps", "--format", "json", cid).stdout)
    assert pids == sorted([init, extra]), pids
    out = rt.ok("ps", cid).stdout.splitlines()
    assert out[0].split()[:2] == ["UID", "PID"]
    assert sorted(int(l.split()[1]) for l in out[1:]) == sorted([init, extra])
    assert any("sleep 200" in l for l in out[1:])
    # ps options after the id go to ps.
    out = rt.ok("ps", cid, "-o", "pid,comm").stdout.splitlines()
    assert out[0].split() == ["PID", "COMMAND"] and len(out) == 3
    r = rt.cmd("ps", "--format", "xml", cid)
    assert r.returncode == 1 and "invalid format option" in r.stderr
    rt.ok("kill", cid, "KILL")
    rt.wait_status(cid, "stopped")
    r = rt.cmd("ps", cid)
    assert r.returncode == 1 and "container not running" in r.stderr
    rt.ok("delete", cid)
    r = rt.cmd("ps", cid)
    assert r.returncode == 1 and "container does not exist" in r.stderr


def ticks(pid):
    """utime+stime of a process (clock ticks)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def test_pause_resume(rt):
    # A busy loop: its CPU time only grows while it is not frozen.
    cid = start(rt, args=("sh", "-c", "while :; do :; done"))
    init = rt.state(cid)["pid"]
    time.sleep(0.3)
    rt.ok("pause", cid)
    assert rt.state(cid)["status"] == "paused"
    lst = json.loads(rt.ok("list", "--format", "json").stdout)
    assert [c["status"] for c in lst if c["id"] == cid] == ["paused"]
    assert "paused" in rt.ok("list").stdout
    t0 = ticks(init)
    time.sleep(0.5)
    assert ticks(init) == t0, "a paused container kept running"
    # runc's errors.
    r = rt.cmd("pause", cid)
    assert r.returncode == 1 and r.stderr.strip() == "cella: container not running"
    r = rt.cmd("exec", cid, "true")
    assert r.returncode == 255 and "cannot exec in a paused state" in r.stderr
    r = rt.cmd("delete", cid)
    assert r.returncode == 1 and r.stderr.strip() == f"cella: cannot delete container {cid} that is not stopped: paused"
    rt.ok("resume", cid)
    assert rt.state(cid)["status"] == "running"
    t1 = ticks(init)
    end = time.time() + 5
    while ticks(init) == t1 and time.time() < end:
        time.sleep(0.05)
    assert ticks(init) > t1, "resumed container does not run"
    r = rt.cmd("resume", cid)
    assert r.returncode == 1 and r.stderr.strip() == "cella: container not paused"
    # delete --force of a paused container kills and thaws it (no busy cgroup left).
    rt.ok("pause", cid)
    rt.ok("delete", "-f", cid)
    assert rt.cmd("state", cid).returncode == 1


def test_update_flags_visible_in_cgroup_files(rt):
    cid = start(rt)
    init = rt.state(cid)["pid"]
    mem, pids, cpu = cg_dir(init, "memory"), cg_dir(init, "pids"), cg_dir(init, "cpu")
    if not (mem and pids and cpu):
        pytest.skip("needs the memory, pids and cpu controllers")
    v2 = os.path.exists(os.path.join(mem, "memory.max"))
    rt.ok("update", "--memory", "64m", "--memory-reservation", "32M", "--pids-limit", "42",
          "--cpu-quota", "50000", "--cpu-period", "100000", "--cpu-shares", "512", cid)
    if v2:
        assert read(f"{mem}/memory.max") == str(64 << 20)
        assert read(f"{pids}/pids.max") == "42"
        assert read(f"{cpu}/cpu.max") == "50000 100000"
    else:
        assert read(f"{mem}/memory.limit_in_bytes") == str(64 << 20)
        assert read(f"{mem}/memory.soft_limit_in_bytes") == str(32 << 20)
        assert read(f"{pids}/pids.max") == "42"
        assert read(f"{cpu}/cpu.cfs_quota_us") == "50000"
        assert read(f"{cpu}/cpu.cfs_period_us") == "100000"
        assert read(f"{cpu}/cpu.shares") == "512"
    # runc's --cpu-share spelling, cpuset, and unlimited values.
    rt.ok("update", "--cpu-share", "256", "--pids-limit", "-1", "--cpuset-cpus", "0", cid)
    assert read(f"{pids}/pids.max") == "max"
    if not v2:
        assert read(f"{cpu}/cpu.shares") == "256"
    cpuset = cg_dir(init, "cpuset")
    if cpuset:
        assert read(f"{cpuset}/cpuset.cpus") == "0"
    # -r FILE and -r - (stdin): linux.resources JSON.
    res = rt.tmp / "res.json"
    res.write_text(json.dumps({"memory": {"limit": 48 << 20}, "pids": {"limit": 9}}))
    rt.ok("update", "-r", res, cid)
    assert read(f"{pids}/pids.max") == "9"
    assert read(f"{mem}/{'memory.max' if v2 else 'memory.limit_in_bytes'}") == str(48 << 20)
    with open(res, "w") as f:
        f.write(json.dumps({"pids": {"limit": 11}}))
    with open(res) as f:
        rt.ok("update", "-r", "-", cid, stdin=f)
    assert read(f"{pids}/pids.max") == "11"
    # The process feels the pids limit.
    rt.ok("update", "--pids-limit", "3", cid)
    r = rt.cmd("exec", cid, "sh", "-c", "sleep 5 & sleep 5 & sleep 5 & wait")
    assert r.returncode != 0 or "fork" in r.stderr.lower() or "resource" in r.stderr.lower(), r
    # Bad input.
    r = rt.cmd("update", "--memory", "12x", cid)
    assert r.returncode == 1 and "invalid value for memory: invalid size: '12x'" in r.stderr, r
    res.write_text(json.dumps({"memory": {"limit": "1G"}}))
    r = rt.cmd("update", "-r", res, cid)
    assert r.returncode == 1 and "linux.resources.memory.limit: expected integer" in r.stderr, r
    r = rt.cmd("update", "--cpuset-cpus", "a-b", cid)
    assert r.returncode == 1 and "invalid cpu list" in r.stderr, r
    rt.ok("delete", "-f", cid)
    r = rt.cmd("update", "--pids-limit", "5", cid)
    assert r.returncode == 1 and "container does not exist" in r.stderr


def test_events_stats(rt):
    cid = start(rt, edit=lambda c: c["linux"].setdefault("resources", {}).update(
        memory={"limit": 100 << 20}, pids={"limit": 50}))
    r = rt.ok("events", "--stats", cid)
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    ev = json.loads(lines[0])
    assert ev["type"] == "stats" and ev["id"] == cid
    d = ev["data"]
    for key in ("cpu", "memory", "pids", "blkio", "hugetlb"):
        assert key in d, key
    assert d["pids"]["current"] >= 1 and d["pids"]["limit"] == 50
    assert d["memory"]["usage"]["limit"] == 100 << 20
    assert d["memory"]["usage"]["usage"] > 0
    assert isinstance(d["memory"]["raw"], dict) and d["memory"]["raw"]
    assert d["cpu"]["usage"]["total"] > 0
    assert "throttling" in d["cpu"]
    # Streaming: one event per interval until the container stops.
    import subprocess
    from cella_rt import CELLA
    p = subprocess.Popen([str(CELLA), "--root", str(rt.root), "events", "--interval", "100ms", cid],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(p.stdout.readline())
    second = json.loads(p.stdout.readline())
    assert first["type"] == second["type"] == "stats"
    rt.ok("kill", cid, "KILL")
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    r = rt.cmd("events", "--interval", "0s", cid)
    assert r.returncode == 1 and "interval" in r.stderr
    rt.ok("delete", "-f", cid)
    r = rt.cmd("events", "--stats", cid)
    assert r.returncode == 1 and "container does not exist" in r.stderr


def test_events_reports_oom(rt):
    import subprocess
    from cella_rt import CELLA
    cid = start(rt, edit=lambda c: c["linux"].setdefault("resources", {}).update(memory={"limit": 16 << 20}))
    p = subprocess.Popen([str(CELLA), "--root", str(rt.root), "events", "--interval", "100ms", cid],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)
    r = rt.cmd("exec", cid, "sh", "-c", "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo survived")
    assert r.returncode == 137 and "survived" not in r.stdout, r
    time.sleep(0.5)
    rt.ok("kill", cid, "KILL")
    out, err = p.communicate(timeout=10)
    events = [json.loads(l) for l in out.splitlines()]
    assert {"type": "oom", "id": cid} in events, out
    assert any(e["type"] == "stats" for e in events)
    rt.ok("delete", "-f", cid)
