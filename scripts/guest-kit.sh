#!/bin/bash
# guest-kit.sh [--out DIR] — builds Cella's guest kit from Debian packages only.
#
# Output (default DIR: ${CELLA_CACHE:-/var/cache/cella}/guest-kit):
#   vmlinuz             Debian cloud kernel (bzImage)
#   vmlinux             the ELF kernel extracted from it (carries the PVH entry note)
#   initramfs.cpio.gz   busybox-static + /init (agent/init/init.c) + virtio modules
#   modules/            the modules shipped: guest ones and the sandbox's kvm ones,
#                       with guest-modules.list and sandbox-modules.list (load order)
#   config, KERNEL_VERSION, KEY
# The kit is keyed by the package versions and by the sources that shape it, so a re-run
# with nothing changed only prints the paths (one "name=path" line each).
# Needs: apt-get (Debian archive), dpkg-deb, lz4, cpio, gzip, gcc (static glibc), sha256sum.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${CELLA_CACHE:-/var/cache/cella}
out=$cache/guest-kit

while [ $# -gt 0 ]; do
	case $1 in
	--out) [ $# -ge 2 ] || { echo "guest-kit.sh: --out needs a directory" >&2; exit 2; }
		out=$2; shift 2 ;;
	--out=*) out=${1#--out=}; shift ;;
	-h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "guest-kit.sh: unknown argument '$1' (usage: guest-kit.sh [--out DIR])" >&2; exit 2 ;;
	esac
done

die() { echo "guest-kit.sh: $*" >&2; exit 1; }

# Modules for the micro-VM guest and, in addition, for the nested-KVM sandbox.
# Names use '_' or '-' as the .ko file does; built-in or missing ones are skipped.
guest_modules="virtio_mmio virtio_pci virtio_blk virtio_net virtio-rng virtio_console
	vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport ext4"
sandbox_modules="irqbypass kvm kvm-amd tun"

candidate() { # PKG -> candidate version from the apt lists
	apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }'
}

print_paths() {
	local f
	for f in vmlinuz vmlinux initramfs.cpio.gz modules config; do
		echo "$f=$out/$f"
	done
	echo "kernel_version=$(cat "$out/KERNEL_VERSION")"
}

src_sum=$(cat "$top/agent/init/init.c" "$0" | sha256sum | cut -c1-16)
# Fast path: same sources and no apt list changed since the kit was built.
if [ -f "$out/KEY" ] && [ -f "$out/initramfs.cpio.gz" ] && grep -q " src=$src_sum\$" "$out/KEY" &&
	[ -z "$(find /var/lib/apt/lists -maxdepth 1 -newer "$out/KEY" -print -quit 2>/dev/null)" ]; then
	print_paths
	exit 0
fi

meta_pkg=linux-image-cloud-amd64
kpkg=$(apt-cache depends "$meta_pkg" 2>/dev/null |
	awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
kver_pkg=${kpkg:+$(candidate "$kpkg")}
bb_ver=$(candidate busybox-static)
if [ -z "$kpkg" ] || [ -z "$kver_pkg" ] || [ -z "$bb_ver" ] || [ "$kver_pkg" = "(none)" ]; then
	# No apt lists: a kit built earlier is still good.
	[ -f "$out/KEY" ] && { print_paths; exit 0; }
	die "cannot resolve $meta_pkg / busybox-static with apt-cache (run apt-get update)"
fi

key="$kpkg=$kver_pkg busybox-static=$bb_ver src=$src_sum"
if [ -f "$out/KEY" ] && [ "$(cat "$out/KEY")" = "$key" ] && [ -f "$out/initramfs.cpio.gz" ]; then
	print_paths
	exit 0
fi

echo "guest-kit.sh: building ($key) into $out" >&2
mkdir -p "$cache/debs" "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.guest-kit.XXXXXX")
trap 'rm -rf "$work"' EXIT

# fetch PKG VERSION -> path of the .deb in $cache/debs (downloads it once).
fetch() {
	local pkg=$1 ver=$2 f
	for f in "$cache/debs/${pkg}"_*.deb; do
		[ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && { echo "$f"; return; }
	done
	(cd "$work" && apt-get download -q "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
	for f in "$work/${pkg}"_*.deb; do
		mv "$f" "$cache/debs/" && echo "$cache/debs/$(basename "$f")" && return
	done
	die "apt-get download $pkg=$ver produced no .deb"
}

kdeb=$(fetch "$kpkg" "$kver_pkg")
bbdeb=$(fetch busybox-static "$bb_ver")
dpkg-deb -x "$kdeb" "$work/k"
dpkg-deb -x "$bbdeb" "$work/bb"

kernel_version=$(ls "$work/k/lib/modules")
[ -n "$kernel_version" ] || die "$kdeb: no lib/modules/<version>"
moddir=$work/k/lib/modules/$kernel_version
kit=$work/kit
mkdir -p "$kit/modules"
cp "$work/k/boot/vmlinuz-$kernel_version" "$kit/vmlinuz"
cp "$work/k/boot/config-$kernel_version" "$kit/config"
echo "$kernel_version" > "$kit/KERNEL_VERSION"

# --- vmlinux: the bzImage's protected-mode payload is LZ4 (legacy frame) followed by a
# 4-byte little-endian uncompressed size; payload_offset/length live in the setup header.
le() { od -An -t "u$2" -j "$(($3))" -N "$2" "$1" | tr -d ' \n'; }
bz=$kit/vmlinuz
[ "$(od -An -c -j $((0x202)) -N 4 "$bz" | tr -d ' ')" = "HdrS" ] || die "$bz: not a bzImage"
setup_sects=$(le "$bz" 1 0x1f1)
[ "$setup_sects" -ne 0 ] || setup_sects=4
payload_off=$(( (setup_sects + 1) * 512 + $(le "$bz" 4 0x248) ))
payload_len=$(le "$bz" 4 0x24c)
magic=$(od -An -t x1 -j "$payload_off" -N 4 "$bz" | tr -d ' \n')
[ "$magic" = "02214c18" ] || die "$bz: payload is not LZ4 (magic $magic)"
dd if="$bz" bs=1M iflag=skip_bytes,count_bytes skip="$payload_off" count=$((payload_len - 4)) \
	status=none | lz4 -dcq > "$kit/vmlinux" ||
	die "$bz: LZ4 payload does not decompress"
want_size=$(le "$bz" 4 $((payload_off + payload_len - 4)))
[ "$(stat -c %s "$kit/vmlinux")" = "$want_size" ] || die "$bz: vmlinux size is not $want_size"
[ "$(head -c 4 "$kit/vmlinux" | od -An -c | tr -d ' ')" = "177ELF" ] || die "vmlinux: not ELF"

# --- modules: resolve dependencies from each .ko's .modinfo "depends=" (no kmod needed).
declare -A ko_path=() seen=()
while IFS= read -r f; do
	n=$(basename "$f" .ko)
	ko_path[${n//-/_}]=${f#"$moddir/"}
done < <(find "$moddir/kernel" -name '*.ko')

order=()
resolve() { # NAME: append NAME's dependencies, then NAME, to $order
	local n=${1//-/_} d deps
	[ -n "${seen[$n]:-}" ] && return
	seen[$n]=1
	if [ -z "${ko_path[$n]:-}" ]; then
		grep -qE "/${n//_/[-_]}\.ko$" "$moddir/modules.builtin" ||
			echo "guest-kit.sh: note: module $1 is neither built in nor shipped" >&2
		return
	fi
	deps=$(tr '\0' '\n' < "$moddir/${ko_path[$n]}" |
		awk -F= '/^depends=/ && !done { print $2; done = 1 }')
	for d in ${deps//,/ }; do resolve "$d"; done
	order+=("${ko_path[$n]}")
}
write_list() { # FILE NAMES...: the modules' load order, copying them into the kit
	local list=$1 rel; shift
	order=()
	for m in "$@"; do resolve "$m"; done
	for rel in "${order[@]}"; do
		mkdir -p "$kit/modules/$(dirname "$rel")"
		cp "$moddir/$rel" "$kit/modules/$rel"
		echo "$rel"
	done > "$list"
}
# shellcheck disable=SC2086
write_list "$kit/modules/guest-modules.list" $guest_modules
seen=()
# shellcheck disable=SC2086
write_list "$kit/modules/sandbox-modules.list" $sandbox_modules

# --- the initramfs
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc,lib/modules}
chmod 1777 "$root/tmp"
cp "$work/bb/bin/busybox" "$root/bin/busybox"
"$root/bin/busybox" --list-full | while IFS= read -r applet; do
	case $applet in bin/busybox|sbin/init|linuxrc) continue ;; esac
	[ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
[ -e "$root/bin/sh" ] || die "busybox has no sh applet"
if [ "$(id -u)" = 0 ]; then
	mknod -m 600 "$root/dev/console" c 5 1
	mknod -m 666 "$root/dev/null" c 1 3
fi
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
gcc -std=gnu11 -O2 -D_GNU_SOURCE -Wall -Wextra -Werror -Wformat=2 -Wmissing-prototypes \
	-Wstrict-prototypes -Wundef -Wwrite-strings -static -s \
	-o "$root/init" "$top/agent/init/init.c" || die "building agent/init/init.c failed"
while IFS= read -r rel; do
	mkdir -p "$root/lib/modules/$(dirname "$rel")"
	cp "$kit/modules/$rel" "$root/lib/modules/$rel"
done < "$kit/modules/guest-modules.list"
cp "$kit/modules/guest-modules.list" "$root/lib/modules/cella-modules.list"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
	cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9n) > "$kit/initramfs.cpio.gz"

echo "$key" > "$kit/KEY"
rm -rf "$out"
mv "$kit" "$out"
print_paths
