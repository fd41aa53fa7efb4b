"""What a container sees: namespaces, mounts, cgroup limits, readonly/masked paths, rlimits,
capabilities, user, env — and bad config.json files rejected before anything is created."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from cella_rt import cgroup_dirs_named, rt, status_field  # noqa: F401  (fixture)

USERNS = {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
          "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}


def run_out(rt, bundle, *extra):
    r = rt.run(bundle, *extra)
    assert r.returncode == 0, r
    return r.stdout


def test_namespaces_pid_uts_ipc_net_mount_cgroup(rt):
    script = ("echo pid=$$; hostname; cat /proc/sys/kernel/domainname; "
              "for n in ipc net mnt cgroup uts pid; do echo ns-$n=$(readlink /proc/self/ns/$n); done; "
              "ip -o link | cut -d: -f2; cat /proc/self/cgroup")
    b = rt.bundle(["sh", "-c", script], edit=lambda c: c.update(hostname="cella-test", domainname="cella.dom"))
    out = run_out(rt, b).splitlines()
    assert out[0] == "pid=1"
    assert out[1] == "cella-test" and out[2] == "cella.dom"
    for n in ("ipc", "net", "mnt", "cgroup", "uts", "pid"):
        line = next(l for l in out if l.startswith(f"ns-{n}="))
        assert line.split("=", 1)[1] != os.readlink(f"/proc/self/ns/{n}"), n
    links = [l.strip() for l in out if l.strip() in ("lo",) or l.startswith(" ")]
    assert links == ["lo"], out
    cg = [l for l in out if l.count(":") >= 2 and l.split(":")[0].isdigit()]
    assert cg and all(l.endswith(":/") for l in cg), cg  # cgroup namespace rooted at the container


def test_user_namespace_mapping(rt):
    b = rt.bundle(["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; sleep 30"],
                  edit=lambda c: (c["linux"]["namespaces"].append({"type": "user"}), c["linux"].update(USERNS)))
    cid = rt.new_id()
    rt.ok("run", "-d", "-b", b, cid)
    pid = rt.state(cid)["pid"]
    status = open(f"/proc/{pid}/status").read()
    assert status_field(status, "Uid").split()[0] == "100000"
    assert status_field(status, "Gid").split()[0] == "100000"
    rt.ok("delete", "-f", cid)
    out = [l.split() for l in run_out(rt, rt.bundle(["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g"],
                                                     name="b2", edit=lambda c: (c["linux"]["namespaces"].append({"type": "user"}),
                                                                                c["linux"].update(USERNS)))).splitlines()]
    assert out[0] == ["0", "100000", "65536"] and out[1] == ["0", "100000", "65536"]
    assert out[2] == ["0"] and out[3] == ["0"]


@pytest.fixture
def netns():
    name = f"cella-test-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("ip netns add failed")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_join_network_namespace_by_path(netns, rt):
    # netns first: `ip netns add` mounts /run/netns once per boot, before rt snapshots the mounts
    path = f"/var/run/netns/{netns}"

    def join(c):
        c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
        c["linux"]["namespaces"].append({"type": "network", "path": path})

    b = rt.bundle(["sh", "-c", "readlink /proc/self/ns/net; ip -o link show lo; echo pid=$$"], edit=join)
    out = run_out(rt, b).splitlines()
    assert out[0] == f"net:[{os.stat(path).st_ino}]"
    assert "UP" in out[1] and out[2] == "pid=1"

    def bad(c):
        join(c)
        c["linux"]["namespaces"][-1]["path"] = "/proc/self/ns/uts"
    b2 = rt.bundle(["true"], name="b2", edit=bad)
    r = rt.run(b2)
    assert r.returncode == 1 and "linux.namespaces[" in r.stderr and "not a network namespace" in r.stderr
    rt.edit_config(b2, lambda c: c["linux"]["namespaces"][-1].update(path="/nonexistent/ns"))
    r = rt.run(b2)
    assert r.returncode == 1 and "/nonexistent/ns" in r.stderr


def test_mounts_bind_ro_rw_tmpfs_propagation(rt, tmp_path):
    src = tmp_path / "hostdir"
    src.mkdir()
    (src / "hello").write_text("from the host\n")
    rw = tmp_path / "rwdir"
    rw.mkdir()
    mounts = [
        {"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind", "ro", "rprivate"]},
        {"destination": "/rw", "type": "bind", "source": str(rw), "options": ["bind", "rw", "rshared"]},
        {"destination": "/rslave", "type": "bind", "source": str(src), "options": ["bind", "ro", "rslave"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=750", "nosuid"]},
    ]
    script = ("cat /data/hello; touch /data/x 2>/dev/null && echo data-writable || echo data-ro; "
              "echo written > /rw/out; grep ' /scratch ' /proc/mounts; "
              "grep -E ' /(data|rw|rslave) ' /proc/self/mountinfo")
    b = rt.bundle(["sh", "-c", script], edit=lambda c: c["mounts"].extend(mounts))
    out = run_out(rt, b).splitlines()
    assert out[0] == "from the host" and out[1] == "data-ro"
    assert (rw / "out").read_text() == "written\n"
    assert "size=1024k" in out[2] and "nosuid" in out[2] and "mode=750" in out[2]
    info = {l.split()[4]: l for l in out[3:]}
    assert "shared:" not in info["/data"] and "master:" not in info["/data"]
    assert "shared:" in info["/rw"]
    # rslave: a slave of the host's peer group if the host mount is shared, else just not shared.
    host_shared = any(" shared:" in l for l in open("/proc/self/mountinfo") if l.split()[4] == "/")
    assert ("master:" in info["/rslave"]) == host_shared and "shared:" not in info["/rslave"]
    assert " ro," in info["/data"] or info["/data"].split()[5].startswith("ro")


def cgroup_file(pid, controller, name):
    for line in open(f"/proc/{pid}/cgroup"):
        hid, ctrls, path = line.rstrip("\n").split(":", 2)
        if controller in ctrls.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/") / name
    for line in open(f"/proc/{pid}/cgroup"):  # pure v2
        hid, ctrls, path = line.rstrip("\n").split(":", 2)
        if hid == "0":
            return Path("/sys/fs/cgroup") / path.lstrip("/") / name
    raise AssertionError(f"no {controller} cgroup for {pid}")


def test_cgroup_limits_visible_while_running(rt):
    res = {"memory": {"limit": 64 * 1024 * 1024}, "pids": {"limit": 42},
           "cpu": {"quota": 50000, "period": 100000, "cpus": "0", "shares": 512}}
    b = rt.bundle(["sleep", "60"], edit=lambda c: c["linux"].setdefault("resources", {}).update(res))
    cid = rt.new_id()
    rt.ok("run", "-d", "-b", b, cid)
    pid = rt.state(cid)["pid"]
    v1 = any(l.split(":")[1] == "memory" for l in open(f"/proc/{pid}/cgroup"))
    if v1:
        assert cgroup_file(pid, "memory", "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        assert cgroup_file(pid, "pids", "pids.max").read_text().strip() == "42"
        assert cgroup_file(pid, "cpu", "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert cgroup_file(pid, "cpu", "cpu.cfs_period_us").read_text().strip() == "100000"
        assert cgroup_file(pid, "cpu", "cpu.shares").read_text().strip() == "512"
        assert cgroup_file(pid, "cpuset", "cpuset.cpus").read_text().strip() == "0"
    else:
        assert cgroup_file(pid, "", "memory.max").read_text().strip() == str(64 << 20)
        assert cgroup_file(pid, "", "pids.max").read_text().strip() == "42"
        assert cgroup_file(pid, "", "cpu.max").read_text().split() == ["50000", "100000"]
    assert cid in open(f"/proc/{pid}/cgroup").read()
    rt.ok("delete", "--force", cid)
    assert not cgroup_dirs_named({cid})


def test_cgroup_mount_shows_own_limits(rt):
    b = rt.bundle(["sh", "-c", "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"],
                  edit=lambda c: c["linux"].setdefault("resources", {}).update(pids={"limit": 77}))
    assert run_out(rt, b).strip() == "77"


def test_readonly_root(rt):
    b = rt.bundle(["sh", "-c", "touch /newfile && echo wrote || echo ro-root; echo ok > /dev/shm/x && cat /dev/shm/x"],
                  edit=lambda c: c["root"].update(readonly=True))
    out = run_out(rt, b).splitlines()
    assert out == ["ro-root", "ok"]
    assert not (rt.tmp / "bundle/rootfs/newfile").exists()


def test_masked_and_readonly_paths(rt):
    def edit(c):
        c["linux"]["maskedPaths"] = ["/proc/kcore", "/proc/cpuinfo", "/sys/firmware", "/etc/hostname", "/no/such/path"]
        c["linux"]["readonlyPaths"] = ["/proc/sys", "/tmp", "/no/such/path"]
    # /proc/kcore only exists with CONFIG_PROC_KCORE: /proc/cpuinfo stands in where it does not.
    kcore = "/proc/kcore" if os.path.exists("/proc/kcore") else "/proc/cpuinfo"
    script = (f"echo kcore=$(wc -c < {kcore}); echo firmware=$(ls /sys/firmware | wc -l); "
              "echo hostname=$(cat /etc/hostname); touch /tmp/x 2>/dev/null && echo tmp-rw || echo tmp-ro; "
              "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo sys-rw || echo sys-ro")
    out = run_out(rt, rt.bundle(["sh", "-c", script], edit=edit)).split()
    assert out == ["kcore=0", "firmware=0", "hostname=", "tmp-ro", "sys-ro"]


def test_rlimits(rt):
    b = rt.bundle(["cat", "/proc/self/limits"], edit=lambda c: c["process"].update(
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}, {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]))
    out = run_out(rt, b)
    assert "Max open files            123                  456" in out
    assert "Max core file size        0                    0" in out


def caps_of(out):
    return {k: int(status_field(out, k), 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


def test_capabilities_all_five_sets(rt):
    chown, net_raw, nbs = 1 << 0, 1 << 13, 1 << 10
    b = rt.bundle(["cat", "/proc/self/status"], edit=lambda c: c["process"].update(capabilities={
        "bounding": ["CAP_CHOWN", "CAP_NET_RAW"], "effective": ["CAP_CHOWN", "CAP_NET_RAW"],
        "permitted": ["CAP_CHOWN", "CAP_NET_RAW"]}))
    caps = caps_of(run_out(rt, b))
    assert caps["CapEff"] == chown | net_raw and caps["CapBnd"] == chown | net_raw and caps["CapAmb"] == 0
    # A non-root user keeps capabilities across exec only through the ambient set.
    b2 = rt.bundle(["cat", "/proc/self/status"], name="b2", edit=lambda c: c["process"].update(
        user={"uid": 1000, "gid": 1000},
        capabilities={k: ["CAP_NET_BIND_SERVICE"] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")}))
    caps = caps_of(run_out(rt, b2))
    assert caps == {"CapInh": nbs, "CapPrm": nbs, "CapEff": nbs, "CapBnd": nbs, "CapAmb": nbs}


def test_no_new_privileges(rt):
    for flag, want in ((True, "1"), (False, "0")):
        b = rt.bundle(["cat", "/proc/self/status"], name=f"b{want}",
                      edit=lambda c: c["process"].update(noNewPrivileges=flag))
        assert status_field(run_out(rt, b), "NoNewPrivs") == want


def test_env_cwd_user_umask(rt):
    def edit(c):
        c["process"].update(env=["PATH=/bin:/usr/bin", "FOO=bar baz"], cwd="/work/dir",
                            user={"uid": 1000, "gid": 1001, "additionalGids": [2000, 3000], "umask": 0o077})
    out = run_out(rt, rt.bundle(["sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G; umask; echo $HOME"], edit=edit)).splitlines()
    assert out[0] == "bar baz" and out[1] == "/work/dir" and out[2] == "1000" and out[3] == "1001"
    assert set(out[4].split()) == {"1001", "2000", "3000"}
    assert out[5] == "0077" and out[6] == "/"


def test_devices_and_default_dev(rt):
    def edit(c):
        c["linux"]["devices"] = [{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600,
                                  "uid": 0, "gid": 0}]
    script = ("ls -l /dev/mynull; echo x > /dev/mynull && echo write-ok; "
              "for d in null zero full random urandom tty; do test -c /dev/$d && echo have-$d; done; "
              "for l in ptmx fd stdin; do readlink /dev/$l; done; test -d /dev/pts && test -d /dev/shm && echo dirs-ok")
    out = run_out(rt, rt.bundle(["sh", "-c", script], edit=edit)).splitlines()
    assert out[0].startswith("crw-------") and out[1] == "write-ok"
    assert out[2:8] == [f"have-{d}" for d in ("null", "zero", "full", "random", "urandom", "tty")]
    assert out[8:11] == ["pts/ptmx", "/proc/self/fd", "/proc/self/fd/0"] and out[11] == "dirs-ok"


def test_sysctl(rt):
    b = rt.bundle(["cat", "/proc/sys/net/ipv4/ip_forward"],
                  edit=lambda c: c["linux"].update(sysctl={"net.ipv4.ip_forward": "1"}))
    assert run_out(rt, b).strip() == "1"
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() in ("0", "1")  # host untouched by design


def test_no_pivot(rt):
    b = rt.bundle(["sh", "-c", "cat /etc/hostname; echo pid=$$"])
    assert run_out(rt, b, "--no-pivot").split() == ["cella", "pid=1"]


BAD_CONFIGS = [
    ("memory limit as string", lambda c: c["linux"].setdefault("resources", {}).update(memory={"limit": "1G"}),
     "linux.resources.memory.limit"),
    ("no process.args", lambda c: c["process"].pop("args"), "process.args"),
    ("unknown namespace", lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "linux.namespaces"),
    ("bad capability", lambda c: c["process"]["capabilities"].update(bounding=["CAP_NOPE"]), "process.capabilities"),
    ("bad rlimit", lambda c: c["process"].update(rlimits=[{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]),
     "process.rlimits"),
    ("bad cpuset", lambda c: c["linux"].setdefault("resources", {}).update(cpu={"cpus": "a-b"}),
     "linux.resources.cpu.cpus"),
    ("missing rootfs", lambda c: c["root"].update(path="no-such-rootfs"), "root.path"),
    ("mount not absolute", lambda c: c["mounts"].append({"destination": "rel", "type": "tmpfs", "source": "x"}),
     "mounts["),
]


@pytest.mark.parametrize("what,edit,jpath", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_one_line_nothing_left(rt, what, edit, jpath):
    b = rt.bundle(["true"], edit=edit)
    cid = rt.new_id()
    for verb in ("create", "run"):
        r = rt.cmd(verb, "--bundle", b, cid)
        assert r.returncode == 1, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cella: config.json: ") and jpath in lines[0], r.stderr
        assert not (rt.root / cid).exists()
        assert not cgroup_dirs_named({cid})


def test_bad_json_syntax(rt):
    b = rt.bundle(["true"])
    (b / "config.json").write_text('{"ociVersion": "1.2.0", "process": ')
    r = rt.cmd("run", "--bundle", b, rt.new_id())
    assert r.returncode == 1 and r.stderr.startswith("cella: config.json: ") and len(r.stderr.splitlines()) == 1


def test_join_pid_namespace_and_time_namespace(rt):
    a = rt.new_id()
    rt.ok("run", "-d", "-b", rt.bundle(["sleep", "60"]), a)
    pid = rt.state(a)["pid"]

    def join(c):
        c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "pid"]
        c["linux"]["namespaces"].append({"type": "pid", "path": f"/proc/{pid}/ns/pid"})
    out = run_out(rt, rt.bundle(["sh", "-c", "echo pid=$$; ps -o comm"], name="b2", edit=join)).split()
    assert out[0] != "pid=1" and "sleep" in out  # sees the first container's init
    rt.ok("delete", "--force", a)

    b = rt.bundle(["readlink", "/proc/self/ns/time"], name="b3",
                  edit=lambda c: c["linux"]["namespaces"].append({"type": "time"}))
    if not os.path.exists("/proc/self/ns/time"):
        pytest.skip("no time namespaces on this kernel")
    assert run_out(rt, b).strip() != os.readlink("/proc/self/ns/time")
