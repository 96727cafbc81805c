#!/usr/bin/env bash
# The analytics benchmark: the four per-webinar figures (webinar_stats, concurrency, retention,
# attendance) on one big webinar, at three sizes, on a throwaway PostgreSQL that it starts and
# stops itself (default work_mem, every temporary file logged).
#
#   bench/analytics.sh                 250k, 500k and 1M closed sessions (about 5 minutes)
#   bench/analytics.sh --smoke         seconds-long, for CI
#   bench/analytics.sh --out DIR       where to write (default bench/results/<UTC time>-analytics)
#   bench/analytics.sh --no-install    use the installed build as it is
#
# The webinar: N closed sessions from N/5 viewers over 2 hours, five sessions each at random
# times and lengths (so a viewer's tabs overlap and they rejoin), one in twenty never
# heartbeated (it proves no time); plus 5,000 active sessions of the same webinar and 20 small
# webinars of 1,000 sessions. Each figure is the median of 3 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"

sizes=(250000 500000 1000000) install=1 out=""
while (($#)); do
    case $1 in
        --smoke) sizes=(5000 10000) ;;
        --out) out=$2; shift ;;
        --no-install) install=0 ;;
        *) echo "usage: bench/analytics.sh [--smoke] [--out DIR] [--no-install]" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)-analytics}
mkdir -p "$out"

.ci/setup.sh
if ((install)); then
    cargo pgrx install --release --pg-config /usr/bin/pg_config
fi

source bench/cluster.sh
start_cluster analytics <<EOF
shared_preload_libraries = 'webinar_sessions'
webinar_sessions.sweeper_enabled = off
shared_buffers = 1GB
log_temp_files = 0
EOF
q() { psql -X -q -t -A -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
q -c "CREATE EXTENSION webinar_sessions"

big="'00000000-0000-4000-a000-000000000001'::uuid"
declare -A calls
define_calls() { # the webinar's window starts at its first entry: $1
    local start="timestamptz '$1'"
    calls=(
        [webinar_stats]="SELECT * FROM webinar_sessions.webinar_stats WHERE webinar_id = $big"
        [concurrency]="SELECT count(*) FROM webinar_sessions.concurrency($big, '1 minute')"
        [retention]="SELECT count(*) FROM webinar_sessions.retention($big, $start, $start + interval '2 hours')"
        [attendance]="SELECT count(*) FROM webinar_sessions.attendance($big, $start, $start + interval '2 hours')"
    )
}
order=(webinar_stats concurrency retention attendance)

temp_files() { grep -c 'temporary file' "$cluster/server.log" || true; }
tsv="$out/analytics.tsv"
printf "sessions\tcall\tms\n" >"$tsv"
for sessions in "${sizes[@]}"; do
    viewers=$((sessions / 5))
    q -c "TRUNCATE webinar_sessions.webinar_user_sessions" >/dev/null
    q -c "SELECT setseed(0.17);
          -- The big webinar: five closed sessions per viewer, at random in a 2-hour window.
          INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
          SELECT $big, ('00000000-0000-4000-8000-' || lpad(to_hex(v), 12, '0'))::uuid, 'tab-' || k,
                 s.entered, CASE WHEN s.silent THEN NULL ELSE s.entered + s.length END,
                 CASE WHEN s.silent THEN s.entered ELSE s.entered + s.length END,
                 CASE WHEN s.silent THEN 'swept' ELSE 'left' END
            FROM generate_series(1, $viewers) AS v, generate_series(1, 5) AS k,
                 LATERAL (SELECT now() - interval '3 hours' + random() * interval '110 minutes' AS entered,
                                 random() * interval '40 minutes' AS length,
                                 random() < 0.05 AS silent
                           WHERE v > 0 AND k > 0) AS s;
          -- 5,000 viewers still watching it.
          INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
          SELECT $big, ('00000000-0000-4000-8000-' || lpad(to_hex(v), 12, '0'))::uuid, 'live',
                 now() - interval '20 minutes', now() - random() * interval '2 minutes'
            FROM generate_series(1, 5000) AS v;
          -- 20 small webinars.
          INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
          SELECT ('00000000-0000-4000-a000-' || lpad(to_hex(100 + w), 12, '0'))::uuid,
                 ('00000000-0000-4000-8000-' || lpad(to_hex(v), 12, '0'))::uuid, 'tab',
                 now() - interval '5 hours', now() - interval '4 hours', now() - interval '4 hours', 'left'
            FROM generate_series(1, 20) AS w, generate_series(1, 1000) AS v;" >/dev/null
    q -c "VACUUM ANALYZE webinar_sessions.webinar_user_sessions" >/dev/null
    define_calls "$(q -c "SELECT min(entered_at) FROM webinar_sessions.webinar_user_sessions WHERE webinar_id = $big")"
    before=$(temp_files)
    for call in "${order[@]}"; do
        for run in 1 2 3; do
            q -c "\\timing on" -c "${calls[$call]}" | awk '/^Time:/ { print $2 }'
        done | sort -n | sed -n 2p | awk -v s="$sessions" -v c="$call" '{ printf "%s\t%s\t%s\n", s, c, $1 }' >>"$tsv"
    done
    after=$(temp_files)
    printf "%s\ttemporary files\t%s\n" "$sessions" $((after - before)) >>"$tsv"
    echo "  $sessions sessions: $(awk -F'\t' -v s="$sessions" '$1 == s { printf "%s %s, ", $2, $3 }' "$tsv")"
done

# The plans at the largest size: each call, and the one pass over the webinar they all share.
{
    for call in "${order[@]}"; do
        echo "== $call"
        q -c "EXPLAIN (ANALYZE, BUFFERS) ${calls[$call]}"
        echo
    done
    echo "== the webinar's presence (_presence_for), which concurrency, retention and attendance read"
    q -c "EXPLAIN (ANALYZE, BUFFERS) SELECT length(webinar_sessions._presence_of(s.user_id, s.started_at, s.ended_at))
            FROM webinar_sessions.session_spans AS s WHERE s.webinar_id = $big"
} >"$out/analytics-plans.txt"

{
    echo "## Analytics on one webinar (median of 3 runs, ms; default work_mem)"
    echo
    printf "| closed sessions | %s | temporary files |\n" "$(IFS='|'; echo "${order[*]}" | sed 's/|/ | /g')"
    echo "|---:|---:|---:|---:|---:|---:|"
    for sessions in "${sizes[@]}"; do
        awk -F'\t' -v s="$sessions" '$1 == s { v[$2] = $3 }
            END { printf "| %s | %s | %s | %s | %s | %s |\n", s, v["webinar_stats"], v["concurrency"], v["retention"], v["attendance"], v["temporary files"] }' "$tsv"
    done
} >"$out/analytics.md"
cp "$cluster/server.log" "$out/analytics-server.log"
cat "$out/analytics.md"
