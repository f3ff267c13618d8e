#!/usr/bin/env bash
# Installs Debian's tshark (Wireshark's terminal UI, with Lua) for the dissector test.
# Idempotent: does nothing when tshark is already there. Needs root for apt-get.
set -euo pipefail
if command -v tshark >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/deps/tshark.sh: tshark is missing and installing it needs root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# wireshark-common asks whether non-root users may capture; answer no, without a terminal.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
if ! apt-get install -y --no-install-recommends tshark >/tmp/tether-apt-tshark.log 2>&1; then
    apt-get update >>/tmp/tether-apt-tshark.log 2>&1
    apt-get install -y --no-install-recommends tshark >>/tmp/tether-apt-tshark.log 2>&1 || {
        echo "scripts/deps/tshark.sh: apt-get install tshark failed; see /tmp/tether-apt-tshark.log" >&2
        exit 1
    }
fi
command -v tshark >/dev/null
