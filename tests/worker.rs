//! The sweeper worker in a real cluster with the library preloaded: it sweeps on its own,
//! waits for its database and the extension, follows reloaded settings, and comes back
//! after it is killed.

use harness::*;
use postgres::Client;
use std::time::{Duration, Instant};

fn worker_runs(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM webinar_sessions.sweep_runs WHERE source = 'worker' AND error IS NULL",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn the_worker_sweeps_stale_sessions_and_spares_live_ones() {
    let cluster = Cluster::start(
        "worker-sweeps",
        &[
            "webinar_sessions.sweep_interval = '1s'",
            "webinar_sessions.stale_after = '3s'",
        ],
    );
    let mut client = cluster.connect("postgres");
    client
        .batch_execute("CREATE EXTENSION webinar_sessions")
        .unwrap();
    client.batch_execute(STALE_ROW).unwrap();
    let live = "SELECT status FROM webinar_sessions.heartbeat(
        '00000000-0000-4000-8000-000000000064', 'live', '00000000-0000-4000-8000-000000000002')";
    client.batch_execute(live).unwrap();

    // A viewer heartbeating every half second for longer than stale_after is never swept,
    // while the silent one is.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let status: String = client.query_one(live, &[]).unwrap().get(0);
        assert_eq!(status, "alive", "the live session was swept");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        eventually(Duration::from_secs(10), || stale_row_swept(&mut client)),
        "the worker never swept the stale session"
    );
    assert!(worker_runs(&mut client) >= 1);

    let (database, backend_type): (String, String) = {
        let row = client
            .query_one(
                "SELECT datname::text, backend_type FROM pg_stat_activity
                  WHERE backend_type = 'webinar_sessions sweeper'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (database.as_str(), backend_type.as_str()),
        ("postgres", "webinar_sessions sweeper")
    );
}

#[test]
fn the_worker_waits_for_its_database_and_the_extension() {
    let cluster = Cluster::start(
        "worker-waits",
        &[
            "webinar_sessions.database = 'arrives_later'",
            "webinar_sessions.sweep_interval = '1s'",
            "webinar_sessions.stale_after = '1s'",
        ],
    );
    let mut admin = cluster.connect("postgres");
    std::thread::sleep(Duration::from_secs(2));
    admin
        .batch_execute("CREATE DATABASE arrives_later")
        .unwrap();
    let mut client = cluster.connect("arrives_later");
    assert!(
        eventually(Duration::from_secs(15), || worker_pid(&mut admin).is_some()),
        "the worker never connected to the new database"
    );
    assert!(
        eventually(Duration::from_secs(5), || cluster
            .log()
            .contains("extension not installed")),
        "the worker did not say it was waiting for the extension"
    );

    client
        .batch_execute("CREATE EXTENSION webinar_sessions")
        .unwrap();
    client.batch_execute(STALE_ROW).unwrap();
    assert!(eventually(Duration::from_secs(10), || stale_row_swept(
        &mut client
    )));

    // Dropped and created again while the worker runs: it carries on in the new one.
    client
        .batch_execute("DROP EXTENSION webinar_sessions; CREATE EXTENSION webinar_sessions")
        .unwrap();
    client.batch_execute(STALE_ROW).unwrap();
    assert!(eventually(Duration::from_secs(10), || stale_row_swept(
        &mut client
    )));
}

/// Starts a cluster whose worker must not sweep yet, shows that it does not, applies
/// `change` with ALTER SYSTEM and a reload (SIGHUP), and shows that it then sweeps.
fn sweeps_only_after_reload(name: &str, settings: &[&str], change: &str) {
    let cluster = Cluster::start(name, settings);
    let mut client = cluster.connect("postgres");
    client
        .batch_execute("CREATE EXTENSION webinar_sessions")
        .unwrap();
    client.batch_execute(STALE_ROW).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(!stale_row_swept(&mut client), "swept before the reload");
    assert_eq!(worker_runs(&mut client), 0);

    client
        .batch_execute(&format!("ALTER SYSTEM SET {change}"))
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || stale_row_swept(&mut client)),
        "not swept after the reload"
    );
    assert!(worker_runs(&mut client) >= 1);
}

#[test]
fn a_reloaded_sweep_interval_takes_effect_without_a_restart() {
    sweeps_only_after_reload(
        "worker-sighup",
        &[
            "webinar_sessions.sweep_interval = '1h'",
            "webinar_sessions.stale_after = '1s'",
        ],
        "webinar_sessions.sweep_interval = '1s'",
    );
}

#[test]
fn a_disabled_sweeper_sweeps_nothing_until_enabled() {
    sweeps_only_after_reload(
        "worker-disabled",
        &[
            "webinar_sessions.sweeper_enabled = off",
            "webinar_sessions.sweep_interval = '1s'",
            "webinar_sessions.stale_after = '1s'",
        ],
        "webinar_sessions.sweeper_enabled = on",
    );
}

#[test]
fn the_worker_comes_back_after_sigterm_and_after_a_crash() {
    let cluster = Cluster::start(
        "worker-restarts",
        &[
            "webinar_sessions.sweep_interval = '1s'",
            "webinar_sessions.stale_after = '1s'",
        ],
    );
    let mut client = cluster.connect("postgres");
    client
        .batch_execute("CREATE EXTENSION webinar_sessions")
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || worker_runs(
        &mut client
    ) >= 1));

    // SIGTERM: it leaves at once, and the postmaster starts it again.
    let first = worker_pid(&mut client).expect("worker running");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap();
    let gone_at = Instant::now();
    assert!(eventually(Duration::from_secs(2), || worker_pid(
        &mut client
    ) != Some(first)));
    println!("left {:?} after SIGTERM", gone_at.elapsed());
    assert!(eventually(Duration::from_secs(10), || {
        worker_pid(&mut client).is_some_and(|pid| pid != first)
    }));

    // kill -9: the postmaster resets all backends and starts the worker again.
    let second = worker_pid(&mut client).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &second.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    // The postmaster ends every session while it resets: ask on a fresh connection each time,
    // and count a refused or dropped one as "not yet".
    let restarted = eventually(Duration::from_secs(15), || {
        let asked =
            postgres::Client::connect(&cluster.url("postgres", superuser()), postgres::NoTls)
                .ok()
                .and_then(|mut fresh| fresh.query_opt(WORKER_PID, &[]).ok());
        asked
            .flatten()
            .is_some_and(|row| row.get::<_, i32>(0) != second)
    });
    assert!(restarted, "the worker was not restarted after kill -9");
    let mut client = cluster.connect("postgres");
    println!("restarted {:?} after kill -9", killed_at.elapsed());
    assert!(killed_at.elapsed() < Duration::from_secs(15));

    let runs = worker_runs(&mut client);
    client.batch_execute(STALE_ROW).unwrap();
    assert!(eventually(Duration::from_secs(10), || stale_row_swept(
        &mut client
    )));
    assert!(worker_runs(&mut client) > runs);
}
