//! Buffered heartbeats: "still here" recorded in shared memory, written to the table in one
//! statement per flush.
//!
//! A shared hash table, sized at server start (`webinar_sessions.buffer_capacity`), maps a
//! session's key (database, webinar, user, client session id) to its active row: the row's
//! id, its entry time, the newest sign of life seen (`alive_at`) and the newest one known to
//! be in the row (`flushed_at`). It is laid out the way pg_stat_statements keeps its
//! counters: `shmem_request_hook` reserves the memory and a named LWLock tranche,
//! `shmem_startup_hook` creates the table, and one LWLock guards it. Heartbeats hold it
//! shared and move `alive_at` forward atomically; everything that adds, removes or reads
//! the table as a whole holds it exclusively.
//!
//! The rules that keep the buffer from ever answering `alive` for a session that is closed:
//! * an entry is added only for a row that is known to be active, when the transaction that
//!   found or opened it commits (at PRE_COMMIT, before its row locks are released), and is
//!   served only after that transaction is visible (its COMMIT callback marks it committed);
//! * `leave` counts itself into the entry's `closers` before it closes the row (several leaves
//!   of one session may be under way at once, in different backends); an entry with closers is
//!   never served and blocks new entries for the key; each leave takes itself out when it
//!   ends, and the entry goes with the last one when a leave committed;
//! * a sweep (or a DELETE/TRUNCATE behind the API's back) counts itself into its database's
//!   `sweeps`, under the
//!   exclusive lock, at the moment it collects the buffered heartbeats it will write; while any
//!   sweep is counted every heartbeat takes the direct path (row
//!   locks decide the race as they do without the buffer), and the entries of the rows it
//!   closed are removed before it counts itself out at its commit (an entry a leave is
//!   counted in becomes a placeholder instead, which the last leave's end removes: the
//!   count of closers always belongs to the entry the leaves counted themselves into);
//! * a buffered heartbeat belongs to its transaction: it is answered at once, but recorded in
//!   the entry only when its transaction commits (at PRE_COMMIT, under the shared lock). If a
//!   sweep that began since is still open, or the entry has changed, the commit fails with 40001 and the
//!   client retries; a rolled-back or prepared heartbeat is never recorded. In a read-only
//!   transaction the buffer is not used, so a heartbeat fails there as it does in direct mode;
//! * flushes and sweeps are serialised (they lock `sweep_runs`), and a flush marks what it
//!   wrote as written only when it commits, so an aborted flush loses nothing: the next one
//!   writes it.
//!
//! After a clean shutdown the postmaster saves the buffer to `pg_stat/webinar_sessions.buffer`
//! (as pg_stat_statements saves its counters) and the next start loads it, so the heartbeats
//! of databases the worker could not flush on its way out are written after the restart.
//! After a crash the buffer starts empty: the heartbeats since the last flush are gone (at
//! most `webinar_sessions.flush_interval` of them).
//!
//! Three layers, a file each: `shmem` (the shared-memory table, its lock and its guards, the
//! slots the worker uses, the saved buffer), `transaction` (what a transaction has done to the
//! buffer, applied by its commit callbacks) and `sql` (the SQL-callable entry points).

mod shmem;
pub(crate) mod sql;
mod transaction;

pub use shmem::{
    claim_flusher, discard_saved_buffer, flusher_running, forget_database, other_databases,
    ready_at, register_shared_memory, release_flusher, worker_leaving_cleanly, worker_starting,
};
pub use transaction::register_transaction_callbacks;

use pgrx::prelude::*;
use pgrx::Uuid;
use std::sync::atomic::AtomicI64;

/// Session ids up to this many bytes are buffered; longer ones (legal up to 128 characters)
/// always take the direct path.
pub const MAX_BUFFERED_SESSION_ID_BYTES: usize = 64;

/// A session's key. Plain bytes with no padding, so that dynahash can hash and compare it
/// as a blob.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) database: u32,
    /// The session table's oid: entries of a dropped and re-created extension never match.
    pub(crate) table: u32,
    pub(crate) session_id_len: u32,
    pub(crate) webinar_id: [u8; 16],
    pub(crate) user_id: [u8; 16],
    pub(crate) session_id: [u8; MAX_BUFFERED_SESSION_ID_BYTES],
}

impl Key {
    pub(crate) fn new(webinar_id: &Uuid, user_id: &Uuid, session_id: &str) -> Option<Key> {
        let bytes = session_id.as_bytes();
        if bytes.len() > MAX_BUFFERED_SESSION_ID_BYTES {
            return None;
        }
        let mut key = Key {
            database: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            table: session_table()?.to_u32(),
            session_id_len: bytes.len() as u32,
            webinar_id: *webinar_id.as_bytes(),
            user_id: *user_id.as_bytes(),
            session_id: [0; MAX_BUFFERED_SESSION_ID_BYTES],
        };
        key.session_id[..bytes.len()].copy_from_slice(bytes);
        Some(key)
    }
}

/// The oid of `webinar_sessions.webinar_user_sessions` (two syscache look-ups).
pub(crate) fn session_table() -> Option<pg_sys::Oid> {
    let schema = unsafe { pg_sys::get_namespace_oid(c"webinar_sessions".as_ptr(), true) };
    if schema == pg_sys::InvalidOid {
        return None;
    }
    let table = unsafe { pg_sys::get_relname_relid(c"webinar_user_sessions".as_ptr(), schema) };
    (table != pg_sys::InvalidOid).then_some(table)
}

/// One buffered session. `alive_at` moves under the shared lock (atomically, only forward);
/// every other field changes only under the exclusive lock.
#[repr(C)]
pub(crate) struct Entry {
    pub(crate) key: Key,
    /// The active row; all zeroes for a "closing" placeholder of a key that had no entry.
    pub(crate) row_id: [u8; 16],
    pub(crate) entered_at: i64,
    pub(crate) alive_at: AtomicI64,
    pub(crate) flushed_at: i64,
    /// How many leaves of this session are under way (in any backend).
    pub(crate) closers: i32,
    /// The transaction that added the entry (at its PRE_COMMIT) has committed: until then
    /// the row it names may be invisible to others (a new session's INSERT), so no heartbeat
    /// is answered from the entry, and a flush that does not see the row must not take that
    /// for a closed row.
    pub(crate) committed: bool,
}

impl Entry {
    /// Writes a whole entry into `slot` (a new one from `hash_search`, whose contents beyond
    /// the key are not initialised) and returns it.
    ///
    /// # Safety
    /// `slot` must point at an entry of the table, under the exclusive lock, for `'a`.
    pub(crate) unsafe fn write<'a>(
        slot: *mut Entry,
        key: Key,
        row_id: [u8; 16],
        entered_at: i64,
        alive_at: i64,
        closers: i32,
        committed: bool,
    ) -> &'a mut Entry {
        unsafe {
            slot.write(Entry {
                key,
                row_id,
                entered_at,
                alive_at: AtomicI64::new(alive_at),
                flushed_at: alive_at,
                closers,
                committed,
            });
            &mut *slot
        }
    }

    /// Makes an existing entry name another row of its key (not yet committed).
    pub(crate) fn reset(&mut self, row_id: [u8; 16], entered_at: i64, alive_at: i64) {
        self.row_id = row_id;
        self.entered_at = entered_at;
        self.alive_at = AtomicI64::new(alive_at);
        self.flushed_at = alive_at;
        self.closers = 0;
        self.committed = false;
    }
}

pub(crate) const NO_TIME: i64 = i64::MIN;

pub(crate) fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

pub(crate) fn timestamp(micros: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(micros).expect("a valid timestamp")
}

pub(crate) fn micros(at: TimestampWithTimeZone) -> i64 {
    at.into_inner()
}
