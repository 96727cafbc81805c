# Sourced by bench/run.sh and bench/analytics.sh: a throwaway PostgreSQL for one benchmark.
#
# start_cluster NAME  initdb's a cluster in a new temporary folder (run by an unprivileged
#                     account when we are root), appends standard input to its
#                     postgresql.conf, starts it on a free port of the loopback address, and
#                     stops and removes it when the script exits. Sets cluster, port, and
#                     as_owner (tests/harness/os_user.sh). Called again, it starts one more
#                     (bench/citus.sh): cluster and port are the newest one's.

start_cluster() {
    source tests/harness/os_user.sh
    cluster=$(mktemp -d "/tmp/webinar_sessions-$1.XXXXXX")
    [ -z "$os_user" ] || chown "$os_user" "$cluster"
    port=$((20000 + RANDOM % 20000))
    "${as_owner[@]}" initdb -D "$cluster/data" -U postgres -A trust -E UTF8 >/dev/null
    {
        printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$port" "$cluster"
        cat
    } >>"$cluster/data/postgresql.conf"
    all_clusters+=("$cluster")
    trap stop_cluster EXIT
    "${as_owner[@]}" pg_ctl -D "$cluster/data" -l "$cluster/server.log" -w start >/dev/null
}

all_clusters=()
stop_cluster() {
    local each
    for each in "${all_clusters[@]}"; do
        "${as_owner[@]}" pg_ctl -D "$each/data" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$each"
    done
}
