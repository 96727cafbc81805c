-- webinar_sessions, SQL-only edition: what src/stats.rs does in the Rust build. sql/stats.sql
-- asks each edition for a webinar's summary (_summary_for) and its presence (_presence_for,
-- read by _presence_bounds, _presence_grid and _presence_overlap). Here they are window
-- functions: a viewer's sessions in start order, each clipped to the part no earlier session
-- of that viewer covered, are disjoint pieces whose union is the viewer's presence. The
-- sessions come in that order from an index (_audience_in_viewer_order); for the peak, the
-- pieces' starts and their ends are sorted once each.
-- Loaded before sql/stats.sql; plpgsql, so the views they read may come later.

-- Microseconds since 2000-01-01 UTC, PostgreSQL's own timestamp count (exact: extract gives
-- numeric). The epoch moves before the cast: counted from 1970, the last timestamps
-- (294276 AD) are beyond bigint.
CREATE FUNCTION webinar_sessions._micros(p_at timestamptz)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ((extract(epoch FROM p_at) - 946684800) * 1000000)::bigint;
$$;

-- A webinar's audience_spans in viewer and start order, without a sort of the whole: each of
-- session_spans' two halves is read in that order (the closed sessions from
-- idx_wus_webinar_user_watched, index-only where the table's pages are all-visible; the open
-- ones, which that index does not hold, sorted), the two are merged, and a merge on the viewer
-- leaves out the hosts' sessions and keeps the order. The window functions below then need no
-- sort of their own; for a webinar of a million sessions the sort was a third of its
-- webinar_stats. audience_spans itself cannot be read so: the halves of a UNION ALL that have a
-- WHERE clause stay subqueries, and PostgreSQL merges them in an order only when each is
-- ordered by its own ORDER BY (which the Rust build, whose aggregate sorts in memory, would pay
-- for). The spans are session_spans' (sql/stats.sql); tests/stats.rs checks both editions'
-- figures against a brute-force count. A sql function, which PostgreSQL inlines into the
-- queries that read it.
--
-- With p_from or p_below, only the viewers whose ids are from p_from on or below p_below: a
-- share of the audience, for _summary_for to sum up in two shares at once.
CREATE FUNCTION webinar_sessions._audience_in_viewer_order(
    p_webinar_id uuid, p_from uuid DEFAULT NULL, p_below uuid DEFAULT NULL)
RETURNS TABLE (user_id uuid, started_at timestamptz, ended_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT s.user_id, s.started_at, s.ended_at
      FROM ((SELECT c.user_id, c.entered_at AS started_at, c.exited_at AS ended_at
               FROM webinar_sessions.webinar_user_sessions AS c
              WHERE c.webinar_id = p_webinar_id AND c.exited_at IS NOT NULL
                AND (p_from IS NULL OR c.user_id >= p_from) AND (p_below IS NULL OR c.user_id < p_below)
              ORDER BY c.user_id, c.entered_at)
            UNION ALL
            (SELECT o.user_id, o.entered_at, coalesce(o.last_heartbeat_at, o.entered_at)
               FROM webinar_sessions.webinar_user_sessions AS o
              WHERE o.webinar_id = p_webinar_id AND o.exited_at IS NULL
                AND (p_from IS NULL OR o.user_id >= p_from) AND (p_below IS NULL OR o.user_id < p_below)
              ORDER BY o.user_id, o.entered_at)) AS s
     WHERE NOT EXISTS (SELECT FROM webinar_sessions.webinar_hosts AS h
                        WHERE h.webinar_id = p_webinar_id AND h.user_id = s.user_id);
$$;

-- A share of a webinar's audience (see above), summed up: viewers, sessions, watched time,
-- first entry, last sign of life, and the starts and the ends of its pieces, each sorted. A
-- viewer's sessions in start order, each clipped to what no earlier session of theirs covered,
-- are disjoint pieces whose union is the viewer's presence. Inlined into _summary_for's queries.
CREATE FUNCTION webinar_sessions._summary_share(p_webinar_id uuid, p_from uuid, p_below uuid)
RETURNS TABLE (viewers bigint, sessions bigint, watched interval, first_at timestamptz,
               last_at timestamptz, starts timestamptz[], ends timestamptz[])
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT count(*) FILTER (WHERE p.first_of_viewer),
           count(*),
           sum(p.ended_at - p.piece_start) FILTER (WHERE p.ended_at > p.piece_start),
           min(p.started_at),
           max(p.ended_at),
           array_agg(p.piece_start ORDER BY p.piece_start) FILTER (WHERE p.ended_at > p.piece_start),
           array_agg(p.ended_at ORDER BY p.ended_at) FILTER (WHERE p.ended_at > p.piece_start)
      FROM (SELECT o.started_at, o.ended_at, o.earlier_end IS NULL AS first_of_viewer,
                   greatest(o.started_at, o.earlier_end) AS piece_start
              FROM (SELECT s.started_at, s.ended_at,
                           max(s.ended_at) OVER (PARTITION BY s.user_id ORDER BY s.started_at
                                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
                      FROM webinar_sessions._audience_in_viewer_order(p_webinar_id, p_from, p_below) AS s) AS o) AS p;
$$;

-- {viewers, sessions, watched seconds, peak, peak_at, first, last}, the three times in
-- microseconds since 2000-01-01 UTC; NULL for a webinar without audience sessions.
--
-- A big webinar (50,000 sessions and more) is summed up in two shares of its viewers, split at
-- the median viewer id in the table's statistics (8000... without them: Supabase's ids are
-- random; an unlucky split costs time, never figures), by one query that PostgreSQL runs in
-- two processes at once when it has a parallel worker to spare (a Parallel Append under a
-- Gather), one share after the other when not. Half the rows each, side by side: a million
-- sessions in about 1.1 s instead of 2 s on 2 cores. The query runs by EXECUTE, which plans it
-- for its values, where the split is known, and which may run in parallel where plpgsql's own
-- SELECT ... INTO may not. Not in parallel for a signed-in user: the row-level security policy
-- calls current_user_id(), which is PARALLEL UNSAFE (they see only their own sessions anyway).
-- A smaller webinar is the one share of the same query.
--
-- The shares' pieces are disjoint within each viewer and no viewer is in both, so just after
-- an instant t, (starts up to t) - (ends up to t) viewers are present, each count a sum over
-- the two shares' sorted arrays, found by binary search (width_bucket). The peak is the
-- largest such count at a start, but not every start needs it: each share's starts are cut
-- into blocks of about sqrt(n), and in a block lo..hi no count exceeds (starts up to the
-- hi-th) - (ends up to the lo-th). Only the blocks whose bound reaches the largest count seen
-- at a block's end can hold the peak; they are cut again into blocks of about n^(1/4) the same
-- way, and only the starts of those that can still hold it are counted one by one: for a
-- million pieces of a three-hour webinar, a few hundred starts. The arrays stay in a record
-- (flat) and reach the query once each, as constants of its plan.
CREATE FUNCTION webinar_sessions._summary_for(p_webinar_id uuid)
RETURNS double precision[]
LANGUAGE plpgsql STABLE
-- The sorts of a big webinar (a million sessions) stay in memory. No JIT: the peak's query
-- guesses a thousand rows per generate_series, and PostgreSQL spent 1.5 s compiling what runs
-- in 30 ms.
SET work_mem = '256MB'
SET jit = off
AS $$
DECLARE
    v_split uuid;
    -- A record, not array variables: plpgsql expands an array variable, and each binary search
    -- below would then flatten it again (a copy of some MB); a record's fields stay flat.
    v_totals record;
    v_peak bigint;
    v_peak_at timestamptz;
BEGIN
    IF (SELECT count(*) >= 50000
          FROM ((SELECT FROM webinar_sessions.webinar_user_sessions AS c
                  WHERE c.webinar_id = p_webinar_id AND c.exited_at IS NOT NULL LIMIT 50000)
                UNION ALL
                (SELECT FROM webinar_sessions.webinar_user_sessions AS o
                  WHERE o.webinar_id = p_webinar_id AND o.exited_at IS NULL LIMIT 50000)) AS c) THEN
        SELECT coalesce((st.histogram_bounds::text::uuid[])[pg_catalog.cardinality(st.histogram_bounds::text::uuid[]) / 2 + 1],
                        '80000000-0000-0000-0000-000000000000')
          INTO v_split
          FROM pg_catalog.pg_stats AS st
         WHERE st.schemaname = 'webinar_sessions' AND st.tablename = 'webinar_user_sessions'
           AND st.attname = 'user_id';
        v_split := coalesce(v_split, '80000000-0000-0000-0000-000000000000');
    END IF;
    -- At the same instant departures count before arrivals (one leaving as another arrives is
    -- not two at once): the ends up to and including the start. Blocks of about sqrt(n)
    -- starts, then, in the blocks that can hold the peak, blocks of about n^(1/4).
    EXECUTE $q$
    SELECT sum(s.viewers)::bigint AS viewers, sum(s.sessions)::bigint AS sessions,
             sum(s.watched) AS watched, min(s.first_at) AS first_at, max(s.last_at) AS last_at,
             coalesce(max(s.starts) FILTER (WHERE s.share = 0), '{}') AS s0,
             coalesce(max(s.ends) FILTER (WHERE s.share = 0), '{}') AS e0,
             coalesce(max(s.starts) FILTER (WHERE s.share = 1), '{}') AS s1,
             coalesce(max(s.ends) FILTER (WHERE s.share = 1), '{}') AS e1
              FROM (SELECT 0 AS share, a.* FROM webinar_sessions._summary_share($1, NULL, $2) AS a
              UNION ALL
              SELECT 1, b.* FROM webinar_sessions._summary_share($1, $2, NULL) AS b
               WHERE $2 IS NOT NULL) AS s
    $q$
      INTO v_totals
      USING p_webinar_id, v_split;
    IF coalesce(v_totals.sessions, 0) = 0 THEN
        RETURN NULL;
    END IF;
    -- (The arrays mentioned once, each a constant of a custom plan, and read from the CTE's row
    -- from then on: every mention of v_totals.s0 would be a copy of its own.)
    WITH arrays AS (
        SELECT v_totals.s0 AS s0, v_totals.e0 AS e0, v_totals.s1 AS s1, v_totals.e1 AS e1
    ), blocks AS (
        SELECT x.share, g.lo, least(g.lo + x.width - 1, x.n) AS hi
          FROM arrays AS t
         CROSS JOIN LATERAL (VALUES (0, pg_catalog.cardinality(t.s0)::bigint),
                                    (1, pg_catalog.cardinality(t.s1)::bigint)) AS v(share, n)
         CROSS JOIN LATERAL (SELECT v.share, v.n, ceil(sqrt(v.n))::bigint AS width) AS x
         CROSS JOIN LATERAL pg_catalog.generate_series(1::bigint, x.n, greatest(x.width, 1)) AS g(lo)
    ), bounded AS (
        SELECT b.share, b.lo, b.hi,
               pg_catalog.width_bucket(e.hi_at, t.s0) + pg_catalog.width_bucket(e.hi_at, t.s1)
                 - pg_catalog.width_bucket(e.lo_at, t.e0) - pg_catalog.width_bucket(e.lo_at, t.e1) AS bound,
               pg_catalog.width_bucket(e.hi_at, t.s0) + pg_catalog.width_bucket(e.hi_at, t.s1)
                 - pg_catalog.width_bucket(e.hi_at, t.e0) - pg_catalog.width_bucket(e.hi_at, t.e1) AS reached
          FROM blocks AS b
         CROSS JOIN arrays AS t
         CROSS JOIN LATERAL (SELECT CASE b.share WHEN 0 THEN t.s0[b.lo] ELSE t.s1[b.lo] END AS lo_at,
                                    CASE b.share WHEN 0 THEN t.s0[b.hi] ELSE t.s1[b.hi] END AS hi_at) AS e
    ), subblocks AS (
        SELECT k.share, g.lo, least(g.lo + w.width - 1, k.hi) AS hi
          FROM bounded AS k
         CROSS JOIN LATERAL (SELECT ceil(sqrt(k.hi - k.lo + 1))::bigint AS width) AS w
         CROSS JOIN LATERAL pg_catalog.generate_series(k.lo, k.hi, w.width) AS g(lo)
         WHERE k.bound >= (SELECT max(x.reached) FROM bounded AS x)
    ), subbounded AS (
        SELECT b.share, b.lo, b.hi,
               pg_catalog.width_bucket(e.hi_at, t.s0) + pg_catalog.width_bucket(e.hi_at, t.s1)
                 - pg_catalog.width_bucket(e.lo_at, t.e0) - pg_catalog.width_bucket(e.lo_at, t.e1) AS bound,
               pg_catalog.width_bucket(e.hi_at, t.s0) + pg_catalog.width_bucket(e.hi_at, t.s1)
                 - pg_catalog.width_bucket(e.hi_at, t.e0) - pg_catalog.width_bucket(e.hi_at, t.e1) AS reached
          FROM subblocks AS b
         CROSS JOIN arrays AS t
         CROSS JOIN LATERAL (SELECT CASE b.share WHEN 0 THEN t.s0[b.lo] ELSE t.s1[b.lo] END AS lo_at,
                                    CASE b.share WHEN 0 THEN t.s0[b.hi] ELSE t.s1[b.hi] END AS hi_at) AS e
    )
    SELECT pg_catalog.width_bucket(c.at, t.s0) + pg_catalog.width_bucket(c.at, t.s1)
             - pg_catalog.width_bucket(c.at, t.e0) - pg_catalog.width_bucket(c.at, t.e1),
           c.at
      INTO v_peak, v_peak_at
      FROM subbounded AS k
     CROSS JOIN arrays AS t
     CROSS JOIN LATERAL pg_catalog.generate_series(k.lo, k.hi) AS i
     CROSS JOIN LATERAL (SELECT CASE k.share WHEN 0 THEN t.s0[i] ELSE t.s1[i] END AS at) AS c
     WHERE k.bound >= greatest((SELECT max(x.reached) FROM bounded AS x),
                               (SELECT max(x.reached) FROM subbounded AS x))
     ORDER BY 1 DESC, 2
     LIMIT 1;
    RETURN ARRAY[
        v_totals.viewers, v_totals.sessions, coalesce(extract(epoch FROM v_totals.watched), 0), coalesce(v_peak, 0),
        CASE WHEN v_peak > 0 THEN webinar_sessions._micros(v_peak_at) END,
        webinar_sessions._micros(v_totals.first_at), webinar_sessions._micros(v_totals.last_at)
    ]::double precision[];
END
$$;

-- A webinar's presence: each viewer's stretches (overlapping and touching sessions merged),
-- as 32-byte records (viewer, start, end; big-endian microseconds since 2000) sorted by
-- viewer and start. The same bytes the Rust build's _presence_of writes.
CREATE FUNCTION webinar_sessions._presence_for(p_webinar_id uuid)
RETURNS bytea
LANGUAGE plpgsql STABLE
SET work_mem = '256MB'
AS $$
DECLARE
    v_presence bytea;
BEGIN
    WITH ordered AS (
        SELECT s.user_id, s.started_at, s.ended_at,
               max(s.ended_at) OVER (PARTITION BY s.user_id ORDER BY s.started_at
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
          FROM webinar_sessions._audience_in_viewer_order(p_webinar_id) AS s
    ), numbered AS (
        SELECT o.user_id, o.started_at, o.ended_at,
               count(*) FILTER (WHERE o.earlier_end IS NULL OR o.started_at > o.earlier_end)
                   OVER (PARTITION BY o.user_id ORDER BY o.started_at ROWS UNBOUNDED PRECEDING) AS stretch
          FROM ordered AS o
    ), stretches AS (
        SELECT n.user_id, min(n.started_at) AS started_at, max(n.ended_at) AS ended_at
          FROM numbered AS n
         GROUP BY n.user_id, n.stretch
    )
    -- (Every time is finite: the table's wus_times_finite.)
    SELECT string_agg(pg_catalog.uuid_send(x.user_id)
                      || pg_catalog.int8send(webinar_sessions._micros(x.started_at))
                      || pg_catalog.int8send(webinar_sessions._micros(x.ended_at)),
                      ''::bytea ORDER BY x.user_id, x.started_at)
      INTO v_presence
      FROM stretches AS x;
    RETURN v_presence;
END
$$;

-- The records of a presence value, in order.
CREATE FUNCTION webinar_sessions._presence_rows(p_presence bytea)
RETURNS TABLE (at bigint, user_id uuid, started bigint, ended bigint)
LANGUAGE plpgsql IMMUTABLE STRICT
AS $$
BEGIN
    IF pg_catalog.length(p_presence) % 32 <> 0 THEN
        RAISE EXCEPTION 'not a presence value: % bytes', pg_catalog.length(p_presence) USING ERRCODE = 'internal_error';
    END IF;
    RETURN QUERY
        SELECT k,
               pg_catalog.encode(pg_catalog.substr(p_presence, 32 * k::integer + 1, 16), 'hex')::uuid,
               ('x' || pg_catalog.encode(pg_catalog.substr(p_presence, 32 * k::integer + 17, 8), 'hex'))::bit(64)::bigint,
               ('x' || pg_catalog.encode(pg_catalog.substr(p_presence, 32 * k::integer + 25, 8), 'hex'))::bit(64)::bigint
          FROM pg_catalog.generate_series(0::bigint, pg_catalog.length(p_presence) / 32 - 1) AS k
         ORDER BY k;
END
$$;

CREATE FUNCTION webinar_sessions._timestamp_of(p_micros bigint)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT timestamptz '2000-01-01 00:00:00+00' + (p_micros::text || ' microseconds')::interval;
$$;

-- The first entry and the last sign of life of a presence; no row when it is empty.
CREATE FUNCTION webinar_sessions._presence_bounds(presence bytea)
RETURNS TABLE (first_at timestamptz, last_at timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$
    SELECT webinar_sessions._timestamp_of(min(r.started)), webinar_sessions._timestamp_of(max(r.ended))
      FROM webinar_sessions._presence_rows(presence) AS r
    HAVING count(*) > 0;
$$;

-- Distinct viewers at each point of the grid origin + k * step, k = 0 .. points - 1: with
-- instant, those present at that instant; otherwise those present at any time in
-- [point, point + step). A stretch [s, e) covers the points from ceil (instant) or floor
-- ((s - origin) / step) to ceil((e - origin) / step) - 1, less those the viewer's previous
-- stretch covered; the counts are a running sum of +1 / -1 at the ends of each run.
CREATE FUNCTION webinar_sessions._presence_grid(
    presence bytea, origin timestamptz, step interval, points bigint, instant boolean)
RETURNS TABLE (k bigint, viewers bigint)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$
#variable_conflict use_column
DECLARE
    v_step numeric;
    v_origin bigint;
BEGIN
    IF extract(year FROM step) <> 0 OR extract(month FROM step) <> 0 THEN
        RAISE EXCEPTION 'bucket must be given in days or smaller units' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_step := extract(epoch FROM step) * 1000000;
    IF v_step > 9223372036854775807 OR v_step < -9223372036854775808 THEN
        RAISE EXCEPTION 'bucket % is too large', step USING ERRCODE = 'invalid_parameter_value';
    ELSIF v_step <= 0 THEN
        RAISE EXCEPTION 'bucket must be positive' USING ERRCODE = 'invalid_parameter_value';
    ELSIF points NOT BETWEEN 0 AND 100000 THEN
        RAISE EXCEPTION 'a grid of % points; at most 100000 are allowed', points USING ERRCODE = 'invalid_parameter_value';
    ELSIF NOT pg_catalog.isfinite(origin) THEN
        RAISE EXCEPTION 'the grid''s origin must be a finite time' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_origin := webinar_sessions._micros(origin);
    RETURN QUERY
    WITH spans AS (
        SELECT r.at, r.user_id, r.started - v_origin AS s, r.ended - v_origin AS e, v_step::bigint AS q
          FROM webinar_sessions._presence_rows(presence) AS r
         WHERE r.ended > r.started
    ), covered AS (
        SELECT x.at, x.user_id,
               greatest(CASE WHEN instant THEN x.s / x.q + (x.s % x.q > 0)::integer
                             ELSE x.s / x.q - (x.s % x.q < 0)::integer END, 0) AS first_point,
               least(x.e / x.q + (x.e % x.q > 0)::integer, points) - 1 AS last_point
          FROM spans AS x
    ), runs AS (
        SELECT greatest(c.first_point,
                        coalesce(max(c.last_point) OVER (PARTITION BY c.user_id ORDER BY c.at
                                                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + 1, 0)) AS first_point,
               c.last_point
          FROM covered AS c
    ), deltas AS (
        SELECT d.point, sum(d.delta) AS delta
          FROM runs AS u
         CROSS JOIN LATERAL (VALUES (u.first_point, 1), (u.last_point + 1, -1)) AS d(point, delta)
         WHERE u.first_point <= u.last_point
         GROUP BY d.point
    )
    SELECT g.point, (sum(coalesce(d.delta, 0)) OVER (ORDER BY g.point))::bigint
      FROM pg_catalog.generate_series(0::bigint, points - 1) AS g(point)
      LEFT JOIN deltas AS d ON d.point = g.point
     ORDER BY g.point;
END
$$;

-- Per viewer, the time present inside [window_start, window_end), in seconds, every viewer
-- of the presence included: most time first, then by viewer id.
CREATE FUNCTION webinar_sessions._presence_overlap(
    presence bytea, window_start timestamptz, window_end timestamptz)
RETURNS TABLE (user_id uuid, seconds double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$
    SELECT w.user_id, w.micros::double precision / 1e6::double precision
      FROM (SELECT r.user_id,
                   sum(greatest(least(r.ended, b.to_micros) - greatest(r.started, b.from_micros), 0)) AS micros
              FROM webinar_sessions._presence_rows(presence) AS r,
                   (SELECT CASE WHEN window_start = '-infinity' THEN -9223372036854775808
                                WHEN window_start = 'infinity' THEN 9223372036854775807
                                ELSE webinar_sessions._micros(window_start) END AS from_micros,
                           CASE WHEN window_end = '-infinity' THEN -9223372036854775808
                                WHEN window_end = 'infinity' THEN 9223372036854775807
                                ELSE webinar_sessions._micros(window_end) END AS to_micros) AS b
             GROUP BY r.user_id) AS w
     ORDER BY w.micros DESC, w.user_id;
$$;
