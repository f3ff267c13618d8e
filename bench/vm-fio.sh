#!/usr/bin/env bash
# fio in a stock Linux guest: tether's remote disk against QEMU's own virtio-blk-pci,
# the same guest (Debian 6.1 under TCG, q35, one vCPU, QEMU 11.1 from the trixie
# chroot, booted by `tether vm`) and the same file of data in the page cache:
#
# - remote: the virtio-blk device of `tether iobox` (namespace tvfbox) on the file,
#   hot-added into the guest over vfio-user by `tether vm` in namespace tvfhost, across
#   a veth;
# - local: QEMU's own virtio-blk-pci on the same file (cache=writeback, QEMU's
#   default), QEMU run by `tether vm` with no device in its group.
#
# Each boot runs the fio jobs below one after another on /dev/vda (libaio, O_DIRECT,
# SECS seconds each after a 1 s ramp): seq read 128 KiB QD1, seq write 128 KiB QD8,
# rand read 4 KiB QD1 and QD32, rand write 4 KiB QD1. BOOTS pairs of boots, remote then
# local, alternating, so that both see the same drift of this shared machine. Prints
# every run; the median over boots, the lowest and highest boot, and the ratio
# remote/local per job; and per boot the slowest and fastest second of each job (a
# boot that runs slow all along shows there). Needs root.
#
# usage: bench/vm-fio.sh [BOOTS (default 5)] [MTU (default 1500)]
#        SECS=N: seconds per job (default 10)
#        JOBS="seqread seqwrite randread randread32 randwrite": which jobs (default all)
#        MODE=remote|local: one kind only
#        MAX_PAYLOAD=N: the host's Max Payload Size (default 256)
#        KIND=auto|af-xdp|af-packet: both bridges' port kind (default auto)
#        BOX_BRIDGE="spin_us = 300\n": more [bridge] lines for the box
#        BOX_DEVICE="indirect_desc = false\n": more lines for the box's virtio-blk
#        MSIX=auto|hide|offer: `tether vm --msix` for the remote disk (default auto:
#          hidden on QEMU 11.1, whose unplug of a vfio-user device with MSI-X aborts;
#          offer is safe for a disk that stays in its VM, as here)
#        HOST_BRIDGE="spin_us = 300\n": more [bridge] lines for the host
#        MEMORY=MiB: guest memory (default 512)
#        RESULTS=FILE: where every run's lines are kept (default /tmp/vm-fio-results.txt)
#        TETHER_BIN=PATH: run this tether binary instead of building this tree's
#        STATS=DIR: the box's `tether ctl stats` after each remote boot is kept there
set -euo pipefail
cd "$(dirname "$0")/.."
BOOTS=${1:-5}
MTU=${2:-1500}
SECS=${SECS:-10}
JOBS=${JOBS:-seqread seqwrite randread randread32 randwrite}
KIND=${KIND:-auto}
MEMORY=${MEMORY:-512}
RESULTS=${RESULTS:-/tmp/vm-fio-results.txt}
. bench/vm-lib.sh
vm_setup vm-fio tvfbox tvfhost

job_args() { # the fio arguments of job $1
    case $1 in
    seqread) echo "--rw=read --bs=128k --iodepth=1" ;;
    seqwrite) echo "--rw=write --bs=128k --iodepth=8" ;;
    randread) echo "--rw=randread --bs=4k --iodepth=1" ;;
    randread32) echo "--rw=randread --bs=4k --iodepth=32" ;;
    randwrite) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
    *)
        echo "vm-fio.sh: unknown job $1" >&2
        exit 2
        ;;
    esac
}
{
    echo 'i=0'
    echo 'while [ ! -b /dev/vda ] && [ $i -lt 1200 ]; do usleep 100000; i=$((i+1)); done'
    for j in $JOBS; do
        # --minimal: fio's terse line (read bandwidth KiB/s field 7, IOPS 8, mean
        # latency us 40; write 48, 49, 81); the IOPS log gives each second's rate.
        echo "fio --name=$j --filename=/dev/vda --ioengine=libaio --direct=1 $(job_args "$j") \
--size=256M --time_based --runtime=$SECS --ramp_time=1 --minimal \
--write_iops_log=/tmp/$j --log_avg_msec=1000 | sed 's/^/=== fio $j /'"
        echo "awk -F, 'NR==1 {lo=\$2; hi=\$2} {if (\$2<lo) lo=\$2; if (\$2>hi) hi=\$2} END {print \"=== persec $j\", lo, hi}' /tmp/${j}_iops.1.log"
    done
} >"$W/guest.sh"
TETHER_GUEST_BINS=fio scripts/vm/initramfs.sh "$W/initrd" "$W/guest.sh" virtio_pci virtio_blk
# Data, not a sparse file (reading holes would make the kernel zero pages instead).
dd if=/dev/urandom of="$W/disk.img" bs=1M count=256 status=none

for ns in tvfbox tvfhost; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip link add tvfb type veth peer name tvfh
ip link set tvfb netns tvfbox
ip link set tvfh netns tvfhost
ip -n tvfbox link set tvfb mtu "$MTU" up
ip -n tvfhost link set tvfh mtu "$MTU" up

printf '[bridge]\n%bcontrol = "%s"\n[port]\ninterface = "tvfb"\nkind = "%s"\n[[device]]\nslot = 0\nmodel = "virtio-blk"\ngid = 10\npath = "%s"\n%b' \
    "${BOX_BRIDGE:-}" "$W/box.sock" "$KIND" "$W/disk.img" "${BOX_DEVICE:-}" >"$W/box.toml"
printf 'gid = 10\nmax_payload = %s\n[bridge]\n%b[port]\ninterface = "tvfh"\nkind = "%s"\n' \
    "${MAX_PAYLOAD:-256}" "${HOST_BRIDGE:-}" "$KIND" >"$W/host.toml"
# The local case's bridge has no device in its group (20).
printf 'gid = 20\n[port]\ninterface = "tvfh"\n' >"$W/host-local.toml"

vm() { # vm NAME HOST.toml [extra tether vm args]
    local name=$1 host=$2
    shift 2
    ip netns exec tvfhost "$T" vm --config "$host" --frontend vfio-user \
        --qemu-root "$ROOT" --kernel "$VM/guest/boot/vmlinuz-$KVER" --initrd "$W/initrd" \
        --append "console=ttyS0 panic=-1" --accel tcg --memory "$MEMORY" --timeout 1800 "$@" 2>&1 |
        tee "$W/$name.log" | grep '^=== \(fio\|persec\)' | sed "s/^=== /$name /" >>"$W/results"
}
for b in $(seq "$BOOTS"); do
    if [ "${MODE:-both}" != local ]; then
        vm_with_box "$b" tvfbox vm "remote$b" "$W/host.toml" --msix "${MSIX:-auto}"
        # The port each bridge opened (`auto` falls back to AF_PACKET where AF_XDP
        # cannot be set up, and says why).
        {
            grep -a -m1 ' tether host: .* on tvfh: ' "$W/remote$b.log" | sed "s/.* on tvfh: /remote$b port host: /"
            grep -a -m1 ' tether iobox: .* on tvfb: ' "$W/box$b.log" | sed "s/.* on tvfb: /remote$b port box: /"
        } >>"$W/results" || true
    fi
    if [ "${MODE:-both}" != remote ]; then
        vm "local$b" "$W/host-local.toml" -- \
            -drive "file=$W/disk.img,format=raw,if=none,id=d0" \
            -device virtio-blk-pci,drive=d0
    fi
done
cat "$W/results"

echo
echo "$BOOTS boots each, MTU $MTU, max_payload ${MAX_PAYLOAD:-256}, ${SECS}s per job:"
grep ' port ' "$W/results" | sed 's/^/  /' || true
for j in $JOBS; do
    case $j in
    seq*) unit=MB/s ;;
    *) unit=IOPS ;;
    esac
    for kind in remote local; do
        # Per boot: the job's rate (reads or writes) and mean latency.
        vals=$({ grep "^$kind[0-9]* fio $j " "$W/results" || true; } | awk -F';' -v u="$unit" '{
            bw = $7 + $48; iops = $8 + $49; lat = ($8 > 0) ? $40 : $81
            printf "%s %s\n", (u == "IOPS") ? iops : bw * 1024 / 1e6, lat }')
        med=$(echo "$vals" | awk 'NF {print $1}' | median)
        lo=$(echo "$vals" | awk 'NF {print $1}' | sort -g | head -n 1)
        hi=$(echo "$vals" | awk 'NF {print $1}' | sort -g | tail -n 1)
        lat=$(echo "$vals" | awk 'NF {print $2}' | median)
        secs=$({ grep "^$kind[0-9]* persec $j " "$W/results" || true; } | awk '{printf "%s%s-%s", (NR > 1) ? " " : "", $4, $5}')
        printf '  %-10s %-6s %10.1f %s (boots %s .. %s), mean latency %s us; per second per boot: %s\n' \
            "$j" "$kind" "${med:-0}" "$unit" "${lo:-?}" "${hi:-?}" "${lat:-?}" "${secs:-?}"
        eval "${kind}_$j=${med:-0}"
    done
    eval "r=\$remote_$j l=\$local_$j"
    awk -v r="$r" -v l="$l" -v j="$j" 'BEGIN { if (l > 0) printf "  %-10s remote/local: %.2f\n", j, r / l }'
done
