\set n random(1, :sessions)
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', bench.claims_of(:n), true);
SELECT * FROM public.heartbeat(webinar_id => bench.webinar_of(:n), session_id => 'tab-' || :n);
COMMIT;
