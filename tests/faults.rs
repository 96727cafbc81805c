//! Faults around the server, on real clusters with the sweeper preloaded: a stop in the middle
//! of a heartbeat load (`pg_ctl stop -m fast` and `-m immediate`), a downtime longer than
//! `stale_after`, and a streaming hot standby (then promoted).
//!
//! What these stops test, and what they cannot. The harness runs its clusters with
//! `fsync = off`, and that does not weaken anything here: these tests stop the server, not the
//! operating system. Whatever PostgreSQL has write()n to its WAL files sits in the OS page
//! cache and survives `pg_ctl stop -m immediate` (SIGQUIT: every process exits at once, no
//! checkpoint, no final WAL flush), fsync'ed or not. fsync only matters when the OS itself
//! crashes or the power fails, which a test cannot cause here, and that part is PostgreSQL's
//! guarantee, not this extension's. What an immediate stop does lose is the WAL still in
//! PostgreSQL's own shared WAL buffers: the commit records of transactions that committed with
//! `synchronous_commit = off` and that the WAL writer (or a later synchronous commit) had not
//! written out yet. That is the window the README's Durability section documents for
//! heartbeats, and what the immediate stop measures. A synchronous commit (enter, leave, a
//! sweep) writes its WAL before the client hears of it, so none of those may be lost under
//! either stop. A fast stop (SIGINT) ends the sessions, then writes a shutdown checkpoint,
//! which flushes every WAL record: nothing acknowledged may be lost at all.

use harness::*;
use postgres::{Client, NoTls};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The clusters' `wal_writer_delay` (PostgreSQL's default, set explicitly).
const WAL_WRITER_DELAY_MS: u64 = 200;

/// The heartbeat path these tests hold to the README's Durability section: every heartbeat
/// updates its row. Set explicitly, because with the library preloaded the buffered mode
/// (heartbeats kept in shared memory, written every `flush_interval`) becomes the default.
const DIRECT_HEARTBEATS: &str = "webinar_sessions.heartbeat_mode = 'direct'";

/// How far back from a crash acknowledged direct heartbeats may be lost. README, Durability:
/// heartbeats commit with `synchronous_commit = off`, and "a server crash can lose the last
/// fraction of a second (up to three `wal_writer_delay`s) of heartbeats". A stop test of the
/// buffered mode passes its own bound to `stop_under_load` (`flush_interval`, plus the WAL
/// writer's delay for the flush's own asynchronous commit if it has one); its check at the
/// end, with the server up, must come after a flush.
///
/// The check is conservative: a heartbeat may be missing only if it was acknowledged less
/// than the bound before the `pg_ctl stop` command was issued (the stop itself lands a few
/// milliseconds later; the figures printed also give the age against the clients' first
/// error). A session is never lost: a heartbeat that opens one (`reopened`) commits durably,
/// like `enter`.
const HEARTBEAT_LOSS_BOUND: Duration = Duration::from_millis(3 * WAL_WRITER_DELAY_MS);

/// Short settings so that the grace after a start and a sweep fit in a test.
const STALE_AFTER: Duration = Duration::from_secs(3);
const SWEEP_INTERVAL_S: u64 = 1;

/// Longer than `STALE_AFTER`: were it not for the grace after a start, the worker's first
/// sweep would close every session that was active at the stop.
const DOWNTIME: Duration = Duration::from_secs(4);

// The load: client threads, each with its own connection (a PostgREST pool connection) and
// viewers, calling the API one request at a time.
const THREADS: usize = 8;
const VIEWERS_PER_THREAD: usize = 8;
const WEBINARS: usize = 4;
const STOPS_PER_MODE: usize = 2;
const LOAD_BEFORE_STOP: Duration = Duration::from_millis(1500);

fn settings(database: &str, extra: &[&str]) -> Vec<String> {
    let mut settings = vec![
        format!("webinar_sessions.database = '{database}'"),
        format!(
            "webinar_sessions.stale_after = '{}s'",
            STALE_AFTER.as_secs()
        ),
        format!("webinar_sessions.sweep_interval = '{SWEEP_INTERVAL_S}s'"),
        format!("wal_writer_delay = '{WAL_WRITER_DELAY_MS}ms'"),
        "timezone = 'UTC'".into(),
    ];
    settings.extend(extra.iter().map(|s| s.to_string()));
    settings
}

fn start_cluster(name: &str, database: &str, extra: &[&str]) -> Cluster {
    let settings = settings(database, extra);
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    Cluster::start(name, &settings)
}

/// Successful worker sweeps since this server started.
fn worker_runs_since_start(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM webinar_sessions.sweep_runs
              WHERE source = 'worker' AND error IS NULL
                AND started_at >= pg_postmaster_start_time()",
            &[],
        )
        .unwrap()
        .get(0)
}

fn failed_worker_runs(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM webinar_sessions.sweep_runs WHERE error IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0)
}

fn swept_sessions(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exit_reason = 'swept'",
            &[],
        )
        .unwrap()
        .get(0)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Enter,
    Heartbeat,
    Leave,
}

impl Op {
    fn function(self) -> &'static str {
        match self {
            Op::Enter => "public.enter_webinar",
            Op::Heartbeat => "public.heartbeat",
            Op::Leave => "public.leave_webinar",
        }
    }

    fn expected(self) -> [&'static str; 2] {
        match self {
            Op::Enter => ["entered", "resumed"],
            Op::Heartbeat => ["alive", "reopened"],
            Op::Leave => ["left", "not_found"],
        }
    }
}

/// One request of the load. `acked` holds when the client heard the commit, and the row.
struct Call {
    viewer: usize,
    op: Op,
    session_id: String,
    /// How many stops came before the call: the stop that may cut it off is `stops[epoch]`.
    epoch: usize,
    acked: Option<(Instant, SessionStatus)>,
    /// When the answer or the error came.
    answered_at: Instant,
}

fn viewer_user(viewer: usize) -> String {
    uuid(1000 + viewer as u64)
}

fn viewer_webinar(viewer: usize) -> String {
    uuid(1 + (viewer % WEBINARS) as u64)
}

const RUN: u8 = 0;
const HOLD: u8 = 1;
const QUIT: u8 = 2;

struct Load {
    /// RUN: call away; HOLD: stay off the server (while it is checked after a restart); QUIT.
    phase: AtomicU8,
    /// Threads that saw HOLD and are waiting.
    held: AtomicUsize,
    epoch: AtomicUsize,
    calls: Vec<Mutex<Vec<Call>>>,
    /// Errors that are not the server going away, and statuses the API must not return.
    unexpected: Mutex<Vec<String>>,
}

/// One client thread: its viewers enter, heartbeat, now and then leave and come back in a new
/// tab (odd tabs open with a heartbeat, which answers `reopened`). A call that fails is retried
/// until it is acknowledged, as a client would: a leave that may have committed is sent again
/// (it answers `not_found` then), so that no session is abandoned by the load itself.
fn client_thread(thread: usize, url: String, load: Arc<Load>) {
    struct Viewer {
        index: usize,
        claims: String,
        webinar: String,
        tab: u32,
        open: bool,
        pending: Option<Op>,
    }
    let mut viewers: Vec<Viewer> = (0..VIEWERS_PER_THREAD)
        .map(|i| {
            let index = thread * VIEWERS_PER_THREAD + i;
            Viewer {
                index,
                claims: claims_for(&viewer_user(index)),
                webinar: viewer_webinar(index),
                tab: 0,
                open: false,
                pending: None,
            }
        })
        .collect();
    let mut random = 0x9E37_79B9_7F4A_7C15u64 ^ (thread as u64 + 1);
    let mut client: Option<Client> = None;
    let mut held = false;
    let mut next = 0;
    loop {
        match load.phase.load(Ordering::SeqCst) {
            QUIT => break,
            HOLD => {
                if !held {
                    held = true;
                    client = None;
                    load.held.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            _ if held => {
                held = false;
                load.held.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
        let Some(connection) = client.as_mut() else {
            match Client::connect(&url, NoTls) {
                Ok(connected) => client = Some(connected),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
            continue;
        };
        let viewer = &mut viewers[next];
        next = (next + 1) % VIEWERS_PER_THREAD;
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let op = viewer.pending.unwrap_or(if !viewer.open {
            if viewer.tab.is_multiple_of(2) {
                Op::Enter
            } else {
                Op::Heartbeat
            }
        } else if random.is_multiple_of(30) {
            Op::Leave
        } else {
            Op::Heartbeat
        });
        let session_id = format!("tab-{}", viewer.tab);
        let epoch = load.epoch.load(Ordering::SeqCst);
        let outcome = try_rpc(
            connection,
            "authenticated",
            Some(&viewer.claims),
            op.function(),
            &[("webinar_id", &viewer.webinar), ("session_id", &session_id)],
        );
        let acked = match outcome {
            Ok(json) => {
                let at = Instant::now();
                let reply = SessionStatus::from_json(&json);
                if !op.expected().contains(&reply.status.as_str()) {
                    load.unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{op:?} answered {json}"));
                }
                viewer.pending = None;
                if op == Op::Leave {
                    viewer.tab += 1;
                    viewer.open = false;
                } else {
                    viewer.open = true;
                }
                Some((at, reply))
            }
            Err(error) => {
                // The server going away: the connection is gone, or it said it is shutting
                // down (57P01..57P03). Anything else is a bug.
                let shutting_down = error
                    .code()
                    .is_some_and(|code| code.code().starts_with("57P"));
                // A buffered heartbeat overtaken by a sweep fails with 40001: retried.
                let retry = error.code().is_some_and(|code| code.code() == "40001");
                if !connection.is_closed() && !shutting_down && !retry {
                    load.unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{op:?}: {error}"));
                }
                if connection.is_closed() {
                    client = None;
                }
                viewer.pending = Some(op);
                None
            }
        };
        load.calls[thread].lock().unwrap().push(Call {
            viewer: viewer.index,
            op,
            session_id,
            epoch,
            acked,
            answered_at: Instant::now(),
        });
    }
}

/// A session row as the server has it.
struct Row {
    webinar_id: String,
    user_id: String,
    session_id: String,
    entered_at: i64,
    last_heartbeat_at: Option<i64>,
    exited_at: Option<i64>,
    exit_reason: Option<String>,
}

fn session_rows(client: &mut Client) -> HashMap<String, Row> {
    client
        .query(
            "SELECT id::text, webinar_id::text, user_id::text, session_id,
                    (extract(epoch FROM entered_at) * 1000000)::bigint,
                    (extract(epoch FROM last_heartbeat_at) * 1000000)::bigint,
                    (extract(epoch FROM exited_at) * 1000000)::bigint,
                    exit_reason
               FROM webinar_sessions.webinar_user_sessions",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                Row {
                    webinar_id: r.get(1),
                    user_id: r.get(2),
                    session_id: r.get(3),
                    entered_at: r.get(4),
                    last_heartbeat_at: r.get(5),
                    exited_at: r.get(6),
                    exit_reason: r.get(7),
                },
            )
        })
        .collect()
}

#[derive(Default)]
struct Tally {
    rows_checked: usize,
    /// Acknowledged heartbeats the server no longer has, within the bound.
    heartbeats_lost: usize,
    /// Of those, sessions a heartbeat had opened (`reopened`) that are gone altogether.
    sessions_lost: usize,
    /// How long before the stop command the oldest lost heartbeat was acknowledged.
    oldest_loss: Duration,
    /// How long before the clients first saw the server go away (their first error after
    /// the stop command) the oldest lost heartbeat was acknowledged.
    oldest_loss_before_seen_down: Duration,
    /// Rows written by calls whose client never heard back (opened, or closed by a leave).
    unacknowledged_committed: usize,
    /// Acknowledged calls the server does not have, beyond what the bound allows.
    losses_beyond_bound: usize,
    /// Those, and anything else that is not as the clients were told.
    failures: Vec<String>,
}

/// Checks every acknowledged call against the rows. A heartbeat acknowledged within
/// `loss_bound` before the stop that ended its epoch may be missing (when `loss_bound` is
/// Some); anything else acknowledged must be there exactly.
fn check_acknowledged(
    rows: &HashMap<String, Row>,
    calls: &[&Call],
    stops: &[Instant],
    loss_bound: Option<Duration>,
) -> Tally {
    let mut tally = Tally::default();
    let may_lose = |call: &Call| -> bool {
        let (Some(bound), Some((at, _))) = (loss_bound, &call.acked) else {
            return false;
        };
        call.op == Op::Heartbeat
            && stops
                .get(call.epoch)
                .is_some_and(|stop| *at + bound > *stop)
    };
    // Losses are counted for the calls cut off by the latest stop (earlier ones were counted
    // after their own stop); they are allowed for every stop.
    let latest = stops.len().checked_sub(1);
    let counted = |call: &Call| Some(call.epoch) == latest;
    let seen_down: Vec<Option<Instant>> = (0..stops.len())
        .map(|epoch| {
            calls
                .iter()
                .filter(|c| c.epoch == epoch && c.acked.is_none())
                .map(|c| c.answered_at)
                .filter(|at| *at >= stops[epoch])
                .min()
        })
        .collect();
    let note_loss = |tally: &mut Tally, call: &Call| {
        let at = call.acked.as_ref().unwrap().0;
        let stop = stops[call.epoch];
        tally.oldest_loss = tally.oldest_loss.max(stop.saturating_duration_since(at));
        if let Some(down) = seen_down[call.epoch] {
            tally.oldest_loss_before_seen_down = tally
                .oldest_loss_before_seen_down
                .max(down.saturating_duration_since(at));
        }
    };
    let mut by_id: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for call in calls {
        if let Some((_, SessionStatus { id: Some(id), .. })) = &call.acked {
            by_id.entry(id.as_str()).or_default().push(call);
        }
    }
    let unacknowledged = |viewer: usize, session_id: &str, leave: bool| {
        calls.iter().any(|c| {
            c.acked.is_none()
                && c.viewer == viewer
                && c.session_id == session_id
                && (c.op == Op::Leave) == leave
        })
    };
    for (id, acks) in &by_id {
        tally.rows_checked += 1;
        let first = acks[0];
        let reply = |c: &Call| c.acked.as_ref().unwrap().1.clone();
        let Some(row) = rows.get(*id) else {
            // A session whose opening was acknowledged is never lost: enter commits durably,
            // and so does a heartbeat that opens one. Only heartbeats may be lost.
            {
                tally.sessions_lost += 1;
                tally.losses_beyond_bound += 1;
                tally.failures.push(format!(
                    "session {id} ({:?} of viewer {}, first answer {:?}) is gone",
                    first.session_id,
                    first.viewer,
                    reply(first)
                ));
            }
            continue;
        };
        let identity = (
            viewer_webinar(first.viewer),
            viewer_user(first.viewer),
            first.session_id.clone(),
        );
        if (&row.webinar_id, &row.user_id, &row.session_id)
            != (&identity.0, &identity.1, &identity.2)
        {
            tally
                .failures
                .push(format!("session {id} belongs to someone else"));
        }
        for c in acks {
            if reply(c).entered_at != Some(row.entered_at) || c.viewer != first.viewer {
                tally
                    .failures
                    .push(format!("session {id}: entered_at moved ({:?})", reply(c)));
            }
        }
        match acks.iter().find(|c| reply(c).status == "left") {
            Some(leave) => {
                let left = reply(leave);
                if (
                    row.exited_at,
                    row.exit_reason.as_deref(),
                    row.last_heartbeat_at,
                ) != (left.exited_at, Some("left"), left.last_heartbeat_at)
                {
                    tally.failures.push(format!(
                        "session {id}: acknowledged leave {left:?}, row has exited_at {:?} ({:?}), last heartbeat {:?}",
                        row.exited_at, row.exit_reason, row.last_heartbeat_at
                    ));
                }
            }
            None if row.exited_at.is_some() => {
                if row.exit_reason.as_deref() == Some("left")
                    && unacknowledged(first.viewer, &first.session_id, true)
                {
                    tally.unacknowledged_committed += 1;
                } else {
                    tally.failures.push(format!(
                        "session {id} closed ({:?}) with no leave from its viewer; last acknowledged heartbeat {:?}",
                        row.exit_reason,
                        acks.iter().map(|c| reply(c).last_heartbeat_at).max()
                    ));
                }
            }
            None => {}
        }
        // The recorded last heartbeat is the last acknowledged one, or later (a call that
        // committed without the client hearing of it), except for heartbeats within the bound.
        for c in acks {
            let acked = reply(c).last_heartbeat_at;
            if acked > row.last_heartbeat_at {
                if may_lose(c) {
                    if counted(c) {
                        tally.heartbeats_lost += 1;
                        note_loss(&mut tally, c);
                    }
                } else {
                    tally.losses_beyond_bound += 1;
                    tally.failures.push(format!(
                        "session {id}: acknowledged {:?} at last_heartbeat_at {acked:?} ({}), the row has {:?}",
                        c.op,
                        stops.get(c.epoch).map_or("no stop since".into(), |stop| format!(
                            "{:?} before the stop",
                            stop.saturating_duration_since(c.acked.as_ref().unwrap().0)
                        )),
                        row.last_heartbeat_at
                    ));
                }
            }
        }
    }
    // Rows no acknowledged call returned: a call that committed but whose answer was lost.
    let acked_ids: HashSet<&str> = by_id.keys().copied().collect();
    let viewer_of: HashMap<String, usize> = (0..THREADS * VIEWERS_PER_THREAD)
        .map(|v| (viewer_user(v), v))
        .collect();
    for (id, row) in rows {
        if acked_ids.contains(id.as_str()) {
            continue;
        }
        let explained = viewer_of
            .get(&row.user_id)
            .is_some_and(|v| unacknowledged(*v, &row.session_id, false));
        if explained {
            tally.unacknowledged_committed += 1;
        } else {
            tally
                .failures
                .push(format!("session {id} was written by no call"));
        }
    }
    tally
}

fn all_calls(load: &Load) -> Vec<std::sync::MutexGuard<'_, Vec<Call>>> {
    load.calls.iter().map(|c| c.lock().unwrap()).collect()
}

/// Heartbeat load, `pg_ctl stop -m <mode>` in the middle of it, a downtime longer than
/// stale_after, a restart, then every acknowledged call checked against what the server has.
/// `settings` choose the heartbeat path; acknowledged heartbeats may be missing only when
/// they were acknowledged less than `loss_bound` before a stop (None: nothing may be missing).
fn stop_under_load(name: &str, mode: &str, settings: &[&str], loss_bound: Option<Duration>) {
    let started = Instant::now();
    let cluster = start_cluster(&format!("faults-{name}"), "faults", settings);
    let mut admin = cluster.supabase_database("faults");
    let url = format!(
        "{} connect_timeout=5",
        cluster.url("faults", "authenticator")
    );
    let load = Arc::new(Load {
        phase: AtomicU8::new(RUN),
        held: AtomicUsize::new(0),
        epoch: AtomicUsize::new(0),
        calls: (0..THREADS).map(|_| Mutex::new(Vec::new())).collect(),
        unexpected: Mutex::new(Vec::new()),
    });
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, load) = (url.clone(), load.clone());
            std::thread::spawn(move || client_thread(t, url, load))
        })
        .collect();

    // Under load until the worker sweeps (the server has been up for stale_after).
    assert!(
        eventually(Duration::from_secs(15), || worker_runs_since_start(
            &mut admin
        ) >= 1),
        "the worker never swept before the first stop"
    );
    let mut stops: Vec<Instant> = Vec::new();
    let mut total = Tally::default();
    for _ in 0..STOPS_PER_MODE {
        std::thread::sleep(LOAD_BEFORE_STOP);
        let acked_before: usize = all_calls(&load)
            .iter()
            .map(|c| c.iter().filter(|c| c.acked.is_some()).count())
            .sum();
        assert!(acked_before > 0, "no call was acknowledged before the stop");

        let stop = Instant::now();
        cluster.stop(mode);
        stops.push(stop);
        // The clients see their errors and retry; stop them before the server returns, so
        // that what it has right after the restart can be read undisturbed.
        load.phase.store(HOLD, Ordering::SeqCst);
        assert!(eventually(Duration::from_secs(30), || load
            .held
            .load(Ordering::SeqCst)
            == THREADS));
        load.epoch.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(DOWNTIME.saturating_sub(stop.elapsed()));
        cluster.start_again();

        admin = cluster.connect("faults");
        let in_grace: bool = admin
            .query_one(
                "SELECT now() - pg_postmaster_start_time() < $1::text::interval",
                &[&format!("{}s", STALE_AFTER.as_secs())],
            )
            .unwrap()
            .get(0);
        let rows = session_rows(&mut admin);
        assert!(
            in_grace,
            "the check after the restart came too late to see the rows before any sweep"
        );
        assert_eq!(
            worker_runs_since_start(&mut admin),
            0,
            "the worker swept within stale_after of the start"
        );
        let tally = {
            let guards = all_calls(&load);
            let calls: Vec<&Call> = guards.iter().flat_map(|c| c.iter()).collect();
            check_acknowledged(&rows, &calls, &stops, loss_bound)
        };
        println!(
            "stop -m {mode} #{}: {} rows checked; {} acknowledged heartbeats lost ({} of them opening a session), acknowledged at most {:?} before the stop command and {:?} before the clients' first error; {} beyond the bound; {} rows written by calls never acknowledged",
            stops.len(),
            tally.rows_checked,
            tally.heartbeats_lost,
            tally.sessions_lost,
            tally.oldest_loss,
            tally.oldest_loss_before_seen_down,
            tally.losses_beyond_bound,
            tally.unacknowledged_committed
        );
        assert!(
            tally.failures.is_empty(),
            "after stop -m {mode} #{}: {} acknowledged calls not kept:\n{}",
            stops.len(),
            tally.failures.len(),
            tally.failures[..tally.failures.len().min(20)].join("\n")
        );
        total.rows_checked += tally.rows_checked;
        total.heartbeats_lost += tally.heartbeats_lost;
        total.sessions_lost += tally.sessions_lost;
        total.oldest_loss = total.oldest_loss.max(tally.oldest_loss);
        total.oldest_loss_before_seen_down = total
            .oldest_loss_before_seen_down
            .max(tally.oldest_loss_before_seen_down);

        // The viewers come back within the grace; the worker starts again and sweeps, and
        // sweeps none of them.
        load.phase.store(RUN, Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(10), || worker_pid(&mut admin).is_some()),
            "the worker did not come back after stop -m {mode}"
        );
        assert!(
            eventually(STALE_AFTER + Duration::from_secs(10), || {
                worker_runs_since_start(&mut admin) >= 2
            }),
            "the worker did not sweep again after stop -m {mode}"
        );
        assert_eq!(
            swept_sessions(&mut admin),
            0,
            "sessions were swept though their viewers came back within the grace"
        );
    }
    std::thread::sleep(LOAD_BEFORE_STOP);
    load.phase.store(QUIT, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }

    // Everything acknowledged since the last restart, too, with no loss allowed (no stop),
    // once the buffered heartbeats are written.
    settle(&mut admin);
    let rows = session_rows(&mut admin);
    let guards = all_calls(&load);
    let calls: Vec<&Call> = guards.iter().flat_map(|c| c.iter()).collect();
    let last = check_acknowledged(&rows, &calls, &stops, loss_bound);
    assert!(
        last.failures.is_empty(),
        "at the end: {}",
        last.failures[..last.failures.len().min(20)].join("\n")
    );
    let unexpected = load.unexpected.lock().unwrap();
    assert!(
        unexpected.is_empty(),
        "errors other than the server going away:\n{}",
        unexpected[..unexpected.len().min(20)].join("\n")
    );
    assert_eq!(swept_sessions(&mut admin), 0);
    assert_eq!(failed_worker_runs(&mut admin), 0);

    let acked = |op: Op| {
        calls
            .iter()
            .filter(|c| c.op == op && c.acked.is_some())
            .count()
    };
    println!(
        "stop -m {mode}: {} calls acknowledged (enter {}, heartbeat {}, leave {}), {} not; {} stops injected; {} row checks after the stops, {} at the end; losses: {} acknowledged heartbeats ({} opening a session; bound {:?}; the oldest acknowledged {:?} before its stop command, {:?} before the clients' first error), 0 beyond the bound; {:?}",
        acked(Op::Enter) + acked(Op::Heartbeat) + acked(Op::Leave),
        acked(Op::Enter),
        acked(Op::Heartbeat),
        acked(Op::Leave),
        calls.iter().filter(|c| c.acked.is_none()).count(),
        stops.len(),
        total.rows_checked,
        last.rows_checked,
        total.heartbeats_lost,
        total.sessions_lost,
        loss_bound.unwrap_or_default(),
        total.oldest_loss,
        total.oldest_loss_before_seen_down,
        started.elapsed()
    );
}

#[test]
fn a_fast_stop_under_load_keeps_every_acknowledged_call() {
    stop_under_load("fast", "fast", &[DIRECT_HEARTBEATS], None);
}

#[test]
fn an_immediate_stop_under_load_loses_at_most_the_documented_heartbeats() {
    stop_under_load(
        "immediate",
        "immediate",
        &[DIRECT_HEARTBEATS],
        Some(HEARTBEAT_LOSS_BOUND),
    );
}

/// Buffered heartbeats, written by the worker every second.
const BUFFERED_HEARTBEATS: [&str; 2] = [
    "webinar_sessions.heartbeat_mode = 'buffered'",
    "webinar_sessions.flush_interval = '1s'",
];
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// A clean stop loses no buffered heartbeat: the worker writes the buffer on its way out.
#[test]
fn a_fast_stop_of_buffered_heartbeats_keeps_every_acknowledged_call() {
    stop_under_load("fast-buffered", "fast", &BUFFERED_HEARTBEATS, None);
}

/// A crash loses at most the heartbeats buffered since the last flush (one flush interval,
/// plus the flush's own run), and the asynchronous commits of direct heartbeats.
#[test]
fn an_immediate_stop_of_buffered_heartbeats_loses_at_most_one_flush_interval() {
    stop_under_load(
        "immediate-buffered",
        "immediate",
        &BUFFERED_HEARTBEATS,
        Some(FLUSH_INTERVAL + HEARTBEAT_LOSS_BOUND),
    );
}

/// A client of the downtime test: one PostgREST request that must succeed.
fn call(api: &mut Client, user: &str, op: Op, webinar: &str, session: &str) -> SessionStatus {
    let json = rpc(
        api,
        "authenticated",
        Some(&claims_for(user)),
        op.function(),
        &[("webinar_id", webinar), ("session_id", session)],
    )
    .unwrap_or_else(|e| panic!("{op:?} for {user}: {e}"));
    SessionStatus::from_json(&json)
}

/// The row of `id`: (exited_at, exit_reason, last_heartbeat_at, entered_at, whether it was
/// closed before this server started, whether it was closed at least stale_after after).
type Closed = (
    Option<i64>,
    Option<String>,
    Option<i64>,
    i64,
    Option<bool>,
    Option<bool>,
);

fn closed(client: &mut Client, id: &str) -> Closed {
    let r = client
        .query_one(
            "SELECT (extract(epoch FROM exited_at) * 1000000)::bigint, exit_reason,
                    (extract(epoch FROM last_heartbeat_at) * 1000000)::bigint,
                    (extract(epoch FROM entered_at) * 1000000)::bigint,
                    exited_at < pg_postmaster_start_time(),
                    updated_at >= pg_postmaster_start_time() + $2::text::interval
               FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
            &[&id, &format!("{}s", STALE_AFTER.as_secs())],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

#[test]
fn after_a_downtime_longer_than_stale_after_only_viewers_who_stay_away_are_swept() {
    let cluster = start_cluster("faults-downtime", "grace", &[DIRECT_HEARTBEATS]);
    let mut admin = cluster.supabase_database("grace");
    let mut api = cluster.connect_as("grace", "authenticator");
    let webinar = uuid(700);
    let returning: Vec<String> = (1..=3).map(uuid).collect();
    let gone: Vec<String> = (4..=6).map(uuid).collect();
    let late = uuid(7);
    let silent = uuid(8); // entered, never heartbeated
    let beating: Vec<&String> = returning.iter().chain(&gone).chain([&late]).collect();

    let mut sessions: HashMap<&str, SessionStatus> = HashMap::new();
    for user in &beating {
        sessions.insert(user, call(&mut api, user, Op::Enter, &webinar, "tab"));
    }
    // Everyone beats until the worker is sweeping (the server has been up for stale_after).
    assert!(eventually(Duration::from_secs(15), || {
        for user in &beating {
            let reply = call(&mut api, user, Op::Heartbeat, &webinar, "tab");
            assert_eq!(reply.status, "alive");
            sessions.insert(user, reply);
        }
        worker_runs_since_start(&mut admin) >= 1
    }));
    sessions.insert(&silent, call(&mut api, &silent, Op::Enter, &webinar, "tab"));
    assert_eq!(swept_sessions(&mut admin), 0);

    drop((admin, api));
    cluster.stop("fast");
    std::thread::sleep(DOWNTIME);
    cluster.start_again();
    let mut admin = cluster.connect("grace");
    let mut api = cluster.connect_as("grace", "authenticator");

    // Right after the restart: every session's last sign of life is older than stale_after,
    // and none is swept.
    let (active, swept, silent_enough, in_grace): (i64, i64, bool, bool) = {
        let r = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE exited_at IS NULL),
                        count(*) FILTER (WHERE exit_reason = 'swept'),
                        bool_and(coalesce(last_heartbeat_at, entered_at) < now() - $1::text::interval),
                        now() - pg_postmaster_start_time() < $1::text::interval
                   FROM webinar_sessions.webinar_user_sessions",
                &[&format!("{}s", STALE_AFTER.as_secs())],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert!(in_grace, "checked too late after the restart");
    assert!(
        silent_enough,
        "the downtime was not longer than stale_after"
    );
    assert_eq!((active, swept), (8, 0), "swept right after the restart");
    assert_eq!(worker_runs_since_start(&mut admin), 0);

    // The returning viewers come back within the grace and keep beating: always the same
    // session. The others stay away until the worker has swept them.
    let mut beats_after_restart = 0;
    let swept_all = eventually(STALE_AFTER + Duration::from_secs(10), || {
        for user in &returning {
            let reply = call(&mut api, user, Op::Heartbeat, &webinar, "tab");
            assert_eq!(
                (reply.status.as_str(), &reply.id),
                ("alive", &sessions[user.as_str()].id),
                "a returning viewer lost their session"
            );
            beats_after_restart += 1;
        }
        let away: i64 = admin
            .query_one(
                "SELECT count(*) FROM webinar_sessions.webinar_user_sessions
                  WHERE exit_reason = 'swept'",
                &[],
            )
            .unwrap()
            .get(0);
        away == 5
    });
    assert!(swept_all, "the viewers who stayed away were not swept");
    // Two more sweeps while the returning viewers beat: still never swept.
    let runs = worker_runs_since_start(&mut admin);
    assert!(eventually(Duration::from_secs(10), || {
        for user in &returning {
            let reply = call(&mut api, user, Op::Heartbeat, &webinar, "tab");
            assert_eq!(reply.status, "alive");
        }
        worker_runs_since_start(&mut admin) >= runs + 2
    }));

    // No worker sweep before the server had been up for stale_after.
    let all_after_grace: bool = admin
        .query_one(
            "SELECT bool_and(started_at >= pg_postmaster_start_time() + $1::text::interval)
               FROM webinar_sessions.sweep_runs
              WHERE source = 'worker' AND started_at >= pg_postmaster_start_time()",
            &[&format!("{}s", STALE_AFTER.as_secs())],
        )
        .unwrap()
        .get(0);
    assert!(all_after_grace, "the worker swept within the grace");
    // Those who stayed away are closed when they were last seen, before the stop, not when
    // the sweep ran.
    for user in gone.iter().chain([&late, &silent]) {
        let before = &sessions[user.as_str()];
        let row = closed(&mut admin, before.id.as_deref().unwrap());
        let last_seen = before.last_heartbeat_at.or(before.entered_at);
        assert_eq!(
            row,
            (
                last_seen,
                Some("swept".into()),
                before.last_heartbeat_at,
                before.entered_at.unwrap(),
                Some(true),
                Some(true)
            ),
            "viewer {user}: (exited_at, reason, last heartbeat, entered, closed at a time before the start, swept after the grace)"
        );
    }
    for user in &returning {
        let row = closed(&mut admin, sessions[user.as_str()].id.as_deref().unwrap());
        assert_eq!((row.0, row.1), (None, None), "returning viewer {user}");
    }
    // One who comes back after being swept gets a new session; the old one stays as it was.
    let back = call(&mut api, &late, Op::Heartbeat, &webinar, "tab");
    assert_eq!(back.status, "reopened");
    assert_ne!(back.id, sessions[late.as_str()].id);
    assert_eq!(failed_worker_runs(&mut admin), 0);
    println!(
        "downtime {DOWNTIME:?} > stale_after {STALE_AFTER:?}: 3 returning viewers kept their sessions through {beats_after_restart} heartbeats in and after the grace, 5 absent viewers swept at their last sign of life, after the grace"
    );
}

/// Waits until the standby has replayed everything the primary has written so far.
fn wait_for_replay(primary: &mut Client, standby: &mut Client) {
    let target: String = primary
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    assert!(
        eventually(Duration::from_secs(20), || standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&target]
            )
            .unwrap()
            .get(0)),
        "the standby did not replay up to {target}"
    );
}

fn sweep_runs_ids(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT id::text FROM webinar_sessions.sweep_runs ORDER BY id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

/// The analytics a dashboard reads, as service_role, each as one text.
fn analytics(client: &mut Client, webinar: &str, starts: &str, ends: &str) -> Vec<String> {
    let queries = [
        "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM webinar_sessions.session_spans x WHERE webinar_id = $1::text::uuid AND $2::text IS NOT NULL AND $3::text IS NOT NULL",
        "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM webinar_sessions.presence x WHERE webinar_id = $1::text::uuid AND $2::text IS NOT NULL AND $3::text IS NOT NULL",
        "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM webinar_sessions.watch_time x WHERE webinar_id = $1::text::uuid AND $2::text IS NOT NULL AND $3::text IS NOT NULL",
        "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM webinar_sessions.webinar_stats x WHERE webinar_id = $1::text::uuid AND $2::text IS NOT NULL AND $3::text IS NOT NULL",
        "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM webinar_sessions.concurrency($1::text::uuid, '1 second') x WHERE $2::text IS NOT NULL AND $3::text IS NOT NULL",
        "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM webinar_sessions.attendance($1::text::uuid, $2::text::timestamptz, $3::text::timestamptz) x",
        "SELECT string_agg(x::text, ';' ORDER BY x::text) FROM webinar_sessions.retention($1::text::uuid, $2::text::timestamptz, $3::text::timestamptz, '1 second') x",
    ];
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE service_role").unwrap();
    let results = queries
        .iter()
        .map(|sql| {
            tx.query_one(*sql, &[&webinar, &starts, &ends])
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<_, Option<String>>(0)
                .unwrap_or_else(|| panic!("{sql}: no rows"))
        })
        .collect();
    tx.commit().unwrap();
    results
}

#[test]
fn a_hot_standby_reads_refuses_writes_and_runs_no_sweeper_until_promoted() {
    let primary = start_cluster("faults-primary", "replica", &[DIRECT_HEARTBEATS]);
    let mut admin = primary.supabase_database("replica");
    let mut api = primary.connect_as("replica", "authenticator");
    let webinar = uuid(9);
    let viewers: Vec<String> = (1..=4).map(uuid).collect();
    for (i, user) in viewers.iter().enumerate() {
        call(&mut api, user, Op::Enter, &webinar, "tab");
        std::thread::sleep(Duration::from_millis(50 * i as u64));
        call(&mut api, user, Op::Heartbeat, &webinar, "tab");
    }
    call(&mut api, &viewers[0], Op::Leave, &webinar, "tab");
    admin.batch_execute(STALE_ROW).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || stale_row_swept(&mut admin)),
        "the primary's worker did not sweep"
    );

    let standby = primary.standby("faults-standby", &["hot_standby = on"]);
    let mut replica = standby.connect("replica");
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);

    // No sweeper on the standby, for longer than it would need to start and sweep; the
    // primary's keeps sweeping, and the standby's sweep_runs follow by replay only.
    let runs_at_start = sweep_runs_ids(&mut replica).len();
    let watch_until = Instant::now() + STALE_AFTER + Duration::from_secs(2);
    let mut looks = 0;
    while Instant::now() < watch_until {
        assert_eq!(
            worker_pid(&mut replica),
            None,
            "a sweeper runs on the hot standby"
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !standby.log().contains("webinar_sessions sweeper started"),
        "the sweeper started on the standby:\n{}",
        standby.log()
    );
    wait_for_replay(&mut admin, &mut replica);
    let (primary_runs, standby_runs) = (sweep_runs_ids(&mut admin), sweep_runs_ids(&mut replica));
    assert_eq!(
        standby_runs, primary_runs,
        "the standby's sweep runs are not the primary's"
    );
    assert!(
        standby_runs.len() > runs_at_start,
        "the standby's sweep_runs did not follow the primary's"
    );

    // Reads: the analytics give on the standby what they give on the primary. Every session
    // is closed first (leaves), so that the primary's sweeper changes nothing meanwhile.
    for user in &viewers[1..] {
        call(&mut api, user, Op::Leave, &webinar, "tab");
    }
    let (starts, ends): (String, String) = {
        let r = admin
            .query_one(
                "SELECT min(entered_at)::text, (max(exited_at) + interval '1 second')::text
                   FROM webinar_sessions.webinar_user_sessions WHERE webinar_id = $1::text::uuid",
                &[&webinar],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    wait_for_replay(&mut admin, &mut replica);
    let on_primary = analytics(&mut admin, &webinar, &starts, &ends);
    let on_standby = analytics(&mut replica, &webinar, &starts, &ends);
    assert_eq!(on_standby, on_primary);
    assert_eq!(
        table_fingerprint(&mut replica),
        table_fingerprint(&mut admin)
    );
    // A signed-in viewer reads their own watch time there, through row-level security.
    let mut replica_api = standby.connect_as("replica", "authenticator");
    {
        let mut tx = begin_request(
            &mut replica_api,
            "authenticated",
            Some(&claims_for(&viewers[1])),
        )
        .unwrap();
        let own: Vec<String> = tx
            .query(
                "SELECT user_id::text FROM webinar_sessions.watch_time
                 UNION ALL SELECT user_id::text FROM webinar_sessions.presence",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(own, vec![viewers[1].clone(), viewers[1].clone()]);
        tx.commit().unwrap();
    }

    // Writes fail cleanly: read-only transaction (25006), the connection usable afterwards,
    // nothing changed.
    let before = table_fingerprint(&mut replica);
    let claims = claims_for(&viewers[2]);
    let key = [("webinar_id", webinar.as_str()), ("session_id", "tab-2")];
    let mut refused = 0;
    for function in [
        "public.enter_webinar",
        "public.heartbeat",
        "public.leave_webinar",
    ] {
        let error = rpc(
            &mut replica_api,
            "authenticated",
            Some(&claims),
            function,
            &key,
        )
        .expect_err(function);
        assert_eq!(
            error.code(),
            &postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION,
            "{function}: {error}"
        );
        refused += 1;
    }
    let users = format!("{{{}}}", viewers[2]);
    let webinars = format!("{{{webinar}}}");
    for (function, args) in [
        ("webinar_sessions.sweep_stale_sessions", vec![]),
        (
            "webinar_sessions.heartbeat_batch",
            vec![
                ("webinar_ids", webinars.as_str()),
                ("session_ids", "{tab-2}"),
                ("user_ids", users.as_str()),
            ],
        ),
    ] {
        let error =
            rpc(&mut replica_api, "service_role", None, function, &args).expect_err(function);
        assert_eq!(
            error.code(),
            &postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION,
            "{function}: {error}"
        );
        refused += 1;
    }
    assert_eq!(table_fingerprint(&mut replica), before);

    // What the primary writes shows up on the standby.
    let newcomer = uuid(5);
    call(&mut api, &newcomer, Op::Enter, &webinar, "tab");
    let beat = call(&mut api, &newcomer, Op::Heartbeat, &webinar, "tab");
    wait_for_replay(&mut admin, &mut replica);
    let seen: Option<i64> = replica
        .query_one(
            "SELECT (extract(epoch FROM last_heartbeat_at) * 1000000)::bigint
               FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
            &[&beat.id.as_deref().unwrap()],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, beat.last_heartbeat_at);
    assert_eq!(
        table_fingerprint(&mut replica),
        table_fingerprint(&mut admin)
    );
    assert_eq!(worker_pid(&mut replica), None);
    println!(
        "hot standby: no sweeper in {looks} looks over {:?}, {} sweep runs replayed, 7 analytics equal to the primary's, {refused} writes refused with 25006",
        STALE_AFTER + Duration::from_secs(2),
        standby_runs.len()
    );

    // Promoted, it starts its sweeper, which sweeps there.
    drop((replica, replica_api));
    primary.stop("fast");
    standby.promote();
    let mut promoted = standby.connect("replica");
    let in_recovery: bool = promoted
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(!in_recovery);
    assert!(
        eventually(Duration::from_secs(15), || worker_pid(&mut promoted)
            .is_some()),
        "no sweeper after the promotion"
    );
    let runs = sweep_runs_ids(&mut promoted).len();
    promoted
        .batch_execute(&STALE_ROW.replace("'stale'", "'stale-2'"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || swept(&mut promoted, "stale-2")),
        "the promoted server's sweeper did not sweep"
    );
    assert!(sweep_runs_ids(&mut promoted).len() > runs);
    assert_eq!(failed_worker_runs(&mut promoted), 0);
}
