//! The sweeper: a background worker that closes stale sessions every
//! `webinar_sessions.sweep_interval` in `webinar_sessions.database`.
//!
//! It behaves the way pg_cron's launcher does: it starts only once recovery has finished (so
//! never on a hot standby), waits while the extension is not installed, re-reads the settings
//! on SIGHUP, and leaves promptly on SIGTERM. Each sweep runs in its own transaction through
//! `webinar_sessions._worker_sweep()`, which records the run (or its error) in
//! `webinar_sessions.sweep_runs`.

use crate::guc;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// After a crash or a FATAL error (for example a missing database) the postmaster starts the
/// worker again after this long.
const RESTART_AFTER: Duration = Duration::from_secs(5);

pub fn register() {
    BackgroundWorkerBuilder::new("webinar_sessions sweeper")
        .set_type("webinar_sessions sweeper")
        .set_library("webinar_sessions")
        .set_function("webinar_sessions_sweeper_main")
        .enable_spi_access()
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

fn sweep_interval() -> Duration {
    Duration::from_secs(guc::SWEEP_INTERVAL.get().max(1) as u64)
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webinar_sessions_sweeper_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    // Raises FATAL when the database does not exist; the postmaster then retries after
    // RESTART_AFTER, so creating the database later needs no server restart.
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("webinar_sessions sweeper started in database \"{database}\"");

    let mut last_sweep: Option<Instant> = None;
    let mut waiting_for_extension = false;
    loop {
        // Computed afresh on every wake-up, so a reloaded sweep_interval counts from the
        // last sweep.
        let next_sweep = last_sweep.map_or_else(Instant::now, |at| at + sweep_interval());
        let wait = next_sweep.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            if !BackgroundWorker::wait_latch(Some(wait)) {
                break; // SIGTERM or postmaster death
            }
            if BackgroundWorker::sighup_received() {
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            }
            continue;
        }
        last_sweep = Some(Instant::now());
        if !guc::SWEEPER_ENABLED.get() {
            continue;
        }
        let installed = BackgroundWorker::transaction(sweep_if_installed);
        if installed == waiting_for_extension {
            waiting_for_extension = !installed;
            if installed {
                log!("webinar_sessions sweeper: extension found in \"{database}\", sweeping");
            } else {
                log!(
                    "webinar_sessions sweeper: extension not installed in \"{database}\", waiting"
                );
            }
        }
    }
    log!("webinar_sessions sweeper exiting");
    // Exit code 1 asks the postmaster to start the worker again: after an administrator's
    // pg_terminate_backend or a DROP DATABASE ... WITH (FORCE) it comes back on its own. At
    // shutdown the code does not matter.
    unsafe { pg_sys::proc_exit(1) };
}

/// Sweeps once if the extension is installed; returns whether it is.
fn sweep_if_installed() -> bool {
    let installed = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'webinar_sessions')",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if installed {
        unsafe {
            pg_sys::pgstat_report_activity(
                pg_sys::BackendState::STATE_RUNNING,
                c"SELECT webinar_sessions._worker_sweep()".as_ptr(),
            );
        }
        // Errors inside the sweep are caught and recorded by _worker_sweep itself.
        let _ = Spi::get_one::<i64>("SELECT webinar_sessions._worker_sweep()");
        unsafe {
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null())
        };
    }
    installed
}
