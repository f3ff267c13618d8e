#!/usr/bin/env bash
# Several configurations of bench/vm-net.sh side by side: ROUNDS rounds, each one boot
# of every case in turn, so that all cases see the same drift of this shared machine.
# Prints each case's medians over the rounds (of each boot's ping median and p99, and
# of each iperf3 run) as a Markdown table, and keeps every run's lines in OUT.
#
# usage: bench/vm-net-cases.sh ROUNDS CASE...
#   CASE is NAME:VAR=VALUE,VAR=VALUE... with bench/vm-net.sh's variables (MODE is
#   remote unless given), e.g.
#     bench/vm-net-cases.sh 3 local:MODE=local intx: msix:MSIX=offer \
#         socket:MSIX=offer,KIND=socket
#   SUMMARY_ONLY=1: no boots, the table and plot of the results already in OUT
#   MTU=N (default 1500), PINGS, SECS, UDP_RATE as for bench/vm-net.sh;
#   OUT=DIR (default /tmp/vm-net-cases): NAME.ROUND files of result lines, stats.NAME.ROUND
#   (the box's counters after a remote boot), summary.tsv (the medians) and plot.svg
#   (ping RTT and TCP throughput per case, bars). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:?usage: bench/vm-net-cases.sh ROUNDS CASE...}
shift
[ $# -gt 0 ] || { echo "no case given" >&2; exit 2; }
OUT=${OUT:-/tmp/vm-net-cases}
MTU=${MTU:-1500}
[ -n "${SUMMARY_ONLY:-}" ] || { rm -rf "$OUT"; mkdir -p "$OUT"; }
: >"$OUT/summary.tsv"
[ -n "${SUMMARY_ONLY:-}" ] || for r in $(seq "$ROUNDS"); do
    for c in "$@"; do
        name=${c%%:*}
        vars=${c#*:}
        envs=(MODE=remote)
        IFS=, read -r -a more <<<"$vars"
        for v in "${more[@]}"; do [ -n "$v" ] && envs+=("$v"); done
        echo "round $r: $name (${envs[*]})" >&2
        env "${envs[@]}" RESULTS="$OUT/$name.$r" STATS="$OUT/stats.$name.$r" \
            bash bench/vm-net.sh 1 "$MTU" >"$OUT/$name.$r.log" 2>&1 ||
            echo "  $name round $r failed: see $OUT/$name.$r.log" >&2
    done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR) print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
p99() { sort -g | awk '{a[NR]=$1} END {if (NR) {i = int(NR * 0.99 + 0.999); if (i > NR) i = NR; print a[i]}}'; }
echo "$ROUNDS rounds, MTU $MTU: medians over rounds (each round's values in brackets)"
echo
echo "| case | ping median (ms) | ping p99 (ms) | TCP TX (Mbit/s) | TCP RX | UDP TX | UDP RX |"
echo "|---|---|---|---|---|---|---|"
for c in "$@"; do
    name=${c%%:*}
    row="| $name"
    tsv=$name
    for stat in median p99; do
        vals=$(for r in $(seq "$ROUNDS"); do
            { grep ' rtt ' "$OUT/$name.$r" 2>/dev/null || true; } | awk '{print $3}' | $stat
        done)
        m=$(echo "$vals" | median)
        row="$row | $m [$(echo $vals)]"
        tsv="$tsv\t${m:-0}"
    done
    for t in tcp-tx tcp-rx udp-tx udp-rx; do
        vals=$(for r in $(seq "$ROUNDS"); do
            { grep " iperf $t " "$OUT/$name.$r" 2>/dev/null || true; } | sed 's|.* \([0-9.]*\) Mbits/sec.*|\1|'
        done)
        m=$(echo "$vals" | median)
        row="$row | $m [$(echo $vals)]"
        tsv="$tsv\t${m:-0}"
    done
    echo "$row |"
    printf "$tsv\n" >>"$OUT/summary.tsv"
done

# The plot: ping RTT median per case on the left, TCP TX and RX on the right.
awk -F'\t' -v title="virtio-net in the guest, MTU $MTU, medians of $ROUNDS boots" '
{ name[NR] = $1; rtt[NR] = $2; tx[NR] = $4; rx[NR] = $5
  if ($2 > maxr) maxr = $2; if ($4 > maxt) maxt = $4; if ($5 > maxt) maxt = $5 }
END {
  n = NR; bw = 28; gap = 18; h = 220; top = 50; left = 60
  pw = n * (bw + gap) + gap; pw2 = n * (2 * bw + gap) + gap
  W = left + pw + 2 * left + pw2 + 20; H = top + h + 90
  printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", W, H
  printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
  printf "<text x=\"%d\" y=\"20\" font-size=\"14\">%s</text>\n", left, title
  panel(left, "ping RTT, median (ms)", maxr, 1)
  for (i = 1; i <= n; i++) {
    x = left + gap + (i - 1) * (bw + gap)
    bar(x, rtt[i], maxr, "#1f77b4", sprintf("%.2f", rtt[i])); label(x + bw / 2, name[i])
  }
  x0 = left + pw + 2 * left
  panel(x0, "iperf3 TCP (Mbit/s)", maxt, 2)
  printf "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#ff7f0e\"/><text x=\"%d\" y=\"%d\">guest TX</text>\n", x0 + 130, top - 17, x0 + 144, top - 8
  printf "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#2ca02c\"/><text x=\"%d\" y=\"%d\">guest RX</text>\n", x0 + 200, top - 17, x0 + 214, top - 8
  for (i = 1; i <= n; i++) {
    x = x0 + gap + (i - 1) * (2 * bw + gap)
    bar(x, tx[i], maxt, "#ff7f0e", sprintf("%d", tx[i])); bar(x + bw, rx[i], maxt, "#2ca02c", sprintf("%d", rx[i]))
    label(x + bw, name[i])
  }
  print "</svg>"
}
function panel(x, t, max, k,   w) {
  w = (k == 1) ? pw : pw2
  printf "<text x=\"%d\" y=\"%d\">%s</text>\n", x, top - 8, t
  printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", x, top + h, x + w, top + h
  printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", x, top, x, top + h
}
function bar(x, v, max, color, text,   bh) {
  bh = (max > 0) ? v / max * h : 0
  printf "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" fill=\"%s\"/>\n", x, top + h - bh, bw, bh, color
  printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\">%s</text>\n", x + bw / 2, top + h - bh - 3, text
}
function label(x, s) {
  printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" transform=\"rotate(-35 %d %d)\">%s</text>\n", x, top + h + 14, x, top + h + 14, s
}' "$OUT/summary.tsv" >"$OUT/plot.svg"
echo
echo "plot: $OUT/plot.svg"
