#!/usr/bin/env bash
# A stock Debian guest for the VM tests: the bookworm Linux 6.1 kernel (package
# linux-image-*-amd64-unsigned, its modules included) and busybox-static, unpacked
# under $TETHER_VM_DIR/guest (default /var/tmp/tether-vm/guest). Idempotent and safe to
# run concurrently (scripts/deps/lib.sh). Needs root for apt-get. Prints the kernel
# version; the kernel is guest/boot/vmlinuz-KVER, the modules guest/lib/modules/KVER,
# busybox guest/bin/busybox.
set -euo pipefail
VM=${TETHER_VM_DIR:-/var/tmp/tether-vm}
DIR=$VM/guest
DEPS_LOG=$VM/guest-linux.log
. "$(dirname "$0")/lib.sh"
ready() {
    [ -f "$DIR/kver" ] && [ -x "$DIR/bin/busybox" ] && [ -f "$DIR/boot/vmlinuz-$(cat "$DIR/kver")" ]
}
deps_flock
if ready; then
    cat "$DIR/kver"
    exit 0
fi
deps_need_root "the guest kernel ($DIR)"
mkdir -p "$VM"
: >"$DEPS_LOG"
apt_update_if_stale
newest() {
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
        sed 's/ .*//' | sort -V | tail -n 1
}
pkg=$(newest)
[ -n "$pkg" ] || { apt_update; pkg=$(newest); }
[ -n "$pkg" ] || deps_fail "no linux-image-6.1.0-*-amd64-unsigned package in the apt lists"
# Unpacked into a scratch directory and moved into place whole, so an interrupted run
# leaves nothing that looks finished.
rm -rf "$DIR" "$DIR.partial"
mkdir -p "$DIR.partial/debs"
(cd "$DIR.partial/debs" && apt-get "${apt_opts[@]}" download "$pkg" busybox-static) >>"$DEPS_LOG" 2>&1 ||
    deps_fail "apt-get download $pkg busybox-static failed"
for deb in "$DIR.partial"/debs/*.deb; do
    dpkg-deb -x "$deb" "$DIR.partial" >>"$DEPS_LOG" 2>&1 || deps_fail "dpkg-deb -x $deb failed"
done
rm -rf "$DIR.partial/debs"
kver=${pkg#linux-image-}
kver=${kver%-unsigned}
[ -f "$DIR.partial/boot/vmlinuz-$kver" ] || deps_fail "no kernel in $pkg"
echo "$kver" >"$DIR.partial/kver"
mv "$DIR.partial" "$DIR"
echo "$kver"
