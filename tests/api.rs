//! The client API as supabase-js reaches it through PostgREST: role and JWT claims set per
//! transaction, named arguments, one JSON object back.

use harness::*;
use postgres::Client;
use std::sync::{Arc, Barrier};
use std::time::Duration;

fn database(name: &str) -> (Client, Client) {
    let cluster = shared_cluster("api");
    let admin = cluster.supabase_database(name);
    let api = cluster.connect_as(name, "authenticator");
    (admin, api)
}

fn active_sessions(admin: &mut Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL",
            &[],
        )
        .unwrap()
        .get(0)
}

fn key(webinar: &str, session: &str) -> Vec<(&'static str, String)> {
    vec![
        ("webinar_id", webinar.to_string()),
        ("session_id", session.to_string()),
    ]
}

fn call(
    api: &mut Client,
    user: &str,
    function: &str,
    webinar: &str,
    session: &str,
) -> serde_json::Value {
    let claims = claims_for(user);
    let args = key(webinar, session);
    let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rpc(api, "authenticated", Some(&claims), function, &args)
        .unwrap_or_else(|e| panic!("{function}: {e}"))
}

#[test]
fn a_viewer_walks_through_every_status() {
    let (_admin, mut api) = database("walk");
    let (viewer, webinar) = (uuid(1), uuid(100));
    let status = |v: &serde_json::Value| v["status"].as_str().unwrap().to_string();

    let entered = call(&mut api, &viewer, "public.enter_webinar", &webinar, "tab-1");
    assert_eq!(status(&entered), "entered");
    assert_eq!(entered["webinar_id"], webinar.as_str());
    assert_eq!(entered["session_id"], "tab-1");
    assert_eq!(entered["heartbeat_interval_s"], 120);
    assert!(entered["last_heartbeat_at"].is_null());
    assert!(entered["exited_at"].is_null());

    let resumed = call(&mut api, &viewer, "public.enter_webinar", &webinar, "tab-1");
    assert_eq!(
        (status(&resumed), &resumed["id"]),
        ("resumed".into(), &entered["id"])
    );

    let alive = call(&mut api, &viewer, "public.heartbeat", &webinar, "tab-1");
    assert_eq!(
        (status(&alive), &alive["id"]),
        ("alive".into(), &entered["id"])
    );
    assert!(alive["last_heartbeat_at"].is_string());

    let left = call(&mut api, &viewer, "public.leave_webinar", &webinar, "tab-1");
    assert_eq!(
        (status(&left), &left["id"]),
        ("left".into(), &entered["id"])
    );
    assert!(left["exited_at"].is_string());

    let again = call(&mut api, &viewer, "public.leave_webinar", &webinar, "tab-1");
    assert_eq!(status(&again), "not_found");
    assert!(again["id"].is_null());

    let reopened = call(&mut api, &viewer, "public.heartbeat", &webinar, "tab-1");
    assert_eq!(status(&reopened), "reopened");
    assert_ne!(reopened["id"], entered["id"]);
}

#[test]
fn the_heartbeat_interval_comes_from_the_server() {
    let (mut admin, _) = database("interval");
    admin
        .batch_execute("ALTER DATABASE interval SET webinar_sessions.heartbeat_interval = '3min'")
        .unwrap();
    let mut api = shared_cluster("api").connect_as("interval", "authenticator");
    let alive = call(&mut api, &uuid(1), "public.heartbeat", &uuid(100), "tab");
    assert_eq!(alive["heartbeat_interval_s"], 180);
}

#[test]
fn a_signed_in_viewer_reads_only_their_own_rows() {
    let (_admin, mut api) = database("rls");
    let (me, other, webinar) = (uuid(1), uuid(2), uuid(100));
    call(&mut api, &me, "public.enter_webinar", &webinar, "mine");
    call(&mut api, &other, "public.enter_webinar", &webinar, "theirs");

    let mut tx = begin_request(&mut api, "authenticated", Some(&claims_for(&me))).unwrap();
    let rows = tx
        .query(
            "SELECT session_id, user_id::text FROM webinar_sessions.webinar_user_sessions",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "mine");
    assert_eq!(rows[0].get::<_, String>(1), me);
}

#[test]
fn another_users_session_is_out_of_reach() {
    let (mut admin, mut api) = database("other_user");
    let (me, intruder, webinar) = (uuid(1), uuid(2), uuid(100));
    call(&mut api, &me, "public.enter_webinar", &webinar, "tab");
    let before = table_fingerprint(&mut admin);

    // The intruder's own key is a different session: leaving it finds nothing of mine.
    let left = call(&mut api, &intruder, "public.leave_webinar", &webinar, "tab");
    assert_eq!(left["status"], "not_found");

    // Naming my user id is refused, even with a role claim that says service_role.
    for claims in [
        claims_for(&intruder),
        format!(r#"{{"sub":"{intruder}","role":"service_role"}}"#),
    ] {
        for function in [
            "webinar_sessions.leave",
            "webinar_sessions.heartbeat",
            "webinar_sessions.enter",
        ] {
            let err = rpc(
                &mut api,
                "authenticated",
                Some(&claims),
                function,
                &[
                    ("webinar_id", &webinar),
                    ("session_id", "tab"),
                    ("user_id", &me),
                ],
            )
            .unwrap_err();
            assert_eq!(err.code().code(), "42501", "{function}: {err}");
            assert!(err.message().contains("user_id"), "{}", err.message());
        }
    }
    assert_eq!(table_fingerprint(&mut admin), before);

    // Naming oneself is fine.
    let own = rpc(
        &mut api,
        "authenticated",
        Some(&claims_for(&me)),
        "webinar_sessions.heartbeat",
        &[
            ("webinar_id", &webinar),
            ("session_id", "tab"),
            ("user_id", &me),
        ],
    )
    .unwrap();
    assert_eq!(own["status"], "alive");
}

#[test]
fn service_role_acts_for_any_user_and_runs_the_backend_functions() {
    let (mut admin, mut api) = database("service");
    let (viewer, webinar) = (uuid(1), uuid(100));
    let entered = rpc(
        &mut api,
        "service_role",
        Some(r#"{"role":"service_role"}"#),
        "webinar_sessions.enter",
        &[
            ("webinar_id", &webinar),
            ("session_id", "tab"),
            ("user_id", &viewer),
        ],
    )
    .unwrap();
    assert_eq!(entered["status"], "entered");

    // Without user_id and without a sub there is nobody to act for.
    let err = rpc(
        &mut api,
        "service_role",
        None,
        "webinar_sessions.heartbeat",
        &[("webinar_id", &webinar), ("session_id", "tab")],
    )
    .unwrap_err();
    assert_eq!(err.code().code(), "42501");
    assert!(
        err.message().contains("no caller identity"),
        "{}",
        err.message()
    );

    let mut tx = api.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE service_role").unwrap();
    let batch: i64 = tx
        .query_one(
            "SELECT webinar_sessions.heartbeat_batch(ARRAY[$1::text::uuid, $1::text::uuid], ARRAY['tab', 'tab-2'], ARRAY[$2::text::uuid, $2::text::uuid])",
            &[&webinar, &viewer],
        )
        .unwrap()
        .get(0);
    assert_eq!(batch, 2);
    let swept: i64 = tx
        .query_one(
            "SELECT webinar_sessions.sweep_stale_sessions('1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(swept, 0);
    let runs: i64 = tx
        .query_one("SELECT count(*) FROM webinar_sessions.sweep_runs", &[])
        .unwrap()
        .get(0);
    assert_eq!(runs, 1);
    tx.commit().unwrap();

    let active = active_sessions(&mut admin);
    assert_eq!(active, 2);
}

/// Every role against every function and table: allowed or denied exactly as documented.
#[test]
fn privilege_matrix() {
    let (mut admin, _) = database("privileges");
    let cluster = shared_cluster("api");
    let (viewer, webinar) = (uuid(1), uuid(100));
    let calls = [
        ("public.enter_webinar", format!("public.enter_webinar('{webinar}', 't')")),
        ("public.heartbeat", format!("public.heartbeat('{webinar}', 't')")),
        ("public.leave_webinar", format!("public.leave_webinar('{webinar}', 't')")),
        ("webinar_sessions.enter", format!("webinar_sessions.enter('{webinar}', 't')")),
        ("webinar_sessions.heartbeat", format!("webinar_sessions.heartbeat('{webinar}', 't')")),
        ("webinar_sessions.leave", format!("webinar_sessions.leave('{webinar}', 't')")),
        (
            "webinar_sessions.heartbeat_batch",
            format!("webinar_sessions.heartbeat_batch(ARRAY['{webinar}'::uuid], ARRAY['t'], ARRAY['{viewer}'::uuid])"),
        ),
        ("webinar_sessions.sweep_stale_sessions", "webinar_sessions.sweep_stale_sessions()".into()),
        ("select sessions", "count(*) FROM webinar_sessions.webinar_user_sessions".into()),
        ("select sweep_runs", "count(*) FROM webinar_sessions.sweep_runs".into()),
        (
            "insert sessions",
            format!("1; INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id) VALUES ('{webinar}', '{viewer}', 'direct')"),
        ),
        ("update sessions", "1; UPDATE webinar_sessions.webinar_user_sessions SET updated_at = now()".into()),
        ("delete sessions", "1; DELETE FROM webinar_sessions.webinar_user_sessions".into()),
        ("public.live_viewers", format!("public.live_viewers('{webinar}')")),
        ("webinar_sessions.live_viewers", format!("webinar_sessions.live_viewers('{webinar}')")),
        // A signed-in user who does not host the webinar gets 42501 from the check inside.
        ("public.webinar_report", format!("count(*) FROM public.webinar_report('{webinar}')")),
        ("public.webinar_summary", format!("count(*) FROM public.webinar_summary('{webinar}')")),
        ("select webinar_hosts", "count(*) FROM webinar_sessions.webinar_hosts".into()),
        (
            "insert webinar_hosts",
            format!("1; INSERT INTO webinar_sessions.webinar_hosts (webinar_id, user_id) VALUES ('{webinar}', '{viewer}')"),
        ),
        ("select live_counts", "count(*) FROM webinar_sessions.live_counts".into()),
        // PostgREST's db-pre-request on Citus: every request's role runs it.
        ("public.webinar_sessions_pre_request", "public.webinar_sessions_pre_request()".into()),
    ];
    let client_api = [
        "public.enter_webinar",
        "public.heartbeat",
        "public.leave_webinar",
        "webinar_sessions.enter",
        "webinar_sessions.heartbeat",
        "webinar_sessions.leave",
        "select sessions",
        "public.live_viewers",
        "webinar_sessions.live_viewers",
        "select webinar_hosts",
        "public.webinar_sessions_pre_request",
    ];
    // (login role, role to switch to)
    let roles = [
        ("authenticator", "anon"),
        ("authenticator", "authenticated"),
        ("authenticator", "service_role"),
        ("plain_login", "plain_login"),
    ];
    let mut checked = 0;
    for (login, role) in roles {
        let mut client = cluster.connect_as("privileges", login);
        for (name, sql) in &calls {
            let allowed = match role {
                "service_role" => true,
                "anon" => *name == "public.webinar_sessions_pre_request",
                "authenticated" => client_api.contains(name),
                _ => false,
            };
            let mut tx = begin_request(&mut client, role, Some(&claims_for(&viewer))).unwrap();
            let result = tx.batch_execute(&format!("SELECT {sql}"));
            match (&result, allowed) {
                (Ok(()), true) => {}
                (Err(e), false) => {
                    let code = e.as_db_error().map(|d| d.code().code().to_string());
                    assert_eq!(code.as_deref(), Some("42501"), "{role} {name}: {e}");
                }
                _ => panic!("{role} {name}: expected allowed={allowed}, got {result:?}"),
            }
            let _ = tx.rollback();
            checked += 1;
        }
    }
    assert_eq!(checked, roles.len() * calls.len());
    println!("privilege cells checked: {checked}");
    // Nothing leaked through: every transaction above was rolled back.
    assert_eq!(table_fingerprint(&mut admin), "empty");
}

/// Two enter_webinar calls for the same key at the same moment: one row, both callers get it.
#[test]
fn simultaneous_enters_share_one_session() {
    let (mut admin, _) = database("simultaneous");
    let (viewer, webinar) = (uuid(1), uuid(100));
    for round in 0..20 {
        let session = format!("tab-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (barrier, viewer, webinar, session) = (
                    barrier.clone(),
                    viewer.clone(),
                    webinar.clone(),
                    session.clone(),
                );
                std::thread::spawn(move || {
                    let mut api = shared_cluster("api").connect_as("simultaneous", "authenticator");
                    barrier.wait();
                    call(
                        &mut api,
                        &viewer,
                        "public.enter_webinar",
                        &webinar,
                        &session,
                    )
                })
            })
            .collect();
        let results: Vec<serde_json::Value> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results[0]["id"], results[1]["id"], "round {round}");
        let mut statuses: Vec<&str> = results
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        statuses.sort();
        assert_eq!(statuses, ["entered", "resumed"], "round {round}");
    }
    let rows: i64 = admin
        .query_one(
            "SELECT count(*) FROM webinar_sessions.webinar_user_sessions",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 20);
}

/// Waits until some backend is blocked on a lock in this database (on any node of a Citus
/// cluster: the rows are on the worker nodes).
fn wait_until_blocked(admin: &mut Client, database: &str) {
    let activity = if citus() {
        "citus_stat_activity"
    } else {
        "pg_stat_activity"
    };
    let blocked = eventually(Duration::from_secs(10), || {
        admin
            .query_one(
                &format!("SELECT count(*) > 0 FROM {activity} WHERE datname = $1 AND wait_event_type = 'Lock'"),
                &[&database],
            )
            .unwrap()
            .get(0)
    });
    assert!(blocked, "no backend ever waited for the lock");
}

/// The sweep takes the row first; the heartbeat waits, finds the session closed and opens a
/// new one. Nothing is lost either way.
#[test]
fn a_heartbeat_behind_a_sweep_reopens() {
    let (mut admin, mut api) = database("sweep_first");
    let (viewer, webinar) = (uuid(1), uuid(100));
    admin
        .batch_execute(&format!(
            "INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
             VALUES ('{webinar}', '{viewer}', 'tab', now() - interval '1 hour', now() - interval '30 min')"
        ))
        .unwrap();
    let mut sweeper = shared_cluster("api").connect("sweep_first");
    let mut sweep = sweeper.transaction().unwrap();
    let swept: i64 = sweep
        .query_one("SELECT webinar_sessions.sweep_stale_sessions('5 min')", &[])
        .unwrap()
        .get(0);
    assert_eq!(swept, 1);

    let heartbeat =
        std::thread::spawn(move || call(&mut api, &viewer, "public.heartbeat", &webinar, "tab"));
    wait_until_blocked(&mut admin, "sweep_first");
    sweep.commit().unwrap();
    let result = heartbeat.join().unwrap();
    assert_eq!(result["status"], "reopened");

    let (closed, active): (i64, i64) = {
        let row = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE exit_reason = 'swept'), count(*) FILTER (WHERE exited_at IS NULL)
                   FROM webinar_sessions.webinar_user_sessions",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((closed, active), (1, 1));
}

/// The heartbeat takes the row first; the sweep waits, re-checks the fresh row and leaves it
/// alone.
#[test]
fn a_sweep_behind_a_heartbeat_spares_the_session() {
    let (mut admin, _) = database("heartbeat_first");
    let (viewer, webinar) = (uuid(1), uuid(100));
    admin
        .batch_execute(&format!(
            "INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
             VALUES ('{webinar}', '{viewer}', 'tab', now() - interval '1 hour', now() - interval '30 min')"
        ))
        .unwrap();
    let mut api = shared_cluster("api").connect_as("heartbeat_first", "authenticator");
    let mut tx = begin_request(&mut api, "authenticated", Some(&claims_for(&viewer))).unwrap();
    let status: String = tx
        .query_one(
            "SELECT status FROM public.heartbeat($1::text::uuid, 'tab')",
            &[&webinar],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "alive");

    let sweep = std::thread::spawn(|| {
        let mut sweeper = shared_cluster("api").connect("heartbeat_first");
        sweeper
            .query_one("SELECT webinar_sessions.sweep_stale_sessions('5 min')", &[])
            .unwrap()
            .get::<_, i64>(0)
    });
    wait_until_blocked(&mut admin, "heartbeat_first");
    tx.commit().unwrap();
    assert_eq!(sweep.join().unwrap(), 0);
    let active = active_sessions(&mut admin);
    assert_eq!(active, 1);
}

/// Claims that are odd but valid JSON identify the caller: a NUL character or a number with
/// a huge exponent in an unrelated claim, a duplicated sub (the last one counts).
#[test]
fn odd_but_valid_claims_identify_the_caller() {
    let (mut admin, mut api) = database("odd_claims");
    let (me, webinar) = (uuid(5), uuid(301));
    for claims in [
        format!(r#"{{"sub":"{me}","note":"a\u0000b","role":"authenticated"}}"#),
        format!(r#"{{"sub":"{me}","tiny":1e-20000,"big":123456789012345678901234567890}}"#),
        format!(r#"{{"sub":"{}","sub":"{me}"}}"#, uuid(6)),
        format!(
            r#"  {{"sub" : "{}"}}  "#,
            me.replace('-', "").to_uppercase()
        ),
    ] {
        let status = rpc(
            &mut api,
            "authenticated",
            Some(&claims),
            "public.heartbeat",
            &[("webinar_id", &webinar), ("session_id", "tab")],
        )
        .unwrap_or_else(|e| panic!("{claims}: {e}"));
        let user: String = admin
            .query_one(
                "SELECT user_id::text FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
                &[&status["id"].as_str().unwrap()],
            )
            .unwrap()
            .get(0);
        assert_eq!(user, me, "{claims}: {status}");
    }
}

/// A signed-in caller's heartbeat takes the short path: it runs no PL/pgSQL function beyond
/// those its row needs, as pg_stat_xact_user_functions counts them in its transaction. In
/// the hosted edition the identity check is one (_checked_user, C in the Rust build), and it
/// reaches the general reading of the claims (_claimed_caller) only for claims that need it:
/// here a \u0000, which jsonb refuses. (If the short path broke, every answer would stay
/// right and only this test and the benchmark would notice.)
#[test]
fn a_signed_in_heartbeat_takes_the_short_path() {
    let (mut admin, _) = database("short_path");
    // Direct: the buffer answers a buffered heartbeat without any of the row's functions.
    admin
        .batch_execute(
            "ALTER DATABASE short_path SET track_functions = 'pl';
             ALTER DATABASE short_path SET webinar_sessions.heartbeat_mode = 'direct';",
        )
        .unwrap();
    let mut api = shared_cluster("api").connect_as("short_path", "authenticator");
    let (me, webinar) = (uuid(5), uuid(302));
    let mut ran = |claims: &str| -> Vec<String> {
        let mut tx = begin_request(&mut api, "authenticated", Some(claims)).unwrap();
        tx.query_one(
            "SELECT id FROM public.heartbeat(webinar_id => $1::text::uuid, session_id => 'tab')",
            &[&webinar],
        )
        .unwrap_or_else(|e| panic!("{claims}: {e}"));
        let names = tx
            .query(
                "SELECT funcname::text FROM pg_stat_xact_user_functions
                  WHERE schemaname = 'webinar_sessions' ORDER BY funcname COLLATE \"C\"",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        tx.commit().unwrap();
        names
    };
    let hosted = edition() == Edition::Hosted;
    // (On Citus the row's part runs on the worker node that holds the webinar's shard.)
    let expected = |general_reading: bool| -> Vec<String> {
        let mut names: Vec<String> = [
            (hosted && general_reading, "_claimed_caller"),
            (hosted, "_checked_user"),
            (true, "_mark_alive"),
            (!citus(), "_upsert_session"),
            (true, "heartbeat"),
        ]
        .into_iter()
        .filter(|(runs, _)| *runs)
        .map(|(_, name)| name.to_string())
        .collect();
        names.sort();
        names
    };
    ran(&claims_for(&me)); // opens the session
    assert_eq!(ran(&claims_for(&me)), expected(false));
    let odd = format!(r#"{{"sub":"{me}","note":"a\u0000b"}}"#);
    assert_eq!(ran(&odd), expected(true));
}

/// Row-level security under a parallel plan: the policy's current_user_id() runs inside it
/// (the hosted edition's reads the claims in an exception block, which a parallel query cannot
/// start: it must keep the plan serial, not fail).
#[test]
fn a_viewer_reads_their_own_rows_under_parallel_query() {
    let (mut admin, mut api) = database("parallel");
    let webinar = uuid(300);
    for user in [uuid(1), uuid(2)] {
        rpc(
            &mut api,
            "authenticated",
            Some(&claims_for(&user)),
            "public.enter_webinar",
            &[("webinar_id", &webinar), ("session_id", "tab")],
        )
        .unwrap();
    }
    let force = if server_version_num(&mut admin) >= 160000 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    };
    let mut transaction = api.transaction().unwrap();
    transaction
        .batch_execute(&format!(
            "SET LOCAL ROLE authenticated; SET LOCAL {force} = on;
             SELECT set_config('request.jwt.claims', '{}', true);",
            claims_for(&uuid(1))
        ))
        .unwrap();
    let own: Vec<String> = transaction
        .query(
            "SELECT user_id::text FROM webinar_sessions.webinar_user_sessions
             UNION ALL SELECT user_id::text FROM webinar_sessions.watch_time",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(own, vec![uuid(1), uuid(1)]);
}

/// The harness turns a JSON body into arguments with the SQL types of `ARGUMENT_TYPES`, as
/// PostgREST does from its schema cache: that list must be the catalog's, for every argument
/// of every function of the API.
#[test]
fn the_harness_knows_the_type_of_every_argument_of_the_api() {
    let (mut admin, _) = database("argument_types");
    let arguments = admin
        .query(
            "SELECT p.oid::regprocedure::text, a.name, format_type(a.type, NULL)
               FROM pg_depend AS d
               JOIN pg_extension AS e ON e.oid = d.refobjid AND e.extname = $1
               JOIN pg_proc AS p ON p.oid = d.objid AND d.classid = 'pg_proc'::regclass
              CROSS JOIN LATERAL unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]),
                                        p.proargnames, p.proargmodes) AS a(type, name, mode)
              WHERE d.deptype = 'e' AND p.prokind = 'f'
                -- not the internal functions, nor the helpers of the #[pg_test] build
                AND p.proname NOT LIKE '\\_%' AND p.proname NOT LIKE 'test\\_%'
                AND coalesce(a.mode, 'i') IN ('i', 'b', 'v') AND a.name IS NOT NULL",
            &[&extension_name()],
        )
        .unwrap();
    assert!(
        arguments.len() >= 10,
        "too few arguments found: {arguments:?}"
    );
    for row in arguments {
        let (function, name, sql_type): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let known = ARGUMENT_TYPES.iter().find(|(n, _)| *n == name);
        let sql_type = sql_type.replace("timestamp with time zone", "timestamptz");
        assert_eq!(
            known.map(|(_, t)| *t),
            Some(sql_type.as_str()),
            "{function}: argument {name}"
        );
    }
}

/// With `search_path = ''` PostgreSQL still resolves types and tables in the caller's pg_temp
/// first: a temporary domain named like a type a definer declares (timestamptz, uuid, text,
/// bytea) ran its CHECK as the extension's owner, a superuser (found by an adversarial review,
/// through live_viewers). Every definer now pins pg_catalog, pg_temp (pg_temp last). Here a login
/// that may act as authenticated plants such domains and calls every client-facing function:
/// none may run the planted code.
#[test]
fn temporary_types_cannot_hijack_the_definers() {
    let (mut admin, mut api) = database("hijack");
    let (viewer, webinar) = (uuid(1), uuid(100));
    admin
        .execute(
            "INSERT INTO webinar_sessions.webinar_hosts (webinar_id, user_id) VALUES ($1::text::uuid, $2::text::uuid)",
            &[&webinar, &viewer],
        )
        .unwrap();
    api.batch_execute(
        "CREATE FUNCTION pg_temp.hijacked(anyelement) RETURNS boolean LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'hijacked: ran as %', current_user; END $$;
         CREATE DOMAIN pg_temp.timestamptz AS pg_catalog.timestamptz CHECK (pg_temp.hijacked(VALUE));
         CREATE DOMAIN pg_temp.uuid AS pg_catalog.uuid CHECK (pg_temp.hijacked(VALUE));
         CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.hijacked(VALUE));
         CREATE DOMAIN pg_temp.bytea AS pg_catalog.bytea CHECK (pg_temp.hijacked(VALUE));",
    )
    .unwrap();
    // The calls name every type of their own schema-qualified (the harness's request would
    // meet the planted domains itself, as the caller).
    let claims = claims_for(&viewer);
    for call in [
        "public.enter_webinar(webinar_id => $1::pg_catalog.text::pg_catalog.uuid, session_id => 'tab')",
        "public.heartbeat(webinar_id => $1::pg_catalog.text::pg_catalog.uuid, session_id => 'tab')",
        "public.heartbeat(webinar_id => $1::pg_catalog.text::pg_catalog.uuid, session_id => 'tab')",
        "public.leave_webinar(webinar_id => $1::pg_catalog.text::pg_catalog.uuid, session_id => 'tab')",
        "public.live_viewers(webinar_id => $1::pg_catalog.text::pg_catalog.uuid)",
        "public.webinar_report(webinar_id => $1::pg_catalog.text::pg_catalog.uuid)",
        "public.webinar_summary(webinar_id => $1::pg_catalog.text::pg_catalog.uuid)",
    ] {
        let mut tx = begin_request(&mut api, "authenticated", Some(&claims)).unwrap();
        let answer = tx.query(
            &format!("SELECT pg_catalog.count(*) FROM {call} AS r"),
            &[&webinar.as_str()],
        );
        assert!(answer.is_ok(), "{call}: {answer:?}");
        tx.commit().unwrap();
    }
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'authenticator'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!superuser);
}

/// The extension's objects as one line each: every function with its arguments, result,
/// kind and privileges, every table, view and type with its columns and privileges. With
/// `$WEBINAR_SESSIONS_TEST_CATALOG_OUT` set it is written there, and tests/run.sh compares the
/// Rust build's with the hosted edition's (hosted/README.md lists what may differ).
#[test]
fn the_objects_of_the_extension() {
    let (mut admin, _) = database("objects");
    let lines: Vec<String> = admin
        .query(
            "WITH members AS (
                 SELECT d.classid, d.objid FROM pg_depend AS d
                   JOIN pg_extension AS e ON e.oid = d.refobjid AND e.extname = $1
                  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')
             SELECT format('function %s -> %s %s %s', p.oid::regprocedure, pg_get_function_result(p.oid),
                           p.prokind, coalesce(p.proacl::text, 'default'))
               FROM members AS m JOIN pg_proc AS p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
              -- not the helpers of the #[pg_test] build
              WHERE p.proname NOT LIKE 'test\\_%' AND p.pronamespace::regnamespace::text <> 'tests'
             UNION ALL
             SELECT format('%s %s (%s) %s', CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' ELSE c.relkind::text END,
                           c.oid::regclass,
                           (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                              FROM pg_attribute AS a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                           coalesce(c.relacl::text, 'default'))
               FROM members AS m JOIN pg_class AS c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
             UNION ALL
             SELECT format('type %s', t.oid::regtype)
               FROM members AS m JOIN pg_type AS t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
             UNION ALL
             SELECT format('schema %s', n.nspname)
               FROM members AS m JOIN pg_namespace AS n ON m.classid = 'pg_namespace'::regclass AND n.oid = m.objid
              WHERE n.nspname <> 'tests'
             ORDER BY 1",
            &[&extension_name()],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let functions = lines.iter().filter(|l| l.starts_with("function ")).count();
    assert!(functions >= 40, "only {functions} functions: {lines:#?}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("view webinar_sessions.webinar_stats (")));
    if let Ok(path) = std::env::var("WEBINAR_SESSIONS_TEST_CATALOG_OUT") {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }
}
