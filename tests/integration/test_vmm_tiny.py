"""cella-vmm on KVM with tiny flat-binary guests (tests/integration/vmm_guests.py).

This host has no usable /dev/kvm, so every case runs inside the nested-KVM sandbox (one boot
for the whole batch; /bin/cella-vmm there is build/cella-vmm-static). Sections of the batch
are "=== NAME" blocks ending in "rc=N", checked by separate tests.

These multi-vCPU loops froze a two-vCPU sandbox under multi-threaded TCG; the sandbox now has one
vCPU (see sandbox.py) and a frozen one fails within sandbox.STALL seconds with QEMU's view of it. A
VMM that hangs while the sandbox lives is reported as "HUNG" by the shell watchdog below.
"""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox"))
import sandbox  # noqa: E402
from sandbox import rc  # noqa: E402
from vmm_guests import write_guests  # noqa: E402

RUNS = 30

BATCH = f"""
cd /g
# cella-vmm with a 20 s watchdog: a hang prints the VMM's threads (state, wait channel), is
# killed, and shows up as rc=124 instead of a stuck sandbox. Input comes from $VMM_IN (an
# asynchronous command's stdin would be /dev/null).
vmm() {{
  /bin/cella-vmm "$@" <"${{VMM_IN:-/dev/null}}" & p=$!
  i=0
  while kill -0 $p 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
  if kill -0 $p 2>/dev/null; then
    echo "HUNG: cella-vmm $*"
    for t in /proc/$p/task/*; do echo "  $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan)"; done
    kill -9 $p; wait $p; return 124
  fi
  wait $p
}}

sec hello
vmm --kernel hello.bin --memory 1 ; echo rc=$?

sec reboot
vmm --kernel reboot.bin --memory 2 ; echo rc=$?

sec triple-fault
vmm --kernel triple.bin ; echo rc=$?

sec mmio
vmm --kernel mmio.bin --debug-device ; echo rc=$?

sec bad-fetch
vmm --kernel badfetch.bin --memory 1 ; echo rc=$?

sec echo
printf 'abc\\n' >/tmp/abc
VMM_IN=/tmp/abc vmm --kernel echo.bin; echo rc=$?

sec config
echo '{{"kernel": "/g/hello.bin", "memory_mib": 2, "console": "/tmp/console.txt"}}' >/tmp/vm.json
vmm --config /tmp/vm.json --log-level warn ; echo rc=$?
echo console-file: $(cat /tmp/console.txt)

sec console-none
vmm --kernel hello.bin --console none ; echo rc=$?

sec sigterm-spin
/bin/cella-vmm --kernel spin.bin --cpus 4 </dev/null & p=$!
sleep 1; kill -TERM $p; wait $p; echo rc=$?

sec sigint-halted
/bin/cella-vmm --kernel halt.bin --cpus 2 </dev/null & p=$!
sleep 1; kill -INT $p; wait $p; echo rc=$?

for n in 2 4 8; do
  sec smp-$n
  ok=0; hung=0; other=""
  for i in $(seq {RUNS}); do
    vmm --kernel hello.bin --cpus $n --console none --log-level warn
    r=$?
    if [ $r -eq 0 ]; then ok=$((ok+1)); elif [ $r -eq 124 ]; then hung=$((hung+1)); else other="$other $r"; fi
  done
  echo "ok=$ok hung=$hung other=$other"
  echo rc=0
done

sec smp-stop-8
ok=0
for i in $(seq 10); do
  /bin/cella-vmm --kernel spin.bin --cpus 8 --console none </dev/null 2>/dev/null & p=$!
  sleep 0.3; kill -TERM $p; wait $p; [ $? -eq 143 ] && ok=$((ok+1))
done
echo "stopped=$ok"
echo rc=0
"""


@pytest.fixture(scope="module")
def sections():
    return sandbox.batch("vmm-tiny", BATCH, prepare=lambda g: write_guests(str(g)), timeout=300)


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+Z \w+: [^\n]*\n")


def guest_output(section):
    """The section without the VMM's log lines (which may interleave with guest bytes)."""
    return LOG_LINE.sub("", section)


def test_serial_output_reaches_stdout_and_poweroff_ends_with_0(sections):
    s = sections["hello"]
    assert re.search(r"^Hello$", s, re.M), s
    assert "info: guest poweroff" in s
    assert re.search(r"info: guest boot timer: [0-9.]+ ms since VMM start", s), s
    assert rc(s) == 0


def test_i8042_reset_is_a_reboot_with_status_0(sections):
    s = sections["reboot"]
    assert "R" in s and "guest reboot (i8042 reset)" in s, s
    assert rc(s) == 0


def test_triple_fault_is_a_reboot(sections):
    s = sections["triple-fault"]
    assert "guest reboot (triple fault" in s, s
    assert rc(s) == 0


def test_pio_and_mmio_dispatch(sections):
    s = sections["mmio"]
    # P: unhandled port read all-ones; D: debug device kept the value; U: unhandled MMIO all-ones
    assert "debug-device: write of 4 byte(s) at +0x0: 0x12345678" in s, s
    assert guest_output(s).startswith("PDU\n"), s
    assert "guest poweroff" in s
    assert rc(s) == 0


def test_unrecoverable_exit_ends_nonzero_with_registers(sections):
    s = sections["bad-fetch"]
    assert "KVM_EXIT_INTERNAL_ERROR" in s, s
    assert re.search(r"vcpu0: rip=0x[0-9a-f]+ rsp=", s), s
    assert re.search(r"vcpu0: cs sel=0xffff", s), s
    assert "VM failed:" in s
    assert rc(s) == 2


def test_host_input_reaches_the_guest(sections):
    s = sections["echo"]
    assert re.search(r"^abc$", s, re.M), s
    assert rc(s) == 0


def test_config_file_and_console_file(sections):
    s = sections["config"]
    assert rc(s) == 0, s
    assert "console-file: Hello" in s
    assert not re.search(r"^Hello$", s, re.M), "console output should go to the file only"


def test_console_none(sections):
    s = sections["console-none"]
    assert rc(s) == 0 and not re.search(r"^Hello$", s, re.M), s


def test_sigterm_stops_spinning_vcpus(sections):
    s = sections["sigterm-spin"]
    assert "stopping the VM: Terminated" in s, s
    assert rc(s) == 143


def test_sigint_stops_halted_vcpus(sections):
    s = sections["sigint-halted"]
    assert rc(s) == 130, s


@pytest.mark.parametrize("n", [2, 4, 8])
def test_smp_exit_never_hangs(sections, n):
    s = sections[f"smp-{n}"]
    assert f"ok={RUNS} hung=0 other=\n" in s, s


def test_stop_with_8_spinning_vcpus(sections):
    assert "stopped=10" in sections["smp-stop-8"], sections["smp-stop-8"]
