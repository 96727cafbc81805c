//! Settings (GUCs). Every interval is an integer number of seconds with a unit, so
//! `SET webinar_sessions.stale_after = '5min'` and `= 300` mean the same.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_guard, pg_sys};
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

/// How often the worker writes buffered heartbeats to the table.
pub static FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);
/// How many sessions the heartbeat buffer holds.
pub static BUFFER_CAPACITY: GucSetting<i32> = GucSetting::<i32>::new(100_000);

const ONE_DAY_S: i32 = 86_400;

/// `webinar_sessions.heartbeat_mode`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeartbeatMode {
    Direct = 0,
    Buffered = 1,
}

// The enum setting is defined through PostgreSQL's C API rather than pgrx's GucRegistry:
// its default depends on whether the library is preloaded, and asking for `buffered` where
// it cannot work deserves a NOTICE from a check hook.
static mut HEARTBEAT_MODE: std::ffi::c_int = HeartbeatMode::Direct as _;
static mut HEARTBEAT_MODES: [pg_sys::config_enum_entry; 3] = [
    pg_sys::config_enum_entry {
        name: c"direct".as_ptr(),
        val: HeartbeatMode::Direct as _,
        hidden: false,
    },
    pg_sys::config_enum_entry {
        name: c"buffered".as_ptr(),
        val: HeartbeatMode::Buffered as _,
        hidden: false,
    },
    pg_sys::config_enum_entry {
        name: std::ptr::null(),
        val: 0,
        hidden: false,
    },
];

pub fn heartbeat_mode() -> HeartbeatMode {
    if unsafe { HEARTBEAT_MODE } == HeartbeatMode::Buffered as std::ffi::c_int {
        HeartbeatMode::Buffered
    } else {
        HeartbeatMode::Direct
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_heartbeat_mode(
    newval: *mut std::ffi::c_int,
    _extra: *mut *mut std::ffi::c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    let preloaded = PRELOADED.load(std::sync::atomic::Ordering::Relaxed);
    if unsafe { *newval } == HeartbeatMode::Buffered as std::ffi::c_int && !preloaded {
        // Without the buffer the setting says what heartbeats really do: direct.
        unsafe { *newval = HeartbeatMode::Direct as std::ffi::c_int };
        if source >= pg_sys::GucSource::PGC_S_DATABASE {
            pgrx::notice!(
                "webinar_sessions.heartbeat_mode = buffered needs the library in shared_preload_libraries; heartbeats stay direct"
            );
        }
    }
    true
}

static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `preloaded`: whether `_PG_init` runs from shared_preload_libraries (then the heartbeat
/// buffer exists and `buffered` is the default).
pub fn register(preloaded: bool) {
    PRELOADED.store(preloaded, std::sync::atomic::Ordering::Relaxed);
    let boot = if preloaded {
        HeartbeatMode::Buffered
    } else {
        HeartbeatMode::Direct
    };
    unsafe {
        pg_sys::DefineCustomEnumVariable(
            c"webinar_sessions.heartbeat_mode".as_ptr(),
            c"direct: every heartbeat updates its row; buffered: heartbeats are kept in shared memory and written by the worker every flush_interval.".as_ptr(),
            c"buffered needs the library in shared_preload_libraries and is then the default. A crash loses at most flush_interval of buffered heartbeats.".as_ptr(),
            &raw mut HEARTBEAT_MODE,
            boot as _,
            (&raw const HEARTBEAT_MODES).cast(),
            pg_sys::GucContext::PGC_USERSET,
            0,
            Some(check_heartbeat_mode),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"webinar_sessions.flush_interval",
        c"How often the background worker writes buffered heartbeats to the table.",
        c"Keep it well under stale_after: after a crash a session's recorded end can be up to this much too early.",
        &FLUSH_INTERVAL,
        1,
        3_600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
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
    // Settings read only at server start exist only when the library is preloaded: PostgreSQL
    // refuses (with FATAL) to define one later, from CREATE EXTENSION or LOAD. Without
    // preloading there is no buffer and no worker for them to configure.
    if preloaded {
        GucRegistry::define_int_guc(
            c"webinar_sessions.buffer_capacity",
            c"How many sessions the heartbeat buffer holds (shared memory, about 180 bytes each).",
            c"When it is full, heartbeats of the sessions that do not fit take the direct path.",
            &BUFFER_CAPACITY,
            16,
            50_000_000,
            GucContext::Postmaster,
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
    }
    // Reject misspelt settings such as webinar_sessions.stale_aftr. Not when loaded late: the
    // server-start settings are not defined then, and ALTER SYSTEM must still be able to set
    // them for the restart that preloads the library.
    if preloaded {
        unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"webinar_sessions".as_ptr()) };
    }
}

pub fn database() -> String {
    DATABASE
        .get()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".to_owned())
}
