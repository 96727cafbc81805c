-- The SQL-only edition's part of 0.6.2 -> 0.6.3, before the shared script: the table now
-- refuses infinite times (wus_times_finite), so the statistics no longer look for them, and
-- the function that reported one goes.
DROP FUNCTION webinar_sessions._infinite_session();
