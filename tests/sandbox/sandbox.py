"""The nested-KVM sandbox: a QEMU TCG machine (-cpu max, which exposes SVM with nested
paging) booting Debian's cloud kernel with kvm-amd loaded, so /dev/kvm inside is a standard
KVM. Tests and benchmarks batch their checks into one shell script and run it there.

Inside the sandbox (an initramfs, everything in RAM):
  /bin/*                 busybox applets; /init is cella-init (agent/init/init.c)
  /dev/kvm               from kvm.ko + kvm-amd.ko, loaded at boot
  /kit/vmlinuz, /kit/vmlinux, /kit/initramfs.cpio.gz   the guest kit (scripts/guest-kit.sh)
  /bin/cella-vmm         build/cella-vmm-static, when it exists
  /usr/bin/qemu-system-x86_64 (+ libraries and firmware)   with with_qemu=True
  /sandbox/script.sh     the script, run by /bin/sh in /tmp

API:
  run(script, files=(), with_qemu=False, timeout=300, memory=2048, cpus=None, stream=None,
      accel=None, stall=None, freeze_retries=None) -> (status, output)
    script     shell text run with /bin/sh inside the sandbox
    files      iterable of (src, dst): host file (or directory, recursively) src is put at
               absolute path dst inside
    with_qemu  also ship the host's qemu-system-x86_64, its libraries and x86 firmware
    timeout    seconds for the whole boot-run-poweroff (counted once the host-wide lock is
               held); then QEMU is killed
    cpus       sandbox vCPUs (default CPUS); accel: QEMU -accel (default ACCEL)
    stall      seconds without the sandbox kernel's heartbeat after which the sandbox counts as
               frozen (default STALL): fails at once with QEMU's view of the freeze
    freeze_retries  a frozen sandbox (SandboxFrozen) is booted again this many times (default
               FREEZE_RETRIES = 2); each freeze is written to stderr and stream
    stream     optional text file: the script's output is written there as it arrives
  status is the script's exit status; output is what it printed on the console (stdout and
  stderr merged, CRLF turned into LF, boot noise before cella-init's marker removed).
  Raises SandboxError (with .output, the whole console log) when the sandbox itself fails:
  QEMU missing, kit build failure, timeout, freeze ("sandbox froze after N s: no heartbeat
  ..." with the last heartbeats, QEMU's thread states and each vCPU's RIP/CPL/HLT), or no
  exit-status marker (e.g. a kernel panic).

  batch(name, script, prepare=None, needs=None, expect=(), refuse=(), **run_kwargs) -> sections
    the module-scoped fixture of a sandbox test file, one boot: skips the tests (pytest.skip) when
    QEMU, build/cella-vmm-static or one of needs ({file or command: where it comes from}) is
    missing; prepare(dir) fills a fresh directory the sandbox gets at /g (removed afterwards);
    the console streams to build/sandbox-NAME.log; asserts status 0, that the output holds each
    string of expect and none of refuse, and returns sections(output). run_kwargs go to run()
    (files, timeout, with_qemu, memory, accel, freeze_retries, ...).
  kit_initrd(path, files=(), scripts=None)   writes the guest kit's initramfs with more in it to
    path, for a guest that needs a tool or a script: files as for run(), scripts {dst: shell text}
    (mode 0755)
  available() -> (bool, reason)   whether a sandbox can run here (for pytest skips)
  kit() -> dict                   the guest kit's paths (name -> path), built if needed
"""

import fcntl
import hashlib
import os
import re
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("CELLA_CACHE", "/var/cache/cella")
QEMU = "qemu-system-x86_64"
VMM_STATIC = os.path.join(TOP, "build", "cella-vmm-static")
READY_RE = re.compile(r"CELLA-INIT-READY uptime=\S*\n")
# The sandbox machine: TCG, one vCPU. Why one (trials in docs/ARCHITECTURE.md, "The nested
# sandbox"): with two vCPUs under QEMU 7.2's multi-threaded TCG the whole sandbox froze in most
# boots of the multi-vCPU tiny-guest loops (nothing runs, not even its timers); with two vCPUs
# under thread=single, QEMU runs them round-robin in 100 ms slices, nested guests fail their LAPIC
# timer calibration ("APIC timer disabled due to verification failure") and a 2-vCPU nested Linux
# ended with both vCPUs halted, waiting for a tick that never came. With one vCPU there is one TCG
# thread (the threading mode makes no difference) and neither happened. The env knobs are for
# experiments.
ACCEL = os.environ.get("CELLA_SANDBOX_ACCEL", "tcg")
# Kept for batches that still name it: with one vCPU it is the same machine as ACCEL.
SINGLE_THREAD = os.environ.get("CELLA_SANDBOX_ACCEL", "tcg,thread=single")
CPU = os.environ.get("CELLA_SANDBOX_CPU", "max")
CPUS = int(os.environ.get("CELLA_SANDBOX_CPUS", "1"))
EXTRA_APPEND = os.environ.get("CELLA_SANDBOX_APPEND", "")
# The sandbox kernel's heartbeat: a background loop in the sandbox writes its uptime and load to
# the second serial port every HEARTBEAT_EVERY s. No heartbeat for `stall` s means the sandbox
# froze (a frozen TCG machine runs no timers, so no timeout inside it fires either): run()
# collects QEMU's view (vCPU registers, thread states) and fails at once instead of waiting for
# the whole timeout.
HEARTBEAT_EVERY = 2
BOOT_WAIT = 180
STALL = float(os.environ.get("CELLA_SANDBOX_STALL", "60"))
# Sandboxes run one at a time per host: two TCG machines on 2 cores starve each other into
# timeouts. The timeout counts from when the lock is held.
LOCK = os.environ.get("CELLA_SANDBOX_LOCK", "/run/lock/cella-sandbox.lock")
QEMU_FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")


class SandboxError(Exception):
    def __init__(self, message, output=""):
        super().__init__(message)
        self.output = output


class SandboxFrozen(SandboxError):
    """The sandbox kernel itself stopped (no heartbeat): QEMU's TCG lost its timer, nothing of
    the script's doing. run() boots again (FREEZE_RETRIES times) before giving up."""


def available():
    if not shutil.which(QEMU):
        return False, f"{QEMU} not installed (Debian package qemu-system-x86)"
    return True, ""


_kit = None


def kit():
    """Builds (or finds in the cache) the guest kit; returns {name: path}."""
    global _kit
    if _kit is None:
        script = os.path.join(TOP, "scripts", "guest-kit.sh")
        p = subprocess.run([script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise SandboxError(f"scripts/guest-kit.sh failed (status {p.returncode}):\n{p.stderr}")
        _kit = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    return _kit


class Cpio:
    """Writes an uncompressed newc cpio archive; parent directories are added as needed."""

    def __init__(self, f):
        self.f = f
        self.ino = 1
        self.dirs = set()

    def _entry(self, name, mode, size=0, rdev=(0, 0), nlink=1):
        name = name.strip("/").encode()
        fields = (self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08x" % v for v in fields) + name + b"\0"
        self.f.write(hdr + b"\0" * (-len(hdr) % 4))

    def _pad(self, size):
        self.f.write(b"\0" * (-size % 4))

    def mkdir(self, path, mode=0o755):
        path = "/" + path.strip("/")
        if path == "/" or path in self.dirs:
            return
        self.mkdir(os.path.dirname(path))
        self.dirs.add(path)
        self._entry(path, stat.S_IFDIR | mode, nlink=2)

    def data(self, path, data, mode=0o644):
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | mode, len(data))
        self.f.write(data)
        self._pad(len(data))

    def file(self, path, src):
        """Adds host file src (symlinks followed) at path; a directory is added recursively."""
        st = os.stat(src)
        if stat.S_ISDIR(st.st_mode):
            self.mkdir(path, stat.S_IMODE(st.st_mode))
            for name in sorted(os.listdir(src)):
                self.file(os.path.join(path, name), os.path.join(src, name))
            return
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError(f"{src}: not a regular file or directory")
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_size)
        with open(src, "rb") as s:
            shutil.copyfileobj(s, self.f, 1 << 20)
        self._pad(st.st_size)

    def close(self):
        self._entry("TRAILER!!!", 0)
        self.f.write(b"\0" * (-self.f.tell() % 512))


def _segment(name, key, build):
    """A cached cpio segment $CACHE/sandbox/NAME-KEY.cpio, built by build(Cpio) when missing."""
    d = os.path.join(CACHE, "sandbox")
    os.makedirs(d, exist_ok=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = os.path.join(d, f"{name}-{digest}.cpio")
    if os.path.exists(path):
        return path
    for old in os.listdir(d):  # drop stale versions of this segment
        if old.startswith(name + "-") and old.endswith(".cpio"):
            try:
                os.unlink(os.path.join(d, old))
            except FileNotFoundError:
                pass
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            c = Cpio(f)
            build(c)
            c.close()
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _kit_segment(k):
    with open(os.path.join(k["modules"], "..", "KEY")) as f:
        key = f.read()

    def build(c):
        mods = k["modules"]
        for list_name in ("guest-modules.list", "sandbox-modules.list"):
            with open(os.path.join(mods, list_name)) as f:
                for rel in f.read().split():
                    c.file("/lib/modules/" + rel, os.path.join(mods, rel))
        with open(os.path.join(mods, "sandbox-modules.list"), "rb") as f:
            c.data("/lib/modules/cella-modules.list", f.read())
        for name in ("vmlinuz", "vmlinux", "initramfs.cpio.gz"):
            c.file("/kit/" + name, k[name])

    return _segment("kit", key, build)


def _qemu_files():
    """(src, dst) pairs for QEMU, its shared libraries and its x86 firmware."""
    qemu = shutil.which(QEMU)
    pairs = [(qemu, "/usr/bin/" + QEMU)]
    ldd = subprocess.run(["ldd", qemu], stdout=subprocess.PIPE, text=True, check=True).stdout
    for line in ldd.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            pairs.append((m.group(1), m.group(1)))
    for d in QEMU_FIRMWARE_DIRS:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            src = os.path.join(d, name)
            if name.endswith((".bin", ".rom", ".aml")) and os.path.isfile(src):
                pairs.append((src, src))
    accel = "/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"
    if os.path.exists(accel):
        pairs.append((accel, accel))
    return pairs


def _qemu_segment():
    pairs = _qemu_files()
    key = "\n".join(f"{s} {os.stat(s).st_size} {os.stat(s).st_mtime_ns}" for s, _ in pairs)

    def build(c):
        for src, dst in pairs:
            c.file(dst, src)

    return _segment("qemu", key, build)


# Runs in the sandbox before the script: the heartbeat loop (see HEARTBEAT_EVERY), on the second
# serial port so it never mixes with the script's output.
HEARTBEAT_SH = (b"(while :; do echo \"hb $(cut -d' ' -f1 /proc/uptime) $(cut -d' ' -f1-4 /proc/loadavg)\""
                b" >/dev/ttyS1; sleep %d; done) </dev/null >/dev/null 2>&1 &\n"
                b"echo $! >/sandbox/heartbeat.pid\n" % HEARTBEAT_EVERY)


def _run_segment(path, script, files, nonce):
    with open(path, "wb") as f:
        c = Cpio(f)
        c.data("/sandbox/script.sh", script.encode(), 0o755)
        c.data("/sandbox/run.sh", b"cd /tmp\n" + HEARTBEAT_SH + b"/bin/sh /sandbox/script.sh\n"
               b"echo \"CELLA-SANDBOX-END-%s status=$?\"\n" % nonce.encode(), 0o755)
        if os.path.exists(VMM_STATIC):
            c.file("/bin/cella-vmm", VMM_STATIC)
        for src, dst in files:
            if not os.path.isabs(dst):
                raise SandboxError(f"--file {src}:{dst}: destination must be an absolute path")
            if not os.path.exists(src):
                raise SandboxError(f"--file {src}: no such file")
            c.file(dst, src)
        c.close()


def _concat(out, parts):
    with open(out, "wb") as o:
        for p in parts:
            o.write(b"\0" * (-o.tell() % 4))  # an uncompressed cpio must start 4-aligned
            with open(p, "rb") as f:
                shutil.copyfileobj(f, o, 1 << 20)


class _Console:
    """Accumulates console text; streams the script's output (between cella-init's ready
    marker and this run's end marker, which carries a random nonce) as it arrives."""

    def __init__(self, stream, nonce):
        self.text = ""
        self.stream = stream
        self.start = None
        self.emitted = 0
        self.end_re = re.compile(r"CELLA-SANDBOX-END-%s status=(\d+)\n" % nonce)
        self.end = None

    def feed(self, data):
        self.text += data.replace("\r\n", "\n").replace("\r", "")
        if self.start is None:
            m = READY_RE.search(self.text)
            if not m:
                return
            self.start = self.emitted = m.end()
        if self.end is None:
            self.end = self.end_re.search(self.text, self.start)
        if self.stream:
            # Whole lines only, so a half-arrived end marker is never printed.
            stop = self.end.start() if self.end else self.text.rfind("\n", self.emitted) + 1
            if stop > self.emitted:
                self.stream.write(self.text[self.emitted:stop])
                self.stream.flush()
                self.emitted = stop

    def result(self):
        """(status, output), or None when the end marker never came."""
        if self.end is None:
            return None
        return int(self.end.group(1)), self.text[self.start:self.end.start()]


def _threads(pid):
    """{tid: (comm, state, cpu ticks, wchan)} of a host process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip() or "-"
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        rest = st[st.rindex(")") + 2:].split()
        out[tid] = (comm, rest[0], int(rest[11]) + int(rest[12]), wchan)
    return out


def _monitor(path, commands, wait=5.0):
    """Runs HMP commands on QEMU's monitor socket; returns their output, or why it could not."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(wait)
        s.connect(path)
    except OSError as e:
        return f"(monitor: {e})"
    text = ""
    try:
        buf = b""
        for cmd in [None] + list(commands):
            if cmd is not None:
                s.sendall(cmd.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"(qemu) "):
                data = s.recv(65536)
                if not data:
                    break
                buf += data
            if cmd is not None:
                text += buf.decode("utf-8", "replace").replace("\r", "")
    except OSError as e:
        text += f"(monitor did not answer within {wait} s: {e}; QEMU's main loop is stuck)"
    finally:
        s.close()
    return text


def _freeze_report(pid, mon):
    """What QEMU's threads and vCPUs were doing: per-thread CPU use over 2 s (a spinning vCPU
    thread vs one blocked in a futex) and each vCPU's RIP, CPL and halt state, twice."""
    t0 = _threads(pid)
    regs0 = _monitor(mon, ["info registers -a"])
    time.sleep(2)
    t1 = _threads(pid)
    regs1 = _monitor(mon, ["info registers -a"])
    lines = ["QEMU threads (name state cpu%-over-2s wchan):"]
    for tid, (comm, state, ticks, wchan) in sorted(t1.items(), key=lambda kv: int(kv[0])):
        busy = (ticks - t0.get(tid, (0, 0, ticks))[2]) / os.sysconf("SC_CLK_TCK") / 2 * 100
        lines.append(f"  {tid} {comm} {state} {busy:.0f}% {wchan}")
    for label, regs in (("vCPUs", regs0), ("vCPUs 2 s later", regs1)):
        cpus = re.findall(r"^CPU#(\d+)\n(.*?)(?=^CPU#|\Z)", regs, re.M | re.S)
        if not cpus:
            lines.append(f"{label}: {regs.strip()[:300]}")
            continue
        lines.append(f"{label}:")
        for n, body in cpus:
            rip = re.search(r"RIP=(\S+)", body)
            hlt = re.search(r"HLT=(\d)", body)
            cpl = re.search(r"CPL=(\d)", body)
            lines.append(f"  CPU#{n} RIP={rip.group(1) if rip else '?'} CPL={cpl.group(1) if cpl else '?'} "
                         f"HLT={hlt.group(1) if hlt else '?'}")
    return "\n".join(lines)


# A frozen sandbox is booted again this many times. Seen in CI with one vCPU: the sandbox kernel
# halted with no timer armed in QEMU, minutes into a batch that passes on other boots; once, during
# the snapshot bench, two boots in a row froze, so one retry is not enough.
FREEZE_RETRIES = int(os.environ.get("CELLA_SANDBOX_FREEZE_RETRIES", "2"))


def _temp_dir(kind):
    """A temp dir named after this process, so a later run can tell it from a live one's."""
    _reap_stale()
    return tempfile.mkdtemp(prefix=f"cella-sandbox-{os.getpid()}-{kind}-")


def _reap_stale():
    """Removes the temp dirs of runs whose process is gone (killed with SIGKILL: no finally ran)."""
    top = tempfile.gettempdir()
    for name in os.listdir(top):
        m = re.match(r"cella-sandbox-(\d+)-", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(top, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class _TerminateAsExit:
    """SIGTERM (a CI timeout, a killed pytest) ends a run through its finally blocks, which kill
    QEMU and remove the temp files, instead of leaving both behind. Main thread only."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._exit)
        return self

    @staticmethod
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _die_with_parent():
    """In QEMU's child before exec: SIGKILL when the runner dies, even of SIGKILL."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(*args, stream=None, freeze_retries=None, **kwargs):
    retries = FREEZE_RETRIES if freeze_retries is None else freeze_retries
    with _TerminateAsExit():
        for attempt in range(retries + 1):
            try:
                return _run_once(*args, stream=stream, **kwargs)
            except SandboxFrozen as e:
                if attempt == retries:
                    raise
                note = f"\n=== SANDBOX FROZE, booting it again ({attempt + 1}/{retries}): {e}\n"
                sys.stderr.write(note)
                if stream:
                    stream.write(note)
                    stream.flush()


def _run_once(script, files=(), with_qemu=False, timeout=300, memory=2048, cpus=None, stream=None,
              accel=None, stall=None):
    """See the module comment. stall: seconds without the sandbox kernel's heartbeat after which
    the sandbox counts as frozen (default STALL); the first heartbeat may take BOOT_WAIT."""
    ok, reason = available()
    if not ok:
        raise SandboxError(reason)
    k = kit()
    segments = [k["initramfs.cpio.gz"], _kit_segment(k)]
    if with_qemu:
        segments.append(_qemu_segment())
    stall = STALL if stall is None else stall

    tmp = _temp_dir("run")
    proc = None
    lock_fd = -1
    nonce = os.urandom(8).hex()
    console = _Console(stream, nonce)
    try:
        run_cpio = os.path.join(tmp, "run.cpio")
        _run_segment(run_cpio, script, files, nonce)
        initrd = os.path.join(tmp, "initrd")
        _concat(initrd, segments + [run_cpio])
        os.unlink(run_cpio)
        hb_path = os.path.join(tmp, "heartbeat")
        mon = os.path.join(tmp, "monitor")

        # ttyS0 = console on stdio, ttyS1 = heartbeat file, HMP monitor on a socket.
        cmd = [QEMU, "-accel", accel or ACCEL, "-cpu", CPU, "-m", f"{memory}M",
               "-smp", str(cpus or CPUS), "-name", "cella-sandbox,debug-threads=on", "-nodefaults", "-display", "none", "-no-reboot",
               "-nic", "none", "-serial", "stdio", "-serial", f"file:{hb_path}",
               "-monitor", f"unix:{mon},server=on,wait=off",
               "-kernel", k["vmlinuz"], "-initrd", initrd,
               "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 {EXTRA_APPEND} -- /bin/sh /sandbox/run.sh"]
        lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        start = time.monotonic()
        deadline = start + timeout
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        timed_out = frozen = False
        hb_size, hb_time, hb_last = 0, None, ""
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            try:
                size = os.path.getsize(hb_path)
            except OSError:
                size = 0
            if size != hb_size:
                hb_size, hb_time = size, now
            if hb_time is None and now - start > max(stall, BOOT_WAIT):
                frozen = True  # no heartbeat at all: the sandbox kernel never got to the script
                break
            if hb_time is not None and now - hb_time > stall:
                frozen = True
                break
            if not sel.select(min(1.0, deadline - now)):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            console.feed(data.decode("utf-8", "replace"))
        sel.close()
        if frozen:
            try:
                with open(hb_path, errors="replace") as f:
                    hb_last = "".join(f.readlines()[-3:]).replace("\r", "")
            except OSError:
                pass
            report = _freeze_report(proc.pid, mon)
            what = (f"no heartbeat from the sandbox kernel for {stall:.0f} s" if hb_time is not None
                    else f"no heartbeat from the sandbox kernel within {max(stall, BOOT_WAIT):.0f} s of start")
            raise SandboxFrozen(f"sandbox froze after {time.monotonic() - start:.0f} s: {what}. "
                               f"Last heartbeats (uptime, load 1/5/15 min, running/all):\n"
                               f"{hb_last}{report}",
                               console.text)
        if timed_out:
            raise SandboxError(f"sandbox timed out after {timeout} s (still alive: its last "
                               f"heartbeat was {time.monotonic() - (hb_time or start):.0f} s ago)",
                               console.text)
        proc.wait()
        res = console.result()
        if res is None:
            raise SandboxError(f"sandbox ended (QEMU status {proc.returncode}) without the "
                               "script's end marker", console.text)
        return res
    finally:
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            proc.stdout.close()
        if lock_fd >= 0:
            os.close(lock_fd)
        shutil.rmtree(tmp, ignore_errors=True)


def kit_initrd(path, files=(), scripts=None):
    """See the module comment."""
    extra = f"{path}.extra"
    try:
        with open(extra, "wb") as f:
            c = Cpio(f)
            for src, dst in files:
                c.file(dst, src)
            for dst, text in (scripts or {}).items():
                c.data(dst, text.encode(), 0o755)
            c.close()
        _concat(str(path), [kit()["initramfs.cpio.gz"], extra])
    finally:
        if os.path.exists(extra):
            os.unlink(extra)


def batch(name, script, prepare=None, needs=None, expect=(), refuse=(), files=(), **run_kwargs):
    """See the module comment."""
    import pathlib

    import pytest

    ok, reason = available()
    if not ok:
        pytest.skip(reason)
    for thing, source in {VMM_STATIC: "make", **(needs or {})}.items():
        if not (os.path.exists(thing) if os.path.isabs(thing) else shutil.which(thing)):
            shown = os.path.relpath(thing, TOP) if thing.startswith(TOP + "/") else thing
            pytest.skip(f"{shown} missing ({source})")
    g = _temp_dir(f"batch-{name}")
    try:
        if prepare:
            prepare(pathlib.Path(g))
            files = [(g, "/g"), *files]
        # The console streams to the log as it arrives, so a slow or stuck batch can be watched.
        with open(os.path.join(TOP, "build", f"sandbox-{name}.log"), "w") as log:
            status, output = run(SH_HELPERS + script, files=files, stream=log, **run_kwargs)
    finally:
        shutil.rmtree(g, ignore_errors=True)
    assert status == 0, output
    for text in expect:
        assert text in output, f"{text!r} missing:\n{output}"
    for text in refuse:
        assert text not in output, f"{text!r} in the output:\n{output}"
    return sections(output)


# Shell functions in front of every batch script (batch() adds them): `sec NAME` opens a section,
# `wait_for FILE PATTERN TENTHS` polls FILE for PATTERN and prints a TIMEOUT line when it never
# comes.
SH_HELPERS = r"""
sec() { echo; echo "=== $1"; }
wait_for() {
  i=0
  while ! grep -q "$2" "$1" && [ $i -lt $3 ]; do sleep 0.1; i=$((i+1)); done
  grep -q "$2" "$1" || echo "TIMEOUT waiting for $2 in $1"
}
"""

# Shell functions for snapshot batches. `clone_start NAME` starts a cella-vmm restored from
# /tmp/snap: its console input on fd 4 (fifo /tmp/in-NAME), its output in /tmp/out-NAME, its pid in
# $p. `clone_end NAME` waits up to 60 s for it to exit (printing HUNG and killing it otherwise),
# prints rc=N and closes fd 4.
SH_CLONES = r"""
clone_start() {
  mkfifo /tmp/in-$1
  /bin/cella-vmm --restore /tmp/snap </tmp/in-$1 >/tmp/out-$1 2>&1 &
  p=$!
  exec 4>/tmp/in-$1
}
clone_end() {
  i=0; while kill -0 $p 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  kill -0 $p 2>/dev/null && { echo "HUNG clone $1"; kill -9 $p; }
  wait $p; echo rc=$?
  exec 4>&-
}
"""


# Batches print "=== NAME" before each part and "rc=N" after commands; guests booted with the
# guest kit frame their output with cella-init's markers.
GUEST_RE = re.compile(r"CELLA-INIT-READY uptime=[0-9.]+\n(.*?)CELLA-EXIT-STATUS=(\d+)\n", re.S)


def sections(output):
    parts = {}
    for chunk in re.split(r"^=== ", output, flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        parts[name.strip()] = body
    return parts


def guest(section):
    m = GUEST_RE.search(section)
    assert m, section
    return m.group(1), int(m.group(2))


def rc(section):
    m = re.findall(r"^rc=(\d+)$", section, re.M)
    assert m, section
    return int(m[-1])
