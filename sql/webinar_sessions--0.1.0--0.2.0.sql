-- webinar_sessions 0.1.0 -> 0.2.0: buffered heartbeats.
--
-- Adds the heartbeat buffer's functions (implemented in the library), the flush, and the
-- buffer_stats view; heartbeat, leave, the sweep and the session opener learn to keep the
-- buffer consistent, sweep_stale_sessions checks stale_after the way it applies it, and a
-- heartbeat (or batch) that opens a session commits durably.
-- Data is untouched. tests/upgrade.rs checks that a database updated through this script
-- ends up with exactly the objects, definitions and privileges of a fresh 0.2.0.

-- The library's new entry points.
CREATE FUNCTION webinar_sessions._buffered_heartbeat(
	"webinar_id" uuid,
	"session_id" TEXT,
	"user_id" uuid
) RETURNS webinar_sessions.session_status
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffered_heartbeat_wrapper';

CREATE FUNCTION webinar_sessions._buffer_track(
	"row_id" uuid,
	"webinar_id" uuid,
	"user_id" uuid,
	"session_id" TEXT,
	"entered_at" timestamp with time zone,
	"alive_at" timestamp with time zone
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_track_wrapper';

CREATE FUNCTION webinar_sessions._buffer_closing(
	"webinar_id" uuid,
	"user_id" uuid,
	"session_id" TEXT
) RETURNS timestamp with time zone
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_closing_wrapper';

CREATE FUNCTION webinar_sessions._buffer_collect(
	"for_sweep" bool
) RETURNS TABLE (
	"id" uuid,
	"alive_at" timestamp with time zone
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_collect_wrapper';

CREATE FUNCTION webinar_sessions._buffer_written(
	"ids" uuid[]
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_written_wrapper';

CREATE FUNCTION webinar_sessions._buffer_swept(
	"ids" uuid[]
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_swept_wrapper';

CREATE FUNCTION webinar_sessions._buffer_forget(
	"ids" uuid[],
	"all" bool
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_forget_wrapper';

CREATE FUNCTION webinar_sessions._buffer_stats() RETURNS TABLE (
	"mode" TEXT,
	"capacity" bigint,
	"used" bigint,
	"dirty" bigint,
	"memory_bytes" bigint,
	"bytes_per_session" bigint,
	"buffered_heartbeats" bigint,
	"fallbacks" bigint,
	"flushes" bigint,
	"flushed_rows" bigint,
	"evicted" bigint,
	"last_flush_at" timestamp with time zone,
	"last_flush_ms" double precision
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_stats_wrapper';

-- Rows deleted or truncated behind the API's back leave the heartbeat buffer (see
-- src/buffer.rs), so that it never answers for a session that is gone.
CREATE FUNCTION webinar_sessions._forget_deleted() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    PERFORM webinar_sessions._buffer_forget((SELECT pg_catalog.array_agg(gone.id) FROM gone), false);
    RETURN NULL;
END
$$;
CREATE TRIGGER wus_forget_deleted
    AFTER DELETE ON webinar_sessions.webinar_user_sessions
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION webinar_sessions._forget_deleted();

CREATE FUNCTION webinar_sessions._forget_truncated() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    PERFORM webinar_sessions._buffer_forget(NULL, true);
    RETURN NULL;
END
$$;
CREATE TRIGGER wus_forget_truncated
    AFTER TRUNCATE ON webinar_sessions.webinar_user_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION webinar_sessions._forget_truncated();

-- The API, as in sql/api.sql of 0.2.0.
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
           SET last_heartbeat_at = greatest(now(), s.entered_at),
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
       SET last_heartbeat_at = greatest(now(), s.entered_at),
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
COMMENT ON FUNCTION webinar_sessions.heartbeat(uuid, text, uuid) IS
    'Marks the active session alive (status alive), or opens a new one when it was swept, left or never opened (status reopened).';

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
    PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    WITH marked AS (
        INSERT INTO webinar_sessions.webinar_user_sessions AS s
               (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, updated_at)
        SELECT DISTINCT b.webinar_id, b.user_id, b.session_id, now(), now(), now()
          FROM unnest(heartbeat_batch.webinar_ids, heartbeat_batch.session_ids, heartbeat_batch.user_ids)
               AS b(webinar_id, session_id, user_id)
         ORDER BY 1, 2, 3
        ON CONFLICT (webinar_id, user_id, session_id) WHERE exited_at IS NULL
        DO UPDATE SET last_heartbeat_at = greatest(now(), s.entered_at), updated_at = now()
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

CREATE FUNCTION webinar_sessions._flush_buffer(p_for_sweep boolean)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = ''
AS $$
DECLARE
    v_written uuid[];
BEGIN
    LOCK TABLE webinar_sessions.sweep_runs IN SHARE ROW EXCLUSIVE MODE;
    WITH written AS (
        UPDATE webinar_sessions.webinar_user_sessions AS s
           SET last_heartbeat_at = greatest(s.last_heartbeat_at, b.alive_at, s.entered_at),
               updated_at = now()
          FROM webinar_sessions._buffer_collect(p_for_sweep) AS b
         WHERE s.id = b.id
           AND s.exited_at IS NULL
        RETURNING s.id
    )
    SELECT pg_catalog.array_agg(written.id) INTO v_written FROM written;
    PERFORM webinar_sessions._buffer_written(v_written);
    RETURN coalesce(pg_catalog.cardinality(v_written), 0);
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

CREATE OR REPLACE FUNCTION webinar_sessions.sweep_stale_sessions(stale_after interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    -- Checked the way the sweep applies it, by calendar arithmetic: as a comparison of
    -- intervals (a month = 30 days) '-1 year 364 days' would pass for positive and then
    -- reach into the future.
    IF now() - stale_after >= now() THEN
        RAISE EXCEPTION 'stale_after must be positive (got %)', stale_after
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF now() - stale_after < now() - interval '365 days' THEN
        RAISE EXCEPTION 'stale_after must be at most 365 days (got %)', stale_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN webinar_sessions._sweep(
        coalesce(stale_after, pg_catalog.make_interval(secs => webinar_sessions._stale_after_s())),
        'manual');
END
$$;

CREATE FUNCTION webinar_sessions.flush_heartbeats()
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT webinar_sessions._flush_buffer(false);
$$;

CREATE FUNCTION webinar_sessions._worker_flush()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = ''
AS $$
BEGIN
    RETURN webinar_sessions._flush_buffer(false);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'webinar_sessions: flushing buffered heartbeats failed: %', SQLERRM;
    RETURN NULL;
END
$$;

CREATE VIEW webinar_sessions.buffer_stats AS
    SELECT * FROM webinar_sessions._buffer_stats();
COMMENT ON VIEW webinar_sessions.buffer_stats IS
    'The heartbeat buffer (heartbeat_mode = buffered): capacity, sessions held, sessions with heartbeats not yet written, memory, heartbeats answered from it, fallbacks to direct because it was full, flushes.';

CREATE OR REPLACE FUNCTION public.heartbeat(webinar_id uuid, session_id text)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    r webinar_sessions.session_status :=
        webinar_sessions._buffered_heartbeat(heartbeat.webinar_id, heartbeat.session_id, NULL);
BEGIN
    IF r.id IS NOT NULL THEN
        RETURN r;
    END IF;
    RETURN webinar_sessions.heartbeat(heartbeat.webinar_id, heartbeat.session_id);
END
$$;
COMMENT ON FUNCTION public.heartbeat(uuid, text) IS
    'webinar_sessions: the signed-in viewer is still watching (status alive or reopened).';

-- Privileges, as sql/privileges.sql gives them.
REVOKE ALL ON FUNCTION webinar_sessions._buffered_heartbeat(uuid, text, uuid),
    webinar_sessions._buffer_track(uuid, uuid, uuid, text, timestamptz, timestamptz),
    webinar_sessions._buffer_closing(uuid, uuid, text), webinar_sessions._buffer_collect(boolean),
    webinar_sessions._buffer_written(uuid[]), webinar_sessions._buffer_swept(uuid[]),
    webinar_sessions._buffer_stats(), webinar_sessions._flush_buffer(boolean),
    webinar_sessions.flush_heartbeats(), webinar_sessions._worker_flush(),
    webinar_sessions._buffer_forget(uuid[], boolean), webinar_sessions._forget_deleted(),
    webinar_sessions._forget_truncated()
    FROM PUBLIC;
REVOKE ALL ON webinar_sessions.buffer_stats FROM PUBLIC;

DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT EXECUTE ON FUNCTION webinar_sessions._buffered_heartbeat(uuid, text, uuid) TO authenticated;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA webinar_sessions TO service_role;
        GRANT SELECT ON webinar_sessions.buffer_stats TO service_role;
    END IF;
END
$grants$;
