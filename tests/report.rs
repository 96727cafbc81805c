//! The report API: hosts and presenters (webinar_hosts) left out of the audience figures,
//! live_viewers for every signed-in user, webinar_report and webinar_summary for a webinar's
//! hosts, all through PostgREST-shaped requests (GET, read-only, CSV included).

use harness::*;
use postgres::Client;
use serde_json::{json, Value};
use std::time::Duration;

fn database(name: &str) -> (Client, Client) {
    let cluster = shared_cluster("report");
    let admin = cluster.supabase_database(name);
    let api = cluster.connect_as(name, "authenticator");
    (admin, api)
}

const BASE: &str = "timestamptz '2026-03-01 10:00:00+00'";

/// A closed session of `user` in `webinar` from BASE + `from` s to BASE + `to` s.
fn closed(admin: &mut Client, webinar: &str, user: &str, tab: &str, from: i32, to: i32) {
    admin
        .execute(
            &format!(
                "INSERT INTO webinar_sessions.webinar_user_sessions
                     (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
                 VALUES ($1::text::uuid, $2::text::uuid, $3, {BASE} + $4 * interval '1 s',
                         {BASE} + $5 * interval '1 s', {BASE} + $5 * interval '1 s', 'left')"
            ),
            &[&webinar, &user, &tab, &f64::from(from), &f64::from(to)],
        )
        .unwrap();
}

fn host(admin: &mut Client, webinar: &str, user: &str, role: &str) {
    admin
        .execute(
            "INSERT INTO webinar_sessions.webinar_hosts (webinar_id, user_id, role)
             VALUES ($1::text::uuid, $2::text::uuid, $3)",
            &[&webinar, &user, &role],
        )
        .unwrap();
}

fn enter(api: &mut Client, claims: &str, webinar: &str, tab: &str) -> Value {
    rpc(
        api,
        "authenticated",
        Some(claims),
        "public.enter_webinar",
        &[("webinar_id", webinar), ("session_id", tab)],
    )
    .unwrap()
}

/// `supabase.rpc('live_viewers', { webinar_id }, { get: true })`: a read-only request.
fn live_viewers(api: &mut Client, claims: &str, webinar: &str) -> i64 {
    let mut tx = begin_request(api, "authenticated", Some(claims)).unwrap();
    tx.batch_execute("SET TRANSACTION READ ONLY").unwrap();
    let n: i64 = tx
        .query_one(
            "SELECT public.live_viewers(webinar_id => $1::text::uuid)",
            &[&webinar],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    n
}

fn report(
    api: &mut Client,
    role: &str,
    claims: Option<&str>,
    webinar: &str,
) -> Result<Value, Box<postgres::error::DbError>> {
    rpc_rows(
        api,
        role,
        claims,
        "public.webinar_report",
        &[("webinar_id", json!(webinar))],
    )
}

/// One webinar: viewer A in three sessions (two overlapping, then a rejoin), viewer B for ten
/// seconds, host H and presenter P for the whole hour.
fn seed(admin: &mut Client, webinar: &str) -> (String, String, String, String) {
    let (a, b, h, p) = (uuid(1), uuid(2), uuid(3), uuid(4));
    closed(admin, webinar, &a, "tab-1", 0, 60);
    closed(admin, webinar, &a, "tab-2", 30, 90);
    closed(admin, webinar, &a, "tab-3", 200, 260);
    closed(admin, webinar, &b, "tab-1", 0, 10);
    closed(admin, webinar, &h, "tab-1", -600, 3600);
    closed(admin, webinar, &p, "tab-1", -300, 3000);
    host(admin, webinar, &h, "host");
    host(admin, webinar, &p, "presenter");
    (a, b, h, p)
}

#[test]
fn hosts_and_presenters_are_left_out_of_the_audience_figures() {
    let (mut admin, _) = database("audience");
    let webinar = uuid(100);
    seed(&mut admin, &webinar);
    let row = admin
        .query_one(
            "SELECT viewers, sessions, peak_concurrent_viewers, total_watched_seconds,
                    first_entered_at = timestamptz '2026-03-01 10:00:00+00',
                    last_seen_at = timestamptz '2026-03-01 10:04:20+00'
               FROM webinar_sessions.webinar_stats WHERE webinar_id = $1::text::uuid",
            &[&webinar],
        )
        .unwrap();
    let figures: (i64, i64, i64, f64, bool, bool) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    // A: 0..90 and 200..260 (150 s); B: 0..10 (10 s); the host's and presenter's hours are not there.
    assert_eq!(figures, (2, 4, 2, 160.0, true, true));
    let attendance: Vec<String> = admin
        .query(
            &format!(
                "SELECT user_id::text FROM webinar_sessions.attendance($1::text::uuid, {BASE}, {BASE} + interval '1 hour')"
            ),
            &[&webinar],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(attendance, [uuid(1), uuid(2)]);
    let peak: i64 = admin
        .query_one(
            "SELECT max(viewers) FROM webinar_sessions.concurrency($1::text::uuid, '1 minute')",
            &[&webinar],
        )
        .unwrap()
        .get(0);
    assert_eq!(peak, 2, "concurrency counts the audience only");
}

#[test]
fn the_report_gives_each_person_their_sessions_stretches_and_attendance() {
    let (mut admin, mut api) = database("report_rows");
    let webinar = uuid(100);
    let (a, b, h, p) = seed(&mut admin, &webinar);
    // B is back and watching now.
    enter(&mut api, &claims_for(&b), &webinar, "tab-2");
    let rows = report(&mut api, "authenticated", Some(&claims_for(&h)), &webinar).unwrap();
    let rows = rows.as_array().unwrap();
    let by_user = |u: &str| {
        rows.iter()
            .find(|r| r["user_id"] == u)
            .unwrap_or_else(|| panic!("{u} missing: {rows:?}"))
    };
    assert_eq!(rows.len(), 4, "{rows:?}");
    // The audience first, then hosts and presenters.
    assert_eq!(rows[0]["role"], "viewer");
    assert_eq!(rows[1]["role"], "viewer");
    let ra = by_user(&a);
    assert_eq!(
        (
            ra["watched_seconds"].as_f64(),
            ra["sessions"].as_i64(),
            ra["rejoins"].as_i64()
        ),
        (Some(150.0), Some(3), Some(1))
    );
    assert_eq!(ra["first_entered_at"], "2026-03-01T10:00:00+00:00");
    assert_eq!(ra["last_seen_at"], "2026-03-01T10:04:20+00:00");
    // The default window runs from the audience's first entry (B's open session is now, so
    // to now): A's 150 s are far below half of it, B's even more.
    assert_eq!(
        (ra["attended"].as_bool(), ra["watching_now"].as_bool()),
        (Some(false), Some(false))
    );
    let rb = by_user(&b);
    assert_eq!(
        (rb["sessions"].as_i64(), rb["watching_now"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(by_user(&h)["role"], "host");
    assert_eq!(by_user(&p)["role"], "presenter");
    // A window the caller gives: [0, 260) s, of which A was present 150 s (0.58) and B 10 s.
    let rows = rpc_rows(
        &mut api,
        "authenticated",
        Some(&claims_for(&h)),
        "public.webinar_report",
        &[
            ("webinar_id", json!(webinar)),
            ("min_ratio", json!(0.5)),
            ("starts_at", json!("2026-03-01T10:00:00Z")),
            ("ends_at", json!("2026-03-01T10:04:20Z")),
        ],
    )
    .unwrap();
    let attended: Vec<(String, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["role"] == "viewer")
        .map(|r| {
            (
                r["user_id"].as_str().unwrap().to_string(),
                r["attended"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(attended, [(a.clone(), true), (b.clone(), false)]);
    // The summary is webinar_stats' row.
    let summary = rpc_rows(
        &mut api,
        "authenticated",
        Some(&claims_for(&h)),
        "public.webinar_summary",
        &[("webinar_id", json!(webinar))],
    )
    .unwrap();
    let stats: String = admin
        .query_one(
            "SELECT json_agg(s)::text FROM webinar_sessions.webinar_stats AS s WHERE webinar_id = $1::text::uuid",
            &[&webinar],
        )
        .unwrap()
        .get(0);
    assert_eq!(summary, serde_json::from_str::<Value>(&stats).unwrap());
}

#[test]
fn only_hosts_and_service_role_read_a_report() {
    let (mut admin, mut api) = database("report_access");
    let (webinar, other) = (uuid(100), uuid(200));
    let (a, _, h, p) = seed(&mut admin, &webinar);
    host(&mut admin, &other, &a, "host");
    let allowed = report(&mut api, "service_role", None, &webinar).unwrap();
    assert_eq!(allowed.as_array().unwrap().len(), 4);
    for (who, claims) in [
        ("a viewer of the webinar", claims_for(&a)),
        ("its presenter", claims_for(&p)),
        ("the host of another webinar", claims_for(&a)),
        ("a stranger", claims_for(&uuid(99))),
    ] {
        for function in ["public.webinar_report", "public.webinar_summary"] {
            let e = rpc_rows(
                &mut api,
                "authenticated",
                Some(&claims),
                function,
                &[("webinar_id", json!(webinar))],
            )
            .expect_err(who);
            assert_eq!(e.code().code(), "42501", "{who} {function}: {e}");
            assert!(e.message().contains("only the hosts"), "{who}: {e}");
        }
    }
    let e = report(&mut api, "anon", None, &webinar).expect_err("anon");
    assert_eq!(e.code().code(), "42501");
    // The host reads it, and a host of both webinars only what is theirs.
    let rows = report(&mut api, "authenticated", Some(&claims_for(&h)), &webinar).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4);
    let theirs = report(&mut api, "authenticated", Some(&claims_for(&a)), &other).unwrap();
    assert_eq!(theirs, json!([]));
    // Bad input: named, with its SQLSTATE.
    let e = rpc_rows(
        &mut api,
        "service_role",
        None,
        "public.webinar_report",
        &[("webinar_id", json!(webinar)), ("min_ratio", json!(2))],
    )
    .unwrap_err();
    assert_eq!(
        (e.code().code(), e.message().contains("min_ratio")),
        ("22023", true),
        "{e}"
    );
    let e = rpc_rows(
        &mut api,
        "service_role",
        None,
        "public.webinar_report",
        &[("webinar_id", Value::Null)],
    )
    .unwrap_err();
    assert_eq!(
        (e.code().code(), e.message().contains("webinar_id")),
        ("22004", true),
        "{e}"
    );
}

#[test]
fn the_report_downloads_as_csv_through_a_get() {
    let (mut admin, mut api) = database("report_csv");
    let webinar = uuid(100);
    let (_, _, h, _) = seed(&mut admin, &webinar);
    let csv = request_csv(
        &mut api,
        "authenticated",
        Some(&claims_for(&h)),
        "public.webinar_report",
        &[("webinar_id", json!(webinar))],
    )
    .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("user_id,role,first_entered_at,last_seen_at,watched_seconds,sessions,rejoins,attended,watching_now")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows.iter().all(|r| r.len() == 9), "{csv}");
    assert_eq!(rows[0][0], uuid(1));
    assert_eq!(
        (rows[0][4], rows[0][5], rows[0][6]),
        ("150", "3", "1"),
        "{csv}"
    );
}

#[test]
fn live_viewers_counts_the_audience_watching_now_for_every_signed_in_user() {
    let (mut admin, mut api) = database("live");
    let webinar = uuid(100);
    let host_user = uuid(3);
    host(&mut admin, &webinar, &host_user, "host");
    // Two viewers (one in two tabs), an anonymous sign-in (a sub and the authenticated role,
    // as Supabase issues them), and the host.
    let anonymous = uuid(77);
    let anonymous_claims = format!(
        r#"{{"sub":"{anonymous}","role":"authenticated","aud":"authenticated","is_anonymous":true}}"#
    );
    for (claims, tab) in [
        (claims_for(&uuid(1)), "tab-1"),
        (claims_for(&uuid(1)), "tab-2"),
        (claims_for(&uuid(2)), "tab-1"),
        (anonymous_claims.clone(), "tab-1"),
        (claims_for(&host_user), "tab-1"),
    ] {
        enter(&mut api, &claims, &webinar, tab);
    }
    let alive = rpc(
        &mut api,
        "authenticated",
        Some(&anonymous_claims),
        "public.heartbeat",
        &[("webinar_id", &webinar), ("session_id", "tab-1")],
    )
    .unwrap();
    assert_eq!(alive["status"], "alive");
    // Counted here (no count from the worker yet in this database), by anyone signed in.
    let stranger = claims_for(&uuid(99));
    assert_eq!(live_viewers(&mut api, &stranger, &webinar), 3);
    assert_eq!(live_viewers(&mut api, &anonymous_claims, &uuid(555)), 0);
    // The worker's count, once there is one, is what is served: a new viewer shows at the
    // next refresh.
    admin
        .execute("SELECT webinar_sessions._refresh_live_counts()", &[])
        .unwrap();
    enter(&mut api, &claims_for(&uuid(4)), &webinar, "tab-1");
    assert_eq!(
        live_viewers(&mut api, &stranger, &webinar),
        3,
        "served from the count"
    );
    admin
        .execute("SELECT webinar_sessions._refresh_live_counts()", &[])
        .unwrap();
    assert_eq!(live_viewers(&mut api, &stranger, &webinar), 4);
    // A viewer who leaves, and one swept, stop counting.
    rpc(
        &mut api,
        "authenticated",
        Some(&claims_for(&uuid(2))),
        "public.leave_webinar",
        &[("webinar_id", &webinar), ("session_id", "tab-1")],
    )
    .unwrap();
    admin
        .execute("SELECT webinar_sessions._refresh_live_counts()", &[])
        .unwrap();
    assert_eq!(live_viewers(&mut api, &stranger, &webinar), 3);
    // anon (not signed in) may not ask.
    let mut tx = begin_request(&mut api, "anon", None).unwrap();
    let e = tx
        .query_one("SELECT public.live_viewers($1::text::uuid)", &[&webinar])
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
}

#[test]
fn the_worker_refreshes_the_live_counts_after_its_flushes() {
    let cluster = Cluster::start(
        "report-worker",
        &[
            "webinar_sessions.database = 'live_worker'",
            "webinar_sessions.flush_interval = 1",
            "webinar_sessions.sweeper_enabled = off",
        ],
    );
    let mut admin = cluster.supabase_database("live_worker");
    let mut api = cluster.connect_as("live_worker", "authenticator");
    let webinar = uuid(100);
    for viewer in 1..=3 {
        enter(&mut api, &claims_for(&uuid(viewer)), &webinar, "tab");
    }
    let counted = eventually(Duration::from_secs(20), || {
        admin
            .query_opt(
                "SELECT viewers FROM webinar_sessions.live_counts WHERE webinar_id = $1::text::uuid",
                &[&webinar],
            )
            .unwrap()
            .is_some_and(|r| r.get::<_, i64>(0) == 3)
    });
    assert!(counted, "the worker never counted the webinar's viewers");
    assert_eq!(live_viewers(&mut api, &claims_for(&uuid(9)), &webinar), 3);
}
