#!/usr/bin/env bash
# The main job: `tether demo`. As root it builds three network namespaces (an I/O box
# and two hosts) on a Linux bridge over veth, runs the whole system between them and
# removes them again; without root it runs the same over in-memory ports and says so.
# Extra arguments go to `tether demo` (see `tether demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --release -p tether
exec target/release/tether demo "$@"
