"""Lifecycle hooks: each phase runs at its moment, in its namespace, with the state on stdin and
its own args/env; timeouts kill the hook; create-phase failures leave nothing behind and
poststart/poststop failures are only warnings."""
import json
import os
import time

from cella_rt import rt  # noqa: F401  (fixture)


def hook_script(rt, name, body):
    p = rt.tmp / f"{name}.sh"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)
    return str(p)


def marker_dir(rt):
    d = rt.tmp / "marks"
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o777)
    return d


def recorder(rt, phase, d):
    """A host hook that stores its stdin, args, env and namespaces under d/phase.*"""
    return {"path": hook_script(rt, phase, f'cat > {d}/{phase}.state; echo "$@" > {d}/{phase}.args; '
                                           f'echo "$MARK" > {d}/{phase}.env; '
                                           f'readlink /proc/self/ns/mnt > {d}/{phase}.mnt; '
                                           f'readlink /proc/self/ns/pid > {d}/{phase}.pid; '
                                           f'test -d {rt.tmp} && echo host-paths > {d}/{phase}.paths; '
                                           f'pid=$(sed \'s/.*"pid":\\([0-9]*\\).*/\\1/\' {d}/{phase}.state); '
                                           f'cat /proc/$pid/mountinfo > {d}/{phase}.mountinfo'),
            "args": [phase, "a1", "a2"], "env": ["MARK=mark-" + phase], "timeout": 10}


def bundle_with_hooks(rt, hooks, args, d, name="bundle"):
    def edit(c):
        c["hooks"] = hooks
        c["mounts"].append({"destination": "/mnt", "type": "bind", "source": str(d), "options": ["rbind", "rw"]})
    return rt.bundle(args, name=name, edit=edit)


def read(d, f):
    return (d / f).read_text().strip()


def test_all_phases_run_in_order_and_namespace(rt):
    d = marker_dir(rt)
    hooks = {p: [recorder(rt, p, d)] for p in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")}
    # startContainer resolves in the container: the rootfs's busybox sh.
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /mnt/startContainer.state; "
                                                            "readlink /proc/self/ns/mnt > /mnt/startContainer.mnt; "
                                                            "echo $MARK > /mnt/startContainer.env"],
                                "env": ["MARK=in-container"]}]
    b = bundle_with_hooks(rt, hooks, ["sh", "-c", "cat /mnt/startContainer.env > /mnt/process.saw; sleep 30"], d)
    cid = rt.new_id()
    rt.ok("create", "--bundle", b, cid)
    pid = rt.state(cid)["pid"]
    host_mnt, host_pid = os.readlink("/proc/self/ns/mnt"), os.readlink("/proc/self/ns/pid")
    for p in ("prestart", "createRuntime"):
        st = json.loads(read(d, f"{p}.state"))
        assert st["id"] == cid and st["status"] == "creating" and st["pid"] == pid, st
        assert st["bundle"] == str(b)
        assert read(d, f"{p}.args") == "a1 a2" and read(d, f"{p}.env") == f"mark-{p}"
        assert read(d, f"{p}.mnt") == host_mnt and read(d, f"{p}.pid") == host_pid
        # After the container's mounts are set up, before pivot_root (as runc runs them).
        points = [l.split()[4] for l in read(d, f"{p}.mountinfo").splitlines()]
        assert os.path.realpath(b / "rootfs") + "/mnt" in points, points
    st = json.loads(read(d, "createContainer.state"))
    assert st["id"] == cid and st["pid"] == pid
    assert read(d, "createContainer.mnt") == os.readlink(f"/proc/{pid}/ns/mnt") != host_mnt
    assert read(d, "createContainer.pid") == os.readlink(f"/proc/{pid}/ns/pid") != host_pid
    assert read(d, "createContainer.paths") == "host-paths"  # before pivot_root
    assert not (d / "startContainer.state").exists() and not (d / "poststart.state").exists()
    rt.ok("start", cid)
    assert json.loads(read(d, "poststart.state"))["status"] == "running"
    assert read(d, "poststart.mnt") == host_mnt
    for _ in range(100):
        if (d / "process.saw").exists() and read(d, "process.saw"):
            break
        time.sleep(0.05)
    assert read(d, "process.saw") == "in-container"  # startContainer ran before the process
    assert json.loads(read(d, "startContainer.state"))["id"] == cid
    assert read(d, "startContainer.mnt") == os.readlink(f"/proc/{pid}/ns/mnt")
    assert not (d / "poststop.state").exists()
    rt.ok("delete", "-f", cid)
    st = json.loads(read(d, "poststop.state"))
    assert st["id"] == cid and st["status"] == "stopped"
    assert read(d, "poststop.mnt") == host_mnt


def test_poststart_and_poststop_with_foreground_run(rt):
    d = marker_dir(rt)
    hooks = {"poststart": [recorder(rt, "poststart", d)], "poststop": [recorder(rt, "poststop", d)]}
    r = rt.run(bundle_with_hooks(rt, hooks, ["true"], d))
    assert r.returncode == 0, r
    assert (d / "poststart.state").exists() and json.loads(read(d, "poststop.state"))["status"] == "stopped"


def failing(rt, phase, code=3):
    return {"path": hook_script(rt, f"fail-{phase}", f"echo {phase} says no >&2; exit {code}")}


def test_create_phase_failures_fail_create_and_clean_up(rt):
    d = marker_dir(rt)
    for phase in ("prestart", "createRuntime", "createContainer"):
        b = bundle_with_hooks(rt, {phase: [failing(rt, phase)], "poststart": [recorder(rt, "poststart", d)]},
                              ["true"], d, name=f"b-{phase}")
        cid = rt.new_id()
        r = rt.cmd("create", "--bundle", b, cid)
        assert r.returncode != 0, r
        assert f"hooks.{phase}[0]" in r.stderr and "exited with status 3" in r.stderr, r
        assert f"{phase} says no" in r.stderr, r
        assert not (rt.root / cid).exists()
        assert rt.cmd("state", cid).returncode != 0
    assert not (d / "poststart.state").exists()


def test_start_container_failure_stops_container(rt):
    d = marker_dir(rt)
    hooks = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}]}
    b = bundle_with_hooks(rt, hooks, ["sh", "-c", "echo ran > /mnt/ran"], d)
    r = rt.run(b)
    assert r.returncode != 0 and "hooks.startContainer[0]" in r.stderr, r
    assert not (d / "ran").exists()


def test_hook_timeout_kills_hook(rt):
    d = marker_dir(rt)
    hooks = {"createRuntime": [{"path": hook_script(rt, "slow", f"sleep 30; echo late > {d}/late"), "timeout": 1}]}
    b = bundle_with_hooks(rt, hooks, ["true"], d)
    t = time.time()
    cid = rt.new_id()
    r = rt.cmd("create", "--bundle", b, cid)
    assert r.returncode != 0 and "timed out after 1 seconds" in r.stderr, r
    assert time.time() - t < 10
    assert not (rt.root / cid).exists()


def test_poststart_poststop_failures_are_warnings(rt):
    d = marker_dir(rt)
    hooks = {"poststart": [failing(rt, "poststart")], "poststop": [failing(rt, "poststop", 5)]}
    r = rt.run(bundle_with_hooks(rt, hooks, ["sh", "-c", "exit 7"], d))
    assert r.returncode == 7, r
    assert "hooks.poststart[0]" in r.stderr and "hooks.poststop[0]" in r.stderr, r


def test_features_lists_hooks(rt):
    f = json.loads(rt.ok("features").stdout)
    assert f["hooks"] == ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
