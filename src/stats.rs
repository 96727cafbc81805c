//! A webinar's presence, merged once in Rust, and every analytics figure read from it.
//!
//! The figures can be computed in SQL with window functions (the `presence` view does it per
//! viewer), but over a webinar with a million session rows that takes several sorts and window
//! passes, and bucket counts that expand every stretch into its buckets cost viewers x
//! buckets (tens of seconds). Here the rows of a webinar are collected by an aggregate and
//! sorted once: viewer by viewer the sessions merge into stretches of presence (overlapping
//! and touching sessions count once). Then:
//! * `webinar_stats` sweeps the stretches' edges in time order for the peak of concurrent
//!   distinct viewers (`_presence_summary`);
//! * `concurrency` and `retention` count the viewers of each grid point with a difference
//!   array over the points each stretch covers (`_presence_grid`);
//! * `attendance` clips each viewer's stretches to the window (`_presence_overlap`).
//!
//! The merged stretches travel between the aggregate (`_presence_of`) and those functions as
//! a `bytea` of 32-byte records (viewer, start, end; big-endian microseconds since 2000, the
//! layout hosted/sql/stats.sql reads and writes too), sorted by viewer and start. Every cost
//! is one sort of the sessions plus a pass over the stretches and the grid.

use pgrx::prelude::*;
use pgrx::{Internal, PgMemoryContexts, Uuid};

/// One session: viewer, first and last proved moment, in microseconds since 2000-01-01.
type Span = ([u8; 16], i64, i64);

#[derive(Default)]
struct Spans(Vec<Span>);

/// What the finalizer returns, as `float8[]` positions (1-based in SQL).
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub viewers: i64,
    pub sessions: i64,
    pub watched_micros: i64,
    pub peak: i64,
    pub peak_at: Option<i64>,
    pub first: i64,
    pub last: i64,
}

/// Sorts the sessions and merges each viewer's into stretches of presence: a session starts
/// a new stretch only when it begins after every earlier session of that viewer has ended
/// (the `presence` view's rule). The result is sorted by viewer, then start.
pub fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut stretches: Vec<Span> = Vec::with_capacity(spans.len());
    for (user, start, end) in spans {
        match stretches.last_mut() {
            Some((current, _, to)) if *current == user && start <= *to => *to = (*to).max(end),
            _ => stretches.push((user, start, end)),
        }
    }
    stretches
}

pub fn summarize(spans: Vec<Span>) -> Option<Summary> {
    if spans.is_empty() {
        return None;
    }
    let sessions = spans.len() as i64;
    let stretches = merge(spans);
    let mut summary = Summary {
        viewers: 0,
        sessions,
        watched_micros: 0,
        peak: 0,
        peak_at: None,
        first: i64::MAX,
        last: i64::MIN,
    };
    // Edges of every viewer's stretches: (time, +1 | -1).
    let mut edges: Vec<(i64, i32)> = Vec::with_capacity(2 * stretches.len());
    let mut previous: Option<[u8; 16]> = None;
    for &(user, start, end) in &stretches {
        if previous != Some(user) {
            summary.viewers += 1;
            previous = Some(user);
        }
        summary.first = summary.first.min(start);
        summary.last = summary.last.max(end);
        summary.watched_micros += end - start;
        edges.push((start, 1));
        edges.push((end, -1));
    }
    // Presence is [start, end): at the same instant, departures come before arrivals.
    edges.sort_unstable();
    let mut present = 0i64;
    for (at, delta) in edges {
        present += i64::from(delta);
        if present > summary.peak {
            summary.peak = present;
            summary.peak_at = Some(at);
        }
    }
    Some(summary)
}

/// Transition function of `webinar_sessions._presence_summary(user_id, started_at, ended_at)`.
#[pg_extern(immutable, parallel_safe, name = "_presence_summary_add")]
fn presence_summary_add(
    mut state: Internal,
    user_id: Option<Uuid>,
    started_at: Option<TimestampWithTimeZone>,
    ended_at: Option<TimestampWithTimeZone>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    let mut aggregate_context = std::ptr::null_mut();
    if unsafe { pg_sys::AggCheckCallContext(fcinfo, &mut aggregate_context) } == 0 {
        error!("_presence_summary_add can only be called as part of an aggregate");
    }
    // The state must live as long as the group, not as long as this input row.
    unsafe {
        PgMemoryContexts::For(aggregate_context).switch_to(|_| {
            state.get_or_insert_default::<Spans>();
        });
    }
    if let (Some(user), Some(start), Some(end)) = (user_id, started_at, ended_at) {
        // The table allows ±infinity; presence cannot be measured from it (the SQL it
        // replaces failed with 22008 too), and the arithmetic below would overflow.
        if !start.is_finite() || !end.is_finite() {
            crate::error::Error::new(
                pgrx::PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
                "a session of this webinar has an infinite entered_at, last_heartbeat_at or exited_at",
            )
            .hint("Set the session's times to finite values.")
            .raise();
        }
        let spans = unsafe { state.get_mut::<Spans>() }.expect("state was just initialized");
        spans.0.push((
            *user.as_bytes(),
            pg_sys::TimestampTz::from(start),
            pg_sys::TimestampTz::from(end),
        ));
    }
    state
}

/// Final function: `{viewers, sessions, watched seconds, peak, peak_at, first, last}` with the
/// three times in microseconds since 2000-01-01 UTC.
#[pg_extern(immutable, parallel_safe, name = "_presence_summary_final")]
fn presence_summary_final(mut state: Internal) -> Option<Vec<Option<f64>>> {
    let spans = unsafe { state.get_mut::<Spans>() }?;
    let summary = summarize(std::mem::take(&mut spans.0))?;
    Some(vec![
        Some(summary.viewers as f64),
        Some(summary.sessions as f64),
        Some(summary.watched_micros as f64 / 1e6),
        Some(summary.peak as f64),
        summary.peak_at.map(|at| at as f64),
        Some(summary.first as f64),
        Some(summary.last as f64),
    ])
}

/// Final function of `_presence_of`: the merged stretches as 32-byte records.
#[pg_extern(immutable, parallel_safe, name = "_presence_of_final")]
fn presence_of_final(mut state: Internal) -> Option<Vec<u8>> {
    let spans = unsafe { state.get_mut::<Spans>() }?;
    let stretches = merge(std::mem::take(&mut spans.0));
    let mut bytes = Vec::with_capacity(stretches.len() * RECORD);
    for (user, start, end) in stretches {
        bytes.extend_from_slice(&user);
        bytes.extend_from_slice(&start.to_be_bytes());
        bytes.extend_from_slice(&end.to_be_bytes());
    }
    Some(bytes)
}

const RECORD: usize = 32;

fn stretches(presence: &[u8]) -> impl Iterator<Item = Span> + '_ {
    if !presence.len().is_multiple_of(RECORD) {
        error!("not a presence value: {} bytes", presence.len());
    }
    presence.chunks_exact(RECORD).map(|r| {
        let user: [u8; 16] = r[..16].try_into().unwrap();
        let start = i64::from_be_bytes(r[16..24].try_into().unwrap());
        let end = i64::from_be_bytes(r[24..32].try_into().unwrap());
        (user, start, end)
    })
}

/// The first entry and the last sign of life of a webinar's presence.
#[pg_extern(immutable, parallel_safe, strict, name = "_presence_bounds")]
fn presence_bounds(
    presence: &[u8],
) -> TableIterator<
    'static,
    (
        name!(first_at, TimestampWithTimeZone),
        name!(last_at, TimestampWithTimeZone),
    ),
> {
    let bounds = stretches(presence).fold(None, |b: Option<(i64, i64)>, (_, s, e)| {
        Some(b.map_or((s, e), |(f, l)| (f.min(s), l.max(e))))
    });
    let at = |t: i64| TimestampWithTimeZone::try_from(t).expect("a stored time");
    TableIterator::new(bounds.map(|(f, l)| (at(f), at(l))))
}

fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -(-a).div_euclid(b)
}

/// Distinct viewers at each point of the grid `origin + k * step`, k = 0 .. points - 1: with
/// `instant`, those present at that instant; otherwise those present at any time in
/// [point, point + step). A stretch [s, e) covers the points from ceil (instant) or floor
/// ((s - origin) / step) to ceil((e - origin) / step) - 1; stretches that prove no time
/// cover none. A viewer's stretches are disjoint and in order, so skipping the points the
/// previous one already covered counts each viewer once per point.
pub fn grid(
    stretches: impl Iterator<Item = Span>,
    origin: i64,
    step: i64,
    points: i64,
    instant: bool,
) -> Vec<i64> {
    let mut delta = vec![0i64; points.max(0) as usize + 1];
    let mut viewer: Option<([u8; 16], i64)> = None; // the last point counted for a viewer
    for (user, start, end) in stretches {
        if end <= start {
            continue;
        }
        let first = if instant {
            ceil_div(start - origin, step)
        } else {
            floor_div(start - origin, step)
        };
        let mut first = first.max(0);
        let last = ceil_div(end - origin, step).min(points) - 1;
        if let Some((current, counted)) = viewer {
            if current == user {
                first = first.max(counted + 1);
            }
        }
        if first > last {
            continue;
        }
        delta[first as usize] += 1;
        delta[last as usize + 1] -= 1;
        viewer = Some((user, last));
    }
    let mut present = 0;
    delta
        .iter()
        .take(points.max(0) as usize)
        .map(|d| {
            present += d;
            present
        })
        .collect()
}

/// The most points a grid may have (concurrency's and retention's 100,000 buckets).
const MAX_POINTS: i64 = 100_000;

fn grid_error(message: String) -> ! {
    crate::error::raise(
        pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
    )
}

fn micros_of(step: Interval) -> i64 {
    if step.months() != 0 {
        grid_error("bucket must be given in days or smaller units".into());
    }
    i64::from(step.days())
        .checked_mul(86_400_000_000)
        .and_then(|days| days.checked_add(step.micros()))
        .unwrap_or_else(|| grid_error(format!("bucket {step} is too large")))
}

/// `grid` for SQL: (k, viewers) for k = 0 .. points - 1.
#[pg_extern(immutable, parallel_safe, strict, name = "_presence_grid")]
fn presence_grid(
    presence: &[u8],
    origin: TimestampWithTimeZone,
    step: Interval,
    points: i64,
    instant: bool,
) -> TableIterator<'static, (name!(k, i64), name!(viewers, i64))> {
    let step = micros_of(step);
    if step <= 0 {
        grid_error("bucket must be positive".into());
    }
    if !(0..=MAX_POINTS).contains(&points) {
        grid_error(format!(
            "a grid of {points} points; at most {MAX_POINTS} are allowed"
        ));
    }
    if !origin.is_finite() {
        grid_error("the grid's origin must be a finite time".into());
    }
    let counts = grid(stretches(presence), origin.into(), step, points, instant);
    TableIterator::new(counts.into_iter().enumerate().map(|(k, n)| (k as i64, n)))
}

/// Per viewer, the time present inside [from, to): `(viewer, micros)`, every viewer of the
/// presence included, most time first, then by viewer id (uuid order is byte order).
pub fn overlap(stretches: impl Iterator<Item = Span>, from: i64, to: i64) -> Vec<([u8; 16], i64)> {
    let mut viewers: Vec<([u8; 16], i64)> = Vec::new();
    for (user, start, end) in stretches {
        let inside = (end.min(to) - start.max(from)).max(0);
        match viewers.last_mut() {
            Some((current, total)) if *current == user => *total += inside,
            _ => viewers.push((user, inside)),
        }
    }
    viewers.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    viewers
}

/// `overlap` for SQL, in seconds, in the order `attendance` promises.
#[pg_extern(immutable, parallel_safe, strict, name = "_presence_overlap")]
fn presence_overlap(
    presence: &[u8],
    window_start: TimestampWithTimeZone,
    window_end: TimestampWithTimeZone,
) -> TableIterator<'static, (name!(user_id, Uuid), name!(seconds, f64))> {
    let rows = overlap(stretches(presence), window_start.into(), window_end.into());
    TableIterator::new(
        rows.into_iter()
            .map(|(user, micros)| (Uuid::from_bytes(user), micros as f64 / 1e6)),
    )
}

extension_sql!(
    r#"
CREATE AGGREGATE webinar_sessions._presence_summary(uuid, timestamptz, timestamptz) (
    SFUNC = webinar_sessions._presence_summary_add,
    STYPE = internal,
    FINALFUNC = webinar_sessions._presence_summary_final,
    -- The final functions take the collected sessions: no two aggregates may share a state.
    FINALFUNC_MODIFY = READ_WRITE
);
-- A webinar's sessions merged into each viewer's stretches of presence, for _presence_grid,
-- _presence_overlap and _presence_bounds.
CREATE AGGREGATE webinar_sessions._presence_of(uuid, timestamptz, timestamptz) (
    SFUNC = webinar_sessions._presence_summary_add,
    STYPE = internal,
    FINALFUNC = webinar_sessions._presence_of_final,
    FINALFUNC_MODIFY = READ_WRITE
);

-- What sql/stats.sql asks of an edition: a webinar's summary, and its presence. (plpgsql, not
-- sql: the views they read are created after them, and a sql function's result would pass
-- through a tuplestore, which the presence of a big webinar, some tens of MB, would spill.)
CREATE FUNCTION webinar_sessions._summary_for(p_webinar_id uuid)
RETURNS double precision[]
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT webinar_sessions._presence_summary(s.user_id, s.started_at, s.ended_at)
              FROM webinar_sessions.audience_spans AS s
             WHERE s.webinar_id = p_webinar_id);
END
$$;

CREATE FUNCTION webinar_sessions._presence_for(p_webinar_id uuid)
RETURNS bytea
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT webinar_sessions._presence_of(s.user_id, s.started_at, s.ended_at)
              FROM webinar_sessions.audience_spans AS s
             WHERE s.webinar_id = p_webinar_id);
END
$$;
"#,
    name = "presence_summary_aggregate",
    requires = [
        presence_summary_add,
        presence_summary_final,
        presence_of_final,
        presence_grid,
        presence_overlap,
        presence_bounds
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    fn span(user: u8, start: i64, end: i64) -> Span {
        ([user; 16], start, end)
    }

    #[test]
    fn overlapping_and_touching_sessions_count_once() {
        let summary = summarize(vec![
            span(1, 0, 60),
            span(1, 30, 90),  // overlaps
            span(1, 90, 100), // touches
            span(1, 200, 210),
            span(2, 50, 55),
        ])
        .unwrap();
        assert_eq!(summary.viewers, 2);
        assert_eq!(summary.sessions, 5);
        assert_eq!(summary.watched_micros, 100 + 10 + 5);
        assert_eq!((summary.peak, summary.peak_at), (2, Some(50)));
        assert_eq!((summary.first, summary.last), (0, 210));
    }

    #[test]
    fn one_leaving_as_another_arrives_is_not_two_at_once() {
        let summary = summarize(vec![span(1, 0, 10), span(2, 10, 20), span(3, 5, 5)]).unwrap();
        assert_eq!((summary.peak, summary.peak_at), (1, Some(0)));
        assert_eq!(summary.viewers, 3);
    }

    #[test]
    fn grid_counts_each_viewer_once_per_point() {
        // Viewer 1: two stretches in bucket 1 (10..20 and 25..28), then 40..60; viewer 2:
        // exactly bucket 2 ([20, 30)); viewer 3 proves no time.
        let presence = merge(vec![
            span(1, 10, 20),
            span(1, 25, 28),
            span(1, 40, 60),
            span(2, 20, 30),
            span(3, 35, 35),
        ]);
        let buckets = grid(presence.iter().copied(), 0, 10, 7, false);
        assert_eq!(buckets, vec![0, 1, 2, 0, 1, 1, 0]);
        // At instants 0, 10, ..., 60: viewer 1 at 10, 40 and 50; viewer 2 at 20 (viewer 1
        // left at 20, presence being [start, end)); nobody at 30 (25..28 holds no instant).
        let instants = grid(presence.iter().copied(), 0, 10, 7, true);
        assert_eq!(instants, vec![0, 1, 1, 0, 1, 1, 0]);
        // A grid that starts inside a stretch and ends before the last one.
        assert_eq!(grid(presence.iter().copied(), 15, 10, 2, true), vec![1, 2]);
    }

    #[test]
    fn overlap_clips_to_the_window_and_keeps_every_viewer() {
        let presence = merge(vec![
            span(1, 0, 60),
            span(1, 30, 90),
            span(2, 50, 55),
            span(3, 5, 5),
        ]);
        assert_eq!(
            overlap(presence.into_iter(), 40, 80),
            vec![([1; 16], 40), ([2; 16], 5), ([3; 16], 0)]
        );
    }

    #[test]
    fn nothing_proved_means_no_peak() {
        let summary = summarize(vec![span(1, 7, 7)]).unwrap();
        assert_eq!(
            (summary.peak, summary.peak_at, summary.watched_micros),
            (0, None, 0)
        );
        assert_eq!(summarize(vec![]), None);
    }
}
