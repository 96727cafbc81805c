-- Benchmark schema beside the extension: the seed's design, as its document describes it,
-- so that both run on the same server, data and request shape.
CREATE SCHEMA IF NOT EXISTS bench;
GRANT USAGE ON SCHEMA bench TO PUBLIC;

-- The seed's table and indexes (default fillfactor, no partial unique index).
CREATE TABLE bench.seed_sessions (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    webinar_id        uuid        NOT NULL,
    user_id           uuid        NOT NULL,
    session_id        text        NOT NULL,
    entered_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    exited_at         timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_seed_webinar_session_active ON bench.seed_sessions (webinar_id, session_id, exited_at)
    WHERE exited_at IS NULL;
CREATE INDEX idx_seed_active ON bench.seed_sessions (webinar_id, exited_at) WHERE exited_at IS NULL;
CREATE INDEX idx_seed_webinar_user_watched ON bench.seed_sessions (webinar_id, user_id, exited_at)
    WHERE exited_at IS NOT NULL;
-- Viewers read and update their own rows directly, as a supabase-js client would.
ALTER TABLE bench.seed_sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY seed_read_own ON bench.seed_sessions FOR SELECT
    USING (user_id = (SELECT webinar_sessions.current_user_id()));
CREATE POLICY seed_update_own ON bench.seed_sessions FOR UPDATE
    USING (user_id = (SELECT webinar_sessions.current_user_id()));
GRANT SELECT, UPDATE ON bench.seed_sessions TO authenticated;

-- The benchmark's key scheme, shared by every variant: viewer n watches webinar n % 10 in
-- tab 'tab-n'.
CREATE FUNCTION bench.user_of(n int) RETURNS uuid LANGUAGE sql IMMUTABLE
    RETURN ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid;
CREATE FUNCTION bench.webinar_of(n int) RETURNS uuid LANGUAGE sql IMMUTABLE
    RETURN ('00000000-0000-4000-a000-' || lpad(to_hex(n % 10), 12, '0'))::uuid;
CREATE FUNCTION bench.claims_of(n int) RETURNS text LANGUAGE sql IMMUTABLE
    RETURN '{"sub":"' || bench.user_of(n) || '","role":"authenticated","aud":"authenticated"}';
GRANT EXECUTE ON FUNCTION bench.user_of(int), bench.webinar_of(int), bench.claims_of(int) TO PUBLIC;

-- N active sessions in both tables, fresh.
CREATE FUNCTION bench.load_active(p_sessions int) RETURNS void LANGUAGE sql AS $$
    TRUNCATE webinar_sessions.webinar_user_sessions, bench.seed_sessions;
    INSERT INTO webinar_sessions.webinar_user_sessions (webinar_id, user_id, session_id, last_heartbeat_at)
    SELECT bench.webinar_of(n), bench.user_of(n), 'tab-' || n, now() FROM generate_series(1, p_sessions) AS n;
    INSERT INTO bench.seed_sessions (webinar_id, user_id, session_id, last_heartbeat_at)
    SELECT bench.webinar_of(n), bench.user_of(n), 'tab-' || n, now() FROM generate_series(1, p_sessions) AS n;
$$;
