//! Sweeps from pg_cron (`schedule_sweep`), for servers where the background worker does not
//! run: hosted Supabase (tests/run.sh runs this on the hosted edition) and a Postgres that
//! does not preload the library. A real pg_cron, a real one-minute schedule.

use harness::*;
use std::time::Duration;

#[test]
fn pg_cron_sweeps_on_schedule_and_scheduling_is_idempotent() {
    let preload = match edition() {
        Edition::Rust => "shared_preload_libraries = 'webinar_sessions, pg_cron'",
        Edition::Hosted => "shared_preload_libraries = 'pg_tle, pg_cron'",
    };
    let cluster = Cluster::start("cron", &[preload, "cron.database_name = 'postgres'"]);
    let mut admin = cluster.connect("postgres");
    // pg_cron lives in the postgres database only; so does the extension here.
    let mut owner = match edition() {
        Edition::Rust => {
            admin
                .batch_execute("CREATE EXTENSION pg_cron; CREATE EXTENSION webinar_sessions")
                .unwrap();
            cluster.connect("postgres")
        }
        Edition::Hosted => {
            cluster.install_hosted(&mut admin, "postgres");
            cluster.connect_as("postgres", "postgres")
        }
    };
    // Without pg_cron there is nothing to unschedule; with it, nothing yet either.
    let removed: bool = owner
        .query_one("SELECT webinar_sessions.unschedule_sweep()", &[])
        .unwrap()
        .get(0);
    assert!(!removed, "no job was scheduled yet");
    let bad = owner
        .query_one(
            "SELECT webinar_sessions.schedule_sweep('every minute')",
            &[],
        )
        .unwrap_err();
    let bad = bad.as_db_error().expect("a database error");
    assert_eq!(bad.code().code(), "22023", "{bad:?}");
    assert!(
        bad.message().contains("'every minute'"),
        "{}",
        bad.message()
    );

    // One stale session, one fresh one.
    admin
        .batch_execute(
            "INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id, entered_at)
             VALUES ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'stale', now() - interval '1 hour'),
                    ('00000000-0000-0000-0000-00000000000a', gen_random_uuid(), 'fresh', now())",
        )
        .unwrap();
    let bad = owner
        .query_one(
            "SELECT webinar_sessions.schedule_sweep('* * * * *', '-1 minute')",
            &[],
        )
        .unwrap_err();
    assert_eq!(bad.as_db_error().unwrap().code().code(), "22023", "{bad:?}");
    // Every minute, closing what was silent for 30 minutes (not the 5-minute setting: the
    // fresh session is 0 s old either way, the stale one an hour).
    let job: i64 = owner
        .query_one("SELECT webinar_sessions.schedule_sweep('* * * * *')", &[])
        .unwrap()
        .get(0);
    let again: i64 = owner
        .query_one(
            "SELECT webinar_sessions.schedule_sweep('* * * * *', '30 minutes')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(job, again, "scheduling twice keeps one job");
    let jobs: i64 = admin
        .query_one(
            "SELECT count(*) FROM cron.job WHERE jobname = 'webinar_sessions_sweep'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(jobs, 1);

    // pg_cron starts jobs on the minute.
    let swept = eventually(Duration::from_secs(130), || {
        admin
            .query_one(
                "SELECT count(*) FROM webinar_sessions.sweep_runs
                  WHERE source = 'cron' AND swept = 1 AND stale_after = '30 minutes'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 1
    });
    assert!(swept, "no cron sweep recorded; log:\n{}", cluster.log());
    let states: Vec<(String, bool)> = admin
        .query(
            "SELECT s.session_id, s.exited_at IS NULL FROM webinar_sessions.webinar_user_sessions AS s
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        states,
        vec![("fresh".to_string(), true), ("stale".to_string(), false)]
    );

    // In the hosted edition a bad setting is found when the sweep reads it: the failed sweep
    // is recorded, as any other failure. (The Rust build refuses it at ALTER ROLE already.)
    if edition() == Edition::Hosted {
        admin
            .batch_execute("ALTER ROLE postgres SET webinar_sessions.stale_after = '5 parsecs'")
            .unwrap();
        owner
            .query_one("SELECT webinar_sessions.schedule_sweep('* * * * *')", &[])
            .unwrap();
        let recorded = eventually(Duration::from_secs(130), || {
            admin
                .query_one(
                    "SELECT count(*) FROM webinar_sessions.sweep_runs
                      WHERE source = 'cron' AND swept IS NULL
                        AND error LIKE 'invalid value for parameter \"webinar_sessions.stale_after\"%'",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
                == 1
        });
        assert!(
            recorded,
            "the failed sweep was not recorded; log:\n{}",
            cluster.log()
        );
    }

    let removed: Vec<bool> = (0..2)
        .map(|_| {
            owner
                .query_one("SELECT webinar_sessions.unschedule_sweep()", &[])
                .unwrap()
                .get(0)
        })
        .collect();
    assert_eq!(removed, vec![true, false], "unschedule is idempotent");
    let jobs: i64 = admin
        .query_one(
            "SELECT count(*) FROM cron.job WHERE jobname = 'webinar_sessions_sweep'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(jobs, 0);
}
