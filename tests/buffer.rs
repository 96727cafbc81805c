//! Buffered heartbeats (`webinar_sessions.heartbeat_mode = buffered`): what the buffer
//! answers, what a flush writes, how sweeps, leaves and a full buffer treat it, and what a
//! crash costs. Each test runs on a cluster of its own, where it sets the mode explicitly.

use harness::*;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn buffered_cluster(name: &str, settings: &[&str]) -> Cluster {
    let mut all = vec![
        "webinar_sessions.heartbeat_mode = 'buffered'",
        "webinar_sessions.sweeper_enabled = off",
    ];
    all.extend_from_slice(settings);
    Cluster::start(name, &all)
}

fn heartbeat(api: &mut Client, user: &str, webinar: &str, session: &str) -> serde_json::Value {
    rpc(
        api,
        "authenticated",
        Some(&claims_for(user)),
        "public.heartbeat",
        &[("webinar_id", webinar), ("session_id", session)],
    )
    .unwrap_or_else(|e| panic!("heartbeat: {e}"))
}

fn enter(api: &mut Client, user: &str, webinar: &str, session: &str) -> serde_json::Value {
    rpc(
        api,
        "authenticated",
        Some(&claims_for(user)),
        "public.enter_webinar",
        &[("webinar_id", webinar), ("session_id", session)],
    )
    .unwrap_or_else(|e| panic!("enter_webinar: {e}"))
}

#[test]
fn a_buffered_heartbeat_writes_nothing_until_the_flush() {
    let cluster = buffered_cluster("buffer-flush", &[]);
    let mut admin = cluster.supabase_database("flush");
    let mut api = cluster.connect_as("flush", "authenticator");
    let (viewer, webinar) = (uuid(1), uuid(100));

    // Entering puts the session into the buffer (once the entry commits).
    let entered = enter(&mut api, &viewer, &webinar, "tab");
    assert_eq!(buffer_stat(&mut admin, "used"), 1);
    assert_eq!(buffer_stat(&mut admin, "dirty"), 0);
    let first = heartbeat(&mut api, &viewer, &webinar, "tab");
    assert_eq!(
        (&first["status"], &first["id"]),
        (&"alive".into(), &entered["id"])
    );
    assert_eq!(stored_heartbeat(&mut admin, &first["id"]), None);

    // Heartbeats are answered from shared memory: same row, newer time, a read-only
    // transaction (no transaction id was assigned), the row untouched.
    let mut tx = begin_request(&mut api, "authenticated", Some(&claims_for(&viewer))).unwrap();
    let row = tx
        .query_one(
            "SELECT to_jsonb(h)::text, txid_current_if_assigned() IS NULL
               FROM public.heartbeat($1::text::uuid, 'tab') AS h",
            &[&webinar],
        )
        .unwrap();
    tx.commit().unwrap();
    let second: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
    let read_only: bool = row.get(1);
    assert!(read_only, "a buffered heartbeat must not write");
    assert_eq!(
        (&second["status"], &second["id"]),
        (&first["status"], &first["id"])
    );
    assert!(second["last_heartbeat_at"].as_str() > first["last_heartbeat_at"].as_str());
    assert_eq!(second["entered_at"], first["entered_at"]);
    assert!(second["exited_at"].is_null());
    assert_eq!(second["heartbeat_interval_s"], 120);
    assert_eq!(stored_heartbeat(&mut admin, &first["id"]), None);
    assert_eq!(buffer_stat(&mut admin, "dirty"), 1);
    assert_eq!(buffer_stat(&mut admin, "buffered_heartbeats"), 2);

    // flush_heartbeats writes exactly the buffered time.
    let written: i64 = admin
        .query_one("SELECT webinar_sessions.flush_heartbeats()", &[])
        .unwrap()
        .get(0);
    assert_eq!(written, 1);
    assert_eq!(
        stored_heartbeat(&mut admin, &first["id"]),
        second["last_heartbeat_at"].as_str().map(String::from)
    );
    assert_eq!(buffer_stat(&mut admin, "dirty"), 0);
    assert_eq!(buffer_stat(&mut admin, "flushes"), 1);
    // Nothing left to write: a second flush writes nothing.
    let again: i64 = admin
        .query_one("SELECT webinar_sessions.flush_heartbeats()", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, 0);
}

#[test]
fn the_worker_flushes_every_flush_interval() {
    let cluster = buffered_cluster("buffer-worker", &["webinar_sessions.flush_interval = 1"]);
    // Not the worker's database: its heartbeats are flushed by a short-lived worker there.
    let mut admin = cluster.supabase_database("elsewhere");
    let mut api = cluster.connect_as("elsewhere", "authenticator");
    let (viewer, webinar) = (uuid(2), uuid(200));
    enter(&mut api, &viewer, &webinar, "tab");
    heartbeat(&mut api, &viewer, &webinar, "tab");
    let buffered = heartbeat(&mut api, &viewer, &webinar, "tab");
    assert!(
        eventually(Duration::from_secs(10), || {
            stored_heartbeat(&mut admin, &buffered["id"]).as_deref()
                == buffered["last_heartbeat_at"].as_str()
        }),
        "the worker did not write the buffered heartbeat"
    );
    assert_eq!(buffer_stat(&mut admin, "dirty"), 0);

    // A database dropped with sessions in the buffer: the worker forgets them.
    let mut doomed = cluster.supabase_database("doomed");
    {
        let mut api = cluster.connect_as("doomed", "authenticator");
        enter(&mut api, &viewer, &webinar, "tab");
        heartbeat(&mut api, &viewer, &webinar, "tab");
    }
    assert_eq!(buffer_stat(&mut doomed, "used"), 2);
    drop(doomed);
    cluster
        .connect("postgres")
        .batch_execute("DROP DATABASE doomed WITH (FORCE)")
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || buffer_stat(&mut admin, "used")
            == 1),
        "the entries of a dropped database stayed in the buffer"
    );
}

#[test]
fn a_sweep_writes_buffered_heartbeats_first_and_spares_their_sessions() {
    let cluster = buffered_cluster("buffer-sweep", &[]);
    let mut admin = cluster.supabase_database("sweep");
    let mut api = cluster.connect_as("sweep", "authenticator");
    let webinar = uuid(300);
    let (watching, gone) = (uuid(3), uuid(4));
    for viewer in [&watching, &gone] {
        enter(&mut api, viewer, &webinar, "tab");
        heartbeat(&mut api, viewer, &webinar, "tab");
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Only in the buffer: the rows show no heartbeat at all yet.
    let fresh = heartbeat(&mut api, &watching, &webinar, "tab");
    assert_eq!(buffer_stat(&mut admin, "dirty"), 2);

    let swept: i64 = admin
        .query_one(
            "SELECT webinar_sessions.sweep_stale_sessions('1 second')",
            &[],
        )
        .unwrap()
        .get(0);
    let rows: Vec<String> = admin
        .query(
            "SELECT s::text FROM webinar_sessions.webinar_user_sessions AS s",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        swept, 1,
        "only the silent viewer is stale: {rows:#?} fresh {fresh}"
    );
    let open: bool = admin
        .query_one(
            "SELECT exited_at IS NULL FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
            &[&fresh["id"].as_str().unwrap()],
        )
        .unwrap()
        .get(0);
    assert!(open, "a session with a buffered heartbeat was swept");
    assert_eq!(
        stored_heartbeat(&mut admin, &fresh["id"]).as_deref(),
        fresh["last_heartbeat_at"].as_str()
    );

    // The swept session left the buffer with the sweep: its next heartbeat reopens it.
    assert_eq!(
        heartbeat(&mut api, &gone, &webinar, "tab")["status"],
        "reopened"
    );
    assert_eq!(
        heartbeat(&mut api, &gone, &webinar, "tab")["status"],
        "alive"
    );
}

#[test]
fn leave_writes_the_buffered_heartbeat_and_ends_buffering() {
    let cluster = buffered_cluster("buffer-leave", &[]);
    let mut admin = cluster.supabase_database("leave");
    let mut api = cluster.connect_as("leave", "authenticator");
    let (viewer, webinar) = (uuid(5), uuid(500));
    enter(&mut api, &viewer, &webinar, "tab");
    heartbeat(&mut api, &viewer, &webinar, "tab");
    let buffered = heartbeat(&mut api, &viewer, &webinar, "tab");
    let left = rpc(
        &mut api,
        "authenticated",
        Some(&claims_for(&viewer)),
        "public.leave_webinar",
        &[("webinar_id", &webinar), ("session_id", "tab")],
    )
    .unwrap();
    assert_eq!(left["status"], "left");
    assert_eq!(left["last_heartbeat_at"], buffered["last_heartbeat_at"]);
    assert!(left["exited_at"].as_str() >= buffered["last_heartbeat_at"].as_str());
    assert_eq!(buffer_stat(&mut admin, "used"), 0);
    // After the leave the buffer never answers for the closed row.
    let next = heartbeat(&mut api, &viewer, &webinar, "tab");
    assert_eq!(next["status"], "reopened");
    assert_ne!(next["id"], buffered["id"]);
}

#[test]
fn a_full_buffer_falls_back_to_direct_heartbeats() {
    let cluster = buffered_cluster("buffer-full", &["webinar_sessions.buffer_capacity = 16"]);
    let mut admin = cluster.supabase_database("overflow");
    let mut api = cluster.connect_as("overflow", "authenticator");
    let webinar = uuid(600);
    let viewers: Vec<String> = (0..24).map(|i| uuid(1000 + i)).collect();
    for viewer in &viewers {
        enter(&mut api, viewer, &webinar, "tab");
    }
    let mut last = Vec::new();
    for _round in 0..3 {
        last = viewers
            .iter()
            .map(|viewer| heartbeat(&mut api, viewer, &webinar, "tab"))
            .collect::<Vec<_>>();
        assert!(last.iter().all(|h| h["status"] == "alive"));
    }
    assert_eq!(buffer_stat(&mut admin, "capacity"), 16);
    assert_eq!(buffer_stat(&mut admin, "used"), 16);
    assert!(
        buffer_stat(&mut admin, "fallbacks") >= 8 * 3,
        "every session that did not fit is counted"
    );
    settle(&mut admin);
    for h in &last {
        assert_eq!(
            stored_heartbeat(&mut admin, &h["id"]).as_deref(),
            h["last_heartbeat_at"].as_str()
        );
    }
    let memory: i64 = buffer_stat(&mut admin, "bytes_per_session");
    println!("buffer: {memory} bytes of shared memory per session");
    assert!((100..1000).contains(&memory));
}

#[test]
fn direct_mode_leaves_the_buffer_alone() {
    let cluster = Cluster::start(
        "buffer-direct",
        &[
            "webinar_sessions.heartbeat_mode = 'direct'",
            "webinar_sessions.sweeper_enabled = off",
        ],
    );
    let mut admin = cluster.supabase_database("direct");
    let mut api = cluster.connect_as("direct", "authenticator");
    let (viewer, webinar) = (uuid(7), uuid(700));
    enter(&mut api, &viewer, &webinar, "tab");
    for _ in 0..3 {
        let h = heartbeat(&mut api, &viewer, &webinar, "tab");
        assert_eq!(
            stored_heartbeat(&mut admin, &h["id"]).as_deref(),
            h["last_heartbeat_at"].as_str()
        );
    }
    let mode: String = admin
        .query_one("SELECT mode FROM webinar_sessions.buffer_stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(mode, "direct");
    assert_eq!(buffer_stat(&mut admin, "used"), 0);
    assert_eq!(buffer_stat(&mut admin, "buffered_heartbeats"), 0);
}

/// Many viewers heartbeat while sweeps with a tiny stale_after and flushes run in a loop.
/// Every heartbeat answered `alive` at time T for row R must end with R's recorded
/// heartbeat at T or later, and R must not have been closed before T.
#[test]
fn heartbeats_racing_flushes_and_sweeps_lose_nothing() {
    let cluster = buffered_cluster("buffer-race", &[]);
    let mut admin = cluster.supabase_database("race");
    let webinar = uuid(800);
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(8);

    let mut threads = Vec::new();
    for t in 0..4u64 {
        let url = cluster.url("race", "authenticator");
        let (webinar, answers) = (webinar.clone(), answers.clone());
        threads.push(std::thread::spawn(move || {
            let mut api = Client::connect(&url, postgres::NoTls).unwrap();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let viewer = uuid(2000 + t * 10 + n % 5);
                let answer = rpc(
                    &mut api,
                    "authenticated",
                    Some(&claims_for(&viewer)),
                    "public.heartbeat",
                    &[("webinar_id", &webinar), ("session_id", "tab")],
                );
                let h = match answer {
                    Ok(h) => h,
                    // A sweep overtook the heartbeat's transaction: the client retries.
                    Err(e) if e.code().code() == "40001" => continue,
                    Err(e) => panic!("heartbeat: {e}"),
                };
                if h["status"] == "alive" || h["status"] == "reopened" {
                    answers.lock().unwrap().push((
                        h["id"].as_str().unwrap().to_string(),
                        h["last_heartbeat_at"].as_str().unwrap().to_string(),
                    ));
                }
                // Mostly short pauses (the buffer answers), now and then one longer than
                // the sweeps' stale_after (the thread's viewers are swept and reopen).
                let pause = if n % 23 == 22 {
                    400
                } else {
                    (n * 7 + t * 13) % 20
                };
                std::thread::sleep(Duration::from_millis(pause));
                n += 1;
            }
        }));
    }
    let sweeper = {
        let url = cluster.url("race", "postgres");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = Client::connect(&url, postgres::NoTls).unwrap();
            let (mut sweeps, mut swept) = (0u64, 0i64);
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = client
                    .query_one(
                        "SELECT webinar_sessions.sweep_stale_sessions('300 milliseconds')",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                client
                    .execute("SELECT webinar_sessions.flush_heartbeats()", &[])
                    .unwrap();
                sweeps += 1;
                swept += n;
                // Room between sweeps for heartbeats to be buffered.
                std::thread::sleep(Duration::from_millis(15));
            }
            (sweeps, swept)
        })
    };
    for thread in threads {
        thread.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (sweeps, swept) = sweeper.join().unwrap();
    settle(&mut admin);

    let answers = answers.lock().unwrap();
    let mut violations = Vec::new();
    for (id, at) in answers.iter() {
        let row = admin
            .query_one(
                "SELECT last_heartbeat_at >= $2::text::timestamptz,
                        exited_at IS NULL OR exited_at >= $2::text::timestamptz
                   FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
                &[id, at],
            )
            .unwrap();
        let (kept, open_until): (bool, bool) = (row.get(0), row.get(1));
        if !(kept && open_until) {
            violations.push((id.clone(), at.clone(), kept, open_until));
        }
    }
    let buffered = buffer_stat(&mut admin, "buffered_heartbeats");
    println!(
        "race: {} heartbeats answered ({buffered} from the buffer), {sweeps} sweeps closed {swept} sessions, {} violations",
        answers.len(),
        violations.len()
    );
    assert!(
        swept > 0 && buffered > 0,
        "the race did not happen: nothing swept or buffered"
    );
    assert!(
        violations.is_empty(),
        "lost or overtaken heartbeats: {violations:?}"
    );
}

/// kill -9 of the postmaster under a heartbeat load: after the restart every session's
/// recorded heartbeat is at most one flush interval (plus the flush's own time) older than
/// the last one its viewer was told was recorded.
#[test]
fn a_crash_costs_at_most_one_flush_interval() {
    let flush_interval = Duration::from_secs(1);
    let cluster = buffered_cluster(
        "buffer-crash",
        &["webinar_sessions.flush_interval = 1", "fsync = on"],
    );
    let mut admin = cluster.supabase_database("crash");
    drop(admin);
    // The worker flushes its own database: point it at this one.
    cluster.append_conf("webinar_sessions.database = 'crash'");
    cluster.stop("fast");
    cluster.start_again();
    let webinar = uuid(900);
    let last: Arc<Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let crashed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let url = cluster.url("crash", "authenticator");
        let (webinar, last, crashed) = (webinar.clone(), last.clone(), crashed.clone());
        threads.push(std::thread::spawn(move || {
            let mut api = Client::connect(&url, postgres::NoTls).unwrap();
            for viewer in (0..5).map(|i| uuid(3000 + t * 10 + i)) {
                enter(&mut api, &viewer, &webinar, "tab");
            }
            let mut n = 0u64;
            while !crashed.load(Ordering::Relaxed) {
                let viewer = uuid(3000 + t * 10 + n % 5);
                let answer = rpc(
                    &mut api,
                    "authenticated",
                    Some(&claims_for(&viewer)),
                    "public.heartbeat",
                    &[("webinar_id", &webinar), ("session_id", "tab")],
                );
                match answer {
                    Ok(h) => {
                        last.lock().unwrap().insert(
                            h["id"].as_str().unwrap().to_string(),
                            h["last_heartbeat_at"].as_str().unwrap().to_string(),
                        );
                    }
                    Err(_) => break,
                }
                std::thread::sleep(Duration::from_millis(5));
                n += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(3500));
    crashed.store(true, Ordering::Relaxed);
    cluster.kill_postmaster_and_restart();
    for thread in threads {
        let _ = thread.join();
    }
    admin = cluster.connect("crash");

    let last = last.lock().unwrap();
    let mut worst = 0f64;
    for (id, at) in last.iter() {
        let behind: f64 = admin
            .query_one(
                "SELECT extract(epoch FROM $2::text::timestamptz - coalesce(last_heartbeat_at, entered_at))::float8
                   FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
                &[id, at],
            )
            .unwrap()
            .get(0);
        worst = worst.max(behind);
    }
    println!(
        "crash: {} sessions, the worst lost {worst:.3} s of heartbeats (flush_interval {} s)",
        last.len(),
        flush_interval.as_secs()
    );
    assert!(!last.is_empty());
    // One interval, plus the flush's own run and the WAL writer's delay for asynchronous
    // commits (up to three times wal_writer_delay).
    assert!(
        worst <= flush_interval.as_secs_f64() + 0.8,
        "lost {worst} s"
    );
}

/// The sweep is held up (by a row lock on another stale session) after it has collected the
/// buffer and before it has closed everything. A stale viewer who comes back in that window
/// must not be told `alive` from the buffer and then be swept: the heartbeat goes to the row,
/// and the sweep spares it.
#[test]
fn a_heartbeat_while_a_sweep_is_under_way_is_never_overtaken() {
    let cluster = buffered_cluster("buffer-window", &[]);
    let mut admin = cluster.supabase_database("sweepwindow");
    let mut api = cluster.connect_as("sweepwindow", "authenticator");
    let webinar = uuid(1100);
    let (returning, blocker) = (uuid(11), uuid(12));
    for viewer in [&returning, &blocker] {
        enter(&mut api, viewer, &webinar, "tab");
        heartbeat(&mut api, viewer, &webinar, "tab");
    }
    std::thread::sleep(Duration::from_millis(1200));

    // Hold the blocker's row: the sweep will wait for it in the middle of its UPDATE.
    let mut holder = cluster.connect("sweepwindow");
    let mut hold = holder.transaction().unwrap();
    hold.execute(
        // (The webinar too: Citus locks rows only in a query on one shard.)
        "SELECT 1 FROM webinar_sessions.webinar_user_sessions
          WHERE webinar_id = $1::text::uuid AND user_id = $2::text::uuid FOR UPDATE",
        &[&webinar, &blocker],
    )
    .unwrap();
    let sweep = {
        let url = cluster.url("sweepwindow", "postgres");
        std::thread::spawn(move || {
            let mut client = Client::connect(&url, postgres::NoTls).unwrap();
            let swept: i64 = client
                .query_one(
                    "SELECT webinar_sessions.sweep_stale_sessions('1 second')",
                    &[],
                )
                .unwrap()
                .get(0);
            swept
        })
    };
    // (A bound, not a pace: it returns as soon as the sweep waits. Through Citus, with the
    // suite's other tests on both cores, 10 s once ran out in CI.)
    let blocked = eventually(Duration::from_secs(60), || {
        admin
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = 'sweepwindow' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0)
    });
    assert!(blocked, "the sweep never waited");

    // The returning viewer's heartbeat, from a thread: it may have to wait for the sweep.
    let came_back = {
        let url = cluster.url("sweepwindow", "authenticator");
        let (webinar, returning) = (webinar.clone(), returning.clone());
        std::thread::spawn(move || {
            let mut api = Client::connect(&url, postgres::NoTls).unwrap();
            heartbeat(&mut api, &returning, &webinar, "tab")
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    hold.rollback().unwrap();
    let swept = sweep.join().unwrap();
    let answer = came_back.join().unwrap();
    settle(&mut admin);

    let row = admin
        .query_one(
            "SELECT exited_at IS NULL, last_heartbeat_at = $2::text::timestamptz
               FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
            &[
                &answer["id"].as_str().unwrap(),
                &answer["last_heartbeat_at"].as_str().unwrap(),
            ],
        )
        .unwrap();
    let (open, recorded): (bool, bool) = (row.get(0), row.get(1));
    println!(
        "window: the returning viewer got {}, the sweep closed {swept}",
        answer["status"]
    );
    assert!(
        open && recorded,
        "answered {answer} but the row was swept or not written"
    );
    assert_eq!(buffer_stat(&mut admin, "dirty"), 0);
}

/// Rows deleted or truncated behind the API's back leave the buffer with them: the next
/// heartbeat of such a session opens a new one instead of being answered for a row that is
/// gone. So do the entries of a dropped and re-created extension.
#[test]
fn rows_removed_behind_the_api_leave_the_buffer() {
    let cluster = buffered_cluster("buffer-removed", &[]);
    let mut admin = cluster.supabase_database("removed");
    let mut api = cluster.connect_as("removed", "authenticator");
    let webinar = uuid(1200);
    let (deleted, kept) = (uuid(21), uuid(22));
    let mut first = Vec::new();
    for viewer in [&deleted, &kept] {
        first.push(enter(&mut api, viewer, &webinar, "tab"));
        assert_eq!(
            heartbeat(&mut api, viewer, &webinar, "tab")["status"],
            "alive"
        );
    }
    admin
        .execute(
            "DELETE FROM webinar_sessions.webinar_user_sessions WHERE user_id = $1::text::uuid",
            &[&deleted],
        )
        .unwrap();
    let after_delete = heartbeat(&mut api, &deleted, &webinar, "tab");
    assert_eq!(after_delete["status"], "reopened");
    assert_ne!(after_delete["id"], first[0]["id"]);
    let other = heartbeat(&mut api, &kept, &webinar, "tab");
    assert_eq!(
        (&other["status"], &other["id"]),
        (&"alive".into(), &first[1]["id"])
    );

    admin
        .batch_execute("TRUNCATE webinar_sessions.webinar_user_sessions")
        .unwrap();
    assert_eq!(buffer_stat(&mut admin, "used"), 0);
    assert_eq!(
        heartbeat(&mut api, &kept, &webinar, "tab")["status"],
        "reopened"
    );

    admin
        .batch_execute("DROP EXTENSION webinar_sessions; CREATE EXTENSION webinar_sessions")
        .unwrap();
    assert_eq!(
        heartbeat(&mut api, &kept, &webinar, "tab")["status"],
        "reopened"
    );
    assert_eq!(
        heartbeat(&mut api, &kept, &webinar, "tab")["status"],
        "alive"
    );
}

/// The buffer's changes are applied at commit by the backend that made them; a prepared
/// transaction would commit elsewhere, later. PREPARE is refused, and nothing is applied.
#[test]
fn a_transaction_that_used_the_buffer_cannot_be_prepared() {
    let cluster = buffered_cluster("buffer-prepare", &["max_prepared_transactions = 2"]);
    let mut admin = cluster.supabase_database("prepare");
    let (viewer, webinar) = (uuid(31), uuid(1300));
    let error = admin
        .batch_execute(&format!(
            "BEGIN;
             SELECT webinar_sessions.enter('{webinar}', 'tab', '{viewer}');
             PREPARE TRANSACTION 'webinar';"
        ))
        .expect_err("PREPARE was accepted");
    let error = error.as_db_error().expect("a database error").clone();
    assert_eq!(error.code().code(), "0A000", "{error}");
    assert!(error.message().contains("cannot PREPARE"), "{error}");
    let _ = admin.batch_execute("ROLLBACK");
    assert_eq!(buffer_stat(&mut admin, "used"), 0);
    // A transaction that did not touch the buffer prepares as usual.
    admin
        .batch_execute("BEGIN; SELECT 1; PREPARE TRANSACTION 'plain'")
        .unwrap();
    admin.batch_execute("COMMIT PREPARED 'plain'").unwrap();
}
