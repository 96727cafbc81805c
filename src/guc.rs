//! Settings (GUCs). Every interval is an integer number of seconds with a unit, so
//! `SET webinar_sessions.stale_after = '5min'` and `= 300` mean the same.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// How often clients should heartbeat; returned to them in every `session_status`.
pub static HEARTBEAT_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(120);
/// A session with no sign of life for this long is stale and will be swept.
pub static STALE_AFTER: GucSetting<i32> = GucSetting::<i32>::new(300);
/// How often the worker sweeps.
pub static SWEEP_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(600);
/// Whether the worker sweeps at all.
pub static SWEEPER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// The database the worker connects to.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

const ONE_DAY_S: i32 = 86_400;

pub fn register() {
    GucRegistry::define_int_guc(
        c"webinar_sessions.heartbeat_interval",
        c"How often clients should send a heartbeat.",
        c"Returned to clients as heartbeat_interval_s by enter_webinar and heartbeat, so raising it slows every client down without a new client release.",
        &HEARTBEAT_INTERVAL,
        1,
        ONE_DAY_S,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"webinar_sessions.stale_after",
        c"How long a session may go without a sign of life before a sweep closes it.",
        c"A sign of life is the last heartbeat or, before the first one, the entry. Keep it at least twice heartbeat_interval.",
        &STALE_AFTER,
        1,
        30 * ONE_DAY_S,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"webinar_sessions.sweep_interval",
        c"How often the background worker sweeps stale sessions.",
        c"",
        &SWEEP_INTERVAL,
        1,
        ONE_DAY_S,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"webinar_sessions.sweeper_enabled",
        c"Whether the background worker sweeps stale sessions.",
        c"When off, the worker stays idle until the setting is turned on and the configuration reloaded.",
        &SWEEPER_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"webinar_sessions.database",
        c"The database in which the background worker sweeps.",
        c"The extension must be installed there; the worker waits until it is.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    // Reject misspelt settings such as webinar_sessions.stale_aftr.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"webinar_sessions".as_ptr()) };
}

pub fn database() -> String {
    DATABASE
        .get()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".to_owned())
}
