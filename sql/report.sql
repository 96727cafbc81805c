-- webinar_sessions: what hosts and viewers read through supabase-js. Viewers see how many are
-- watching (live_viewers); a webinar's hosts read its attendee report (webinar_report) and its
-- summary (webinar_summary). All three are STABLE, so supabase.rpc(..., { get: true }) can call
-- them, and PostgREST serves the report as CSV for Accept: text/csv.
--
-- The definers here read every session of the webinar, which row-level security hides from a
-- signed-in user; each checks who asks first.

-- The live counts, refreshed: one count per webinar with an audience now, and the marker row
-- (the nil webinar id, which the API refuses as a webinar) holding the time of the refresh.
-- The worker runs it after every flush (see _worker_flush), so a session kept alive only in
-- the heartbeat buffer is counted: it is an active row, whatever its last_heartbeat_at says.
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
