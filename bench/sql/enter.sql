\set n random(1, 2000000000)
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', bench.claims_of(:n), true);
SELECT * FROM public.enter_webinar(webinar_id => bench.webinar_of(:n), session_id => 'tab-' || :n);
COMMIT;
