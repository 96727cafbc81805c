//! Hostile input, and a model-based property test.
//!
//! Every call here is a PostgREST-shaped request with a JSON body (`harness::postgrest`):
//! JSON `null` becomes SQL NULL, JSON arrays SQL arrays, and bad values fail in the casts.
//! The bad-input cases of the whole API are one table, `bad_calls`, in this file.

use harness::*;
use postgres::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Both tables, every row in full, with each row version's ctid and xmin: any write that
/// commits (even one rewriting a row with the same values) changes this text.
fn full_dump(admin: &mut Client) -> String {
    admin
        .query_one(
            "SELECT (SELECT coalesce(string_agg(format('%s %s %s', s.ctid, s.xmin, s), E'\\n' ORDER BY s.id), '')
                       FROM webinar_sessions.webinar_user_sessions AS s)
                    || E'\\n-- sweep_runs\\n' ||
                    (SELECT coalesce(string_agg(format('%s %s %s', r.ctid, r.xmin, r), E'\\n' ORDER BY r.id), '')
                       FROM webinar_sessions.sweep_runs AS r)",
            &[],
        )
        .unwrap()
        .get(0)
}

fn spoofed_claims(user: &str) -> String {
    format!(r#"{{"sub":"{user}","role":"service_role","aud":"authenticated"}}"#)
}

fn key_args(webinar: &str, session: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("webinar_id", json!(webinar)),
        ("session_id", json!(session)),
    ]
}

fn key_user_args(webinar: &str, session: &str, user: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("webinar_id", json!(webinar)),
        ("session_id", json!(session)),
        ("user_id", json!(user)),
    ]
}

const NIL: &str = "00000000-0000-0000-0000-000000000000";

// ---------------------------------------------------------------------------------------
// 1. Hostile input, table-driven.
// ---------------------------------------------------------------------------------------

/// (description, role, claims, function, args, SQLSTATE, substring of the message)
struct Bad {
    what: String,
    role: &'static str,
    claims: Option<String>,
    function: &'static str,
    args: Vec<(&'static str, Value)>,
    code: &'static str,
    mention: String,
}

#[allow(clippy::too_many_arguments)]
fn bad(
    what: impl Into<String>,
    role: &'static str,
    claims: Option<&str>,
    function: &'static str,
    args: Vec<(&'static str, Value)>,
    code: &'static str,
    mention: impl Into<String>,
) -> Bad {
    Bad {
        what: what.into(),
        role,
        claims: claims.map(str::to_string),
        function,
        args,
        code,
        mention: mention.into(),
    }
}

/// Seeds a few real sessions of every kind, so that "unchanged" means something: active
/// with and without a heartbeat, left, swept, and one active session that is an hour old
/// (any sweep that got through would close it).
fn seed(admin: &mut Client, api: &mut Client, webinar: &str, a: &str, b: &str) {
    let ca = claims_for(a);
    let cb = claims_for(b);
    for (claims, function, session) in [
        (&ca, "public.enter_webinar", "tab-a"),
        (&ca, "public.heartbeat", "tab-a"),
        (&ca, "public.enter_webinar", "tab-left"),
        (&ca, "public.leave_webinar", "tab-left"),
        (&cb, "public.enter_webinar", "tab-b"),
        (&cb, "public.heartbeat", "tab-swept"),
        (&ca, "public.enter_webinar", "tab-stale"),
    ] {
        rpc_json(
            api,
            "authenticated",
            Some(claims),
            function,
            &key_args(webinar, session),
        )
        .unwrap();
    }
    admin
        .batch_execute(
            // (In UTC: Citus takes no STABLE timestamptz - interval on columns in UPDATE.)
            "UPDATE webinar_sessions.webinar_user_sessions
                SET entered_at = ((entered_at AT TIME ZONE 'UTC') - interval '2 hours') AT TIME ZONE 'UTC',
                    last_heartbeat_at = ((last_heartbeat_at AT TIME ZONE 'UTC') - interval '2 hours') AT TIME ZONE 'UTC'
              WHERE session_id IN ('tab-swept', 'tab-stale')",
        )
        .unwrap();
    // Both aged sessions are swept now; tab-stale is opened again below.
    let swept = rpc_rows(
        api,
        "service_role",
        None,
        "webinar_sessions.sweep_stale_sessions",
        &[("stale_after", json!("90 minutes"))],
    )
    .unwrap();
    assert_eq!(
        swept,
        json!([2]),
        "both aged sessions are swept in the seed"
    );
    // Re-open tab-stale and age it by one hour: active and stale from now on.
    rpc_json(
        api,
        "authenticated",
        Some(&ca),
        "public.enter_webinar",
        &key_args(webinar, "tab-stale"),
    )
    .unwrap();
    admin
        .batch_execute(
            "UPDATE webinar_sessions.webinar_user_sessions
                SET entered_at = ((entered_at AT TIME ZONE 'UTC') - interval '1 hour') AT TIME ZONE 'UTC'
              WHERE session_id = 'tab-stale' AND exited_at IS NULL",
        )
        .unwrap();
    let counts: (i64, i64, i64) = {
        let row = admin
            .query_one(
                // (Sub-selects side by side: Citus does not push one in a target list down
                // with an aggregate.)
                "SELECT (SELECT count(*) FROM webinar_sessions.webinar_user_sessions),
                        (SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL),
                        (SELECT count(*) FROM webinar_sessions.sweep_runs)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(counts, (6, 3, 1), "seeded rows, active rows, sweep runs");
}

fn bad_calls(webinar: &str, a: &str, b: &str, server_version: i32) -> Vec<Bad> {
    let ca = claims_for(a);
    let ca = Some(ca.as_str());
    let spoof = spoofed_claims(a);
    let spoof = Some(spoof.as_str());
    let svc: Option<&str> = Some(r#"{"role":"service_role"}"#);
    let w = || json!(webinar);
    let null = || Value::Null;
    let ten_kb = "x".repeat(10 * 1024);
    let ten_kb_multibyte = "é".repeat(5 * 1024); // 10 kB of UTF-8, 5120 characters
    let long_129 = "y".repeat(129);
    let batch = |ws: Value, ss: Value, us: Value| {
        vec![("webinar_ids", ws), ("session_ids", ss), ("user_ids", us)]
    };
    let window = |starts: Value, ends: Value| vec![("starts_at", starts), ("ends_at", ends)];
    let with = |mut v: Vec<(&'static str, Value)>, extra: Vec<(&'static str, Value)>| {
        v.extend(extra);
        v
    };
    let too_many: Vec<String> = (0..10_001).map(|i| format!("s{i}")).collect();

    let client_fns = [
        "public.enter_webinar",
        "public.heartbeat",
        "public.leave_webinar",
        "webinar_sessions.enter",
        "webinar_sessions.heartbeat",
        "webinar_sessions.leave",
    ];
    let mut rows = Vec::new();

    // NULL in every argument of every client function.
    for f in client_fns {
        rows.push(bad(
            format!("{f}: webinar_id null"),
            "authenticated",
            ca,
            f,
            vec![("webinar_id", null()), ("session_id", json!("tab-a"))],
            "22004",
            "webinar_id must not be null",
        ));
        rows.push(bad(
            format!("{f}: session_id null"),
            "authenticated",
            ca,
            f,
            vec![("webinar_id", w()), ("session_id", null())],
            "22004",
            "session_id must not be null",
        ));
    }
    // user_id NULL is the caller's own id; with no sub there is nobody to act for.
    for f in [
        "webinar_sessions.enter",
        "webinar_sessions.heartbeat",
        "webinar_sessions.leave",
    ] {
        rows.push(bad(
            format!("{f}: service_role, user_id null, no sub"),
            "service_role",
            svc,
            f,
            with(key_args(webinar, "tab-a"), vec![("user_id", null())]),
            "42501",
            "request.jwt.claims has no sub claim",
        ));
    }

    // Session ids: empty, too long, control characters; SQL fragments carrying one.
    let session_cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "session_id must not be empty"),
        (
            "10 kB",
            ten_kb.clone(),
            "session_id is 10240 characters long",
        ),
        (
            "10 kB multibyte",
            ten_kb_multibyte.clone(),
            "session_id is 5120 characters long",
        ),
        ("129 characters", long_129.clone(), "session_id is 129"),
        ("newline", "tab\n1".into(), "(U+000A at character 4)"),
        ("tab", "tab\t1".into(), "(U+0009 at character 4)"),
        ("\\x01", "\u{1}".into(), "(U+0001 at character 1)"),
        ("carriage return", "tab\r".into(), "U+000D"),
        ("DEL", "tab\u{7f}".into(), "U+007F"),
        ("C1 NEL", "tab\u{85}".into(), "U+0085"),
        ("ANSI escape", "\u{1b}[31mred".into(), "U+001B"),
        (
            "SQL fragment with newline",
            "'; DROP TABLE webinar_sessions.webinar_user_sessions; --\n".into(),
            "session_id must not contain control characters",
        ),
        (
            "dollar quote with tab",
            "$$\t$$; SELECT 1".into(),
            "session_id must not contain control characters",
        ),
        (
            "backslash-n as a real newline after a backslash",
            "\\\n".into(),
            "U+000A at character 2",
        ),
    ];
    for (i, (label, session, mention)) in session_cases.into_iter().enumerate() {
        let f = client_fns[i % client_fns.len()];
        rows.push(bad(
            format!("{f}: session_id {label}"),
            "authenticated",
            ca,
            f,
            key_args(webinar, &session),
            "22023",
            mention,
        ));
    }
    // NUL cannot be in a text value: PostgreSQL refuses it before any function runs, so the
    // message is PostgreSQL's and names no argument.
    rows.push(bad(
        "public.heartbeat: session_id with NUL in the JSON body (\\u0000)",
        "authenticated",
        ca,
        "public.heartbeat",
        key_args(webinar, "tab\u{0}a"),
        "22P05",
        "unsupported Unicode escape sequence",
    ));

    // Uuids: malformed, nil.
    for (label, value, code, mention) in [
        ("not a uuid", json!("not-a-uuid"), "22P02", "\"not-a-uuid\""),
        (
            "SQL fragment",
            json!("'; DROP TABLE x; --"),
            "22P02",
            "DROP TABLE x",
        ),
        (
            "35 hex digits",
            json!("00000000-0000-4000-8000-00000000001"),
            "22P02",
            "00000000001",
        ),
        ("a JSON number", json!(42), "22P02", "\"42\""),
        (
            "nil",
            json!(NIL),
            "22023",
            "webinar_id must not be the nil uuid",
        ),
    ] {
        rows.push(bad(
            format!("public.enter_webinar: webinar_id {label}"),
            "authenticated",
            ca,
            "public.enter_webinar",
            vec![("webinar_id", value), ("session_id", json!("tab-a"))],
            code,
            mention,
        ));
    }
    rows.push(bad(
        "public.leave_webinar: webinar_id nil",
        "authenticated",
        ca,
        "public.leave_webinar",
        key_args(NIL, "tab-a"),
        "22023",
        "webinar_id must not be the nil uuid",
    ));
    rows.push(bad(
        "webinar_sessions.heartbeat: user_id not a uuid",
        "authenticated",
        ca,
        "webinar_sessions.heartbeat",
        key_user_args(webinar, "tab-a", "bob"),
        "22P02",
        "\"bob\"",
    ));
    rows.push(bad(
        "webinar_sessions.enter: service_role, user_id nil",
        "service_role",
        svc,
        "webinar_sessions.enter",
        key_user_args(webinar, "tab-a", NIL),
        "22023",
        "user_id must not be the nil uuid",
    ));
    rows.push(bad(
        "webinar_sessions.heartbeat: service_role with a sub, user_id nil",
        "service_role",
        ca,
        "webinar_sessions.heartbeat",
        key_user_args(webinar, "tab-a", NIL),
        "22023",
        "user_id must not be the nil uuid",
    ));

    // Identity: missing, malformed, spoofed.
    let claim_cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no claims", None, "request.jwt.claims has no sub claim"),
        (
            "malformed JSON",
            Some(r#"{"sub":"#.into()),
            "request.jwt.claims is not valid JSON",
        ),
        (
            "JSON array",
            Some("[]".into()),
            "request.jwt.claims is not a JSON object",
        ),
        (
            "JSON null",
            Some("null".into()),
            "request.jwt.claims is not a JSON object",
        ),
        (
            "sub not a uuid",
            Some(r#"{"sub":"alice"}"#.into()),
            "the sub claim \"alice\" is not a uuid",
        ),
        (
            "empty sub",
            Some(r#"{"sub":""}"#.into()),
            "the sub claim \"\" is not a uuid",
        ),
        (
            "sub a number",
            Some(r#"{"sub":42}"#.into()),
            "the sub claim is not a string",
        ),
        (
            "sub a number beyond f64",
            Some(r#"{"sub":1e400}"#.into()),
            "the sub claim is not a string",
        ),
        (
            "nil sub",
            Some(format!(r#"{{"sub":"{NIL}"}}"#)),
            "the sub claim is the nil uuid",
        ),
        (
            "sub with SQL",
            Some(format!(r#"{{"sub":"{a}' OR '1'='1"}}"#)),
            "is not a uuid",
        ),
        (
            "sub a NUL character",
            Some(r#"{"sub":"\u0000"}"#.into()),
            "the sub claim \"\\u{0}\" is not a uuid",
        ),
        (
            "sub with quotes, a backslash and an escape character",
            Some(r#"{"sub":"a\"b\\c\u001b"}"#.into()),
            "the sub claim \"a\\\"b\\\\c\\u{1b}\" is not a uuid",
        ),
        (
            "sub with a trailing newline",
            Some(format!(r#"{{"sub":"{a}\n"}}"#)),
            "is not a uuid",
        ),
        (
            "role service_role claimed, no sub",
            Some(r#"{"role":"service_role"}"#.into()),
            "request.jwt.claims has no sub claim",
        ),
    ];
    for (i, (label, claims, mention)) in claim_cases.into_iter().enumerate() {
        let f = [
            "public.enter_webinar",
            "public.heartbeat",
            "public.leave_webinar",
        ][i % 3];
        rows.push(bad(
            format!("{f}: {label}"),
            "authenticated",
            claims.as_deref(),
            f,
            key_args(webinar, "tab-a"),
            "42501",
            mention,
        ));
    }
    for f in [
        "webinar_sessions.enter",
        "webinar_sessions.heartbeat",
        "webinar_sessions.leave",
    ] {
        rows.push(bad(
            format!("{f}: authenticated A claiming role service_role acts for B"),
            "authenticated",
            spoof,
            f,
            key_user_args(webinar, "tab-b", b),
            "42501",
            "user_id names another user",
        ));
    }
    rows.push(bad(
        "webinar_sessions.leave: A's claims, user_id of B",
        "authenticated",
        ca,
        "webinar_sessions.leave",
        key_user_args(webinar, "tab-b", b),
        "42501",
        "user_id names another user",
    ));
    rows.push(bad(
        "webinar_sessions.heartbeat: no claims, user_id given",
        "authenticated",
        None,
        "webinar_sessions.heartbeat",
        key_user_args(webinar, "tab-a", a),
        "42501",
        "user_id may be given only by service_role",
    ));
    for f in [
        "public.enter_webinar",
        "public.heartbeat",
        "public.leave_webinar",
    ] {
        rows.push(bad(
            format!("{f}: anon"),
            "anon",
            ca,
            f,
            key_args(webinar, "tab-a"),
            "42501",
            format!("permission denied for function {}", &f[7..]),
        ));
    }
    rows.push(bad(
        "webinar_sessions.leave: anon for B",
        "anon",
        None,
        "webinar_sessions.leave",
        key_user_args(webinar, "tab-b", b),
        "42501",
        // anon has no USAGE on the schema: refused before the function is even looked at.
        "permission denied for schema webinar_sessions",
    ));
    rows.push(bad(
        "public.enter_webinar: a client passes user_id",
        "authenticated",
        ca,
        "public.enter_webinar",
        key_user_args(webinar, "tab-b", b),
        "42883",
        "public.enter_webinar(webinar_id => uuid, session_id => text, user_id => uuid)",
    ));
    rows.push(bad(
        "public.heartbeat: session_id missing",
        "authenticated",
        ca,
        "public.heartbeat",
        vec![("webinar_id", w())],
        "42883",
        "public.heartbeat(webinar_id => uuid)",
    ));

    // heartbeat_batch.
    let ws = |n: usize| json!(vec![webinar; n]);
    let us = |n: usize| json!(vec![b; n]);
    for (label, args, code, mention) in [
        (
            "webinar_ids null",
            batch(null(), json!(["tab-b"]), us(1)),
            "22004",
            "webinar_ids must not be null",
        ),
        (
            "session_ids null",
            batch(ws(1), null(), us(1)),
            "22004",
            "session_ids must not be null",
        ),
        (
            "user_ids null",
            batch(ws(1), json!(["tab-b"]), null()),
            "22004",
            "user_ids must not be null",
        ),
        (
            "a NULL webinar id",
            batch(json!([webinar, null]), json!(["tab-b", "tab-c"]), us(2)),
            "22004",
            "webinar_ids[2] must not be null",
        ),
        (
            "a NULL session id",
            batch(ws(2), json!(["tab-b", null]), us(2)),
            "22004",
            "session_ids[2] must not be null",
        ),
        (
            "a NULL user id",
            batch(ws(2), json!(["tab-b", "tab-c"]), json!([b, null])),
            "22004",
            "user_ids[2] must not be null",
        ),
        (
            "unequal lengths",
            batch(ws(1), json!(["tab-b", "tab-c"]), us(1)),
            "22023",
            "(got 1, 2 and 1)",
        ),
        (
            "empty webinar_ids",
            batch(json!([]), json!(["tab-b"]), us(1)),
            "22023",
            "(got 0, 1 and 1)",
        ),
        (
            "10,001 sessions",
            batch(ws(10_001), json!(too_many), us(10_001)),
            "22023",
            "webinar_ids holds 10001 sessions",
        ),
        (
            "nil webinar id",
            batch(json!([NIL]), json!(["tab-b"]), us(1)),
            "22023",
            "webinar_ids[1] must not be the nil uuid",
        ),
        (
            "nil user id",
            batch(ws(2), json!(["tab-b", "tab-c"]), json!([b, NIL])),
            "22023",
            "user_ids[2] must not be the nil uuid",
        ),
        (
            "empty session id",
            batch(ws(3), json!(["tab-b", "tab-c", ""]), us(3)),
            "22023",
            "session_ids[3] must not be empty",
        ),
        (
            "10 kB session id",
            batch(ws(1), json!([ten_kb]), us(1)),
            "22023",
            "session_ids[1] is 10240 characters long",
        ),
        (
            "control character",
            batch(ws(2), json!(["tab-b", "tab\u{1}"]), us(2)),
            "22023",
            "session_ids[2] must not contain control characters",
        ),
        (
            "malformed uuid",
            batch(json!([webinar, "nope"]), json!(["tab-b", "c"]), us(2)),
            "22P02",
            "\"nope\"",
        ),
    ] {
        rows.push(bad(
            format!("heartbeat_batch: {label}"),
            "service_role",
            svc,
            "webinar_sessions.heartbeat_batch",
            args,
            code,
            mention,
        ));
    }
    rows.push(bad(
        "heartbeat_batch: called by authenticated",
        "authenticated",
        ca,
        "webinar_sessions.heartbeat_batch",
        batch(ws(1), json!(["tab-a"]), json!([a])),
        "42501",
        "permission denied for function heartbeat_batch",
    ));

    // sweep_stale_sessions.
    for (label, value, code, mention) in [
        ("zero", "0", "22023", "stale_after must be positive"),
        (
            "negative",
            "-5 minutes",
            "22023",
            "stale_after must be positive",
        ),
        (
            "months minus more days",
            "1 mon -40 days",
            "22023",
            "stale_after must be positive",
        ),
        (
            "366 days",
            "366 days",
            "22023",
            "stale_after must be at most 365 days",
        ),
        (
            "ten years",
            "10 years",
            "22023",
            "stale_after must be at most 365 days",
        ),
        // now() minus these is out of the timestamp range (before 4713 BC, after 294276 AD).
        (
            "7000 years",
            "7000 years",
            "22023",
            "stale_after must be at most 365 days (got 7000 years)",
        ),
        (
            "minus 300000 years",
            "-300000 years",
            "22023",
            "stale_after must be positive",
        ),
        ("not an interval", "soon", "22007", "\"soon\""),
    ]
    .into_iter()
    .chain(infinite_intervals(server_version))
    {
        rows.push(bad(
            format!("sweep_stale_sessions: stale_after {label}"),
            "service_role",
            svc,
            "webinar_sessions.sweep_stale_sessions",
            vec![("stale_after", json!(value))],
            code,
            mention,
        ));
    }
    for (role, claims, mention) in [
        (
            "authenticated",
            spoof,
            "permission denied for function sweep_stale_sessions",
        ),
        (
            "anon",
            None,
            "permission denied for schema webinar_sessions",
        ),
    ] {
        rows.push(bad(
            format!("sweep_stale_sessions: called by {role}"),
            role,
            claims,
            "webinar_sessions.sweep_stale_sessions",
            vec![("stale_after", json!("1 minute"))],
            "42501",
            mention,
        ));
    }

    // Analytics.
    let day = |t: &str| json!(format!("2026-01-01 {t}+00"));
    let conc = |webinar: Value, bucket: Value| vec![("webinar_id", webinar), ("bucket", bucket)];
    for (label, args, code, mention) in [
        (
            "webinar_id null",
            conc(null(), json!("1 minute")),
            "22004",
            "webinar_id must not be null",
        ),
        (
            "bucket null",
            conc(w(), null()),
            "22004",
            "bucket must not be null",
        ),
        (
            "bucket zero",
            conc(w(), json!("0")),
            "22023",
            "bucket must be positive",
        ),
        (
            "bucket negative",
            conc(w(), json!("-1 minute")),
            "22023",
            "bucket must be positive",
        ),
        (
            "bucket in months",
            conc(w(), json!("1 month")),
            "22023",
            "bucket must be given in days or smaller units",
        ),
        (
            "a microsecond bucket",
            conc(w(), json!("1 microsecond")),
            "22023",
            "buckets; at most 100000 are allowed",
        ),
    ] {
        rows.push(bad(
            format!("concurrency: {label}"),
            "service_role",
            svc,
            "webinar_sessions.concurrency",
            args,
            code,
            mention,
        ));
    }
    let att = |webinar: Value, window: Vec<(&'static str, Value)>, ratio: Value| {
        with(
            with(vec![("webinar_id", webinar)], window),
            vec![("min_ratio", ratio)],
        )
    };
    let ok_window = || window(day("10:00"), day("11:00"));
    for (label, args, code, mention) in [
        (
            "webinar_id null",
            att(null(), ok_window(), json!(0.5)),
            "22004",
            "webinar_id must not be null",
        ),
        (
            "starts_at null",
            att(w(), window(null(), day("11:00")), json!(0.5)),
            "22004",
            "starts_at must not be null",
        ),
        (
            "ends_at null",
            att(w(), window(day("10:00"), null()), json!(0.5)),
            "22004",
            "ends_at must not be null",
        ),
        (
            "min_ratio null",
            att(w(), ok_window(), null()),
            "22004",
            "min_ratio must not be null",
        ),
        (
            "empty window",
            att(w(), window(day("10:00"), day("10:00")), json!(0.5)),
            "22023",
            "ends_at (",
        ),
        (
            "window backwards",
            att(w(), window(day("11:00"), day("10:00")), json!(0.5)),
            "22023",
            "must be after starts_at",
        ),
        (
            "min_ratio negative",
            att(w(), ok_window(), json!(-0.5)),
            "22023",
            "min_ratio must be between 0 and 1",
        ),
        (
            "min_ratio above 1",
            att(w(), ok_window(), json!(1.01)),
            "22023",
            "min_ratio must be between 0 and 1",
        ),
        (
            "min_ratio NaN",
            att(w(), ok_window(), json!("NaN")),
            "22023",
            "min_ratio must be between 0 and 1 (got NaN)",
        ),
        (
            "starts_at -infinity",
            att(w(), window(json!("-infinity"), day("11:00")), json!(0.5)),
            "22023",
            "starts_at must be a finite time (got -infinity)",
        ),
        (
            "ends_at 294276 AD",
            att(
                w(),
                window(day("10:00"), json!("294276-12-31 00:00+00")),
                json!(0.5),
            ),
            "22023",
            "must be at most 4000 years after starts_at",
        ),
        (
            "both infinite",
            att(
                w(),
                window(json!("-infinity"), json!("infinity")),
                json!(0.5),
            ),
            "22023",
            "starts_at must be a finite time",
        ),
    ] {
        rows.push(bad(
            format!("attendance: {label}"),
            "service_role",
            svc,
            "webinar_sessions.attendance",
            args,
            code,
            mention,
        ));
    }
    let ret = |webinar: Value, window: Vec<(&'static str, Value)>, bucket: Value| {
        with(
            with(vec![("webinar_id", webinar)], window),
            vec![("bucket", bucket)],
        )
    };
    let minute = || json!("1 minute");
    for (label, args, code, mention) in [
        (
            "webinar_id null",
            ret(null(), ok_window(), minute()),
            "22004",
            "webinar_id must not be null",
        ),
        (
            "starts_at null",
            ret(w(), window(null(), day("11:00")), minute()),
            "22004",
            "starts_at must not be null",
        ),
        (
            "ends_at null",
            ret(w(), window(day("10:00"), null()), minute()),
            "22004",
            "ends_at must not be null",
        ),
        (
            "bucket null",
            ret(w(), ok_window(), null()),
            "22004",
            "bucket must not be null",
        ),
        (
            "bucket zero",
            ret(w(), ok_window(), json!("0 s")),
            "22023",
            "bucket must be positive",
        ),
        (
            "bucket negative",
            ret(w(), ok_window(), json!("-1 day")),
            "22023",
            "bucket must be positive",
        ),
        (
            "bucket a year",
            ret(w(), ok_window(), json!("1 year")),
            "22023",
            "bucket must be given in days or smaller units",
        ),
        (
            "window backwards",
            ret(w(), window(day("11:00"), day("10:00")), minute()),
            "22023",
            "must be after starts_at",
        ),
        (
            "2.6 million buckets",
            ret(
                w(),
                window(json!("2026-01-01 00:00+00"), json!("2026-01-31 00:00+00")),
                json!("1 second"),
            ),
            "22023",
            "buckets; at most 100000 are allowed",
        ),
        // (Its minute_offset, an integer, would overflow; 4713 BC to 294276 AD wrapped to 1 row.)
        (
            "4200 years in 1000-day buckets",
            ret(
                w(),
                window(json!("2000-01-01 00:00+00"), json!("6200-01-01 00:00+00")),
                json!("1000 days"),
            ),
            "22023",
            "must be at most 4000 years after starts_at",
        ),
        (
            "4713 BC to 294276 AD",
            ret(
                w(),
                window(
                    json!("4713-01-01 00:00+00 BC"),
                    json!("294276-12-31 00:00+00"),
                ),
                json!("1000000 days"),
            ),
            "22023",
            "must be at most 4000 years after starts_at",
        ),
        (
            "ends_at infinity",
            ret(w(), window(day("10:00"), json!("infinity")), minute()),
            "22023",
            "ends_at must be a finite time (got infinity)",
        ),
    ] {
        rows.push(bad(
            format!("retention: {label}"),
            "service_role",
            svc,
            "webinar_sessions.retention",
            args,
            code,
            mention,
        ));
    }
    rows.push(bad(
        "attendance: called by authenticated",
        "authenticated",
        ca,
        "webinar_sessions.attendance",
        att(w(), ok_window(), json!(0.5)),
        "42501",
        "permission denied for function attendance",
    ));
    rows.push(bad(
        "concurrency: called by anon",
        "anon",
        None,
        "webinar_sessions.concurrency",
        conc(w(), minute()),
        "42501",
        "permission denied for schema webinar_sessions",
    ));
    rows
}

/// `stale_after => '±infinity'`: PostgreSQL 17 made infinite intervals valid, so from there on
/// they reach the extension's own range check; before, the input function refuses them.
fn infinite_intervals(
    server_version: i32,
) -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    if server_version >= 170000 {
        vec![
            (
                "infinity",
                "infinity",
                "22023",
                "stale_after must be at most 365 days (got infinity)",
            ),
            (
                "-infinity",
                "-infinity",
                "22023",
                "stale_after must be positive",
            ),
        ]
    } else {
        vec![
            ("infinity", "infinity", "22007", "\"infinity\""),
            ("-infinity", "-infinity", "22007", "\"-infinity\""),
        ]
    }
}

/// Every bad call fails with its SQLSTATE and a message naming the bad argument, and leaves
/// both tables exactly as they were (every row, ctid and xmin included).
#[test]
fn hostile_calls_are_refused_and_change_nothing() {
    let cluster = shared_cluster("hostile");
    let mut admin = cluster.supabase_database("hostile_table");
    let mut api = cluster.connect_as("hostile_table", "authenticator");
    let (a, b, webinar) = (uuid(1), uuid(2), uuid(100));
    seed(&mut admin, &mut api, &webinar, &a, &b);
    let mut before = full_dump(&mut admin);

    let rows = bad_calls(&webinar, &a, &b, server_version_num(&mut admin));
    let descriptions: BTreeSet<&str> = rows.iter().map(|r| r.what.as_str()).collect();
    assert_eq!(
        descriptions.len(),
        rows.len(),
        "every row is a distinct case"
    );
    let mut failures = Vec::new();
    let mut sent = 0;
    // Every answer in full, for tests/run.sh to compare the two editions' word for word.
    let mut answers = String::new();
    for row in &rows {
        sent += 1;
        match rpc_rows(
            &mut api,
            row.role,
            row.claims.as_deref(),
            row.function,
            &row.args,
        ) {
            Ok(value) => failures.push(format!("{}: succeeded with {value}", row.what)),
            Err(e) => {
                answers += &format!(
                    "{}\t{}\t{:?}\t{:?}\n",
                    row.what,
                    e.code().code(),
                    e.message(),
                    e.hint()
                );
                if e.code().code() != row.code || !e.message().contains(&row.mention) {
                    failures.push(format!(
                        "{}: expected {} containing {:?}, got {} {:?}",
                        row.what,
                        row.code,
                        row.mention,
                        e.code().code(),
                        e.message()
                    ));
                }
            }
        }
        let after = full_dump(&mut admin);
        if after != before {
            failures.push(format!("{}: the tables changed", row.what));
            before = after; // blame only the call that changed them
        }
    }
    println!("bad calls sent: {sent}");
    if let Ok(path) = std::env::var("WEBINAR_SESSIONS_TEST_ANSWERS_OUT") {
        std::fs::write(path, answers).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(sent >= 50, "only {sent} bad calls");
}

/// Weird but valid session ids: each is accepted, and stored and returned byte for byte;
/// ids that differ in case, white space or Unicode normalisation are different sessions.
#[test]
fn weird_but_valid_session_ids_are_stored_exactly() {
    let cluster = shared_cluster("hostile");
    let mut admin = cluster.supabase_database("hostile_valid");
    let mut api = cluster.connect_as("hostile_valid", "authenticator");
    let (viewer, webinar) = (uuid(1), uuid(100));
    let claims = claims_for(&viewer);
    let valid: Vec<String> = vec![
        "'; DROP TABLE webinar_sessions.webinar_user_sessions; --".into(),
        "Robert'); DROP TABLE students;--".into(),
        "$$; SELECT pg_sleep(10); $$".into(),
        "$tag$ $$ $tag$".into(),
        "back\\slash \\n \\x00 \\".into(),
        r#""double" 'single' `tick` \'"#.into(),
        "E'\\u0000'".into(),
        "NULL".into(),
        "%s %n %d {}".into(),
        " ".into(),
        "tab".into(),
        "Tab".into(),
        "tab ".into(),
        "é".into(),
        "e\u{301}".into(),
        "🎥📺".into(),
        "\u{202e}override".into(),
        "\u{200b}".into(),
        "line\u{2028}separator".into(),
        "x".repeat(128),
        "é".repeat(128),
        "🎥".repeat(128),
    ];
    let mut ids = BTreeSet::new();
    for session in &valid {
        let entered = rpc_json(
            &mut api,
            "authenticated",
            Some(&claims),
            "public.enter_webinar",
            &key_args(&webinar, session),
        )
        .unwrap_or_else(|e| panic!("{session:?}: {e}"));
        assert_eq!(entered["status"], "entered", "{session:?}");
        assert_eq!(entered["session_id"], json!(session), "{session:?}");
        let id = entered["id"].as_str().unwrap().to_string();
        assert!(ids.insert(id.clone()), "{session:?} got a new row");
        let stored: Vec<u8> = admin
            .query_one(
                "SELECT convert_to(session_id, 'UTF8') FROM webinar_sessions.webinar_user_sessions
                  WHERE id = $1::text::uuid",
                &[&id],
            )
            .unwrap()
            .get(0);
        assert_eq!(stored, session.as_bytes(), "{session:?} stored exactly");
        for (function, status) in [
            ("public.heartbeat", "alive"),
            ("public.leave_webinar", "left"),
        ] {
            let r = rpc_json(
                &mut api,
                "authenticated",
                Some(&claims),
                function,
                &key_args(&webinar, session),
            )
            .unwrap();
            assert_eq!(
                (r["status"].as_str(), r["id"].as_str()),
                (Some(status), Some(id.as_str())),
                "{function} {session:?}"
            );
        }
    }
    // The same ids through heartbeat_batch for another viewer: one new session each.
    let other = uuid(2);
    let opened = rpc_rows(
        &mut api,
        "service_role",
        None,
        "webinar_sessions.heartbeat_batch",
        &[
            ("webinar_ids", json!(vec![&webinar; valid.len()])),
            ("session_ids", json!(valid)),
            ("user_ids", json!(vec![&other; valid.len()])),
        ],
    )
    .unwrap();
    assert_eq!(opened, json!([valid.len()]));
    let stored: Vec<Vec<u8>> = admin
        .query(
            "SELECT convert_to(session_id, 'UTF8') FROM webinar_sessions.webinar_user_sessions
              WHERE user_id = $1::text::uuid AND exited_at IS NULL",
            &[&other],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stored: BTreeSet<Vec<u8>> = stored.into_iter().collect();
    let expected: BTreeSet<Vec<u8>> = valid.iter().map(|s| s.as_bytes().to_vec()).collect();
    assert_eq!(stored, expected);
    println!("weird but valid session ids: {}", valid.len());
}

/// `stale_after` is checked the way the sweep applies it. As a comparison of intervals (a
/// month = 30 days, a year = 360) '-1 year 364 days' is positive, but now() minus it lies a
/// day in the future: such a sweep closed every active session, including one heartbeated a
/// moment ago. It must be refused.
#[test]
fn a_stale_after_reaching_into_the_future_is_refused() {
    let cluster = shared_cluster("hostile");
    let _admin = cluster.supabase_database("hostile_bug");
    let mut api = cluster.connect_as("hostile_bug", "authenticator");
    let (viewer, webinar) = (uuid(1), uuid(100));
    let alive = rpc_json(
        &mut api,
        "authenticated",
        Some(&claims_for(&viewer)),
        "public.heartbeat",
        &key_args(&webinar, "tab"),
    )
    .unwrap();
    assert_eq!(alive["status"], "reopened");
    let result = rpc_rows(
        &mut api,
        "service_role",
        None,
        "webinar_sessions.sweep_stale_sessions",
        &[("stale_after", json!("-1 year 364 days"))],
    );
    let e = result.expect_err("a stale_after pointing into the future was accepted");
    assert_eq!(e.code().code(), "22023", "{e}");
    assert!(
        e.to_string().contains("stale_after must be positive"),
        "{e}"
    );
}

/// The table refuses infinite times, from service_role's direct writes too: one such row used
/// to make webinar_stats fail for every webinar, and watch_time with PostgreSQL's raw
/// "cannot subtract infinite timestamps".
#[test]
fn the_table_refuses_infinite_times() {
    if citus() {
        // A direct write to one webinar's rows through the coordinator fails on Citus
        // whatever it writes (XX000, "cannot execute a distributed query from a query on a
        // shard"; 0.6.2 too). tests/citus.rs checks that the shards refuse infinite times.
        return;
    }
    let cluster = shared_cluster("hostile");
    let mut admin = cluster.supabase_database("hostile_infinite");
    let mut api = cluster.connect_as("hostile_infinite", "authenticator");
    let viewer = uuid(1);
    let webinars = [uuid(100), uuid(101)];
    for webinar in &webinars {
        let entered = rpc_json(
            &mut api,
            "authenticated",
            Some(&claims_for(&viewer)),
            "public.enter_webinar",
            &key_args(webinar, "tab"),
        )
        .unwrap();
        assert_eq!(entered["status"], "entered");
    }
    let before = full_dump(&mut admin);
    let target = format!("webinar_id = '{}'", webinars[0]);
    for write in [
        format!("UPDATE webinar_sessions.webinar_user_sessions SET entered_at = '-infinity' WHERE {target}"),
        format!("UPDATE webinar_sessions.webinar_user_sessions SET last_heartbeat_at = 'infinity' WHERE {target}"),
        format!(
            "UPDATE webinar_sessions.webinar_user_sessions
                SET exited_at = 'infinity', exit_reason = 'left' WHERE {target}"
        ),
        format!(
            "INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id, entered_at)
             VALUES ('{}', '{viewer}', 'other', '-infinity')",
            webinars[1]
        ),
    ] {
        let e = api
            .batch_execute(&format!("BEGIN; SET LOCAL ROLE service_role; {write}; COMMIT"))
            .expect_err(&format!("service_role wrote an infinite time: {write}"));
        api.batch_execute("ROLLBACK").unwrap();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(db.code().code(), "23514", "{write}: {e}");
        assert_eq!(db.constraint(), Some("wus_times_finite"), "{write}: {e}");
    }
    assert_eq!(
        full_dump(&mut admin),
        before,
        "a refused write changed the table"
    );
    let webinars_counted: i64 = admin
        .query_one("SELECT count(*) FROM webinar_sessions.webinar_stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(webinars_counted, 2);
}

/// The last timestamps PostgreSQL has (294276 AD) are finite, so the table takes them; the
/// statistics must still answer over them. The SQL-only edition's microsecond count
/// overflowed bigint there (22003) and took every webinar's figures down with it.
#[test]
fn the_last_timestamps_do_not_break_the_statistics() {
    if citus() {
        // (A direct write to one webinar's rows through the coordinator fails on Citus; see
        // the_table_refuses_infinite_times.)
        return;
    }
    let cluster = shared_cluster("hostile");
    let mut admin = cluster.supabase_database("hostile_last_times");
    let (webinar, viewer) = (uuid(102), uuid(2));
    admin
        .execute(
            "INSERT INTO webinar_sessions.webinar_user_sessions
                    (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, exited_at, exit_reason)
             VALUES ($1::text::uuid, $2::text::uuid, 'tab', '294276-12-31 22:00:00+00',
                     '294276-12-31 23:00:00+00', '294276-12-31 23:00:00+00', 'left')",
            &[&webinar, &viewer],
        )
        .unwrap();
    let stats = admin
        .query_one(
            "SELECT viewers, total_watched_seconds, peak_concurrent_viewers
               FROM webinar_sessions.webinar_stats WHERE webinar_id = $1::text::uuid",
            &[&webinar],
        )
        .unwrap_or_else(|e| panic!("webinar_stats: {e}"));
    let figures: (i64, f64, i64) = (stats.get(0), stats.get(1), stats.get(2));
    assert_eq!(figures, (1, 3600.0, 1));
    let window = "'294276-12-31 22:00:00+00'::timestamptz, '294276-12-31 23:00:00+00'::timestamptz";
    for query in [
        format!("SELECT count(*) FROM webinar_sessions.retention($1::text::uuid, {window}, '20 minutes')"),
        format!("SELECT count(*) FROM webinar_sessions.attendance($1::text::uuid, {window})"),
        "SELECT count(*) FROM webinar_sessions.concurrency($1::text::uuid)".to_string(),
        "SELECT count(*) FROM webinar_sessions.webinar_stats WHERE webinar_id <> $1::text::uuid OR true"
            .to_string(),
    ] {
        let rows: i64 = admin
            .query_one(&query, &[&webinar])
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .get(0);
        assert!(rows > 0, "{query}: no rows");
    }
}

// ---------------------------------------------------------------------------------------
// 2. A model-based property test.
// ---------------------------------------------------------------------------------------

/// splitmix64: tiny, deterministic, good enough to drive a test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const USERS: usize = 5;
const WEBINARS: usize = 3;
/// Every user uses the same three session ids (keys differ by user); two are awkward.
const SESSION_IDS: [&str; 3] = ["tab-1", "it's; DROP TABLE x; --", "ünï $$ \\ 🎥"];
const STEPS: usize = 4000;
const CHECK_EVERY: usize = 200;

/// How far back an "age" step moves a session's last sign of life, and the stale_after
/// values sweeps use. Gaps between the two lists are at least 10 minutes, far more than the
/// test runs, so whether a session is stale never depends on timing.
const AGES_S: [u64; 3] = [20 * 60, 3 * 3600, 2 * 86400];
const STALE_S: [u64; 4] = [10 * 60, 3600, 86400, 7 * 86400];

type Key = (usize, usize, usize); // (webinar, user, session id)
/// Per key: (rows, active rows, left, swept, the active row's id, its last_heartbeat_at is set).
type KeyRow = (i64, i64, i64, i64, Option<String>, bool);

#[derive(Clone, Debug)]
struct Active {
    id: String,
    /// Seconds its last sign of life was moved back by the last "age" step (0: fresh).
    age_s: u64,
    /// Whether last_heartbeat_at is set (an enter that opens a session leaves it NULL).
    heartbeated: bool,
}

#[derive(Clone, Debug, Default)]
struct KeyState {
    active: Option<Active>,
    rows: i64,
    left: i64,
    swept: i64,
}

#[derive(Default)]
struct Model {
    keys: BTreeMap<Key, KeyState>,
    ids: BTreeSet<String>,
    sweeps: i64,
    last_swept: Option<i64>,
}

impl Model {
    fn key(&mut self, k: Key) -> &mut KeyState {
        self.keys.entry(k).or_default()
    }

    /// A new row for `k` with `id`; the id must never have been seen.
    fn open(&mut self, k: Key, id: &str, heartbeated: bool) {
        assert!(self.ids.insert(id.to_string()), "id {id} reused");
        let state = self.key(k);
        assert!(state.active.is_none());
        state.active = Some(Active {
            id: id.to_string(),
            age_s: 0,
            heartbeated,
        });
        state.rows += 1;
    }

    fn sweep(&mut self, stale_s: Option<u64>) -> i64 {
        let mut swept = 0;
        for state in self.keys.values_mut() {
            let stale = match (&state.active, stale_s) {
                (Some(a), Some(s)) => a.age_s > s,
                (Some(_), None) => true, // everything, after a pause
                (None, _) => false,
            };
            if stale {
                state.active = None;
                state.swept += 1;
                swept += 1;
            }
        }
        self.sweeps += 1;
        self.last_swept = Some(swept);
        swept
    }
}

fn webinar_of(w: usize) -> String {
    uuid(100 + w as u64)
}
fn user_of(u: usize) -> String {
    uuid(1 + u as u64)
}

/// Makes the table reflect every call made so far, before it is compared with the model.
fn settle(client: &mut Client) {
    harness::settle(client);
}

/// Compares the whole table with the model.
fn compare(admin: &mut Client, model: &Model, step: usize) {
    settle(admin);
    let rows = admin
        .query(
            "SELECT webinar_id::text, user_id::text, session_id,
                    count(*),
                    count(*) FILTER (WHERE exited_at IS NULL),
                    count(*) FILTER (WHERE exit_reason = 'left'),
                    count(*) FILTER (WHERE exit_reason = 'swept'),
                    min(id::text) FILTER (WHERE exited_at IS NULL),
                    bool_or(exited_at IS NULL AND last_heartbeat_at IS NOT NULL),
                    bool_and((exited_at IS NULL) = (exit_reason IS NULL)),
                    bool_and(exited_at IS NULL OR exited_at >= entered_at),
                    bool_and(last_heartbeat_at IS NULL OR last_heartbeat_at >= entered_at),
                    bool_and(exit_reason IS DISTINCT FROM 'swept'
                             OR exited_at = coalesce(last_heartbeat_at, entered_at)),
                    bool_and(exit_reason IS DISTINCT FROM 'left'
                             OR exited_at >= coalesce(last_heartbeat_at, entered_at))
               FROM webinar_sessions.webinar_user_sessions
              GROUP BY 1, 2, 3",
            &[],
        )
        .unwrap();
    let mut seen = BTreeMap::new();
    for row in &rows {
        let (w, u, s): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let k = (
            (0..WEBINARS)
                .find(|&i| webinar_of(i) == w)
                .expect("known webinar"),
            (0..USERS).find(|&i| user_of(i) == u).expect("known user"),
            SESSION_IDS
                .iter()
                .position(|&x| x == s)
                .unwrap_or_else(|| panic!("unknown session id {s:?}")),
        );
        let db = (
            row.get::<_, i64>(3),
            row.get::<_, i64>(4),
            row.get::<_, i64>(5),
            row.get::<_, i64>(6),
            row.get::<_, Option<String>>(7),
            row.get::<_, bool>(8),
        );
        let invariants: [bool; 5] = [
            row.get(9),
            row.get(10),
            row.get(11),
            row.get(12),
            row.get(13),
        ];
        assert_eq!(
            invariants, [true; 5],
            "step {step}, key {k:?}: exit reason iff exited, exit >= entry, heartbeat >= entry, swept at last sign, left after it"
        );
        assert!(db.1 <= 1, "step {step}, key {k:?}: {} active rows", db.1);
        seen.insert(k, db);
    }
    let expected: BTreeMap<Key, KeyRow> = model
        .keys
        .iter()
        .filter(|(_, s)| s.rows > 0)
        .map(|(k, s)| {
            (
                *k,
                (
                    s.rows,
                    i64::from(s.active.is_some()),
                    s.left,
                    s.swept,
                    s.active.as_ref().map(|a| a.id.clone()),
                    s.active.as_ref().is_some_and(|a| a.heartbeated),
                ),
            )
        })
        .collect();
    let all: BTreeSet<&Key> = seen.keys().chain(expected.keys()).collect();
    let differences: Vec<String> = all
        .into_iter()
        .filter(|k| seen.get(k) != expected.get(k))
        .map(|k| {
            format!(
                "key {k:?}: table {:?}, model {:?}",
                seen.get(k),
                expected.get(k)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "step {step}: (rows, active, left, swept, active id, heartbeated) per key differ:\n{}",
        differences.join("\n")
    );
    let (runs, last): (i64, Option<i64>) = {
        let row = admin
            .query_one(
                "SELECT count(*), (SELECT swept FROM webinar_sessions.sweep_runs
                                    ORDER BY started_at DESC LIMIT 1)
                   FROM webinar_sessions.sweep_runs",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (runs, last),
        (model.sweeps.min(1000), model.last_swept),
        "step {step}: sweep_runs"
    );
}

#[test]
fn random_calls_match_the_model() {
    let seed: u64 = std::env::var("WEBINAR_SESSIONS_PROPTEST_SEED")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .expect("WEBINAR_SESSIONS_PROPTEST_SEED is a u64")
        })
        .unwrap_or(20_260_101);
    println!("property test seed: {seed} (set WEBINAR_SESSIONS_PROPTEST_SEED to replay another)");
    let cluster = shared_cluster("hostile");
    let mut admin = cluster.supabase_database("hostile_prop");
    let mut api = cluster.connect_as("hostile_prop", "authenticator");
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = Instant::now();

    for step in 1..=STEPS {
        let k: Key = (
            rng.below(WEBINARS as u64) as usize,
            rng.below(USERS as u64) as usize,
            rng.below(SESSION_IDS.len() as u64) as usize,
        );
        let (webinar, user, session) = (webinar_of(k.0), user_of(k.1), SESSION_IDS[k.2]);
        let user_claims = claims_for(&user);
        let roll = rng.below(1000);
        let ctx = |kind: &str| format!("seed {seed}, step {step}, {kind} {k:?}");
        // Which call, and through which door.
        let (kind, role, claims, function, args): (&str, &str, Option<&str>, &str, _) = match roll {
            0..=119 => (
                "enter",
                "authenticated",
                Some(user_claims.as_str()),
                "public.enter_webinar",
                key_args(&webinar, session),
            ),
            120..=169 => (
                "enter",
                "service_role",
                None,
                "webinar_sessions.enter",
                key_user_args(&webinar, session, &user),
            ),
            170..=359 => (
                "heartbeat",
                "authenticated",
                Some(user_claims.as_str()),
                "public.heartbeat",
                key_args(&webinar, session),
            ),
            360..=409 => (
                "heartbeat",
                "authenticated",
                Some(user_claims.as_str()),
                "webinar_sessions.heartbeat",
                key_user_args(&webinar, session, &user),
            ),
            410..=459 => (
                "heartbeat",
                "service_role",
                None,
                "webinar_sessions.heartbeat",
                key_user_args(&webinar, session, &user),
            ),
            460..=569 => (
                "leave",
                "authenticated",
                Some(user_claims.as_str()),
                "public.leave_webinar",
                key_args(&webinar, session),
            ),
            570..=599 => (
                "leave",
                "service_role",
                None,
                "webinar_sessions.leave",
                key_user_args(&webinar, session, &user),
            ),
            600..=699 => ("heartbeat_batch", "", None, "", vec![]),
            700..=749 => ("sweep", "", None, "", vec![]),
            750..=754 => ("sweep_after_pause", "", None, "", vec![]),
            755..=839 => ("age", "", None, "", vec![]),
            _ => ("hostile", "", None, "", vec![]),
        };
        *counts.entry(kind).or_default() += 1;
        match kind {
            "enter" | "heartbeat" | "leave" => {
                let r = rpc_json(&mut api, role, claims, function, &args)
                    .unwrap_or_else(|e| panic!("{}: {e}", ctx(function)));
                assert_eq!(r["webinar_id"], json!(webinar), "{}", ctx(function));
                assert_eq!(r["session_id"], json!(session), "{}", ctx(function));
                let status = r["status"].as_str().unwrap_or_default();
                let id = r["id"].as_str().map(str::to_string);
                let active_id = model.key(k).active.as_ref().map(|a| a.id.clone());
                let expected = match (kind, &active_id) {
                    ("enter", Some(_)) => "resumed",
                    ("enter", None) => "entered",
                    ("heartbeat", Some(_)) => "alive",
                    ("heartbeat", None) => "reopened",
                    ("leave", Some(_)) => "left",
                    _ => "not_found",
                };
                assert_eq!(status, expected, "{}", ctx(function));
                match (status, id) {
                    ("entered", Some(id)) => model.open(k, &id, false),
                    ("reopened", Some(id)) => model.open(k, &id, true),
                    ("resumed" | "alive", id) => {
                        assert_eq!(id, active_id, "{}", ctx(function));
                        let a = model.key(k).active.as_mut().unwrap();
                        a.age_s = 0;
                        a.heartbeated = true;
                    }
                    ("left", id) => {
                        assert_eq!(id, active_id, "{}", ctx(function));
                        assert!(r["exited_at"].is_string(), "{}", ctx(function));
                        let state = model.key(k);
                        state.active = None;
                        state.left += 1;
                    }
                    ("not_found", None) => {}
                    (s, id) => panic!("{}: status {s} with id {id:?}", ctx(function)),
                }
            }
            "heartbeat_batch" => {
                // 1..8 keys, duplicates allowed: each distinct key counts once.
                let n = 1 + rng.below(8) as usize;
                let keys: Vec<Key> = (0..n)
                    .map(|_| {
                        (
                            rng.below(WEBINARS as u64) as usize,
                            rng.below(USERS as u64) as usize,
                            rng.below(SESSION_IDS.len() as u64) as usize,
                        )
                    })
                    .collect();
                let args = [
                    (
                        "webinar_ids",
                        json!(keys.iter().map(|k| webinar_of(k.0)).collect::<Vec<_>>()),
                    ),
                    (
                        "session_ids",
                        json!(keys.iter().map(|k| SESSION_IDS[k.2]).collect::<Vec<_>>()),
                    ),
                    (
                        "user_ids",
                        json!(keys.iter().map(|k| user_of(k.1)).collect::<Vec<_>>()),
                    ),
                ];
                let r = rpc_rows(
                    &mut api,
                    "service_role",
                    Some(r#"{"role":"service_role"}"#),
                    "webinar_sessions.heartbeat_batch",
                    &args,
                )
                .unwrap_or_else(|e| panic!("{}: {e}", ctx("heartbeat_batch")));
                let distinct: BTreeSet<Key> = keys.iter().copied().collect();
                assert_eq!(r, json!([distinct.len()]), "{}", ctx("heartbeat_batch"));
                for key in distinct {
                    let state = model.key(key);
                    match state.active.as_mut() {
                        Some(a) => {
                            a.age_s = 0;
                            a.heartbeated = true;
                        }
                        None => {
                            // The batch does not return ids: learn the new row's id.
                            let id: String = admin
                                .query_one(
                                    "SELECT id::text FROM webinar_sessions.webinar_user_sessions
                                      WHERE webinar_id = $1::text::uuid AND user_id = $2::text::uuid
                                        AND session_id = $3 AND exited_at IS NULL",
                                    &[&webinar_of(key.0), &user_of(key.1), &SESSION_IDS[key.2]],
                                )
                                .unwrap()
                                .get(0);
                            model.open(key, &id, true);
                        }
                    }
                }
            }
            "sweep" => {
                let stale_s = *rng.pick(&STALE_S);
                let expected = model.sweep(Some(stale_s));
                let r = rpc_rows(
                    &mut api,
                    "service_role",
                    None,
                    "webinar_sessions.sweep_stale_sessions",
                    &[("stale_after", json!(format!("{stale_s} seconds")))],
                )
                .unwrap_or_else(|e| panic!("{}: {e}", ctx("sweep")));
                assert_eq!(
                    r,
                    json!([expected]),
                    "{}: stale_after {stale_s} s",
                    ctx("sweep")
                );
            }
            "sweep_after_pause" => {
                // Every call so far committed at least 20 ms ago: a 1 ms stale_after sweeps
                // every active session, aged or not.
                std::thread::sleep(Duration::from_millis(20));
                let expected = model.sweep(None);
                let r = rpc_rows(
                    &mut api,
                    "service_role",
                    None,
                    "webinar_sessions.sweep_stale_sessions",
                    &[("stale_after", json!("1 millisecond"))],
                )
                .unwrap_or_else(|e| panic!("{}: {e}", ctx("sweep_after_pause")));
                assert_eq!(r, json!([expected]), "{}", ctx("sweep_after_pause"));
            }
            "age" => {
                // The test cannot move now(): it moves a session's past instead. As the
                // superuser, set the active row's last sign of life to now() - age, moving
                // entered_at by the same amount (heartbeat >= entry keeps holding).
                let age_s = *rng.pick(&AGES_S);
                // Buffered heartbeats are written first: a later flush must not carry the
                // session's real last heartbeat over the aged one.
                settle(&mut admin);
                let changed = admin
                    .execute(
                        // (In UTC, as above: Citus.)
                        "UPDATE webinar_sessions.webinar_user_sessions AS s
                            SET entered_at = ((s.entered_at AT TIME ZONE 'UTC')
                                    - (coalesce(s.last_heartbeat_at, s.entered_at) - (now() - make_interval(secs => $4))))
                                    AT TIME ZONE 'UTC',
                                last_heartbeat_at = ((s.last_heartbeat_at AT TIME ZONE 'UTC')
                                    - (coalesce(s.last_heartbeat_at, s.entered_at) - (now() - make_interval(secs => $4))))
                                    AT TIME ZONE 'UTC'
                          WHERE s.webinar_id = $1::text::uuid AND s.user_id = $2::text::uuid
                            AND s.session_id = $3 AND s.exited_at IS NULL",
                        &[&webinar, &user, &session, &(age_s as f64)],
                    )
                    .unwrap();
                let state = model.key(k);
                assert_eq!(changed, u64::from(state.active.is_some()), "{}", ctx("age"));
                if let Some(a) = state.active.as_mut() {
                    a.age_s = age_s;
                }
            }
            _ => {
                let before = full_dump(&mut admin);
                let other = user_of((k.1 + 1 + rng.below(USERS as u64 - 1) as usize) % USERS);
                let spoof = spoofed_claims(&user);
                let svc = Some(r#"{"role":"service_role"}"#);
                let ca = Some(user_claims.as_str());
                let (role, claims, function, args, code): (&str, Option<&str>, &str, _, &str) =
                    match rng.below(10) {
                        0 => (
                            "authenticated",
                            Some(spoof.as_str()),
                            "webinar_sessions.heartbeat",
                            key_user_args(&webinar, session, &other),
                            "42501",
                        ),
                        1 => (
                            "authenticated",
                            ca,
                            "webinar_sessions.leave",
                            key_user_args(&webinar, session, &other),
                            "42501",
                        ),
                        2 => (
                            "authenticated",
                            ca,
                            "public.enter_webinar",
                            key_args(&webinar, &format!("{session}\n")),
                            "22023",
                        ),
                        3 => (
                            "authenticated",
                            ca,
                            "public.heartbeat",
                            key_args(&webinar, &session.repeat(60)),
                            "22023",
                        ),
                        4 => (
                            "authenticated",
                            ca,
                            "public.leave_webinar",
                            vec![("webinar_id", Value::Null), ("session_id", json!(session))],
                            "22004",
                        ),
                        5 => (
                            "anon",
                            ca,
                            "public.leave_webinar",
                            key_args(&webinar, session),
                            "42501",
                        ),
                        6 => (
                            "authenticated",
                            Some(r#"{"sub":"#),
                            "public.heartbeat",
                            key_args(&webinar, session),
                            "42501",
                        ),
                        // A batch of real keys with one bad element: all or nothing.
                        7 => (
                            "service_role",
                            svc,
                            "webinar_sessions.heartbeat_batch",
                            vec![
                                ("webinar_ids", json!([webinar, webinar, webinar])),
                                ("session_ids", json!([session, SESSION_IDS[0], ""])),
                                ("user_ids", json!([user, other, user])),
                            ],
                            "22023",
                        ),
                        8 => (
                            "service_role",
                            svc,
                            "webinar_sessions.heartbeat_batch",
                            vec![
                                ("webinar_ids", json!([webinar, webinar])),
                                ("session_ids", json!([session])),
                                ("user_ids", json!([user, other])),
                            ],
                            "22023",
                        ),
                        _ => (
                            "service_role",
                            svc,
                            "webinar_sessions.sweep_stale_sessions",
                            vec![("stale_after", json!("-1 second"))],
                            "22023",
                        ),
                    };
                match rpc_rows(&mut api, role, claims, function, &args) {
                    Ok(v) => panic!("{}: {function} succeeded: {v}", ctx("hostile")),
                    Err(e) => assert_eq!(e.code().code(), code, "{}: {e}", ctx("hostile")),
                }
                assert_eq!(full_dump(&mut admin), before, "{}", ctx("hostile"));
            }
        }
        if step % CHECK_EVERY == 0 || step == STEPS {
            compare(&mut admin, &model, step);
            *counts.entry("checkpoint").or_default() += 1;
        }
    }
    let active: usize = model.keys.values().filter(|s| s.active.is_some()).count();
    let rows: i64 = model.keys.values().map(|s| s.rows).sum();
    println!(
        "property test: {STEPS} steps in {:.1} s, seed {seed}; calls per kind: {counts:?}; \
         {rows} rows, {active} active at the end; failures: 0 (any mismatch panics with its seed and step)",
        started.elapsed().as_secs_f64()
    );
}
