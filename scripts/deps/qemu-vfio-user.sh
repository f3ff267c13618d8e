#!/usr/bin/env bash
# A QEMU with the vfio-user client (QEMU >= 10.1, `-device vfio-user-pci`), which
# bookworm does not have: a minimal Debian trixie chroot (debootstrap) with
# qemu-system-x86 from trixie-backports. Prints the chroot's path. Idempotent: an
# existing chroot with a working vfio-user-pci is reused. Needs root.
#   TETHER_VM_DIR  where it goes (default /var/tmp/tether-vm); the chroot is $DIR/trixie
# Run QEMU from it with scripts/deps/qemu-chroot-run.sh (mounts /proc, /dev, /sys and
# the paths the VM needs).
set -euo pipefail
DIR=${TETHER_VM_DIR:-/var/tmp/tether-vm}
ROOT=$DIR/trixie
log=$DIR/qemu-vfio-user.log
has_vfio_user() {
    [ -x "$ROOT/usr/bin/qemu-system-x86_64" ] &&
        chroot "$ROOT" qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"'
}
if has_vfio_user; then
    echo "$ROOT"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/deps/qemu-vfio-user.sh: needs root (debootstrap, chroot)" >&2
    exit 1
fi
mkdir -p "$DIR"
: >"$log"
if ! command -v debootstrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends debootstrap >>"$log" 2>&1 || {
        apt-get update >>"$log" 2>&1
        apt-get install -y --no-install-recommends debootstrap >>"$log" 2>&1
    } || { echo "scripts/deps/qemu-vfio-user.sh: cannot install debootstrap; see $log" >&2; exit 1; }
fi
MIRROR=${TETHER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    rm -rf "$ROOT"
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >>"$log" 2>&1 || {
        echo "scripts/deps/qemu-vfio-user.sh: debootstrap trixie failed; see $log" >&2
        exit 1
    }
fi
echo "deb $MIRROR trixie-backports main" >"$ROOT/etc/apt/sources.list.d/backports.list"
# A mirror's Release file can be past its Valid-Until date.
chroot "$ROOT" apt-get -o Acquire::Check-Valid-Until=false update >>"$log" 2>&1
DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y --no-install-recommends \
    -t trixie-backports qemu-system-x86 >>"$log" 2>&1 || {
    echo "scripts/deps/qemu-vfio-user.sh: installing qemu-system-x86 from trixie-backports failed; see $log" >&2
    exit 1
}
has_vfio_user || {
    echo "scripts/deps/qemu-vfio-user.sh: the chroot's QEMU has no vfio-user-pci" >&2
    exit 1
}
echo "$ROOT"
