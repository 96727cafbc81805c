-- webinar_sessions 0.6.2 -> 0.6.3: hostile values answered with the right errors.
-- * The session table refuses infinite times (wus_times_finite): one such row, written past
--   the API, made webinar_stats fail for every webinar. The update stops, saying which rows,
--   when the table already holds one.
-- * sweep_stale_sessions and schedule_sweep: a stale_after so long that now() minus it is
--   before the first timestamp ('7000 years') is refused as too long (22023), not 22008.
-- * attendance and retention: a window longer than 4000 years is refused (22023); it overflowed
--   retention's integer minute_offset, or the microseconds of the window, or silently wrapped.
-- tests/upgrade.rs compares the result with a fresh 0.6.3.
-- On Citus the coordinator's ALTER TABLE reaches the worker nodes' tables and shards; the
-- update the coordinator passes on to a worker node must not add it again there.
DO $upgrade$
BEGIN
    IF NOT webinar_sessions._on_citus_worker_node() THEN
        ALTER TABLE webinar_sessions.webinar_user_sessions ADD CONSTRAINT wus_times_finite
            CHECK (isfinite(entered_at) AND isfinite(last_heartbeat_at) AND isfinite(exited_at));
    END IF;
EXCEPTION WHEN check_violation THEN
    RAISE EXCEPTION 'webinar_sessions 0.6.3 refuses infinite times, and some sessions have one'
        USING ERRCODE = 'check_violation',
              HINT = 'Find them with SELECT * FROM webinar_sessions.webinar_user_sessions WHERE NOT '
                     '(isfinite(entered_at) AND isfinite(last_heartbeat_at) AND isfinite(exited_at)), '
                     'correct or delete them, and update again.';
END
$upgrade$;

CREATE OR REPLACE FUNCTION webinar_sessions._stale_after_or_setting(p_stale_after interval)
RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cutoff timestamptz;
BEGIN
    -- Checked the way the sweep applies it, by calendar arithmetic: as a comparison of
    -- intervals (a month = 30 days) '-1 year 364 days' would pass for positive and then
    -- reach into the future.
    BEGIN
        v_cutoff := now() - p_stale_after;
    EXCEPTION WHEN datetime_field_overflow THEN
        -- ('7000 years' ago is before 4713 BC, the first timestamp: far too long anyway.)
        v_cutoff := CASE WHEN p_stale_after < interval '0' THEN 'infinity' ELSE '-infinity' END;
    END;
    IF v_cutoff >= now() THEN
        RAISE EXCEPTION 'stale_after must be positive (got %)', p_stale_after
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF v_cutoff < now() - interval '365 days' THEN
        RAISE EXCEPTION 'stale_after must be at most 365 days (got %)', p_stale_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN coalesce(p_stale_after, pg_catalog.make_interval(secs => webinar_sessions._stale_after_s()));
END
$$;

CREATE FUNCTION webinar_sessions._check_window(p_starts_at timestamptz, p_ends_at timestamptz)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    PERFORM webinar_sessions._check_not_null('starts_at', p_starts_at IS NULL);
    PERFORM webinar_sessions._check_not_null('ends_at', p_ends_at IS NULL);
    PERFORM webinar_sessions._check_finite('starts_at', p_starts_at);
    PERFORM webinar_sessions._check_finite('ends_at', p_ends_at);
    IF p_ends_at <= p_starts_at THEN
        RAISE EXCEPTION 'ends_at (%) must be after starts_at (%)', p_ends_at, p_starts_at
            USING ERRCODE = 'invalid_parameter_value';
    -- (In seconds, as numeric: ends_at - starts_at itself can overflow.)
    ELSIF extract(epoch FROM p_ends_at) - extract(epoch FROM p_starts_at) > 4000 * 365.25 * 86400 THEN
        RAISE EXCEPTION 'ends_at (%) must be at most 4000 years after starts_at (%)', p_ends_at, p_starts_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.attendance(
    webinar_id uuid, starts_at timestamptz, ends_at timestamptz, min_ratio double precision DEFAULT 0.85)
RETURNS TABLE (user_id uuid, watched_seconds double precision, ratio double precision, attended boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- One row per viewer: 200,000 rows of a big webinar are about 12 MB, which the result's
-- tuplestore keeps in memory instead of spilling at the default 4 MB.
SET work_mem = '128MB'
AS $$
DECLARE
    v_length double precision;
    v_presence bytea;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', attendance.webinar_id IS NULL);
    PERFORM webinar_sessions._check_not_null('min_ratio', attendance.min_ratio IS NULL);
    PERFORM webinar_sessions._check_window(attendance.starts_at, attendance.ends_at);
    IF attendance.min_ratio < 0 OR attendance.min_ratio > 1 OR attendance.min_ratio = 'NaN' THEN
        RAISE EXCEPTION 'min_ratio must be between 0 and 1 (got %)', attendance.min_ratio
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_length := extract(epoch FROM attendance.ends_at - attendance.starts_at);
    v_presence := webinar_sessions._presence_for(attendance.webinar_id);
    -- _presence_overlap returns the viewers most time first, then by user_id: the order
    -- comes from there (no sort of every viewer here).
    RETURN QUERY
        SELECT w.user_id, w.seconds, w.seconds / v_length, w.seconds / v_length >= attendance.min_ratio
          FROM webinar_sessions._presence_overlap(v_presence, attendance.starts_at, attendance.ends_at) AS w;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.retention(
    webinar_id uuid, starts_at timestamptz, ends_at timestamptz, bucket interval DEFAULT '1 minute')
RETURNS TABLE (minute_offset integer, still_watching bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_points bigint;
    v_presence bytea;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', retention.webinar_id IS NULL);
    PERFORM webinar_sessions._check_span('bucket', retention.bucket);
    PERFORM webinar_sessions._check_window(retention.starts_at, retention.ends_at);
    v_points := webinar_sessions._grid_size(retention.ends_at - retention.starts_at, retention.bucket);
    v_presence := coalesce(webinar_sessions._presence_for(retention.webinar_id), '\x'::bytea);
    RETURN QUERY
        SELECT floor(extract(epoch FROM g.k * retention.bucket) / 60)::integer, g.viewers
          FROM webinar_sessions._presence_grid(v_presence, retention.starts_at, retention.bucket, v_points, true) AS g;
END
$$;

REVOKE ALL ON FUNCTION webinar_sessions._check_window(timestamptz, timestamptz) FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON FUNCTION webinar_sessions._check_window(timestamptz, timestamptz) FROM anon;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION webinar_sessions._check_window(timestamptz, timestamptz) TO service_role;
    END IF;
END
$grants$;
