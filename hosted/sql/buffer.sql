-- webinar_sessions, SQL-only edition: the heartbeat buffer's entry points (src/buffer/sql.rs)
-- as what they are without it. The buffer lives in shared memory, which only a preloaded
-- library has: here every heartbeat is direct, the API's SQL calls these and gets "nothing
-- buffered", and buffer_stats shows mode direct with every count 0, as a Rust build does when
-- it is not preloaded. Each is one constant, which PostgreSQL inlines into its caller.
-- Loaded after sql/schema.sql (session_status).

CREATE FUNCTION webinar_sessions._buffer_probe(webinar_id uuid, user_id uuid, session_id text)
RETURNS webinar_sessions.session_status
LANGUAGE sql VOLATILE
AS $$ SELECT NULL::webinar_sessions.session_status $$;

CREATE FUNCTION webinar_sessions._buffer_track(row_id uuid, webinar_id uuid, user_id uuid, session_id text,
                                               entered_at timestamptz, alive_at timestamptz)
RETURNS boolean
LANGUAGE sql VOLATILE
AS $$ SELECT false $$;

CREATE FUNCTION webinar_sessions._buffer_closing(webinar_id uuid, user_id uuid, session_id text)
RETURNS timestamptz
LANGUAGE sql VOLATILE
AS $$ SELECT NULL::timestamptz $$;

CREATE FUNCTION webinar_sessions._buffer_collect(for_sweep boolean)
RETURNS TABLE (id uuid, alive_at timestamptz)
LANGUAGE sql VOLATILE
AS $$ SELECT NULL::uuid, NULL::timestamptz WHERE false $$;

CREATE FUNCTION webinar_sessions._buffer_written(ids uuid[])
RETURNS void
LANGUAGE sql VOLATILE
AS $$ $$;

CREATE FUNCTION webinar_sessions._buffer_swept(ids uuid[])
RETURNS void
LANGUAGE sql VOLATILE
AS $$ $$;

CREATE FUNCTION webinar_sessions._buffer_forget(ids uuid[], "all" boolean)
RETURNS void
LANGUAGE sql VOLATILE
AS $$ $$;

CREATE FUNCTION webinar_sessions._buffer_stats()
RETURNS TABLE (mode text, capacity bigint, used bigint, dirty bigint, memory_bytes bigint,
               bytes_per_session bigint, buffered_heartbeats bigint, fallbacks bigint, flushes bigint,
               flushed_rows bigint, evicted bigint, last_flush_at timestamptz, last_flush_ms double precision)
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$ SELECT 'direct'::text, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
             0::bigint, 0::bigint, 0::bigint, NULL::timestamptz, NULL::double precision $$;
