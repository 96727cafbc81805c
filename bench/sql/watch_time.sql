\set n random(1, :viewers)
SELECT * FROM webinar_sessions.watch_time WHERE webinar_id = bench.webinar_of(0) AND user_id = bench.user_of(:n);
