//! Who is calling, and may they act for the user they name?
//!
//! PostgREST runs each request as `SET LOCAL ROLE <role>` plus
//! `set_config('request.jwt.claims', '<json>', true)`. The caller's user id is the `sub`
//! claim, which is what Supabase's `auth.uid()` returns; it is read here directly so the
//! extension does not depend on an `auth` schema (a plain Postgres has none).
//!
//! The role that may act for other users is decided from real role membership, never from
//! the `role` claim: any signed-in user can write whatever JSON they like into
//! `request.jwt.claims`, but nobody can `SET ROLE` to a role they are not a member of.

use crate::compat;
use crate::error::{raise, Error};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::{ERRCODE_INSUFFICIENT_PRIVILEGE, ERRCODE_INVALID_PARAMETER_VALUE};
use pgrx::Uuid;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::ffi::CStr;

/// What the request's claims say about the caller.
#[derive(Debug, PartialEq)]
pub enum Claimed {
    /// No claims at all, or claims without a `sub` (for example a service-role key).
    Nobody,
    /// A `sub` that is a valid, non-nil uuid.
    User(Uuid),
    /// Claims that are present but unusable; the text says why.
    Invalid(String),
}

/// Reads a GUC as text; `None` when it is unset or empty (PostgreSQL leaves a
/// transaction-local placeholder behind as an empty string after the transaction ends).
fn setting(name: &CStr) -> Option<String> {
    let value = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    let text = unsafe { CStr::from_ptr(value) }
        .to_string_lossy()
        .into_owned();
    (!text.trim().is_empty()).then_some(text)
}

/// The caller according to `request.jwt.claims` (or, for PostgREST before v9,
/// `request.jwt.claim.sub`).
pub fn claimed_caller() -> Claimed {
    if let Some(json) = setting(c"request.jwt.claims") {
        return parse_claims(&json);
    }
    match setting(c"request.jwt.claim.sub") {
        Some(sub) => parse_sub(&sub),
        None => Claimed::Nobody,
    }
}

pub fn parse_claims(json: &str) -> Claimed {
    // Read as raw values, not as serde_json::Value: a number is then checked to be well
    // formed but never converted, so that one beyond f64 (1e400, which PostgreSQL's json, and
    // so the SQL edition, keeps as written) is no reason to refuse the caller. Of duplicate
    // keys the last counts, as in PostgreSQL's json.
    let object: HashMap<String, Box<RawValue>> = match serde_json::from_str(json) {
        Ok(object) => object,
        // Not the parser's own words: the SQL edition (hosted/) must say the same.
        Err(_) if serde_json::from_str::<IgnoredAny>(json).is_ok() => {
            return Claimed::Invalid("request.jwt.claims is not a JSON object".into());
        }
        Err(_) => return Claimed::Invalid("request.jwt.claims is not valid JSON".into()),
    };
    let Some(sub) = object.get("sub") else {
        return Claimed::Nobody;
    };
    match sub.get().as_bytes().first() {
        Some(b'n') => Claimed::Nobody, // null
        Some(b'"') => match serde_json::from_str::<String>(sub.get()) {
            Ok(sub) => parse_sub(&sub),
            Err(_) => Claimed::Invalid("request.jwt.claims is not valid JSON".into()),
        },
        _ => Claimed::Invalid("the sub claim is not a string".into()),
    }
}

fn parse_sub(sub: &str) -> Claimed {
    match parse_uuid(sub) {
        Some(id) if !is_nil(&id) => Claimed::User(id),
        Some(_) => Claimed::Invalid("the sub claim is the nil uuid".into()),
        None => Claimed::Invalid(format!(
            "the sub claim {} is not a uuid",
            quote(&truncate(sub, 64))
        )),
    }
}

/// Parses the two spellings a JWT `sub` takes: `8-4-4-4-12` hex digits with hyphens, or 32
/// hex digits without.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    let bytes = text.as_bytes();
    let hex: Vec<u8> = match bytes.len() {
        36 => {
            if [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
                return None;
            }
            bytes.iter().copied().filter(|&b| b != b'-').collect()
        }
        32 => bytes.to_vec(),
        _ => return None,
    };
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        out[i] = (high * 16 + low) as u8;
    }
    Some(Uuid::from_bytes(out))
}

pub fn is_nil(id: &Uuid) -> bool {
    id.as_bytes().iter().all(|&b| b == 0)
}

/// `text` in double quotes for a message, with `\\`, `\"`, `\t`, `\n`, `\r` and `\u{hex}` for
/// other control characters. Like Rust's `{:?}`, but a rule the SQL edition
/// (`webinar_sessions._quote` in hosted/sql/identity.sql) repeats exactly.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// May the caller act for any user? True for superusers, the extension's owner and members
/// of `service_role`. Uses the outer user, i.e. the role chosen with `SET ROLE`, which a
/// SECURITY DEFINER function does not change.
fn caller_may_act_for_others() -> bool {
    unsafe {
        let outer = pg_sys::GetOuterUserId();
        let schema = pg_sys::get_namespace_oid(c"webinar_sessions".as_ptr(), true);
        if schema != pg_sys::InvalidOid && compat::owns_schema(schema, outer) {
            return true; // also true for superusers
        }
        let service_role = pg_sys::get_role_oid(c"service_role".as_ptr(), true);
        service_role != pg_sys::InvalidOid && pg_sys::has_privs_of_role(outer, service_role)
    }
}

/// For SQL (the report API's access check): whether the caller is service_role, a
/// superuser or the extension's owner, judged by the outer user as above.
#[pg_extern(stable, parallel_safe, name = "_caller_is_service")]
fn caller_is_service() -> bool {
    caller_may_act_for_others()
}

/// The user a call acts for: `requested` when the caller may name it, else the caller's own
/// id from the claims. Raises 42501 when there is no usable identity.
pub fn acting_user(requested: Option<Uuid>) -> Uuid {
    let claimed = claimed_caller();
    match (requested, claimed) {
        (Some(user), Claimed::User(me)) if user == me => user,
        (Some(user), _) if caller_may_act_for_others() => {
            if is_nil(&user) {
                raise(
                    ERRCODE_INVALID_PARAMETER_VALUE,
                    "user_id must not be the nil uuid",
                );
            }
            user
        }
        (Some(_), Claimed::User(_)) => Error::new(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "user_id names another user",
        )
        .hint("Only service_role may act for other users; leave user_id out to act for yourself.")
        .raise(),
        (Some(_), _) => Error::new(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "user_id may be given only by service_role or for the caller's own id",
        )
        .raise(),
        (None, Claimed::User(me)) => me,
        (None, Claimed::Nobody) => Error::new(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            "no caller identity: request.jwt.claims has no sub claim",
        )
        .hint("Sign in, or call as service_role with user_id.")
        .raise(),
        (None, Claimed::Invalid(why)) => raise(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("no caller identity: {why}"),
        ),
    }
}

/// The signed-in caller's user id (the `sub` claim), or NULL when there is none. The
/// row-level security policy compares rows against it; it never raises.
#[pg_extern(stable, parallel_safe)]
pub fn current_user_id() -> Option<Uuid> {
    match claimed_caller() {
        Claimed::User(id) => Some(id),
        Claimed::Nobody | Claimed::Invalid(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_with_a_uuid_sub_name_that_user() {
        let claims = r#"{"sub":"6f1d2c1e-0b8f-4e55-9a3e-2f1c9d7b5a10","role":"authenticated"}"#;
        let Claimed::User(id) = parse_claims(claims) else {
            panic!("expected a user")
        };
        assert_eq!(id.as_bytes()[0], 0x6f);
        assert_eq!(id.as_bytes()[15], 0x10);
    }

    #[test]
    fn unusable_claims_are_told_apart_from_missing_ones() {
        assert_eq!(parse_claims(r#"{"role":"service_role"}"#), Claimed::Nobody);
        assert_eq!(parse_claims(r#"{"sub":null}"#), Claimed::Nobody);
        // A number beyond f64 elsewhere in the claims is no reason to refuse the caller.
        assert!(matches!(
            parse_claims(r#"{"exp":1e400,"sub":"6f1d2c1e-0b8f-4e55-9a3e-2f1c9d7b5a10"}"#),
            Claimed::User(_)
        ));
        assert_eq!(
            parse_claims(r#"{"sub":1e400}"#),
            Claimed::Invalid("the sub claim is not a string".into())
        );
        for bad in [
            "{not json",
            "[]",
            r#"{"sub":42}"#,
            r#"{"sub":"alice"}"#,
            r#"{"sub":"00000000-0000-0000-0000-000000000000"}"#,
            r#"{"sub":"6f1d2c1e-0b8f-4e55-9a3e-2f1c9d7b5a1"}"#,
        ] {
            assert!(
                matches!(parse_claims(bad), Claimed::Invalid(_)),
                "{bad} should be invalid"
            );
        }
    }

    #[test]
    fn uuids_parse_in_both_spellings_only() {
        let hyphens = parse_uuid("6f1d2c1e-0b8f-4e55-9a3e-2f1c9d7b5a10").unwrap();
        let plain = parse_uuid("6F1D2C1E0B8F4E559A3E2F1C9D7B5A10").unwrap();
        assert_eq!(hyphens, plain);
        assert!(parse_uuid("6f1d2c1e0-b8f-4e55-9a3e-2f1c9d7b5a10").is_none());
        assert!(parse_uuid("zz1d2c1e-0b8f-4e55-9a3e-2f1c9d7b5a10").is_none());
        assert!(parse_uuid("").is_none());
    }

    #[test]
    fn quote_escapes_what_a_message_cannot_show() {
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("t\tn\nr\r"), r#""t\tn\nr\r""#);
        assert_eq!(quote("\u{1b}[0m\u{85}é"), r#""\u{1b}[0m\u{85}é""#);
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("héllo", 2), "hé...");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
