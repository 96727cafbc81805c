//! SQL behaviour, run inside the test cluster by `cargo pgrx test`. Each test is one
//! transaction that is rolled back afterwards, so `now()` is constant within a test; the
//! tests that need time to pass write old timestamps directly. Races, roles, JWT claims and
//! the worker are tested against a real cluster under `tests/`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const WEBINAR: &str = "'7a0c9f55-3f56-4c61-9b7e-59a1b44f0a01'::uuid";
    const VIEWER: &str = "'0b6f1f3e-1c1d-4c1e-8f0e-3b0d3c5c9a02'::uuid";

    /// Runs one call and returns (status, id) of the session_status it returned.
    fn call(function: &str, session_id: &str) -> (String, Option<pgrx::Uuid>) {
        let sql = format!(
            "SELECT status, id FROM webinar_sessions.{function}({WEBINAR}, '{session_id}', {VIEWER})"
        );
        Spi::get_two::<String, pgrx::Uuid>(&sql)
            .map(|(status, id)| (status.expect("status is never null"), id))
            .expect("call failed")
    }

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql)
            .expect("query failed")
            .expect("count is never null")
    }

    #[pg_test]
    fn enter_opens_then_resumes_the_same_session() {
        let (status, first) = call("enter", "tab-1");
        assert_eq!(status, "entered");
        let (status, again) = call("enter", "tab-1");
        assert_eq!(status, "resumed");
        assert_eq!(first, again);
        let (status, other_tab) = call("enter", "tab-2");
        assert_eq!(status, "entered");
        assert_ne!(first, other_tab);
        assert_eq!(
            count("SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL"),
            2
        );
    }

    #[pg_test]
    fn entry_is_not_a_heartbeat_but_resuming_is_a_sign_of_life() {
        call("enter", "tab-1");
        let heartbeat = Spi::get_one::<bool>(
            "SELECT last_heartbeat_at IS NULL FROM webinar_sessions.webinar_user_sessions",
        );
        assert_eq!(heartbeat, Ok(Some(true)));
        call("enter", "tab-1");
        let heartbeat = Spi::get_one::<bool>(
            "SELECT last_heartbeat_at = now() FROM webinar_sessions.webinar_user_sessions",
        );
        assert_eq!(heartbeat, Ok(Some(true)));
    }

    #[pg_test]
    fn heartbeat_marks_alive_and_reopens_what_is_gone() {
        let (status, never_opened) = call("heartbeat", "tab-1");
        assert_eq!(status, "reopened");
        let (status, same) = call("heartbeat", "tab-1");
        assert_eq!((status.as_str(), same), ("alive", never_opened));

        call("leave", "tab-1");
        let (status, fresh) = call("heartbeat", "tab-1");
        assert_eq!(status, "reopened");
        assert_ne!(fresh, never_opened);
        assert_eq!(
            count("SELECT count(*) FROM webinar_sessions.webinar_user_sessions"),
            2
        );
    }

    #[pg_test]
    fn heartbeat_result_carries_the_interval_setting() {
        Spi::run("SET LOCAL webinar_sessions.heartbeat_interval = '3min'").unwrap();
        let interval = Spi::get_one::<i32>(&format!(
            "SELECT heartbeat_interval_s FROM webinar_sessions.heartbeat({WEBINAR}, 'tab', {VIEWER})"
        ));
        assert_eq!(interval, Ok(Some(180)));
    }

    #[pg_test]
    fn a_heartbeat_after_an_enter_keeps_the_enter_durable() {
        // (A heartbeat alone in its transaction commits asynchronously: tests/races.rs shows
        // it; here the test's own transaction has written already.)
        let setting = || Spi::get_one::<String>("SELECT current_setting('synchronous_commit')");
        call("enter", "tab-1");
        assert_eq!(
            setting(),
            Ok(Some("on".into())),
            "enter keeps the server's durability"
        );
        call("heartbeat", "tab-1");
        assert_eq!(
            setting(),
            Ok(Some("on".into())),
            "the heartbeat must not make the enter asynchronous"
        );
    }

    #[pg_test]
    fn a_heartbeat_that_opens_a_session_commits_durably() {
        let setting = || Spi::get_one::<String>("SELECT current_setting('synchronous_commit')");
        let (status, _) = call("heartbeat", "never-entered");
        assert_eq!(status, "reopened");
        assert_eq!(
            setting(),
            Ok(Some("on".into())),
            "a new session must survive a crash"
        );
        Spi::run(&format!(
            "SELECT webinar_sessions.heartbeat_batch(ARRAY[{WEBINAR}], ARRAY['batch-opened'], ARRAY[{VIEWER}])"
        ))
        .unwrap();
        assert_eq!(setting(), Ok(Some("on".into())), "nor one a batch opened");
    }

    #[pg_test]
    fn leave_closes_once() {
        let (_, id) = call("enter", "tab-1");
        let (status, left) = call("leave", "tab-1");
        assert_eq!((status.as_str(), left), ("left", id));
        let reason = Spi::get_one::<String>(
            "SELECT exit_reason FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NOT NULL",
        );
        assert_eq!(reason, Ok(Some("left".into())));
        let (status, none) = call("leave", "tab-1");
        assert_eq!((status.as_str(), none), ("not_found", None));
    }

    /// Writes sessions whose last sign of life lies in the past.
    fn insert_aged(session_id: &str, entered_ago: &str, heartbeat_ago: Option<&str>) {
        let heartbeat = heartbeat_ago.map_or("NULL".to_string(), |ago| {
            format!("now() - interval '{ago}'")
        });
        Spi::run(&format!(
            "INSERT INTO webinar_sessions.webinar_user_sessions
                 (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
             VALUES ({WEBINAR}, {VIEWER}, '{session_id}', now() - interval '{entered_ago}', {heartbeat})"
        ))
        .unwrap();
    }

    #[pg_test]
    fn sweep_closes_stale_sessions_at_their_last_sign_of_life() {
        insert_aged("silent-since-heartbeat", "1 hour", Some("10 min"));
        insert_aged("silent-since-entry", "20 min", None);
        insert_aged("fresh", "1 hour", Some("1 min"));
        insert_aged("fresh-entry", "2 min", None);

        let swept = Spi::get_one::<i64>("SELECT webinar_sessions.sweep_stale_sessions('5 min')");
        assert_eq!(swept, Ok(Some(2)));
        assert_eq!(
            count(
                "SELECT count(*) FROM webinar_sessions.webinar_user_sessions
                  WHERE exit_reason = 'swept'
                    AND exited_at = coalesce(last_heartbeat_at, entered_at)
                    AND session_id IN ('silent-since-heartbeat', 'silent-since-entry')"
            ),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE exited_at IS NULL"),
            2
        );
        // A second sweep finds nothing more, and both runs are on record.
        assert_eq!(
            Spi::get_one::<i64>("SELECT webinar_sessions.sweep_stale_sessions('5 min')"),
            Ok(Some(0))
        );
        assert_eq!(
            count("SELECT count(*) FROM webinar_sessions.sweep_runs WHERE source = 'manual' AND error IS NULL"),
            2
        );
        assert_eq!(
            count("SELECT sum(swept)::bigint FROM webinar_sessions.sweep_runs"),
            2
        );
    }

    #[pg_test]
    fn sweep_defaults_to_the_stale_after_setting() {
        insert_aged("a", "1 hour", Some("3 min"));
        Spi::run("SET LOCAL webinar_sessions.stale_after = '5min'").unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT webinar_sessions.sweep_stale_sessions()"),
            Ok(Some(0))
        );
        Spi::run("SET LOCAL webinar_sessions.stale_after = '2min'").unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT webinar_sessions.sweep_stale_sessions()"),
            Ok(Some(1))
        );
        let recorded = Spi::get_one::<bool>(
            "SELECT bool_and(stale_after = interval '2 min') FROM webinar_sessions.sweep_runs WHERE swept = 1",
        );
        assert_eq!(recorded, Ok(Some(true)));
    }

    #[pg_test]
    fn a_swept_session_is_reopened_by_its_next_heartbeat() {
        insert_aged("tab", "1 hour", Some("30 min"));
        Spi::run("SELECT webinar_sessions.sweep_stale_sessions('5 min')").unwrap();
        let (status, _) = call("heartbeat", "tab");
        assert_eq!(status, "reopened");
        assert_eq!(
            count("SELECT count(*) FROM webinar_sessions.webinar_user_sessions WHERE session_id = 'tab'"),
            2
        );
    }

    #[pg_test]
    fn sweep_history_is_bounded() {
        Spi::run(
            "INSERT INTO webinar_sessions.sweep_runs (started_at, finished_at, swept, source, stale_after)
             SELECT now() - n * interval '1 min', now() - n * interval '1 min', 0, 'worker', '5 min'
               FROM generate_series(1, 1200) AS n",
        )
        .unwrap();
        Spi::run("SELECT webinar_sessions.sweep_stale_sessions('5 min')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM webinar_sessions.sweep_runs"),
            1000
        );
        assert_eq!(
            count("SELECT count(*) FROM webinar_sessions.sweep_runs WHERE source = 'manual'"),
            1
        );
    }

    #[pg_test]
    fn heartbeat_batch_marks_alive_and_opens_in_one_call() {
        call("enter", "active");
        insert_aged("swept", "1 hour", Some("30 min"));
        Spi::run("SELECT webinar_sessions.sweep_stale_sessions('5 min')").unwrap();

        let marked = Spi::get_one::<i64>(&format!(
            "SELECT webinar_sessions.heartbeat_batch(
                 ARRAY[{WEBINAR}, {WEBINAR}, {WEBINAR}, {WEBINAR}],
                 ARRAY['active', 'swept', 'new', 'active'],
                 ARRAY[{VIEWER}, {VIEWER}, {VIEWER}, {VIEWER}])"
        ));
        assert_eq!(marked, Ok(Some(3)), "duplicates count once");
        assert_eq!(
            count(
                "SELECT count(*) FROM webinar_sessions.webinar_user_sessions
                  WHERE exited_at IS NULL AND last_heartbeat_at = now()"
            ),
            3
        );
        let empty =
            Spi::get_one::<i64>("SELECT webinar_sessions.heartbeat_batch('{}', '{}', '{}')");
        assert_eq!(empty, Ok(Some(0)));
    }

    #[pg_test]
    fn heartbeats_are_hot_updates_of_unindexed_columns() {
        // Every index and index predicate of the table, and the columns a heartbeat writes: they
        // must not meet, or heartbeats stop being HOT.
        let touched = count(
            "SELECT count(*)
               FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid
              WHERE i.indrelid = 'webinar_sessions.webinar_user_sessions'::regclass
                AND a.attname IN ('last_heartbeat_at', 'updated_at')
                AND (a.attnum = ANY (i.indkey)
                     OR pg_get_expr(i.indpred, i.indrelid) LIKE '%' || a.attname || '%')",
        );
        assert_eq!(touched, 0);
        let fillfactor = Spi::get_one::<bool>(
            "SELECT 'fillfactor=75' = ANY (reloptions) FROM pg_class
              WHERE oid = 'webinar_sessions.webinar_user_sessions'::regclass",
        );
        assert_eq!(fillfactor, Ok(Some(true)));
    }

    #[pg_test]
    fn constraints_reject_insane_rows() {
        for (exited_at, exit_reason) in [
            ("now()", "NULL"),                       // closed without a reason
            ("now() - interval '1 hour'", "'left'"), // closed before it was entered
            ("NULL", "'left'"),                      // a reason without an exit
            ("now()", "'vanished'"),                 // an unknown reason
        ] {
            let sql = format!(
                "INSERT INTO webinar_sessions.webinar_user_sessions
                     (webinar_id, user_id, session_id, exited_at, exit_reason)
                 VALUES ({WEBINAR}, {VIEWER}, 'tab', {exited_at}, {exit_reason})"
            );
            let sqlstate = Spi::get_one::<String>(&format!(
                "SELECT webinar_sessions.test_sqlstate_of({})",
                pgrx::spi::quote_literal(&sql)
            ));
            assert_eq!(sqlstate, Ok(Some("23514".into())), "{sql}");
        }
    }

    // Runs a statement in a subtransaction and returns its SQLSTATE, or NULL when it succeeded.
    extension_sql!(
        r#"
    CREATE FUNCTION webinar_sessions.test_sqlstate_of(statement text) RETURNS text
    LANGUAGE plpgsql AS $$
    BEGIN
        EXECUTE statement;
        RETURN NULL;
    EXCEPTION WHEN OTHERS THEN
        RETURN SQLSTATE;
    END
    $$;
    "#,
        name = "test_sqlstate_helper"
    );
}
