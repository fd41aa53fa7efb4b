"""Real clients driving cella: Podman and containerd (ctr) with private state, for the integration
tests (test_podman.py, test_containerd.py) and bench/clients.py. Only the fixture helpers import
pytest, so the benchmark runs without it.

Facts found on this host (Debian 12, podman 4.3, containerd 1.6, cgroup hybrid: v1 controllers
plus an empty cgroup2 at /sys/fs/cgroup/unified), true for cella and for runc alike:

Podman
- CONTAINERS_CONF and CONTAINERS_STORAGE_CONF point at files in the private directory; storage is
  overlay (vfs where the kernel has no overlayfs) with graphroot and runroot there too.
- conmon runs podman's exit command (`podman container cleanup`) with a scrubbed environment: it
  does NOT see CONTAINERS_CONF. Only settings podman passes on that command line survive (--root,
  --runroot, --tmpdir, --volumepath, --network-config-dir, --runtime, --cgroup-manager,
  --events-backend). So static_dir and events_logfile_path must keep their defaults (under
  graphroot and tmp_dir): set them in containers.conf and the cleanup process looks in another
  database, never finds the container, and every `podman run` waits conmon's 20 s timeout.
- netns="none" (no CNI, no traffic), cgroup_manager="cgroupfs" (no systemd here): works on the
  hybrid host, no cgroups="disabled" needed. Each Podman object passes its own --cgroup-parent
  (/cellatest-pm-PID-N) and a --cidfile to run/create, so its leak checks see only its own
  containers even when another test session drives podman at the same time.
- default_ulimits: podman's defaults (nofile 1048576, nproc = max) exceed this host's hard limits
  and CAP_SYS_RESOURCE is not in the bounding set, so raising them fails in every runtime ("error
  setting rlimit type 6: operation not permitted" from runc): nofile and nproc are set <= 20000.
- `podman import` of a tar of the busybox rootfs gives a local image; runs use --pull=never.
- conmon puts itself in PARENT/conmon in every v1 hierarchy (for `exec`: /libpod_parent/conmon)
  and leaves that cgroup (podman's behaviour, with runc too): teardown removes both.
- The runtime's state root stays its default (/run/cella): podman's exit command does not pass
  --runtime-flag on, so `--runtime-flag root=DIR` leaves the state of `run --rm` containers.

containerd
- own config (root, state, grpc/ttrpc sockets in the private directory, CRI and the snapshotters
  we do not use disabled, no debug/metrics listener), own namespace (so cgroups are /NS/ID),
  `--runc-root` and ctr's `--fifo-dir` in the private directory. The shim sockets have a fixed
  directory (/run/containerd/s): teardown removes it (and /run/containerd) when it created them.
- image: a single-layer OCI image built by umoci from the busybox rootfs, tarred and
  `ctr image import`ed.
"""
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The control runtime beside cella in the client tests, and the container both tests keep running.
RUNC = shutil.which("runc") or "/usr/sbin/runc"
RUNTIMES = ("cella", "runc")
TRAP_LOOP = ["sh", "-c", 'trap "exit 7" TERM; while :; do sleep 0.1; done']


def ok(p):
    """p (a CompletedProcess) after asserting it exited 0."""
    assert p.returncode == 0, f"{p.args}: rc={p.returncode} out={p.stdout!r} err={p.stderr!r}"
    return p


def sh(cmd, timeout=120, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(c) for c in cmd], timeout=timeout, **kw)


def busybox_rootfs():
    """The rootfs of scripts/mk-bundle.sh's busybox bundle (built or reused). Raises
    RuntimeError with a one-line reason when it cannot be built."""
    p = sh([REPO / "scripts/mk-bundle.sh"], timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"cannot build the busybox bundle: {p.stderr.strip()[-200:]}")
    return Path(p.stdout.strip().splitlines()[-1]) / "rootfs"


def mounts_under(prefix):
    """Mount points at or below prefix, deepest first."""
    prefix = str(prefix).rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix + "/"):
                out.append(mp)
    return sorted(set(out), key=len, reverse=True)


def unmount_under(prefix):
    for mp in mounts_under(prefix):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def pids_with_cmdline(needle):
    """Pids of processes whose command line contains needle (never our own)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append((int(d), cmd.strip()))
    return found


def wait_gone(find, timeout=5):
    """Polls find() (a list of pids) until it is empty or timeout passes; returns what is left."""
    end = time.time() + timeout
    while find() and time.time() < end:
        time.sleep(0.05)
    return find()


def force_clean(top, pids, what):
    """Kills pids (helper processes a client left) and unmounts what is below top; returns the
    problems found, one line each."""
    problems = []
    if pids:
        problems.append(f"{what} processes left: {pids}")
        kill_and_wait(pids)
    left = mounts_under(top)
    if left:
        problems.append(f"mounts left: {left}")
        unmount_under(top)
    return problems


def kill_and_wait(pids, timeout=5):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.time() + timeout
    while time.time() < end and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.05)


def cgroup_dirs(rel):
    """rel (e.g. "cellatest-pm-1-1/conmon") in every hierarchy where it exists."""
    out = []
    for h in sorted(CGROUP_ROOT.iterdir()):
        d = h / rel
        if d.is_dir():
            out.append(d)
    return out


def rmdir_deepest_first(dirs):
    """rmdir of each of dirs that is empty, deepest first (a cgroup's children before it)."""
    for d in sorted(map(str, dirs), key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass


def rmdir_cgroup_tree(rel):
    """Removes empty cgroup directories rel/** (deepest first) in every hierarchy."""
    for top in cgroup_dirs(rel):
        rmdir_deepest_first(sub for sub, _, _ in os.walk(top))


def procs_in_cgroups_matching(pattern):
    """Pids whose /proc/PID/cgroup has a path matching the regex pattern."""
    rx = re.compile(pattern)
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cgroup") as f:
                if any(rx.search(l.split(":", 2)[2]) for l in f if l.count(":") >= 2):
                    found.append(int(d))
        except OSError:
            pass
    return found


def state_entries(root):
    try:
        return set(os.listdir(root))
    except OSError:
        return set()


def drive_pty(argv, env, steps, timeout=20):
    """Runs argv on a new pty; for each (text to send, bytes to wait for) writes the text, then
    reads until the bytes appear after the previous match. Returns (all output, exit status)."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    out = b""
    pos = 0

    def read_until(want, deadline):
        nonlocal out, pos
        while time.monotonic() < deadline:
            if want is not None and want in out[pos:]:
                pos = out.index(want, pos) + len(want)
                return True
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    d = os.read(fd, 4096)
                except OSError:  # EIO: the other side is closed
                    return False
                if not d:
                    return False
                out += d
        return False

    deadline = time.monotonic() + timeout
    st = None
    try:
        for send, want in steps:
            if send:
                os.write(fd, send)
            if not read_until(want, deadline) and want is not None:
                break
        read_until(None, min(deadline, time.monotonic() + 5))
    finally:
        end = time.monotonic() + 10
        while st is None and time.monotonic() < end:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                st = status
            else:
                time.sleep(0.05)
        if st is None:
            os.kill(pid, 9)
            _, st = os.waitpid(pid, 0)
        os.close(fd)
    return out, os.waitstatus_to_exitcode(st)


def shell_on_pty(argv, env, exit_code):
    """Runs argv (a client starting `sh` in a container with a terminal) on a pty, asks the shell
    for its tty and a sum, exits it with exit_code. Returns (output without CRs, exit status).
    Some clients (ctr) leave their own terminal cooked, so a CR may come from either pty."""
    out, status = drive_pty(argv, env, [
        (None, b"# "),
        (b"tty; [ -t 0 ] && echo stdin-is-a-tty; echo $((6*7))\r", b"42\r"),
        (None, b"# "),
        (f"exit {exit_code}\r".encode(), None),
    ])
    return out.decode(errors="replace").replace("\r", ""), status


# ------------------------------------------------------------------------------------------------
# pytest glue shared by test_podman.py and test_containerd.py (pytest is imported only here, so
# bench/clients.py can use this module without it)

def runtime_for_test(name, cella):
    """The binary of runtime `name` (cella or the runc control); skips the test without runc."""
    import pytest
    if name == "runc":
        if not os.access(RUNC, os.X_OK):
            pytest.skip("runc (the control) is not installed")
        return RUNC
    return cella


def client_fixture(cls, make_top, tools, cella):
    """Generator for a module fixture: skips without root or one of tools, builds the busybox
    rootfs, yields a started cls(make_top()) with the image imported, and asserts its teardown
    found nothing left behind (teardown removes the directory)."""
    import pytest
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install {' '.join(tools)})")
    if not Path(cella).exists():
        pytest.skip(f"{cella} not built")
    try:
        rootfs = busybox_rootfs()
    except RuntimeError as e:
        pytest.skip(str(e))
    client = cls(make_top())
    try:
        client.start()
        client.import_rootfs(rootfs)
    except RuntimeError as e:
        client.teardown()
        pytest.fail(str(e))
    yield client
    problems = client.teardown()
    assert not problems, f"{cls.__name__} teardown had to clean up: {problems}"


def leak_checked(client, clean):
    """Generator for a per-test fixture: yields client, then fails the test if client.leaks()
    finds anything, after clean() removed it."""
    import pytest
    yield client
    problems = client.leaks()
    if problems:
        clean()
        pytest.fail("leaks after test: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------
# Podman

class Podman:
    """Podman with all its state in `top` (a directory this object owns and removes)."""

    IMAGE = "localhost/cella-busybox:test"
    # What the cleanup check in leaks() looks at; the state roots of the runtimes we drive.
    RUNTIME_ROOTS = {"cella": Path("/run/cella"), "runc": Path("/run/runc"), "crun": Path("/run/crun")}
    instances = 0

    def __init__(self, top: Path):
        self.top = Path(top)
        self.top.mkdir(parents=True, exist_ok=True)
        with open("/proc/filesystems") as f:
            self.driver = "overlay" if any(l.split()[-1] == "overlay" for l in f) else "vfs"
        self.conf = self.top / "containers.conf"
        self.storage_conf = self.top / "storage.conf"
        t = self.top
        self.conf.write_text(f"""\
[containers]
netns = "none"
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{t}/tmp"
volume_path = "{t}/volumes"

[network]
network_config_dir = "{t}/net"
""")
        self.storage_conf.write_text(f"""\
[storage]
driver = "{self.driver}"
graphroot = "{t}/graph"
runroot = "{t}/run"
""")
        self.env = dict(os.environ, CONTAINERS_CONF=str(self.conf),
                        CONTAINERS_STORAGE_CONF=str(self.storage_conf))
        Podman.instances += 1
        self.cgroup_parent = f"cellatest-pm-{os.getpid()}-{Podman.instances}"
        self.cidfiles = self.top / "cidfiles"
        self.cidfiles.mkdir(exist_ok=True)
        self.ncid = 0
        self.mounts_baseline = set()
        # conmon of `podman exec` still goes to /libpod_parent/conmon: removed at teardown when
        # it was not there before (rmdir fails harmlessly while anyone else uses it).
        self.had_libpod_parent = bool(cgroup_dirs("libpod_parent"))

    def start(self):
        """Nothing to start: podman has no daemon (the same steps as Containerd)."""

    def __call__(self, *args, runtime=None, timeout=60, **kw):
        """podman [--runtime RUNTIME] ARGS... -> CompletedProcess (text)."""
        args = [str(a) for a in args]
        if args and args[0] in ("run", "create"):
            self.ncid += 1
            args[1:1] = ["--cgroup-parent", "/" + self.cgroup_parent,
                         "--cidfile", str(self.cidfiles / str(self.ncid))]
        cmd = ["podman"] + (["--runtime", str(runtime)] if runtime else []) + args
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(cmd, env=self.env, timeout=timeout, **kw)

    def import_rootfs(self, rootfs):
        tarball = self.top / "rootfs.tar"
        p = sh(["tar", "-C", rootfs, "-cf", tarball, "."])
        if p.returncode != 0:
            raise RuntimeError(f"tar of {rootfs} failed: {p.stderr.strip()}")
        p = self("import", tarball, self.IMAGE)
        if p.returncode != 0:
            raise RuntimeError(f"podman import failed: {p.stderr.strip()[-300:]}")
        tarball.unlink()
        self.mounts_baseline = set(mounts_under(self.top))
        return self.IMAGE

    def ids(self):
        """Every container id run/create made through this object."""
        out = set()
        for f in self.cidfiles.iterdir():
            cid = f.read_text().strip()
            if cid:
                out.add(cid)
        return out

    def conmons(self):
        """conmon processes of our containers and the `podman container cleanup` processes
        they start (both name our graphroot on their command line)."""
        return [p for p, _ in pids_with_cmdline(str(self.top))]

    def leaks(self):
        """What is left after the containers were removed: containers podman still knows,
        conmon processes, mounts, container cgroups and processes in them, runtime state."""
        problems = []
        p = self("ps", "-aq")
        if p.stdout.strip():
            problems.append(f"podman still lists containers: {p.stdout.split()}")
        pids = wait_gone(self.conmons)
        if pids:
            problems.append(f"conmon processes left: {pids}")
        # The storage driver's own home mount (graph/overlay) comes and goes with podman's
        # storage use; it is podman's, not a container's.
        home = str(self.top / "graph" / self.driver)
        end = time.time() + 5
        while True:
            extra = set(mounts_under(self.top)) - self.mounts_baseline - {home}
            if not extra or time.time() > end:
                break
            time.sleep(0.1)
        if extra:
            problems.append(f"mounts left: {sorted(extra)}")
        end = time.time() + 5  # the exit command's `podman container cleanup` may still run
        while True:
            left = [d for top in cgroup_dirs(self.cgroup_parent) for d in top.glob("libpod-*")]
            if not left or time.time() > end:
                break
            time.sleep(0.1)
        if left:
            tasks = sum(len((d / "cgroup.procs").read_text().split()) for d in left if (d / "cgroup.procs").exists())
            problems.append(f"container cgroups left ({tasks} processes in them): {sorted(map(str, left))}")
        procs = procs_in_cgroups_matching(rf"^/{self.cgroup_parent}/libpod-")
        if procs:
            problems.append(f"processes left in container cgroups: {procs}")
        ids = self.ids()
        for name, root in self.RUNTIME_ROOTS.items():
            left = sorted(state_entries(root) & ids)
            if left:
                problems.append(f"{name} state left in {root}: {left}")
        return problems

    def teardown(self):
        """Removes every container, image and directory podman made; returns what was still
        there after podman's own cleanup (the leaks the teardown had to clean)."""
        problems = []
        ids = self("ps", "-aq").stdout.split()
        if ids:
            problems.append(f"containers left: {ids}")
            self("rm", "-f", "-t", "0", *ids)
        self("rmi", "-af")
        self("system", "reset", "-f")
        problems += force_clean(self.top, wait_gone(self.conmons), "conmon")
        rmdir_cgroup_tree(self.cgroup_parent)
        if not self.had_libpod_parent:
            rmdir_cgroup_tree("libpod_parent")
        shutil.rmtree(self.top, ignore_errors=True)
        return problems


# ------------------------------------------------------------------------------------------------
# containerd

class Containerd:
    """A containerd daemon with its own config, root, state and sockets in `top`, and ctr."""

    IMAGE_BASE = "localhost/cella-busybox"

    def __init__(self, top: Path):
        self.top = Path(top)
        self.top.mkdir(parents=True, exist_ok=True)
        # A container root in a user namespace (--uidmap) must reach the rootfs in our state dir:
        # its parents must be searchable. Not under pytest's 0700 /tmp/pytest-of-USER, which any
        # other pytest session starting on the host resets to 0700 while we run.
        for d in [self.top, *self.top.parents]:
            if str(d) in ("/", "/tmp"):
                break
            os.chmod(d, os.stat(d).st_mode | 0o011)
        self.sock = self.top / "containerd.sock"
        self.ns = f"cellatest{os.getpid()}"
        self.config = self.top / "config.toml"
        self.proc = None
        self.image = None
        self.fifo_dir = self.top / "fifo"
        t = self.top
        self.config.write_text(f"""\
version = 2
root = "{t}/root"
state = "{t}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.sock}"

[ttrpc]
  address = "{self.sock}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
""")
        self.run_dirs = ["/run/containerd/fifo", "/run/containerd/s", f"/run/containerd/runc/{self.ns}",
                         "/run/containerd/runc", "/run/containerd"]
        self.run_dirs_existed = {d: os.path.exists(d) for d in self.run_dirs}

    def start(self, timeout=20):
        self.log = open(self.top / "containerd.log", "w")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.sock.exists() and self.ctr("version", timeout=5).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"containerd did not answer on {self.sock} in {timeout} s: {self.log_tail()}")

    def log_tail(self, n=5):
        try:
            return " | ".join((self.top / "containerd.log").read_text().strip().splitlines()[-n:])
        except OSError:
            return ""

    def ctr(self, *args, timeout=60, **kw):
        cmd = ["ctr", "--address", str(self.sock), "--namespace", self.ns] + [str(a) for a in args]
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(cmd, timeout=timeout, **kw)

    def runtime_opts(self, runtime: Path, name: str):
        """ctr run options that make the runc shim use `runtime` with a private --root."""
        return ["--runc-binary", str(runtime), "--runc-root", str(self.runtime_root(name)),
                "--fifo-dir", str(self.fifo_dir)]

    def runtime_root(self, name):
        return self.top / f"runtime-root-{name}"

    def import_rootfs(self, rootfs):
        """Builds a single-layer OCI image of rootfs with umoci, imports it; returns its ref."""
        layout = self.top / "oci"
        tag = "test"
        steps = [["umoci", "init", "--layout", layout],
                 ["umoci", "new", "--image", f"{layout}:{tag}"],
                 ["umoci", "insert", "--image", f"{layout}:{tag}", rootfs, "/"],
                 ["umoci", "config", "--image", f"{layout}:{tag}", "--config.cmd", "sh",
                  "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                 ["umoci", "gc", "--layout", layout],
                 ["tar", "-C", layout, "-cf", self.top / "image.tar", "."]]
        for s in steps:
            p = sh(s)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(map(str, s[:2]))} failed: {p.stderr.strip()[-300:]}")
        index = json.loads((layout / "index.json").read_text())
        manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
        assert len(manifest["layers"]) == 1, manifest
        p = self.ctr("image", "import", "--base-name", self.IMAGE_BASE, self.top / "image.tar")
        if p.returncode != 0:
            raise RuntimeError(f"ctr image import failed: {p.stderr.strip()[-300:]}")
        shutil.rmtree(layout)
        (self.top / "image.tar").unlink()
        self.image = f"{self.IMAGE_BASE}:{tag}"
        return self.image

    def shims(self):
        return [p for p, cmd in pids_with_cmdline(str(self.sock)) if "containerd-shim" in cmd]

    def remove_all(self):
        """Kills and deletes every task and container of our namespace."""
        for cid in self.ctr("container", "ls", "-q").stdout.split():
            self.ctr("task", "kill", "-s", "KILL", cid)
            for _ in range(100):
                if "RUNNING" not in self.ctr("task", "ls").stdout:
                    break
                time.sleep(0.05)
            self.ctr("task", "delete", "-f", cid)
            self.ctr("container", "delete", cid)

    def leaks(self, runtime_names=("cella", "runc")):
        problems = []
        p = self.ctr("container", "ls", "-q")
        if p.stdout.strip():
            problems.append(f"containers left: {p.stdout.split()}")
        p = self.ctr("task", "ls", "-q")
        if p.stdout.strip():
            problems.append(f"tasks left: {p.stdout.split()}")
        pids = wait_gone(self.shims)
        if pids:
            problems.append(f"shim processes left: {pids}")
        m = mounts_under(self.top / "state")
        if m:
            problems.append(f"mounts left: {m}")
        for name in runtime_names:
            d = self.runtime_root(name) / self.ns  # the shim adds the namespace to --runc-root
            if state_entries(d):
                problems.append(f"{name} state left in {d}: {sorted(state_entries(d))}")
        left = [str(d) for top in cgroup_dirs(self.ns) for d in top.iterdir() if d.is_dir()]
        if left:
            problems.append(f"container cgroups left: {left}")
        procs = procs_in_cgroups_matching(rf"^/{self.ns}/")
        if procs:
            problems.append(f"processes left in container cgroups: {procs}")
        return problems

    def teardown(self):
        """Stops containerd and removes everything it and its shims made; returns what had to
        be cleaned by force."""
        problems = []
        if self.proc is not None and self.proc.poll() is None:
            self.remove_all()
            if self.image:
                self.ctr("image", "rm", self.image)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append("containerd ignored SIGTERM")
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        problems += force_clean(self.top, self.shims(), "shim")
        rmdir_cgroup_tree(self.ns)
        rmdir_deepest_first(d for d in self.run_dirs if not self.run_dirs_existed[d])
        shutil.rmtree(self.top, ignore_errors=True)
        return problems
