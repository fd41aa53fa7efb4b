"""The nested-KVM sandbox and the guest kit, proven with QEMU inside the sandbox.

One sandbox boot runs every check; each nested QEMU (-accel kvm) boots the guest kit and its
console output comes back out through both levels. Sections of the batch are separated by
"=== NAME" lines and checked by separate tests.
"""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "sandbox"))
import sandbox  # noqa: E402
from sandbox import guest  # noqa: E402

# rtc=off: the kernel's rtc_cmos probe takes ~5 s nested under TCG. -smp 1 where the CPU count
# does not matter: the host's cores are shared. reboot=t: microvm has no i8042 and no ACPI reset
# register, so the kernel's default reboot path spins for minutes on port 0x64 before it tries
# a triple fault.
QEMU_GUEST = ("timeout 150 qemu-system-x86_64 -accel kvm -cpu host -m 256 "
              "-display none -nodefaults -no-reboot -serial stdio -M microvm,rtc=off")
CMDLINE = "console=ttyS0 quiet panic=-1"

BATCH = f"""
{sandbox.SH_HELPERS}sec kvm
ls -l /dev/kvm
cat /sys/module/kvm_amd/parameters/nested /sys/module/kvm_amd/parameters/npt
grep -m1 -o -w svm /proc/cpuinfo

sec bzimage
{QEMU_GUEST} -smp 2 -kernel /kit/vmlinuz -initrd /kit/initramfs.cpio.gz \\
  -append '{CMDLINE} -- cat /proc/cmdline; grep MemTotal /proc/meminfo; echo cpus=$(nproc); exit 3' \\
  </dev/null
echo qemu-status=$?

sec pvh-reboot
{QEMU_GUEST} -smp 1 -kernel /kit/vmlinux -initrd /kit/initramfs.cpio.gz \\
  -append '{CMDLINE} reboot=t cella.reboot=1 cella.cmd=echo%20pvh-$((6*7))' </dev/null
echo qemu-status=$?

sec interactive
mkfifo /tmp/in
{QEMU_GUEST} -smp 1 -kernel /kit/vmlinuz -initrd /kit/initramfs.cpio.gz -append '{CMDLINE}' \\
  </tmp/in >/tmp/out 2>&1 &
qemu=$!
exec 3>/tmp/in
i=0
# wait for the shell's banner: typed too early, the echo lands inside the init's marker line
while ! grep -q 'built-in shell' /tmp/out && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
printf 'echo typed-$((6*7))\\nexit 4\\n' >&3
wait $qemu
echo qemu-status=$?
exec 3>&-
cat /tmp/out
"""


@pytest.fixture(scope="module")
def sections():
    ok, reason = sandbox.available()
    if not ok:
        pytest.skip(reason)
    try:
        status, output = sandbox.run(BATCH, with_qemu=True, timeout=600)
    except sandbox.SandboxError as e:
        pytest.fail(f"{e}; console tail:\n{e.output[-3000:]}")
    assert status == 0, output
    return sandbox.sections(output)


def test_dev_kvm_is_standard_kvm(sections):
    s = sections["kvm"]
    assert re.search(r"^c.* 10, *232 .*/dev/kvm$", s, re.M), s
    assert "svm" in s, s  # kvm-amd on SVM with nested paging, not kvm_pvm


def test_bzimage_boots_nested_with_cmdline_memory_cpus(sections):
    s = sections["bzimage"]
    out, status = guest(s)
    assert status == 3
    assert f"{CMDLINE} -- cat /proc/cmdline;" in out
    mem = int(re.search(r"MemTotal:\s+(\d+) kB", out).group(1))
    assert 128 * 1024 < mem <= 256 * 1024, out
    assert "cpus=2" in out
    assert "reboot: Power down" in s
    assert "qemu-status=0" in s and "terminating on signal" not in s


def test_pvh_vmlinux_boots_and_reboot_ends_qemu(sections):
    s = sections["pvh-reboot"]
    out, status = guest(s)
    assert status == 0
    assert out == "pvh-42\n"
    assert "reboot: Restarting system" in s
    assert "qemu-status=0" in s and "terminating on signal" not in s


def test_line_typed_on_stdin_runs_in_guest_shell(sections):
    s = sections["interactive"]
    out, status = guest(s)
    assert status == 4
    assert re.search(r"^typed-42\r?$", out, re.M), out
    assert "qemu-status=0" in s


def processes_naming(path):
    """(pid, argv[0]) of every process whose command line names path."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(str(path).encode() in a for a in argv):
            found.append((int(pid), argv[0]))
    return found


def assert_nothing_left(tmp_path):
    """No temp file of the sandbox is left in tmp_path, and no QEMU still runs from it."""
    assert list(tmp_path.iterdir()) == []
    left = processes_naming(tmp_path)
    assert not left, f"still running: {left}"


def test_frozen_sandbox_fails_fast_with_qemus_view(tmp_path, monkeypatch):
    """A sandbox whose kernel stops sending heartbeats is reported as frozen within `stall`
    seconds (not at the timeout), with QEMU's threads and vCPU registers; QEMU and the temp
    files are gone afterwards. Simulated by stopping the heartbeat loop: a real freeze stops
    every process, the loop included."""
    if not shutil.which(sandbox.QEMU):
        pytest.skip(f"{sandbox.QEMU} not installed (Debian package qemu-system-x86)")
    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(sandbox.SandboxError) as e:
        sandbox.run("sleep 3; kill -STOP $(cat /sandbox/heartbeat.pid); echo stopped; sleep 300",
                    timeout=400, stall=10, freeze_retries=0)
    msg = str(e.value)
    m = re.match(r"sandbox froze after (\d+) s: no heartbeat from the sandbox kernel for 10 s", msg)
    assert m, msg
    assert int(m.group(1)) < 120, msg  # counted from QEMU's start: boot + 3 s + 10 s, not 400 s
    assert re.search(r"^hb [0-9.]+ ", msg, re.M), msg            # the last heartbeats
    # QEMU's vCPU thread: "CPU 0/TCG" (MTTCG) or "ALL CPUs/TCG" (thread=single)
    assert re.search(r"^  \d+ (CPU 0|ALL CPUs)/TCG [RSD] \d+% ", msg, re.M), msg
    assert re.search(r"^  CPU#0 RIP=[0-9a-f]+ CPL=0 HLT=[01]$", msg, re.M), msg
    assert "stopped" in e.value.output
    assert_nothing_left(tmp_path)


def test_timeout_kills_qemu_and_removes_temp_files(tmp_path, monkeypatch):
    if not shutil.which(sandbox.QEMU):
        pytest.skip(f"{sandbox.QEMU} not installed (Debian package qemu-system-x86)")
    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(sandbox.SandboxError, match="timed out"):
        sandbox.run("sleep 100", timeout=2)
    assert_nothing_left(tmp_path)


def _runner_with_qemu(tmp_path):
    """A separate Python that runs a long sandbox script with its temp files in tmp_path; returns
    it once its QEMU is up."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(sandbox.__file__)!r}); import sandbox; "
            "sandbox.run('sleep 300', timeout=600, freeze_retries=0)")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    runner = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120  # the host-wide sandbox lock may hold it up
    while time.monotonic() < deadline and not qemus_from(tmp_path):
        time.sleep(0.2)
    assert qemus_from(tmp_path), "the runner's QEMU never started"
    return runner


def qemus_from(tmp_path):
    """Pids of the QEMUs whose command line names tmp_path."""
    return [pid for pid, exe in processes_naming(tmp_path) if b"qemu" in exe]


def test_sigterm_of_the_runner_kills_qemu_and_removes_temp_files(tmp_path):
    """A CI timeout or a killed pytest sends SIGTERM: run() still ends through its cleanup."""
    if not shutil.which(sandbox.QEMU):
        pytest.skip(f"{sandbox.QEMU} not installed (Debian package qemu-system-x86)")
    runner = _runner_with_qemu(tmp_path)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    assert_nothing_left(tmp_path)


def test_sigkill_of_the_runner_kills_qemu_and_the_next_run_reaps_its_files(tmp_path, monkeypatch):
    """SIGKILL runs no cleanup: QEMU dies with its parent (PR_SET_PDEATHSIG) and the next run
    removes the dead runner's temp dir (named after its pid)."""
    if not shutil.which(sandbox.QEMU):
        pytest.skip(f"{sandbox.QEMU} not installed (Debian package qemu-system-x86)")
    runner = _runner_with_qemu(tmp_path)
    runner.kill()
    runner.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and qemus_from(tmp_path):
        time.sleep(0.1)
    assert not qemus_from(tmp_path), "QEMU outlived its SIGKILLed runner"
    left = list(tmp_path.iterdir())
    assert [p.name for p in left if p.name.startswith(f"cella-sandbox-{runner.pid}-")], left
    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(tmp_path))
    sandbox._reap_stale()
    assert_nothing_left(tmp_path)


def test_frozen_sandbox_is_booted_again(monkeypatch, capsys):
    """run() boots a frozen sandbox again FREEZE_RETRIES times, notes each freeze in the stream,
    and raises the last freeze when every boot froze. No QEMU: the boot itself is replaced."""
    boots = []

    def boot(script, stream=None, **kwargs):
        boots.append(script)
        if len(boots) <= freezes:
            raise sandbox.SandboxFrozen(f"sandbox froze after {len(boots)} s")
        return 0, "done\n"

    monkeypatch.setattr(sandbox, "_run_once", boot)
    freezes = sandbox.FREEZE_RETRIES
    log = io.StringIO()
    assert sandbox.run("true", stream=log) == (0, "done\n")
    assert len(boots) == freezes + 1 and log.getvalue().count("SANDBOX FROZE, booting it again") == freezes
    assert "SANDBOX FROZE" in capsys.readouterr().err
    boots.clear()
    freezes = 2
    with pytest.raises(sandbox.SandboxFrozen, match="froze after 2 s"):
        sandbox.run("true", freeze_retries=1)
    assert len(boots) == 2
