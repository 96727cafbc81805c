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
