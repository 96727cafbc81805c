-- webinar_sessions: who may do what. Runs last, after every function exists.
--
-- Nothing is executable by PUBLIC. Supabase's roles get what they need, and only when they
-- exist, so the extension installs on a plain Postgres too:
--   authenticated  the client API (public.enter_webinar / heartbeat / leave_webinar and
--                  webinar_sessions.enter / heartbeat / leave for its own user id), the
--                  report API (live_viewers for everyone signed in; webinar_report and
--                  webinar_summary, which let only a webinar's hosts through), and SELECT on
--                  its own rows, presence, watch time and host rows (row-level security);
--   service_role   everything, including sweep_stale_sessions, heartbeat_batch and the
--                  per-webinar statistics;
--   anon           nothing but public.webinar_sessions_pre_request (PostgREST's
--                  db-pre-request on Citus, which runs for every request).

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webinar_sessions FROM PUBLIC;
REVOKE ALL ON FUNCTION public.enter_webinar(uuid, text), public.heartbeat(uuid, text),
    public.leave_webinar(uuid, text), public.live_viewers(uuid),
    public.webinar_report(uuid, double precision, timestamptz, timestamptz),
    public.webinar_summary(uuid), public.webinar_sessions_pre_request() FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA webinar_sessions FROM PUBLIC;

-- The row-level security policy calls it as the querying role. It reveals only the caller's
-- own claim.
GRANT EXECUTE ON FUNCTION webinar_sessions.current_user_id() TO PUBLIC;

DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        -- Supabase's default privileges grant new functions in public to anon.
        REVOKE ALL ON FUNCTION public.enter_webinar(uuid, text), public.heartbeat(uuid, text),
            public.leave_webinar(uuid, text), public.live_viewers(uuid),
            public.webinar_report(uuid, double precision, timestamptz, timestamptz),
            public.webinar_summary(uuid) FROM anon;
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webinar_sessions FROM anon;
        REVOKE ALL ON ALL TABLES IN SCHEMA webinar_sessions FROM anon;
        -- PostgREST's db-pre-request on Citus runs for every request (sql/distribute.sql).
        GRANT EXECUTE ON FUNCTION public.webinar_sessions_pre_request() TO anon;
    END IF;

    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT USAGE ON SCHEMA webinar_sessions TO authenticated;
        GRANT EXECUTE ON FUNCTION
            public.enter_webinar(uuid, text), public.heartbeat(uuid, text), public.leave_webinar(uuid, text),
            webinar_sessions.enter(uuid, text, uuid), webinar_sessions.heartbeat(uuid, text, uuid),
            webinar_sessions.leave(uuid, text, uuid),
            public.live_viewers(uuid), webinar_sessions.live_viewers(uuid),
            public.webinar_report(uuid, double precision, timestamptz, timestamptz),
            webinar_sessions.webinar_report(uuid, double precision, timestamptz, timestamptz),
            public.webinar_summary(uuid), webinar_sessions.webinar_summary(uuid),
            public.webinar_sessions_pre_request()
            TO authenticated;
        GRANT SELECT ON webinar_sessions.webinar_user_sessions, webinar_sessions.session_spans,
            webinar_sessions.presence, webinar_sessions.watch_time, webinar_sessions.webinar_hosts
            TO authenticated;
    END IF;

    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA webinar_sessions TO service_role;
        GRANT EXECUTE ON FUNCTION
            public.enter_webinar(uuid, text), public.heartbeat(uuid, text), public.leave_webinar(uuid, text),
            public.live_viewers(uuid), public.webinar_report(uuid, double precision, timestamptz, timestamptz),
            public.webinar_summary(uuid), public.webinar_sessions_pre_request()
            TO service_role;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA webinar_sessions TO service_role;
        GRANT SELECT, INSERT, UPDATE, DELETE ON webinar_sessions.webinar_user_sessions,
            webinar_sessions.webinar_hosts TO service_role;
        GRANT SELECT ON webinar_sessions.sweep_runs, webinar_sessions.session_spans, webinar_sessions.presence,
            webinar_sessions.watch_time, webinar_sessions.webinar_stats, webinar_sessions.buffer_stats,
            webinar_sessions.audience_spans, webinar_sessions.active_audience, webinar_sessions.live_counts
            TO service_role;
    END IF;
END
$grants$;
