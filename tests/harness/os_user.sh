# Sourced by the scripts that start PostgreSQL servers (tests/run.sh, tests/splinter.sh,
# examples/webinar.sh, bench/cluster.sh): PostgreSQL refuses to run as root, so when we are root
# its programs run as $WEBINAR_SESSIONS_TEST_OS_USER (default postgres, the account Debian's
# server package creates). The Rust harness (tests/harness/src/cluster.rs, os_user) follows the
# same rule and reads the same variable.
#
# Sets: os_user (empty when not root), as_owner (a command prefix: runuser, or nothing).
os_user='' as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    export WEBINAR_SESSIONS_TEST_OS_USER=${WEBINAR_SESSIONS_TEST_OS_USER:-postgres}
    os_user=$WEBINAR_SESSIONS_TEST_OS_USER
    as_owner=(runuser -u "$os_user" --)
fi
