-- webinar_sessions 0.3.0 -> 0.4.0: one heartbeat path.
--
-- * webinar_sessions.heartbeat checks its arguments and the caller once, probes the
--   heartbeat buffer once (_buffer_probe, which fills the row by its column names), and
--   otherwise updates the row through _mark_alive: the UPDATE is written once.
-- * public.heartbeat is a thin wrapper, like enter_webinar and leave_webinar.
-- * _buffered_heartbeat, which clients could call, is gone; _buffer_probe is for the
--   definer only.
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
SET search_path = ''
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
