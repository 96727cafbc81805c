-- webinar_sessions: the API.
--
-- Writes go through SECURITY DEFINER functions in this schema (search_path pinned to '',
-- every name qualified). The client-facing functions in public are thin SECURITY INVOKER
-- wrappers, so that supabase.rpc('heartbeat', ...) reaches them while no definer code sits
-- in an exposed schema.

-- Marks the active session for (webinar, user, session id) alive, or opens one when there is
-- none. The common case is ONE statement: the UPDATE, a HOT update found through
-- idx_wus_webinar_session_active.
--
-- Races, under READ COMMITTED:
-- * a sweep or leave that closes the row first: our UPDATE waits for it, re-checks
--   exited_at IS NULL on the new row version, finds nothing, and we open a new session;
-- * two calls opening the same key: the unique partial index lets one INSERT win; the other
--   waits for it, does nothing, and loops back to find the winner's row with the UPDATE.
CREATE FUNCTION webinar_sessions._mark_alive(
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
            RETURN r;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'session % of webinar % kept changing under concurrent calls; retry', p_session_id, p_webinar_id
        USING ERRCODE = 'serialization_failure';
END
$$;

CREATE FUNCTION webinar_sessions.enter(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    RETURN webinar_sessions._mark_alive(
        enter.webinar_id,
        webinar_sessions._checked_user(enter.webinar_id, enter.session_id, enter.user_id),
        enter.session_id, 'resumed', 'entered', false);
END
$$;
COMMENT ON FUNCTION webinar_sessions.enter(uuid, text, uuid) IS
    'Opens the session, or returns (and marks alive) the active one for the same key: status entered or resumed.';

-- A heartbeat is a sign of life, not a payment: it commits without waiting for the WAL
-- flush (synchronous_commit off for this transaction only). A crash can lose the last
-- fraction of a second of heartbeats, which moves a session's recorded end back by that
-- much; it can never lose or corrupt a session.
--
-- This is the hot path, kept as lean as plpgsql allows: the checks, the setting and the
-- durability switch are simple expressions (no SPI round), and the common case is the one
-- UPDATE written out here; only a session that must be (re)opened goes through _mark_alive.
CREATE FUNCTION webinar_sessions.heartbeat(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_user uuid := webinar_sessions._checked_user(heartbeat.webinar_id, heartbeat.session_id, heartbeat.user_id);
    v_interval integer := webinar_sessions._heartbeat_interval_s();
    v_async text := pg_catalog.set_config('synchronous_commit', 'off', true);
    r webinar_sessions.session_status;
BEGIN
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
        RETURN r;
    END IF;
    RETURN webinar_sessions._mark_alive(
        heartbeat.webinar_id, v_user, heartbeat.session_id, 'alive', 'reopened', true);
END
$$;
COMMENT ON FUNCTION webinar_sessions.heartbeat(uuid, text, uuid) IS
    'Marks the active session alive (status alive), or opens a new one when it was swept, left or never opened (status reopened).';

CREATE FUNCTION webinar_sessions.leave(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_user uuid := webinar_sessions._checked_user(leave.webinar_id, leave.session_id, leave.user_id);
    v_interval integer := webinar_sessions._heartbeat_interval_s();
    r webinar_sessions.session_status;
BEGIN
    UPDATE webinar_sessions.webinar_user_sessions AS s
       SET exited_at = greatest(now(), s.last_heartbeat_at, s.entered_at),
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
COMMENT ON FUNCTION webinar_sessions.leave(uuid, text, uuid) IS
    'Closes the active session now (status left); idempotent (status not_found when there is none).';

-- The edge aggregator's batched heartbeats: ONE statement for the whole batch. Sessions
-- that are active are marked alive, the others are opened. Keys are locked in sorted order
-- so that two overlapping batches cannot deadlock each other.
CREATE FUNCTION webinar_sessions.heartbeat_batch(webinar_ids uuid[], session_ids text[], user_ids uuid[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_count bigint;
BEGIN
    PERFORM webinar_sessions._check_batch(webinar_ids, session_ids, user_ids);
    PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    INSERT INTO webinar_sessions.webinar_user_sessions AS s
           (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, updated_at)
    SELECT DISTINCT b.webinar_id, b.user_id, b.session_id, now(), now(), now()
      FROM unnest(heartbeat_batch.webinar_ids, heartbeat_batch.session_ids, heartbeat_batch.user_ids)
           AS b(webinar_id, session_id, user_id)
     ORDER BY 1, 2, 3
    ON CONFLICT (webinar_id, user_id, session_id) WHERE exited_at IS NULL
    DO UPDATE SET last_heartbeat_at = greatest(now(), s.entered_at), updated_at = now();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION webinar_sessions.heartbeat_batch(uuid[], text[], uuid[]) IS
    'Marks many sessions alive in one statement (opening those that are not active); returns how many. service_role only.';

-- ONE statement closes every stale session, at its last sign of life. A heartbeat that
-- commits while this runs is never lost: the UPDATE re-checks a row that changed under it
-- (READ COMMITTED's EvalPlanQual) and skips it when it is fresh; a heartbeat that comes after
-- the row was closed opens a new session.
CREATE FUNCTION webinar_sessions._sweep(p_stale_after interval, p_source text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = ''
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_swept bigint;
BEGIN
    UPDATE webinar_sessions.webinar_user_sessions AS s
       SET exited_at = coalesce(s.last_heartbeat_at, s.entered_at),
           exit_reason = 'swept',
           updated_at = now()
     WHERE s.exited_at IS NULL
       AND coalesce(s.last_heartbeat_at, s.entered_at) < now() - p_stale_after;
    GET DIAGNOSTICS v_swept = ROW_COUNT;
    PERFORM webinar_sessions._record_sweep(v_started, v_swept, p_source, p_stale_after, NULL);
    RETURN v_swept;
END
$$;

CREATE FUNCTION webinar_sessions._record_sweep(
    p_started timestamptz, p_swept bigint, p_source text, p_stale_after interval, p_error text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = ''
AS $$
    INSERT INTO webinar_sessions.sweep_runs (started_at, finished_at, swept, source, stale_after, error)
    VALUES (p_started, clock_timestamp(), p_swept, p_source, p_stale_after, p_error);
    -- Keep a bounded history: the newest 1000 runs.
    DELETE FROM webinar_sessions.sweep_runs
     WHERE started_at < (SELECT r.started_at FROM webinar_sessions.sweep_runs AS r
                          ORDER BY r.started_at DESC OFFSET 999 LIMIT 1);
$$;

CREATE FUNCTION webinar_sessions.sweep_stale_sessions(stale_after interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    IF stale_after <= interval '0' THEN
        RAISE EXCEPTION 'stale_after must be positive (got %)', stale_after
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF stale_after > interval '365 days' THEN
        RAISE EXCEPTION 'stale_after must be at most 365 days (got %)', stale_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN webinar_sessions._sweep(
        coalesce(stale_after, pg_catalog.make_interval(secs => webinar_sessions._stale_after_s())),
        'manual');
END
$$;
COMMENT ON FUNCTION webinar_sessions.sweep_stale_sessions(interval) IS
    'Closes, in one statement, every active session with no sign of life for stale_after (default: the webinar_sessions.stale_after setting); returns how many. service_role only.';

-- What the background worker runs. It does not sweep until the server has been up for
-- stale_after: while the database was down no client could send a heartbeat, so silence
-- from before the start proves nothing. A failed sweep is recorded, not raised, so that the
-- worker keeps its rhythm.
CREATE FUNCTION webinar_sessions._worker_sweep()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = ''
AS $$
DECLARE
    v_stale_after interval := pg_catalog.make_interval(secs => webinar_sessions._stale_after_s());
    v_started timestamptz := clock_timestamp();
BEGIN
    IF pg_catalog.pg_postmaster_start_time() > now() - v_stale_after THEN
        RETURN NULL;
    END IF;
    BEGIN
        RETURN webinar_sessions._sweep(v_stale_after, 'worker');
    EXCEPTION WHEN OTHERS THEN
        PERFORM webinar_sessions._record_sweep(v_started, NULL, 'worker', v_stale_after, SQLERRM);
        RETURN NULL;
    END;
END
$$;

-- The client-facing API, for supabase.rpc(). Named parameters are part of the API:
-- PostgREST passes the JSON keys as named arguments.
CREATE FUNCTION public.enter_webinar(webinar_id uuid, session_id text)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
BEGIN
    RETURN webinar_sessions.enter(enter_webinar.webinar_id, enter_webinar.session_id);
END
$$;
COMMENT ON FUNCTION public.enter_webinar(uuid, text) IS
    'webinar_sessions: the signed-in viewer enters a webinar (status entered or resumed).';

CREATE FUNCTION public.heartbeat(webinar_id uuid, session_id text)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
BEGIN
    RETURN webinar_sessions.heartbeat(heartbeat.webinar_id, heartbeat.session_id);
END
$$;
COMMENT ON FUNCTION public.heartbeat(uuid, text) IS
    'webinar_sessions: the signed-in viewer is still watching (status alive or reopened).';

CREATE FUNCTION public.leave_webinar(webinar_id uuid, session_id text)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
BEGIN
    RETURN webinar_sessions.leave(leave_webinar.webinar_id, leave_webinar.session_id);
END
$$;
COMMENT ON FUNCTION public.leave_webinar(uuid, text) IS
    'webinar_sessions: the signed-in viewer leaves (status left, or not_found when already closed).';
