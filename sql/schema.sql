-- webinar_sessions: tables, indexes and row-level security.
-- Loaded by CREATE EXTENSION into the schema named in webinar_sessions.control.

-- What every client-facing call returns.
CREATE TYPE webinar_sessions.session_status AS (
    id                   uuid,
    webinar_id           uuid,
    session_id           text,
    status               text,        -- entered | resumed | alive | reopened | left | not_found
    entered_at           timestamptz,
    last_heartbeat_at    timestamptz,
    exited_at            timestamptz,
    heartbeat_interval_s integer      -- the server's webinar_sessions.heartbeat_interval
);

-- One row per viewing session: a viewer (user_id) in one tab or device (session_id) of one
-- webinar, from entry until they leave or are swept.
--
-- A heartbeat only rewrites last_heartbeat_at and updated_at. Neither column appears in any
-- index or index predicate, and fillfactor leaves a quarter of every page free, so the new
-- row version fits on the same page: heartbeats are HOT updates and touch no index.
CREATE TABLE webinar_sessions.webinar_user_sessions (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    webinar_id        uuid        NOT NULL,
    user_id           uuid        NOT NULL,
    session_id        text        NOT NULL,
    entered_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    exited_at         timestamptz,
    exit_reason       text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT wus_session_id_length CHECK (length(session_id) BETWEEN 1 AND 128),
    CONSTRAINT wus_heartbeat_after_entry CHECK (last_heartbeat_at >= entered_at),
    CONSTRAINT wus_exit_after_entry CHECK (exited_at >= entered_at),
    -- The API writes only now(); an infinite time, written past it, would make every
    -- webinar's statistics fail (watch time cannot be computed from it).
    CONSTRAINT wus_times_finite CHECK (isfinite(entered_at) AND isfinite(last_heartbeat_at) AND isfinite(exited_at)),
    CONSTRAINT wus_exit_reason_known CHECK (exit_reason IN ('left', 'swept')),
    CONSTRAINT wus_exit_reason_iff_exited CHECK ((exited_at IS NULL) = (exit_reason IS NULL))
) WITH (fillfactor = 75);

COMMENT ON TABLE webinar_sessions.webinar_user_sessions IS
    'Viewing sessions. Written only through the webinar_sessions functions; signed-in users read their own rows.';

-- At most one active session per webinar, viewer and client session id. The heartbeat finds
-- its row through this index.
CREATE UNIQUE INDEX idx_wus_webinar_session_active
    ON webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id)
    WHERE exited_at IS NULL;

-- Active sessions by webinar: the sweep and the live counts read only this small index.
CREATE INDEX idx_wus_active
    ON webinar_sessions.webinar_user_sessions (webinar_id)
    WHERE exited_at IS NULL;

-- Closed sessions by webinar and viewer, in entry order, with both times: watch-time
-- statistics. The SQL-only edition reads a webinar's sessions from it in the order its
-- window functions need (hosted/sql/stats.sql, _audience_in_viewer_order).
CREATE INDEX idx_wus_webinar_user_watched
    ON webinar_sessions.webinar_user_sessions (webinar_id, user_id, entered_at)
    INCLUDE (exited_at)
    WHERE exited_at IS NOT NULL;

-- Signed-in users see their own rows and nothing else. Nobody but the owner and roles with
-- BYPASSRLS (Supabase's service_role) can write: there is no policy for writes.
ALTER TABLE webinar_sessions.webinar_user_sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY wus_read_own ON webinar_sessions.webinar_user_sessions
    FOR SELECT
    USING (user_id = (SELECT webinar_sessions.current_user_id()));

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

-- Rows deleted or truncated behind the API's back leave the heartbeat buffer (see
-- src/buffer.rs), so that it never answers for a session that is gone.
CREATE FUNCTION webinar_sessions._forget_deleted() RETURNS trigger
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
CREATE TRIGGER wus_forget_deleted
    AFTER DELETE ON webinar_sessions.webinar_user_sessions
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION webinar_sessions._forget_deleted();

CREATE FUNCTION webinar_sessions._forget_truncated() RETURNS trigger
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
CREATE TRIGGER wus_forget_truncated
    AFTER TRUNCATE ON webinar_sessions.webinar_user_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION webinar_sessions._forget_truncated();

-- Who hosts or presents a webinar; the app fills it (as service_role). Their own sessions are
-- not the audience: they stay out of the audience figures (webinar_stats, concurrency,
-- retention, attendance, live_viewers) and are reported apart in webinar_report. A host may
-- read the webinar's report and summary.
CREATE TABLE webinar_sessions.webinar_hosts (
    webinar_id uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    role       text        NOT NULL DEFAULT 'host',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (webinar_id, user_id),
    CONSTRAINT webinar_hosts_role_known CHECK (role IN ('host', 'presenter'))
);
CREATE INDEX idx_webinar_hosts_user ON webinar_sessions.webinar_hosts (user_id);
COMMENT ON TABLE webinar_sessions.webinar_hosts IS
    'Hosts and presenters of each webinar (role host or presenter), filled by the app as service_role; signed-in users read their own rows.';
ALTER TABLE webinar_sessions.webinar_hosts ENABLE ROW LEVEL SECURITY;
CREATE POLICY webinar_hosts_read_own ON webinar_sessions.webinar_hosts
    FOR SELECT
    USING (user_id = (SELECT webinar_sessions.current_user_id()));

-- The audience now, per webinar, as the worker counts it after each flush (live_viewers reads
-- it; derived data, so pg_dump leaves its rows out).
CREATE TABLE webinar_sessions.live_counts (
    webinar_id uuid        PRIMARY KEY,
    viewers    bigint      NOT NULL,
    counted_at timestamptz NOT NULL
);
ALTER TABLE webinar_sessions.live_counts ENABLE ROW LEVEL SECURITY;

-- One row per sweep: from the worker, a pg_cron job (schedule_sweep) or a manual call. The
-- newest 1000 are kept.
CREATE TABLE webinar_sessions.sweep_runs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    swept       bigint,                -- NULL when the sweep failed
    source      text        NOT NULL CHECK (source IN ('worker', 'cron', 'manual')),
    stale_after interval    NOT NULL,
    error       text,
    CONSTRAINT sweep_runs_outcome CHECK ((swept IS NULL) <> (error IS NULL))
);
CREATE INDEX sweep_runs_started_at ON webinar_sessions.sweep_runs (started_at);
ALTER TABLE webinar_sessions.sweep_runs ENABLE ROW LEVEL SECURITY;

-- pg_dump dumps the contents of extension tables only when they are registered.
SELECT pg_catalog.pg_extension_config_dump('webinar_sessions.webinar_user_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('webinar_sessions.sweep_runs', '');
SELECT pg_catalog.pg_extension_config_dump('webinar_sessions.webinar_hosts', '');
