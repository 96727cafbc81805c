-- webinar_sessions 0.6.3 -> 0.6.4: the closed sessions' index by viewer and entry.
-- * idx_wus_webinar_user_watched is (webinar_id, user_id, entered_at) INCLUDE (exited_at), not
--   (webinar_id, user_id, exited_at): it still finds a webinar's or a viewer's closed sessions,
--   and now hands them over in the order the statistics merge them, with both times, so the
--   SQL-only edition's webinar_stats reads a webinar without sorting it (and a viewer's
--   watch_time can be an index-only scan). Rebuilding it takes a lock that holds off writes to
--   the table for as long as the build takes (seconds per million closed sessions): update
--   between webinars.
-- tests/upgrade.rs compares the result with a fresh 0.6.4.
-- On Citus the coordinator's index commands reach the shards; the update the coordinator passes
-- on to a worker node must not run them again there.
DO $upgrade$
BEGIN
    IF NOT webinar_sessions._on_citus_worker_node() THEN
        DROP INDEX webinar_sessions.idx_wus_webinar_user_watched;
        CREATE INDEX idx_wus_webinar_user_watched
            ON webinar_sessions.webinar_user_sessions (webinar_id, user_id, entered_at)
            INCLUDE (exited_at)
            WHERE exited_at IS NOT NULL;
    END IF;
END
$upgrade$;
