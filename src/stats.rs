//! The per-webinar summary behind `webinar_sessions.webinar_stats`, as an aggregate.
//!
//! The same figures can be computed in SQL with window functions (the `presence` view does
//! it per viewer), but over a webinar with a million session rows that takes several sorts
//! and window passes: about 10 s on a 2-core machine. Here each row is appended to a vector
//! and the finalizer sorts it once in Rust: viewer by viewer it merges the sessions into
//! stretches of presence (overlapping and touching sessions count once), then sweeps the
//! stretches' edges in time order to find the peak of concurrent distinct viewers.

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

pub fn summarize(mut spans: Vec<Span>) -> Option<Summary> {
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut summary = Summary {
        viewers: 0,
        sessions: spans.len() as i64,
        watched_micros: 0,
        peak: 0,
        peak_at: None,
        first: i64::MAX,
        last: i64::MIN,
    };
    // Edges of every viewer's stretches: (time, +1 | -1).
    let mut edges: Vec<(i64, i32)> = Vec::with_capacity(spans.len());
    let mut stretch: Option<Span> = None;
    fn close(stretch: Span, edges: &mut Vec<(i64, i32)>, summary: &mut Summary) {
        let (_, start, end) = stretch;
        summary.watched_micros += end - start;
        edges.push((start, 1));
        edges.push((end, -1));
    }
    for (user, start, end) in spans {
        summary.first = summary.first.min(start);
        summary.last = summary.last.max(end);
        match stretch {
            Some((current, from, to)) if current == user && start <= to => {
                stretch = Some((current, from, to.max(end)));
            }
            previous => {
                if let Some(done) = previous {
                    close(done, &mut edges, &mut summary);
                }
                if previous.is_none_or(|(current, _, _)| current != user) {
                    summary.viewers += 1;
                }
                stretch = Some((user, start, end));
            }
        }
    }
    if let Some(done) = stretch {
        close(done, &mut edges, &mut summary);
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

extension_sql!(
    r#"
CREATE AGGREGATE webinar_sessions._presence_summary(uuid, timestamptz, timestamptz) (
    SFUNC = webinar_sessions._presence_summary_add,
    STYPE = internal,
    FINALFUNC = webinar_sessions._presence_summary_final
);
"#,
    name = "presence_summary_aggregate",
    requires = [presence_summary_add, presence_summary_final]
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
    fn nothing_proved_means_no_peak() {
        let summary = summarize(vec![span(1, 7, 7)]).unwrap();
        assert_eq!(
            (summary.peak, summary.peak_at, summary.watched_micros),
            (0, None, 0)
        );
        assert_eq!(summarize(vec![]), None);
    }
}
