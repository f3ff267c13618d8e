# Shared by the guest benchmarks (bench/vm-net.sh, bench/vm-fio.sh); sourced, not run.
#
# vm_setup NAME NAMESPACE...: installs what the guest runs need (tools, the QEMU chroot,
# the guest kernel) and sets ROOT, KVER, VM; T, the tether binary (TETHER_BIN, or this
# tree's release build); W, a new work directory under /tmp (QEMU runs in the chroot,
# which sees this machine's /tmp). At exit, W's results go to $RESULTS and its logs to
# $RESULTS.logs/, whatever still runs from W is stopped, and the namespaces named are
# deleted.

vm_setup() {
    local name=$1
    shift
    VM_NAMESPACES="$*"
    scripts/deps/tools.sh
    ROOT=$(scripts/deps/qemu-vfio-user.sh | tail -n 1)
    KVER=$(scripts/deps/guest-linux.sh | tail -n 1)
    VM=${TETHER_VM_DIR:-/var/tmp/tether-vm}
    if [ -n "${TETHER_BIN:-}" ]; then
        T=$TETHER_BIN
    else
        cargo build --release -q -p tether
        T=$PWD/target/release/tether
    fi
    W=$(mktemp -d "/tmp/tether-$name.XXXXXX")
    trap vm_cleanup EXIT
}

vm_cleanup() {
    # Every run's lines are kept, and every log, for a run that went wrong.
    [ -f "$W/results" ] && cp "$W/results" "$RESULTS"
    mkdir -p "$RESULTS.logs" && cp "$W"/*.log "$RESULTS.logs/" 2>/dev/null || true
    pkill -f "$W/" 2>/dev/null || true
    for ns in $VM_NAMESPACES; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$W"
}

# median / p99 of the numbers on stdin, one per line (nothing for no input).
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
p99() { sort -g | awk '{a[NR]=$1} END {if (NR) {i = int(NR * 0.99 + 0.999); if (i > NR) i = NR; print a[i]}}'; }

# vm_with_box B NAMESPACE COMMAND...: runs COMMAND (boot B of the remote case) while
# `tether iobox --config $W/box.toml` runs in NAMESPACE (its log: $W/boxB.log); with
# STATS=DIR, the box's counters after the boot go to DIR/remoteB.box (the box's
# configuration names its control socket $W/box.sock).
vm_with_box() {
    local b=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$T" iobox --config "$W/box.toml" >"$W/box$b.log" 2>&1 &
    "$@"
    if [ -n "${STATS:-}" ]; then
        mkdir -p "$STATS"
        "$T" ctl stats -s "$W/box.sock" >"$STATS/remote$b.box" 2>&1 || true
    fi
    pkill -f "$W/box.toml" || true
    wait
}
