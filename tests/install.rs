//! Installing, removing and backing up: a plain Postgres without Supabase's roles, and
//! pg_dump / pg_restore of a database with sessions.

use harness::*;
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
            .args(["-h", "127.0.0.1", "-p", &port, "-U", superuser()])
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

/// A notice-collecting connection (the NOTICE of `heartbeat_mode = buffered` without preloading).
fn connect_with_notices(
    cluster: &Cluster,
    database: &str,
) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::str::FromStr;
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = notices.clone();
    let client = postgres::Config::from_str(&cluster.url(database, superuser()))
        .unwrap()
        .notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    (client, notices)
}

fn show(client: &mut Client, setting: &str) -> Result<String, String> {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .map(|row| row.get(0))
        .map_err(|e| {
            e.as_db_error()
                .map_or(e.to_string(), |d| d.code().code().to_string())
        })
}

fn buffer_mode(client: &mut Client) -> (String, i64) {
    let row = client
        .query_one(
            "SELECT mode, capacity FROM webinar_sessions.buffer_stats",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Without shared_preload_libraries the library is loaded late: by CREATE EXTENSION, by the
/// first call in each new backend, by LOAD, or through session_preload_libraries. Each must
/// keep the connection, define no server-start setting, and give the whole API in direct mode.
#[test]
fn loads_late_without_preloading_and_works_in_direct_mode() {
    let cluster = Cluster::start(
        "late_load",
        // The last line of postgresql.conf wins: this server does not preload the library.
        &["shared_preload_libraries = ''"],
    );
    let mut client = cluster.supabase_database("late");
    client
        .batch_execute("SELECT 1")
        .expect("the connection survives CREATE EXTENSION");

    // A new backend loads the library at its first call.
    let (mut client, notices) = connect_with_notices(&cluster, "late");
    assert_eq!(buffer_mode(&mut client), ("direct".into(), 0));
    assert_eq!(
        show(&mut client, "webinar_sessions.stale_after").unwrap(),
        "5min"
    );
    // Server-start settings are not defined (as pg_stat_statements does without preloading).
    assert_eq!(
        show(&mut client, "webinar_sessions.buffer_capacity"),
        Err("42704".into())
    );
    assert_eq!(
        show(&mut client, "webinar_sessions.database"),
        Err("42704".into())
    );
    // Asking for buffered heartbeats says why they stay direct.
    client
        .batch_execute("SET webinar_sessions.heartbeat_mode = buffered")
        .unwrap();
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains("needs the library in shared_preload_libraries"),
        "no NOTICE for buffered without preloading: {said:?}"
    );
    assert_eq!(buffer_mode(&mut client).0, "direct");
    assert_eq!(
        show(&mut client, "webinar_sessions.heartbeat_mode").unwrap(),
        "direct"
    );

    // The client API, the sweep by hand and the statistics, as PostgREST calls them.
    let mut api = cluster.connect_as("late", "authenticator");
    let (webinar, viewer) = (uuid(100), uuid(1));
    let call = |api: &mut Client, function: &str| {
        rpc(
            api,
            "authenticated",
            Some(&claims_for(&viewer)),
            function,
            &[("webinar_id", &webinar), ("session_id", "tab")],
        )
        .unwrap_or_else(|e| panic!("{function}: {e}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(call(&mut api, "public.enter_webinar"), "entered");
    assert_eq!(call(&mut api, "public.heartbeat"), "alive");
    let stored: bool = client
        .query_one(
            "SELECT last_heartbeat_at IS NOT NULL FROM webinar_sessions.webinar_user_sessions",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(stored, "a direct heartbeat writes its row");
    client
        .batch_execute(
            "UPDATE webinar_sessions.webinar_user_sessions
                SET entered_at = entered_at - interval '1 hour', last_heartbeat_at = last_heartbeat_at - interval '1 hour'",
        )
        .unwrap();
    let swept: i64 = client
        .query_one(
            "SELECT webinar_sessions.sweep_stale_sessions('10 minutes')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(swept, 1);
    assert_eq!(call(&mut api, "public.heartbeat"), "reopened");
    assert_eq!(call(&mut api, "public.leave_webinar"), "left");
    let viewers: i64 = client
        .query_one("SELECT viewers FROM webinar_sessions.webinar_stats", &[])
        .unwrap()
        .get(0);
    assert_eq!(viewers, 1);

    // LOAD by a superuser, in a backend that has not loaded it yet.
    let mut loader = cluster.connect("late");
    loader.batch_execute("LOAD 'webinar_sessions'").unwrap();
    assert_eq!(buffer_mode(&mut loader), ("direct".into(), 0));

    // session_preload_libraries: loaded at each backend's start, still not preloaded.
    for sql in [
        "ALTER SYSTEM SET session_preload_libraries = 'webinar_sessions'",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(sql).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut session = cluster.connect("late");
    assert_eq!(
        show(&mut session, "webinar_sessions.heartbeat_mode").unwrap(),
        "direct"
    );
    assert_eq!(
        show(&mut session, "webinar_sessions.buffer_capacity"),
        Err("42704".into())
    );
    assert_eq!(call(&mut api, "public.enter_webinar"), "entered");

    // shared_preload_libraries changed by ALTER SYSTEM takes a restart; until then new
    // backends still load the library late.
    for sql in [
        "ALTER SYSTEM RESET session_preload_libraries",
        "ALTER SYSTEM SET shared_preload_libraries = 'webinar_sessions'",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(sql).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut reloaded = cluster.connect("late");
    assert_eq!(buffer_mode(&mut reloaded), ("direct".into(), 0));
    drop((client, api, loader, session, reloaded));
    cluster.stop("fast");
    cluster.start_again();
    let mut restarted = cluster.connect("late");
    let (mode, capacity) = buffer_mode(&mut restarted);
    assert_eq!(mode, "buffered", "preloaded after the restart");
    assert!(capacity > 0);
    assert_eq!(
        show(&mut restarted, "webinar_sessions.buffer_capacity").unwrap(),
        "100000"
    );
}
