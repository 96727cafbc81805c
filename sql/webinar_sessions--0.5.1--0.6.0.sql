-- webinar_sessions 0.5.1 -> 0.6.0: Citus.
--
-- * The row's part of enter, heartbeat and leave is a function of its own (_upsert_session,
--   _close_session), which distribute() makes a distributed function: on Citus a call runs on
--   the node that holds the webinar's shard.
-- * distribute() (sql/distribute.sql) and public.webinar_sessions_pre_request(), PostgREST's
--   db-pre-request on Citus.
-- * On a Citus worker node the background worker neither sweeps nor flushes (the coordinator
--   does, for the whole cluster), and the buffer's DELETE and TRUNCATE triggers, which fire
--   on the shards there, do nothing (the buffer is the coordinator's).
-- * heartbeat_batch writes now() as a value (Citus takes only immutable expressions in
--   ON CONFLICT DO UPDATE SET), and heartbeats turn synchronous_commit off with SET LOCAL,
--   which Citus passes on to the worker nodes (set_config it does not).
-- Data is untouched; tests/upgrade.rs compares the result with a fresh 0.6.0.

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

CREATE OR REPLACE FUNCTION webinar_sessions._mark_alive(
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

CREATE OR REPLACE FUNCTION webinar_sessions.heartbeat(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION webinar_sessions.leave(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION webinar_sessions.heartbeat_batch(webinar_ids uuid[], session_ids text[], user_ids uuid[])
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

-- Whether this database is a Citus worker node (Citus installed, this node not in group 0, the
-- coordinator's). The coordinator sweeps and flushes for the whole cluster, and the calls of
-- clients (and so the heartbeat buffer) are there: on a worker node the background worker
-- and the buffer's triggers below do nothing (see distribute()).
CREATE FUNCTION webinar_sessions._on_citus_worker_node()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_worker boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN false;
    END IF;
    -- (Dynamic: the table exists only with Citus.)
    EXECUTE 'SELECT groupid <> 0 FROM pg_catalog.pg_dist_local_group' INTO v_worker;
    RETURN coalesce(v_worker, false);
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions._forget_deleted() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- (On a Citus worker node the trigger fires on a shard, and the buffer is the
    -- coordinator's: nothing to forget here, and the flush there forgets the rows it no
    -- longer finds.)
    IF NOT webinar_sessions._on_citus_worker_node() THEN
        PERFORM webinar_sessions._buffer_forget((SELECT pg_catalog.array_agg(gone.id) FROM gone), false);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions._forget_truncated() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT webinar_sessions._on_citus_worker_node() THEN
        PERFORM webinar_sessions._buffer_forget(NULL, true);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions._worker_sweep()
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN NOT webinar_sessions._on_citus_worker_node()
                THEN webinar_sessions._unattended_sweep('worker') END;
$$;

CREATE OR REPLACE FUNCTION webinar_sessions._worker_flush()
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

-- webinar_sessions on Citus: the session table spread over worker nodes by webinar_id, the
-- column every call of the API names.
--
-- On the coordinator, after CREATE EXTENSION webinar_sessions (which Citus runs on every
-- node), distribute() changes what Citus cannot take and distributes:
-- * webinar_user_sessions by webinar_id; its primary key becomes (webinar_id, id), as
--   Citus wants every unique constraint to hold the distribution column;
-- * webinar_hosts as a reference table (a copy on every node, small, rarely written), so
--   that the audience views join it on any node;
-- * the row-level security policies without their sub-select, which Citus refuses on
--   distributed tables (the function is then called per row on a sequential scan, once on
--   an index scan);
-- * the row's part of enter, heartbeat and leave (_upsert_session, _close_session) as
--   distributed functions, delegated to the node that holds the webinar's shard;
-- * citus.propagate_set_commands = local for this database, so that the SET LOCAL of the
--   caller's claims in public.webinar_sessions_pre_request() reaches the worker nodes, where
--   row-level security is checked.
-- sweep_runs and live_counts stay local tables of the coordinator, whose background worker
-- sweeps and flushes for the whole cluster (a worker node's does nothing).
CREATE FUNCTION webinar_sessions.distribute(shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- What distribution needs changed, for every node: on the worker nodes the extension's
    -- own tables are the shells Citus plans with. Each statement can run again.
    v_ddl constant text := $ddl$
        ALTER TABLE webinar_sessions.webinar_user_sessions
            DROP CONSTRAINT IF EXISTS webinar_user_sessions_pkey,
            ADD CONSTRAINT webinar_user_sessions_pkey PRIMARY KEY (webinar_id, id);
        ALTER POLICY wus_read_own ON webinar_sessions.webinar_user_sessions
            USING (user_id = webinar_sessions.current_user_id());
        ALTER POLICY webinar_hosts_read_own ON webinar_sessions.webinar_hosts
            USING (user_id = webinar_sessions.current_user_id());
    $ddl$;
    v_distributed boolean;
    v_failed text;
    v_shards integer;
    v_nodes integer;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'distribute() needs Citus, which database % does not have', pg_catalog.current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'On every node preload it (shared_preload_libraries = ''citus, webinar_sessions'') and '
                         'CREATE EXTENSION citus; add the worker nodes; then call distribute() on the coordinator.';
    ELSIF pg_catalog.to_regprocedure('webinar_sessions._presence_summary(uuid, timestamptz, timestamptz)') IS NULL THEN
        RAISE EXCEPTION 'distribute() needs the Rust build of webinar_sessions (its statistics aggregate runs on the worker nodes)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF webinar_sessions._on_citus_worker_node() THEN
        RAISE EXCEPTION 'distribute() runs on the Citus coordinator, not on a worker node'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF distribute.shard_count IS NOT NULL AND distribute.shard_count NOT BETWEEN 1 AND 64000 THEN
        RAISE EXCEPTION 'shard_count must be between 1 and 64000 (got %)', distribute.shard_count
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- (Dynamic SQL for Citus's catalogs and functions: the extension installs without Citus.)
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                             WHERE logicalrelid = ''webinar_sessions.webinar_user_sessions''::regclass)'
       INTO v_distributed;
    IF NOT v_distributed THEN
        -- (run_command_on_workers commits on the workers at once: should what follows fail,
        -- the workers keep these changes, and distribute() makes them again harmlessly.)
        EXECUTE v_ddl;
        EXECUTE 'SELECT pg_catalog.string_agg(w.nodename || '':'' || w.nodeport || '': '' || w.result, ''; '')
                   FROM pg_catalog.run_command_on_workers($1) AS w WHERE NOT w.success'
           INTO v_failed USING v_ddl;
        IF v_failed IS NOT NULL THEN
            RAISE EXCEPTION 'distribute(): preparing the worker nodes failed: %', v_failed
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'CREATE EXTENSION webinar_sessions must have run, and committed, on every node: Citus '
                             'runs it there when the nodes were added first; call distribute() in a transaction of its own.';
        END IF;
        -- The heartbeat buffer's triggers on DELETE and TRUNCATE then run on the shards, where
        -- there is no buffer to clear: the coordinator's forgets a deleted session at its
        -- next flush instead (README, "Citus").
        SET LOCAL citus.enable_unsafe_triggers = on;
        IF distribute.shard_count IS NULL THEN
            EXECUTE 'SELECT pg_catalog.create_distributed_table(''webinar_sessions.webinar_user_sessions'', ''webinar_id'')';
        ELSE
            EXECUTE 'SELECT pg_catalog.create_distributed_table(''webinar_sessions.webinar_user_sessions'', ''webinar_id'',
                                                                shard_count => $1)'
              USING distribute.shard_count;
        END IF;
        EXECUTE 'SELECT pg_catalog.create_reference_table(''webinar_sessions.webinar_hosts'')';
        -- Rows that were there before are copied to the shards; their local copies would stay
        -- on the coordinator's disk, unseen (user ids and all).
        EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table(''webinar_sessions.webinar_user_sessions'')';
        EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table(''webinar_sessions.webinar_hosts'')';
    END IF;

    -- Delegation (again, harmless when it is there): a call from the API's functions runs on
    -- the node of the webinar's shard, in the caller's transaction.
    EXECUTE 'SELECT pg_catalog.create_distributed_function($1::regprocedure, ''p_webinar_id'',
                 colocate_with => ''webinar_sessions.webinar_user_sessions'', force_delegation => true)'
      USING 'webinar_sessions._upsert_session(uuid, uuid, text, text, text, boolean, integer)';
    EXECUTE 'SELECT pg_catalog.create_distributed_function($1::regprocedure, ''p_webinar_id'',
                 colocate_with => ''webinar_sessions.webinar_user_sessions'', force_delegation => true)'
      USING 'webinar_sessions._close_session(uuid, uuid, text, timestamptz, integer)';
    -- webinar_stats with the statistics aggregate in the query itself rather than behind
    -- _summary_for: Citus pushes the whole query for a webinar down to its shard, where
    -- _summary_for's own query would be a distributed query inside a shard's, which Citus
    -- refuses. (The same figures; ALTER EXTENSION UPDATE puts the single-node form back:
    -- call distribute() again after it.)
    CREATE OR REPLACE VIEW webinar_sessions.webinar_stats WITH (security_invoker = true) AS
    WITH summaries AS (
        SELECT spans.webinar_id,
               webinar_sessions._presence_summary(spans.user_id, spans.started_at, spans.ended_at) AS s
          FROM webinar_sessions.audience_spans AS spans
         GROUP BY spans.webinar_id
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
     WHERE w.s IS NOT NULL;
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET citus.propagate_set_commands = local',
                              pg_catalog.current_database());

    EXECUTE 'SELECT count(*) FROM pg_catalog.pg_dist_shard
              WHERE logicalrelid = ''webinar_sessions.webinar_user_sessions''::regclass'
       INTO v_shards;
    EXECUTE 'SELECT count(DISTINCT p.groupid) FROM pg_catalog.pg_dist_placement AS p
               JOIN pg_catalog.pg_dist_shard AS s USING (shardid)
              WHERE s.logicalrelid = ''webinar_sessions.webinar_user_sessions''::regclass'
       INTO v_nodes;
    RETURN pg_catalog.format('webinar_user_sessions %s in %s shards on %s nodes',
                             CASE WHEN v_distributed THEN 'was distributed already' ELSE 'distributed' END,
                             v_shards, v_nodes);
END
$$;
COMMENT ON FUNCTION webinar_sessions.distribute(integer) IS
    'Citus: distributes the session table by webinar_id and delegates the API to the node of each webinar''s shard. On the coordinator, once (again is harmless).';

-- For PostgREST's db-pre-request on Citus (README, "Citus"). Row-level security on a
-- distributed table is checked on the worker nodes, which see the caller's role (Citus
-- connects as it) but not request.jwt.claims: PostgREST sets them with set_config, which
-- Citus does not pass on. A SET LOCAL it does (citus.propagate_set_commands = local, which
-- distribute() sets): this repeats the claims as one. Elsewhere it changes nothing. In
-- public, because PostgREST calls it as every request's role, anon included, which has no
-- access to the webinar_sessions schema.
CREATE FUNCTION public.webinar_sessions_pre_request()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_claims text := pg_catalog.current_setting('request.jwt.claims', true);
BEGIN
    IF v_claims IS NOT NULL THEN
        EXECUTE pg_catalog.format('SET LOCAL request.jwt.claims = %L', v_claims);
    END IF;
END
$$;
COMMENT ON FUNCTION public.webinar_sessions_pre_request() IS
    'PostgREST db-pre-request on Citus: passes the request''s JWT claims on to the worker nodes, where row-level security is checked.';

REVOKE ALL ON FUNCTION webinar_sessions._upsert_session(uuid, uuid, text, text, text, boolean, integer),
    webinar_sessions._close_session(uuid, uuid, text, timestamptz, integer),
    webinar_sessions._on_citus_worker_node(), webinar_sessions.distribute(integer),
    public.webinar_sessions_pre_request() FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webinar_sessions FROM anon;
        GRANT EXECUTE ON FUNCTION public.webinar_sessions_pre_request() TO anon;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT EXECUTE ON FUNCTION public.webinar_sessions_pre_request() TO authenticated;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION public.webinar_sessions_pre_request(),
            webinar_sessions._upsert_session(uuid, uuid, text, text, text, boolean, integer),
            webinar_sessions._close_session(uuid, uuid, text, timestamptz, integer),
            webinar_sessions._on_citus_worker_node(), webinar_sessions.distribute(integer)
            TO service_role;
    END IF;
END
$grants$;
