-- webinar_sessions 0.3.0 -> 0.4.0: one heartbeat path.
--
-- * webinar_sessions.heartbeat checks its arguments and the caller once, probes the
--   heartbeat buffer once (_buffer_probe, which fills the row by its column names), and
--   otherwise updates the row through _mark_alive: the UPDATE is written once.
-- * public.heartbeat is a thin wrapper, like enter_webinar and leave_webinar.
-- * _buffered_heartbeat, which clients could call, is gone; _buffer_probe is for the
--   definer only.
-- * Hosts and viewers read their own numbers (sql/report.sql): webinar_hosts, whose sessions
--   leave the audience figures; live_viewers, counted by the worker after each flush;
--   webinar_report and webinar_summary for a webinar's hosts.
-- * Security: every function that pinned search_path to '' pins it to pg_catalog, pg_temp.
--   With an empty search_path PostgreSQL still resolves types and tables in the caller's
--   pg_temp first, so a temporary domain named like a type a definer declares (timestamptz,
--   uuid, text) ran its CHECK as the extension's owner.
-- Data is untouched. tests/upgrade.rs checks that a database updated through this script ends
-- up with exactly the objects, definitions and privileges of a fresh 0.4.0.

CREATE FUNCTION webinar_sessions._buffer_probe(
    "webinar_id" uuid,
    "user_id" uuid,
    "session_id" TEXT
) RETURNS webinar_sessions.session_status
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'buffer_probe_wrapper';
REVOKE ALL ON FUNCTION webinar_sessions._buffer_probe(uuid, uuid, text) FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION webinar_sessions._buffer_probe(uuid, uuid, text) TO service_role;
    END IF;
END
$grants$;

CREATE OR REPLACE FUNCTION webinar_sessions.heartbeat(webinar_id uuid, session_id text, user_id uuid DEFAULT NULL)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_user uuid := webinar_sessions._checked_user(heartbeat.webinar_id, heartbeat.session_id, heartbeat.user_id);
    r webinar_sessions.session_status := webinar_sessions._buffer_probe(heartbeat.webinar_id, v_user, heartbeat.session_id);
    v_async text;
BEGIN
    IF r.id IS NOT NULL THEN
        RETURN r;
    END IF;
    IF pg_catalog.txid_current_if_assigned() IS NULL THEN
        v_async := pg_catalog.set_config('synchronous_commit', 'off', true);
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

CREATE OR REPLACE FUNCTION public.heartbeat(webinar_id uuid, session_id text)
RETURNS webinar_sessions.session_status
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
BEGIN
    RETURN webinar_sessions.heartbeat(heartbeat.webinar_id, heartbeat.session_id);
END
$$;
COMMENT ON FUNCTION public.heartbeat(uuid, text) IS
    'webinar_sessions: the signed-in viewer is still watching (status alive or reopened).';

DROP FUNCTION webinar_sessions._buffered_heartbeat(uuid, text, uuid);

-- Hosts, and the live counts.
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
SELECT pg_catalog.pg_extension_config_dump('webinar_sessions.webinar_hosts', '');

-- The audience: the figures leave the hosts' and presenters' sessions out.
CREATE VIEW webinar_sessions.audience_spans WITH (security_invoker = true) AS
SELECT s.webinar_id, s.user_id, s.started_at, s.ended_at
  FROM webinar_sessions.session_spans AS s
 WHERE NOT EXISTS (SELECT FROM webinar_sessions.webinar_hosts AS h
                    WHERE h.webinar_id = s.webinar_id AND h.user_id = s.user_id);
COMMENT ON VIEW webinar_sessions.audience_spans IS
    'session_spans without the sessions of each webinar''s hosts and presenters.';

-- The audience's active sessions (hosts and presenters left out): what webinar_stats counts as
-- active and live_viewers as watching now.
CREATE VIEW webinar_sessions.active_audience WITH (security_invoker = true) AS
SELECT s.webinar_id, s.user_id, s.id
  FROM webinar_sessions.webinar_user_sessions AS s
 WHERE s.exited_at IS NULL
   AND NOT EXISTS (SELECT FROM webinar_sessions.webinar_hosts AS h
                    WHERE h.webinar_id = s.webinar_id AND h.user_id = s.user_id);
COMMENT ON VIEW webinar_sessions.active_audience IS
    'The active sessions of each webinar''s audience (its hosts and presenters left out).';

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
  LEFT JOIN active AS a ON a.webinar_id = w.webinar_id;
COMMENT ON VIEW webinar_sessions.webinar_stats IS
    'Per webinar, its audience (hosts and presenters left out): viewers, sessions, active now, watch time (union per viewer), peak concurrent distinct viewers.';

CREATE OR REPLACE FUNCTION webinar_sessions._presence_for(p_webinar_id uuid)
RETURNS bytea
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT webinar_sessions._presence_of(s.user_id, s.started_at, s.ended_at)
              FROM webinar_sessions.audience_spans AS s
             WHERE s.webinar_id = p_webinar_id);
END
$$;

CREATE OR REPLACE FUNCTION webinar_sessions._worker_flush()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_written bigint;
BEGIN
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

CREATE FUNCTION webinar_sessions._caller_is_service() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'caller_is_service_wrapper';

-- The report API (sql/report.sql, as in a fresh install).
CREATE FUNCTION webinar_sessions._refresh_live_counts()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := pg_catalog.clock_timestamp();
    v_webinars bigint;
BEGIN
    WITH counted AS (
        INSERT INTO webinar_sessions.live_counts AS c (webinar_id, viewers, counted_at)
        SELECT a.webinar_id, count(DISTINCT a.user_id), v_now
          FROM webinar_sessions.active_audience AS a
         GROUP BY a.webinar_id
        ON CONFLICT (webinar_id) DO UPDATE SET viewers = excluded.viewers, counted_at = excluded.counted_at
        RETURNING c.webinar_id
    )
    SELECT count(*) INTO v_webinars FROM counted;
    INSERT INTO webinar_sessions.live_counts AS c (webinar_id, viewers, counted_at)
    VALUES ('00000000-0000-0000-0000-000000000000', v_webinars, v_now)
    ON CONFLICT (webinar_id) DO UPDATE SET viewers = excluded.viewers, counted_at = excluded.counted_at;
    -- Webinars whose audience has gone.
    DELETE FROM webinar_sessions.live_counts AS c WHERE c.counted_at < v_now;
    RETURN v_webinars;
END
$$;

-- Distinct viewers with an active session now (the webinar's hosts and presenters left out),
-- as webinar_stats.active_viewers counts them. From the worker's count when it is fresh (at
-- most two flush intervals old: one index lookup however big the webinar), else counted here.
CREATE FUNCTION webinar_sessions.live_viewers(webinar_id uuid)
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_fresh_after timestamptz := pg_catalog.now()
        - 2 * coalesce(pg_catalog.current_setting('webinar_sessions.flush_interval', true)::interval,
                       interval '10 seconds');
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', live_viewers.webinar_id IS NULL);
    IF live_viewers.webinar_id = '00000000-0000-0000-0000-000000000000' THEN
        RAISE EXCEPTION 'webinar_id must not be the nil uuid' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM webinar_sessions.live_counts AS c
                WHERE c.webinar_id = '00000000-0000-0000-0000-000000000000'
                  AND c.counted_at > v_fresh_after) THEN
        RETURN coalesce((SELECT c.viewers FROM webinar_sessions.live_counts AS c
                          WHERE c.webinar_id = live_viewers.webinar_id), 0);
    END IF;
    RETURN (SELECT count(DISTINCT a.user_id) FROM webinar_sessions.active_audience AS a
             WHERE a.webinar_id = live_viewers.webinar_id);
END
$$;
COMMENT ON FUNCTION webinar_sessions.live_viewers(uuid) IS
    'Distinct viewers watching the webinar now (hosts and presenters left out); at most two flush intervals old when the worker counts.';

-- Who may read a webinar's report and summary: its hosts (role host in webinar_hosts) and
-- service_role (and the extension's owner). Anyone else gets 42501.
CREATE FUNCTION webinar_sessions._check_report_access(p_webinar_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', p_webinar_id IS NULL);
    IF webinar_sessions._caller_is_service() THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM webinar_sessions.webinar_hosts AS h
                WHERE h.webinar_id = p_webinar_id AND h.role = 'host'
                  AND h.user_id = webinar_sessions.current_user_id()) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'only the hosts of webinar % and service_role may read its report', p_webinar_id
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Hosts are the rows of webinar_sessions.webinar_hosts with role host, which service_role fills.';
END
$$;

-- One row per person who joined: what a Zoom or Teams attendee report gives. The audience
-- first (role viewer), then hosts and presenters. watched_seconds is the union of their
-- sessions; rejoins counts the stretches of presence after the first (a session that proved no
-- time is no stretch); attended compares the time present inside the window [starts_at,
-- ends_at) (by default the audience's first entry to its last sign of life) with min_ratio.
CREATE FUNCTION webinar_sessions.webinar_report(
    webinar_id uuid,
    min_ratio double precision DEFAULT 0.5,
    starts_at timestamptz DEFAULT NULL,
    ends_at timestamptz DEFAULT NULL)
RETURNS TABLE (user_id uuid, role text, first_entered_at timestamptz, last_seen_at timestamptz,
               watched_seconds double precision, sessions bigint, rejoins bigint,
               attended boolean, watching_now boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_starts timestamptz := webinar_report.starts_at;
    v_ends timestamptz := webinar_report.ends_at;
    v_length double precision;
BEGIN
    PERFORM webinar_sessions._check_report_access(webinar_report.webinar_id);
    PERFORM webinar_sessions._check_not_null('min_ratio', webinar_report.min_ratio IS NULL);
    IF webinar_report.min_ratio < 0 OR webinar_report.min_ratio > 1 OR webinar_report.min_ratio = 'NaN' THEN
        RAISE EXCEPTION 'min_ratio must be between 0 and 1 (got %)', webinar_report.min_ratio
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_starts IS NOT NULL THEN
        PERFORM webinar_sessions._check_finite('starts_at', v_starts);
    END IF;
    IF v_ends IS NOT NULL THEN
        PERFORM webinar_sessions._check_finite('ends_at', v_ends);
    END IF;
    IF v_starts IS NULL OR v_ends IS NULL THEN
        SELECT coalesce(v_starts, min(a.started_at)), coalesce(v_ends, max(a.ended_at))
          INTO v_starts, v_ends
          FROM webinar_sessions.audience_spans AS a
         WHERE a.webinar_id = webinar_report.webinar_id;
    END IF;
    IF v_ends < v_starts THEN
        RAISE EXCEPTION 'ends_at (%) must not be before starts_at (%)', v_ends, v_starts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_length := extract(epoch FROM v_ends - v_starts);
    RETURN QUERY
        WITH per_user AS (
            SELECT p.user_id,
                   min(p.started_at) AS first_entered_at,
                   max(p.ended_at) AS last_seen_at,
                   sum(extract(epoch FROM p.ended_at - p.started_at))::double precision AS watched,
                   sum(p.sessions)::bigint AS sessions,
                   greatest(count(*) FILTER (WHERE p.ended_at > p.started_at) - 1, 0)::bigint AS rejoins,
                   sum(greatest(extract(epoch FROM least(p.ended_at, v_ends) - greatest(p.started_at, v_starts)), 0))::double precision AS in_window
              FROM webinar_sessions.presence AS p
             WHERE p.webinar_id = webinar_report.webinar_id
             GROUP BY p.user_id
        )
        SELECT u.user_id, coalesce(h.role, 'viewer'), u.first_entered_at, u.last_seen_at, u.watched,
               u.sessions, u.rejoins,
               coalesce(v_length > 0 AND u.in_window / v_length >= webinar_report.min_ratio, false),
               EXISTS (SELECT FROM webinar_sessions.webinar_user_sessions AS s
                        WHERE s.webinar_id = webinar_report.webinar_id AND s.user_id = u.user_id
                          AND s.exited_at IS NULL)
          FROM per_user AS u
          LEFT JOIN webinar_sessions.webinar_hosts AS h
            ON h.webinar_id = webinar_report.webinar_id AND h.user_id = u.user_id
         ORDER BY h.role IS NOT NULL, u.first_entered_at, u.user_id;
END
$$;
COMMENT ON FUNCTION webinar_sessions.webinar_report(uuid, double precision, timestamptz, timestamptz) IS
    'The attendee report of a webinar, one row per person: first entry, last sign of life, watch time (union of sessions), sessions, rejoins, attended, watching now; for its hosts and service_role.';

-- The webinar_stats row of one webinar, for its hosts and service_role.
CREATE FUNCTION webinar_sessions.webinar_summary(webinar_id uuid)
RETURNS SETOF webinar_sessions.webinar_stats
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webinar_sessions._check_report_access(webinar_summary.webinar_id);
    RETURN QUERY SELECT * FROM webinar_sessions.webinar_stats AS s
                  WHERE s.webinar_id = webinar_summary.webinar_id;
END
$$;
COMMENT ON FUNCTION webinar_sessions.webinar_summary(uuid) IS
    'The webinar_stats row of one webinar (its audience: hosts and presenters left out), for its hosts and service_role.';

-- For supabase.rpc(): thin SECURITY INVOKER wrappers in public, as for the heartbeat API.
CREATE FUNCTION public.live_viewers(webinar_id uuid)
RETURNS bigint
LANGUAGE sql STABLE SECURITY INVOKER
AS $$
    SELECT webinar_sessions.live_viewers(live_viewers.webinar_id);
$$;
COMMENT ON FUNCTION public.live_viewers(uuid) IS
    'webinar_sessions: how many viewers are watching the webinar now.';

CREATE FUNCTION public.webinar_report(
    webinar_id uuid,
    min_ratio double precision DEFAULT 0.5,
    starts_at timestamptz DEFAULT NULL,
    ends_at timestamptz DEFAULT NULL)
RETURNS TABLE (user_id uuid, role text, first_entered_at timestamptz, last_seen_at timestamptz,
               watched_seconds double precision, sessions bigint, rejoins bigint,
               attended boolean, watching_now boolean)
LANGUAGE sql STABLE SECURITY INVOKER
AS $$
    SELECT * FROM webinar_sessions.webinar_report(
        webinar_report.webinar_id, webinar_report.min_ratio, webinar_report.starts_at, webinar_report.ends_at);
$$;
COMMENT ON FUNCTION public.webinar_report(uuid, double precision, timestamptz, timestamptz) IS
    'webinar_sessions: the attendee report of a webinar you host (CSV with Accept: text/csv).';

CREATE FUNCTION public.webinar_summary(webinar_id uuid)
RETURNS SETOF webinar_sessions.webinar_stats
LANGUAGE sql STABLE SECURITY INVOKER
AS $$
    SELECT * FROM webinar_sessions.webinar_summary(webinar_summary.webinar_id);
$$;
COMMENT ON FUNCTION public.webinar_summary(uuid) IS
    'webinar_sessions: viewers, watch time and peak of a webinar you host.';

-- Privileges of the new objects, as sql/privileges.sql gives them.
REVOKE ALL ON FUNCTION webinar_sessions._caller_is_service(), webinar_sessions._refresh_live_counts(),
    webinar_sessions.live_viewers(uuid), webinar_sessions._check_report_access(uuid),
    webinar_sessions.webinar_report(uuid, double precision, timestamptz, timestamptz),
    webinar_sessions.webinar_summary(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.live_viewers(uuid),
    public.webinar_report(uuid, double precision, timestamptz, timestamptz),
    public.webinar_summary(uuid) FROM PUBLIC;
REVOKE ALL ON webinar_sessions.webinar_hosts, webinar_sessions.live_counts,
    webinar_sessions.audience_spans, webinar_sessions.active_audience FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON FUNCTION public.live_viewers(uuid),
            public.webinar_report(uuid, double precision, timestamptz, timestamptz),
            public.webinar_summary(uuid) FROM anon;
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webinar_sessions FROM anon;
        REVOKE ALL ON ALL TABLES IN SCHEMA webinar_sessions FROM anon;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT EXECUTE ON FUNCTION
            public.live_viewers(uuid), webinar_sessions.live_viewers(uuid),
            public.webinar_report(uuid, double precision, timestamptz, timestamptz),
            webinar_sessions.webinar_report(uuid, double precision, timestamptz, timestamptz),
            public.webinar_summary(uuid), webinar_sessions.webinar_summary(uuid)
            TO authenticated;
        GRANT SELECT ON webinar_sessions.webinar_hosts TO authenticated;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION
            public.live_viewers(uuid), public.webinar_report(uuid, double precision, timestamptz, timestamptz),
            public.webinar_summary(uuid),
            webinar_sessions._caller_is_service(), webinar_sessions._refresh_live_counts(),
            webinar_sessions.live_viewers(uuid), webinar_sessions._check_report_access(uuid),
            webinar_sessions.webinar_report(uuid, double precision, timestamptz, timestamptz),
            webinar_sessions.webinar_summary(uuid)
            TO service_role;
        GRANT SELECT, INSERT, UPDATE, DELETE ON webinar_sessions.webinar_hosts TO service_role;
        GRANT SELECT ON webinar_sessions.audience_spans, webinar_sessions.active_audience,
            webinar_sessions.live_counts TO service_role;
    END IF;
END
$grants$;

-- search_path '' let the caller's pg_temp shadow type names (see the top of this script).
DO $pin$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc AS p
          JOIN pg_catalog.pg_depend AS d
            ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_catalog.pg_extension AS e ON e.oid = d.refobjid AND e.extname = 'webinar_sessions'
         WHERE p.proconfig @> ARRAY['search_path=""']
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', v_function);
    END LOOP;
END
$pin$;
