#!/usr/bin/env bash
# tether's data plane against DPDK itself, on this machine, in one run, with ratios.
# Installs Debian's DPDK (dpdk-dev: dpdk-test, dpdk-testpmd) when missing. Run as root
# (veth rows need namespaces-free veth creation; DPDK runs with --no-huge unless huge
# pages are reserved). The veth rows run in a network namespace of their own, created
# and removed here. Takes about 15 minutes; --autotest adds DPDK's own
# mempool_perf_autotest (35 minutes) as a cross-check of the mempool row.
#
#   bench/dpdk-compare.sh [--autotest]
set -euo pipefail
cd "$(dirname "$0")/.."

autotest=0
case "${1:-}" in
    "") ;;
    --autotest) autotest=1 ;;
    *) echo "usage: bench/dpdk-compare.sh [--autotest]" >&2; exit 2 ;;
esac
if ! command -v dpdk-testpmd >/dev/null || ! command -v dpdk-test >/dev/null \
    || ! command -v pkg-config >/dev/null || ! command -v gcc >/dev/null; then
    echo "installing Debian's DPDK (dpdk-dev), pkg-config and gcc..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dpdk-dev pkg-config gcc >/tmp/tether-apt-dpdk.log 2>&1
fi
cargo build --quiet --release -p dataplane --example perf
perf=target/release/examples/perf
mhz=$(awk -F: '/cpu MHz/ {print $2; exit}' /proc/cpuinfo | tr -d ' ')
eal=(--no-huge -m 1024 --no-pci --log-level=3)
work=$(mktemp -d /tmp/tether-dpdk.XXXXXX)
ns=tdpdk-$$
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo "machine: $(nproc) CPUs, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //') at ${mhz} MHz; DPDK $(dpkg-query -W -f='${Version}' dpdk-dev)"
echo

# 1. Rings: one core, enqueue+dequeue of a bulk, cycles per operation pair. Timings
# here are noisy: both sides run 5 times, alternating, and the medians are compared.
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for run in 1 2 3 4 5; do
    echo ring_perf_autotest | dpdk-test "${eal[@]}" -l 0 >"$work/ring-$run.txt" 2>&1 || true
    "$perf" ring >"$work/ours-ring-$run.txt"
done
echo "rings (one core, cycles per bulk enqueue+dequeue, median of 5 alternating runs; ratio = ours / DPDK, goal <= 1.0)"
for mode in "SP/SC:spsc" "MP/MC:mpmc"; do
    d=${mode%%:*}; o=${mode##*:}
    for size in 8 32; do
        dpdk=$(for run in 1 2 3 4 5; do grep -m1 "legacy APIs: $d: bulk (size: $size)" "$work/ring-$run.txt" | awk -F': ' '{print $NF}'; done | median)
        ours=$(for run in 1 2 3 4 5; do awk -v k="ring_${o}_bulk_$size" -v mhz="$mhz" '$1 == k {printf "%.2f\n", $2 * mhz / 1000}' "$work/ours-ring-$run.txt"; done | median)
        printf "  %-6s bulk %-3s DPDK %8s  ours %8s  ratio %s\n" "$d" "$size" "$dpdk" "$ours" "$(ratio "$ours" "$dpdk")"
    done
done
echo

# 2. Mempool: one core, cache 512, get/put bulk 32, 32 kept: objects per second.
# DPDK's side is bench/dpdk-mempool.c: the loop of mempool_perf_autotest's line for this
# configuration (constant_n=0), built at -O2 as Debian builds DPDK, so that both sides
# can alternate; --autotest also runs the autotest itself (35 minutes) for its line.
gcc -O2 -Wall -o "$work/dpdk-mempool" bench/dpdk-mempool.c $(pkg-config --cflags --libs libdpdk)
for run in 1 2 3 4 5; do
    taskset -c 0 "$work/dpdk-mempool" 3 2>/dev/null | awk '{print $2}' >>"$work/mempool-dpdk.txt"
    taskset -c 0 "$perf" mempool 2>/dev/null | awk '{print $2}' >>"$work/mempool-ours.txt"
done
dpdk=$(median <"$work/mempool-dpdk.txt")
ours=$(median <"$work/mempool-ours.txt")
echo "mempool (one core, cache 512, bulk 32, 32 kept; objs/s, median of 5 alternating runs; ratio = ours / DPDK, goal >= 1.0)"
printf "  DPDK %s  ours %s  ratio %s\n" "$dpdk" "$ours" "$(ratio "$ours" "$dpdk")"
printf "  runs DPDK: %s\n" "$(tr '\n' ' ' <"$work/mempool-dpdk.txt")"
printf "  runs ours: %s\n" "$(tr '\n' ' ' <"$work/mempool-ours.txt")"
if [ $autotest = 1 ]; then
    # Line-buffered, so that a run cut short by the timeout still leaves its lines.
    echo mempool_perf_autotest | timeout 2400 stdbuf -oL dpdk-test "${eal[@]}" -l 0 >"$work/mempool.txt" 2>&1 || true
    line=$(grep -m1 "cache=512 cores=1 n_get_bulk=32 n_put_bulk=32 n_keep=32 constant_n=0" "$work/mempool.txt" | sed 's/.*rate_persec=//')
    printf "  mempool_perf_autotest's own line: %s objs/s\n" "${line:-n/a}"
fi
echo

# 3. Forwarding between two null ports, io mode, burst 32, one forwarding core.
timeout -s INT 12 dpdk-testpmd "${eal[@]}" -l 0-1 --vdev net_null0 --vdev net_null1 -- \
    --forward-mode=io --burst=32 --nb-cores=1 --stats-period=2 >"$work/testpmd-null.txt" 2>&1 || true
dpdk=$(grep "Rx-pps:" "$work/testpmd-null.txt" | tail -n 2 | awk '{s += $2} END {print s + 0}')
ours=$("$perf" forward | awk '{print $2}')
echo "forwarding (net_null io mode, 64 B, burst 32, one core; frames/s over both ports; goal >= 1.0)"
printf "  DPDK %s  ours %s  ratio %s\n" "$dpdk" "$ours" "$(ratio "$ours" "$dpdk")"
echo

# 4. veth: frames out of one end, counted at the other.
if [ "$(id -u)" -eq 0 ] && ip netns add "$ns" 2>/dev/null \
    && ip -n "$ns" link add tdpa type veth peer name tdpb 2>/dev/null; then
    ip -n "$ns" link set tdpa up && ip -n "$ns" link set tdpb up
    echo "veth (frames/s, medians of 5 alternating runs; txonly: one core sends bursts of 32 on both ports, port 0's rate, as testpmd txonly; goal >= 0.95)"
    for size in 64 1500; do
        # Five alternating rounds of DPDK and ours; medians are compared.
        for run in 1 2 3 4 5; do
            for pmd in af_packet af_xdp; do
                timeout -s INT 12 ip netns exec "$ns" dpdk-testpmd "${eal[@]}" -l 0-1 \
                    --vdev "net_${pmd}0,iface=tdpa" --vdev "net_${pmd}1,iface=tdpb" -- \
                    --forward-mode=txonly --txpkts="$size" --burst=32 --nb-cores=1 --stats-period=2 \
                    >"$work/testpmd-$pmd-$size-$run.txt" 2>&1 || true
            done
            : >"$work/ours-veth-$size-$run.txt"
            for kind in socket af_packet af_xdp; do
                ip netns exec "$ns" "$perf" veth "$kind" tdpa tdpb "$size" >>"$work/ours-veth-$size-$run.txt" 2>/dev/null
            done
        done
        # Port 0's Tx-pps in the last statistics block of each run.
        dpdk_tx() {
            for run in 1 2 3 4 5; do
                grep "Tx-pps:" "$work/testpmd-$1-$size-$run.txt" | tail -n 2 | head -n 1 | awk '{print $2}'
            done | median
        }
        get() { for run in 1 2 3 4 5; do awk -v k="$1" '$1 == k {print $2}' "$work/ours-veth-$size-$run.txt"; done | median; }
        for kind in af_packet af_xdp; do
            d=$(dpdk_tx "$kind")
            o=$(get "veth_${kind}_txonly_$size")
            printf "  %4s B %-9s txonly: DPDK net_%s %s  ours %s  ratio %s;  ours A->B %s sent, %s received\n" \
                "$size" "$kind" "$kind" "${d:-n/a}" "$o" "$(ratio "$o" "${d:-0}")" \
                "$(get "veth_${kind}_tx_$size")" "$(get "veth_${kind}_rx_$size")"
        done
        sock=$(get "veth_socket_tx_$size")
        printf "  %4s B per-packet socket A->B %s sent, %s received; af_packet / socket %s, af_xdp / socket %s\n" \
            "$size" "$sock" "$(get "veth_socket_rx_$size")" \
            "$(ratio "$(get "veth_af_packet_tx_$size")" "$sock")" "$(ratio "$(get "veth_af_xdp_tx_$size")" "$sock")"
    done
else
    echo "veth: SKIPPED (needs root to create a namespace and a veth pair)"
fi
