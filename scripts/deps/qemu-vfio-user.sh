#!/usr/bin/env bash
# A QEMU with the vfio-user client (QEMU >= 10.1, `-device vfio-user-pci`), which
# bookworm does not have: a minimal Debian trixie chroot (debootstrap) with
# qemu-system-x86 from trixie-backports. Prints the chroot's path. Idempotent and safe
# to run concurrently (scripts/deps/lib.sh): an existing chroot with a working
# vfio-user-pci is reused. Needs root.
#   TETHER_VM_DIR          where it goes (default /var/tmp/tether-vm); the chroot is $DIR/trixie
#   TETHER_DEBIAN_MIRROR   the Debian archive to use (default: the one this machine's
#                          apt sources name for its own release)
# `tether vm --qemu-root DIR` runs QEMU from it (in a private mount namespace with /proc,
# /dev, /sys and the paths the VM needs).
set -euo pipefail
DIR=${TETHER_VM_DIR:-/var/tmp/tether-vm}
ROOT=$DIR/trixie
DEPS_LOG=$DIR/qemu-vfio-user.log
. "$(dirname "$0")/lib.sh"
# has_vfio_user [DIR]: the chroot at DIR (default $ROOT) has a QEMU with vfio-user-pci.
has_vfio_user() {
    local r=${1:-$ROOT}
    [ -x "$r/usr/bin/qemu-system-x86_64" ] &&
        chroot "$r" qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"'
}
deps_flock
if has_vfio_user; then
    echo "$ROOT"
    exit 0
fi
deps_need_root "a QEMU with vfio-user-pci ($ROOT)"
mkdir -p "$DIR"
: >"$DEPS_LOG"
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
apt_update_if_stale
MIRROR=$(debian_mirror)
echo "mirror: $MIRROR" >>"$DEPS_LOG"
# Made whole in a scratch directory (debootstrap, then QEMU from trixie-backports) and
# moved into place only when it works: an interrupted run leaves nothing that looks
# finished, and a chroot that is there but broken is made again.
P=$ROOT.partial
rm -rf "$ROOT" "$P"
debootstrap --variant=minbase trixie "$P" "$MIRROR" >>"$DEPS_LOG" 2>&1 ||
    deps_fail "debootstrap trixie from $MIRROR failed"
echo "deb $MIRROR trixie-backports main" >"$P/etc/apt/sources.list.d/backports.list"
# A mirror's Release file can be past its Valid-Until date.
chroot "$P" apt-get -o Acquire::Check-Valid-Until=false -o Acquire::Retries=3 update >>"$DEPS_LOG" 2>&1 ||
    deps_fail "apt-get update in the trixie chroot failed"
DEBIAN_FRONTEND=noninteractive chroot "$P" apt-get install -y --no-install-recommends \
    -t trixie-backports qemu-system-x86 >>"$DEPS_LOG" 2>&1 ||
    deps_fail "installing qemu-system-x86 from trixie-backports failed"
has_vfio_user "$P" || deps_fail "the chroot's QEMU has no vfio-user-pci"
mv "$P" "$ROOT"
echo "$ROOT"
