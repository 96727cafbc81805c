#!/usr/bin/env bash
# bench/run.sh --citus: heartbeats per second through a Citus coordinator (a coordinator and
# two worker nodes, the session table distributed, the row's part of each call delegated to
# the webinar's node) against a single node, all on this machine, in PostgREST's request
# shape, in both heartbeat modes.
#
# Four servers share this machine's cores, so this measures what distribution costs per
# heartbeat, not what it scales to: bench/RESULTS.md turns the per-node figures into a
# capacity model for N worker nodes.
#
# Arguments (from bench/run.sh): SECONDS ROUNDS CLIENTS OUT; SMOKE=1 for a seconds-long run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"
seconds=$1 rounds=$2 clients=$3 out=$4
sessions=100000 webinars=1000
((${SMOKE:-0})) && sessions=2000

source bench/cluster.sh
conf() {
    printf '%s\n' "max_connections = 200" "shared_buffers = ${shared_buffers:-1GB}" "max_wal_size = 8GB" \
        "checkpoint_timeout = 30min" "webinar_sessions.sweeper_enabled = off" \
        "webinar_sessions.database = 'bench'" "webinar_sessions.buffer_capacity = 200000" \
        "track_functions = 'pl'" "$@"
}
start_cluster single < <(conf "shared_preload_libraries = 'webinar_sessions'")
single=$port
citus_conf=("shared_preload_libraries = 'citus, webinar_sessions'" "max_prepared_transactions = 200")
start_cluster coordinator < <(conf "${citus_conf[@]}")
coordinator=$port
workers=()
for i in 1 2; do
    start_cluster "worker$i" < <(conf "${citus_conf[@]}")
    workers+=("$port")
done

at() { local p=$1 d=$2; shift 2; psql -X -q -t -A -h 127.0.0.1 -p "$p" -U postgres -d "$d" -v ON_ERROR_STOP=1 "$@"; }
for p in "$single" "$coordinator" "${workers[@]}"; do
    at "$p" postgres -f tests/supabase_roles.sql -c "CREATE DATABASE bench" >/dev/null
done
for p in "${workers[@]}"; do at "$p" bench -c "CREATE EXTENSION citus" >/dev/null; done
# Citus connects to the worker nodes as the request's role, and copies the coordinator's roles
# to them (README, "Citus").
at "$coordinator" postgres -c "ALTER ROLE authenticated LOGIN" >/dev/null
at "$coordinator" bench -c "CREATE EXTENSION citus" \
    -c "SELECT citus_set_coordinator_host('127.0.0.1', $coordinator)" >/dev/null
for p in "${workers[@]}"; do
    at "$coordinator" bench -c "SELECT citus_add_node('127.0.0.1', $p)" >/dev/null
done
at "$coordinator" bench -c "CREATE EXTENSION webinar_sessions" -c "SELECT webinar_sessions.distribute()"
for p in "$single" "$coordinator"; do
    [ "$p" = "$coordinator" ] || at "$p" bench -c "CREATE EXTENSION webinar_sessions" >/dev/null
    at "$p" bench -f bench/sql/setup.sql >/dev/null
    # A thousand webinars rather than ten, so that they spread over the shards; the sessions
    # loaded as bench.load_active does (a SQL function with parameters, which Citus cannot run).
    at "$p" bench -c "CREATE OR REPLACE FUNCTION bench.webinar_of(n int) RETURNS uuid LANGUAGE sql IMMUTABLE
                        RETURN ('00000000-0000-4000-a000-' || lpad(to_hex(n % $webinars), 12, '0'))::uuid" \
        -c "CREATE ROLE authenticator_direct LOGIN NOINHERIT IN ROLE authenticated" \
        -c "ALTER ROLE authenticator_direct SET webinar_sessions.heartbeat_mode = 'direct'" \
        -c "ALTER ROLE authenticator SET webinar_sessions.heartbeat_mode = 'buffered'" \
        -c "TRUNCATE webinar_sessions.webinar_user_sessions" \
        -c "INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id, last_heartbeat_at)
            SELECT bench.webinar_of(n), bench.user_of(n), 'tab-' || n, now() FROM generate_series(1, $sessions) AS n" \
        -c "SET webinar_sessions.heartbeat_mode = 'buffered'" \
        -c "WITH s AS MATERIALIZED (SELECT webinar_id, session_id, user_id
                                      FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL)
            SELECT count(webinar_sessions.heartbeat(s.webinar_id, s.session_id, s.user_id)) FROM s" >/dev/null
    at "$p" bench -c "VACUUM ANALYZE webinar_sessions.webinar_user_sessions" >/dev/null
done

# The same script as bench/run.sh's direct and buffered variants: PostgREST's request shape.
tsv="$out/citus.tsv"
printf 'topology\tmode\tround\ttps\n' >"$tsv"
for ((round = 1; round <= rounds; round++)); do
    for topology in single citus; do
        for mode in direct buffered; do
            p=$single; [ "$topology" = citus ] && p=$coordinator
            login=authenticator; [ "$mode" = direct ] && login=authenticator_direct
            log="$out/citus-$topology-$mode-r$round.txt"
            pgbench -n -h 127.0.0.1 -p "$p" -U "$login" -M prepared -c "$clients" -j 2 -T "$seconds" \
                -D sessions="$sessions" -f bench/sql/hb_extension.sql bench >"$log" 2>&1 || {
                echo "pgbench failed; the end of $log:" >&2
                tail -15 "$log" >&2
                exit 1
            }
            # What the buffer still holds is written now, not by the worker during the next
            # measurement (on this machine's same two cores).
            at "$p" bench -c "SELECT webinar_sessions.flush_heartbeats()" >/dev/null
            tps=$(awk '/^tps = / { print $3; exit }' "$log")
            printf '%s\t%s\t%s\t%s\n' "$topology" "$mode" "$round" "$tps" >>"$tsv"
            printf '  %-6s %-8s round %s %10.0f heartbeats/s\n' "$topology" "$mode" "$round" "$tps"
        done
    done
done
delegated=$(at "${workers[0]}" bench -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = '_upsert_session'")
on_coordinator=$(at "$coordinator" bench -c "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = '_upsert_session'")

{
    echo "## Citus: heartbeats through a coordinator and two worker nodes, against a single node"
    echo
    echo "All four servers on this machine ($(nproc) cores): the overhead of distribution, not its scaling."
    echo "$sessions active sessions in $webinars webinars, $clients clients, $seconds s per measurement, median of $rounds."
    echo
    echo "| mode | single node | Citus coordinator | Citus ÷ single |"
    echo "|---|---:|---:|---:|"
    for mode in direct buffered; do
        awk -F'\t' -v mode="$mode" '
            $2 == mode { v[$1] = v[$1] " " $4 }
            function median(list,   a, n, i, j, t) {
                n = split(list, a, " ")
                for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                return a[int((n + 1) / 2)]
            }
            END { s = median(v["single"]); c = median(v["citus"]); printf "| %s | %.0f | %.0f | %.2f |\n", mode, s, c, c / s }' "$tsv"
    done
    echo
    echo "The row's part of the calls (\`_upsert_session\`, delegated) ran $delegated times on the first worker node and $on_coordinator times on the coordinator."
} | tee "$out/citus.md"
