\set n random(1, :sessions)
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', bench.claims_of(:n), true);
UPDATE bench.seed_sessions SET last_heartbeat_at = now(), updated_at = now()
 WHERE webinar_id = bench.webinar_of(:n) AND session_id = 'tab-' || :n AND exited_at IS NULL;
COMMIT;
