# Shared by the installers in scripts/deps (sourced, not run). Each installer:
#   - takes one machine-wide lock for its whole run (deps_flock), so installers started
#     at the same time by concurrent tests run one after the other and the second one
#     sees the finished result, never a half-made one;
#   - logs to a file and, on failure, prints the log's last lines (deps_fail);
#   - installs Debian packages with apt_install, which runs `apt-get update` first when
#     the package lists are missing or older than a day.
# The Debian mirror for debootstrap comes from this machine's own apt sources
# (debian_mirror) or from TETHER_DEBIAN_MIRROR.

DEPS_NAME=scripts/deps/$(basename "$0")
DEPS_LOG=${DEPS_LOG:-/tmp/tether-deps-$(basename "$0" .sh).log}

# deps_flock: waits for and holds the installers' lock until the script exits.
deps_flock() {
    local lock=${TETHER_DEPS_LOCK:-/tmp/tether-deps.lock}
    # Root creates it; a user who may not write it can still lock it read-only.
    { exec 9>>"$lock"; } 2>/dev/null || exec 9<"$lock"
    flock 9
}

# deps_fail MESSAGE: prints MESSAGE and the tail of the log to stderr, exits 1.
deps_fail() {
    echo "$DEPS_NAME: $1" >&2
    if [ -s "$DEPS_LOG" ]; then
        echo "--- last lines of $DEPS_LOG:" >&2
        tail -n 25 "$DEPS_LOG" >&2
    fi
    exit 1
}

# deps_need_root WHAT: exits 1 with a clear message unless running as root.
deps_need_root() {
    [ "$(id -u)" -eq 0 ] || { echo "$DEPS_NAME: $1 is missing and installing it needs root" >&2; exit 1; }
}

APT_STAMP=/var/lib/apt/tether-update-stamp
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

# apt_update: refreshes the package lists (and records when).
apt_update() {
    apt-get "${apt_opts[@]}" update >>"$DEPS_LOG" 2>&1 || deps_fail "apt-get update failed"
    touch "$APT_STAMP"
}

# apt_update_if_stale: apt-get update when no package list is there, or when this
# project's last update is more than a day old.
apt_update_if_stale() {
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null ||
        [ -z "$(find "$APT_STAMP" -mmin -1440 2>/dev/null)" ]; then
        apt_update
    fi
}

# apt_install PKG...: installs Debian packages (no recommends, no questions).
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt_update_if_stale
    if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends "$@" >>"$DEPS_LOG" 2>&1; then
        # The lists may be out of date for what was asked: refresh once and retry.
        apt_update
        apt-get "${apt_opts[@]}" install -y --no-install-recommends "$@" >>"$DEPS_LOG" 2>&1 ||
            deps_fail "apt-get install $* failed"
    fi
}

# debian_mirror: the URI of the Debian archive this machine's apt uses for its own
# release, or TETHER_DEBIAN_MIRROR. Candidates are the `deb` entries (one-line and deb822
# sources) whose suite is the machine's codename and whose components include main,
# read in the order sources.list, *.sources, *.list; the first one whose downloaded
# Release file says "Origin: Debian" wins (a third-party repository such as Docker's
# can name the codename too), else the first candidate. TETHER_APT_ETC and
# TETHER_APT_LISTS name another /etc and list directory (for testing this function).
debian_mirror() {
    if [ -n "${TETHER_DEBIAN_MIRROR:-}" ]; then
        echo "$TETHER_DEBIAN_MIRROR"
        return
    fi
    local etc=${TETHER_APT_ETC:-/etc} lists=${TETHER_APT_LISTS:-/var/lib/apt/lists}
    local codename files=() f
    codename=$(. "$etc/os-release" && echo "${VERSION_CODENAME:-}")
    [ -f "$etc/apt/sources.list" ] && files+=("$etc/apt/sources.list")
    for f in "$etc"/apt/sources.list.d/*.sources "$etc"/apt/sources.list.d/*.list; do
        [ -f "$f" ] && files+=("$f")
    done
    local candidates=()
    if [ -n "$codename" ] && [ ${#files[@]} -gt 0 ]; then
        mapfile -t candidates < <(awk -v want="$codename" '
            function has(list, word) { return (" " list " ") ~ (" " word " ") }
            function flush() {
                if (enabled && has(types, "deb") && has(suites, want) && has(comps, "main") && uris != "") {
                    split(uris, u, " "); print u[1]
                }
                types = ""; uris = ""; suites = ""; comps = ""; enabled = 1
            }
            BEGIN { enabled = 1 }
            FNR == 1 { flush() }
            FILENAME ~ /\.sources$/ {
                if ($0 ~ /^[ \t]*$/) { flush(); next }
                if ($0 ~ /^[ \t]*#/) next
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "components") comps = val
                else if (key == "enabled") enabled = (tolower(val) != "no")
                next
            }
            /^[ \t]*deb[ \t]/ {
                line = $0; sub(/^[ \t]*deb[ \t]+/, "", line)
                if (line ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", line)
                n = split(line, w, /[ \t]+/)
                main = 0
                for (i = 3; i <= n; i++) if (w[i] == "main") main = 1
                if (n >= 3 && w[2] == want && main) print w[1]
            }
            END { flush() }
        ' "${files[@]}")
    fi
    [ ${#candidates[@]} -gt 0 ] ||
        deps_fail "no Debian archive for '$codename' (suite $codename, component main) in this machine's apt sources; set TETHER_DEBIAN_MIRROR"
    local uri mangled
    for uri in "${candidates[@]}"; do
        # apt names its list files after the URI: scheme dropped, "/" as "_".
        mangled=${uri#*://}
        mangled=${mangled%/}
        mangled=${mangled//\//_}
        if grep -qs '^Origin: Debian$' "$lists/${mangled}_dists_${codename}_InRelease" \
            "$lists/${mangled}_dists_${codename}_Release"; then
            echo "${uri%/}"
            return
        fi
    done
    echo "${candidates[0]%/}"
}
