-- webinar_sessions 0.2.0 -> 0.3.0: correctness under concurrency, and analytics that scale.
--
-- * last_heartbeat_at never moves backwards: the heartbeat, the session opener and the batch
--   keep the newer of the stored time and now().
-- * A heartbeat commits asynchronously only when its transaction has written nothing else;
--   enter, leave and sweeps turn durability back on for theirs.
-- * The grace period after a (re)start moved into the worker, which knows when the server
--   came back after a crash (pg_postmaster_start_time() does not change then).
-- * concurrency, retention and attendance read a webinar's presence merged once by a Rust
--   aggregate (_presence_of) instead of expanding every stretch into its buckets;
--   concurrency labels its buckets in seconds, as it counts them, across a daylight-saving
--   change; attendance and retention refuse infinite times with 22023.
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
    RAISE EXCEPTION 'session % of webinar % kept changing under concurrent calls', p_session_id, p_webinar_id
        USING ERRCODE = 'serialization_failure', HINT = 'Retry the call.';
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.enter(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    -- Durable, even after a heartbeat earlier in the same transaction turned it off.
    SET LOCAL synchronous_commit TO DEFAULT;
    RETURN webinar_sessions._mark_alive(
        enter.webinar_id,
        webinar_sessions._checked_user(enter.webinar_id, enter.session_id, enter.user_id),
        enter.session_id, 'resumed', 'entered', false);
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
    IF pg_catalog.txid_current_if_assigned() IS NULL THEN
        v_async := pg_catalog.set_config('synchronous_commit', 'off', true);
    END IF;
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

CREATE OR REPLACE FUNCTION webinar_sessions.leave(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_user uuid := webinar_sessions._checked_user(leave.webinar_id, leave.session_id, leave.user_id);
    v_interval integer := webinar_sessions._heartbeat_interval_s();
    -- Takes the session out of the heartbeat buffer (for good when this commits), with its
    -- newest heartbeat not yet written.
    v_unwritten timestamptz := webinar_sessions._buffer_closing(leave.webinar_id, v_user, leave.session_id);
    r webinar_sessions.session_status;
BEGIN
    -- Durable, even after a heartbeat earlier in the same transaction turned it off.
    SET LOCAL synchronous_commit TO DEFAULT;
    UPDATE webinar_sessions.webinar_user_sessions AS s
       SET exited_at = greatest(now(), s.last_heartbeat_at, v_unwritten, s.entered_at),
           last_heartbeat_at = greatest(s.last_heartbeat_at, v_unwritten),
           exit_reason = 'left',
           updated_at = now()
     WHERE s.webinar_id = leave.webinar_id
       AND s.user_id = v_user
       AND s.session_id = leave.session_id
       AND s.exited_at IS NULL
    RETURNING s.id, s.webinar_id, s.session_id, 'left',
              s.entered_at, s.last_heartbeat_at, s.exited_at, v_interval
    INTO r;
    IF NOT FOUND THEN
        r := ROW(NULL, leave.webinar_id, leave.session_id, 'not_found', NULL, NULL, NULL, v_interval);
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
    IF pg_catalog.txid_current_if_assigned() IS NULL THEN
        PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    END IF;
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

CREATE OR REPLACE FUNCTION webinar_sessions._sweep(p_stale_after interval, p_source text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = ''
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_closed uuid[];
    v_swept bigint;
BEGIN
    -- Durable, even after a heartbeat earlier in the same transaction turned it off.
    SET LOCAL synchronous_commit TO DEFAULT;
    PERFORM webinar_sessions._flush_buffer(true);
    WITH closed AS (
        UPDATE webinar_sessions.webinar_user_sessions AS s
           SET exited_at = coalesce(s.last_heartbeat_at, s.entered_at),
               exit_reason = 'swept',
               updated_at = now()
         WHERE s.exited_at IS NULL
           AND coalesce(s.last_heartbeat_at, s.entered_at) < now() - p_stale_after
        RETURNING s.id
    )
    SELECT pg_catalog.array_agg(closed.id) INTO v_closed FROM closed;
    v_swept := coalesce(pg_catalog.cardinality(v_closed), 0);
    PERFORM webinar_sessions._buffer_swept(v_closed);
    PERFORM webinar_sessions._record_sweep(v_started, v_swept, p_source, p_stale_after, NULL);
    RETURN v_swept;
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

-- The library's new entry points (src/stats.rs).
CREATE FUNCTION webinar_sessions._presence_of_final(
	"state" internal
) RETURNS bytea
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'presence_of_final_wrapper';

CREATE FUNCTION webinar_sessions._presence_bounds(
	"presence" bytea
) RETURNS TABLE (
	"first_at" timestamp with time zone,
	"last_at" timestamp with time zone
)
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'presence_bounds_wrapper';

CREATE FUNCTION webinar_sessions._presence_grid(
	"presence" bytea,
	"origin" timestamp with time zone,
	"step" interval,
	"points" bigint,
	"instant" bool
) RETURNS TABLE (
	"k" bigint,
	"viewers" bigint
)
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'presence_grid_wrapper';

CREATE FUNCTION webinar_sessions._presence_overlap(
	"presence" bytea,
	"window_start" timestamp with time zone,
	"window_end" timestamp with time zone
) RETURNS TABLE (
	"user_id" uuid,
	"seconds" double precision
)
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'presence_overlap_wrapper';

CREATE AGGREGATE webinar_sessions._presence_of(uuid, timestamptz, timestamptz) (
    SFUNC = webinar_sessions._presence_summary_add,
    STYPE = internal,
    FINALFUNC = webinar_sessions._presence_of_final,
    FINALFUNC_MODIFY = READ_WRITE
);

-- Its final function takes the collected sessions: it must not share a state with another.
CREATE OR REPLACE AGGREGATE webinar_sessions._presence_summary(uuid, timestamptz, timestamptz) (
    SFUNC = webinar_sessions._presence_summary_add,
    STYPE = internal,
    FINALFUNC = webinar_sessions._presence_summary_final,
    FINALFUNC_MODIFY = READ_WRITE
);

-- The finiteness check attendance and retention share.
CREATE FUNCTION webinar_sessions._check_finite(p_name text, p_value timestamptz)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF NOT pg_catalog.isfinite(p_value) THEN
        RAISE EXCEPTION '% must be a finite time (got %)', p_name, p_value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION webinar_sessions._presence_for(p_webinar_id uuid)
RETURNS bytea
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT webinar_sessions._presence_of(s.user_id, s.started_at, s.ended_at)
              FROM webinar_sessions.session_spans AS s
             WHERE s.webinar_id = p_webinar_id);
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.concurrency(webinar_id uuid, bucket interval DEFAULT '1 minute')
RETURNS TABLE (bucket_start timestamptz, viewers bigint)
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $$
DECLARE
    v_presence bytea;
    v_first timestamptz;
    v_last timestamptz;
    v_origin timestamptz;
    v_points bigint;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', concurrency.webinar_id IS NULL);
    PERFORM webinar_sessions._check_span('bucket', concurrency.bucket);
    v_presence := webinar_sessions._presence_for(concurrency.webinar_id);
    SELECT b.first_at, b.last_at INTO v_first, v_last
      FROM webinar_sessions._presence_bounds(v_presence) AS b;
    IF v_first IS NULL THEN
        RETURN;
    END IF;
    -- Buckets are aligned (whole minutes for '1 minute'), the first one holding the first entry.
    v_origin := pg_catalog.date_bin(concurrency.bucket, v_first, timestamptz '2000-01-01 00:00:00+00');
    v_points := floor(extract(epoch FROM v_last - v_origin) / extract(epoch FROM concurrency.bucket))::bigint + 1;
    IF v_points > 100000 THEN
        RAISE EXCEPTION 'bucket % over % gives % buckets; at most 100000 are allowed', concurrency.bucket, v_last - v_origin, v_points
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        -- The grid counts in seconds; so must the labels (k * '1 day' would be calendar days,
        -- 23 or 25 hours across a daylight-saving change in the session's time zone).
        SELECT v_origin + g.k * (extract(epoch FROM concurrency.bucket) * interval '1 second'), g.viewers
          FROM webinar_sessions._presence_grid(v_presence, v_origin, concurrency.bucket, v_points, false) AS g;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions.attendance(
    webinar_id uuid, starts_at timestamptz, ends_at timestamptz, min_ratio double precision DEFAULT 0.85)
RETURNS TABLE (user_id uuid, watched_seconds double precision, ratio double precision, attended boolean)
LANGUAGE plpgsql STABLE
SET search_path = ''
-- One row per viewer: 200,000 rows of a big webinar are about 12 MB, which the result's
-- tuplestore keeps in memory instead of spilling at the default 4 MB.
SET work_mem = '128MB'
AS $$
DECLARE
    v_length double precision;
    v_presence bytea;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', attendance.webinar_id IS NULL);
    PERFORM webinar_sessions._check_not_null('starts_at', attendance.starts_at IS NULL);
    PERFORM webinar_sessions._check_not_null('ends_at', attendance.ends_at IS NULL);
    PERFORM webinar_sessions._check_not_null('min_ratio', attendance.min_ratio IS NULL);
    PERFORM webinar_sessions._check_finite('starts_at', attendance.starts_at);
    PERFORM webinar_sessions._check_finite('ends_at', attendance.ends_at);
    IF attendance.ends_at <= attendance.starts_at THEN
        RAISE EXCEPTION 'ends_at (%) must be after starts_at (%)', attendance.ends_at, attendance.starts_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
SET search_path = ''
AS $$
DECLARE
    v_points bigint;
    v_presence bytea;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', retention.webinar_id IS NULL);
    PERFORM webinar_sessions._check_not_null('starts_at', retention.starts_at IS NULL);
    PERFORM webinar_sessions._check_not_null('ends_at', retention.ends_at IS NULL);
    PERFORM webinar_sessions._check_span('bucket', retention.bucket);
    PERFORM webinar_sessions._check_finite('starts_at', retention.starts_at);
    PERFORM webinar_sessions._check_finite('ends_at', retention.ends_at);
    IF retention.ends_at <= retention.starts_at THEN
        RAISE EXCEPTION 'ends_at (%) must be after starts_at (%)', retention.ends_at, retention.starts_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_points := webinar_sessions._grid_size(retention.ends_at - retention.starts_at, retention.bucket);
    v_presence := coalesce(webinar_sessions._presence_for(retention.webinar_id), '\x'::bytea);
    RETURN QUERY
        SELECT floor(extract(epoch FROM g.k * retention.bucket) / 60)::integer, g.viewers
          FROM webinar_sessions._presence_grid(v_presence, retention.starts_at, retention.bucket, v_points, true) AS g;
END
$$;

-- Replaced by _presence_grid.
DROP FUNCTION webinar_sessions._viewers_on_grid(uuid, timestamptz, interval, bigint, boolean);

-- The privileges of the new functions, as sql/privileges.sql gives them in a fresh install.
REVOKE ALL ON FUNCTION webinar_sessions._presence_of_final(internal),
    webinar_sessions._presence_bounds(bytea),
    webinar_sessions._presence_grid(bytea, timestamptz, interval, bigint, boolean),
    webinar_sessions._presence_overlap(bytea, timestamptz, timestamptz),
    webinar_sessions._presence_of(uuid, timestamptz, timestamptz),
    webinar_sessions._presence_for(uuid),
    webinar_sessions._check_finite(text, timestamptz) FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON FUNCTION webinar_sessions._presence_of_final(internal),
            webinar_sessions._presence_bounds(bytea),
            webinar_sessions._presence_grid(bytea, timestamptz, interval, bigint, boolean),
            webinar_sessions._presence_overlap(bytea, timestamptz, timestamptz),
            webinar_sessions._presence_of(uuid, timestamptz, timestamptz),
            webinar_sessions._presence_for(uuid),
    webinar_sessions._check_finite(text, timestamptz) FROM anon;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION webinar_sessions._presence_of_final(internal),
            webinar_sessions._presence_bounds(bytea),
            webinar_sessions._presence_grid(bytea, timestamptz, interval, bigint, boolean),
            webinar_sessions._presence_overlap(bytea, timestamptz, timestamptz),
            webinar_sessions._presence_of(uuid, timestamptz, timestamptz),
            webinar_sessions._presence_for(uuid),
    webinar_sessions._check_finite(text, timestamptz) TO service_role;
    END IF;
END
$grants$;
