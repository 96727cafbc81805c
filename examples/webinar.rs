//! The main job: a simulated webinar against a throwaway PostgreSQL that runs the extension
//! with its sweeper worker, followed by the attendance report and a chart of concurrent
//! viewers.
//!
//! Viewers talk to the database the way supabase-js does through PostgREST: every call is one
//! transaction as `authenticator`, switched to `authenticated`, with the viewer's JWT claims
//! set transaction-locally. They join in a burst, heartbeat on the interval the server
//! returns, open second tabs, leave properly, drop off silently (for the worker to sweep),
//! and come back. The run doubles as an end-to-end test: every session's final row must
//! match what the clients were told, and the program exits non-zero when it does not.
//!
//! Run it with `examples/webinar.sh` (which builds and installs the extension first);
//! `--help` lists the flags.

use harness::{claims_for, request_csv, rpc, Cluster};
use postgres::Client;
use serde_json::Value;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DATABASE: &str = "webinar";

struct Args {
    viewers: usize,
    duration: f64,
    heartbeat: u32,
    stale_after: u32,
    sweep_interval: u32,
    threads: usize,
    seed: u64,
    out: PathBuf,
}

const USAGE: &str = "usage: webinar [--viewers N] [--duration SECONDS] [--heartbeat SECONDS]
               [--stale-after SECONDS] [--sweep-interval SECONDS] [--threads N]
               [--seed N] [--out DIR]

defaults: 400 viewers, a 45 s webinar, heartbeats every 2 s, stale after 6 s, a sweep
every 2 s, 8 client threads, seed 1, report and chart in target/webinar-report";

fn parse_args() -> Args {
    let mut args = Args {
        viewers: 400,
        duration: 45.0,
        heartbeat: 2,
        stale_after: 6,
        sweep_interval: 2,
        threads: 8,
        seed: 1,
        out: PathBuf::from("target/webinar-report"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        let number = || -> f64 {
            value
                .parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0)
                .unwrap_or_else(|| fail(&format!("{flag} takes a positive number, not {value:?}")))
        };
        match flag.as_str() {
            "--viewers" => args.viewers = number() as usize,
            "--duration" => args.duration = number(),
            "--heartbeat" => args.heartbeat = number() as u32,
            "--stale-after" => args.stale_after = number() as u32,
            "--sweep-interval" => args.sweep_interval = number() as u32,
            "--threads" => args.threads = number() as usize,
            "--seed" => args.seed = number() as u64,
            "--out" => args.out = PathBuf::from(&value),
            _ => fail(&format!("unknown flag {flag}")),
        }
    }
    if args.stale_after <= args.heartbeat {
        fail("--stale-after must be longer than --heartbeat, or every viewer would be swept");
    }
    args
}

fn fail(message: &str) -> ! {
    eprintln!("webinar: {message}\n\n{USAGE}");
    std::process::exit(2);
}

/// A small deterministic generator (xorshift64*), so that a run can be repeated.
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }
}

/// One client session (a tab or device) for part of the webinar: from `start` until `stop`
/// seconds after the webinar began, then a proper leave or silence.
struct Tab {
    user: String,
    session_id: String,
    start: f64,
    /// false: the tab comes back after a network outage and simply heartbeats again.
    enters: bool,
    stop: f64,
    leaves: bool,
}

/// What the viewers will do, decided up front from the seed.
fn plan(args: &Args) -> Vec<Tab> {
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let end = args.duration;
    let mut tabs = Vec::new();
    for n in 0..args.viewers {
        let user = format!("00000000-0000-4000-8000-{:012x}", n + 1);
        // 70 % arrive in the first tenth of the webinar, the rest during its first 60 %.
        let join = if rng.unit() < 0.7 {
            rng.between(0.0, 0.1 * end)
        } else {
            rng.between(0.0, 0.6 * end)
        };
        let tab = |name: &str, start: f64, enters: bool, stop: f64, leaves: bool| Tab {
            user: user.clone(),
            session_id: format!("viewer-{n}-{name}"),
            start,
            enters,
            stop,
            leaves,
        };
        let roll = rng.unit();
        if roll < 0.20 {
            tabs.push(tab("tab", join, true, rng.between(join, end), true)); // leaves early
        } else if roll < 0.35 {
            tabs.push(tab("tab", join, true, rng.between(join, end), false)); // drops silently
        } else if roll < 0.45 {
            // Network outage long enough to be swept, then back in the same tab or another device.
            let drop = rng.between(join, 0.6 * end);
            let back = drop + f64::from(args.stale_after) * rng.between(1.5, 3.0);
            tabs.push(tab("tab", join, true, drop, false));
            if rng.unit() < 0.5 {
                tabs.push(tab("tab", back, false, end, true));
            } else {
                tabs.push(tab("phone", back, true, end, true));
            }
        } else if roll < 0.55 {
            tabs.push(tab("tab", join, true, end, false)); // closes the laptop at the end
        } else {
            tabs.push(tab("tab", join, true, end, true)); // stays and leaves at the end
        }
        if rng.unit() < 0.2 {
            let open = rng.between(join, end);
            tabs.push(tab("second-tab", open, true, rng.between(open, end), true));
        }
    }
    tabs
}

/// What a client was told about one session row: its id and the last sign of life the
/// server acknowledged, exactly as the server rendered it.
#[derive(Default)]
struct Acks {
    last_sign: BTreeMap<String, String>,
    left: BTreeMap<String, bool>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    entries: AtomicU64,
}

/// Runs one thread's share of the tabs in time order.
fn run_tabs(cluster: &Cluster, tabs: Vec<Tab>, begin: Instant, counters: Arc<Counters>) -> Acks {
    let mut api = cluster.connect_as(DATABASE, "authenticator");
    let mut acks = Acks::default();
    // (due time in microseconds, reversed for a min-heap; tab index; is this the first call?)
    let mut queue: BinaryHeap<(std::cmp::Reverse<u64>, usize, bool)> = tabs
        .iter()
        .enumerate()
        .map(|(i, tab)| (std::cmp::Reverse((tab.start * 1e6) as u64), i, true))
        .collect();
    while let Some((std::cmp::Reverse(due), i, first)) = queue.pop() {
        let tab = &tabs[i];
        let due = Duration::from_micros(due);
        if let Some(wait) = due.checked_sub(begin.elapsed()) {
            std::thread::sleep(wait);
        }
        let now = begin.elapsed().as_secs_f64();
        let function = if now >= tab.stop {
            if !tab.leaves {
                continue; // silence: the worker will sweep this session
            }
            "public.leave_webinar"
        } else if first && tab.enters {
            counters.entries.fetch_add(1, Ordering::Relaxed);
            "public.enter_webinar"
        } else {
            "public.heartbeat"
        };
        let claims = claims_for(&tab.user);
        let args = [
            ("webinar_id", WEBINAR_ID),
            ("session_id", tab.session_id.as_str()),
        ];
        counters.requests.fetch_add(1, Ordering::Relaxed);
        // A heartbeat whose transaction a sweep overtook fails with 40001, as the README
        // says; a client retries it (the retry takes the direct path).
        let mut answer = rpc(&mut api, "authenticated", Some(&claims), function, &args);
        for _ in 0..3 {
            match &answer {
                Err(e) if e.code().code() == "40001" => {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    answer = rpc(&mut api, "authenticated", Some(&claims), function, &args);
                }
                _ => break,
            }
        }
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("{function} for {}: {e}", tab.session_id);
                continue;
            }
        };
        record(&mut acks, &response);
        if function == "public.leave_webinar" {
            continue;
        }
        let interval = response["heartbeat_interval_s"].as_f64().unwrap_or(1.0);
        let next = (now + interval).min(tab.stop.max(now));
        queue.push((std::cmp::Reverse((next * 1e6) as u64), i, false));
    }
    acks
}

fn record(acks: &mut Acks, response: &Value) {
    let Some(id) = response["id"].as_str() else {
        return; // not_found: nothing to close
    };
    let last_sign = ["exited_at", "last_heartbeat_at", "entered_at"]
        .iter()
        .find_map(|key| response[key].as_str())
        .unwrap_or_default();
    acks.last_sign.insert(id.to_string(), last_sign.to_string());
    acks.left
        .insert(id.to_string(), response["status"] == "left");
}

const WEBINAR_ID: &str = "7e57ab1e-0000-4000-8000-00000000cafe";

fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.out).unwrap();
    println!(
        "Starting a throwaway PostgreSQL with webinar_sessions preloaded \
         (heartbeat {} s, stale after {} s, sweep every {} s)...",
        args.heartbeat, args.stale_after, args.sweep_interval
    );
    let settings = [
        format!("webinar_sessions.database = '{DATABASE}'"),
        format!(
            "webinar_sessions.heartbeat_interval = '{}s'",
            args.heartbeat
        ),
        format!("webinar_sessions.stale_after = '{}s'", args.stale_after),
        format!(
            "webinar_sessions.sweep_interval = '{}s'",
            args.sweep_interval
        ),
        format!("max_connections = {}", args.threads + 20),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let cluster = Cluster::start("webinar-demo", &settings);
    let mut admin = cluster.supabase_database(DATABASE);
    admin
        .execute(
            "INSERT INTO webinar_sessions.webinar_hosts (webinar_id, user_id, role)
             VALUES ($1::text::uuid, $2::text::uuid, 'host')",
            &[&WEBINAR_ID, &HOST_ID],
        )
        .unwrap();

    let tabs = plan(&args);
    println!(
        "Simulating {} viewers ({} client sessions) over {} s with {} client threads.\n",
        args.viewers,
        tabs.len(),
        args.duration,
        args.threads
    );
    let counters = Arc::new(Counters::default());
    let begin = Instant::now();
    let started_at: String = admin.query_one("SELECT now()::text", &[]).unwrap().get(0);
    let mut shares: Vec<Vec<Tab>> = (0..args.threads).map(|_| Vec::new()).collect();
    for (i, tab) in tabs.into_iter().enumerate() {
        shares[i % args.threads].push(tab);
    }
    let all_acks = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let counters = counters.clone();
                let cluster = &cluster;
                scope.spawn(move || run_tabs(cluster, share, begin, counters))
            })
            .collect();
        // Progress every 5 seconds while the webinar runs.
        let mut last_requests = 0;
        let mut next_progress = Duration::from_secs(5);
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if begin.elapsed() < next_progress {
                continue;
            }
            next_progress += Duration::from_secs(5);
            let elapsed = begin.elapsed().as_secs_f64();
            let requests = counters.requests.load(Ordering::Relaxed);
            println!(
                "[{elapsed:5.1} s] entries {:>5} | active sessions {:>5} | requests {:>7} ({:>5}/s) | swept so far {:>4} | errors {}",
                counters.entries.load(Ordering::Relaxed),
                count(&mut admin, "SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL"),
                requests,
                (requests - last_requests) / 5,
                count(&mut admin, "SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exit_reason = 'swept'"),
                counters.errors.load(Ordering::Relaxed),
            );
            last_requests = requests;
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<Acks>>()
    });
    let ended_at: String = admin.query_one("SELECT now()::text", &[]).unwrap().get(0);

    println!("\nThe webinar is over; waiting for the worker to sweep the viewers who vanished...");
    let patience = Duration::from_secs(u64::from(args.stale_after + 3 * args.sweep_interval) + 15);
    let swept_all = harness::eventually(patience, || {
        count(
            &mut admin,
            "SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL",
        ) == 0
    });

    let mut problems = verify(
        &mut admin,
        &all_acks,
        counters.errors.load(Ordering::Relaxed),
    );
    println!(
        "heartbeats retried after a sweep overtook them (40001): {}",
        counters.retries.load(Ordering::Relaxed)
    );
    if !swept_all {
        problems.push("sessions were still active after the worker had time to sweep them".into());
    }
    let report = report(&mut admin, &args, &started_at, &ended_at);
    println!("\n{report}");
    std::fs::write(args.out.join("report.txt"), &report).unwrap();
    let chart = args.out.join("concurrency.svg");
    std::fs::write(&chart, concurrency_svg(&mut admin)).unwrap();
    // The host's view: the attendee report as CSV, fetched the way supabase-js does with
    // rpc('webinar_report', { webinar_id }, { get: true }).csv().
    let attendees = args.out.join("attendees.csv");
    match attendees_csv(&cluster) {
        Ok(csv) => std::fs::write(&attendees, csv).unwrap(),
        Err(e) => problems.push(format!("the host could not fetch the attendee report: {e}")),
    }
    println!(
        "Report: {}\nChart:  {}\nAttendees (as the host downloads them): {}",
        args.out.join("report.txt").display(),
        chart.display(),
        attendees.display()
    );

    if problems.is_empty() {
        println!(
            "\nEnd-to-end check: every session row matches what its client was told; nothing lost."
        );
    } else {
        eprintln!("\nEnd-to-end check FAILED:");
        for problem in &problems {
            eprintln!("  - {problem}");
        }
        std::process::exit(1);
    }
}

/// Compares every row with what the clients were told.
fn verify(admin: &mut Client, all_acks: &[Acks], errors: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if errors > 0 {
        problems.push(format!("{errors} calls failed"));
    }
    let rows = admin
        .query(
            "SELECT id::text, to_jsonb(coalesce(exited_at, last_heartbeat_at, entered_at)) #>> '{}',
                    exit_reason
               FROM webinar_sessions.webinar_user_sessions",
            &[],
        )
        .unwrap();
    let told: BTreeMap<&String, (&String, bool)> = all_acks
        .iter()
        .flat_map(|acks| {
            acks.last_sign
                .iter()
                .map(|(id, at)| (id, (at, acks.left[id])))
        })
        .collect();
    if rows.len() != told.len() {
        problems.push(format!(
            "{} rows in the table, but clients were told of {} sessions",
            rows.len(),
            told.len()
        ));
    }
    for row in rows {
        let (id, last_sign, reason): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        match told.get(&id) {
            None => problems.push(format!("session {id} was never reported to a client")),
            Some((at, left)) => {
                if **at != last_sign {
                    problems.push(format!("session {id}: client saw its last sign of life at {at}, the table says {last_sign}"));
                }
                let expected = if *left { "left" } else { "swept" };
                if reason.as_deref() != Some(expected) {
                    problems.push(format!(
                        "session {id}: expected exit_reason {expected}, found {reason:?}"
                    ));
                }
            }
        }
    }
    problems
}

/// Formats rows as an aligned text table.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([headers[c].len()])
                .max()
                .unwrap()
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(headers.to_vec()) + "\n";
    out += &line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    out += "\n";
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
        out += "\n";
    }
    out
}

fn report(admin: &mut Client, args: &Args, started_at: &str, ended_at: &str) -> String {
    let mut out = String::new();
    let stats = admin
        .query_one(
            "SELECT viewers, sessions, active_sessions, active_viewers,
                    round(total_watched_seconds::numeric, 1)::text, round(avg_watched_seconds::numeric, 1)::text,
                    peak_concurrent_viewers, to_char(peak_at, 'HH24:MI:SS.MS'),
                    to_char(first_entered_at, 'HH24:MI:SS.MS'), to_char(last_seen_at, 'HH24:MI:SS.MS')
               FROM webinar_sessions.webinar_stats WHERE webinar_id = $1::text::uuid",
            &[&WEBINAR_ID],
        )
        .unwrap();
    let runs = admin
        .query_one(
            "SELECT count(*), coalesce(sum(swept), 0)::bigint, count(*) FILTER (WHERE error IS NOT NULL)
               FROM webinar_sessions.sweep_runs WHERE source = 'worker'",
            &[],
        )
        .unwrap();
    let buffer = admin
        .query_one(
            "SELECT mode, buffered_heartbeats, flushes FROM webinar_sessions.buffer_stats",
            &[],
        )
        .unwrap();
    let _ = writeln!(out, "ATTENDANCE REPORT, webinar {WEBINAR_ID}\n");
    let fields: [(&str, String); 13] = [
        ("viewers (distinct)", stats.get::<_, i64>(0).to_string()),
        (
            "sessions (tabs, devices, rejoins)",
            stats.get::<_, i64>(1).to_string(),
        ),
        ("active sessions now", stats.get::<_, i64>(2).to_string()),
        ("active viewers now", stats.get::<_, i64>(3).to_string()),
        ("total watch time, s (union per viewer)", stats.get(4)),
        ("average watch time per viewer, s", stats.get(5)),
        (
            "peak concurrent viewers",
            stats.get::<_, i64>(6).to_string(),
        ),
        (
            "peak at",
            stats.get::<_, Option<String>>(7).unwrap_or_default(),
        ),
        (
            "first entry / last sign of life",
            format!(
                "{} / {}",
                stats.get::<_, String>(8),
                stats.get::<_, String>(9)
            ),
        ),
        (
            "worker sweeps / sessions swept / failed",
            format!(
                "{} / {} / {}",
                runs.get::<_, i64>(0),
                runs.get::<_, i64>(1),
                runs.get::<_, i64>(2)
            ),
        ),
        ("heartbeat mode", buffer.get(0)),
        (
            "heartbeats answered from the buffer",
            buffer.get::<_, i64>(1).to_string(),
        ),
        (
            "buffer flushes by the worker",
            buffer.get::<_, i64>(2).to_string(),
        ),
    ];
    for (name, value) in fields {
        let _ = writeln!(out, "  {name:<40} {value}");
    }

    let sums = admin
        .query_one(
            "SELECT round(sum(extract(epoch FROM coalesce(exited_at, last_heartbeat_at, entered_at) - entered_at))::numeric, 1)::text
               FROM webinar_sessions.webinar_user_sessions",
            &[],
        )
        .unwrap();
    let _ = writeln!(
        out,
        "  {:<40} {}  (what summing sessions would claim)\n",
        "sum of session lengths, s",
        sums.get::<_, String>(0)
    );

    let attendance = admin
        .query(
            &"SELECT user_id::text, round(watched_seconds::numeric, 1)::text,
                        round(100 * ratio::numeric, 1)::text || ' %', attended
                   FROM webinar_sessions.attendance($1::text::uuid, $2::text::timestamptz,
                                                    $3::text::timestamptz, 0.85)"
                .to_string(),
            &[&WEBINAR_ID, &started_at, &ended_at],
        )
        .unwrap();
    let attended = attendance.iter().filter(|r| r.get::<_, bool>(3)).count();
    let _ = writeln!(
        out,
        "Attendance over the webinar ({:.0} s): {attended} of {} viewers stayed for at least 85 %.",
        args.duration,
        attendance.len()
    );
    let rows: Vec<Vec<String>> = attendance
        .iter()
        .take(5)
        .chain(
            attendance
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev(),
        )
        .map(|r| {
            vec![
                r.get(0),
                r.get(1),
                r.get(2),
                if r.get(3) { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "The five who watched most and the five who watched least:"
    );
    out += &table(
        &["viewer", "watched s", "of the webinar", "attended"],
        &rows,
    );

    let bucket = (args.duration / 10.0).ceil().max(1.0);
    let retention = admin
        .query(
            &"SELECT still_watching FROM webinar_sessions.retention($1::text::uuid, $2::text::timestamptz,
                        $3::text::timestamptz, $4::text::interval)".to_string(),
            &[&WEBINAR_ID, &started_at, &ended_at, &format!("{bucket} s")],
        )
        .unwrap();
    let most = retention
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .max()
        .unwrap_or(1)
        .max(1);
    let _ = writeln!(
        out,
        "\nRetention: viewers still watching, every {bucket:.0} s from the start:"
    );
    for (k, row) in retention.iter().enumerate() {
        let n: i64 = row.get(0);
        let bar = "#".repeat((40 * n / most) as usize);
        let _ = writeln!(out, "  +{:>4.0} s {n:>6}  {bar}", k as f64 * bucket);
    }
    out
}

/// The webinar's host, in webinar_hosts from the start (their own sessions would stay out of the
/// audience figures).
const HOST_ID: &str = "7e57ab1e-0000-4000-8000-0000000000ff";

fn attendees_csv(cluster: &Cluster) -> Result<String, postgres::Error> {
    let mut api = cluster.connect_as(DATABASE, "authenticator");
    request_csv(
        &mut api,
        "authenticated",
        Some(&claims_for(HOST_ID)),
        "public.webinar_report",
        &[("webinar_id", serde_json::json!(WEBINAR_ID))],
    )
}

/// A line chart of distinct viewers per second. The peak it marks is the report's
/// (`webinar_stats`: the most viewers present at one instant), placed at its time: a
/// one-second bucket counts everyone present at any moment of that second, so a viewer leaving
/// and another arriving within it are both in the bucket, and the highest bucket can exceed the
/// peak.
fn concurrency_svg(admin: &mut Client) -> String {
    let peak = admin
        .query_one(
            "SELECT peak_concurrent_viewers,
                    extract(epoch FROM peak_at - date_bin('1 second', first_entered_at, timestamptz '2000-01-01 00:00:00+00'))::float8
               FROM webinar_sessions.webinar_stats WHERE webinar_id = $1::text::uuid",
            &[&WEBINAR_ID],
        )
        .unwrap();
    let (peak_v, peak_t): (i64, Option<f64>) = (peak.get(0), peak.get(1));
    let points: Vec<(f64, i64)> = admin
        .query(
            "SELECT extract(epoch FROM bucket_start - min(bucket_start) OVER ())::float8, viewers
               FROM webinar_sessions.concurrency($1::text::uuid, '1 second') ORDER BY bucket_start",
            &[&WEBINAR_ID],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (width, height, left, bottom, top, right) = (900.0, 420.0, 70.0, 50.0, 75.0, 20.0);
    let max_t = points.last().map_or(1.0, |p| p.0).max(1.0);
    let max_v = points.iter().map(|p| p.1).max().unwrap_or(1).max(1) as f64;
    let x = |t: f64| left + (width - left - right) * t / max_t;
    let y = |v: f64| height - bottom - (height - bottom - top) * v / max_v;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='12'>\n\
         <rect width='100%' height='100%' fill='white'/>\n\
         <text x='{left}' y='24' font-size='16' font-weight='bold'>Concurrent viewers: distinct viewers present in each second</text>\n\
         <text x='{left}' y='42' fill='#555'>webinar_sessions.concurrency(webinar_id, '1 second'); tabs of one viewer count once</text>\n"
    );
    // Gridlines at round numbers: 1, 2 or 5 times a power of ten, about five of them.
    let rough = max_v / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(rough);
    let mut v = 0.0;
    while v <= max_v {
        let _ = writeln!(
            svg,
            "<line x1='{left}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#ddd'/><text x='{}' y='{:.1}' text-anchor='end'>{v:.0}</text>",
            width - right,
            left - 8.0,
            y(v) + 4.0,
            y = y(v)
        );
        v += step.max(1.0);
    }
    for i in 0..=5 {
        let t = max_t * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            "<text x='{:.1}' y='{}' text-anchor='middle'>{t:.0} s</text>",
            x(t),
            height - bottom + 18.0
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v as f64)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill='none' stroke='#2563eb' stroke-width='2' points='{}'/>",
        path.join(" ")
    );
    if let Some(t) = peak_t {
        let v = peak_v as f64;
        let _ = writeln!(
            svg,
            "<circle cx='{:.1}' cy='{:.1}' r='4' fill='#dc2626'/><text x='{:.1}' y='{:.1}' fill='#dc2626'>peak {peak_v} at {t:.1} s (the report's)</text>",
            x(t),
            y(v),
            x(t) + 8.0,
            y(v) - 8.0
        );
    }
    let _ = writeln!(
        svg,
        "<line x1='{left}' x2='{left}' y1='{top}' y2='{}' stroke='black'/><line x1='{left}' x2='{}' y1='{b}' y2='{b}' stroke='black'/>\n\
         <text x='{:.1}' y='{}' text-anchor='middle'>seconds since the first entry</text>\n</svg>",
        height - bottom,
        width - right,
        (left + width - right) / 2.0,
        height - 10.0,
        b = height - bottom
    );
    svg
}
