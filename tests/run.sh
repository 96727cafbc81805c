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
runas=()
pgdata=$(mktemp -d /tmp/webinar_sessions-pgrx.XXXXXX)
trap 'rm -rf "$pgdata"' EXIT
if [ "$(id -u)" -eq 0 ]; then
    export WEBINAR_SESSIONS_TEST_OS_USER=${WEBINAR_SESSIONS_TEST_OS_USER:-postgres}
    chown "$WEBINAR_SESSIONS_TEST_OS_USER" "$pgdata"
    runas=(--runas "$WEBINAR_SESSIONS_TEST_OS_USER")
fi

# The integration tests load the extension from this machine's PostgreSQL: install the build
# under test first, exactly as cargo pgrx test's own #[pg_test] set-up does (so that it is
# there even when a filter skips every #[pg_test]).
cargo pgrx install --test --pg-config /usr/bin/pg_config --no-default-features --features "pg15 pg_test"
cargo pgrx test pg15 "${runas[@]}" --pgdata "$pgdata/data" "$@"
