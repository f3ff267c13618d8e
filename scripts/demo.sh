#!/usr/bin/env bash
# The main job, for now: write the sample conversation as pcap and decode it, with
# tether's own decoder and with the Wireshark dissector in tshark (installed from
# Debian when missing and run as root). Later issues replace this with `tether demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/tether-sample.pcap}
cargo build --quiet --release -p tether
bin=target/release/tether

echo "==> tether wire sample --pcap $out"
"$bin" wire sample --pcap "$out"

echo
echo "==> tether wire decode --pcap $out"
"$bin" wire decode --pcap "$out"

if ! command -v tshark >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo
    echo "==> installing tshark (scripts/deps/tshark.sh)"
    scripts/deps/tshark.sh || true
fi
echo
if command -v tshark >/dev/null 2>&1; then
    echo "==> tshark -X lua_script:contrib/wireshark/tether.lua -r $out"
    tshark -X lua_script:contrib/wireshark/tether.lua -2 -r "$out" 2>/dev/null
else
    echo "(tshark not available: skipping the Wireshark dissector view)"
fi
