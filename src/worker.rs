//! The sweeper: a background worker that closes stale sessions every
//! `webinar_sessions.sweep_interval` in `webinar_sessions.database`.
//!
//! It behaves the way pg_cron's launcher does: it starts only once recovery has finished (so
//! never on a hot standby), waits while the extension is not installed, re-reads the settings
//! on SIGHUP, and leaves promptly on SIGTERM. Each sweep runs in its own transaction through
//! `webinar_sessions._worker_sweep()`, which records the run (or its error) in
//! `webinar_sessions.sweep_runs`.
//!
//! It also writes the heartbeat buffer to the table every `webinar_sessions.flush_interval`
//! (whether or not sweeping is enabled): in its own database itself, in any other database
//! that has buffered heartbeats through a short-lived worker connected there.

use crate::{buffer, guc};
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

fn flush_interval() -> Duration {
    Duration::from_secs(guc::FLUSH_INTERVAL.get().max(1) as u64)
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
    let mut last_flush = Instant::now();
    let mut waiting_for_extension = false;
    loop {
        // Computed afresh on every wake-up, so reloaded intervals count from the last run.
        let next_sweep = last_sweep.map_or_else(Instant::now, |at| at + sweep_interval());
        let next_flush = last_flush + flush_interval();
        let wait = next_sweep
            .min(next_flush)
            .saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            if !BackgroundWorker::wait_latch(Some(wait)) {
                break; // SIGTERM or postmaster death
            }
            if BackgroundWorker::sighup_received() {
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            }
            continue;
        }
        if Instant::now() >= next_flush {
            last_flush = Instant::now();
            BackgroundWorker::transaction(flush_if_installed);
            flush_other_databases();
        }
        if Instant::now() < next_sweep {
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
    // wait_latch returned false: SIGTERM (it has consumed the flag) or the postmaster's death
    // (then this process has been handed to another parent).
    if std::os::unix::process::parent_id() == unsafe { pg_sys::PostmasterPid } as u32 {
        // A planned stop (or pg_terminate_backend): write what the buffer holds, so that a
        // clean shutdown loses no heartbeat. The postmaster waits for this before its
        // shutdown checkpoint.
        BackgroundWorker::transaction(flush_if_installed);
    }
    log!("webinar_sessions sweeper exiting");
    // Exit code 1 asks the postmaster to start the worker again: after an administrator's
    // pg_terminate_backend or a DROP DATABASE ... WITH (FORCE) it comes back on its own. At
    // shutdown the code does not matter.
    unsafe { pg_sys::proc_exit(1) };
}

fn extension_installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'webinar_sessions')",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Runs `query` (one of the extension's worker functions) as the worker's current activity.
fn run_reported(query: &'static std::ffi::CStr) {
    unsafe {
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, query.as_ptr());
    }
    // Errors inside are caught (and recorded or logged) by the worker functions themselves.
    if let Err(e) = Spi::get_one::<i64>(query.to_str().expect("ASCII")) {
        log!("webinar_sessions: {query:?} failed: {e}");
    }
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null()) };
}

/// Sweeps once if the extension is installed; returns whether it is.
fn sweep_if_installed() -> bool {
    let installed = extension_installed();
    if installed {
        run_reported(c"SELECT webinar_sessions._worker_sweep()");
    }
    installed
}

/// Writes this database's buffered heartbeats; without the extension, forgets them.
fn flush_if_installed() {
    if extension_installed() {
        run_reported(c"SELECT webinar_sessions._worker_flush()");
    } else {
        buffer::forget_database(unsafe { pg_sys::MyDatabaseId });
    }
}

/// Heartbeats buffered in other databases are written by a short-lived worker connected to
/// each of them in turn (a worker stays in one database for life); the entries of a database
/// that was dropped are forgotten.
fn flush_other_databases() {
    let here = unsafe { pg_sys::MyDatabaseId };
    for (database, dirty) in buffer::other_databases(here) {
        // A database dropped with heartbeats still buffered: nothing to write them to.
        let exists = BackgroundWorker::transaction(|| {
            Spi::get_one::<bool>(&format!(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE oid = {})",
                database.to_u32()
            ))
            .ok()
            .flatten()
            .unwrap_or(true)
        });
        if !exists {
            buffer::forget_database(database);
            continue;
        }
        if !dirty {
            continue;
        }
        let launched = BackgroundWorkerBuilder::new("webinar_sessions flush")
            .set_type("webinar_sessions flush")
            .set_library("webinar_sessions")
            .set_function("webinar_sessions_flush_main")
            .set_argument(Some(pg_sys::Datum::from(database.to_u32())))
            .enable_spi_access()
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        match launched {
            Ok(worker) => {
                let _ = worker.wait_for_shutdown();
            }
            Err(e) => {
                log!("webinar_sessions: no worker slot to flush database {database:?}: {e:?}");
                return;
            }
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webinar_sessions_flush_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let database = pg_sys::Oid::from(arg.value() as u32);
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(database, pg_sys::InvalidOid, 0);
    }
    BackgroundWorker::transaction(flush_if_installed);
}
