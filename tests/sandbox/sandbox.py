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
  run(script, files=(), with_qemu=False, timeout=300, memory=2048, cpus=2, stream=None)
      -> (status, output)
    script     shell text run with /bin/sh inside the sandbox
    files      iterable of (src, dst): host file (or directory, recursively) src is put at
               absolute path dst inside
    with_qemu  also ship the host's qemu-system-x86_64, its libraries and x86 firmware
    timeout    seconds for the whole boot-run-poweroff; then QEMU is killed
    stream     optional text file: the script's output is written there as it arrives
  status is the script's exit status; output is what it printed on the console (stdout and
  stderr merged, CRLF turned into LF, boot noise before cella-init's marker removed).
  Raises SandboxError (with .output, the whole console log) when the sandbox itself fails:
  QEMU missing, kit build failure, timeout, or no exit-status marker (e.g. a kernel panic).

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
import stat
import subprocess
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("CELLA_CACHE", "/var/cache/cella")
QEMU = "qemu-system-x86_64"
VMM_STATIC = os.path.join(TOP, "build", "cella-vmm-static")
READY_RE = re.compile(r"CELLA-INIT-READY uptime=\S*\n")
# TCG mode. Open problem (issue 3): with MTTCG (QEMU 7.2's default) the sandbox froze in 5 of 6
# runs of the multi-vCPU tiny-guest loops, with thread=single in 0 of 6; but under thread=single
# nested Linux guests hang (2-vCPU boot and the following 1-vCPU reboot case timed out in CI),
# so only the tiny-guest batch asks for SINGLE_THREAD. The env knob overrides both.
ACCEL = os.environ.get("CELLA_SANDBOX_ACCEL", "tcg")
SINGLE_THREAD = os.environ.get("CELLA_SANDBOX_ACCEL", "tcg,thread=single")
EXTRA_APPEND = os.environ.get("CELLA_SANDBOX_APPEND", "")
# Sandboxes run one at a time per host: two TCG machines on 2 cores starve each other into
# timeouts. The timeout counts from when the lock is held.
LOCK = os.environ.get("CELLA_SANDBOX_LOCK", "/run/lock/cella-sandbox.lock")
QEMU_FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")


class SandboxError(Exception):
    def __init__(self, message, output=""):
        super().__init__(message)
        self.output = output


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


def _run_segment(path, script, files, nonce):
    with open(path, "wb") as f:
        c = Cpio(f)
        c.data("/sandbox/script.sh", script.encode(), 0o755)
        c.data("/sandbox/run.sh", b"cd /tmp\n/bin/sh /sandbox/script.sh\n"
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


def run(script, files=(), with_qemu=False, timeout=300, memory=2048, cpus=2, stream=None,
        accel=None):
    ok, reason = available()
    if not ok:
        raise SandboxError(reason)
    k = kit()
    segments = [k["initramfs.cpio.gz"], _kit_segment(k)]
    if with_qemu:
        segments.append(_qemu_segment())

    tmp = tempfile.mkdtemp(prefix="cella-sandbox-")
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

        cmd = [QEMU, "-accel", accel or ACCEL, "-cpu", "max", "-m", f"{memory}M", "-smp", str(cpus),
               "-nographic", "-no-reboot", "-nic", "none",
               "-kernel", k["vmlinuz"], "-initrd", initrd,
               "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 {EXTRA_APPEND} -- /bin/sh /sandbox/run.sh"]
        lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        timed_out = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not sel.select(left):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            console.feed(data.decode("utf-8", "replace"))
        sel.close()
        if timed_out:
            raise SandboxError(f"sandbox timed out after {timeout} s", console.text)
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
