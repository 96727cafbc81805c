#!/usr/bin/env bash
# The Debian package, tested as a user without Rust would use it: build it (package/deb.sh),
# make sure no build of webinar_sessions is installed, `dpkg -i` it, initdb a fresh cluster
# that preloads the library, and check a heartbeat and a sweep through PostgREST's request
# shape, the worker and the buffer; then `dpkg -r` it and check that it took its files along.
# tests/run.sh runs this first, before it installs the build under test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"
source tests/harness/os_user.sh
[ "$(id -u)" -eq 0 ] || { echo "package.sh: dpkg -i needs root" >&2; exit 1; }

scratch=$(mktemp -d /tmp/webinar_sessions-package.XXXXXX)
data="$scratch/data"
name=''
package_installed() { [ -n "$name" ] && dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "ok installed"; }
cleanup() {
    "${as_owner[@]}" pg_ctl -D "$data" stop -m immediate >/dev/null 2>&1 || true
    # A failed run must not leave the package behind (the next install would write over it).
    if package_installed; then
        dpkg -r "$name" >/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT
fail() { echo "package.sh: FAILED: $*" >&2; [ -f "$scratch/log" ] && tail -20 "$scratch/log" >&2; exit 1; }

deb=$(package/deb.sh "$scratch/out" | tail -1)
name=$(dpkg-deb -f "$deb" Package)
version=$(dpkg-deb -f "$deb" Version)
libdir=$(pg_config --pkglibdir)
extdir=$(pg_config --sharedir)/extension
echo "package.sh: built $(basename "$deb") ($(du -k "$deb" | cut -f1) kB)"

# Where the build is not installed: no earlier package, no files left by cargo pgrx install.
if package_installed; then
    dpkg -r "$name" >/dev/null
fi
rm -f "$libdir/webinar_sessions.so" "$extdir"/webinar_sessions.control "$extdir"/webinar_sessions--*.sql
installed() { ls "$libdir"/webinar_sessions.so "$extdir"/webinar_sessions* 2>/dev/null || true; }
[ -z "$(installed)" ] || fail "files of a build are still installed: $(installed)"

dpkg-deb -f "$deb" Depends | grep -q "^postgresql-15, libc6 (>= 2\.[0-9]*)$" ||
    fail "Depends is '$(dpkg-deb -f "$deb" Depends)'"
dpkg -i "$deb" >/dev/null
owned=$(dpkg -L "$name")
grep -qx "$libdir/webinar_sessions.so" <<<"$owned" || fail "the package does not own the library"
[ -f "$extdir/webinar_sessions--$version.sql" ] || fail "no install script for $version"
# Every upgrade script of the source tree, so that ALTER EXTENSION ... UPDATE works.
for script in sql/webinar_sessions--*--*.sql; do
    grep -qx "$extdir/$(basename "$script")" <<<"$owned" || fail "$(basename "$script") is not in the package"
done
# The release build: no test functions in the install script, no debugging symbols.
! grep -q "test_sqlstate_of" "$extdir/webinar_sessions--$version.sql" ||
    fail "the install script has a test build's objects"
! readelf -S "$libdir/webinar_sessions.so" | grep -q "\.debug_info" || fail "the library is not stripped"

[ -z "$os_user" ] || chown "$os_user" "$scratch"
"${as_owner[@]}" initdb -D "$data" -U postgres -A trust --no-sync -E UTF8 >/dev/null
port=$((30000 + RANDOM % 20000))
cat >>"$data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
shared_preload_libraries = 'webinar_sessions'
CONF
"${as_owner[@]}" pg_ctl -D "$data" -l "$scratch/log" start -w -t 60 >/dev/null

sql() { psql -X -q -tA -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$1" -d postgres -c "$2"; }
expect() { # what, got, wanted
    [ "$2" = "$3" ] || fail "$1: got '$2', wanted '$3'"
    echo "package.sh: ok: $1 = $3"
}
sql postgres "$(cat tests/supabase_roles.sql)" >/dev/null
sql postgres "CREATE EXTENSION webinar_sessions" >/dev/null
expect "installed version" "$(sql postgres "SELECT extversion FROM pg_extension WHERE extname = 'webinar_sessions'")" "$version"
expect "heartbeat_mode" "$(sql postgres "SHOW webinar_sessions.heartbeat_mode")" buffered
worker=0
for _ in $(seq 50); do
    worker=$(sql postgres "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'webinar_sessions sweeper'")
    [ "$worker" = 1 ] && break
    sleep 0.2
done
expect "sweeper workers running" "$worker" 1

# One PostgREST request each: the role and the JWT claims set transaction-locally.
webinar=7f3c9a52-0000-4000-8000-000000000001
viewer=7f3c9a52-0000-4000-8000-0000000000aa
rpc() { # function, claims subject
    sql authenticator "BEGIN;
        SET LOCAL ROLE authenticated;
        SELECT set_config('request.jwt.claims', '{\"sub\":\"$2\",\"role\":\"authenticated\"}', true);
        SELECT status FROM public.$1(webinar_id => '$webinar', session_id => 'tab-1');
        COMMIT;" | tail -1
}
expect "enter_webinar" "$(rpc enter_webinar "$viewer")" entered
expect "heartbeat" "$(rpc heartbeat "$viewer")" alive
expect "heartbeats answered from the buffer" \
    "$(sql postgres "SELECT buffered_heartbeats > 0 FROM webinar_sessions.buffer_stats")" t

sleep 1.2 # older than the sweep's stale_after below
expect "sessions swept" \
    "$(sql postgres "SET ROLE service_role; SELECT webinar_sessions.sweep_stale_sessions(stale_after => '1 second')")" 1
expect "the session after the sweep" \
    "$(sql postgres "SELECT exited_at IS NOT NULL FROM webinar_sessions.webinar_user_sessions WHERE user_id = '$viewer'")" t
expect "sweep_runs" \
    "$(sql postgres "SELECT count(*) FROM webinar_sessions.sweep_runs WHERE source = 'manual' AND swept = 1")" 1

"${as_owner[@]}" pg_ctl -D "$data" stop -m fast >/dev/null
dpkg -r "$name" >/dev/null
[ -z "$(installed)" ] || fail "dpkg -r left files behind: $(installed)"
echo "package.sh: ok: dpkg -r removed every file"
echo "package.sh: 1 passed, 0 failed"
