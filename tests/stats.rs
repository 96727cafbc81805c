//! The attendance analytics, checked against an independent brute-force computation: random
//! small webinars (overlapping tabs, touching sessions, sessions still active, sessions with
//! no heartbeat) with whole-second timestamps, where presence can be counted second by second.

use harness::*;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};

/// 2026-01-01 00:00:00 UTC, a whole number of minutes after 2000-01-01 so that buckets align.
const BASE: &str = "timestamptz '2026-01-01 00:00:00+00'";

#[derive(Clone, Debug)]
struct Session {
    user: u64,
    entered: i64,
    heartbeat: Option<i64>,
    exited: Option<i64>,
}

impl Session {
    /// The last proved sign of life: presence is [entered, end).
    fn end(&self) -> i64 {
        self.exited.or(self.heartbeat).unwrap_or(self.entered)
    }
}

/// A small deterministic generator (xorshift64*), so that a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn random_webinar(seed: u64) -> Vec<Session> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut sessions = Vec::new();
    for user in 1..=1 + rng.below(6) {
        let mut previous_end = None;
        for _ in 0..rng.below(5) {
            let entered = match (previous_end, rng.below(4)) {
                (Some(end), 0) => end, // touches the previous session
                _ => rng.below(500) as i64,
            };
            let length = rng.below(150) as i64;
            let session = match rng.below(5) {
                0 => Session {
                    user,
                    entered,
                    heartbeat: None,
                    exited: None,
                },
                1 => Session {
                    user,
                    entered,
                    heartbeat: Some(entered + length),
                    exited: None,
                },
                2 => Session {
                    user,
                    entered,
                    heartbeat: None,
                    exited: Some(entered),
                }, // swept, never beat
                _ => {
                    let heartbeat = (rng.below(2) == 0).then_some(entered + length / 2);
                    Session {
                        user,
                        entered,
                        heartbeat,
                        exited: Some(entered + length),
                    }
                }
            };
            previous_end = Some(session.end());
            sessions.push(session);
        }
    }
    sessions
}

fn insert(client: &mut Client, webinar: &str, sessions: &[Session]) {
    let at =
        |t: Option<i64>| t.map_or("NULL".to_string(), |t| format!("{BASE} + interval '{t} s'"));
    // A thousand rows a statement: big webinars would otherwise take a round trip per session.
    for (chunk, rows) in sessions.chunks(1000).enumerate() {
        let values: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "('{webinar}', '{}', 's{}', {}, {}, {}, {})",
                    uuid(s.user),
                    chunk * 1000 + i,
                    at(Some(s.entered)),
                    at(s.heartbeat),
                    at(s.exited),
                    if s.exited.is_some() { "'left'" } else { "NULL" },
                )
            })
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO webinar_sessions.webinar_user_sessions
                     (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
                 VALUES {}",
                values.join(", ")
            ))
            .unwrap();
    }
}

/// The webinar's row of webinar_stats, its times in seconds after BASE: viewers, sessions,
/// active sessions, active viewers, total and average watched seconds, peak, peak_at, first
/// entry, last sign of life.
fn webinar_stats_row(client: &mut Client, webinar: &str) -> postgres::Row {
    client
        .query_one(
            &format!(
                "SELECT viewers, sessions, active_sessions, active_viewers, total_watched_seconds,
                        avg_watched_seconds, peak_concurrent_viewers,
                        extract(epoch FROM peak_at - {BASE})::float8,
                        extract(epoch FROM first_entered_at - {BASE})::float8,
                        extract(epoch FROM last_seen_at - {BASE})::float8
                   FROM webinar_sessions.webinar_stats WHERE webinar_id = $1::text::uuid"
            ),
            &[&webinar],
        )
        .unwrap()
}

/// Makes HOST a host of the webinar.
fn make_host(client: &mut Client, webinar: &str) {
    client
        .execute(
            "INSERT INTO webinar_sessions.webinar_hosts (webinar_id, user_id) VALUES ($1::text::uuid, $2::text::uuid)",
            &[&webinar, &uuid(HOST)],
        )
        .unwrap();
}

/// Second by second: which seconds each viewer was present in.
fn presence(sessions: &[Session]) -> BTreeMap<u64, BTreeSet<i64>> {
    let mut seconds: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
    for s in sessions {
        seconds
            .entry(s.user)
            .or_default()
            .extend(s.entered..s.end());
    }
    seconds
}

fn present_at(seconds: &BTreeMap<u64, BTreeSet<i64>>, t: i64) -> usize {
    seconds.values().filter(|set| set.contains(&t)).count()
}

fn check_seed(client: &mut Client, seed: u64) {
    let sessions = random_webinar(seed);
    if sessions.is_empty() {
        return;
    }
    check_webinar(client, seed, &sessions);
}

/// A user who is no viewer (no test webinar has a viewer of that number): in every third
/// webinar, the host, whose sessions the audience figures must leave out.
const HOST: u64 = 1 << 40;

/// Every analytics function of the webinar `1_000_000 + seed` against a second-by-second
/// count of `sessions`. In every third webinar a host (HOST) comes and goes among the viewers
/// too, in sessions of their own that only watch_time may count.
fn check_webinar(client: &mut Client, seed: u64, sessions: &[Session]) {
    let sessions = sessions.to_vec();
    let webinar = uuid(1_000_000 + seed);
    insert(client, &webinar, &sessions);
    if seed.is_multiple_of(3) {
        let hosting: Vec<Session> = random_webinar(seed + 50_000)
            .into_iter()
            .map(|s| Session { user: HOST, ..s })
            .collect();
        insert(client, &webinar, &hosting);
        make_host(client, &webinar);
    }
    let seconds = presence(&sessions);
    let first = sessions.iter().map(|s| s.entered).min().unwrap();
    let last = sessions.iter().map(Session::end).max().unwrap();
    let ctx = format!("seed {seed}: {sessions:?}");

    // watch_time: one row per viewer, the union of their sessions.
    let rows = client
        .query(
            &format!(
                "SELECT user_id::text, sessions, extract(epoch FROM first_entered_at - {BASE})::float8,
                        extract(epoch FROM last_seen_at - {BASE})::float8, watched_seconds
                   FROM webinar_sessions.watch_time
                  WHERE webinar_id = $1::text::uuid AND user_id <> $2::text::uuid ORDER BY user_id"
            ),
            &[&webinar, &uuid(HOST)],
        )
        .unwrap();
    assert_eq!(rows.len(), seconds.len(), "{ctx}");
    for (row, (user, set)) in rows.iter().zip(&seconds) {
        let mine: Vec<&Session> = sessions.iter().filter(|s| s.user == *user).collect();
        assert_eq!(row.get::<_, String>(0), uuid(*user), "{ctx}");
        assert_eq!(row.get::<_, i64>(1), mine.len() as i64, "{ctx}");
        assert_eq!(
            row.get::<_, f64>(2),
            mine.iter().map(|s| s.entered).min().unwrap() as f64,
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, f64>(3),
            mine.iter().map(|s| s.end()).max().unwrap() as f64,
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, f64>(4),
            set.len() as f64,
            "watched seconds of {user}, {ctx}"
        );
    }

    // webinar_stats: totals, active counts, peak concurrent distinct viewers.
    let row = webinar_stats_row(client, &webinar);
    let total: usize = seconds.values().map(BTreeSet::len).sum();
    let active: Vec<&Session> = sessions.iter().filter(|s| s.exited.is_none()).collect();
    let active_viewers: BTreeSet<u64> = active.iter().map(|s| s.user).collect();
    let (peak, peak_at) = (first..last).map(|t| (present_at(&seconds, t), t)).fold(
        (0, None),
        |(best, at), (n, t)| if n > best { (n, Some(t)) } else { (best, at) },
    );
    assert_eq!(row.get::<_, i64>(0), seconds.len() as i64, "viewers, {ctx}");
    assert_eq!(
        row.get::<_, i64>(1),
        sessions.len() as i64,
        "sessions, {ctx}"
    );
    assert_eq!(
        row.get::<_, i64>(2),
        active.len() as i64,
        "active sessions, {ctx}"
    );
    assert_eq!(
        row.get::<_, i64>(3),
        active_viewers.len() as i64,
        "active viewers, {ctx}"
    );
    assert_eq!(row.get::<_, f64>(4), total as f64, "total, {ctx}");
    assert!(
        (row.get::<_, f64>(5) - total as f64 / seconds.len() as f64).abs() < 1e-9,
        "avg, {ctx}"
    );
    assert_eq!(row.get::<_, i64>(6), peak as i64, "peak, {ctx}");
    assert_eq!(
        row.get::<_, Option<f64>>(7),
        peak_at.map(|t| t as f64),
        "peak_at, {ctx}"
    );
    assert_eq!(row.get::<_, f64>(8), first as f64, "{ctx}");
    assert_eq!(row.get::<_, f64>(9), last as f64, "{ctx}");

    // concurrency: 10-second buckets aligned to the clock, from the first entry's bucket to
    // the one holding the last sign of life.
    let origin = first.div_euclid(10) * 10;
    let buckets: Vec<(f64, i64)> = client
        .query(
            &format!(
                "SELECT extract(epoch FROM bucket_start - {BASE})::float8, viewers
                   FROM webinar_sessions.concurrency($1::text::uuid, '10 s')"
            ),
            &[&webinar],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(f64, i64)> = (0..=(last - origin) / 10)
        .map(|k| {
            let start = origin + 10 * k;
            let n = seconds
                .values()
                .filter(|set| set.range(start..start + 10).next().is_some())
                .count();
            (start as f64, n as i64)
        })
        .collect();
    assert_eq!(buckets, expected, "concurrency, {ctx}");

    // attendance and retention over a window that cuts sessions.
    let mut rng = Rng(seed + 7);
    let window_start = rng.below(200) as i64;
    let window_end = window_start + 60 + rng.below(400) as i64;
    let window = (window_end - window_start) as f64;
    let attendance: BTreeMap<String, (f64, f64, bool)> = client
        .query(
            &format!(
                "SELECT user_id::text, watched_seconds, ratio, attended
                   FROM webinar_sessions.attendance($1::text::uuid, {BASE} + $2::text::interval,
                                                    {BASE} + $3::text::interval, 0.5)"
            ),
            &[
                &webinar,
                &format!("{window_start} s"),
                &format!("{window_end} s"),
            ],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(attendance.len(), seconds.len(), "{ctx}");
    for (user, set) in &seconds {
        let watched = set.range(window_start..window_end).count() as f64;
        let (got_watched, got_ratio, got_attended) = attendance[&uuid(*user)];
        assert_eq!(got_watched, watched, "attendance of {user}, {ctx}");
        assert!((got_ratio - watched / window).abs() < 1e-12, "{ctx}");
        assert_eq!(got_attended, watched / window >= 0.5, "{ctx}");
    }

    let retention: Vec<(i32, i64)> = client
        .query(
            &format!(
                "SELECT minute_offset, still_watching
                   FROM webinar_sessions.retention($1::text::uuid, {BASE} + $2::text::interval,
                                                   {BASE} + $3::text::interval, '30 s')"
            ),
            &[
                &webinar,
                &format!("{window_start} s"),
                &format!("{window_end} s"),
            ],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let points = (window_end - window_start + 29) / 30;
    let expected: Vec<(i32, i64)> = (0..points)
        .map(|k| {
            (
                (30 * k / 60) as i32,
                present_at(&seconds, window_start + 30 * k) as i64,
            )
        })
        .collect();
    assert_eq!(retention, expected, "retention, {ctx}");
}

#[test]
fn analytics_match_a_second_by_second_count_on_random_webinars() {
    let mut client = shared_cluster("stats").supabase_database("random_webinars");
    let seeds = 300;
    for seed in 1..=seeds {
        check_seed(&mut client, seed);
    }
    println!("random webinars checked: {seeds}");
}

/// The shapes a big webinar has that small random ones rarely do: one viewer with 200
/// sessions (tabs, rejoins, overlaps), and sessions that start and end exactly on the edges of
/// concurrency's 10-second buckets and retention's 30-second instants.
#[test]
fn analytics_match_on_a_200_session_viewer_and_on_bucket_edges() {
    let mut client = shared_cluster("stats").supabase_database("edge_webinars");
    let mut rng = Rng(0x5eed);
    let busy: Vec<Session> = (0..200)
        .map(|i| {
            let entered = rng.below(3000) as i64;
            let length = rng.below(120) as i64;
            let user = if i % 10 == 0 { 2 } else { 1 };
            match i % 4 {
                0 => Session {
                    user,
                    entered,
                    heartbeat: None,
                    exited: Some(entered),
                },
                1 => Session {
                    user,
                    entered,
                    heartbeat: Some(entered + length),
                    exited: None,
                },
                _ => Session {
                    user,
                    entered,
                    heartbeat: None,
                    exited: Some(entered + length),
                },
            }
        })
        .collect();
    check_webinar(&mut client, 9_001, &busy);
    // Every start and end on a multiple of 10 s (and so of the 30 s grid every third time).
    let edges: Vec<Session> = (0..60)
        .map(|i| {
            let entered = 10 * rng.below(60) as i64;
            let length = 10 * rng.below(12) as i64;
            Session {
                user: 1 + i % 7,
                entered,
                heartbeat: None,
                exited: Some(entered + length),
            }
        })
        .collect();
    check_webinar(&mut client, 9_002, &edges);
}

/// A crowd: the hosted edition counts the peak block by block (hosted/sql/stats.sql) and
/// skips the blocks that cannot hold it, which only a webinar of many sessions shows: 400
/// viewers arriving around a hump, with rejoins, second tabs and a group that enters and
/// leaves at the very same seconds (ties at the block edges), and a plateau the peak reaches
/// more than once, where the first time must win.
#[test]
fn analytics_match_on_a_crowd_whose_peak_needs_few_of_its_blocks() {
    let mut client = shared_cluster("stats").supabase_database("crowd_webinars");
    let mut rng = Rng(0xc40d);
    let mut crowd = Vec::new();
    for user in 1..=400u64 {
        let mut entered = 600 + rng.below(900) as i64 + rng.below(900) as i64;
        for _ in 0..1 + rng.below(4) {
            let length = 30 + rng.below(600) as i64;
            let heartbeat = (rng.below(3) == 0).then_some(entered + length);
            let exited = heartbeat.is_none().then_some(entered + length);
            crowd.push(Session {
                user,
                entered,
                heartbeat,
                exited,
            });
            // A second tab over this one, or a rejoin after a gap.
            entered = match rng.below(3) {
                0 => entered + rng.below(length as u64) as i64,
                _ => entered + length + rng.below(300) as i64,
            };
        }
    }
    for user in 401..=440 {
        crowd.push(Session {
            user,
            entered: 1000,
            heartbeat: None,
            exited: Some(1400),
        });
    }
    check_webinar(&mut client, 9_003, &crowd);
    // Two separate plateaus of the same height: 30 viewers from 100 to 200, the same 30 again
    // from 300 to 400 (peak_at must be 100, the first).
    let plateaus: Vec<Session> = (1..=30)
        .flat_map(|user| {
            [100, 300].map(|entered| Session {
                user,
                entered,
                heartbeat: None,
                exited: Some(entered + 100),
            })
        })
        .collect();
    check_webinar(&mut client, 9_004, &plateaus);
}

/// A webinar of more than 50,000 sessions, which the hosted edition sums up in two shares of
/// its viewers at once (split at the median viewer id of the table's statistics, hence the
/// ANALYZE): webinar_stats against an independent sweep over each viewer's merged sessions,
/// too many for the second-by-second count. A host comes and goes among the viewers.
#[test]
fn webinar_stats_match_a_sweep_on_a_webinar_of_60000_sessions() {
    let mut client = shared_cluster("stats").supabase_database("big_webinar");
    let webinar = uuid(7_777);
    let mut rng = Rng(0xb16);
    let mut sessions = Vec::new();
    for user in 1..=20_000u64 {
        let mut entered = rng.below(2000) as i64;
        for _ in 0..2 + rng.below(3) {
            let length = rng.below(200) as i64;
            let (heartbeat, exited) = match rng.below(4) {
                0 => (Some(entered + length), None),
                1 => (None, Some(entered)),
                _ => (
                    (rng.below(2) == 0).then_some(entered + length / 2),
                    Some(entered + length),
                ),
            };
            sessions.push(Session {
                user,
                entered,
                heartbeat,
                exited,
            });
            entered = match rng.below(3) {
                0 => entered + rng.below(length as u64 + 1) as i64, // a second tab
                1 => entered + length,                              // touches the last one
                _ => entered + length + rng.below(300) as i64,
            };
        }
    }
    assert!(sessions.len() > 50_000, "{} sessions", sessions.len());
    let hosting: Vec<Session> = (0..40)
        .map(|k| Session {
            user: HOST,
            entered: 50 * k,
            heartbeat: None,
            exited: Some(50 * k + 40),
        })
        .collect();
    insert(&mut client, &webinar, &sessions);
    insert(&mut client, &webinar, &hosting);
    make_host(&mut client, &webinar);
    client
        .batch_execute("ANALYZE webinar_sessions.webinar_user_sessions")
        .unwrap();

    // Each viewer's sessions merged into stretches [start, end), then one sweep over their
    // edges, departures before arrivals at the same second.
    let mut by_user: BTreeMap<u64, Vec<(i64, i64)>> = BTreeMap::new();
    for s in &sessions {
        by_user
            .entry(s.user)
            .or_default()
            .push((s.entered, s.end()));
    }
    let mut edges = Vec::new();
    let mut watched = 0;
    for spans in by_user.values_mut() {
        spans.sort();
        let mut current: Option<(i64, i64)> = None;
        for &(start, end) in spans.iter() {
            match current {
                Some((s, e)) if start <= e => current = Some((s, e.max(end))),
                _ => {
                    if let Some((s, e)) = current {
                        edges.extend([(s, 1), (e, -1)]);
                        watched += e - s;
                    }
                    current = Some((start, end));
                }
            }
        }
        if let Some((s, e)) = current {
            edges.extend([(s, 1), (e, -1)]);
            watched += e - s;
        }
    }
    edges.sort();
    let (mut present, mut peak, mut peak_at) = (0i64, 0i64, None);
    for (i, &(t, delta)) in edges.iter().enumerate() {
        present += delta;
        let last_at_t = edges.get(i + 1).is_none_or(|&(next, _)| next != t);
        if last_at_t && present > peak {
            (peak, peak_at) = (present, Some(t));
        }
    }
    let first = sessions.iter().map(|s| s.entered).min().unwrap();
    let last = sessions.iter().map(Session::end).max().unwrap();

    let row = webinar_stats_row(&mut client, &webinar);
    assert_eq!(row.get::<_, i64>(0), by_user.len() as i64, "viewers");
    assert_eq!(row.get::<_, i64>(1), sessions.len() as i64, "sessions");
    assert_eq!(row.get::<_, f64>(4), watched as f64, "watched seconds");
    assert_eq!(row.get::<_, i64>(6), peak, "peak");
    assert_eq!(
        row.get::<_, Option<f64>>(7),
        peak_at.map(|t| t as f64),
        "peak_at"
    );
    assert_eq!(row.get::<_, f64>(8), first as f64, "first entry");
    assert_eq!(row.get::<_, f64>(9), last as f64, "last sign of life");
}

#[test]
fn two_tabs_count_once() {
    // One viewer, two tabs open over the same hour, then a device switch that overlaps the
    // old session by ten minutes: the sum would say 2 h 50 min, the viewer watched 1 h 40 min.
    let mut client = shared_cluster("stats").supabase_database("two_tabs");
    let sessions = [
        Session {
            user: 1,
            entered: 0,
            heartbeat: Some(3600),
            exited: Some(3600),
        },
        Session {
            user: 1,
            entered: 0,
            heartbeat: Some(3600),
            exited: Some(3600),
        },
        Session {
            user: 1,
            entered: 3000,
            heartbeat: Some(6000),
            exited: None,
        },
    ];
    insert(&mut client, &uuid(7), &sessions);
    let (watched, summed): (f64, f64) = {
        let row = client
            .query_one(
                "SELECT w.watched_seconds,
                        (SELECT sum(extract(epoch FROM coalesce(exited_at, last_heartbeat_at) - entered_at))::float8
                           FROM webinar_sessions.webinar_user_sessions)
                   FROM webinar_sessions.watch_time AS w",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(summed, 10_200.0);
    assert_eq!(watched, 6_000.0);
}

#[test]
fn a_viewer_sees_only_their_own_watch_time_and_no_aggregates() {
    let mut admin = shared_cluster("stats").supabase_database("own_stats");
    let sessions = [
        Session {
            user: 1,
            entered: 0,
            heartbeat: Some(100),
            exited: None,
        },
        Session {
            user: 2,
            entered: 0,
            heartbeat: Some(200),
            exited: None,
        },
    ];
    insert(&mut admin, &uuid(7), &sessions);
    let mut api = shared_cluster("stats").connect_as("own_stats", "authenticator");
    let mut tx = begin_request(&mut api, "authenticated", Some(&claims_for(&uuid(1)))).unwrap();
    let mine: Vec<(String, f64)> = tx
        .query(
            "SELECT user_id::text, watched_seconds FROM webinar_sessions.watch_time",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(mine, [(uuid(1), 100.0)]);
    for denied in [
        "SELECT * FROM webinar_sessions.webinar_stats",
        "SELECT * FROM webinar_sessions.concurrency('00000000-0000-4000-8000-000000000007')",
        "SELECT * FROM webinar_sessions.attendance('00000000-0000-4000-8000-000000000007', now(), now() + interval '1 h')",
        "SELECT * FROM webinar_sessions.retention('00000000-0000-4000-8000-000000000007', now(), now() + interval '1 h')",
    ] {
        tx.batch_execute("SAVEPOINT s").unwrap();
        let err = tx.batch_execute(denied).unwrap_err();
        assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42501"), "{denied}: {err}");
        tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
}

/// 0.2.0 bug: across a daylight-saving change in the session's time zone, `concurrency`
/// labelled '1 day' buckets in calendar days (23 hours on 2025-03-09 in New York) while it
/// counted them in 24-hour steps, so every label after the change was an hour off its count.
#[test]
fn concurrency_labels_match_their_buckets_across_a_daylight_saving_change() {
    let mut client = shared_cluster("stats").supabase_database("dst_labels");
    client
        .batch_execute(
            "INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
             SELECT '00000000-0000-4000-8000-000000000009', '00000000-0000-4000-8000-000000000001',
                    'day-' || d, timestamptz '2025-03-07 10:00+00' + d * interval '24 hours',
                    NULL, timestamptz '2025-03-07 11:00+00' + d * interval '24 hours', 'left'
               FROM generate_series(0, 5) AS d;
             SET timezone = 'America/New_York';",
        )
        .unwrap();
    let rows = client
        .query(
            "SELECT to_char(bucket_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), viewers
               FROM webinar_sessions.concurrency('00000000-0000-4000-8000-000000000009', '1 day')
              ORDER BY bucket_start",
            &[],
        )
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: Vec<(String, i64)> = (7..=12)
        .map(|day| (format!("2025-03-{day:02} 00:00"), 1))
        .collect();
    assert_eq!(
        got, expected,
        "buckets are aligned to UTC midnight, one viewer each day"
    );
}

/// Found by adversarial review of the Rust analytics: inputs that must end in a clean error
/// (never a crash of the server or an internal XX000), and aggregates sharing one query.
#[test]
fn analytics_edge_inputs_end_in_clean_errors() {
    let mut client = shared_cluster("stats").supabase_database("edge_inputs");
    let code = |client: &mut Client, sql: &str| -> String {
        let error = client.batch_execute(sql).expect_err(sql);
        error
            .as_db_error()
            .map(|e| e.code().code().to_string())
            .unwrap_or_else(|| panic!("{sql}: not a database error: {error}"))
    };
    // A grid of a trillion points is refused, not allocated (that aborted the server).
    assert_eq!(
        code(
            &mut client,
            "SELECT count(*) FROM webinar_sessions._presence_grid('\\x'::bytea, now(), '1 minute', 1000000000000, true)"
        ),
        "22023"
    );
    client
        .batch_execute("SELECT 1")
        .expect("the server is still up");
    client
        .batch_execute(&format!(
            "INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, exited_at, exit_reason)
             VALUES ('{w}', '{u}', 'a', {BASE}, {BASE} + interval '100000 s', 'left')",
            w = uuid(7_001),
            u = uuid(1)
        ))
        .unwrap();
    // A bucket whose microseconds overflow 64 bits.
    assert_eq!(
        code(
            &mut client,
            &format!(
                "SELECT * FROM webinar_sessions.retention('{}', {BASE}, {BASE} + interval '1 hour', '106751992 days')",
                uuid(7_001)
            )
        ),
        "22023"
    );
    // 100,001 one-second buckets: over the documented 100,000.
    assert_eq!(
        code(
            &mut client,
            &format!(
                "SELECT count(*) FROM webinar_sessions.concurrency('{}', '1 second')",
                uuid(7_001)
            )
        ),
        "22023"
    );
    // Both aggregates in one query each see every session (the Rust build's; the hosted
    // edition has none: src/stats.rs).
    if edition() == Edition::Rust {
        let row = client
            .query_one(
                &format!(
                    "SELECT (webinar_sessions._presence_summary(user_id, started_at, ended_at))[2]::bigint,
                            length(webinar_sessions._presence_of(user_id, started_at, ended_at))
                       FROM webinar_sessions.session_spans WHERE webinar_id = '{}'",
                    uuid(7_001)
                ),
                &[],
            )
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (1, 32));
    }
    // An infinite session time: the table refuses it (wus_times_finite), so no such row can
    // make the figures fail (in 0.6.2 it did, with 22008, for every webinar at once).
    assert_eq!(
        code(
            &mut client,
            &format!(
                "INSERT INTO webinar_sessions.webinar_user_sessions
                     (webinar_id, user_id, session_id, entered_at, exited_at, exit_reason)
                 VALUES ('{}', '{}', 'b', '-infinity', {BASE}, 'left')",
                uuid(7_002),
                uuid(1)
            )
        ),
        "23514"
    );
}

/// One webinar's figures among many read only that webinar's sessions: the filter on
/// webinar_id reaches the partial indexes of both halves of the table (open and closed
/// sessions), wherever webinar_stats, watch_time or presence read them. The table has no
/// index on webinar_id alone, so a query that loses the halves scans every webinar's rows.
#[test]
fn one_webinars_figures_read_only_its_own_sessions() {
    let mut client = shared_cluster("stats").supabase_database("many_webinars");
    client
        .batch_execute(
            "INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
             SELECT ('00000000-0000-4000-a000-' || lpad(to_hex(w), 12, '0'))::uuid,
                    ('00000000-0000-4000-b000-' || lpad(to_hex(u), 12, '0'))::uuid,
                    'tab', now() - interval '1 hour', now() - interval '30 minutes',
                    CASE WHEN u % 5 = 0 THEN NULL ELSE now() - interval '20 minutes' END,
                    CASE WHEN u % 5 = 0 THEN NULL ELSE 'left' END
               FROM generate_series(1, 300) AS w, generate_series(1, 100) AS u;
             ANALYZE webinar_sessions.webinar_user_sessions",
        )
        .unwrap();
    let webinar = "00000000-0000-4000-a000-000000000007";
    for query in [
        "SELECT * FROM webinar_sessions.webinar_stats WHERE webinar_id = $1::text::uuid",
        "SELECT * FROM webinar_sessions.watch_time WHERE webinar_id = $1::text::uuid",
        "SELECT * FROM webinar_sessions.presence WHERE webinar_id = $1::text::uuid",
    ] {
        let plan: String = client
            .query(&format!("EXPLAIN {query}"), &[&webinar])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0) + "\n")
            .collect();
        assert!(
            !plan.contains("Seq Scan on webinar_user_sessions"),
            "{query} scans every webinar's sessions:\n{plan}"
        );
        assert!(plan.contains("Index"), "{query}:\n{plan}");
    }
    let viewers: i64 = client
        .query_one(
            "SELECT viewers FROM webinar_sessions.webinar_stats WHERE webinar_id = $1::text::uuid",
            &[&webinar],
        )
        .unwrap()
        .get(0);
    assert_eq!(viewers, 100);
}
