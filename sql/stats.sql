-- webinar_sessions: attendance analytics.
--
-- Summing a viewer's sessions counts the same minute twice when they had two tabs open, or
-- rejoined from another device before the old session was swept. Everything here works on
-- PRESENCE instead: a viewer's sessions merged into the stretches of time in which at least
-- one of them was open. A session counts from entered_at to its last proved sign of life,
-- coalesce(exited_at, last_heartbeat_at, entered_at); a session that was entered and never
-- heartbeated proves no time at all.
--
-- All views are security_invoker, so row-level security applies: a signed-in viewer sees
-- only their own presence and watch time. The per-webinar aggregates are for service_role
-- and the owner.

-- Every session as the span of time it proves: from entered_at to its last sign of life.
-- Open and closed sessions are read apart, as the two halves of a UNION ALL, so that a filter
-- on webinar_id (and user_id) reaches each half's partial index: idx_wus_active or
-- idx_wus_webinar_session_active for open sessions, idx_wus_webinar_user_watched for closed.
CREATE VIEW webinar_sessions.session_spans WITH (security_invoker = true) AS
SELECT webinar_id, user_id, entered_at AS started_at,
       coalesce(last_heartbeat_at, entered_at) AS ended_at
  FROM webinar_sessions.webinar_user_sessions
 WHERE exited_at IS NULL
UNION ALL
SELECT webinar_id, user_id, entered_at, exited_at
  FROM webinar_sessions.webinar_user_sessions
 WHERE exited_at IS NOT NULL;
COMMENT ON VIEW webinar_sessions.session_spans IS
    'Each session as the time it proves present: entered_at to coalesce(exited_at, last_heartbeat_at, entered_at).';

-- The audience's sessions: every session but those of the webinar's hosts and presenters
-- (webinar_hosts). The per-webinar figures read this.
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

-- One row per continuous stretch of a viewer's presence in a webinar. Overlapping and
-- touching sessions merge (gaps and islands: a session starts a new stretch only when it
-- begins after every earlier session of that viewer has ended).
--
-- Filters on webinar_id and user_id reach session_spans (they are the window partition), so
-- one viewer's presence is two index scans.
CREATE VIEW webinar_sessions.presence WITH (security_invoker = true) AS
SELECT webinar_id,
       user_id,
       min(started_at) AS started_at,
       max(ended_at)   AS ended_at,
       count(*)        AS sessions
  FROM (SELECT webinar_id, user_id, started_at, ended_at,
               count(*) FILTER (WHERE earlier_end IS NULL OR started_at > earlier_end)
                   OVER (PARTITION BY webinar_id, user_id ORDER BY started_at, ended_at
                         ROWS UNBOUNDED PRECEDING) AS stretch
          FROM (SELECT webinar_id, user_id, started_at, ended_at,
                       max(ended_at) OVER (PARTITION BY webinar_id, user_id ORDER BY started_at, ended_at
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
                  FROM webinar_sessions.session_spans) AS ordered) AS numbered
 GROUP BY webinar_id, user_id, stretch;
COMMENT ON VIEW webinar_sessions.presence IS
    'Continuous stretches of a viewer''s presence in a webinar: their sessions merged, overlaps counted once.';

-- One row per webinar and viewer. watched_seconds is the length of the union of their
-- sessions, not the sum.
CREATE VIEW webinar_sessions.watch_time WITH (security_invoker = true) AS
SELECT webinar_id,
       user_id,
       sum(sessions)::bigint AS sessions,
       min(started_at) AS first_entered_at,
       max(ended_at)   AS last_seen_at,
       sum(extract(epoch FROM ended_at - started_at))::double precision AS watched_seconds
  FROM webinar_sessions.presence
 GROUP BY webinar_id, user_id;
COMMENT ON VIEW webinar_sessions.watch_time IS
    'Watch time per webinar and viewer: the union of their sessions, so two tabs count once.';

-- One row per webinar. Concurrency counts distinct viewers, not tabs. The heavy part, merging
-- every viewer's sessions and sweeping the edges of their presence in time order, is
-- _summary_for, one call per webinar. Each edition has its own: the Rust aggregate
-- _presence_summary after one sort (src/stats.rs), or window functions and sorted arrays
-- (hosted/sql/stats.sql). A filter on webinar_id reaches the webinars subquery, so one
-- webinar's figures read only that webinar's sessions.
CREATE VIEW webinar_sessions.webinar_stats WITH (security_invoker = true) AS
WITH summaries AS (
    -- In FROM, so that it runs once per webinar: as a column of the CTE, which PostgreSQL
    -- inlines, it would be copied into each of the ten uses of s below. The webinars are
    -- session_spans' two halves, each grouped on its own partial index before the union
    -- (a filter on webinar_id reaches both): for a webinar of a million sessions that is
    -- not a million rows through an Append, and the table as a whole has no index on
    -- webinar_id to serve a filter.
    SELECT webinars.webinar_id, summary.s
      FROM (SELECT open_sessions.webinar_id FROM webinar_sessions.webinar_user_sessions AS open_sessions
             WHERE open_sessions.exited_at IS NULL GROUP BY open_sessions.webinar_id
            UNION
            SELECT closed_sessions.webinar_id FROM webinar_sessions.webinar_user_sessions AS closed_sessions
             WHERE closed_sessions.exited_at IS NOT NULL GROUP BY closed_sessions.webinar_id) AS webinars
     CROSS JOIN LATERAL webinar_sessions._summary_for(webinars.webinar_id) AS summary(s)
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
 -- A webinar whose every session is a host's has no audience figures.
 WHERE w.s IS NOT NULL;
COMMENT ON VIEW webinar_sessions.webinar_stats IS
    'Per webinar, its audience (hosts and presenters left out): viewers, sessions, active now, watch time (union per viewer), peak concurrent distinct viewers.';

CREATE FUNCTION webinar_sessions._check_span(p_name text, p_value interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION '% must not be null', p_name USING ERRCODE = 'null_value_not_allowed';
    ELSIF p_value <= interval '0' THEN
        RAISE EXCEPTION '% must be positive (got %)', p_name, p_value USING ERRCODE = 'invalid_parameter_value';
    ELSIF extract(month FROM p_value) <> 0 OR extract(year FROM p_value) <> 0 THEN
        RAISE EXCEPTION '% must be given in days or smaller units, not months or years (got %)', p_name, p_value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

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

CREATE FUNCTION webinar_sessions._check_not_null(p_name text, p_is_null boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_is_null THEN
        RAISE EXCEPTION '% must not be null', p_name USING ERRCODE = 'null_value_not_allowed';
    END IF;
END
$$;

-- The window [starts_at, ends_at) of attendance and retention: both given, finite, in order,
-- and at most 4000 years long. (retention's minute_offset is an integer, which ends at about
-- 4083 years; beyond that, microsecond arithmetic on the window overflows as well.)
CREATE FUNCTION webinar_sessions._check_window(p_starts_at timestamptz, p_ends_at timestamptz)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    PERFORM webinar_sessions._check_not_null('starts_at', p_starts_at IS NULL);
    PERFORM webinar_sessions._check_not_null('ends_at', p_ends_at IS NULL);
    PERFORM webinar_sessions._check_finite('starts_at', p_starts_at);
    PERFORM webinar_sessions._check_finite('ends_at', p_ends_at);
    IF p_ends_at <= p_starts_at THEN
        RAISE EXCEPTION 'ends_at (%) must be after starts_at (%)', p_ends_at, p_starts_at
            USING ERRCODE = 'invalid_parameter_value';
    -- (In seconds, as numeric: ends_at - starts_at itself can overflow.)
    ELSIF extract(epoch FROM p_ends_at) - extract(epoch FROM p_starts_at) > 4000 * 365.25 * 86400 THEN
        RAISE EXCEPTION 'ends_at (%) must be at most 4000 years after starts_at (%)', p_ends_at, p_starts_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- concurrency, retention and attendance read their figures from a webinar's presence,
-- _presence_for(webinar_id): its sessions merged into each viewer's stretches, as a bytea of
-- 32-byte records (viewer, start, end; microseconds since 2000 as big-endian int8), sorted by
-- viewer and start. Each edition builds and reads it its own way (src/stats.rs,
-- hosted/sql/stats.sql), so each figure costs one pass over the webinar's sessions.

CREATE FUNCTION webinar_sessions._grid_size(p_span interval, p_step interval)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_points bigint := ceil(extract(epoch FROM p_span) / extract(epoch FROM p_step))::bigint;
BEGIN
    IF v_points > 100000 THEN
        RAISE EXCEPTION 'bucket % over % gives % buckets; at most 100000 are allowed', p_step, p_span, v_points
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN greatest(v_points, 1);
END
$$;

CREATE FUNCTION webinar_sessions.concurrency(webinar_id uuid, bucket interval DEFAULT '1 minute')
RETURNS TABLE (bucket_start timestamptz, viewers bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
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
COMMENT ON FUNCTION webinar_sessions.concurrency(uuid, interval) IS
    'Distinct viewers present in each bucket, from the first entry to the last sign of life, empty buckets included.';

CREATE FUNCTION webinar_sessions.attendance(
    webinar_id uuid, starts_at timestamptz, ends_at timestamptz, min_ratio double precision DEFAULT 0.85)
RETURNS TABLE (user_id uuid, watched_seconds double precision, ratio double precision, attended boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- One row per viewer: 200,000 rows of a big webinar are about 12 MB, which the result's
-- tuplestore keeps in memory instead of spilling at the default 4 MB.
SET work_mem = '128MB'
AS $$
DECLARE
    v_length double precision;
    v_presence bytea;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', attendance.webinar_id IS NULL);
    PERFORM webinar_sessions._check_not_null('min_ratio', attendance.min_ratio IS NULL);
    PERFORM webinar_sessions._check_window(attendance.starts_at, attendance.ends_at);
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
COMMENT ON FUNCTION webinar_sessions.attendance(uuid, timestamptz, timestamptz, double precision) IS
    'Per viewer: watch time inside [starts_at, ends_at) (union of sessions), its ratio to the window, and whether it reaches min_ratio.';

CREATE FUNCTION webinar_sessions.retention(
    webinar_id uuid, starts_at timestamptz, ends_at timestamptz, bucket interval DEFAULT '1 minute')
RETURNS TABLE (minute_offset integer, still_watching bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_points bigint;
    v_presence bytea;
BEGIN
    PERFORM webinar_sessions._check_not_null('webinar_id', retention.webinar_id IS NULL);
    PERFORM webinar_sessions._check_span('bucket', retention.bucket);
    PERFORM webinar_sessions._check_window(retention.starts_at, retention.ends_at);
    v_points := webinar_sessions._grid_size(retention.ends_at - retention.starts_at, retention.bucket);
    v_presence := coalesce(webinar_sessions._presence_for(retention.webinar_id), '\x'::bytea);
    RETURN QUERY
        SELECT floor(extract(epoch FROM g.k * retention.bucket) / 60)::integer, g.viewers
          FROM webinar_sessions._presence_grid(v_presence, retention.starts_at, retention.bucket, v_points, true) AS g;
END
$$;
COMMENT ON FUNCTION webinar_sessions.retention(uuid, timestamptz, timestamptz, interval) IS
    'The drop-off curve: viewers present at starts_at + k * bucket, for every k before ends_at; minute_offset is that time in whole minutes.';
