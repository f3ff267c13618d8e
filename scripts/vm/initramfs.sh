#!/usr/bin/env bash
# Builds a busybox initramfs for a test guest: the kernel modules named (with the
# modules they depend on, read from each module's .modinfo since the package has no
# modules.dep), and an /init that loads them, runs SCRIPT with sh, prints
# "=== guest done", and powers off.
#
# usage: scripts/vm/initramfs.sh OUT.cpio.gz SCRIPT [MODULE...]
#   (kernel and busybox from scripts/deps/guest-linux.sh; default modules:
#    virtio_pci virtio_blk). TETHER_GUEST_TOOLS="PROG..." copies static programs
#   into the guest's /bin; TETHER_GUEST_BINS="NAME..." copies programs of this
#   machine (found on PATH) with their shared libraries.
set -euo pipefail
out=$1
script=$2
shift 2
modules=${*:-virtio_pci virtio_blk}
G=${TETHER_VM_DIR:-/var/tmp/tether-vm}/guest
kver=$(cat "$G/kver")
M=$G/lib/modules/$kver
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
R=$work/root
mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,mnt,lib/modules}
cp "$G/bin/busybox" "$R/bin/busybox"
for app in $("$R/bin/busybox" --list); do
    [ "$app" = busybox ] || ln -sf busybox "$R/bin/$app"
done

declare -A seen=()
order=()
find_module() {
    local a=${1//-/_} b=${1//_/-}
    find "$M/kernel" \( -name "$a.ko" -o -name "$b.ko" -o -name "$a.ko.xz" -o -name "$b.ko.xz" \) | head -n 1
}
add_module() {
    local name=${1//-/_} path deps d
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    path=$(find_module "$1")
    if [ -z "$path" ]; then
        # Built into the kernel: nothing to load.
        grep -qE "/(${name}|${name//_/-})\.ko$" "$M/modules.builtin" && return 0
        echo "initramfs.sh: module $1 not found for $kver" >&2
        exit 1
    fi
    deps=$(tr '\0' '\n' <"$path" | grep -a '^depends=' | head -n 1 | cut -d= -f2 | tr ',' ' ')
    for d in $deps; do add_module "$d"; done
    order+=("$path")
}
for m in $modules; do add_module "$m"; done
: >"$R/modules"
for p in "${order[@]}"; do
    cp "$p" "$R/lib/modules/"
    basename "$p" >>"$R/modules"
done
cp "$script" "$R/test.sh"
for t in ${TETHER_GUEST_TOOLS:-}; do cp "$t" "$R/bin/"; done
# Dynamically linked programs of this machine, with the shared libraries ldd names
# (and the loader) at the same paths in the guest.
for b in ${TETHER_GUEST_BINS:-}; do
    p=$(command -v "$b")
    cp "$p" "$R/bin/"
    for lib in $(ldd "$p" | grep -o '/[^ ]*'); do
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
done
cat >"$R/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m || echo "=== insmod $m failed"; done
echo "=== guest up at $(cut -d' ' -f1 /proc/uptime) s"
sh /test.sh
echo "=== guest done"
poweroff -f
INIT
chmod +x "$R/init"
(cd "$R" && find . | "$R/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$out"
