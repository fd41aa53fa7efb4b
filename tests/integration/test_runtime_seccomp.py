"""linux.seccomp: actions (errno with errnoRet and defaultErrnoRet, kill), argument conditions,
unknown syscall names, flags and architectures, and what `features` reports."""
import json

from cella_rt import rt, seccomp_agent  # noqa: F401  (rt: fixture)

# Enough for busybox sh and its applets under a default-deny filter.
ALLOW = ["read", "write", "open", "openat", "close", "stat", "fstat", "lstat", "newfstatat", "statx", "poll",
         "lseek", "mmap", "mprotect", "munmap", "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
         "ioctl", "pread64", "readv", "writev", "access", "faccessat", "faccessat2", "pipe", "pipe2", "dup",
         "dup2", "dup3", "getpid", "getppid", "fork", "vfork", "clone", "clone3", "execve", "exit",
         "exit_group", "wait4", "kill", "uname", "fcntl", "getcwd", "chdir", "fchdir", "getuid", "getgid",
         "geteuid", "getegid", "getdents64", "arch_prctl", "set_tid_address", "set_robust_list",
         "prlimit64", "getrandom", "futex", "nanosleep", "clock_nanosleep", "getpgrp", "setpgid", "rseq",
         "readlink", "readlinkat", "sigaltstack", "umask", "gettid", "tgkill", "getpgid", "setsid",
         "sendmsg", "recvmsg", "sendto", "recvfrom", "madvise", "mremap", "sched_yield", "getrlimit"]


def with_seccomp(sc, nnp=True):
    def edit(c):
        c["linux"]["seccomp"] = sc
        c["process"]["noNewPrivileges"] = nnp
    return edit


def mkdir_cmd(path="/dev/shm/d"):
    return ["sh", "-c", f"mkdir {path}; echo rc=$?"]


def test_errno_eperm_for_mkdir(rt):
    sc = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    r = rt.run(rt.bundle(mkdir_cmd(), edit=with_seccomp(sc)))
    assert r.returncode == 0, r
    assert "Operation not permitted" in r.stderr and "rc=1" in r.stdout, r
    # The same with no_new_privs off (the filter is loaded while the init still has CAP_SYS_ADMIN).
    r = rt.run(rt.bundle(mkdir_cmd(), name="b2", edit=with_seccomp(sc, nnp=False)))
    assert "Operation not permitted" in r.stderr and "rc=1" in r.stdout, r


def test_errno_ret_custom_value(rt):
    sc = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28}]}
    r = rt.run(rt.bundle(mkdir_cmd(), edit=with_seccomp(sc)))
    assert "No space left on device" in r.stderr and "rc=1" in r.stdout, r


def test_default_action_errno_with_default_errno_ret(rt):
    sc = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 18, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86",
                                                                                        "SCMP_ARCH_X32"],
          "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
          "syscalls": [{"names": ALLOW, "action": "SCMP_ACT_ALLOW"}]}
    r = rt.run(rt.bundle(["sh", "-c", "echo in; mkdir /dev/shm/d; echo rc=$?"], edit=with_seccomp(sc)))
    assert r.returncode == 0, r
    assert "in\n" in r.stdout and "rc=1" in r.stdout, r
    assert "Invalid cross-device link" in r.stderr, r


def test_argument_conditions(rt):
    # chmod is refused when the mode has the other-write bit (MASKED_EQ) or equals 0700 (EQ).
    sc = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [
              {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 1, "value": 2, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]},
              {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 2, "value": 2, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]},
              {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 1, "value": 0o700, "op": "SCMP_CMP_EQ"}]},
              {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 2, "value": 0o700, "op": "SCMP_CMP_EQ"}]}]}
    script = ("touch /dev/shm/f; for m in 755 757 700 644 666; do chmod $m /dev/shm/f 2>/dev/null; "
              "echo $m=$?; done")
    r = rt.run(rt.bundle(["sh", "-c", script], edit=with_seccomp(sc)))
    assert r.returncode == 0, r
    assert r.stdout.split() == ["755=0", "757=1", "700=1", "644=0", "666=1"], r


def test_unknown_syscall_name_skipped(rt):
    sc = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["no_such_syscall_cella", "mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    r = rt.run(rt.bundle(mkdir_cmd(), edit=with_seccomp(sc)), global_args=("--debug",))
    assert "Operation not permitted" in r.stderr and "rc=1" in r.stdout, r
    assert "no_such_syscall_cella" in r.stderr, r


def test_kill_action_kills_with_sigsys(rt):
    for i, act in enumerate(["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD"]):
        sc = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": act}]}
        r = rt.run(rt.bundle(["mkdir", "/dev/shm/d"], name=f"b{i}", edit=with_seccomp(sc)))
        assert r.returncode == 159, (act, r)  # 128 + SIGSYS


def test_trap_action(rt):
    sc = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_TRAP"}]}
    r = rt.run(rt.bundle(["mkdir", "/dev/shm/d"], edit=with_seccomp(sc)))
    assert r.returncode == 159, r


def test_log_and_trace_actions(rt):
    # LOG allows (and logs); TRACE without a tracer fails the syscall with ENOSYS.
    sc = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_LOG"},
                       {"names": ["rmdir", "unlinkat"], "action": "SCMP_ACT_TRACE"}]}
    r = rt.run(rt.bundle(["sh", "-c", "mkdir /dev/shm/d && echo made; rmdir /dev/shm/d; echo rc=$?"],
                         edit=with_seccomp(sc)))
    assert "made" in r.stdout and "rc=1" in r.stdout, r


def test_bad_seccomp_fails_cleanly(rt):
    sc = {"defaultAction": "SCMP_ACT_ALLOW",
          "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}
    r = rt.run(rt.bundle(["true"], edit=with_seccomp(sc)))
    assert r.returncode != 0 and "errnoRet" in r.stderr, r
    sc = {"defaultAction": "SCMP_ACT_BOGUS"}
    r = rt.run(rt.bundle(["true"], name="b2", edit=with_seccomp(sc)))
    assert r.returncode != 0 and "linux.seccomp.defaultAction" in r.stderr, r


def test_features_reports_seccomp(rt):
    f = json.loads(rt.ok("features").stdout)["linux"]["seccomp"]
    assert f["enabled"] is True
    assert "SCMP_ACT_ERRNO" in f["actions"] and "SCMP_CMP_MASKED_EQ" in f["operators"]
    assert "SCMP_ARCH_X86_64" in f["archs"] and "SECCOMP_FILTER_FLAG_LOG" in f["knownFlags"]


def _notify_agent(path, got, answers):
    """The seccomp agent answering mkdir and mkdirat with ENOSPC, letting anything else go on."""
    return seccomp_agent(path, got, answers, errno_for=lambda nr: 28 if nr in (83, 258) else 0)


def test_notify_listener_gets_fd_and_answers(rt):
    sock = rt.tmp / "agent.sock"
    got = {}
    t = _notify_agent(sock, got, [1])
    sc = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": str(sock), "listenerMetadata": "meta-cella",
          "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    cid = rt.new_id()
    r = rt.run(rt.bundle(mkdir_cmd(), edit=with_seccomp(sc)), cid=cid)
    t.join(10)
    assert "error" not in got, got
    assert r.returncode == 0 and "No space left on device" in r.stderr and "rc=1" in r.stdout, r
    st = got["states"][0]
    assert st["fds"] == ["seccompFd"] and st["metadata"] == "meta-cella", st
    assert st["state"]["id"] == cid and st["pid"] == st["state"]["pid"] > 0, st


def test_notify_listener_missing_fails_create_cleanly(rt):
    sc = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": str(rt.tmp / "nobody.sock"),
          "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    cid = rt.new_id()
    r = rt.cmd("create", "--bundle", rt.bundle(["true"], edit=with_seccomp(sc)), cid)
    assert r.returncode != 0 and "listenerPath" in r.stderr, r
    assert not (rt.root / cid).exists()


def test_notify_with_exec(rt):
    sock = rt.tmp / "agent.sock"
    got = {}
    t = _notify_agent(sock, got, [0, 1])
    sc = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": str(sock),
          "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    cid = rt.new_id()
    rt.ok("run", "-d", "--bundle", rt.bundle(["sleep", "30"], edit=with_seccomp(sc)), cid)
    try:
        r = rt.cmd("exec", cid, "sh", "-c", "mkdir /dev/shm/d; echo rc=$?")
        t.join(10)
        assert "error" not in got, got
        assert "No space left on device" in r.stderr and "rc=1" in r.stdout, r
        assert len(got["states"]) == 2 and got["states"][1]["state"]["id"] == cid, got
    finally:
        rt.ok("delete", "-f", cid)


def test_notify_for_a_syscall_of_the_init_itself(rt):
    # Without no_new_privs the filter is loaded before the init drops privileges: a notified
    # setgroups must reach the agent at once, not hang create.
    sock = rt.tmp / "agent.sock"
    got = {}
    t = _notify_agent(sock, got, [2])
    sc = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": str(sock),
          "syscalls": [{"names": ["setgroups", "mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    r = rt.run(rt.bundle(mkdir_cmd(), edit=with_seccomp(sc, nnp=False)), timeout=30)
    t.join(10)
    assert "error" not in got, got
    assert r.returncode == 0 and "No space left on device" in r.stderr, r
    assert got["nr"][0] == 116 and got["nr"][1] in (83, 258), got  # setgroups, then mkdir
