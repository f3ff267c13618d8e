#!/usr/bin/env bash
# The distribution of ping round trips in bench/vm-net.sh runs, as an SVG plot: for
# each run (its RESULTS file) one line for tether's NIC (solid) and one for QEMU's
# own (dashed), the share of pings (y) answered within a time (x, ms, linear up to
# XMAX; slower pings are counted but off the right edge). The legend sits in the
# lower right, where no line goes.
#
# usage: bench/vm-net-cdf.sh OUT.svg LABEL=RESULTS... (XMAX=ms, default 4)
set -euo pipefail
out=${1:?usage: bench/vm-net-cdf.sh OUT.svg LABEL=RESULTS...}
shift
[ $# -gt 0 ] || { echo "no run given" >&2; exit 2; }
XMAX=${XMAX:-4}
colors=('#1f77b4' '#d62728' '#2ca02c' '#9467bd' '#ff7f0e' '#8c564b')
{
    i=0
    for run in "$@"; do
        label=${run%%=*}
        file=${run#*=}
        [ -r "$file" ] || { echo "$file: not readable" >&2; exit 2; }
        for kind in remote local; do
            # "remoteB rtt 1.234": the third field, as a number (a console line may
            # end in a carriage return).
            awk -v k="$kind" '$1 ~ "^" k "[0-9]+$" && $2 == "rtt" { print $3 + 0 }' "$file" |
                sort -g | awk -v l="$label" -v k="$kind" -v c="${colors[i % ${#colors[@]}]}" \
                '{ v[NR] = $1 } END { printf "%s\t%s\t%s", l, k, c; for (j = 1; j <= NR; j++) printf "\t%s", v[j]; print "" }'
        done
        i=$((i + 1))
    done
} | awk -F'\t' -v xmax="$XMAX" '
BEGIN { W = 720; H = 400; L = 60; R = 20; T = 20; B = 50 }
{ n++; label[n] = $1; kind[n] = $2; color[n] = $3; cnt[n] = NF - 3
  for (j = 4; j <= NF; j++) val[n, j - 3] = $j }
function x(v) { if (v > xmax) v = xmax; return L + (W - L - R) * v / xmax }
function y(f) { return H - B - (H - T - B) * f }
END {
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
    for (t = 0; t <= xmax; t += 0.5) {
        printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n", x(t), T, x(t), H - B
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.1f</text>\n", x(t), H - B + 16, t
    }
    for (f = 0; f <= 1.0001; f += 0.25) {
        printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, y(f), W - R, y(f)
        printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%d%%</text>\n", L - 6, y(f) + 4, f * 100
    }
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">ping round trip (ms)</text>\n", (L + W - R) / 2, H - 12
    for (s = 1; s <= n; s++) {
        dash = kind[s] == "local" ? " stroke-dasharray=\"6 4\"" : ""
        printf "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", color[s], dash
        for (j = 1; j <= cnt[s]; j++) printf "%.1f,%.1f ", x(val[s, j]), y(j / cnt[s])
        printf "\"/>\n"
        ly = H - B - 12 - 16 * (n - s)
        printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"1.5\"%s/>\n", W - R - 330, ly - 4, W - R - 305, ly - 4, color[s], dash
        printf "<text x=\"%d\" y=\"%d\">%s, %s (%d pings)</text>\n", W - R - 300, ly, label[s], kind[s] == "local" ? "QEMU\047s virtio-net-pci" : "tether\047s NIC", cnt[s]
    }
    printf "</svg>\n"
}' >"$out"
echo "plot: $out"
