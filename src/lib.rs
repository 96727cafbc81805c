//! webinar_sessions: who watches a webinar and for how long, kept inside PostgreSQL.
//!
//! The schema and the SQL API are hand-written in `sql/`; Rust provides what SQL does badly:
//! settings (`guc`), reading the caller's JWT identity (`identity`), argument checks
//! (`input`), the per-webinar summary aggregate (`stats`) and the background sweeper
//! (`worker`).

use pgrx::prelude::*;

mod buffer;
mod compat;
mod error;
mod guc;
mod identity;
mod input;
mod stats;
mod worker;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preloaded = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    guc::register(preloaded);
    buffer::register_transaction_callbacks();
    if preloaded {
        buffer::register_shared_memory();
        worker::register();
    } else {
        buffer::discard_saved_buffer();
    }
}

/// The heartbeat interval clients should use, in seconds (`webinar_sessions.heartbeat_interval`).
#[pg_extern(stable, parallel_safe, name = "_heartbeat_interval_s")]
fn heartbeat_interval_s() -> i32 {
    guc::HEARTBEAT_INTERVAL.get()
}

/// The default staleness limit of a sweep, in seconds (`webinar_sessions.stale_after`).
#[pg_extern(stable, parallel_safe, name = "_stale_after_s")]
fn stale_after_s() -> i32 {
    guc::STALE_AFTER.get()
}

extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [identity::current_user_id]
);
extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = ["schema", buffer::sql::buffer_stats]
);
extension_sql_file!(
    "../sql/stats.sql",
    name = "stats",
    requires = ["schema", "presence_summary_aggregate"]
);
extension_sql_file!(
    "../sql/report.sql",
    name = "report",
    requires = ["api", "stats", identity::caller_is_service]
);
extension_sql_file!(
    "../sql/distribute.sql",
    name = "distribute",
    requires = ["api"]
);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[cfg(any(test, feature = "pg_test"))]
mod sql_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'webinar_sessions'",
            "webinar_sessions.database = 'pgrx_tests'",
            // The SQL tests run inside transactions that are rolled back; the worker must not
            // sweep in the middle of them.
            "webinar_sessions.sweeper_enabled = off",
        ]
    }
}
