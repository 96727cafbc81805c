-- webinar_sessions 0.4.0 -> 0.5.0: one SQL source for two editions, and sweeps from pg_cron.
--
-- * webinar_stats reads each webinar's summary from _summary_for(webinar_id), which each
--   edition provides: the Rust aggregate here, window functions in the SQL-only edition for
--   hosted Supabase (hosted/). Same columns, same figures.
-- * schedule_sweep / unschedule_sweep: a pg_cron job that sweeps where the background worker
--   does not run. sweep_runs.source accepts 'cron'; _unattended_sweep(source) is what the worker
--   and the job run (_worker_sweep calls it).
-- * Messages: a session id or sub claim is quoted by one rule both editions share; an
--   unparsable request.jwt.claims no longer repeats the JSON parser's words.
-- * A presence value (the bytea behind concurrency, retention and attendance) stores its
--   times big-endian; it is never stored, so nothing needs converting.
-- Data is untouched. tests/upgrade.rs checks that a database updated through this script ends
-- up with exactly the objects, definitions and privileges of a fresh 0.5.0.

ALTER TABLE webinar_sessions.sweep_runs DROP CONSTRAINT sweep_runs_source_check;
ALTER TABLE webinar_sessions.sweep_runs ADD CONSTRAINT sweep_runs_source_check
    CHECK (source IN ('worker', 'cron', 'manual'));

CREATE FUNCTION webinar_sessions._summary_for(p_webinar_id uuid)
RETURNS double precision[]
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT webinar_sessions._presence_summary(s.user_id, s.started_at, s.ended_at)
              FROM webinar_sessions.audience_spans AS s
             WHERE s.webinar_id = p_webinar_id);
END
$$;

CREATE OR REPLACE VIEW webinar_sessions.webinar_stats WITH (security_invoker = true) AS
WITH summaries AS (
    SELECT webinars.webinar_id, webinar_sessions._summary_for(webinars.webinar_id) AS s
      FROM (SELECT spans.webinar_id FROM webinar_sessions.session_spans AS spans
             GROUP BY spans.webinar_id) AS webinars
), active AS (
    SELECT a.webinar_id, count(*) AS active_sessions, count(DISTINCT a.user_id) AS active_viewers
      FROM webinar_sessions.active_audience AS a
     GROUP BY a.webinar_id
)
SELECT w.webinar_id,
       w.s[1]::bigint AS viewers,
       w.s[2]::bigint AS sessions,
       coalesce(a.active_sessions, 0) AS active_sessions,
       coalesce(a.active_viewers, 0)  AS active_viewers,
       w.s[3] AS total_watched_seconds,
       w.s[3] / w.s[1] AS avg_watched_seconds,
       w.s[4]::bigint AS peak_concurrent_viewers,
       timestamptz '2000-01-01 00:00:00+00' + w.s[5] * interval '1 microsecond' AS peak_at,
       timestamptz '2000-01-01 00:00:00+00' + w.s[6] * interval '1 microsecond' AS first_entered_at,
       timestamptz '2000-01-01 00:00:00+00' + w.s[7] * interval '1 microsecond' AS last_seen_at
  FROM summaries AS w
  LEFT JOIN active AS a ON a.webinar_id = w.webinar_id
 -- A webinar whose every session is a host's has no audience figures.
 WHERE w.s IS NOT NULL;

CREATE FUNCTION webinar_sessions._unattended_sweep(p_source text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stale_after interval := pg_catalog.make_interval(secs => webinar_sessions._stale_after_s());
    v_started timestamptz := clock_timestamp();
BEGIN
    BEGIN
        RETURN webinar_sessions._sweep(v_stale_after, p_source);
    EXCEPTION WHEN OTHERS THEN
        PERFORM webinar_sessions._record_sweep(v_started, NULL, p_source, v_stale_after, SQLERRM);
        RETURN NULL;
    END;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions._worker_sweep()
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT webinar_sessions._unattended_sweep('worker');
$$;

-- Sweeps without the background worker (hosted Supabase, or a server that does not preload
-- the library): a pg_cron job, named webinar_sessions_sweep, owned by the caller and run in
-- this database. pg_cron must be installed here (on Supabase: Database > Extensions > pg_cron).
-- Idempotent: scheduling again changes the schedule of the same job.
CREATE FUNCTION webinar_sessions.schedule_sweep(schedule text DEFAULT '*/10 * * * *')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_job bigint;
BEGIN
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'schedule must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'schedule_sweep needs the pg_cron extension in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run CREATE EXTENSION pg_cron (on Supabase: Database > Extensions > pg_cron).';
    END IF;
    BEGIN
        v_job := cron.schedule('webinar_sessions_sweep', schedule,
                               'SELECT webinar_sessions._unattended_sweep(''cron'')');
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'schedule % is not a valid cron schedule', pg_catalog.quote_literal(schedule)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Five cron fields, for example */10 * * * * for every 10 minutes.';
    END;
    RETURN v_job;
END
$$;
COMMENT ON FUNCTION webinar_sessions.schedule_sweep(text) IS
    'Sweeps stale sessions from a pg_cron job (default: every 10 minutes), for servers without the background worker; returns the job id. Idempotent.';

CREATE FUNCTION webinar_sessions.unschedule_sweep()
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_job bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN false;
    END IF;
    SELECT j.jobid INTO v_job FROM cron.job AS j
     WHERE j.jobname = 'webinar_sessions_sweep' AND j.username = current_user;
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    PERFORM cron.unschedule(v_job);
    RETURN true;
END
$$;
COMMENT ON FUNCTION webinar_sessions.unschedule_sweep() IS
    'Removes the pg_cron job of schedule_sweep; true when there was one. Idempotent.';

REVOKE ALL ON FUNCTION webinar_sessions._summary_for(uuid), webinar_sessions._unattended_sweep(text),
    webinar_sessions.schedule_sweep(text), webinar_sessions.unschedule_sweep() FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webinar_sessions FROM anon;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION webinar_sessions._summary_for(uuid), webinar_sessions._unattended_sweep(text),
            webinar_sessions.schedule_sweep(text), webinar_sessions.unschedule_sweep() TO service_role;
    END IF;
END
$grants$;
