#!/usr/bin/env bash
# A stock Linux guest's disk throughput through tether, remote against local:
# the same virtio-blk model (on a file) either in an I/O box in another network
# namespace over veth ("remote") or in the `tether vm` process over an in-memory port
# ("local"). The guest (Debian 6.1 under TCG, vfio-user front-end, QEMU 11.1 from the
# trixie chroot) runs blkbench (crates/tether/tests/vm/blkbench.c): sequential 128 KiB
# reads and 4 KiB random reads, O_DIRECT, one at a time, ROUNDS times each per boot.
# BOOTS pairs of boots, remote then local, so that both see the same drift of this
# shared machine. Prints every run and the medians and remote/local ratios. Needs root.
#
# usage: bench/vm-disk.sh [ROUNDS (default 5)] [MTU (default 1500)] [BOOTS (default 1)]
#        MAX_PAYLOAD=N: the host's Max Payload Size (default: the host default, 256)
#        SEQ_OPS=N: 128 KiB reads per sequential run (default 256: 32 MiB)
#        PACKED=1: the disk offers packed virtqueues (the guest's driver takes them)
#        BOX_BRIDGE="spin_us = 300\n": more [bridge] lines for the box (remote and local)
#        HOST_EXTRA="[bridge]\nspin_us = 300\n": more lines for the host's configuration
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
MTU=${2:-1500}
BOOTS=${3:-1}
ROOT=$(scripts/deps/qemu-vfio-user.sh | tail -n 1)
KVER=$(scripts/deps/guest-linux.sh | tail -n 1)
VM=${TETHER_VM_DIR:-/var/tmp/tether-vm}
cargo build --release -q -p tether
T=target/release/tether
W=$(mktemp -d /tmp/tether-vm-bench.XXXXXX)
cleanup() {
    pkill -f "$W/box.toml" 2>/dev/null || true
    ip netns del tvbbox 2>/dev/null || true
    ip netns del tvbhost 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
gcc -static -O2 -o "$W/blkbench" crates/tether/tests/vm/blkbench.c
{
    for _ in $(seq "$ROUNDS"); do
        echo "blkbench /dev/vda seq 131072 ${SEQ_OPS:-256}"
        echo "blkbench /dev/vda rand 4096 1000 67108864"
    done
} >"$W/guest.sh"
TETHER_GUEST_TOOLS="$W/blkbench" scripts/vm/initramfs.sh "$W/initrd" "$W/guest.sh"
SEQ_OPS=${SEQ_OPS:-256}
# Data, not a sparse file: reading holes makes the kernel zero page-cache pages, and
# only the first boot (a remote one) would pay for that.
dd if=/dev/urandom of="$W/disk.img" bs=1M count="$(((SEQ_OPS > 512 ? SEQ_OPS : 512) / 8))" status=none
ip netns add tvbbox
ip netns add tvbhost
ip link add tvbb type veth peer name tvbh
ip link set tvbb netns tvbbox
ip link set tvbh netns tvbhost
for ns in tvbbox:tvbb tvbhost:tvbh; do
    ip -n "${ns%%:*}" link set "${ns#*:}" mtu "$MTU" up
    ip -n "${ns%%:*}" link set lo up
done
# The box shares the two cores with the host bridge and QEMU: it yields while it
# spins, as the VMM front-end does by default (docs/cli.md, yield_after_us).
printf '[bridge]\nyield_after_us = 50\n%b[port]\ninterface = "tvbb"\n[[device]]\nslot = 0\nmodel = "virtio-blk"\ngid = 10\npath = "%s"\npacked_ring = %s\n' \
    "${BOX_BRIDGE:-}" "$W/disk.img" "$([ "${PACKED:-0}" = 1 ] && echo true || echo false)" >"$W/box.toml"
printf 'gid = 10\nmax_payload = %s\n[port]\ninterface = "tvbh"\n%b' "${MAX_PAYLOAD:-256}" "${HOST_EXTRA:-}" >"$W/host.toml"
run() { # run NAME [extra tether vm args]
    local name=$1
    shift
    ip netns exec tvbhost "$T" vm --config "$W/host.toml" --frontend vfio-user \
        --qemu-root "$ROOT" --kernel "$VM/guest/boot/vmlinuz-$KVER" --initrd "$W/initrd" \
        --accel tcg --memory 256 --timeout 600 "$@" 2>&1 |
        grep '^blkbench' | sed "s/^/$name /" | tee -a "$W/results"
}
for _ in $(seq "$BOOTS"); do
    ip netns exec tvbbox "$T" iobox --config "$W/box.toml" >"$W/box.log" 2>&1 &
    run remote
    pkill -f "$W/box.toml" || true
    wait
    run local --local-box "$W/box.toml"
done
echo
echo "medians over $((ROUNDS * BOOTS)) runs (MTU $MTU, max_payload ${MAX_PAYLOAD:-256}, $SEQ_OPS x 128 KiB per sequential run, packed ring ${PACKED:-0}):"
for mode in seq rand; do
    for where in remote local; do
        key=MBps
        [ "$mode" = rand ] && key=iops
        v=$(grep "^$where blkbench mode=$mode " "$W/results" | sed "s/.* $key=\([0-9.]*\).*/\1/" | sort -g |
            awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
        eval "${where}_$mode=$v"
        echo "  $mode $where: $key $v"
    done
done
awk -v r="$remote_seq" -v l="$local_seq" 'BEGIN { printf "  seq 128 KiB reads, remote/local: %.2f\n", r / l }'
awk -v r="$remote_rand" -v l="$local_rand" 'BEGIN { printf "  rand 4 KiB reads, remote/local: %.2f\n", r / l }'
