#!/usr/bin/env bash
# A stock Linux guest's network through tether's remote NIC against QEMU's own
# virtio-net-pci: the same guest (Debian 6.1 under TCG, q35, QEMU 11.1 from the
# trixie chroot, booted by `tether vm`), the same Linux bridge, the same peer.
#
# - remote: the virtio-net device of `tether iobox` (namespace tvnbox), its TAP on the
#   bridge tvnbr there, hot-added into the guest over vfio-user by `tether vm` in
#   namespace tvnhost, across a veth;
# - local: QEMU's own virtio-net-pci (no vhost, QEMU's default) on a TAP on the same
#   bridge, QEMU run by `tether vm` in tvnbox with no device in its group.
#
# The peer (namespace tvnpeer, 10.78.0.2, iperf3 server) sits behind a veth on the
# bridge. In each boot the guest pings the peer PINGS times (64 bytes, 0.2 s apart)
# and runs iperf3 for SECS seconds each: TCP guest -> peer (TX), TCP peer -> guest
# (RX, -R), UDP TX and UDP RX at UDP_RATE. BOOTS pairs of boots, remote then local,
# alternating, so that both see the same drift of this shared machine. Prints every
# run, the medians over boots and the remote/local ratios, and the CPU time QEMU, the
# host bridge and the box took in each boot. Needs root.
#
# usage: bench/vm-net.sh [BOOTS (default 3)] [MTU (default 1500)]
#        PINGS=N (default 100), SECS=N (default 5; 0: no iperf3), UDP_RATE=R (iperf3 -b, default 100M)
#        MODE=remote|local: one kind only
#        MODE=paired: both NICs in each boot of one guest (tether's, 10.78.0.1, and
#          QEMU's own, 10.79.0.1, on the same bridge; the peer has 10.78.0.2 and
#          10.79.0.2): pings alternate one by one between them, and each iperf3 run
#          is made through tether's NIC then through QEMU's, so that both cases see the
#          same boot, the same moments of this shared machine and the same guest state.
#          QEMU and the host bridge run in tvnbox then (the fabric veth's host end
#          moved there): QEMU's TAP must be in the bridge's namespace
#        RESULTS=FILE: where every run's lines are kept (default /tmp/vm-net-results.txt)
#        MSIX=auto|hide|offer: `tether vm --msix` for the remote NIC (default auto: hidden
#          on QEMU 11.1, whose unplug of a vfio-user device with MSI-X aborts; offer is
#          safe for a NIC that stays in its VM, as here)
#        KIND=auto|af-xdp|af-packet|socket: both bridges' port kind (default auto);
#          socket is the per-packet kernel path the seed measured poll mode against
#        EVENT_IDX=true|false: the box's virtio-net offers VIRTIO_F_EVENT_IDX (default true)
#        PACKED=true|false: the box's virtio-net offers packed virtqueues (default false;
#          the driver takes them; no event indexes then)
#        SPIN_US=N: both bridges' `spin_us` (busy-poll this long after the last work)
#        MAX_PAYLOAD=N: the host's `max_payload` (its root complex's Max Payload Size)
#        TETHER_BIN=PATH: run this tether binary (another build, side by side) instead of
#          building this tree's
#        STATS=DIR: the box's `tether ctl stats` after each remote boot is kept there
set -euo pipefail
cd "$(dirname "$0")/.."
BOOTS=${1:-3}
MTU=${2:-1500}
PINGS=${PINGS:-100}
SECS=${SECS:-5}
UDP_RATE=${UDP_RATE:-100M}
RESULTS=${RESULTS:-/tmp/vm-net-results.txt}
MSIX=${MSIX:-auto}
KIND=${KIND:-auto}
EVENT_IDX=${EVENT_IDX:-true}
PACKED=${PACKED:-false}
SPIN=${SPIN_US:+"spin_us = $SPIN_US\\n"}
MPS=${MAX_PAYLOAD:+"max_payload = $MAX_PAYLOAD\\n"}
. bench/vm-lib.sh
vm_setup vm-net tvnbox tvnhost tvnpeer

if [ "${MODE:-both}" = paired ]; then
    cat >"$W/guest.sh" <<GUEST
# Each NIC by its MAC (tether's is hot-added after boot), named for its case.
i=0
while [ \$i -lt 600 ]; do
    r=\$(grep -l 52:54:00:12:34:01 /sys/class/net/*/address 2>/dev/null | cut -d/ -f5)
    l=\$(grep -l 52:54:00:12:34:02 /sys/class/net/*/address 2>/dev/null | cut -d/ -f5)
    [ -n "\$r" ] && [ -n "\$l" ] && break
    usleep 100000; i=\$((i+1))
done
echo "=== mac \$(cat /sys/class/net/\$r/address) \$(cat /sys/class/net/\$l/address)"
ip link set lo up
# Both NICs are on one bridge: each answers ARP only for its own address.
echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore
echo 2 >/proc/sys/net/ipv4/conf/all/arp_announce
ip link set \$r mtu $MTU up
ip link set \$l mtu $MTU up
ip addr add 10.78.0.1/24 dev \$r
ip addr add 10.79.0.1/24 dev \$l
ping -c 3 -W 5 10.78.0.2 >/dev/null 2>&1
ping -c 3 -W 5 10.79.0.2 >/dev/null 2>&1
n=0
while [ \$n -lt $PINGS ]; do
    ping -c 1 -W 2 -s 56 10.78.0.2 | sed -n 's/.*time=\([0-9.]*\) ms/=== rtt remote \1/p'
    usleep 100000
    ping -c 1 -W 2 -s 56 10.79.0.2 | sed -n 's/.*time=\([0-9.]*\) ms/=== rtt local \1/p'
    usleep 100000
    n=\$((n+1))
done
[ $SECS -gt 0 ] && for args in "tcp-tx:" "tcp-rx:-R" "udp-tx:-u -b $UDP_RATE" "udp-rx:-u -b $UDP_RATE -R"; do
  name=\${args%%:*}
  for c in remote:10.78.0.2 local:10.79.0.2; do
    timeout -s KILL $((SECS + 30)) iperf3 -c \${c#*:} -t $SECS -f m \${args#*:} 2>&1 | grep receiver | sed "s/^/=== iperf \${c%%:*} \$name /"
  done
done
GUEST
else
cat >"$W/guest.sh" <<GUEST
i=0
while [ ! -e /sys/class/net/eth0 ] && [ \$i -lt 600 ]; do usleep 100000; i=\$((i+1)); done
echo "=== mac \$(cat /sys/class/net/eth0/address)"
ip link set lo up
ip link set eth0 mtu $MTU up
ip addr add 10.78.0.1/24 dev eth0
ping -c 3 -W 5 10.78.0.2 >/dev/null 2>&1
ping -c $PINGS -i 0.2 -s 56 10.78.0.2 | sed -n 's/.*time=\([0-9.]*\) ms/=== rtt \1/p'
[ $SECS -gt 0 ] && for args in "tcp-tx:" "tcp-rx:-R" "udp-tx:-u -b $UDP_RATE" "udp-rx:-u -b $UDP_RATE -R"; do
  name=\${args%%:*}
  timeout -s KILL $((SECS + 30)) iperf3 -c 10.78.0.2 -t $SECS -f m \${args#*:} 2>&1 | grep receiver | sed "s/^/=== iperf \$name /"
done
GUEST
fi
TETHER_GUEST_BINS=iperf3 scripts/vm/initramfs.sh "$W/initrd" "$W/guest.sh" virtio_pci virtio_net

for ns in tvnbox tvnhost tvnpeer; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n tvnbox link add tvnbr type bridge
ip -n tvnbox link set tvnbr up
ip link add tvnbp type veth peer name tvnpe
ip link set tvnbp netns tvnbox
ip link set tvnpe netns tvnpeer
ip -n tvnbox link set tvnbp mtu "$MTU" master tvnbr up
ip -n tvnpeer link set tvnpe mtu "$MTU" up
ip -n tvnpeer addr add 10.78.0.2/24 dev tvnpe
ip -n tvnpeer addr add 10.79.0.2/24 dev tvnpe
ip link add tvnbf type veth peer name tvnhf
ip link set tvnbf netns tvnbox
ip link set tvnhf netns tvnhost
ip -n tvnbox link set tvnbf mtu 1500 up
ip -n tvnhost link set tvnhf mtu 1500 up
# QEMU's own NIC's TAP, made now and put on the bridge; QEMU opens it by name.
ip -n tvnbox tuntap add tvnl0 mode tap
ip -n tvnbox link set tvnl0 mtu "$MTU" master tvnbr up
ip netns exec tvnpeer iperf3 -s -D --logfile "$W/iperf3.log" --pidfile "$W/iperf3.pid"

printf "[bridge]\n$SPIN"'yield_after_us = 50\ncontrol = "%s"\n[port]\ninterface = "tvnbf"\nkind = "%s"\n[[device]]\nslot = 0\nmodel = "virtio-net"\ngid = 10\nmac = "52:54:00:12:34:01"\ntap = "tvnt0"\nbridge = "tvnbr"\nevent_idx = %s\npacked_ring = %s\n' "$W/box.sock" "$KIND" "$EVENT_IDX" "$PACKED" >"$W/box.toml"
printf "gid = 10\n${MPS}[bridge]\n$SPIN"'[port]\ninterface = "tvnhf"\nkind = "%s"\n' "$KIND" >"$W/host.toml"
# The local case's bridge has no device in its group (20).
printf 'gid = 20\n[port]\ninterface = "tvnbf"\n' >"$W/host-local.toml"

vm() { # vm NAME NAMESPACE HOST.toml [extra tether vm args]
    local name=$1 ns=$2 host=$3
    shift 3
    ip netns exec "$ns" "$T" vm --config "$host" --frontend vfio-user \
        --qemu-root "$ROOT" --kernel "$VM/guest/boot/vmlinuz-$KVER" --initrd "$W/initrd" \
        --append "console=ttyS0 panic=-1" --accel tcg --memory 256 --timeout 900 "$@" 2>&1 |
        tee "$W/$name.log" | grep '^=== \(mac\|rtt\|iperf\)' | sed "s/^=== /$name /" >>"$W/results"
}
# A paired boot's lines, "=== rtt remote 1.2", become "remoteB rtt 1.2" and
# "localB rtt ...", as the other modes' are.
vm_paired() { # vm_paired B
    local b=$1
    ip netns exec tvnbox "$T" vm --config "$W/host.toml" --frontend vfio-user \
        --qemu-root "$ROOT" --kernel "$VM/guest/boot/vmlinuz-$KVER" --initrd "$W/initrd" \
        --append "console=ttyS0 panic=-1" --accel tcg --memory 256 --timeout 900 \
        --msix "$MSIX" -- -netdev tap,id=n0,ifname=tvnl0,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:02 2>&1 |
        tee "$W/paired$b.log" | grep '^=== \(mac\|rtt\|iperf\)' |
        sed -E "s/^=== mac /paired$b mac /; s/^=== (rtt|iperf) (remote|local) /\2$b \1 /" >>"$W/results"
}
# cpu NAME COMMAND...: runs COMMAND and adds "NAME cpu qemu S host S box S" to the
# results: the CPU time (user + system, seconds) QEMU, the host bridge (`tether vm`)
# and the box took during it, read from /proc every 0.2 s (a process's last reading);
# and "NAME wait qemu S ...": the time their threads were ready to run but waited
# for a core (the second field of each thread's /proc/PID/task/TID/schedstat).
cpu() {
    local name=$1 tick
    shift
    tick=$(getconf CLK_TCK)
    # Started from a subshell that leaves at once: not a job of this shell, which
    # vm_with_box's `wait` would wait for.
    ( (
        declare -A seen=()
        # Ends with the run's directory, should this script be stopped before it.
        while [ -d "$W" ]; do
            for role in qemu host box; do
                case $role in
                qemu) pat="qemu-system.*$W/initrd" ;;
                host) pat="vm --config $W/host" ;;
                box) pat="iobox --config $W/box.toml" ;;
                esac
                for pid in $(pgrep -f "$pat" || true); do
                    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || continue
                    w=$(cat /proc/"$pid"/task/*/schedstat 2>/dev/null | awk '{ w += $2 } END { print w + 0 }')
                    [ -n "$t" ] && seen["$role $pid"]="$t $w"
                done
            done
            for k in "${!seen[@]}"; do echo "$k ${seen[$k]}"; done >"$W/cpu.now"
            sleep 0.2
        done
    ) & echo $! >"$W/cpu.pid" )
    "$@"
    kill "$(cat "$W/cpu.pid")" 2>/dev/null || true
    sleep 0.3
    awk -v n="$name" -v hz="$tick" '{ t[$1] += $3; w[$1] += $4 }
        END {
            printf "%s cpu qemu %.2f host %.2f box %.2f\n", n, t["qemu"] / hz, t["host"] / hz, t["box"] / hz
            printf "%s wait qemu %.2f host %.2f box %.2f\n", n, w["qemu"] / 1e9, w["host"] / 1e9, w["box"] / 1e9
        }' "$W/cpu.now" >>"$W/results"
}
for b in $(seq "$BOOTS"); do
    if [ "${MODE:-both}" = paired ]; then
        # QEMU opens its own NIC's TAP, on the bridge in tvnbox: the host bridge and
        # QEMU run there too, the fabric veth's host end moved in beside the box's.
        if ip -n tvnhost link show tvnhf >/dev/null 2>&1; then
            ip -n tvnhost link set tvnhf netns tvnbox
            ip -n tvnbox link set tvnhf mtu 1500 up
        fi
        cpu "paired$b" vm_with_box "$b" tvnbox vm_paired "$b"
        continue
    fi
    if [ "${MODE:-both}" != local ]; then
        cpu "remote$b" vm_with_box "$b" tvnbox vm "remote$b" tvnhost "$W/host.toml" --msix "$MSIX"
    fi
    if [ "${MODE:-both}" != remote ]; then
        cpu "local$b" vm "local$b" tvnbox "$W/host-local.toml" -- \
            -netdev tap,id=n0,ifname=tvnl0,script=no,downscript=no \
            -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:02
    fi
done
grep -v ' rtt ' "$W/results" || true
for kind in remote local; do
    n=$({ grep -c "^$kind[0-9]* rtt " "$W/results" || true; })
    echo "$kind: $n ping replies"
done

echo
echo "$BOOTS boots each, MTU $MTU, $PINGS pings and ${SECS}s iperf3 runs per boot:"
for kind in remote local; do
    # RTT: the median and p99 of each boot's pings, then the median over boots.
    med=$(for b in $(seq "$BOOTS"); do { grep "^$kind$b rtt " "$W/results" || true; } | awk '{print $3}' | median; done | median)
    p=$(for b in $(seq "$BOOTS"); do { grep "^$kind$b rtt " "$W/results" || true; } | awk '{print $3}' | p99; done | median)
    echo "  $kind ping RTT: median ${med:-?} ms, p99 ${p:-?} ms"
    eval "${kind}_rtt=${med:-0}"
    for t in tcp-tx tcp-rx udp-tx udp-rx; do
        v=$({ grep "^$kind[0-9]* iperf $t " "$W/results" || true; } | sed 's|.* \([0-9.]*\) Mbits/sec.*|\1|' | median)
        echo "  $kind iperf3 $t: ${v:-?} Mbit/s"
        eval "${kind}_${t//-/_}=${v:-0}"
    done
    for what in cpu wait; do
        c=""
        for role in qemu host box; do
            v=$({ grep "^$kind[0-9]* $what " "$W/results" || true; } |
                awk -v r="$role" '{ for (i = 3; i < NF; i += 2) if ($i == r) print $(i + 1) }' | median)
            c="$c $role ${v:-?} s"
        done
        case $what in
        cpu) echo "  $kind CPU time per boot (median):$c" ;;
        wait) echo "  $kind time ready to run but waiting for a core, per boot (median):$c" ;;
        esac
    done
done
awk -v r="$remote_rtt" -v l="$local_rtt" 'BEGIN { printf "  ping RTT, remote - local: %+.3f ms\n", r - l }'
if [ "${MODE:-both}" = paired ]; then
    # Within each boot the two cases alternated ping by ping: the difference of that
    # boot's medians, and their median over boots.
    d=$(for b in $(seq "$BOOTS"); do
        r=$({ grep "^remote$b rtt " "$W/results" || true; } | awk '{print $3}' | median)
        l=$({ grep "^local$b rtt " "$W/results" || true; } | awk '{print $3}' | median)
        [ -n "$r" ] && [ -n "$l" ] && awk -v r="$r" -v l="$l" 'BEGIN { printf "%.3f\n", r - l }'
    done)
    echo "  ping RTT added, per boot: $(echo $d) ms; median $(echo "$d" | median) ms"
fi
for t in tcp_tx tcp_rx udp_tx udp_rx; do
    eval "r=\$remote_$t l=\$local_$t"
    awk -v r="$r" -v l="$l" -v t="$t" 'BEGIN { if (l > 0) printf "  %s, remote/local: %.2f\n", t, r / l }'
done
