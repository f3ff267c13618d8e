#!/usr/bin/env bash
# Installs Debian's QEMU (qemu-system-x86 with SeaBIOS; bookworm: 7.2, which has the
# multi-process proxy device x-pci-proxy-dev) for the VM tests. Idempotent and safe to
# run concurrently (scripts/deps/lib.sh). Needs root to install.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
deps_flock
command -v qemu-system-x86_64 >/dev/null 2>&1 && exit 0
deps_need_root qemu-system-x86_64
: >"$DEPS_LOG"
apt_install qemu-system-x86
command -v qemu-system-x86_64 >/dev/null || deps_fail "qemu-system-x86 installed but qemu-system-x86_64 is not on PATH"
