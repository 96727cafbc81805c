//! Argument checks shared by every entry point. A failed check raises before anything is
//! written: NULL arguments give 22004, malformed ones 22023, and every message names the
//! argument.

use crate::error::raise;
use crate::identity::{acting_user, is_nil, quote, truncate};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::{ERRCODE_INVALID_PARAMETER_VALUE, ERRCODE_NULL_VALUE_NOT_ALLOWED};
use pgrx::Uuid;

/// The longest client session id accepted, in characters.
pub const MAX_SESSION_ID_CHARS: usize = 128;
/// The most sessions one `heartbeat_batch` call may carry.
pub const MAX_BATCH: usize = 10_000;

fn check_id(webinar_id: Option<Uuid>, name: &str) -> Uuid {
    match webinar_id {
        None => raise(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{name} must not be null"),
        ),
        Some(id) if is_nil(&id) => raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must not be the nil uuid"),
        ),
        Some(id) => id,
    }
}

/// Why a session id is unacceptable, if it is.
pub fn session_id_problem(session_id: &str) -> Option<String> {
    if session_id.is_empty() {
        return Some("must not be empty".into());
    }
    let chars = session_id.chars().count();
    if chars > MAX_SESSION_ID_CHARS {
        return Some(format!(
            "is {chars} characters long; at most {MAX_SESSION_ID_CHARS} are allowed"
        ));
    }
    session_id.chars().position(char::is_control).map(|at| {
        let c = session_id.chars().nth(at).unwrap_or_default();
        format!(
            "must not contain control characters (U+{:04X} at character {})",
            c as u32,
            at + 1
        )
    })
}

fn check_session_id<'a>(session_id: Option<&'a str>, name: &str) -> &'a str {
    let Some(session_id) = session_id else {
        raise(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{name} must not be null"),
        );
    };
    if let Some(problem) = session_id_problem(session_id) {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{name} {problem} (got {})",
                quote(&truncate(session_id, 40))
            ),
        );
    }
    session_id
}

/// Checks the arguments of enter / heartbeat / leave and returns the user the call acts for.
/// One call does both so that the hot path crosses into Rust once.
#[pg_extern(stable, parallel_safe, name = "_checked_user")]
pub fn checked_user(
    webinar_id: Option<Uuid>,
    session_id: Option<&str>,
    user_id: Option<Uuid>,
) -> Uuid {
    check_id(webinar_id, "webinar_id");
    check_session_id(session_id, "session_id");
    acting_user(user_id)
}

/// Checks the arguments of `heartbeat_batch`: three arrays of the same length, at most
/// [`MAX_BATCH`] long, with every element valid.
#[pg_extern(immutable, parallel_safe, name = "_check_batch")]
fn check_batch(
    webinar_ids: Option<Array<Uuid>>,
    session_ids: Option<Array<&str>>,
    user_ids: Option<Array<Uuid>>,
) {
    let null = |name: &str| -> ! {
        raise(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{name} must not be null"),
        )
    };
    let webinar_ids = webinar_ids.unwrap_or_else(|| null("webinar_ids"));
    let session_ids = session_ids.unwrap_or_else(|| null("session_ids"));
    let user_ids = user_ids.unwrap_or_else(|| null("user_ids"));

    let lengths = [webinar_ids.len(), session_ids.len(), user_ids.len()];
    if lengths.iter().any(|&n| n != lengths[0]) {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "webinar_ids, session_ids and user_ids must have the same length (got {}, {} and {})",
                lengths[0], lengths[1], lengths[2]
            ),
        );
    }
    if lengths[0] > MAX_BATCH {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "webinar_ids holds {} sessions; one batch takes at most {MAX_BATCH}",
                lengths[0]
            ),
        );
    }
    for (i, webinar_id) in webinar_ids.iter().enumerate() {
        check_id(webinar_id, &format!("webinar_ids[{}]", i + 1));
    }
    for (i, session_id) in session_ids.iter().enumerate() {
        check_session_id(session_id, &format!("session_ids[{}]", i + 1));
    }
    for (i, user_id) in user_ids.iter().enumerate() {
        check_id(user_id, &format!("user_ids[{}]", i + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked_by_characters_not_bytes() {
        assert_eq!(session_id_problem("tab-1"), None);
        assert_eq!(session_id_problem(&"é".repeat(128)), None);
        assert!(session_id_problem(&"é".repeat(129))
            .unwrap()
            .contains("129 characters"));
        assert!(session_id_problem("").unwrap().contains("empty"));
        assert!(session_id_problem("a\nb")
            .unwrap()
            .contains("U+000A at character 2"));
        assert!(session_id_problem("a\u{85}").unwrap().contains("U+0085"));
        assert_eq!(session_id_problem("'; drop table x; --"), None);
    }
}
