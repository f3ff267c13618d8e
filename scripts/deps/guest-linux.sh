#!/usr/bin/env bash
# A stock Debian guest for the VM tests: the bookworm Linux 6.1 kernel (package
# linux-image-*-amd64-unsigned, its modules included) and busybox-static, unpacked
# under $TETHER_VM_DIR/guest (default /var/tmp/tether-vm/guest). Idempotent. Needs
# root for apt-get. Prints the kernel version; the kernel is guest/boot/vmlinuz-KVER,
# the modules guest/lib/modules/KVER, busybox guest/bin/busybox.
set -euo pipefail
DIR=${TETHER_VM_DIR:-/var/tmp/tether-vm}/guest
log=${TETHER_VM_DIR:-/var/tmp/tether-vm}/guest-linux.log
if [ -f "$DIR/kver" ] && [ -x "$DIR/bin/busybox" ] && [ -f "$DIR/boot/vmlinuz-$(cat "$DIR/kver")" ]; then
    cat "$DIR/kver"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/deps/guest-linux.sh: needs root (apt-get)" >&2
    exit 1
fi
mkdir -p "$DIR/debs"
: >"$log"
newest() {
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
        sed 's/ .*//' | sort -V | tail -n 1
}
cd "$DIR/debs"
pkg=$(newest)
if [ -z "$pkg" ] || ! apt-get download "$pkg" busybox-static >>"$log" 2>&1; then
    apt-get update >>"$log" 2>&1
    pkg=$(newest)
    apt-get download "$pkg" busybox-static >>"$log" 2>&1 || {
        echo "scripts/deps/guest-linux.sh: apt-get download $pkg busybox-static failed; see $log" >&2
        exit 1
    }
fi
for deb in ./*.deb; do
    dpkg-deb -x "$deb" "$DIR"
done
rm -f ./*.deb
kver=${pkg#linux-image-}
kver=${kver%-unsigned}
[ -f "$DIR/boot/vmlinuz-$kver" ] || { echo "scripts/deps/guest-linux.sh: no kernel in $pkg" >&2; exit 1; }
echo "$kver" >"$DIR/kver"
echo "$kver"
