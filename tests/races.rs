//! Regression tests for the concurrency bugs of 0.2.0 that are not two-party races on one row
//! (those are isolation specs in tests/isolation): the worker across databases, its shutdown
//! while it waits on a lock, the grace period after a crash restart, and a buffered
//! heartbeat's transaction (rollback, PREPARE, READ ONLY).

use harness::*;
use postgres::Client;
use std::time::{Duration, Instant};

fn buffered(name: &str, database: &str, settings: &[&str]) -> (Cluster, Client) {
    let database_setting = format!("webinar_sessions.database = '{database}'");
    let mut all = vec![
        "webinar_sessions.heartbeat_mode = 'buffered'",
        "webinar_sessions.flush_interval = 1",
        "max_prepared_transactions = 4",
        database_setting.as_str(),
    ];
    all.extend_from_slice(settings);
    let cluster = Cluster::start(name, &all);
    let mut admin = cluster.supabase_database(database);
    // The worker started before its database existed; the postmaster starts it again soon.
    let running = eventually(Duration::from_secs(20), || worker_pid(&mut admin).is_some());
    assert!(running, "the worker did not start in {database}");
    (cluster, admin)
}

fn call(api: &mut Client, function: &str, viewer: &str, webinar: &str) -> serde_json::Value {
    rpc(
        api,
        "authenticated",
        Some(&claims_for(viewer)),
        function,
        &[("webinar_id", webinar), ("session_id", "tab")],
    )
    .unwrap_or_else(|e| panic!("{function}: {e}"))
}

/// A session entered and heartbeated once more (answered from the buffer); returns the
/// answer.
fn buffered_heartbeat(api: &mut Client, viewer: &str, webinar: &str) -> serde_json::Value {
    call(api, "public.enter_webinar", viewer, webinar);
    std::thread::sleep(Duration::from_millis(5));
    call(api, "public.heartbeat", viewer, webinar)
}

/// 0.2.0 bug 3: the worker waited for each other database's flush in turn, so a lock held in
/// one database stopped flushes (and sweeps) everywhere.
#[test]
fn a_lock_in_another_database_does_not_stall_the_worker() {
    let (cluster, mut admin) = buffered("races-stall", "main_db", &[]);
    let other = cluster.supabase_database("other_db");
    let mut other_api = cluster.connect_as("other_db", "authenticator");
    let (webinar, viewer) = (uuid(10), uuid(1));
    buffered_heartbeat(&mut other_api, &viewer, &webinar);
    // A flush in `other_db` that never ends: it holds sweep_runs' lock there.
    let mut holder = cluster.connect("other_db");
    holder
        .batch_execute("BEGIN; SELECT webinar_sessions.flush_heartbeats();")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Dirty again (answered from the buffer, no row lock), for a flusher to wait on.
    call(&mut other_api, "public.heartbeat", &viewer, &webinar);
    let stuck = eventually(Duration::from_secs(10), || {
        admin
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity
                  WHERE backend_type = 'webinar_sessions flush' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0)
    });
    assert!(stuck, "no flusher waited on the lock in other_db");

    // The worker's own database is still flushed every second.
    let mut api = cluster.connect_as("main_db", "authenticator");
    let answer = buffered_heartbeat(&mut api, &viewer, &webinar);
    let told = answer["last_heartbeat_at"].as_str().unwrap().to_string();
    let flushed = eventually(Duration::from_secs(5), || {
        stored_heartbeat(&mut admin, &answer["id"]).as_ref() == Some(&told)
    });
    holder.batch_execute("ROLLBACK").unwrap();
    drop(other);
    assert!(
        flushed,
        "the worker's database was not flushed while another database held a lock"
    );
}

/// 0.2.0 bug 4: a transaction that had flushed could be prepared (holding sweep_runs' lock for
/// good), and the worker, waiting on such a lock, ignored SIGTERM: a fast shutdown hung.
#[test]
fn the_worker_leaves_promptly_while_it_waits_on_a_lock() {
    let (cluster, mut admin) = buffered("races-sigterm", "sigterm", &[]);
    let mut tx = cluster.connect("sigterm");
    tx.batch_execute("BEGIN; SELECT webinar_sessions.flush_heartbeats();")
        .unwrap();
    let refused = tx.batch_execute("PREPARE TRANSACTION 'p1'").unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("0A000"),
        "{refused}"
    );
    drop(tx);

    // Someone holds the lock the worker's flushes take; the worker waits on it.
    let mut api = cluster.connect_as("sigterm", "authenticator");
    let (webinar, viewer) = (uuid(11), uuid(1));
    let answer = buffered_heartbeat(&mut api, &viewer, &webinar);
    let mut holder = cluster.connect("sigterm");
    holder
        .batch_execute("BEGIN; LOCK TABLE webinar_sessions.sweep_runs IN ACCESS EXCLUSIVE MODE;")
        .unwrap();
    let pid = worker_pid(&mut admin).expect("the worker runs");
    let waiting = eventually(Duration::from_secs(10), || {
        admin
            .query_one(
                "SELECT wait_event_type IS NOT DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0)
    });
    assert!(waiting, "the worker never waited on the lock");

    // pg_terminate_backend ends the wait: the worker leaves and is started again.
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(terminated);
    let gone = eventually(Duration::from_secs(10), || {
        admin
            .query_one(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get::<_, bool>(0)
    });
    assert!(gone, "pg_terminate_backend did not end the waiting worker");
    let back = eventually(Duration::from_secs(20), || worker_pid(&mut admin).is_some());
    assert!(back, "the worker did not come back");
    drop(admin);

    // A fast stop finishes although the lock is still held, and loses nothing: what the
    // worker could not write in time is saved with the buffer and written after the restart.
    let started = Instant::now();
    cluster.stop("fast");
    let took = started.elapsed();
    println!("fast stop while the worker waited on a lock: {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "the fast stop took {took:?}"
    );
    drop(holder);
    cluster.start_again();
    let mut admin = cluster.connect("sigterm");
    let told = answer["last_heartbeat_at"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || stored_heartbeat(
            &mut admin,
            &answer["id"]
        )
        .as_ref()
            == Some(&told)),
        "the acknowledged heartbeat was lost across the fast stop"
    );
}

/// 0.2.0 bug 5: on a clean stop the worker flushed only its own database; heartbeats
/// acknowledged in another database were gone.
#[test]
fn a_clean_stop_keeps_the_heartbeats_of_every_database() {
    let (cluster, admin) = buffered(
        "races-clean-stop",
        "main_db",
        // Flushes far apart: only the stop can write what is buffered.
        &["webinar_sessions.flush_interval = 3600"],
    );
    drop(admin);
    let mut answers = Vec::new();
    for database in ["main_db", "second_db"] {
        if database != "main_db" {
            drop(cluster.supabase_database(database));
        }
        let mut api = cluster.connect_as(database, "authenticator");
        let answer = buffered_heartbeat(&mut api, &uuid(1), &uuid(12));
        answers.push((database, answer));
    }
    cluster.stop("fast");
    cluster.start_again();
    for (database, answer) in answers {
        let mut admin = cluster.connect(database);
        // Written after the restart, by the worker (its own database at once, the other
        // through a flusher); flush_interval is an hour, so ask for it in the other one.
        settle(&mut admin);
        assert_eq!(
            stored_heartbeat(&mut admin, &answer["id"]).as_deref(),
            answer["last_heartbeat_at"].as_str(),
            "{database}: the acknowledged heartbeat was lost across a clean stop"
        );
    }
}

/// 0.2.0 bug 7: after a crash restart (a backend killed, the postmaster reinitialising) the
/// worker swept at once: pg_postmaster_start_time() does not change then.
#[test]
fn no_sweep_right_after_a_crash_restart() {
    let (cluster, mut admin) = buffered(
        "races-grace",
        "grace",
        &[
            "webinar_sessions.stale_after = '20s'",
            "webinar_sessions.sweep_interval = 1",
        ],
    );
    // Let the server be up for longer than stale_after, so that the old rule would sweep.
    std::thread::sleep(Duration::from_secs(21));
    admin
        .batch_execute(
            "INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
             VALUES ('00000000-0000-4000-8000-000000000064', '00000000-0000-4000-8000-000000000001',
                     'quiet', now() - interval '1 minute', now() - interval '15 seconds')",
        )
        .unwrap();
    // A backend dies: the postmaster resets every process and shared memory.
    let victim: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let crashed_at = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    drop(admin);
    std::thread::sleep(Duration::from_secs(1));
    let mut admin = cluster.connect("grace");
    // The row is 15 s quiet at the crash: stale 5 s later. The worker must wait 20 s from its
    // restart before sweeping, so the row is still open 10 s after the crash.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(crashed_at.elapsed()));
    let open: bool = admin
        .query_one(
            "SELECT exited_at IS NULL FROM webinar_sessions.webinar_user_sessions WHERE session_id = 'quiet'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(open, "the worker swept within 10 s of a crash restart");
    let restarted = cluster
        .log()
        .contains("all server processes terminated; reinitializing");
    assert!(restarted, "the postmaster did not reinitialise");
}

/// 0.2.0 bug 8: a buffered heartbeat ignored its transaction.
#[test]
fn a_buffered_heartbeat_belongs_to_its_transaction() {
    let (cluster, mut admin) = buffered(
        "races-transaction",
        "tx",
        &["webinar_sessions.flush_interval = 3600"],
    );
    let mut api = cluster.connect_as("tx", "authenticator");
    let (webinar, viewer) = (uuid(13), uuid(1));
    let first = buffered_heartbeat(&mut api, &viewer, &webinar);
    settle(&mut admin);
    let written = stored_heartbeat(&mut admin, &first["id"]);
    assert_eq!(written.as_deref(), first["last_heartbeat_at"].as_str());
    std::thread::sleep(Duration::from_millis(5));

    // A heartbeat rolled back is not written by the next flush.
    let heartbeat_sql = "SET LOCAL ROLE authenticated;
         SELECT set_config('request.jwt.claims', '{\"sub\":\"00000000-0000-4000-8000-000000000001\",\"role\":\"authenticated\"}', true);
         SELECT status FROM public.heartbeat('00000000-0000-4000-8000-00000000000d', 'tab');";
    let mut client = cluster.connect("tx");
    client.batch_execute("BEGIN").unwrap();
    client.batch_execute(heartbeat_sql).unwrap();
    client.batch_execute("ROLLBACK").unwrap();
    let flushed: i64 = admin
        .query_one("SELECT webinar_sessions.flush_heartbeats()", &[])
        .unwrap()
        .get(0);
    assert_eq!(flushed, 0, "a rolled-back heartbeat was written");
    assert_eq!(stored_heartbeat(&mut admin, &first["id"]), written);

    // A transaction with a buffered heartbeat cannot be prepared.
    client.batch_execute("BEGIN").unwrap();
    client.batch_execute(heartbeat_sql).unwrap();
    let refused = client
        .batch_execute("PREPARE TRANSACTION 'hb'")
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("0A000")
    );
    let prepared: i64 = admin
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0);
    settle(&mut admin);
    assert_eq!(stored_heartbeat(&mut admin, &first["id"]), written);

    // A heartbeat over GET (a READ ONLY transaction) fails with 25006 whether or not the
    // session is buffered, as in direct mode.
    for mode in ["buffered", "direct"] {
        client.batch_execute("BEGIN READ ONLY").unwrap();
        client
            .batch_execute(&format!(
                "SET LOCAL webinar_sessions.heartbeat_mode = {mode}"
            ))
            .unwrap();
        let error = client.batch_execute(heartbeat_sql).unwrap_err();
        assert_eq!(
            error.as_db_error().map(|e| e.code().code()),
            Some("25006"),
            "{mode}: {error}"
        );
        client.batch_execute("ROLLBACK").unwrap();
    }

    // A heartbeat and a leave in one transaction: the leave writes the heartbeat.
    client.batch_execute("BEGIN").unwrap();
    std::thread::sleep(Duration::from_millis(5));
    client.batch_execute(heartbeat_sql).unwrap();
    let left = client
        .query_one(
            "SELECT status, to_jsonb(last_heartbeat_at) #>> '{}', (SELECT to_jsonb(now()) #>> '{}')
               FROM public.leave_webinar('00000000-0000-4000-8000-00000000000d', 'tab')",
            &[],
        )
        .unwrap();
    client.batch_execute("COMMIT").unwrap();
    assert_eq!(left.get::<_, String>(0), "left");
    assert_eq!(left.get::<_, String>(1), left.get::<_, String>(2));
}

/// Found by adversarial testing of the fixes: savepoints, durability of a transaction that
/// mixes a heartbeat with an enter or leave, and preparing a direct-mode heartbeat.
#[test]
fn savepoints_durability_and_prepare_keep_the_promises() {
    let (cluster, mut admin) = buffered(
        "races-savepoints",
        "sp",
        &["webinar_sessions.flush_interval = 3600"],
    );
    let mut api = cluster.connect_as("sp", "authenticator");
    let (webinar, viewer) = (uuid(14), uuid(1));
    buffered_heartbeat(&mut api, &viewer, &webinar);
    settle(&mut admin);
    let as_viewer = "SET LOCAL ROLE authenticated;
         SELECT set_config('request.jwt.claims', '{\"sub\":\"00000000-0000-4000-8000-000000000001\",\"role\":\"authenticated\"}', true);";
    let webinar_arg = "'00000000-0000-4000-8000-00000000000e', 'tab'";
    let mut client = cluster.connect("sp");

    // A leave, a flush or a sweep rolled back to a savepoint leaves the transaction's own
    // buffered heartbeat owed: it is recorded at commit.
    for undone in [
        format!("SELECT public.leave_webinar({webinar_arg})"),
        "SELECT webinar_sessions.flush_heartbeats()".to_string(),
        "SELECT webinar_sessions.sweep_stale_sessions('1 hour')".to_string(),
    ] {
        std::thread::sleep(Duration::from_millis(5));
        client.batch_execute("BEGIN").unwrap();
        client.batch_execute(as_viewer).unwrap();
        let told: String = client
            .query_one(
                &format!("SELECT to_jsonb(last_heartbeat_at) #>> '{{}}' FROM public.heartbeat({webinar_arg})"),
                &[],
            )
            .unwrap()
            .get(0);
        client.batch_execute("RESET ROLE; SAVEPOINT s").unwrap();
        client.batch_execute(&undone).unwrap();
        client
            .batch_execute("ROLLBACK TO SAVEPOINT s; COMMIT")
            .unwrap();
        settle(&mut admin);
        let stored: String = admin
            .query_one(
                "SELECT to_jsonb(last_heartbeat_at) #>> '{}' FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(stored, told, "after `{undone}` rolled back to a savepoint");
    }

    // A TRUNCATE rolled back to a savepoint does not empty the buffer.
    let used = |admin: &mut Client| -> i64 {
        admin
            .query_one("SELECT used FROM webinar_sessions.buffer_stats", &[])
            .unwrap()
            .get(0)
    };
    let before = used(&mut admin);
    assert!(before > 0);
    client
        .batch_execute("BEGIN; SAVEPOINT s; TRUNCATE webinar_sessions.webinar_user_sessions; ROLLBACK TO SAVEPOINT s; COMMIT")
        .unwrap();
    assert_eq!(
        used(&mut admin),
        before,
        "a rolled-back TRUNCATE emptied the buffer"
    );

    // In direct mode, a transaction of the viewer's that makes `calls` and stays open.
    let direct = |client: &mut Client, calls: &[&str]| {
        client.batch_execute("BEGIN").unwrap();
        client
            .batch_execute("SET LOCAL webinar_sessions.heartbeat_mode = direct")
            .unwrap();
        client.batch_execute(as_viewer).unwrap();
        for function in calls {
            client
                .batch_execute(&format!("SELECT public.{function}({webinar_arg})"))
                .unwrap();
        }
        client
            .query_one("SHOW synchronous_commit", &[])
            .unwrap()
            .get::<_, String>(0)
    };
    // A direct heartbeat commits asynchronously only when the transaction wrote nothing else:
    // alone it does; an enter or leave in the same transaction, before or after it, stays
    // durable.
    let alone = direct(&mut client, &["heartbeat"]);
    client.batch_execute("COMMIT").unwrap();
    assert_eq!(
        alone, "off",
        "a heartbeat alone does not wait for the WAL flush"
    );
    for calls in [
        ["heartbeat", "leave_webinar"],
        ["enter_webinar", "heartbeat"],
    ] {
        let durability = direct(&mut client, &calls);
        client.batch_execute("COMMIT").unwrap();
        assert_eq!(durability, "on", "{calls:?} committed asynchronously");
    }

    // A transaction that called the API cannot be prepared, in direct mode too (it would hold
    // a session's row, and stall every flush and sweep, until it was finished).
    direct(&mut client, &["heartbeat"]);
    let refused = client
        .batch_execute("PREPARE TRANSACTION 'direct'")
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("0A000")
    );
}

/// The buffer is saved only at a planned stop, and never loaded after the server ran
/// without preloading (rows may have changed behind it).
#[test]
fn the_saved_buffer_is_written_only_at_a_clean_stop_and_trusted_only_then() {
    let (cluster, admin) = buffered("races-saved", "saved", &[]);
    drop(admin);
    let mut api = cluster.connect_as("saved", "authenticator");
    let (webinar, viewer) = (uuid(15), uuid(1));
    buffered_heartbeat(&mut api, &viewer, &webinar);
    drop(api);
    let saved = cluster.data_dir().join("pg_stat/webinar_sessions.buffer");

    cluster.stop("immediate");
    assert!(!saved.exists(), "an immediate stop saved the buffer");
    cluster.start_again();
    let mut admin = cluster.connect("saved");
    assert!(eventually(Duration::from_secs(20), || worker_pid(
        &mut admin
    )
    .is_some()));
    drop(admin);
    cluster.stop("fast");
    assert!(saved.exists(), "a fast stop did not save the buffer");

    // A run without preloading: the first call of the library discards the file.
    cluster.append_conf("shared_preload_libraries = ''");
    cluster.start_again();
    let mut api = cluster.connect_as("saved", "authenticator");
    call(&mut api, "public.leave_webinar", &viewer, &webinar);
    assert!(
        !saved.exists(),
        "the saved buffer outlived a run without preloading"
    );
    drop(api);
    cluster.stop("fast");
    cluster.append_conf("shared_preload_libraries = 'webinar_sessions'");
    cluster.start_again();
    let mut api = cluster.connect_as("saved", "authenticator");
    let back = call(&mut api, "public.heartbeat", &viewer, &webinar);
    assert_eq!(
        back["status"], "reopened",
        "the left session was served from a stale buffer"
    );
}

/// A session opened by a transaction whose commit is not visible yet is not answered from the
/// buffer. Its entry is added at PRE_COMMIT (so that a leave or sweep racing the commit finds
/// it), but until the commit is visible the row is one nobody else sees: a sweep's flush
/// skips it and dropped the entry with the heartbeat it had answered, and the sweep then
/// closed the row before the time the client was told. (0.3.0 answered `alive` at once. A CI
/// run of tests/invariants.rs caught it after a crash restart, when commits wait long for the
/// WAL flush; here a commit waits for a synchronous standby that does not exist.)
#[test]
fn a_session_is_not_answered_from_the_buffer_before_its_opening_commit_is_visible() {
    let (cluster, mut admin) = buffered(
        "races-invisible",
        "main_db",
        &[
            "synchronous_standby_names = 'nobody'",
            "synchronous_commit = local",
        ],
    );
    let (webinar, viewer) = (uuid(30), uuid(3));
    // The opener's durable commit waits for the standby until it is cancelled.
    let url = format!(
        "{} options='-c synchronous_commit=on'",
        cluster.url("main_db", "authenticator")
    );
    let (w, v) = (webinar.clone(), viewer.clone());
    let opener = std::thread::spawn(move || {
        let mut api = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        call(&mut api, "public.heartbeat", &v, &w)
    });
    let waiting = |admin: &mut Client| -> Option<i32> {
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
    };
    assert!(
        eventually(Duration::from_secs(20), || waiting(&mut admin).is_some()),
        "the opener's commit never waited for the standby"
    );
    // A second heartbeat of the same session, while the opener's row is invisible.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut api = cluster.connect_as("main_db", "authenticator");
    let (w, v) = (webinar.clone(), viewer.clone());
    let second = std::thread::spawn(move || {
        let answer = call(&mut api, "public.heartbeat", &v, &w);
        tx.send(answer.clone()).unwrap();
        answer
    });
    if let Ok(early) = rx.recv_timeout(Duration::from_secs(1)) {
        let visible: i64 = admin
            .query_one(
                "SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
                &[&early["id"].as_str().unwrap()],
            )
            .unwrap()
            .get(0);
        panic!("answered {early} while its row was visible to nobody ({visible} rows)");
    }
    // The opener's commit becomes visible; the second heartbeat then finds its row.
    let pid = waiting(&mut admin).expect("the opener still waits");
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    let opened = opener.join().expect("the opener failed");
    let alive = second.join().expect("the second heartbeat failed");
    assert_eq!(opened["status"], "reopened", "{opened}");
    assert_eq!(alive["status"], "alive", "{alive}");
    assert_eq!(alive["id"], opened["id"], "{alive} after {opened}");
    settle(&mut admin);
    assert_eq!(
        stored_heartbeat(&mut admin, &alive["id"]).as_deref(),
        alive["last_heartbeat_at"].as_str(),
        "the row holds the heartbeat the second call was told"
    );
    // From now on the session is served from the buffer again.
    let mut api = cluster.connect_as("main_db", "authenticator");
    let before: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
    call(&mut api, "public.heartbeat", &viewer, &webinar);
    let after: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
    assert_eq!(
        after,
        before + 1,
        "the committed session is answered from the buffer"
    );
}

/// A transaction can still fail after its PRE_COMMIT callbacks have run: a serializable one
/// in its commit-time check. One that had resumed a session (its entry already held another
/// transaction's acknowledged, not yet written heartbeat) used to take the entry with it when
/// it failed, so the heartbeat was never written and the session was later swept at a time
/// before the one its client was told. Now an entry that existed before is left as it was.
#[test]
fn a_transaction_failing_at_commit_keeps_the_heartbeats_of_others() {
    let (cluster, mut admin) = buffered(
        "races-ssi",
        "main_db",
        &[
            "webinar_sessions.flush_interval = '1h'",
            "webinar_sessions.sweeper_enabled = off",
        ],
    );
    let (webinar, viewer) = (uuid(40), uuid(4));
    admin
        .batch_execute("CREATE TABLE public.skew (k int)")
        .unwrap();
    let session = |client: &mut Client, function: &str| -> (String, Option<String>) {
        let row = client
            .query_one(
                &format!(
                    "SELECT r.status, to_jsonb(r.last_heartbeat_at) #>> '{{}}'
                       FROM webinar_sessions.{function}($1::text::uuid, 'victim', $2::text::uuid) AS r"
                ),
                &[&webinar, &viewer],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(session(&mut admin, "enter").0, "entered");
    let buffered_before: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
    let (status, told) = session(&mut admin, "heartbeat");
    assert_eq!(status, "alive");
    let buffered_after: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
    assert_eq!(
        buffered_after,
        buffered_before + 1,
        "the heartbeat was answered from the buffer"
    );
    // Write skew between two serializable transactions; the second also resumes the session,
    // and its commit fails after PRE_COMMIT.
    let (mut a1, mut a2) = (cluster.connect("main_db"), cluster.connect("main_db"));
    a1.batch_execute(
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM public.skew WHERE k = 1",
    )
    .unwrap();
    a2.batch_execute(
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM public.skew WHERE k = 2",
    )
    .unwrap();
    a1.batch_execute("INSERT INTO public.skew VALUES (2)")
        .unwrap();
    a2.batch_execute("INSERT INTO public.skew VALUES (1)")
        .unwrap();
    assert_eq!(session(&mut a2, "enter").0, "resumed");
    a1.batch_execute("COMMIT").unwrap();
    let failed = a2
        .batch_execute("COMMIT")
        .expect_err("write skew must fail at commit");
    assert_eq!(
        failed.as_db_error().map(|e| e.code().code()),
        Some("40001"),
        "{failed}"
    );
    // The acknowledged heartbeat is still owed to the row, and written by the next flush.
    settle(&mut admin);
    let stored: Option<String> = admin
        .query_one(
            "SELECT to_jsonb(last_heartbeat_at) #>> '{}' FROM webinar_sessions.webinar_user_sessions
              WHERE session_id = 'victim' AND exited_at IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        stored, told,
        "the heartbeat the client was told is in the row"
    );
}

/// enter / heartbeat / leave for (`webinar`, `viewer`, 'tab'), as the superuser names the
/// viewer: (status, id, last_heartbeat_at).
fn session_call(
    client: &mut Client,
    function: &str,
    webinar: &str,
    viewer: &str,
) -> (String, Option<String>, Option<String>) {
    let row = client
        .query_one(
            &format!(
                "SELECT r.status, r.id::text, to_jsonb(r.last_heartbeat_at) #>> '{{}}'
                   FROM webinar_sessions.{function}($1::text::uuid, 'tab', $2::text::uuid) AS r"
            ),
            &[&webinar, &viewer],
        )
        .unwrap_or_else(|e| panic!("{function}: {e}"));
    (row.get(0), row.get(1), row.get(2))
}

/// A leave of (`webinar`, `viewer`, 'tab') in a transaction of its own, from a thread, that
/// the caller has made wait for a row lock: `blocked_leave` returns once it waits, `status`
/// gives its answer, and it commits when `commit` says so.
struct BlockedLeave {
    answered: std::sync::mpsc::Receiver<String>,
    commit: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn blocked_leave(
    cluster: &Cluster,
    admin: &mut Client,
    database: &str,
    webinar: &str,
    viewer: &str,
) -> BlockedLeave {
    let (answer, answered) = std::sync::mpsc::channel::<String>();
    let (commit, committing) = std::sync::mpsc::channel::<()>();
    let url = cluster.url(database, superuser());
    let (webinar, viewer) = (webinar.to_string(), viewer.to_string());
    let thread = std::thread::spawn(move || {
        let mut client = Client::connect(&url, postgres::NoTls).unwrap();
        client.batch_execute("BEGIN").unwrap();
        let (status, ..) = session_call(&mut client, "leave", &webinar, &viewer);
        answer.send(status).unwrap();
        committing.recv().unwrap();
        client.batch_execute("COMMIT").unwrap();
    });
    let waiting = eventually(Duration::from_secs(60), || {
        admin
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity
                  WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&database],
            )
            .unwrap()
            .get(0)
    });
    assert!(waiting, "the leave never waited for the row lock");
    BlockedLeave {
        answered,
        commit,
        thread,
    }
}

impl BlockedLeave {
    fn status(&self) -> String {
        self.answered
            .recv_timeout(Duration::from_secs(60))
            .expect("the leave answered")
    }

    fn commit(self) {
        self.commit.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// Found by the invariant checker (tests/invariants.rs) in CI: a sweep that closed a session
/// while a leave of it was under way removed the session's buffer entry, and the leave's
/// count with it. The key's next session entered the buffer while the leave was still open,
/// and the leave, ending, removed that entry as its own: the heartbeats answered from it and
/// not yet written were lost, so the row ended before the time its viewer had been told.
#[test]
fn a_leave_outliving_a_sweep_of_its_session_spares_the_next_session() {
    let (cluster, mut admin) = buffered(
        "races-leave-sweep",
        "leave_db",
        &[
            "webinar_sessions.flush_interval = '1h'",
            "webinar_sessions.sweeper_enabled = off",
        ],
    );
    let (webinar, viewer) = (uuid(41), uuid(5));
    assert_eq!(
        session_call(&mut admin, "enter", &webinar, &viewer).0,
        "entered"
    );
    assert_eq!(
        session_call(&mut admin, "heartbeat", &webinar, &viewer).0,
        "alive"
    );
    std::thread::sleep(Duration::from_millis(20));

    // The sweep closes the session and holds its row until it commits.
    let mut sweeper = cluster.connect("leave_db");
    sweeper.batch_execute("BEGIN").unwrap();
    let swept: i64 = sweeper
        .query_one(
            "SELECT webinar_sessions.sweep_stale_sessions('5 milliseconds')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(swept, 1);
    // A leave of the same session, counted into its entry, waits for the sweep's row lock;
    // once answered it stays open until told to commit.
    let leave = blocked_leave(&cluster, &mut admin, "leave_db", &webinar, &viewer);
    sweeper.batch_execute("COMMIT").unwrap();
    let left = leave.status();
    assert_eq!(left, "not_found", "the sweep closed the session first");

    // The viewer comes back while that leave is still open: a new session, and a heartbeat.
    let (status, id, _) = session_call(&mut admin, "enter", &webinar, &viewer);
    assert_eq!(status, "entered");
    std::thread::sleep(Duration::from_millis(5));
    let (status, alive_id, told) = session_call(&mut admin, "heartbeat", &webinar, &viewer);
    assert_eq!((status.as_str(), &alive_id), ("alive", &id));
    leave.commit();

    // The heartbeat the viewer was told is in the row once the buffer is flushed.
    let stored = |admin: &mut Client| -> Option<String> {
        settle(admin);
        admin
            .query_one(
                "SELECT to_jsonb(last_heartbeat_at) #>> '{}' FROM webinar_sessions.webinar_user_sessions
                  WHERE id = $1::text::uuid",
                &[&id],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(stored(&mut admin), told, "the told heartbeat was lost");

    // Once the leave has ended the session's heartbeats are buffered again (the first one
    // after it goes direct and puts the session back into the buffer).
    session_call(&mut admin, "heartbeat", &webinar, &viewer);
    let before: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
    std::thread::sleep(Duration::from_millis(5));
    let (status, _, told) = session_call(&mut admin, "heartbeat", &webinar, &viewer);
    assert_eq!(status, "alive");
    assert_eq!(
        buffer_stat(&mut admin, "buffered_heartbeats"),
        before + 1,
        "the session never went back into the buffer"
    );
    assert_eq!(stored(&mut admin), told);
}

/// Found by adversarial testing of 0.6.3: two leaves of one session at once (a button and
/// the page's `pagehide`) left, when the first committed, a placeholder in the buffer that
/// still held the closed row's last unwritten heartbeat. The viewer came back, and their
/// next leave, while the second was still open, wrote that old time into the new row: a
/// last heartbeat before its entry, refused with 23514.
#[test]
fn a_leave_after_two_overlapping_leaves_and_a_return_closes_the_new_session() {
    let (cluster, mut admin) = buffered(
        "races-double-leave",
        "double_db",
        &[
            "webinar_sessions.flush_interval = '1h'",
            "webinar_sessions.sweeper_enabled = off",
        ],
    );
    let (webinar, viewer) = (uuid(42), uuid(6));
    assert_eq!(
        session_call(&mut admin, "enter", &webinar, &viewer).0,
        "entered"
    );
    assert_eq!(
        session_call(&mut admin, "heartbeat", &webinar, &viewer).0,
        "alive"
    );
    std::thread::sleep(Duration::from_millis(20));
    let before: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
    assert_eq!(
        session_call(&mut admin, "heartbeat", &webinar, &viewer).0,
        "alive"
    );
    assert_eq!(
        buffer_stat(&mut admin, "buffered_heartbeats"),
        before + 1,
        "the heartbeat was answered from the buffer (and is not written yet)"
    );

    let mut first = cluster.connect("double_db");
    first.batch_execute("BEGIN").unwrap();
    assert_eq!(
        session_call(&mut first, "leave", &webinar, &viewer).0,
        "left"
    );
    // The second leave waits for the first one's row lock, then stays open.
    let second = blocked_leave(&cluster, &mut admin, "double_db", &webinar, &viewer);
    first.batch_execute("COMMIT").unwrap();
    let status = second.status();
    assert_eq!(status, "not_found");

    // The viewer comes back and leaves again while the second leave is still open.
    let (status, id, _) = session_call(&mut admin, "enter", &webinar, &viewer);
    assert_eq!(status, "entered");
    let (status, left_id, _) = session_call(&mut admin, "leave", &webinar, &viewer);
    assert_eq!((status.as_str(), &left_id), ("left", &id));
    second.commit();

    // The first session ended at its last heartbeat (the first leave wrote it), the second
    // holds nothing of the first's.
    let rows: Vec<(Option<String>, bool, bool)> = admin
        .query(
            "SELECT id::text, exit_reason = 'left', last_heartbeat_at IS NULL
               FROM webinar_sessions.webinar_user_sessions ORDER BY entered_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.1),
        "both sessions were left: {rows:?}"
    );
    assert_eq!((&rows[1].0, rows[1].2), (&id, true), "{rows:?}");
}

/// Found by adversarial testing of 0.6.3's fixes: a transaction's own buffered heartbeat,
/// taken by its own leave, flush or sweep, counted as written even when that call wrote
/// nothing because another transaction had closed the row first; the commit then went
/// through, answered `alive` for a session closed before that time. And under REPEATABLE
/// READ a leave or flush, blind to a row newer than its snapshot, took that row's heartbeats
/// out of the buffer unwritten.
#[test]
fn own_heartbeats_of_a_row_closed_meanwhile_fail_the_commit_and_old_snapshots_lose_nothing() {
    let (cluster, mut admin) = buffered(
        "races-own-beats",
        "own_db",
        &[
            "webinar_sessions.flush_interval = '1h'",
            "webinar_sessions.sweeper_enabled = off",
        ],
    );
    let webinar = uuid(43);
    let mut other = cluster.connect("own_db");
    for (n, then) in ["leave", "flush_heartbeats", "sweep_stale_sessions"]
        .iter()
        .enumerate()
    {
        let viewer = uuid(70 + n as u64);
        assert_eq!(
            session_call(&mut admin, "enter", &webinar, &viewer).0,
            "entered"
        );
        std::thread::sleep(Duration::from_millis(5));
        let mut client = cluster.connect("own_db");
        client.batch_execute("BEGIN").unwrap();
        let before: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
        assert_eq!(
            session_call(&mut client, "heartbeat", &webinar, &viewer).0,
            "alive"
        );
        assert_eq!(buffer_stat(&mut admin, "buffered_heartbeats"), before + 1);
        // Another transaction closes the row, and commits, before this one goes on.
        assert_eq!(
            session_call(&mut other, "leave", &webinar, &viewer).0,
            "left"
        );
        let call = match *then {
            "leave" => {
                format!("SELECT status FROM webinar_sessions.leave('{webinar}', 'tab', '{viewer}')")
            }
            "flush_heartbeats" => "SELECT webinar_sessions.flush_heartbeats()::text".into(),
            _ => "SELECT webinar_sessions.sweep_stale_sessions('1 hour')::text".into(),
        };
        client.query_one(&call, &[]).unwrap();
        let failed = client.batch_execute("COMMIT").expect_err(&format!(
            "{then}: committed an alive for a row closed before it"
        ));
        assert_eq!(
            failed.as_db_error().map(|e| e.code().code()),
            Some("40001"),
            "{then}: {failed}"
        );
    }

    // REPEATABLE READ: a snapshot older than the session. A leave under it is refused.
    let viewer = uuid(80);
    let stored = |admin: &mut Client, id: &Option<String>| {
        settle(admin);
        stored_heartbeat(admin, &serde_json::Value::from(id.clone().unwrap()))
    };
    let mut old = cluster.connect("own_db");
    let snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ;
                    SELECT count(*) FROM webinar_sessions.webinar_user_sessions";
    old.batch_execute(snapshot).unwrap();
    let (_, id, _) = session_call(&mut admin, "enter", &webinar, &viewer);
    std::thread::sleep(Duration::from_millis(5));
    let (status, _, told) = session_call(&mut admin, "heartbeat", &webinar, &viewer);
    assert_eq!(status, "alive");
    let leave =
        format!("SELECT status FROM webinar_sessions.leave('{webinar}', 'tab', '{viewer}')");
    let refused = old
        .query_one(&leave, &[])
        .expect_err("a leave under REPEATABLE READ of a buffered session");
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("0A000"),
        "{refused}"
    );
    old.batch_execute("ROLLBACK").unwrap();
    assert_eq!(stored(&mut admin, &id), told, "the told heartbeat was lost");

    // A flush under such a snapshot writes nothing of a session opened after it, and leaves
    // its heartbeat in the buffer for the next flush.
    let viewer = uuid(81);
    old.batch_execute(snapshot).unwrap();
    let (_, id, _) = session_call(&mut admin, "enter", &webinar, &viewer);
    std::thread::sleep(Duration::from_millis(5));
    let (status, _, told) = session_call(&mut admin, "heartbeat", &webinar, &viewer);
    assert_eq!(status, "alive");
    let flushed: i64 = old
        .query_one("SELECT webinar_sessions.flush_heartbeats()", &[])
        .unwrap()
        .get(0);
    assert_eq!(flushed, 0, "the row is newer than the snapshot");
    old.batch_execute("COMMIT").unwrap();
    assert_eq!(stored(&mut admin, &id), told, "the told heartbeat was lost");
}
