#!/usr/bin/env bash
# Installs what building and testing webinar_sessions needs on Debian 12, skipping whatever
# is already there: PostgreSQL 15 with its server headers, clang for pgrx's bindings, sudo
# (cargo pgrx test --runas uses it), cargo-pgrx 0.18.1, and pgrx's configuration.
set -euo pipefail

export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"

packages=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q '0\.18\.1'; then
    echo "setup: installing cargo-pgrx 0.18.1 (about 11 minutes on 2 cores)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi

# Re-running init rewrites the config and forces pgrx-pg-sys to rebuild: only once.
if [ ! -f "${PGRX_HOME:-$HOME/.pgrx}/config.toml" ]; then
    cargo pgrx init --pg15 /usr/bin/pg_config
fi
