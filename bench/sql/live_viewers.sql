\set n random(1, 1000000)
BEGIN READ ONLY;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', bench.claims_of(:n), true);
SELECT public.live_viewers(webinar_id => bench.webinar_of(0));
COMMIT;
