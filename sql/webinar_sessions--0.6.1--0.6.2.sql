-- webinar_sessions 0.6.1 -> 0.6.2: webinar_stats faster, in both editions.
-- * webinar_stats finds its webinars by grouping each half of session_spans on its own
--   partial index before the union, not a million rows through an Append for a big webinar.
-- * The SQL-only edition's _summary_for counts the peak only where it can be (hosted/sql/
--   stats.sql; hosted/package.sh replaces that edition's functions on every update).
-- On Citus, distribute() has replaced webinar_stats with a form that has no _summary_for
-- and no such scan: that form stays as it is, and distribute() need not be called again.
-- tests/upgrade.rs compares the result with a fresh 0.6.2.
DO $upgrade$
BEGIN
    IF pg_catalog.pg_get_viewdef('webinar_sessions.webinar_stats'::regclass) LIKE '%_summary_for%' THEN
        CREATE OR REPLACE VIEW webinar_sessions.webinar_stats WITH (security_invoker = true) AS
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
    END IF;
END
$upgrade$;
