//! The one way the tests call the API: shaped like the request PostgREST makes for
//! `supabase.rpc(function, body)`.
//!
//! One transaction; the role switched with `set_config('role', ..., true)` and the JWT claims
//! set transaction-locally (both as PostgREST does); the JSON body turned into named arguments
//! through `json_to_record`, with each argument's SQL type, so that JSON `null` is SQL NULL,
//! JSON arrays are SQL arrays and a bad value fails in its cast, as it does behind PostgREST.
//! A failed request is rolled back; a commit can fail too (a buffered heartbeat overtaken by
//! a sweep: 40001), and PostgREST then answers with that error.

use postgres::error::DbError;
use postgres::{Client, Transaction};
use serde_json::Value;

/// The SQL type of each argument name of the API (PostgREST reads them from its schema
/// cache; `tests/api.rs` checks this list against the catalog).
pub const ARGUMENT_TYPES: &[(&str, &str)] = &[
    ("webinar_id", "uuid"),
    ("user_id", "uuid"),
    ("session_id", "text"),
    ("webinar_ids", "uuid[]"),
    ("user_ids", "uuid[]"),
    ("session_ids", "text[]"),
    ("schedule", "text"),
    ("stale_after", "interval"),
    ("bucket", "interval"),
    ("starts_at", "timestamptz"),
    ("ends_at", "timestamptz"),
    ("min_ratio", "double precision"),
    ("shard_count", "integer"),
];

fn argument_type(name: &str) -> &'static str {
    ARGUMENT_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no SQL type known for argument {name}"))
}

/// What PostgREST turns a JSON body into: the `json_to_record` column list (each argument
/// with its SQL type), the named arguments of the call, and the body itself.
struct Body {
    columns: String,
    named: String,
    json: String,
}

fn body(args: &[(&str, Value)]) -> Body {
    let columns: Vec<String> = args
        .iter()
        .map(|(name, _)| format!("{name} {}", argument_type(name)))
        .collect();
    let named: Vec<String> = args
        .iter()
        .map(|(name, _)| format!("{name} := _.{name}"))
        .collect();
    let json = Value::Object(
        args.iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect(),
    )
    .to_string();
    Body {
        columns: columns.join(", "),
        named: named.join(", "),
        json,
    }
}

/// A request's transaction before its statement: the role switched and the claims (None: the
/// setting is not set at all) set, both transaction-locally. For tests that read tables as a
/// signed-in user would, and for [`request`].
pub fn begin_request<'c>(
    client: &'c mut Client,
    role: &str,
    claims: Option<&str>,
) -> Result<Transaction<'c>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT set_config('role', $1, true)", &[&role])?;
    if let Some(claims) = claims {
        tx.execute(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&claims],
        )?;
    }
    // On Citus, PostgREST is set up with db-pre-request = webinar_sessions_pre_request
    // (README, "Citus"); it calls that as the request's role, one of its three.
    if crate::cluster::citus() && ["anon", "authenticated", "service_role"].contains(&role) {
        tx.execute("SELECT public.webinar_sessions_pre_request()", &[])?;
    }
    Ok(tx)
}

/// One request: `function` called as `role` with `claims` (None: the setting is not set at
/// all) and the named arguments `args`. Returns every result row as a JSON object, or the
/// error, whatever it is (the server may have gone away).
pub fn request(
    client: &mut Client,
    role: &str,
    claims: Option<&str>,
    function: &str,
    args: &[(&str, Value)],
) -> Result<Vec<Value>, postgres::Error> {
    let body = body(args);
    let sql = if args.is_empty() {
        format!("SELECT coalesce(json_agg(r), '[]')::text FROM {function}() AS r")
    } else {
        format!(
            "SELECT coalesce(json_agg(r), '[]')::text
               FROM json_to_record($1::text::json) AS _({}),
                    LATERAL {function}({}) AS r",
            body.columns, body.named
        )
    };
    let mut tx = begin_request(client, role, claims)?;
    let outcome = (|| {
        let row = if args.is_empty() {
            tx.query_one(&sql, &[])?
        } else {
            tx.query_one(&sql, &[&body.json])?
        };
        Ok::<String, postgres::Error>(row.get(0))
    })();
    let json = match outcome {
        Ok(json) => {
            tx.commit()?;
            json
        }
        Err(e) => {
            let _ = tx.rollback();
            return Err(e);
        }
    };
    match serde_json::from_str(&json).expect("json_agg gives JSON") {
        Value::Array(rows) => Ok(rows),
        other => panic!("not an array of rows: {other}"),
    }
}

/// The database's error, for a test that expects one; panics on any other failure.
pub fn database_error(e: postgres::Error) -> Box<DbError> {
    Box::new(
        e.as_db_error()
            .cloned()
            .unwrap_or_else(|| panic!("not a database error: {e}")),
    )
}

/// Text arguments as the JSON strings supabase-js would send.
fn text_args<'a>(args: &[(&'a str, &str)]) -> Vec<(&'a str, Value)> {
    args.iter()
        .map(|(name, value)| (*name, Value::String(value.to_string())))
        .collect()
}

fn one_row(function: &str, rows: Vec<Value>) -> Value {
    let [row] = <[Value; 1]>::try_from(rows)
        .unwrap_or_else(|rows| panic!("{function} returned {} rows, not one", rows.len()));
    row
}

/// A request for a function that returns one row (enter / heartbeat / leave and friends),
/// with text arguments; the row, or the database's error.
pub fn rpc(
    client: &mut Client,
    role: &str,
    claims: Option<&str>,
    function: &str,
    args: &[(&str, &str)],
) -> Result<Value, Box<DbError>> {
    try_rpc(client, role, claims, function, args).map_err(database_error)
}

/// `rpc` for a server that may go away mid-call: every failure comes back as an error (the
/// connection's, or the database's), so that the caller can tell an acknowledged call (`Ok`:
/// committed, and the client heard so) from one whose fate it does not know.
pub fn try_rpc(
    client: &mut Client,
    role: &str,
    claims: Option<&str>,
    function: &str,
    args: &[(&str, &str)],
) -> Result<Value, postgres::Error> {
    request(client, role, claims, function, &text_args(args)).map(|rows| one_row(function, rows))
}

/// A request with a JSON body (any JSON value per argument, `null` included): every row, as a
/// JSON array, or the database's error.
pub fn rpc_rows(
    client: &mut Client,
    role: &str,
    claims: Option<&str>,
    function: &str,
    args: &[(&str, Value)],
) -> Result<Value, Box<DbError>> {
    request(client, role, claims, function, args)
        .map(Value::Array)
        .map_err(database_error)
}

/// A request with a JSON body for a function that returns one row: the row, or the database's
/// error.
pub fn rpc_json(
    client: &mut Client,
    role: &str,
    claims: Option<&str>,
    function: &str,
    args: &[(&str, Value)],
) -> Result<Value, Box<DbError>> {
    request(client, role, claims, function, args)
        .map(|rows| one_row(function, rows))
        .map_err(database_error)
}

/// A GET request for `Accept: text/csv` (`supabase.rpc(function, args, { get: true }).csv()`):
/// a READ ONLY transaction, as PostgREST opens for GET, and the CSV built by the database the
/// way PostgREST builds it: a header of the columns, then each row's record text without its
/// parentheses. Returns the body, or the error.
pub fn request_csv(
    client: &mut Client,
    role: &str,
    claims: Option<&str>,
    function: &str,
    args: &[(&str, Value)],
) -> Result<String, postgres::Error> {
    let body = body(args);
    let sql = format!(
        "SELECT coalesce((SELECT string_agg(k.key, ',')
                            FROM json_object_keys(json_agg(t) -> 0) AS k(key)), '')
                || E'\\n'
                || coalesce(string_agg(substring(t::text, 2, length(t::text) - 2), E'\\n'), '')
           FROM (SELECT r.* FROM json_to_record($1::text::json) AS _({}),
                                 LATERAL {function}({}) AS r) AS t",
        body.columns, body.named
    );
    let mut tx = begin_request(client, role, claims)?;
    tx.batch_execute("SET TRANSACTION READ ONLY")?;
    let csv: String = tx.query_one(&sql, &[&body.json])?.get(0);
    tx.commit()?;
    Ok(csv)
}
