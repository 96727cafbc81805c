#!/usr/bin/env bash
# Supabase's database linter (splinter, as run by `supabase db advisors` of the Supabase CLI from
# npm, pinned below) against a throwaway PostgreSQL 15 cluster holding webinar_sessions and
# Supabase's roles. Runs the security and performance lints at every level, with
# pgrst.db_schemas unset and set to 'public,graphql_public' (the README's two setups), and fails
# if any finding names an object of the extension. A canary database with a deliberately bad
# table must be reported too, or the linter did not run. Installs node, npm and the CLI (into a
# cache outside the checkout) when they are missing; the extension must already be installed
# (tests/run.sh does it). With --hosted DIR, the SQL-only edition that hosted/package.sh wrote
# into DIR instead, installed as on hosted Supabase: pg_tle preloaded, and `postgres`, not a
# superuser, installing it with pgtle.install_extension.
set -euo pipefail
hosted=
if [ "${1:-}" = --hosted ]; then
    hosted=$(cd "$2" && pwd)
fi
cd "$(dirname "$0")/.."

cli_version=2.117.0
pgbin=/usr/lib/postgresql/15/bin
cache=${WEBINAR_SESSIONS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/webinar_sessions}
cli_dir=$cache/supabase-cli-$cli_version
cli=$cli_dir/node_modules/.bin/supabase
source tests/harness/os_user.sh
sudo=(); [ -n "$os_user" ] || sudo=(sudo)

[ -x "$pgbin/initdb" ] || { echo "splinter: PostgreSQL 15 is not installed (.ci/setup.sh)" >&2; exit 1; }
[ -f /usr/share/postgresql/15/extension/webinar_sessions.control ] ||
    { echo "splinter: webinar_sessions is not installed (tests/run.sh installs it)" >&2; exit 1; }

# node and npm: Debian 12's own (node 18, npm 9) are enough for the CLI's launcher (npm 9 also
# fetches the musl build, unused).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "splinter: installing nodejs and npm"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends nodejs npm ca-certificates >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || { echo "splinter: node $(node -v) is too old (18 or later needed)" >&2; exit 1; }

# The CLI: the npm package brings a prebuilt binary for this platform as an optional dependency.
export SUPABASE_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
if [ "$("$cli" --version 2>/dev/null)" != "$cli_version" ]; then
    echo "splinter: installing the Supabase CLI $cli_version into $cli_dir"
    rm -rf "$cli_dir"
    mkdir -p "$cli_dir"
    npm install --prefix "$cli_dir" --save-exact --include=optional --no-audit --no-fund --loglevel=error \
        "supabase@$cli_version" >/dev/null
    version=$("$cli" --version) || { echo "splinter: the Supabase CLI does not start" >&2; exit 1; }
    [ "$version" = "$cli_version" ] || { echo "splinter: got Supabase CLI $version, not $cli_version" >&2; exit 1; }
fi

# A throwaway cluster on a free loopback port, the library preloaded as in production.
scratch=$(mktemp -d /tmp/webinar_sessions-splinter.XXXXXX)
data=$scratch/data
started=
cleanup() {
    if [ -n "$started" ]; then
        "${as_owner[@]}" "$pgbin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ ${#as_owner[@]} -eq 0 ] || chown "$os_user" "$scratch"
chmod 700 "$scratch"
superuser=postgres preload=webinar_sessions
[ -z "$hosted" ] || { superuser=supabase_admin preload=pg_tle; }
"${as_owner[@]}" "$pgbin/initdb" -D "$data" -A trust -U "$superuser" -E UTF8 --locale=C --no-sync >"$scratch/initdb.log" 2>&1 ||
    { cat "$scratch/initdb.log" >&2; exit 1; }
cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$scratch'
fsync = off
shared_preload_libraries = '$preload'
webinar_sessions.sweeper_enabled = off
EOF
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    port_free "$port" || continue
    if "${as_owner[@]}" "$pgbin/pg_ctl" -D "$data" -l "$scratch/server.log" -o "-p $port" -w -t 60 start >/dev/null; then
        started=1
        break
    fi
done
[ -n "$started" ] || { echo "splinter: the cluster did not start" >&2; cat "$scratch/server.log" >&2; exit 1; }

psql=("$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$superuser")
"${psql[@]}" -d postgres -f tests/supabase_roles.sql
# Supabase's default privileges: what postgres creates in public is granted to its API roles
# (privileges.sql takes the extension's functions back from anon).
supabase_defaults="
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;"
"${psql[@]}" -d postgres -c 'CREATE DATABASE webinar_lint' -c 'CREATE DATABASE canary_lint'
if [ -z "$hosted" ]; then
    "${psql[@]}" -d webinar_lint -c "$supabase_defaults" -c 'CREATE EXTENSION webinar_sessions'
    extname=webinar_sessions
else
    extname='acme@webinar_sessions'
    "${psql[@]}" -d postgres -c 'CREATE ROLE postgres LOGIN CREATEROLE CREATEDB'
    "${psql[@]}" -d webinar_lint -c 'CREATE EXTENSION pg_tle' -c 'GRANT pgtle_admin TO postgres' \
        -c 'GRANT CREATE ON DATABASE webinar_lint TO postgres' -c 'GRANT ALL ON SCHEMA public TO postgres'
    version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$hosted/webinar_sessions.control")
    "${psql[@]}" -U postgres -d webinar_lint -c "$supabase_defaults" \
        -v script="$(cat "$hosted/webinar_sessions--$version.sql")" -v extname="$extname" -v version="$version" -f - <<'SQL'
SELECT pgtle.install_extension(:'extname', :'version', 'webinar_sessions', :'script', NULL);
CREATE SCHEMA webinar_sessions;
CREATE EXTENSION :"extname" SCHEMA webinar_sessions;
SQL
fi
# The canary: a table in public that anon can read, without row-level security.
"${psql[@]}" -d canary_lint -c "$supabase_defaults" \
    -c 'CREATE TABLE public.lint_canary (id int, password text)' -c 'GRANT SELECT ON public.lint_canary TO anon'
extversion=$("${psql[@]}" -d webinar_lint -tA -c "SELECT extversion FROM pg_extension WHERE extname = '$extname'")

# Lints both databases under one setting of pgrst.db_schemas ('' = unset); the JSON goes to
# $scratch/<setup>-<db>.json.
lint() {
    local setup=$1 schemas=$2 db got
    for db in webinar_lint canary_lint; do
        if [ -z "$schemas" ]; then
            "${psql[@]}" -d "$db" -c "ALTER DATABASE $db RESET pgrst.db_schemas"
        else
            "${psql[@]}" -d "$db" -c "ALTER DATABASE $db SET pgrst.db_schemas = '$schemas'"
        fi
        got=$("${psql[@]}" -d "$db" -tA -c "SELECT coalesce(current_setting('pgrst.db_schemas', true), '')")
        [ "$got" = "$schemas" ] || { echo "splinter: pgrst.db_schemas is '$got', not '$schemas'" >&2; exit 1; }
        (cd "$scratch" && timeout 300 "$cli" db advisors \
            --db-url "postgresql://$superuser@127.0.0.1:$port/$db?sslmode=disable" \
            --type all --level info --fail-on none --output-format json \
            >"$scratch/$setup-$db.json" 2>"$scratch/$setup-$db.err") ||
            { echo "splinter: supabase db advisors failed on $db ($setup):" >&2; cat "$scratch/$setup-$db.err" >&2; exit 1; }
    done
}
lint unset ''
lint exposed 'public,graphql_public'

# Judge: any finding naming the extension's objects fails; the canary must be reported in
# every setup.
node - "$scratch" "$cli_version" "$extversion" <<'EOF'
const fs = require("fs");
const [dir, cliVersion, extVersion] = process.argv.slice(2);
const setups = [["unset", "pgrst.db_schemas unset"], ["exposed", "pgrst.db_schemas = 'public,graphql_public'"]];
const ours = /webinar_sessions|enter_webinar|leave_webinar|\bheartbeat\b/;
const read = (name) => {
  const text = fs.readFileSync(`${dir}/${name}.json`, "utf8");
  let parsed;
  try { parsed = JSON.parse(text); } catch (e) { throw new Error(`${name}: not JSON: ${text.slice(0, 500)}`); }
  if (!parsed || !Array.isArray(parsed.results)) throw new Error(`${name}: no results array: ${text.slice(0, 500)}`);
  return parsed.results;
};
const show = (f) => `  [${f.level}] ${f.name}: ${f.detail}` + (f.metadata ? ` ${JSON.stringify(f.metadata)}` : "");
let bad = 0, silent = 0, passed = 0;
for (const [setup, label] of setups) {
  const findings = read(`${setup}-webinar_lint`);
  const offending = findings.filter((f) => ours.test(JSON.stringify([f.name, f.detail, f.metadata, f.cache_key ?? f.cacheKey])));
  console.log(`splinter (${label}): ${findings.length} finding(s) on the database with webinar_sessions`);
  for (const f of findings) console.log(show(f));
  if (offending.length) {
    bad++;
    console.log(`splinter: FAIL: ${offending.length} finding(s) name objects of webinar_sessions (${label})`);
    for (const f of offending) console.log(show(f));
  } else passed++;
  const canary = read(`${setup}-canary_lint`);
  const seen = canary.some((f) => f.name === "rls_disabled_in_public" && f.metadata && f.metadata.schema === "public" && f.metadata.name === "lint_canary");
  console.log(`splinter (${label}): canary database: ${canary.map((f) => f.name).join(", ") || "no findings"}`);
  if (!seen) {
    silent++;
    console.log(`splinter: FAIL: linter did not run: the canary public.lint_canary was not reported (${label}); it reported:`);
    for (const f of canary) console.log(show(f));
  } else passed++;
}
console.log(`splinter: Supabase CLI ${cliVersion} db advisors (security + performance, all levels) on webinar_sessions ${extVersion} ` +
  `with Supabase's roles, pgrst.db_schemas unset and 'public,graphql_public': ` +
  (bad ? "findings on the extension" : "nothing on the extension") + (silent ? "; canary NOT reported" : "; canary reported in both"));
console.log(`splinter: ${passed} passed, ${bad + silent} failed`);
process.exit(bad || silent ? 1 : 0);
EOF
