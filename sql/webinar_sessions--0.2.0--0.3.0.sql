-- webinar_sessions 0.2.0 -> 0.3.0: correctness fixes.
--
-- * last_heartbeat_at never moves backwards: the heartbeat, the session opener and the batch
--   keep the newer of the stored time and now().
-- * The grace period after a (re)start moved into the worker, which knows when the server
--   came back after a crash (pg_postmaster_start_time() does not change then).
-- * concurrency() labels its buckets in seconds, as it counts them, across a daylight-saving
--   change; attendance() and retention() refuse infinite times with 22023.
-- The heartbeat buffer's fixes are in the library. Data is untouched. tests/upgrade.rs checks
-- that a database updated through this script ends up with exactly the objects, definitions
-- and privileges of a fresh 0.3.0.

CREATE OR REPLACE FUNCTION webinar_sessions._mark_alive(
    p_webinar_id    uuid,
    p_user_id       uuid,
    p_session_id    text,
    p_found_status  text,
    p_opened_status text,
    p_opened_alive  boolean   -- does a newly opened session count as heartbeated?
) RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE
-- No SET search_path here: it costs a GUC save and restore on every heartbeat, and the only
-- callers are this schema's SECURITY DEFINER functions, which pin it to '' already.
AS $$
DECLARE
    v_interval integer := webinar_sessions._heartbeat_interval_s();
    v_tracked boolean;
    r webinar_sessions.session_status;
BEGIN
    FOR attempt IN 1..5 LOOP
        UPDATE webinar_sessions.webinar_user_sessions AS s
           SET last_heartbeat_at = greatest(s.last_heartbeat_at, now(), s.entered_at),
               updated_at = now()
         WHERE s.webinar_id = p_webinar_id
           AND s.user_id = p_user_id
           AND s.session_id = p_session_id
           AND s.exited_at IS NULL
        RETURNING s.id, s.webinar_id, s.session_id, p_found_status,
                  s.entered_at, s.last_heartbeat_at, s.exited_at, v_interval
        INTO r;
        IF FOUND THEN
            v_tracked := webinar_sessions._buffer_track(r.id, p_webinar_id, p_user_id, p_session_id,
                                                        r.entered_at, r.last_heartbeat_at);
            RETURN r;
        END IF;

        INSERT INTO webinar_sessions.webinar_user_sessions AS s
               (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, updated_at)
        VALUES (p_webinar_id, p_user_id, p_session_id, now(),
                CASE WHEN p_opened_alive THEN now() END, now())
        ON CONFLICT (webinar_id, user_id, session_id) WHERE exited_at IS NULL DO NOTHING
        RETURNING s.id, s.webinar_id, s.session_id, p_opened_status,
                  s.entered_at, s.last_heartbeat_at, s.exited_at, v_interval
        INTO r;
        IF FOUND THEN
            v_tracked := webinar_sessions._buffer_track(r.id, p_webinar_id, p_user_id, p_session_id,
                                                        r.entered_at, r.last_heartbeat_at);
            RETURN r;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'session % of webinar % kept changing under concurrent calls; retry', p_session_id, p_webinar_id
        USING ERRCODE = 'serialization_failure';
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.heartbeat(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    r webinar_sessions.session_status :=
        webinar_sessions._buffered_heartbeat(heartbeat.webinar_id, heartbeat.session_id, heartbeat.user_id);
    v_user uuid;
    v_interval integer;
    v_async text;
    v_tracked boolean;
BEGIN
    IF r.id IS NOT NULL THEN
        RETURN r;
    END IF;
    v_user := webinar_sessions._checked_user(heartbeat.webinar_id, heartbeat.session_id, heartbeat.user_id);
    v_interval := webinar_sessions._heartbeat_interval_s();
    v_async := pg_catalog.set_config('synchronous_commit', 'off', true);
    UPDATE webinar_sessions.webinar_user_sessions AS s
       SET last_heartbeat_at = greatest(s.last_heartbeat_at, now(), s.entered_at),
           updated_at = now()
     WHERE s.webinar_id = heartbeat.webinar_id
       AND s.user_id = v_user
       AND s.session_id = heartbeat.session_id
       AND s.exited_at IS NULL
    RETURNING s.id, s.webinar_id, s.session_id, 'alive',
              s.entered_at, s.last_heartbeat_at, s.exited_at, v_interval
    INTO r;
    IF FOUND THEN
        v_tracked := webinar_sessions._buffer_track(r.id, heartbeat.webinar_id, v_user, heartbeat.session_id,
                                                    r.entered_at, r.last_heartbeat_at);
        RETURN r;
    END IF;
    r := webinar_sessions._mark_alive(
        heartbeat.webinar_id, v_user, heartbeat.session_id, 'alive', 'reopened', true);
    IF r.status = 'reopened' THEN
        -- A session this heartbeat opened must survive a crash like one opened by enter:
        -- this commit waits for the WAL flush after all.
        SET LOCAL synchronous_commit TO DEFAULT;
    END IF;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.heartbeat_batch(webinar_ids uuid[], session_ids text[], user_ids uuid[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_count bigint;
    v_opened bigint;
BEGIN
    PERFORM webinar_sessions._check_batch(webinar_ids, session_ids, user_ids);
    PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    WITH marked AS (
        INSERT INTO webinar_sessions.webinar_user_sessions AS s
               (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, updated_at)
        SELECT DISTINCT b.webinar_id, b.user_id, b.session_id, now(), now(), now()
          FROM unnest(heartbeat_batch.webinar_ids, heartbeat_batch.session_ids, heartbeat_batch.user_ids)
               AS b(webinar_id, session_id, user_id)
         ORDER BY 1, 2, 3
        ON CONFLICT (webinar_id, user_id, session_id) WHERE exited_at IS NULL
        DO UPDATE SET last_heartbeat_at = greatest(s.last_heartbeat_at, now(), s.entered_at), updated_at = now()
        RETURNING s.xmax::text = '0' AS opened   -- an inserted row has no xmax
    )
    SELECT count(*), count(*) FILTER (WHERE marked.opened) INTO v_count, v_opened FROM marked;
    IF v_opened > 0 THEN
        -- Sessions opened here must survive a crash: wait for the WAL flush after all.
        SET LOCAL synchronous_commit TO DEFAULT;
    END IF;
    RETURN v_count;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions._worker_sweep()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = ''
AS $$
DECLARE
    v_stale_after interval := pg_catalog.make_interval(secs => webinar_sessions._stale_after_s());
    v_started timestamptz := clock_timestamp();
BEGIN
    BEGIN
        RETURN webinar_sessions._sweep(v_stale_after, 'worker');
    EXCEPTION WHEN OTHERS THEN
        PERFORM webinar_sessions._record_sweep(v_started, NULL, 'worker', v_stale_after, SQLERRM);
        RETURN NULL;
    END;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.concurrency(webinar_id uuid, bucket interval DEFAULT '1 minute')
RETURNS TABLE (bucket_start timestamptz, viewers bigint)
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $$
DECLARE
    v_first timestamptz;
    v_last timestamptz;
    v_origin timestamptz;
    v_points bigint;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', concurrency.webinar_id IS NULL);
    PERFORM webinar_sessions._check_span('bucket', concurrency.bucket);
    SELECT min(p.started_at), max(p.ended_at) INTO v_first, v_last
      FROM webinar_sessions.presence AS p
     WHERE p.webinar_id = concurrency.webinar_id;
    IF v_first IS NULL THEN
        RETURN;
    END IF;
    -- Buckets are aligned (whole minutes for '1 minute'), the first one holding the first entry.
    v_origin := pg_catalog.date_bin(concurrency.bucket, v_first, timestamptz '2000-01-01 00:00:00+00');
    v_points := floor(extract(epoch FROM v_last - v_origin) / extract(epoch FROM concurrency.bucket))::bigint + 1;
    PERFORM webinar_sessions._grid_size(v_last - v_origin, concurrency.bucket);
    RETURN QUERY
        -- The grid counts in seconds; so must the labels (k * '1 day' would be calendar days,
        -- 23 or 25 hours across a daylight-saving change in the session's time zone).
        SELECT v_origin + g.k * (extract(epoch FROM concurrency.bucket) * interval '1 second'), g.viewers
          FROM webinar_sessions._viewers_on_grid(concurrency.webinar_id, v_origin, concurrency.bucket, v_points, false) AS g;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.attendance(
    webinar_id uuid, starts_at timestamptz, ends_at timestamptz, min_ratio double precision DEFAULT 0.85)
RETURNS TABLE (user_id uuid, watched_seconds double precision, ratio double precision, attended boolean)
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $$
DECLARE
    v_length double precision;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', attendance.webinar_id IS NULL);
    PERFORM webinar_sessions._check_not_null('starts_at', attendance.starts_at IS NULL);
    PERFORM webinar_sessions._check_not_null('ends_at', attendance.ends_at IS NULL);
    PERFORM webinar_sessions._check_not_null('min_ratio', attendance.min_ratio IS NULL);
    IF NOT pg_catalog.isfinite(attendance.starts_at) THEN
        RAISE EXCEPTION 'starts_at must be a finite time (got %)', attendance.starts_at
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF NOT pg_catalog.isfinite(attendance.ends_at) THEN
        RAISE EXCEPTION 'ends_at must be a finite time (got %)', attendance.ends_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF attendance.ends_at <= attendance.starts_at THEN
        RAISE EXCEPTION 'ends_at (%) must be after starts_at (%)', attendance.ends_at, attendance.starts_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF attendance.min_ratio < 0 OR attendance.min_ratio > 1 OR attendance.min_ratio = 'NaN' THEN
        RAISE EXCEPTION 'min_ratio must be between 0 and 1 (got %)', attendance.min_ratio
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_length := extract(epoch FROM attendance.ends_at - attendance.starts_at);
    RETURN QUERY
        SELECT w.user_id, w.seconds, w.seconds / v_length, w.seconds / v_length >= attendance.min_ratio
          FROM (SELECT p.user_id,
                       sum(greatest(0, extract(epoch FROM least(p.ended_at, attendance.ends_at)
                                                          - greatest(p.started_at, attendance.starts_at))))::double precision AS seconds
                  FROM webinar_sessions.presence AS p
                 WHERE p.webinar_id = attendance.webinar_id
                 GROUP BY p.user_id) AS w
         ORDER BY w.seconds DESC, w.user_id;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.retention(
    webinar_id uuid, starts_at timestamptz, ends_at timestamptz, bucket interval DEFAULT '1 minute')
RETURNS TABLE (minute_offset integer, still_watching bigint)
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $$
DECLARE
    v_points bigint;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', retention.webinar_id IS NULL);
    PERFORM webinar_sessions._check_not_null('starts_at', retention.starts_at IS NULL);
    PERFORM webinar_sessions._check_not_null('ends_at', retention.ends_at IS NULL);
    PERFORM webinar_sessions._check_span('bucket', retention.bucket);
    IF NOT pg_catalog.isfinite(retention.starts_at) THEN
        RAISE EXCEPTION 'starts_at must be a finite time (got %)', retention.starts_at
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF NOT pg_catalog.isfinite(retention.ends_at) THEN
        RAISE EXCEPTION 'ends_at must be a finite time (got %)', retention.ends_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF retention.ends_at <= retention.starts_at THEN
        RAISE EXCEPTION 'ends_at (%) must be after starts_at (%)', retention.ends_at, retention.starts_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_points := webinar_sessions._grid_size(retention.ends_at - retention.starts_at, retention.bucket);
    RETURN QUERY
        SELECT floor(extract(epoch FROM g.k * retention.bucket) / 60)::integer, g.viewers
          FROM webinar_sessions._viewers_on_grid(retention.webinar_id, retention.starts_at, retention.bucket, v_points, true) AS g;
END
$$;
