#!/usr/bin/env bash
# The main job: installs what is missing, builds and installs webinar_sessions, starts a
# throwaway PostgreSQL with the sweeper worker preloaded, runs a simulated webinar, and
# prints the attendance report (also written, with a chart of concurrent viewers, to
# target/webinar-report/). Flags go to the simulator; see examples/webinar.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup.sh
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"

# PostgreSQL refuses to run as root; the throwaway server then runs as an unprivileged account.
source tests/harness/os_user.sh
cargo pgrx install --release --pg-config /usr/bin/pg_config
cargo run --quiet --release --example webinar -- "$@"
