#!/bin/bash
# mk-bundle.sh [DIR] — builds a busybox OCI bundle (rootfs/ + config.json) from Debian's
# busybox-static and prints its path.
#
# DIR defaults to build/bundle (or $CELLA_CACHE/bundle when CELLA_CACHE is set). The bundle is
# cached: with the same busybox and the same script it is not rebuilt. config.json comes from
# `build/cella spec` when that binary exists (else a built-in minimal one), with terminal off and
# args ["sh", "-c", "echo hello from cella"]. Tests copy the bundle and edit config.json.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${CELLA_CACHE:-/var/cache/cella}
if [ $# -gt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
	sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
	exit $([ $# -gt 1 ] && echo 2 || echo 0)
fi
if [ $# -eq 1 ]; then
	out=$1
elif [ -n "${CELLA_CACHE:-}" ]; then
	out=$CELLA_CACHE/bundle
else
	out=$top/build/bundle
fi

die() { echo "mk-bundle.sh: $*" >&2; exit 1; }

# busybox-static: the installed one, else the .deb from Debian's archive (kept in the cache).
busybox=
if [ -x /bin/busybox ] && dpkg -L busybox-static 2>/dev/null | grep -qx /bin/busybox; then
	busybox=/bin/busybox
else
	debs=$cache/debs
	mkdir -p "$debs"
	deb=$(ls "$debs"/busybox-static_*.deb 2>/dev/null | head -1 || true)
	if [ -z "$deb" ]; then
		(cd "$debs" && apt-get download -q busybox-static >&2) || die "cannot download busybox-static"
		deb=$(ls "$debs"/busybox-static_*.deb | head -1)
	fi
	tmpx=$(mktemp -d)
	trap 'rm -rf "$tmpx"' EXIT
	dpkg-deb -x "$deb" "$tmpx"
	busybox=$tmpx/bin/busybox
fi
[ -x "$busybox" ] || die "no busybox binary"

key="$(sha256sum "$busybox" | cut -c1-16) $(sha256sum "$0" | cut -c1-16)"
if [ -f "$out/.key" ] && [ "$(cat "$out/.key")" = "$key" ] && [ -f "$out/config.json" ]; then
	echo "$out"
	exit 0
fi

rm -rf "$out.tmp"
mkdir -p "$out.tmp/rootfs"
root=$out.tmp/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,home,run,var/tmp,mnt}
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 700 "$root/root"
install -m 0755 "$busybox" "$root/bin/busybox"
# One symlink per applet, where busybox would install it.
for applet in $("$busybox" --list-full); do
	case $applet in bin/busybox) continue ;; esac
	[ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo cella >"$root/etc/hostname"
: >"$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$root/etc/hosts"

if [ -x "$top/build/cella" ] && "$top/build/cella" spec --bundle "$out.tmp" 2>/dev/null &&
	[ -f "$out.tmp/config.json" ] && command -v python3 >/dev/null; then
	python3 - "$out.tmp/config.json" <<'PYEOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "echo hello from cella"]
c["root"] = {"path": "rootfs", "readonly": False}
json.dump(c, open(p, "w"), indent=2)
PYEOF
else
	cat >"$out.tmp/config.json" <<'EOF'
{
  "ociVersion": "1.2.0",
  "process": {
    "terminal": false,
    "user": { "uid": 0, "gid": 0 },
    "args": [ "sh", "-c", "echo hello from cella" ],
    "env": [ "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm" ],
    "cwd": "/",
    "capabilities": {
      "bounding": [ "CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE" ],
      "effective": [ "CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE" ],
      "permitted": [ "CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE" ]
    },
    "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 } ],
    "noNewPrivileges": true
  },
  "root": { "path": "rootfs", "readonly": false },
  "hostname": "cella",
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
      "options": [ "nosuid", "strictatime", "mode=755", "size=65536k" ] },
    { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
      "options": [ "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5" ] },
    { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
      "options": [ "nosuid", "noexec", "nodev", "mode=1777", "size=65536k" ] },
    { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
      "options": [ "nosuid", "noexec", "nodev" ] },
    { "destination": "/sys", "type": "sysfs", "source": "sysfs",
      "options": [ "nosuid", "noexec", "nodev", "ro" ] },
    { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
      "options": [ "nosuid", "noexec", "nodev", "relatime", "ro" ] }
  ],
  "linux": {
    "resources": { "devices": [ { "allow": false, "access": "rwm" } ] },
    "namespaces": [ { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                    { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" } ],
    "maskedPaths": [ "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                     "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                     "/proc/sched_debug", "/sys/firmware", "/proc/scsi" ],
    "readonlyPaths": [ "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                       "/proc/sysrq-trigger" ]
  }
}
EOF
fi
echo "$key" >"$out.tmp/.key"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
