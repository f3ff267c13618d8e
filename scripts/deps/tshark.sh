#!/usr/bin/env bash
# Installs Debian's tshark (Wireshark's terminal UI, with Lua) for the dissector test.
# Idempotent and safe to run concurrently (scripts/deps/lib.sh). Needs root to install.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
deps_flock
command -v tshark >/dev/null 2>&1 && exit 0
deps_need_root tshark
: >"$DEPS_LOG"
# wireshark-common asks whether non-root users may capture; answer no, without a terminal.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt_install tshark
command -v tshark >/dev/null || deps_fail "tshark installed but not on PATH"
