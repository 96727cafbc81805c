//! The concurrent invariant checker: many clients on few keys, every answer logged with the
//! moments it was asked and answered, and afterwards every promise of the README checked
//! against the table.
//!
//! 16 clients call enter / heartbeat / leave (6 heartbeats : 1 enter : 2 leaves) at random on
//! 20 sessions of one webinar, the way PostgREST calls them; one more client sweeps with a
//! stale_after of a few dozen milliseconds (so sessions are swept under the clients' feet) and
//! flushes the buffer. The invariants:
//!
//! 1. a client told `entered`, `resumed`, `alive` or `reopened` with a time T has a row whose
//!    end (`exited_at`, or `last_heartbeat_at` while active) is not before T;
//! 2. `last_heartbeat_at` never moves backwards: an answer asked after another was received
//!    never reports an older heartbeat for the same row;
//! 3. a `left` session is closed at the time it was told, and a left or swept row is never
//!    answered `alive` or `resumed` again (it comes back only as a new row, `reopened`);
//! 4. across a kill -9 of the postmaster, sessions told `entered` or `reopened` exist, and
//!    what was acknowledged before the crash is at most the documented bound behind.
//!
//! Each runs in both heartbeat modes, without and with a crash in the middle.

use harness::*;
use postgres::{Client, NoTls};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const KEYS: u64 = 20;

/// One answer, with what the test needs to check it (times in microseconds since 1970, as the
/// server computed them).
#[derive(Clone, Debug)]
struct Answer {
    call: &'static str,
    key: u64,
    status: String,
    id: Option<String>,
    /// The time the answer vouches for: the heartbeat time, or the entry for `entered`.
    at: Option<i64>,
    exited_at: Option<i64>,
    asked: Instant,
    answered: Instant,
    /// Answered by the server that crashed (if there was a crash): received before the
    /// restarted server accepted connections. (Not "asked before the kill": a call that
    /// completes between the harness deciding to crash and the kill landing is still the
    /// old server's, and its asynchronous commit may be lost.)
    before_crash: bool,
}

/// A small deterministic random generator (xorshift64*), one per client.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn key_user(key: u64) -> String {
    uuid(5000 + key % 10)
}

fn key_session(key: u64) -> String {
    format!("tab-{}", key / 10)
}

/// One PostgREST-shaped request (`harness::try_rpc`); the session it answered with.
fn call(
    client: &mut Client,
    function: &str,
    webinar: &str,
    key: u64,
) -> Result<SessionStatus, postgres::Error> {
    let reply = try_rpc(
        client,
        "authenticated",
        Some(&claims_for(&key_user(key))),
        &format!("public.{function}"),
        &[("webinar_id", webinar), ("session_id", &key_session(key))],
    )?;
    Ok(SessionStatus::from_json(&reply))
}

struct Run {
    answers: Vec<Answer>,
    /// When the load started, and when the restarted server accepted connections.
    started: Instant,
    restarted_at: Option<Instant>,
    /// Calls that failed with an error the README allows under contention (40001).
    retries: usize,
}

/// Runs the load for `duration`; with `crash_after`, kills the postmaster that far in and
/// goes on after the restart.
fn run_load(
    cluster: &Cluster,
    database: &str,
    webinar: &str,
    duration: Duration,
    crash_after: Option<Duration>,
) -> Run {
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let retries = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let crashed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for c in 0..CLIENTS {
        let url = cluster.url(database, "authenticator");
        let (answers, retries, stop, crashed) = (
            answers.clone(),
            retries.clone(),
            stop.clone(),
            crashed.clone(),
        );
        let webinar = webinar.to_string();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((c as u64 + 1) * 7919));
            let mut client: Option<Client> = None;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(api) = client.as_mut() else {
                    client = Client::connect(&url, NoTls).ok();
                    if client.is_none() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    continue;
                };
                let key = rng.next() % KEYS;
                let function = match rng.next() % 9 {
                    0..=5 => "heartbeat",
                    6 => "enter_webinar",
                    _ => "leave_webinar",
                };
                let asked = Instant::now();
                match call(api, function, &webinar, key) {
                    Ok(reply) => {
                        let at = if reply.status == "entered" {
                            reply.entered_at
                        } else {
                            reply.last_heartbeat_at
                        };
                        mine.push(Answer {
                            call: function,
                            key,
                            status: reply.status,
                            id: reply.id,
                            at,
                            exited_at: reply.exited_at,
                            asked,
                            answered: Instant::now(),
                            before_crash: false, // set below, once the restart is known
                        });
                    }
                    Err(e) => match e.as_db_error().map(|d| d.code().code().to_string()) {
                        Some(code) if code == "40001" || code == "40P01" => {
                            *retries.lock().unwrap() += 1;
                        }
                        // The server went away (the crash): the call's fate is unknown.
                        _ if e.is_closed()
                            || e.as_db_error().is_none()
                            || crashed.load(Ordering::SeqCst) =>
                        {
                            client = None;
                        }
                        _ => panic!("{function} failed: {e}"),
                    },
                }
            }
            answers.lock().unwrap().extend(mine);
        }));
    }
    // The sweeper and flusher: sweeps with a tiny stale_after, so that sessions are swept
    // while their clients heartbeat.
    let url = cluster.url(database, superuser());
    let (stop_sweeper, crashed_sweeper) = (stop.clone(), crashed.clone());
    let sweeper = std::thread::spawn(move || {
        let mut rng = Rng(42);
        let mut client: Option<Client> = None;
        while !stop_sweeper.load(Ordering::Relaxed) {
            let Some(admin) = client.as_mut() else {
                client = Client::connect(&url, NoTls).ok();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let stale_ms = 20 + rng.next() % 200;
            let sql = if rng.next().is_multiple_of(3) {
                "SELECT webinar_sessions.flush_heartbeats()".to_string()
            } else {
                format!("SELECT webinar_sessions.sweep_stale_sessions('{stale_ms} milliseconds')")
            };
            if let Err(e) = admin.execute(&sql, &[]) {
                assert!(
                    e.is_closed()
                        || e.as_db_error().is_none()
                        || crashed_sweeper.load(Ordering::SeqCst),
                    "{sql}: {e}"
                );
                client = None;
            }
            std::thread::sleep(Duration::from_millis(20 + rng.next() % 80));
        }
    });
    let started = Instant::now();
    let mut restarted_at = None;
    if let Some(crash_after) = crash_after {
        std::thread::sleep(crash_after);
        crashed.store(true, Ordering::SeqCst);
        cluster.kill_postmaster_and_restart();
        restarted_at = Some(Instant::now());
    }
    std::thread::sleep(duration.saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a client failed");
    }
    sweeper.join().expect("the sweeper failed");
    let mut answers = std::mem::take(&mut *answers.lock().unwrap());
    if let Some(restarted_at) = restarted_at {
        for answer in &mut answers {
            answer.before_crash = answer.answered < restarted_at;
        }
    }
    let retries = *retries.lock().unwrap();
    Run {
        answers,
        started,
        restarted_at,
        retries,
    }
}

/// A row as it ended: (entered_at, last_heartbeat_at, exited_at, exit_reason).
type Row = (i64, Option<i64>, Option<i64>, Option<String>);

fn table(admin: &mut Client) -> HashMap<String, Row> {
    admin
        .query(
            &format!(
                "SELECT id::text, {}, {}, {}, exit_reason FROM webinar_sessions.webinar_user_sessions",
                micros_sql("entered_at"),
                micros_sql("last_heartbeat_at"),
                micros_sql("exited_at")
            ),
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect()
}

/// Every answer that named row `id`, in the order they were received, with the times the
/// client saw (ms since the load started) and the time each vouched for (us relative to
/// `at`): what a report of a violation needs to be diagnosed.
fn history(run: &Run, id: &str, at: i64) -> String {
    let ms = |t: Instant| t.duration_since(run.started).as_secs_f64() * 1000.0;
    let mut answers: Vec<&Answer> = run
        .answers
        .iter()
        .filter(|a| a.id.as_deref() == Some(id))
        .collect();
    answers.sort_by_key(|a| a.answered);
    let mut lines = vec![format!(
        "  history of {id} (restart at {:?} ms):",
        run.restarted_at.map(ms)
    )];
    for a in answers {
        lines.push(format!(
            "  asked {:9.1} ms, answered {:9.1} ms{}: {} -> {} at {:+} us",
            ms(a.asked),
            ms(a.answered),
            if a.before_crash { " (old server)" } else { "" },
            a.call,
            a.status,
            a.at.map_or(0, |t| t - at)
        ));
    }
    lines.join("\n")
}

/// Every violation of the invariants, as text. `crash_slack_us`: how far behind an answer
/// acknowledged before the crash may be.
fn violations(run: &Run, rows: &HashMap<String, Row>, crash_slack_us: i64) -> Vec<String> {
    let mut found = Vec::new();
    let mut by_id: HashMap<&str, Vec<&Answer>> = HashMap::new();
    for answer in &run.answers {
        let Some(id) = answer.id.as_deref() else {
            continue; // not_found
        };
        by_id.entry(id).or_default().push(answer);
        let Some(&(entered_at, heartbeat, exited_at, ref reason)) = rows.get(id) else {
            found.push(format!("{answer:?}: its row {id} does not exist"));
            continue;
        };
        let end = exited_at.or(heartbeat).unwrap_or(entered_at);
        let slack = if answer.before_crash {
            crash_slack_us
        } else {
            0
        };
        match answer.status.as_str() {
            "entered" | "resumed" | "alive" | "reopened" => {
                let at = answer.at.unwrap_or(entered_at);
                if end < at - slack {
                    found.push(format!(
                        "invariant 1: {} {} (key {}) told {} at {at}, row ends at {end} ({reason:?}), {} us before\n{}",
                        answer.call, id, answer.key, answer.status, at - end,
                        history(run, id, at)
                    ));
                }
            }
            "left" => {
                if exited_at != answer.exited_at || reason.as_deref() != Some("left") {
                    found.push(format!(
                        "invariant 3: {id} told left at {:?}, row exited at {exited_at:?} ({reason:?})",
                        answer.exited_at
                    ));
                }
            }
            other => found.push(format!("unexpected status {other} for {id}")),
        }
    }
    for (id, answers) in &by_id {
        // Invariant 2: order by when they were answered; an answer asked after an earlier one
        // was received must not report an older heartbeat.
        let mut by_answer: Vec<&&Answer> = answers.iter().collect();
        by_answer.sort_by_key(|a| a.answered);
        let mut by_ask: Vec<&&Answer> = answers.iter().collect();
        by_ask.sort_by_key(|a| a.asked);
        let (mut newest, mut closed_by) = (i64::MIN, None::<&Answer>);
        let mut received = by_answer.iter().peekable();
        for later in by_ask {
            while let Some(earlier) = received.next_if(|e| e.answered < later.asked) {
                if earlier.status != "left" {
                    newest = newest.max(earlier.at.unwrap_or(i64::MIN));
                } else {
                    closed_by = Some(earlier);
                }
            }
            let reported = later.at.unwrap_or(i64::MAX);
            if matches!(later.status.as_str(), "alive" | "resumed") && reported < newest {
                found.push(format!(
                    "invariant 2: {id} answered {} with {reported} after {newest} had been reported",
                    later.status
                ));
            }
            // Invariant 3: once told left (or swept, below), the row never comes back alive.
            if let (Some(left), "alive" | "resumed") = (closed_by, later.status.as_str()) {
                found.push(format!(
                    "invariant 3: {id} answered {} after it was told left ({:?})",
                    later.status, left.answered
                ));
            }
        }
        // (A swept row answered alive after its sweep breaks invariant 1: its end is the
        // sweep's exited_at, before the time the client was told.)
    }
    found
}

fn check(mode: &str, crash: bool) {
    let flush_interval_s = 1;
    let cluster = Cluster::start(
        &format!("invariants-{mode}-{crash}"),
        &[
            &format!("webinar_sessions.heartbeat_mode = '{mode}'"),
            &format!("webinar_sessions.flush_interval = {flush_interval_s}"),
            // The test's own sweeper sweeps much more often; the worker flushes.
            "webinar_sessions.sweeper_enabled = off",
            "webinar_sessions.database = 'invariants'",
            "fsync = on",
        ],
    );
    let mut admin = cluster.supabase_database("invariants");
    let webinar = uuid(777);
    let duration = Duration::from_secs(15);
    let run = run_load(
        &cluster,
        "invariants",
        &webinar,
        duration,
        crash.then(|| Duration::from_secs(7)),
    );
    if crash {
        admin = cluster.connect("invariants");
    }
    settle(&mut admin);
    let rows = table(&mut admin);
    // README, Durability: a crash loses at most flush_interval of buffered heartbeats (plus
    // the flush's own time), and direct heartbeats up to three wal_writer_delays (200 ms).
    let crash_slack_us = if mode == "buffered" {
        (flush_interval_s * 1_000_000) + 800_000
    } else {
        800_000
    };
    let found = violations(&run, &rows, crash_slack_us);
    let count = |status: &str| run.answers.iter().filter(|a| a.status == status).count();
    let swept = rows
        .values()
        .filter(|r| r.3.as_deref() == Some("swept"))
        .count();
    println!(
        "invariants ({mode}{}): {} answers (alive {}, entered {}, resumed {}, reopened {}, left {}, not_found {}), {} retried (40001), {} rows, {} swept: {} violations",
        if crash { ", kill -9 at 7 s" } else { "" },
        run.answers.len(),
        count("alive"),
        count("entered"),
        count("resumed"),
        count("reopened"),
        count("left"),
        count("not_found"),
        run.retries,
        rows.len(),
        swept,
        found.len()
    );
    // The load must really have exercised every path.
    for status in ["alive", "entered", "reopened", "left"] {
        assert!(
            count(status) > 0,
            "no {status} answers: the load is too thin"
        );
    }
    assert!(
        swept > 0,
        "the sweeper closed nothing: the load is too thin"
    );
    if mode == "buffered" {
        // The buffer must really have answered: else this would test direct mode twice.
        let buffered: i64 = buffer_stat(&mut admin, "buffered_heartbeats");
        println!("answered from the buffer (since the last start): {buffered}");
        assert!(buffered > 0, "no heartbeat was answered from the buffer");
    }
    assert!(
        found.is_empty(),
        "{} violations, the first ones:\n{}",
        found.len(),
        found
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn invariants_hold_with_buffered_heartbeats() {
    check("buffered", false);
}

#[test]
fn invariants_hold_with_direct_heartbeats() {
    check("direct", false);
}

#[test]
fn invariants_hold_across_a_crash_with_buffered_heartbeats() {
    check("buffered", true);
}

#[test]
fn invariants_hold_across_a_crash_with_direct_heartbeats() {
    check("direct", true);
}
