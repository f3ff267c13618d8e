#!/usr/bin/env bash
# The build and system tools the tests call (iproute2 for network namespaces, gcc with a
# static libc and binutils for the guest tools and the boot sector, util-linux for
# unshare/nsenter/setpriv, iperf3 and fio for the network and disk benchmarks, curl for
# the HTTP endpoints, systemd-analyze for the units of contrib/systemd). Installs the
# Debian package of each one that is missing.
# Idempotent and safe to run concurrently (scripts/deps/lib.sh). Needs root to install.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
deps_flock
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need ip iproute2
need gcc gcc
need as binutils
need ld binutils
need unshare util-linux
need nsenter util-linux
need gzip gzip
need sha256sum coreutils
need iperf3 iperf3
need fio fio
need curl curl
need systemd-analyze systemd
need setpriv util-linux
[ -n "$(gcc -print-file-name=libc.a 2>/dev/null | grep /)" ] || missing+=(libc6-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
deps_need_root "${missing[*]}"
: >"$DEPS_LOG"
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
apt_install "${pkgs[@]}"
