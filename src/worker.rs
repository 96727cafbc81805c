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
//! that has buffered heartbeats through a short-lived worker connected there, started without
//! waiting for it.
//!
//! SIGTERM cancels whatever it waits for (a lock held by someone else cannot keep a fast
//! shutdown waiting); it then writes its database's buffered heartbeats once more, with a
//! short lock_timeout, and leaves. It does not sweep until `stale_after` has passed since it
//! first started after the server's start or crash restart.

use crate::{buffer, compat, guc};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Set by SIGTERM (a shutdown, or pg_terminate_backend).
static TERMINATING: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn __errno_location() -> *mut std::ffi::c_int;
}

/// SIGTERM: leave soon, and cancel what the worker is waiting for (a lock, a row lock), so
/// that a held lock cannot keep it from leaving. The statement then fails with 57014, the
/// worker's transaction is aborted (`in_transaction`), and the loop sees the flag.
unsafe extern "C-unwind" fn on_sigterm(_signal: std::ffi::c_int) {
    unsafe {
        let errno = *__errno_location();
        TERMINATING.store(true, Ordering::SeqCst);
        (&raw mut pg_sys::ShutdownRequestPending).write_volatile(1);
        (&raw mut pg_sys::QueryCancelPending).write_volatile(1);
        (&raw mut pg_sys::InterruptPending).write_volatile(1);
        pg_sys::SetLatch(pg_sys::MyLatch);
        *__errno_location() = errno;
    }
}

fn attach_signal_handlers() {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    unsafe { compat::set_signal_handler(pg_sys::SIGTERM, on_sigterm) };
}

/// Sleeps up to `timeout`; false once the worker must leave (SIGTERM, or the postmaster's
/// death). Unlike pgrx's `wait_latch` it processes interrupts (a reload, a barrier that DROP
/// DATABASE waits for) only while no SIGTERM is pending: SIGTERM's cancel request must not
/// raise outside a transaction.
fn wait(timeout: Duration) -> bool {
    let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32;
    let millis = timeout.as_millis().min(i32::MAX as u128) as _;
    let woke = unsafe {
        let woke = pg_sys::WaitLatch(pg_sys::MyLatch, events, millis, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
        woke
    };
    if woke & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
        return false;
    }
    if !TERMINATING.load(Ordering::SeqCst) && unsafe { pg_sys::InterruptPending } != 0 {
        // A SIGTERM that lands in between raises its cancel here: caught, and the flag ends
        // the loop.
        PgTryBuilder::new(|| unsafe { pg_sys::ProcessInterrupts() })
            .catch_others(|_| ())
            .execute();
    }
    !TERMINATING.load(Ordering::SeqCst)
}

/// Runs `body` in a transaction of its own. An error (a cancelled lock wait, a failing
/// statement) is logged and the transaction aborted, instead of ending the worker.
fn in_transaction<R>(what: &str, body: impl FnOnce() -> R) -> Option<R> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let body = std::panic::AssertUnwindSafe(body);
    PgTryBuilder::new(move || {
        let result = body();
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Some(result)
    })
    .catch_others(|error| {
        let message = match &error {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report) => report.message().to_string(),
            _ => "an unexpected error".to_string(),
        };
        unsafe {
            pg_sys::AbortCurrentTransaction();
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
        }
        if !TERMINATING.load(Ordering::SeqCst) {
            log!("webinar_sessions: {what} failed: {message}");
        }
        None
    })
    .execute()
}

/// Leaving (SIGTERM): write what the buffer holds for this database, so that a clean
/// shutdown loses no heartbeat, without waiting long for a lock someone holds (what this
/// misses, the postmaster saves with the buffer at its exit).
fn final_flush() {
    unsafe {
        (&raw mut pg_sys::QueryCancelPending).write_volatile(0);
    }
    in_transaction("the last flush", || {
        Spi::run("SET LOCAL lock_timeout = '2s'").expect("SET lock_timeout");
        flush_if_installed();
    });
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webinar_sessions_sweeper_main(_arg: pg_sys::Datum) {
    attach_signal_handlers();
    let database = guc::database();
    // Raises FATAL when the database does not exist; the postmaster then retries after
    // RESTART_AFTER, so creating the database later needs no server restart.
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("webinar_sessions sweeper started in database \"{database}\"");
    // Silence from before the server (re)started proves nothing: no client could reach it.
    let ready_at = buffer::ready_at();
    buffer::worker_starting();

    let mut last_sweep: Option<Instant> = None;
    let mut last_flush = Instant::now();
    let mut waiting_for_extension = false;
    loop {
        // Computed afresh on every wake-up, so reloaded intervals count from the last run.
        let next_sweep = last_sweep.map_or_else(Instant::now, |at| at + sweep_interval());
        let next_flush = last_flush + flush_interval();
        let wait_for = next_sweep
            .min(next_flush)
            .saturating_duration_since(Instant::now());
        if TERMINATING.load(Ordering::SeqCst) {
            break;
        }
        if !wait_for.is_zero() {
            if !wait(wait_for) {
                break; // SIGTERM or postmaster death
            }
            if BackgroundWorker::sighup_received() {
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            }
            continue;
        }
        if Instant::now() >= next_flush {
            last_flush = Instant::now();
            in_transaction("flushing buffered heartbeats", flush_if_installed);
            flush_other_databases();
        }
        if Instant::now() < next_sweep {
            continue;
        }
        last_sweep = Some(Instant::now());
        if !guc::SWEEPER_ENABLED.get() {
            continue;
        }
        let grace_us = guc::STALE_AFTER.get() as i64 * 1_000_000;
        if unsafe { pg_sys::GetCurrentTimestamp() } < ready_at + grace_us {
            continue;
        }
        let Some(installed) = in_transaction("sweeping", sweep_if_installed) else {
            continue;
        };
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
    // SIGTERM or the postmaster's death (then this process has been handed to another
    // parent, and nothing is left to write to).
    if std::os::unix::process::parent_id() == unsafe { pg_sys::PostmasterPid } as u32 {
        final_flush();
        buffer::worker_leaving_cleanly();
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
    // Errors inside are caught (and recorded or logged) by the worker functions themselves;
    // a cancel (SIGTERM) is caught by `in_transaction`.
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
/// each of them (a worker stays in one database for life). They are started side by side
/// and not waited for: a lock held in one database delays only that database's flush. At
/// most one runs per database; the entries of a database that was dropped are forgotten.
fn flush_other_databases() {
    let here = unsafe { pg_sys::MyDatabaseId };
    for (database, dirty) in buffer::other_databases(here) {
        // A database dropped with heartbeats still buffered: nothing to write them to.
        let exists = in_transaction("looking up a database", || {
            Spi::get_one::<bool>(&format!(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE oid = {})",
                database.to_u32()
            ))
            .ok()
            .flatten()
            .unwrap_or(true)
        })
        .unwrap_or(true);
        if !exists {
            buffer::forget_database(database);
            continue;
        }
        if !dirty || buffer::flusher_running(database) {
            continue;
        }
        let launched = BackgroundWorkerBuilder::new("webinar_sessions flush")
            .set_type("webinar_sessions flush")
            .set_library("webinar_sessions")
            .set_function("webinar_sessions_flush_main")
            .set_argument(Some(pg_sys::Datum::from(database.to_u32())))
            .enable_spi_access()
            .load_dynamic();
        if let Err(e) = launched {
            log!("webinar_sessions: no worker slot to flush database {database:?}: {e:?}");
            return;
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn release_flusher(_code: std::ffi::c_int, arg: pg_sys::Datum) {
    buffer::release_flusher(pg_sys::Oid::from(arg.value() as u32));
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn webinar_sessions_flush_main(arg: pg_sys::Datum) {
    attach_signal_handlers();
    let database = pg_sys::Oid::from(arg.value() as u32);
    if !buffer::claim_flusher(database) {
        return; // another flusher is at work there
    }
    unsafe {
        pg_sys::before_shmem_exit(Some(release_flusher), arg);
        pg_sys::BackgroundWorkerInitializeConnectionByOid(database, pg_sys::InvalidOid, 0);
    }
    if TERMINATING.load(Ordering::SeqCst) {
        final_flush();
    } else {
        in_transaction("flushing buffered heartbeats", flush_if_installed);
    }
}
