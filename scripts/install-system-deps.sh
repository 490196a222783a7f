#!/usr/bin/env bash
# Install the Debian packages the Jumpgate test suite needs. Idempotent and non-interactive:
# does nothing (quickly) when every command is already available.
#   - as root: `apt-get update` once, then `apt-get install -y --no-install-recommends` what's missing
#   - not root: print what is missing and how to install it, exit 1
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

missing_pkgs=()
missing_why=()

need_pkg() { # need_pkg <package> <reason>
    local p
    for p in "${missing_pkgs[@]+"${missing_pkgs[@]}"}"; do
        [[ "$p" == "$1" ]] && return 0
    done
    missing_pkgs+=("$1")
    missing_why+=("$1 ($2)")
}

have_cmd() { command -v "$1" >/dev/null 2>&1; }

# PostgreSQL server binaries live in /usr/lib/postgresql/<ver>/bin on Debian, not on PATH.
have_pg_cmd() {
    have_cmd "$1" && return 0
    compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

for cmd in initdb postgres pg_ctl; do
    have_pg_cmd "$cmd" || need_pkg postgresql "$cmd"
done
have_cmd psql || need_pkg postgresql-client psql
if ! have_pg_cmd pgbench; then
    # bookworm ships the pgbench binary in the server package, newer releases in the client.
    need_pkg postgresql-client pgbench
    need_pkg postgresql pgbench
fi
have_cmd openssl || need_pkg openssl openssl
have_cmd curl || need_pkg curl curl
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || need_pkg ca-certificates "TLS roots for curl/pip"
have_cmd setfacl || need_pkg acl setfacl
have_cmd getfacl || need_pkg acl getfacl
have_cmd tmux || need_pkg tmux tmux
[[ -x /usr/bin/chromium ]] || need_pkg chromium "headless browser test of the invite page"
have_cmd wrk || need_pkg wrk wrk
have_cmd jq || need_pkg jq jq
have_cmd make || need_pkg make make

if ! have_cmd python3; then
    need_pkg python3 python3
    need_pkg python3-venv "python3 -m venv"
elif [[ ! -x .venv/bin/python ]]; then
    # Debian's python3 lacks ensurepip until python3-venv is installed: try a real venv.
    tmp="$(mktemp -d)"
    if ! python3 -m venv "$tmp/venv" >/dev/null 2>&1; then
        need_pkg python3-venv "python3 -m venv"
    fi
    rm -rf "$tmp"
fi

if ((${#missing_pkgs[@]} == 0)); then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-system-deps: missing system packages: ${missing_why[*]}" >&2
    echo "install-system-deps: run this script as root, or install them yourself:" >&2
    echo "    sudo apt-get install -y --no-install-recommends ${missing_pkgs[*]}" >&2
    exit 1
fi

if ! have_cmd apt-get; then
    echo "install-system-deps: apt-get not found; please install: ${missing_pkgs[*]}" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing_why[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" </dev/null
echo "install-system-deps: installed ${missing_pkgs[*]}"
