-- webinar_sessions 0.5.0 -> 0.5.1: what an attack review of 0.5.0 found.
--
-- * A pg_cron sweep that failed on a bad webinar_sessions.stale_after setting was not
--   recorded in sweep_runs (the setting was read outside the block that records failures).
-- * schedule_sweep takes stale_after: on hosted Supabase the postgres role cannot store
--   webinar_sessions.* settings for a role or database, so a cron sweep needs it from here.
-- * webinar_stats called _summary_for ten times per webinar (PostgreSQL copied the CTE's
--   column into each use): it runs once, in FROM.
-- * _stale_after_or_setting: the one check of a sweep's stale_after, shared by
--   sweep_stale_sessions, schedule_sweep and the unattended sweeps.
-- (The SQL-only edition's own fixes are in its functions, which hosted/package.sh replaces
-- on every update.) Data is untouched; tests/upgrade.rs compares the result with a fresh
-- 0.5.1.

-- The staleness limit a sweep applies: the argument, checked, or the
-- webinar_sessions.stale_after setting.
CREATE FUNCTION webinar_sessions._stale_after_or_setting(p_stale_after interval)
RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Checked the way the sweep applies it, by calendar arithmetic: as a comparison of
    -- intervals (a month = 30 days) '-1 year 364 days' would pass for positive and then
    -- reach into the future.
    IF now() - p_stale_after >= now() THEN
        RAISE EXCEPTION 'stale_after must be positive (got %)', p_stale_after
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF now() - p_stale_after < now() - interval '365 days' THEN
        RAISE EXCEPTION 'stale_after must be at most 365 days (got %)', p_stale_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN coalesce(p_stale_after, pg_catalog.make_interval(secs => webinar_sessions._stale_after_s()));
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.sweep_stale_sessions(stale_after interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN webinar_sessions._sweep(webinar_sessions._stale_after_or_setting(sweep_stale_sessions.stale_after), 'manual');
END
$$;
CREATE OR REPLACE VIEW webinar_sessions.webinar_stats WITH (security_invoker = true) AS
WITH summaries AS (
    -- In FROM, so that it runs once per webinar: as a column of the CTE, which PostgreSQL
    -- inlines, it would be copied into each of the ten uses of s below.
    SELECT webinars.webinar_id, summary.s
      FROM (SELECT spans.webinar_id FROM webinar_sessions.session_spans AS spans
             GROUP BY spans.webinar_id) AS webinars
     CROSS JOIN LATERAL webinar_sessions._summary_for(webinars.webinar_id) AS summary(s)
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

DROP FUNCTION webinar_sessions._unattended_sweep(text);
CREATE FUNCTION webinar_sessions._unattended_sweep(p_source text, p_stale_after interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stale_after interval;
    v_started timestamptz := clock_timestamp();
BEGIN
    BEGIN
        v_stale_after := webinar_sessions._stale_after_or_setting(p_stale_after);
        RETURN webinar_sessions._sweep(v_stale_after, p_source);
    EXCEPTION WHEN OTHERS THEN
        -- (sweep_runs needs a stale_after: when the setting itself was bad, the default's.)
        PERFORM webinar_sessions._record_sweep(v_started, NULL, p_source,
                                               coalesce(v_stale_after, p_stale_after, interval '300 seconds'), SQLERRM);
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

DROP FUNCTION webinar_sessions.schedule_sweep(text);
CREATE FUNCTION webinar_sessions.schedule_sweep(schedule text DEFAULT '*/10 * * * *', stale_after interval DEFAULT NULL)
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
    PERFORM webinar_sessions._stale_after_or_setting(schedule_sweep.stale_after);
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'schedule_sweep needs the pg_cron extension in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run CREATE EXTENSION pg_cron (on Supabase: Database > Extensions > pg_cron).';
    END IF;
    BEGIN
        v_job := cron.schedule('webinar_sessions_sweep', schedule,
                               pg_catalog.format('SELECT webinar_sessions._unattended_sweep(%L, %L)',
                                                 'cron', schedule_sweep.stale_after));
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'schedule % is not a valid cron schedule', pg_catalog.quote_literal(schedule)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Five cron fields, for example */10 * * * * for every 10 minutes.';
    END;
    RETURN v_job;
END
$$;
COMMENT ON FUNCTION webinar_sessions.schedule_sweep(text, interval) IS
    'Sweeps stale sessions from a pg_cron job (default: every 10 minutes, stale_after from the setting), for servers without the background worker; returns the job id. Idempotent.';

REVOKE ALL ON FUNCTION webinar_sessions._stale_after_or_setting(interval),
    webinar_sessions._unattended_sweep(text, interval), webinar_sessions.schedule_sweep(text, interval) FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webinar_sessions FROM anon;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION webinar_sessions._stale_after_or_setting(interval),
            webinar_sessions._unattended_sweep(text, interval), webinar_sessions.schedule_sweep(text, interval)
            TO service_role;
    END IF;
END
$grants$;
