//! Installing, removing and backing up: a plain Postgres without Supabase's roles, and
//! pg_dump / pg_restore of a database with sessions.

mod common;

use common::*;
use postgres::Client;
use std::process::Command;

fn all_rows(client: &mut Client, table: &str) -> String {
    client
        .query_one(&format!("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {table} AS t"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn installs_works_and_uninstalls_on_a_plain_postgres() {
    let cluster = Cluster::start("plain", &["webinar_sessions.sweeper_enabled = off"]);
    let mut client = cluster.connect("postgres");
    let supabase_roles: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(supabase_roles, 0);
    client
        .batch_execute("CREATE EXTENSION webinar_sessions")
        .unwrap();

    // A superuser backend acts for a user it names.
    let (webinar, viewer) = (uuid(100), uuid(1));
    let status = |client: &mut Client, function: &str| -> String {
        client
            .query_one(
                &format!("SELECT status FROM {function}($1::text::uuid, 'tab', $2::text::uuid)"),
                &[&webinar, &viewer],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(status(&mut client, "webinar_sessions.enter"), "entered");
    assert_eq!(status(&mut client, "webinar_sessions.heartbeat"), "alive");
    assert_eq!(status(&mut client, "webinar_sessions.leave"), "left");

    // Nothing of the extension is executable by PUBLIC but current_user_id(), which the
    // row-level security policy needs.
    let public_executable: Vec<String> = client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'webinar_sessions'
              WHERE has_function_privilege('public', p.oid, 'EXECUTE')
                AND p.pronamespace IN ('webinar_sessions'::regnamespace, 'public'::regnamespace)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(public_executable, ["webinar_sessions.current_user_id()"]);

    client
        .batch_execute("DROP EXTENSION webinar_sessions")
        .unwrap();
    let left_behind: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE proname IN ('enter_webinar', 'heartbeat', 'leave_webinar')
                OR pronamespace = 'webinar_sessions'::regnamespace",
            &[],
        )
        .map(|row| row.get(0))
        .unwrap_or(0);
    assert_eq!(left_behind, 0);
    client
        .batch_execute("CREATE EXTENSION webinar_sessions")
        .unwrap();
}

#[test]
fn dump_and_restore_keep_every_session() {
    let cluster = Cluster::start("dump", &["webinar_sessions.sweeper_enabled = off"]);
    let mut source = cluster.supabase_database("source");
    source
        .batch_execute(
            "SELECT webinar_sessions.enter(gen_random_uuid(), 'tab-' || n, gen_random_uuid())
               FROM generate_series(1, 50) AS n;
             UPDATE webinar_sessions.webinar_user_sessions
                SET entered_at = entered_at - interval '1 hour',
                    last_heartbeat_at = now() - interval '40 min'
              WHERE session_id LIKE 'tab-1%';
             SELECT webinar_sessions.leave(webinar_id, session_id, user_id)
               FROM webinar_sessions.webinar_user_sessions WHERE session_id LIKE 'tab-2%';
             SELECT webinar_sessions.sweep_stale_sessions('10 min');",
        )
        .unwrap();
    let sessions = all_rows(&mut source, "webinar_sessions.webinar_user_sessions");
    let runs = all_rows(&mut source, "webinar_sessions.sweep_runs");
    assert_eq!(sessions.lines().count(), 50);
    assert!(sessions.contains(",swept,") && sessions.contains(",left,"));

    let dump = std::env::temp_dir().join(format!("webinar_sessions-{}.dump", std::process::id()));
    let port = cluster.port.to_string();
    let pg = |program: &str, args: &[&str]| {
        let out = Command::new(format!("/usr/lib/postgresql/15/bin/{program}"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pg("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "source"]);
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    pg(
        "pg_restore",
        &["-d", "restored", "--exit-on-error", dump.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(&dump);

    let mut restored = cluster.connect("restored");
    assert_eq!(
        all_rows(&mut restored, "webinar_sessions.webinar_user_sessions"),
        sessions
    );
    assert_eq!(all_rows(&mut restored, "webinar_sessions.sweep_runs"), runs);

    // The API works on the restored copy: an active session is still the same session.
    let (webinar, session, user): (String, String, String) = {
        let row = restored
            .query_one(
                "SELECT webinar_id::text, session_id, user_id::text FROM webinar_sessions.webinar_user_sessions
                  WHERE exited_at IS NULL LIMIT 1",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let mut api = cluster.connect_as("restored", "authenticator");
    let alive = rpc(
        &mut api,
        "authenticated",
        Some(&claims_for(&user)),
        "public.heartbeat",
        &[("webinar_id", &webinar), ("session_id", &session)],
    )
    .unwrap();
    assert_eq!(alive["status"], "alive");
}
