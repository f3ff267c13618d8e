#!/usr/bin/env bash
# Installs everything the test suite needs, once, before any test runs (scripts/test.sh
# calls it first). Each installer is idempotent and takes the installers' flock, so a
# test that calls one again later only finds it done. As root, any installer that fails
# makes this fail (its log's last lines are printed); without root, what is missing is
# listed and the tests that need it skip, loudly.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
failed=()
for s in tools.sh tshark.sh qemu.sh qemu-vfio-user.sh guest-linux.sh; do
    start=$(date +%s)
    if "$here/$s" >/dev/null; then
        echo "deps: $s ready ($(($(date +%s) - start)) s)"
    else
        failed+=("$s")
    fi
done
[ ${#failed[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: not root: ${failed[*]} could not install; the tests that need them will skip"
    exit 0
fi
echo "deps: FAILED: ${failed[*]}" >&2
exit 1
