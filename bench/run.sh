#!/usr/bin/env bash
# The benchmark: webinar_sessions against the seed's design and against the machine's limit,
# on a throwaway PostgreSQL (fsync on, default durability) that it starts and stops itself.
#
#   bench/run.sh              the full run (about 18 minutes on 2 cores, the analytics included)
#   bench/run.sh --smoke      seconds-long, to keep the script working in CI (output under target/)
#   bench/run.sh --citus      heartbeats through a Citus coordinator and two worker nodes against a
#                             single node, on this machine (bench/citus.sh); with --smoke, short
#
# Options: --seconds S (per heartbeat measurement, default 20), --rounds R (default 3),
# --clients C (default 32), --no-install (use the installed build as it is).
#
# Every heartbeat request has PostgREST's shape: one transaction that sets the role and
# request.jwt.claims transaction-locally, then makes the call. The variants are measured in
# rounds, in a rotating order, so that machine noise hits all of them alike. The SQL-only
# edition for hosted Supabase (hosted/, installed through pg_tle into a second database of the
# same cluster) is measured beside the Rust build: heartbeats, watch_time, webinar_stats. The figures are
# printed and written, with the raw pgbench output, to bench/results/<UTC time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"

command_line="bench/run.sh $*"
seconds=20 rounds=3 pairs=6 pair_seconds=10 clients=32 install=1 smoke=0 citus=0
sizes=(5000 100000) sweep_total=500000 sweep_stale=50000 burst=100000 stats_rows=1000000
shared_buffers=2GB
while (($#)); do
    case $1 in
        --smoke) smoke=1 seconds=2 rounds=1 pairs=2 pair_seconds=2 clients=8 sizes=(1000) sweep_total=5000 sweep_stale=500
                 burst=2000 stats_rows=20000 shared_buffers=128MB ;;
        --seconds) seconds=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --clients) clients=$2; shift ;;
        --no-install) install=0 ;;
        --citus) citus=1 ;;
        *) echo "usage: bench/run.sh [--smoke] [--citus] [--seconds S] [--rounds R] [--clients C] [--no-install]" >&2; exit 2 ;;
    esac
    shift
done

.ci/setup.sh
if ((install)); then
    cargo pgrx install --release --pg-config /usr/bin/pg_config
fi

# Smoke runs prove only that the script works: their output stays out of bench/results.
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
((smoke)) && out="target/bench-smoke/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
summary="$out/summary.md"
if ((citus)); then
    SMOKE=$smoke shared_buffers=$shared_buffers exec bench/citus.sh "$seconds" "$rounds" "$clients" "$out"
fi

# A throwaway cluster (bench/cluster.sh).
source bench/cluster.sh
start_cluster bench <<EOF
max_connections = 200
shared_buffers = $shared_buffers
max_wal_size = 8GB
checkpoint_timeout = 30min
shared_preload_libraries = 'webinar_sessions, pg_tle'
webinar_sessions.sweeper_enabled = off
webinar_sessions.database = 'bench'
webinar_sessions.buffer_capacity = 200000
EOF

# Queries go to the database \$db: bench (the Rust build) unless told bench_hosted.
q() { psql -X -q -t -A -h 127.0.0.1 -p "$port" -U postgres -d "${db:-bench}" -v ON_ERROR_STOP=1 "$@"; }
psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE bench" \
    -f tests/supabase_roles.sql >/dev/null
q -c "CREATE EXTENSION webinar_sessions" -f bench/sql/setup.sql >/dev/null
# The hosted edition, as hosted/package.sh writes it, through pg_tle (under a database.dev
# name: a file-based extension of the same name is installed here).
hosted/package.sh "$out/hosted" >/dev/null
hosted_version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$out/hosted/webinar_sessions.control")
psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE bench_hosted" >/dev/null
db=bench_hosted q -c "CREATE EXTENSION pg_tle" \
    -v script="$(cat "$out/hosted/webinar_sessions--$hosted_version.sql")" -v version="$hosted_version" -f - <<'SQL' >/dev/null
SELECT pgtle.install_extension('acme@webinar_sessions', :'version', 'webinar_sessions', :'script', NULL);
CREATE SCHEMA webinar_sessions;
CREATE EXTENSION "acme@webinar_sessions" SCHEMA webinar_sessions;
SQL
db=bench_hosted q -f bench/sql/setup.sql >/dev/null
# PostgREST's login role, once per heartbeat mode: the mode is a setting of the connection.
q -c "CREATE ROLE authenticator_direct LOGIN NOINHERIT IN ROLE authenticated" \
  -c "ALTER ROLE authenticator_direct SET webinar_sessions.heartbeat_mode = 'direct'" \
  -c "ALTER ROLE authenticator SET webinar_sessions.heartbeat_mode = 'buffered'" >/dev/null

# pgbench "$output_file" args...: fails the run, showing why, when pgbench fails.
bench() {
    local output=$1
    shift
    pgbench -n -h 127.0.0.1 -p "$port" "$@" "${db:-bench}" >"$output" 2>&1 || {
        echo "pgbench failed; the end of $output:" >&2
        tail -15 "$output" >&2
        exit 1
    }
}
now() { date +%s.%N; }
since() { awk -v from="$1" -v to="$(now)" 'BEGIN { printf "%.3f", to - from }'; }
# Sorted latencies (ms) in $1 -> "average p99".
latency_stats() {
    sort -n "$1" | awk '{ a[NR] = $1; s += $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f %.3f", s / NR, a[i] }'
}
table_counters() { # table -> "updates hot_updates"
    q -c "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = '$1'::regclass" | tr '|' ' '
}
wal_lsn() { q -c "SELECT pg_current_wal_lsn()"; }
# The median of the paired hosted ÷ direct ratios, at one size or (no argument) at all.
median_ratio() {
    awk -F'\t' -v s="${1:-}" 'NR > 1 && (s == "" || $1 == s) { print $5 }' "$pairs_tsv" | sort -g |
        awk '{ r[NR] = $1 } END { printf "%.2f", NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'
}
wal_bytes_since() { q -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')"; }

echo "Benchmark: $seconds s per measurement, $rounds rounds, $clients clients; results in $out"

# 1 and 2. Heartbeats per second, HOT share, WAL per heartbeat. `direct` and `buffered` are
# public.heartbeat in each heartbeat_mode; the buffered one includes the worker's flushes.
# `hosted` is public.heartbeat of the SQL-only edition (always direct), in bench_hosted.
variants=(seed handwritten handwritten_async direct buffered hosted limit)
declare -A table_of=([seed]=bench.seed_sessions [handwritten]=bench.seed_sessions
    [handwritten_async]=bench.seed_sessions [direct]=webinar_sessions.webinar_user_sessions
    [buffered]=webinar_sessions.webinar_user_sessions [hosted]=webinar_sessions.webinar_user_sessions [limit]=)
declare -A script_of=([direct]=extension [buffered]=extension [hosted]=extension)
declare -A db_of=([hosted]=bench_hosted)
declare -A login_of=([direct]=authenticator_direct)
# heartbeats VARIANT SECONDS OUTPUT [pgbench options]: one measurement of a variant, in its
# database (pgbench's -D and -U depend on it).
heartbeats() {
    local variant=$1 secs=$2 output=$3
    shift 3
    db=${db_of[$variant]:-bench} bench "$output" -M prepared -c "$clients" -j 2 -T "$secs" -D sessions="$sessions" \
        -U "${login_of[$variant]:-authenticator}" -f "bench/sql/hb_${script_of[$variant]:-$variant}.sql" "$@"
}
hb_tsv="$out/heartbeats.tsv"
pairs_tsv="$out/hosted-pairs.tsv"
printf 'sessions\tpair\tdirect_tps\thosted_tps\tratio\n' >"$pairs_tsv"
printf 'sessions\tvariant\tround\ttps\ttransactions\tupdates\thot\twal_bytes\n' >"$hb_tsv"
for sessions in "${sizes[@]}"; do
    q -c "SELECT bench.load_active($sessions)" >/dev/null
    # Every session heartbeats once, so that the buffer knows them all (as it would after the
    # first two minutes of a webinar), and so that the table's pages are as a webinar under
    # way leaves them, in both databases: pages as loaded, fuller, are pruned three times as
    # often (a fifth more WAL per heartbeat, measured).
    q -c "SET webinar_sessions.heartbeat_mode = 'buffered'" \
      -c "SELECT count(webinar_sessions.heartbeat(webinar_id, session_id, user_id))
            FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL" >/dev/null
    db=bench_hosted q -c "SELECT bench.load_active($sessions)" \
        -c "SELECT count(webinar_sessions.heartbeat(webinar_id, session_id, user_id))
              FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL" \
        -c "VACUUM ANALYZE webinar_sessions.webinar_user_sessions" >/dev/null
    q -c "VACUUM ANALYZE webinar_sessions.webinar_user_sessions" -c "VACUUM ANALYZE bench.seed_sessions" -c "CHECKPOINT"
    for ((round = 1; round <= rounds; round++)); do
        for ((i = 0; i < ${#variants[@]}; i++)); do
            variant=${variants[(i + round - 1) % ${#variants[@]}]}
            table=${table_of[$variant]}
            db=${db_of[$variant]:-bench}
            # Every measurement starts right after a checkpoint, so every design pays for the
            # full-page images of the pages it touches first, not only whichever runs first.
            q -c "CHECKPOINT"
            before=$(wal_lsn)
            counters_before="0 0"; [ -n "$table" ] && counters_before=$(table_counters "$table")
            log="$out/hb-$sessions-$variant-r$round"
            heartbeats "$variant" "$seconds" "$log.txt" --log --log-prefix="$log"
            # The heartbeats the buffer still holds are written now, and their WAL counts here:
            # left to the worker, they were written during the next measurement, on its CPU and
            # in its WAL (the rotation keeps the same variant after buffered in every round: it
            # was hosted, whose WAL per heartbeat at 100,000 sessions doubled).
            db=bench q -c "SELECT webinar_sessions.flush_heartbeats()" >/dev/null
            wal=$(wal_bytes_since "$before")
            sleep 1 # the backends that just ended flush their statistics on exit
            counters_after="0 0"; [ -n "$table" ] && counters_after=$(table_counters "$table")
            tps=$(awk '/^tps = / { print $3; exit }' "$log.txt")
            transactions=$(awk '/number of transactions actually processed/ { print $NF; exit }' "$log.txt")
            read -r u0 h0 <<<"$counters_before"
            read -r u1 h1 <<<"$counters_after"
            awk '{ printf "%.3f\n", $3 / 1000 }' "$log".[0-9]* >>"$out/latency-$sessions-$variant.ms"
            rm -f "$log".[0-9]*
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sessions" "$variant" "$round" "$tps" "$transactions" \
                "$((u1 - u0))" "$((h1 - h0))" "$wal" >>"$hb_tsv"
            printf '  %7s sessions, round %s, %-18s %10.0f heartbeats/s\n' "$sessions" "$round" "$variant" "$tps"
            db=bench
        done
    done
    # 1b. The hosted edition against direct mode, paired: short measurements of the two,
    # back to back in alternating order (direct first, then hosted first), so that the
    # machine's drift and autovacuum's rounds hit both alike. In the rotation above they are
    # minutes apart, and direct mode alone swung twofold within one run (20261203T065937Z).
    # The criterion's figure is the median of the pairs' ratios.
    for ((pair = 1; pair <= pairs; pair++)); do
        order=(direct hosted)
        ((pair % 2 == 0)) && order=(hosted direct)
        declare -A pair_tps=()
        for variant in "${order[@]}"; do
            q -c "CHECKPOINT"
            heartbeats "$variant" "$pair_seconds" "$out/pair-$sessions-$variant-p$pair.txt"
            pair_tps[$variant]=$(awk '/^tps = / { print $3; exit }' "$out/pair-$sessions-$variant-p$pair.txt")
        done
        awk -v s="$sessions" -v p="$pair" -v d="${pair_tps[direct]}" -v h="${pair_tps[hosted]}" \
            'BEGIN { printf "%s\t%s\t%s\t%s\t%.4f\n", s, p, d, h, h / d }' >>"$pairs_tsv"
        printf '  %7s sessions, pair %s (%s first): direct %.0f, hosted %.0f heartbeats/s\n' \
            "$sessions" "$pair" "${order[0]}" "${pair_tps[direct]}" "${pair_tps[hosted]}"
    done
done

buffer_after=$(q -c "SELECT format('%s of %s sessions held (%s bytes of shared memory each), %s heartbeats answered from it, %s fallbacks to direct, %s flushes writing %s rows, the last in %s ms', used, capacity, bytes_per_session, buffered_heartbeats, fallbacks, flushes, flushed_rows, round(last_flush_ms::numeric, 1)) FROM webinar_sessions.buffer_stats")

# 3. The sweep: 50,000 stale sessions among 500,000.
load_sweep() {
    q -c "TRUNCATE webinar_sessions.webinar_user_sessions, bench.seed_sessions" >/dev/null
    for table in webinar_sessions.webinar_user_sessions bench.seed_sessions; do
        q -c "INSERT INTO $table (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
              SELECT bench.webinar_of(n), bench.user_of(n), 'tab-' || n, now() - interval '2 hours',
                     CASE WHEN n <= $sweep_stale THEN now() - interval '30 minutes' ELSE now() END
                FROM generate_series(1, $sweep_total) AS n" >/dev/null
        q -c "VACUUM ANALYZE $table"
    done
    q -c "CHECKPOINT"
}
load_sweep
start=$(now)
q -c "SELECT id FROM bench.seed_sessions
       WHERE exited_at IS NULL AND coalesce(last_heartbeat_at, entered_at) < now() - interval '5 minutes'" \
    | awk '{ printf "UPDATE bench.seed_sessions SET exited_at = coalesce(last_heartbeat_at, entered_at), updated_at = now() WHERE id = '\''%s'\'';\n", $1 }' \
        >"$cluster/seed-loop.sql"
seed_statements=$(($(wc -l <"$cluster/seed-loop.sql") + 1))
q -f "$cluster/seed-loop.sql" >/dev/null
seed_sweep_s=$(since "$start")
seed_swept=$(q -c "SELECT count(*) FROM bench.seed_sessions WHERE exited_at IS NOT NULL")
start=$(now)
ext_swept=$(q -c "SELECT webinar_sessions.sweep_stale_sessions('5 minutes')")
ext_sweep_s=$(since "$start")
echo "  sweep: seed loop $seed_swept sessions in ${seed_sweep_s}s ($seed_statements statements); extension $ext_swept in ${ext_sweep_s}s (1 statement)"

# 4. The join burst: viewers entering as fast as the server takes them.
q -c "TRUNCATE webinar_sessions.webinar_user_sessions" -c "CHECKPOINT" >/dev/null
bench "$out/join-burst.txt" -M prepared -c "$clients" -j 2 -t $((burst / clients)) -U authenticator \
    -f bench/sql/enter.sql
enters_per_s=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$out/join-burst.txt")
entered=$(q -c "SELECT count(*) FROM webinar_sessions.webinar_user_sessions")
echo "  join burst: $entered entries at $enters_per_s entries/s"

# 5. Statistics over one webinar with many session rows: viewers with ten sessions each,
# overlapping tabs included, one in twenty still open.
viewers=$((stats_rows / 10))
# One base time for both databases, so that both editions' figures can be compared as text.
stats_base=$(q -c "SELECT now()")
for db in bench bench_hosted; do
q -c "TRUNCATE webinar_sessions.webinar_user_sessions" >/dev/null
q -c "SELECT setseed(0.42);
      INSERT INTO webinar_sessions.webinar_user_sessions
             (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
      SELECT bench.webinar_of(0), bench.user_of(u), 'tab-' || k, s.entered,
             s.entered + s.length / 2,
             CASE WHEN k = 10 AND u % 2 = 0 THEN NULL ELSE s.entered + s.length END,
             CASE WHEN k = 10 AND u % 2 = 0 THEN NULL ELSE 'left' END
        FROM generate_series(1, $viewers) AS u, generate_series(1, 10) AS k,
             LATERAL (SELECT timestamptz '$stats_base' - interval '3 hours' + k * interval '12 minutes' + random() * interval '10 minutes' AS entered,
                             interval '1 minute' + random() * interval '15 minutes' AS length
                       WHERE u > 0 AND k > 0) AS s" >/dev/null  # correlated: random() per row
q -c "VACUUM ANALYZE webinar_sessions.webinar_user_sessions"
done
db=bench
# statistics_of DB SUFFIX: watch_time (pgbench average) and webinar_stats (median of 3) in
# database DB, into the variables watch_time_ms and webinar_stats_ms; raw output and plans
# into $out/*SUFFIX.
statistics_of() {
    local db=$1 suffix=$2
    bench "$out/watch-time$suffix.txt" -M prepared -c 1 -T "$seconds" -D viewers="$viewers" -U postgres \
        -f bench/sql/watch_time.sql
    watch_time_ms=$(awk '/^latency average/ { print $4; exit }' "$out/watch-time$suffix.txt")
    for run in 1 2 3; do
        q -c "\\timing on" -c "SELECT * FROM webinar_sessions.webinar_stats WHERE webinar_id = bench.webinar_of(0)" \
            | awk '/^Time:/ { print $2 }'
    done >"$out/webinar-stats$suffix.ms"
    webinar_stats_ms=$(sort -n "$out/webinar-stats$suffix.ms" | sed -n 2p)
    q -c "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM webinar_sessions.webinar_stats WHERE webinar_id = bench.webinar_of(0)" \
        >"$out/webinar-stats$suffix-plan.txt"
    q -c "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM webinar_sessions.watch_time WHERE webinar_id = bench.webinar_of(0) AND user_id = bench.user_of(7)" \
        >"$out/watch-time$suffix-plan.txt"
}
statistics_of bench ""
echo "  statistics: watch_time ${watch_time_ms} ms, webinar_stats over $stats_rows rows ${webinar_stats_ms} ms"
# The same, on the hosted edition (the same rows: the same seed and base time), whose figures
# must be equal.
rust_watch_time_ms=$watch_time_ms rust_webinar_stats_ms=$webinar_stats_ms
statistics_of bench_hosted -hosted
hosted_watch_time_ms=$watch_time_ms hosted_webinar_stats_ms=$webinar_stats_ms
watch_time_ms=$rust_watch_time_ms webinar_stats_ms=$rust_webinar_stats_ms
stats_of() { db=$1 q -c "SELECT row(s.*)::text FROM webinar_sessions.webinar_stats AS s WHERE webinar_id = bench.webinar_of(0)"; }
if [ "$(stats_of bench)" = "$(stats_of bench_hosted)" ]; then stats_equal=yes; else
    stats_equal="NO: $(stats_of bench) against $(stats_of bench_hosted)"; fi
echo "  hosted edition: watch_time ${hosted_watch_time_ms} ms, webinar_stats ${hosted_webinar_stats_ms} ms, same figures: $stats_equal"

# 6. live_viewers, polled by every viewer of a 50,000-viewer webinar (a GET: READ ONLY), from
# the worker's count (refreshed here as the worker does after a flush).
live_audience=$((smoke ? 2000 : 50000))
q -c "TRUNCATE webinar_sessions.webinar_user_sessions" >/dev/null
q -c "INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
      SELECT bench.webinar_of(0), bench.user_of(n * 10), 'tab', now() - interval '10 minutes', now()
        FROM generate_series(1, $live_audience) AS n" \
  -c "VACUUM ANALYZE webinar_sessions.webinar_user_sessions" >/dev/null
start=$(now)
q -c "SELECT webinar_sessions._refresh_live_counts()" >/dev/null
refresh_s=$(since "$start")
live_counted=$(q -c "SELECT viewers FROM webinar_sessions.live_counts WHERE webinar_id = bench.webinar_of(0)")
bench "$out/live-viewers.txt" -M prepared -c "$clients" -j 2 -T "$seconds" -U authenticator -f bench/sql/live_viewers.sql
live_ms=$(awk '/^latency average/ { print $4; exit }' "$out/live-viewers.txt")
live_per_s=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$out/live-viewers.txt")
start=$(now)
q -c "SELECT count(DISTINCT user_id) FROM webinar_sessions.active_audience WHERE webinar_id = bench.webinar_of(0)" >/dev/null
direct_count_s=$(since "$start")
echo "  live_viewers: $live_per_s calls/s, $live_ms ms each ($clients clients, $live_counted viewers); the refresh ${refresh_s}s, a count without it ${direct_count_s}s"

# The summary.
{
    echo "# webinar_sessions benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`$command_line\`; commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')."
    echo "Machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/ { print $2 }') GiB;"
    echo "$(psql -X -t -A -h 127.0.0.1 -p "$port" -U postgres -d bench -c 'SELECT version()' | cut -d, -f1);"
    echo "shared_buffers $shared_buffers, fsync on, synchronous_commit on (the server default); $clients clients,"
    echo "$seconds s per measurement, $rounds round(s) in rotating order."
    echo
    echo "## Heartbeats"
    echo
    echo "| active sessions | variant | heartbeats/s | latency avg ms | latency p99 ms | HOT share | WAL bytes / heartbeat |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    for sessions in "${sizes[@]}"; do
        for variant in "${variants[@]}"; do
            read -r avg p99 <<<"$(latency_stats "$out/latency-$sessions-$variant.ms")"
            awk -F'\t' -v s="$sessions" -v v="$variant" -v avg="$avg" -v p99="$p99" '
                $1 == s && $2 == v { tps += $4; n++; tx += $5; upd += $6; hot += $7; wal += $8 }
                END {
                    hotshare = upd > 0 ? sprintf("%.1f %%", 100 * hot / upd) : "-"
                    printf "| %d | %s | %.0f | %s | %s | %s | %.0f |\n", s, v, tps / n, avg, p99, hotshare, wal / tx
                }' "$hb_tsv"
        done
    done
    echo
    echo "| active sessions | mode | ÷ seed | ÷ hand-written | ÷ hand-written async | ÷ limit | buffered ÷ direct |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    for sessions in "${sizes[@]}"; do
        for mode in direct buffered; do
            awk -F'\t' -v s="$sessions" -v m="$mode" '
                $1 == s { tps[$2] += $4; n[$2]++ }
                END {
                    e = tps[m] / n[m]
                    printf "| %d | %s | %.2f | %.2f | %.2f | %.2f | %s |\n", s, m, e / (tps["seed"] / n["seed"]),
                        e / (tps["handwritten"] / n["handwritten"]),
                        e / (tps["handwritten_async"] / n["handwritten_async"]), e / (tps["limit"] / n["limit"]),
                        m == "buffered" ? sprintf("%.2f", e / (tps["direct"] / n["direct"])) : "-"
                }' "$hb_tsv"
        done
    done
    echo
    echo "Hosted edition ÷ Rust build in direct mode: the means of the rotation above, and $pairs paired"
    echo "measurements of $pair_seconds s each (back to back, alternating which goes first); the"
    echo "criterion's figure is the median of the pairs' ratios."
    echo
    echo "| active sessions | rotation means | pairs' ratios | median of the pairs |"
    echo "|---:|---:|---|---:|"
    for sessions in "${sizes[@]}"; do
        rotation=$(awk -F'\t' -v s="$sessions" '$1 == s { tps[$2] += $4; n[$2]++ }
            END { printf "%.2f", (tps["hosted"] / n["hosted"]) / (tps["direct"] / n["direct"]) }' "$hb_tsv")
        ratios=$(awk -F'\t' -v s="$sessions" '$1 == s { printf "%s%.2f", (n++ ? ", " : ""), $5 }' "$pairs_tsv")
        printf '| %d | %s | %s | %s |\n' "$sessions" "$rotation" "$ratios" "$(median_ratio "$sessions")"
    done
    printf '| all | | | **%s** |\n' "$(median_ratio)"
    echo
    echo "The heartbeat buffer after these runs: $buffer_after."
    echo
    echo "## Sweep: $sweep_stale stale sessions among $sweep_total"
    echo
    echo "| design | statements | seconds | sessions closed |"
    echo "|---|---:|---:|---:|"
    echo "| seed: SELECT, then one UPDATE per session | $seed_statements | $seed_sweep_s | $seed_swept |"
    echo "| \`sweep_stale_sessions()\` | 1 | $ext_sweep_s | $ext_swept |"
    echo
    echo "Speed-up: $(awk -v a="$seed_sweep_s" -v b="$ext_sweep_s" 'BEGIN { printf "%.0f", a / b }')x."
    echo
    echo "## Join burst"
    echo
    echo "$entered \`enter_webinar\` calls from $clients clients: **$enters_per_s entries/s**."
    echo
    echo "## Statistics, one webinar with $stats_rows session rows ($viewers viewers)"
    echo
    echo "| query | time |"
    echo "|---|---:|"
    echo "| \`watch_time\` for one viewer (pgbench, 1 client, average) | $watch_time_ms ms |"
    echo "| \`webinar_stats\` for the webinar (median of 3) | $webinar_stats_ms ms |"
    echo "| hosted edition: \`watch_time\` for one viewer | $hosted_watch_time_ms ms |"
    echo "| hosted edition: \`webinar_stats\` for the webinar (median of 3) | $hosted_webinar_stats_ms ms |"
    echo
    echo "Both editions' \`webinar_stats\` rows equal: $stats_equal."
    echo
    echo "## live_viewers, one webinar of $live_audience viewers"
    echo
    echo "| what | figure |"
    echo "|---|---:|"
    echo "| \`public.live_viewers\` as a GET request ($clients clients), average latency | $live_ms ms ($live_per_s calls/s) |"
    echo "| the worker's refresh of every live count (\`_refresh_live_counts\`) | $refresh_s s |"
    echo "| counting the webinar's viewers directly instead | $direct_count_s s |"
    echo
    echo "## Capacity of this machine"
    echo
    for mode in buffered direct; do
        awk -F'\t' -v last="${sizes[-1]}" -v burst="$enters_per_s" -v m="$mode" '
            $1 == last && $2 == m { tps += $4; n++ }
            END {
                hb = tps / n
                printf "heartbeat_mode = %s, at %.0f heartbeats/s (`public.heartbeat`, %d active sessions):\n\n", m, hb, last
                printf "- heartbeat every 120 s: **%.0f concurrent viewers**\n", hb * 120
                printf "- heartbeat every 30 s: **%.0f concurrent viewers**\n", hb * 30
                if (m == "buffered") printf "- join burst absorbed in the first minute: **%.0f viewers**\n", burst * 60
                printf "\n"
            }' "$hb_tsv"
    done
} >"$summary"
cp "$cluster/server.log" "$out/server.log"
rm -f "$out"/latency-*.ms
echo
cat "$summary"

# The analytics at the scale of a big webinar, on a cluster of their own (bench/analytics.sh).
echo
if ((smoke)); then
    bench/analytics.sh --no-install --smoke --out "$out"
else
    bench/analytics.sh --no-install --out "$out"
fi
cat "$out/analytics.md" >>"$summary"
