#!/usr/bin/env bash
# Installs Debian's QEMU (qemu-system-x86 with SeaBIOS; bookworm: 7.2, which has the
# multi-process proxy device x-pci-proxy-dev) for the VM tests. Idempotent: does
# nothing when qemu-system-x86_64 is already there. Needs root for apt-get.
set -euo pipefail
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/deps/qemu.sh: qemu-system-x86_64 is missing and installing it needs root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log=/tmp/tether-apt-qemu.log
if ! apt-get install -y --no-install-recommends qemu-system-x86 >"$log" 2>&1; then
    apt-get update >>"$log" 2>&1
    apt-get install -y --no-install-recommends qemu-system-x86 >>"$log" 2>&1 || {
        echo "scripts/deps/qemu.sh: apt-get install qemu-system-x86 failed; see $log" >&2
        exit 1
    }
fi
command -v qemu-system-x86_64 >/dev/null
