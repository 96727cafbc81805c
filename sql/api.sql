-- webinar_sessions: the API.
--
-- Writes go through SECURITY DEFINER functions in this schema (search_path pinned to
-- pg_catalog, pg_temp: with an empty search_path PostgreSQL still looks up types and tables in
-- the caller's pg_temp FIRST, so a temporary domain named timestamptz would run its CHECK as
-- the owner; listed last, pg_temp cannot shadow anything; every name of ours is qualified). The client-facing functions in public are thin SECURITY INVOKER
-- wrappers, so that supabase.rpc('heartbeat', ...) reaches them while no definer code sits
-- in an exposed schema.

-- Marks the active session for (webinar, user, session id) alive, or opens one when there is
-- none. The common case is ONE statement: the UPDATE, a HOT update found through
-- idx_wus_webinar_session_active.
--
-- last_heartbeat_at only moves forward: now() is the transaction's start, and a transaction
-- that started earlier may reach the row after a later one has marked it (greatest() keeps
-- the newer time, which a client has been told).
--
-- Races, under READ COMMITTED:
-- * a sweep or leave that closes the row first: our UPDATE waits for it, re-checks
--   exited_at IS NULL on the new row version, finds nothing, and we open a new session;
-- * two calls opening the same key: the unique partial index lets one INSERT win; the other
--   waits for it, does nothing, and loops back to find the winner's row with the UPDATE.
--
-- _upsert_session is the row's part: the UPDATE, or the INSERT when there is no active
-- session; _mark_alive adds the heartbeat buffer. The row's part is a function of its own
-- so that on Citus (distribute()) it runs on the node that holds the webinar's shard: one
-- round trip for the whole call, whichever statements it needs. Everything it reads comes in
-- its arguments (the caller's identity and the settings stay with the caller); it touches
-- neither the heartbeat buffer nor any setting.
CREATE FUNCTION webinar_sessions._upsert_session(
    p_webinar_id    uuid,
    p_user_id       uuid,
    p_session_id    text,
    p_found_status  text,
    p_opened_status text,
    p_opened_alive  boolean,   -- does a newly opened session count as heartbeated?
    p_interval      integer    -- the heartbeat_interval_s the answer carries
) RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE
-- No SET search_path here: it costs a GUC save and restore on every heartbeat. Every name is
-- qualified, and the operators on uuid, text and timestamptz are pg_catalog's, which is
-- searched first when the search path does not list it (where Citus runs the function, too).
AS $$
DECLARE
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
                  s.entered_at, s.last_heartbeat_at, s.exited_at, p_interval
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
                  s.entered_at, s.last_heartbeat_at, s.exited_at, p_interval
        INTO r;
        IF FOUND THEN
            RETURN r;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'session % of webinar % kept changing under concurrent calls', p_session_id, p_webinar_id
        USING ERRCODE = 'serialization_failure', HINT = 'Retry the call.';
END
$$;

CREATE FUNCTION webinar_sessions._mark_alive(
    p_webinar_id    uuid,
    p_user_id       uuid,
    p_session_id    text,
    p_found_status  text,
    p_opened_status text,
    p_opened_alive  boolean   -- does a newly opened session count as heartbeated?
) RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE
-- No SET search_path here either: the only callers are this schema's SECURITY DEFINER
-- functions, which pin it already.
AS $$
DECLARE
    v_tracked boolean;
    r webinar_sessions.session_status;
BEGIN
    -- In FROM, not as an expression: that is the form Citus delegates from PL/pgSQL.
    SELECT u.* INTO r
      FROM webinar_sessions._upsert_session(p_webinar_id, p_user_id, p_session_id, p_found_status,
                                            p_opened_status, p_opened_alive,
                                            webinar_sessions._heartbeat_interval_s()) AS u;
    v_tracked := webinar_sessions._buffer_track(r.id, p_webinar_id, p_user_id, p_session_id,
                                                r.entered_at, r.last_heartbeat_at);
    RETURN r;
END
$$;

CREATE FUNCTION webinar_sessions.enter(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
COMMENT ON FUNCTION webinar_sessions.enter(uuid, text, uuid) IS
    'Opens the session, or returns (and marks alive) the active one for the same key: status entered or resumed.';

-- A heartbeat is a sign of life, not a payment: it commits without waiting for the WAL
-- flush (synchronous_commit off for this transaction only), unless the transaction has
-- written something else already (an enter or leave must stay durable; they also turn it
-- back on when they come after). A crash can lose the last fraction of a second of
-- heartbeats, which moves a session's recorded end back by that much; it can never lose or
-- corrupt a session: a heartbeat that opens one commits durably.
--
-- One path, in this order: the arguments and the caller's identity are checked once; with
-- heartbeat_mode = buffered, a session already in the heartbeat buffer is answered from
-- shared memory (_buffer_probe: no row update, no WAL; the worker writes the newest
-- heartbeat of each session every flush_interval); otherwise (direct mode, the first
-- heartbeat of a session, or during a sweep) _mark_alive updates the row, and the session
-- enters the buffer.
CREATE FUNCTION webinar_sessions.heartbeat(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_user uuid := webinar_sessions._checked_user(heartbeat.webinar_id, heartbeat.session_id, heartbeat.user_id);
    r webinar_sessions.session_status := webinar_sessions._buffer_probe(heartbeat.webinar_id, v_user, heartbeat.session_id);
BEGIN
    IF r.id IS NOT NULL THEN
        RETURN r;
    END IF;
    IF pg_catalog.txid_current_if_assigned() IS NULL THEN
        -- (A SET statement, not set_config: Citus passes SET LOCAL on to the worker nodes,
        -- where the row is written and committed.)
        SET LOCAL synchronous_commit TO off;
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

-- The row's part of leave, delegated like _upsert_session: closes the active session, with
-- the newest heartbeat the buffer held for it and had not written (p_unwritten).
CREATE FUNCTION webinar_sessions._close_session(
    p_webinar_id uuid,
    p_user_id    uuid,
    p_session_id text,
    p_unwritten  timestamptz,
    p_interval   integer
) RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE
-- (No SET search_path: see _upsert_session.)
AS $$
DECLARE
    r webinar_sessions.session_status;
BEGIN
    UPDATE webinar_sessions.webinar_user_sessions AS s
       SET exited_at = greatest(now(), s.last_heartbeat_at, p_unwritten, s.entered_at),
           last_heartbeat_at = greatest(s.last_heartbeat_at, p_unwritten),
           exit_reason = 'left',
           updated_at = now()
     WHERE s.webinar_id = p_webinar_id
       AND s.user_id = p_user_id
       AND s.session_id = p_session_id
       AND s.exited_at IS NULL
    RETURNING s.id, s.webinar_id, s.session_id, 'left',
              s.entered_at, s.last_heartbeat_at, s.exited_at, p_interval
    INTO r;
    IF NOT FOUND THEN
        r := ROW(NULL, p_webinar_id, p_session_id, 'not_found', NULL, NULL, NULL, p_interval);
    END IF;
    RETURN r;
END
$$;

CREATE FUNCTION webinar_sessions.leave(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_user uuid := webinar_sessions._checked_user(leave.webinar_id, leave.session_id, leave.user_id);
    -- Takes the session out of the heartbeat buffer (for good when this commits), with its
    -- newest heartbeat not yet written.
    v_unwritten timestamptz := webinar_sessions._buffer_closing(leave.webinar_id, v_user, leave.session_id);
    r webinar_sessions.session_status;
BEGIN
    -- Durable, even after a heartbeat earlier in the same transaction turned it off.
    SET LOCAL synchronous_commit TO DEFAULT;
    SELECT c.* INTO r
      FROM webinar_sessions._close_session(leave.webinar_id, v_user, leave.session_id, v_unwritten,
                                           webinar_sessions._heartbeat_interval_s()) AS c;
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
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
    v_opened bigint;
    -- (now(), as a value: Citus takes only immutable expressions in DO UPDATE SET.)
    v_now timestamptz := now();
BEGIN
    PERFORM webinar_sessions._check_batch(webinar_ids, session_ids, user_ids);
    IF pg_catalog.txid_current_if_assigned() IS NULL THEN
        SET LOCAL synchronous_commit TO off;   -- (a statement: see heartbeat)
    END IF;
    WITH marked AS (
        INSERT INTO webinar_sessions.webinar_user_sessions AS s
               (webinar_id, user_id, session_id, entered_at, last_heartbeat_at, updated_at)
        SELECT DISTINCT b.webinar_id, b.user_id, b.session_id, now(), now(), now()
          FROM unnest(heartbeat_batch.webinar_ids, heartbeat_batch.session_ids, heartbeat_batch.user_ids)
               AS b(webinar_id, session_id, user_id)
         ORDER BY 1, 2, 3
        ON CONFLICT (webinar_id, user_id, session_id) WHERE exited_at IS NULL
        DO UPDATE SET last_heartbeat_at = greatest(s.last_heartbeat_at, v_now, s.entered_at), updated_at = v_now
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
COMMENT ON FUNCTION webinar_sessions.heartbeat_batch(uuid[], text[], uuid[]) IS
    'Marks many sessions alive in one statement (opening those that are not active); returns how many. service_role only.';

-- Writes the buffered heartbeats of this database to their rows in ONE statement, and
-- returns how many rows it wrote. Flushes and sweeps are serialised by a lock on sweep_runs
-- (nothing else takes it in this mode), so that a sweep never overtakes a flush that has
-- collected heartbeats but not yet written them. What was written counts as written only
-- when this transaction commits: a flush that fails loses nothing. With p_for_sweep,
-- heartbeats bypass the buffer from the collection until this transaction ends.
CREATE FUNCTION webinar_sessions._flush_buffer(p_for_sweep boolean)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
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

-- Closes every stale session, at its last sign of life: first the buffered heartbeats are
-- written (so a session with a buffered heartbeat is never swept), then ONE statement closes
-- the stale ones. A heartbeat that commits while this runs is never lost: the UPDATE
-- re-checks a row that changed under it (READ COMMITTED's EvalPlanQual) and skips it when it
-- is fresh; a heartbeat that comes after the row was closed opens a new session.
CREATE FUNCTION webinar_sessions._sweep(p_stale_after interval, p_source text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
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

CREATE FUNCTION webinar_sessions._record_sweep(
    p_started timestamptz, p_swept bigint, p_source text, p_stale_after interval, p_error text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO webinar_sessions.sweep_runs (started_at, finished_at, swept, source, stale_after, error)
    VALUES (p_started, clock_timestamp(), p_swept, p_source, p_stale_after, p_error);
    -- Keep a bounded history: the newest 1000 runs.
    DELETE FROM webinar_sessions.sweep_runs
     WHERE started_at < (SELECT r.started_at FROM webinar_sessions.sweep_runs AS r
                          ORDER BY r.started_at DESC OFFSET 999 LIMIT 1);
$$;

-- The staleness limit a sweep applies: the argument, checked, or the
-- webinar_sessions.stale_after setting.
CREATE FUNCTION webinar_sessions._stale_after_or_setting(p_stale_after interval)
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

CREATE FUNCTION webinar_sessions.sweep_stale_sessions(stale_after interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN webinar_sessions._sweep(webinar_sessions._stale_after_or_setting(sweep_stale_sessions.stale_after), 'manual');
END
$$;
COMMENT ON FUNCTION webinar_sessions.sweep_stale_sessions(interval) IS
    'Closes, in one statement, every active session with no sign of life for stale_after (default: the webinar_sessions.stale_after setting); returns how many. service_role only.';

-- A sweep that nobody waits for: what the background worker runs (source 'worker') and what
-- the pg_cron job of schedule_sweep runs (source 'cron'), with stale_after or else the
-- setting. (The worker does not call it until stale_after has passed since the server's
-- start or crash restart: while the database was down no client could send a heartbeat, so
-- silence from before proves nothing.) A failed sweep, a bad setting included, is recorded in
-- sweep_runs, not raised, so that the schedule keeps its rhythm.
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

CREATE FUNCTION webinar_sessions._worker_sweep()
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN NOT webinar_sessions._on_citus_worker_node()
                THEN webinar_sessions._unattended_sweep('worker') END;
$$;

-- Sweeps without the background worker (hosted Supabase, or a server that does not preload
-- the library): a pg_cron job, named webinar_sessions_sweep, owned by the caller and run in
-- this database, closing sessions silent for stale_after (default: the
-- webinar_sessions.stale_after setting when the job runs). pg_cron must be installed here (on
-- Supabase: Database > Extensions > pg_cron). Idempotent: scheduling again changes the same
-- job. Call unschedule_sweep before DROP EXTENSION: the job is pg_cron's, not the extension's.
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

CREATE FUNCTION webinar_sessions.flush_heartbeats()
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT webinar_sessions._flush_buffer(false);
$$;
COMMENT ON FUNCTION webinar_sessions.flush_heartbeats() IS
    'Writes the buffered heartbeats of this database to the table now (the worker does it every flush_interval); returns how many sessions it wrote. service_role only.';

-- What the worker runs every flush_interval: the flush, then the live counts (sql/report.sql),
-- which then include what the flush wrote. A failed flush loses nothing (the next one writes
-- the same heartbeats); failures are logged, not raised, and one does not undo the other.
CREATE FUNCTION webinar_sessions._worker_flush()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_written bigint;
BEGIN
    IF webinar_sessions._on_citus_worker_node() THEN
        RETURN NULL;
    END IF;
    BEGIN
        v_written := webinar_sessions._flush_buffer(false);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'webinar_sessions: flushing buffered heartbeats failed: %', SQLERRM;
    END;
    BEGIN
        PERFORM webinar_sessions._refresh_live_counts();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'webinar_sessions: counting live viewers failed: %', SQLERRM;
    END;
    RETURN v_written;
END
$$;

-- The heartbeat buffer: its size, use and flushes. The mode is the calling session's.
CREATE VIEW webinar_sessions.buffer_stats AS
    SELECT * FROM webinar_sessions._buffer_stats();
COMMENT ON VIEW webinar_sessions.buffer_stats IS
    'The heartbeat buffer (heartbeat_mode = buffered): capacity, sessions held, sessions with heartbeats not yet written, memory, heartbeats answered from it, fallbacks to direct because it was full, flushes.';

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
