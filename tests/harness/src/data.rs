//! Test data: identities and JWT claims, what a call answers, and helpers that read the table.

use postgres::Client;
use serde_json::Value;

/// A deterministic uuid for test data: `n` in the last group.
pub fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// JWT claims as Supabase's auth server puts them into a token for a signed-in user.
pub fn claims_for(user: &str) -> String {
    format!(r#"{{"sub":"{user}","role":"authenticated","aud":"authenticated"}}"#)
}

/// A `webinar_sessions.session_status` as the client received it, times in microseconds
/// since 1970.
#[derive(Clone, Debug)]
pub struct SessionStatus {
    pub id: Option<String>,
    pub status: String,
    pub entered_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub exited_at: Option<i64>,
}

impl SessionStatus {
    pub fn from_json(json: &Value) -> SessionStatus {
        SessionStatus {
            id: json["id"].as_str().map(str::to_string),
            status: json["status"].as_str().expect("a status").to_string(),
            entered_at: micros(&json["entered_at"]),
            last_heartbeat_at: micros(&json["last_heartbeat_at"]),
            exited_at: micros(&json["exited_at"]),
        }
    }
}

/// The SQL expression for a timestamptz column in the microseconds [`micros`] gives.
pub fn micros_sql(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000000)::int8")
}

/// Microseconds since 1970 of a timestamptz as `to_jsonb` writes it
/// (`2024-05-01T10:00:00.123456+00:00`); None for JSON null.
pub fn micros(value: &serde_json::Value) -> Option<i64> {
    let text = value.as_str()?;
    let (date, rest) = text.split_once('T').expect("a timestamp");
    let sign_at = rest.rfind(['+', '-']).expect("a UTC offset");
    let (time, offset) = rest.split_at(sign_at);
    let number = |s: &str| s.parse::<i64>().unwrap();
    let ymd: Vec<i64> = date.split('-').map(number).collect();
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let hms: Vec<i64> = hms.split(':').map(number).collect();
    let fraction = if fraction.is_empty() {
        0
    } else {
        number(&format!("{fraction:0<6}"))
    };
    let mut offset_parts = offset[1..].split(':').map(number);
    let offset_s = offset_parts.next().unwrap() * 3600 + offset_parts.next().unwrap_or(0) * 60;
    let offset_s = if offset.starts_with('-') {
        -offset_s
    } else {
        offset_s
    };
    // Days from 1970-01-01 to the civil date (H. Hinnant's algorithm).
    let (y, m, d) = (ymd[0], ymd[1], ymd[2]);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let seconds = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2] - offset_s;
    Some(seconds * 1_000_000 + fraction)
}

/// Writes buffered heartbeats to the table (a no-op in direct mode), so that what a test reads
/// from the table is what the API answered.
pub fn settle(client: &mut Client) {
    client
        .execute("SELECT webinar_sessions.flush_heartbeats()", &[])
        .expect("flush_heartbeats");
}

/// A session silent for 30 minutes, which any sweep closes (tests of the worker).
pub const STALE_ROW: &str = "INSERT INTO webinar_sessions.webinar_user_sessions
        (webinar_id, user_id, session_id, entered_at, last_heartbeat_at)
    VALUES ('00000000-0000-4000-8000-000000000064', '00000000-0000-4000-8000-000000000001',
            'stale', now() - interval '1 hour', now() - interval '30 min')";

/// Whether the row that `STALE_ROW` inserted has been swept.
pub fn stale_row_swept(client: &mut Client) -> bool {
    swept(client, "stale")
}

/// Whether every session with this client session id has been swept (false when none exists).
pub fn swept(client: &mut Client, session_id: &str) -> bool {
    client
        .query_one(
            "SELECT coalesce(bool_and(exit_reason = 'swept'), false)
               FROM webinar_sessions.webinar_user_sessions WHERE session_id = $1",
            &[&session_id],
        )
        .unwrap()
        .get(0)
}

/// The full contents of the session table, in a stable order: to show that a failed call
/// wrote nothing.
pub fn table_fingerprint(client: &mut Client) -> String {
    client
        .query_one(
            "SELECT coalesce(md5(string_agg(s::text, '|' ORDER BY s.id)), 'empty')
               FROM webinar_sessions.webinar_user_sessions AS s",
            &[],
        )
        .unwrap()
        .get(0)
}

/// The query for the pid of the extension's background worker (the sweeper).
pub const WORKER_PID: &str =
    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webinar_sessions sweeper'";

/// The pid of the extension's background worker (the sweeper), if it runs.
pub fn worker_pid(client: &mut Client) -> Option<i32> {
    client
        .query_opt(WORKER_PID, &[])
        .unwrap()
        .map(|row| row.get(0))
}

/// One column of `webinar_sessions.buffer_stats`, e.g. `buffered_heartbeats` or `used`.
pub fn buffer_stat(client: &mut Client, column: &str) -> i64 {
    client
        .query_one(
            &format!("SELECT {column} FROM webinar_sessions.buffer_stats"),
            &[],
        )
        .unwrap()
        .get(0)
}

/// The stored last_heartbeat_at of the row `id` (a JSON string, as the API answers it), in the
/// JSON text form the API answers with.
pub fn stored_heartbeat(client: &mut Client, id: &Value) -> Option<String> {
    client
        .query_one(
            "SELECT to_jsonb(last_heartbeat_at) #>> '{}'
               FROM webinar_sessions.webinar_user_sessions WHERE id = $1::text::uuid",
            &[&id.as_str().expect("a row id")],
        )
        .unwrap()
        .get(0)
}
