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
//!   found or opened it commits (commit callbacks run before its row locks are released);
//! * `leave` counts itself into the entry's `closers` before it closes the row (several leaves
//!   of one session may be under way at once, in different backends); an entry with closers is
//!   never served and blocks new entries for the key; each leave takes itself out when it
//!   ends, and the entry goes with the last one when a leave committed;
//! * a sweep (or a DELETE/TRUNCATE behind the API's back) counts itself into its database's
//!   `sweeps`, under the
//!   exclusive lock, at the moment it collects the buffered heartbeats it will write; while any
//!   sweep is counted every heartbeat takes the direct path (row
//!   locks decide the race as they do without the buffer), and the entries of the rows it
//!   closed are removed before it counts itself out at its commit;
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

use crate::guc;
use crate::input::{checked_user, raise};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
use pgrx::PgTupleDesc;
use pgrx::Uuid;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};

/// Session ids up to this many bytes are buffered; longer ones (legal up to 128 characters)
/// always take the direct path.
pub const MAX_BUFFERED_SESSION_ID_BYTES: usize = 64;

/// A session's key. Plain bytes with no padding, so that dynahash can hash and compare it
/// as a blob.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    database: u32,
    /// The session table's oid: entries of a dropped and re-created extension never match.
    table: u32,
    session_id_len: u32,
    webinar_id: [u8; 16],
    user_id: [u8; 16],
    session_id: [u8; MAX_BUFFERED_SESSION_ID_BYTES],
}

impl Key {
    fn new(webinar_id: &Uuid, user_id: &Uuid, session_id: &str) -> Option<Key> {
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
fn session_table() -> Option<pg_sys::Oid> {
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
struct Entry {
    key: Key,
    /// The active row; all zeroes for a "closing" placeholder of a key that had no entry.
    row_id: [u8; 16],
    entered_at: i64,
    alive_at: AtomicI64,
    flushed_at: i64,
    /// How many leaves of this session are under way (in any backend).
    closers: i32,
    _padding: i32,
}

impl Entry {
    /// Fills a slot: a new one from `hash_search` (uninitialised beyond its key) or one
    /// whose contents are replaced.
    fn fill(
        slot: &mut Entry,
        key: Key,
        row_id: [u8; 16],
        entered_at: i64,
        alive_at: i64,
        closers: i32,
    ) {
        let slot: *mut Entry = slot;
        unsafe {
            slot.write(Entry {
                key,
                row_id,
                entered_at,
                alive_at: AtomicI64::new(alive_at),
                flushed_at: alive_at,
                closers,
                _padding: 0,
            })
        };
    }
}

const NO_TIME: i64 = i64::MIN;

/// How many transactions of a database are sweeping now (changed under the exclusive lock).
#[repr(C)]
struct SweepCount {
    database: AtomicU32,
    count: AtomicI32,
}

const SWEEP_SLOTS: usize = 64;

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    capacity: i64,
    /// How many transactions of each database are sweeping (or deleting rows behind the
    /// API's back) now: a sweep in one database does not send another's heartbeats direct.
    sweeps: [SweepCount; SWEEP_SLOTS],
    /// Sweeps of databases that found no slot: they count for every database.
    sweeps_elsewhere: AtomicI32,
    /// When the worker first started after this memory was set up (server start or restart
    /// after a crash): the sweeper's grace period counts from there.
    ready_at: AtomicI64,
    /// Databases that have a flusher worker now (0: a free slot).
    flushers: [AtomicU32; MAX_FLUSHERS],
    /// The worker has written its database's buffer and left on SIGTERM (a planned stop),
    /// and has not started again since: only then does the postmaster save the buffer at its
    /// exit (an immediate stop also ends the postmaster with code 0, but SIGQUITs the worker).
    worker_left_cleanly: std::sync::atomic::AtomicBool,
    /// Leaves that could not place a "closing" mark for lack of memory: while non-zero no
    /// entry is added.
    unmarked_closings: AtomicI32,
    buffered: AtomicI64,
    fallbacks: AtomicI64,
    flushes: AtomicI64,
    flushed_rows: AtomicI64,
    evicted: AtomicI64,
    last_flush_at: AtomicI64,
    last_flush_us: AtomicI64,
}

static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut TABLE: *mut pg_sys::HTAB = std::ptr::null_mut();
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;
const TRANCHE: &std::ffi::CStr = c"webinar_sessions";

fn table_size(capacity: i64) -> usize {
    unsafe { pg_sys::hash_estimate_size(capacity as _, std::mem::size_of::<Entry>()) }
}

/// Shared memory per buffered session, in bytes, and the whole buffer's for `capacity`.
pub fn memory_bytes(capacity: i64) -> usize {
    table_size(capacity) + std::mem::size_of::<Shared>()
}

/// Called from `_PG_init` while the library is being preloaded.
pub fn register_shared_memory() {
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shared_memory);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(create_shared_memory);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_shared_memory() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST_HOOK {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(memory_bytes(guc::BUFFER_CAPACITY.get() as i64));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn create_shared_memory() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP_HOOK {
            previous();
        }
        let capacity = guc::BUFFER_CAPACITY.get() as i64;
        let addin_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(addin_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(
            c"webinar_sessions buffer state".as_ptr(),
            std::mem::size_of::<Shared>(),
            &mut found,
        ) as *mut Shared;
        if !found {
            shared.write(Shared {
                lock: &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock,
                capacity,
                sweeps: [const {
                    SweepCount {
                        database: AtomicU32::new(0),
                        count: AtomicI32::new(0),
                    }
                }; SWEEP_SLOTS],
                sweeps_elsewhere: AtomicI32::new(0),
                ready_at: AtomicI64::new(0),
                flushers: [const { AtomicU32::new(0) }; MAX_FLUSHERS],
                worker_left_cleanly: std::sync::atomic::AtomicBool::new(false),
                unmarked_closings: AtomicI32::new(0),
                buffered: AtomicI64::new(0),
                fallbacks: AtomicI64::new(0),
                flushes: AtomicI64::new(0),
                flushed_rows: AtomicI64::new(0),
                evicted: AtomicI64::new(0),
                last_flush_at: AtomicI64::new(NO_TIME),
                last_flush_us: AtomicI64::new(0),
            });
        }
        let mut info = pg_sys::HASHCTL {
            keysize: std::mem::size_of::<Key>(),
            entrysize: std::mem::size_of::<Entry>(),
            ..Default::default()
        };
        let table = pg_sys::ShmemInitHash(
            c"webinar_sessions buffer".as_ptr(),
            capacity as _,
            capacity as _,
            &mut info,
            (pg_sys::HASH_ELEM | pg_sys::HASH_BLOBS) as i32,
        );
        pg_sys::LWLockRelease(addin_lock);
        SHARED = shared;
        TABLE = table;
        if !pg_sys::IsUnderPostmaster {
            // The postmaster, at server start or after a crash: load what a clean shutdown
            // saved, and save the buffer again when this server stops cleanly.
            if !found {
                load_saved_buffer(capacity);
            }
            pg_sys::on_shmem_exit(Some(save_buffer), pg_sys::Datum::from(0));
        }
    }
}

/// Where a clean shutdown leaves the buffer, relative to the data directory.
const SAVED_BUFFER: &str = "pg_stat/webinar_sessions.buffer";
const SAVED_MAGIC: &[u8; 8] = b"WSBUF001";
const SAVED_RECORD: usize = std::mem::size_of::<Key>() + 16 + 3 * 8;

/// The postmaster's exit callback: after a clean shutdown (every backend and the worker have
/// exited, so nothing else touches the table) the buffered sessions go to a file, for the
/// next start. After a crash (`code` != 0) nothing is saved.
#[pg_guard]
unsafe extern "C-unwind" fn save_buffer(code: std::ffi::c_int, _arg: pg_sys::Datum) {
    if code != 0 || unsafe { SHARED.is_null() || TABLE.is_null() } {
        return;
    }
    if !unsafe { &*SHARED }
        .worker_left_cleanly
        .load(Ordering::Acquire)
    {
        return; // an immediate stop, or no worker to vouch for a planned one
    }
    let mut bytes = SAVED_MAGIC.to_vec();
    let mut status = pg_sys::HASH_SEQ_STATUS::default();
    unsafe { pg_sys::hash_seq_init(&mut status, TABLE) };
    loop {
        let entry = unsafe { pg_sys::hash_seq_search(&mut status) as *const Entry };
        let Some(entry) = (unsafe { entry.as_ref() }) else {
            break;
        };
        if entry.row_id == [0; 16] {
            continue;
        }
        let key: [u8; std::mem::size_of::<Key>()] = unsafe { std::mem::transmute(entry.key) };
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&entry.row_id);
        bytes.extend_from_slice(&entry.entered_at.to_le_bytes());
        bytes.extend_from_slice(&entry.alive_at.load(Ordering::Acquire).to_le_bytes());
        bytes.extend_from_slice(&entry.flushed_at.to_le_bytes());
    }
    let temporary = format!("{SAVED_BUFFER}.tmp");
    let saved =
        std::fs::write(&temporary, &bytes).and_then(|_| std::fs::rename(&temporary, SAVED_BUFFER));
    if let Err(e) = saved {
        log!("webinar_sessions: could not save the heartbeat buffer to {SAVED_BUFFER}: {e}");
    }
}

/// Loads what `save_buffer` left (at most `capacity` sessions) and removes the file, so
/// that a later crash restart cannot load it again.
fn load_saved_buffer(capacity: i64) {
    let Ok(bytes) = std::fs::read(SAVED_BUFFER) else {
        return;
    };
    let _ = std::fs::remove_file(SAVED_BUFFER);
    // A server starting as a standby or for a recovery: its rows are not those of the
    // shutdown that saved the buffer.
    if ["standby.signal", "recovery.signal"]
        .iter()
        .any(|signal| std::path::Path::new(signal).exists())
    {
        log!("webinar_sessions: {SAVED_BUFFER} ignored: the server starts in recovery");
        return;
    }
    let Some(records) = bytes.strip_prefix(SAVED_MAGIC.as_slice()) else {
        log!("webinar_sessions: {SAVED_BUFFER} is not a saved heartbeat buffer; ignored");
        return;
    };
    let key_size = std::mem::size_of::<Key>();
    let mut loaded = 0;
    for record in records.chunks_exact(SAVED_RECORD).take(capacity as usize) {
        let key: Key = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        let field = |at: usize| i64::from_le_bytes(record[at..at + 8].try_into().unwrap());
        let row_id: [u8; 16] = record[key_size..key_size + 16].try_into().unwrap();
        let (entered_at, alive_at, flushed_at) = (
            field(key_size + 16),
            field(key_size + 24),
            field(key_size + 32),
        );
        let mut found = false;
        let slot = unsafe {
            pg_sys::hash_search(
                TABLE,
                (&key as *const Key).cast(),
                pg_sys::HASHACTION::HASH_ENTER_NULL,
                &mut found,
            ) as *mut Entry
        };
        let Some(slot) = (unsafe { slot.as_mut() }) else {
            break;
        };
        Entry::fill(slot, key, row_id, entered_at, alive_at, 0);
        slot.flushed_at = flushed_at;
        loaded += 1;
    }
    let saved = records.len() / SAVED_RECORD;
    if saved > loaded {
        warning!(
            "webinar_sessions: buffer_capacity holds {loaded} of the {saved} buffered sessions saved at the last shutdown; the heartbeats of the others that were not yet written are lost"
        );
    }
    log!("webinar_sessions: loaded {loaded} buffered sessions saved at the last shutdown");
}

/// A server running without preloading changes rows behind a saved buffer's back: the file
/// must not be loaded by a later preloaded start. Called from `_PG_init` when the library is
/// loaded late (by any backend of such a server, before it can change a row through the API).
pub fn discard_saved_buffer() {
    let _ = std::fs::remove_file(SAVED_BUFFER);
}

/// The worker starts: until it leaves cleanly, the buffer is not saved at the postmaster's exit.
pub fn worker_starting() {
    if let Some(shared) = shared() {
        shared.worker_left_cleanly.store(false, Ordering::Release);
    }
}

/// The worker has written its database's heartbeats and leaves on a planned stop.
pub fn worker_leaving_cleanly() {
    if let Some(shared) = shared() {
        shared.worker_left_cleanly.store(true, Ordering::Release);
    }
}

fn shared() -> Option<&'static Shared> {
    unsafe { (!SHARED.is_null()).then(|| &*SHARED) }
}

/// Whether this server has the buffer (the library was preloaded) and can write (it is
/// not a standby).
fn available() -> Option<&'static Shared> {
    shared().filter(|_| unsafe { !pg_sys::RecoveryInProgress() })
}

/// Whether this session's heartbeats are buffered.
pub fn buffering() -> bool {
    guc::heartbeat_mode() == guc::HeartbeatMode::Buffered && available().is_some()
}

struct Locked<'a> {
    shared: &'a Shared,
}

impl<'a> Locked<'a> {
    fn new(shared: &'a Shared, exclusive: bool) -> Self {
        let mode = if exclusive {
            pg_sys::LWLockMode::LW_EXCLUSIVE
        } else {
            pg_sys::LWLockMode::LW_SHARED
        };
        unsafe { pg_sys::LWLockAcquire(shared.lock, mode) };
        Locked { shared }
    }

    fn search(
        &self,
        key: &Key,
        action: pg_sys::HASHACTION::Type,
        found: *mut bool,
    ) -> Option<&'a mut Entry> {
        let entry =
            unsafe { pg_sys::hash_search(TABLE, (key as *const Key).cast(), action, found) };
        unsafe { (entry as *mut Entry).as_mut() }
    }

    fn find(&self, key: &Key) -> Option<&'a mut Entry> {
        self.search(key, pg_sys::HASHACTION::HASH_FIND, std::ptr::null_mut())
    }

    /// Exclusive lock only. `None` when there is no memory left for another entry.
    fn find_or_insert(&self, key: &Key, within_capacity: bool) -> Option<(&'a mut Entry, bool)> {
        if let Some(entry) = self.find(key) {
            return Some((entry, true));
        }
        if within_capacity && self.len() >= self.shared.capacity {
            return None;
        }
        let mut found = false;
        self.search(key, pg_sys::HASHACTION::HASH_ENTER_NULL, &mut found)
            .map(|entry| (entry, found))
    }

    fn remove(&self, key: &Key) {
        self.search(key, pg_sys::HASHACTION::HASH_REMOVE, std::ptr::null_mut());
    }

    /// Removes every entry for which `doomed` holds (exclusive lock only).
    fn remove_where(&self, doomed: impl Fn(&Entry) -> bool) {
        let keys: Vec<Key> = self
            .entries()
            .filter(|e| doomed(e))
            .map(|e| e.key)
            .collect();
        for key in &keys {
            self.remove(key);
        }
    }

    fn len(&self) -> i64 {
        unsafe { pg_sys::hash_get_num_entries(TABLE) as i64 }
    }

    /// Every entry (the lock must be held for as long as the iterator is used).
    fn entries(&self) -> impl Iterator<Item = &'a mut Entry> + 'a {
        let mut status = pg_sys::HASH_SEQ_STATUS::default();
        unsafe { pg_sys::hash_seq_init(&mut status, TABLE) };
        std::iter::from_fn(move || unsafe {
            (pg_sys::hash_seq_search(&mut status) as *mut Entry).as_mut()
        })
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        unsafe { pg_sys::LWLockRelease(self.shared.lock) };
    }
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

fn timestamp(micros: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(micros).expect("a valid timestamp")
}

fn micros(at: TimestampWithTimeZone) -> i64 {
    at.into_inner()
}

// ---------------------------------------------------------------------------------------
// What a transaction has done to the buffer, applied when it commits.
// ---------------------------------------------------------------------------------------

struct Opened {
    key: Key,
    row_id: [u8; 16],
    entered_at: i64,
    alive_at: i64,
}

/// A heartbeat answered from the buffer, recorded in its entry when the transaction commits.
struct Beat {
    key: Key,
    row_id: [u8; 16],
    at: i64,
    /// Written by a leave or flush of this transaction, in that subtransaction: skipped at
    /// commit, and owed again if that subtransaction aborts.
    written_in: Option<pg_sys::SubTransactionId>,
}

#[derive(Default)]
struct Pending {
    /// (subtransaction, what): undone when that subtransaction aborts.
    opened: Vec<(pg_sys::SubTransactionId, Opened)>,
    closing: Vec<(pg_sys::SubTransactionId, Key)>,
    beats: Vec<(pg_sys::SubTransactionId, Beat)>,
    collected: Vec<(pg_sys::SubTransactionId, Key, [u8; 16], i64)>,
    written: Vec<(pg_sys::SubTransactionId, HashSet<[u8; 16]>)>,
    swept: Vec<(pg_sys::SubTransactionId, HashSet<[u8; 16]>)>,
    /// Counted in `Shared::sweeps` until this transaction ends.
    sweeping: bool,
    /// The table was truncated (in these subtransactions): every entry of this database goes
    /// at commit.
    forget_all: Vec<pg_sys::SubTransactionId>,
    /// Entries this transaction created at PRE_COMMIT, removed again if it aborts after all.
    tracked: Vec<(Key, [u8; 16])>,
    /// The transaction called the API (any mode): it cannot be prepared.
    used: bool,
    /// Leaves of this transaction counted in `Shared::unmarked_closings`.
    unmarked_closings: i32,
    /// Set by a flush (which also holds a lock on sweep_runs until the transaction ends).
    flush_started: Option<std::time::Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.opened.is_empty()
            && self.closing.is_empty()
            && self.beats.is_empty()
            && self.collected.is_empty()
            && self.written.is_empty()
            && self.swept.is_empty()
            && !self.sweeping
            && self.forget_all.is_empty()
            && self.tracked.is_empty()
            && !self.used
            && self.unmarked_closings == 0
            && self.flush_started.is_none()
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

fn subtransaction() -> pg_sys::SubTransactionId {
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// Registered once per process (from `_PG_init`).
pub fn register_transaction_callbacks() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    let commit = match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            record_beats();
            track_opened();
            return;
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => true,
        pg_sys::XactEvent::XACT_EVENT_ABORT => false,
        // The buffer's changes are applied by the backend that made them, at its commit; a
        // prepared transaction would commit elsewhere, later. Refuse (the abort that follows
        // undoes them).
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            if !PENDING.with(|p| p.borrow().is_empty()) {
                raise(
                    pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "cannot PREPARE a transaction that has called webinar_sessions' enter, heartbeat, leave, flush or sweep functions",
                );
            }
            return;
        }
        _ => return,
    };
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return;
    }
    let Some(shared) = shared() else { return };
    let locked = Locked::new(shared, true);
    if commit {
        apply_commit(&locked, &pending);
    } else {
        for (_, key) in &pending.closing {
            leave_ended(&locked, key, false);
        }
        // Failed after PRE_COMMIT: the rows it found or opened may not be what it saw.
        for (key, row_id) in &pending.tracked {
            if locked
                .find(key)
                .is_some_and(|e| e.row_id == *row_id && e.closers == 0)
            {
                locked.remove(key);
            }
        }
    }
    shared
        .unmarked_closings
        .fetch_sub(pending.unmarked_closings, Ordering::AcqRel);
    if pending.sweeping {
        count_sweep(shared, -1);
    }
    drop(locked);
}

/// At PRE_COMMIT: the heartbeats this transaction answered from the buffer go into their
/// entries, all or none. None can while a sweep that began after them is still open (it
/// collected the buffer without them and may be closing the row at an older time), or when a
/// leave or sweep has taken the entry since: then the transaction fails, and the client, told
/// nothing, retries (and goes direct). A sweep that began and committed in between has
/// removed the entries of the rows it closed, so an entry still naming the row is safe.
fn record_beats() {
    let (beats, own_sweep) = PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let beats: Vec<_> = std::mem::take(&mut pending.beats)
            .into_iter()
            .filter(|(_, beat)| beat.written_in.is_none())
            .collect();
        (beats, pending.sweeping as i32)
    });
    if beats.is_empty() {
        return;
    }
    let Some(shared) = shared() else { return };
    let stale = {
        let locked = Locked::new(shared, false);
        let sweeping = sweeps_here(shared) - own_sweep > 0;
        let entries: Vec<Option<&Entry>> = beats
            .iter()
            .map(|(_, beat)| {
                locked
                    .find(&beat.key)
                    .filter(|e| !sweeping && e.row_id == beat.row_id && e.closers == 0)
            })
            .map(|e| e.map(|e| &*e))
            .collect();
        let stale = entries.iter().any(Option::is_none);
        if !stale {
            for (entry, (_, beat)) in entries.into_iter().zip(&beats) {
                entry
                    .expect("checked")
                    .alive_at
                    .fetch_max(beat.at, Ordering::AcqRel);
            }
        }
        stale
    };
    if stale {
        raise(
            pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "webinar_sessions: a sweep or leave changed the session while its heartbeat's transaction was open; retry the heartbeat",
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subid: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        match event {
            pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
                // What the subtransaction did now belongs to its parent.
                let adopt = |s: &mut pg_sys::SubTransactionId| {
                    if *s >= subid {
                        *s = parent
                    }
                };
                pending.opened.iter_mut().for_each(|(s, _)| adopt(s));
                pending.closing.iter_mut().for_each(|(s, _)| adopt(s));
                pending.beats.iter_mut().for_each(|(s, beat)| {
                    adopt(s);
                    if let Some(written) = beat.written_in.as_mut() {
                        adopt(written);
                    }
                });
                pending.forget_all.iter_mut().for_each(adopt);
                pending.collected.iter_mut().for_each(|(s, ..)| adopt(s));
                pending.written.iter_mut().for_each(|(s, _)| adopt(s));
                pending.swept.iter_mut().for_each(|(s, _)| adopt(s));
            }
            pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
                let (undone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut pending.closing)
                    .into_iter()
                    .partition(|(s, _)| *s >= subid);
                pending.closing = kept;
                pending.opened.retain(|(s, _)| *s < subid);
                pending.beats.retain(|(s, _)| *s < subid);
                // What a rolled-back leave or flush wrote is owed again.
                for (_, beat) in pending.beats.iter_mut() {
                    if beat.written_in.is_some_and(|w| w >= subid) {
                        beat.written_in = None;
                    }
                }
                pending.forget_all.retain(|s| *s < subid);
                pending.collected.retain(|(s, ..)| *s < subid);
                pending.written.retain(|(s, _)| *s < subid);
                pending.swept.retain(|(s, _)| *s < subid);
                if let (false, Some(shared)) = (undone.is_empty(), shared()) {
                    let locked = Locked::new(shared, true);
                    for (_, key) in &undone {
                        leave_ended(&locked, key, false);
                    }
                }
            }
            _ => {}
        }
    });
}

/// A leave of `key` is over: it counts itself out of the entry's closers. A leave that
/// committed has closed the row (or found none), so the entry no longer names an active row:
/// it goes when no other leave is under way, and stays a placeholder while one is. A leave
/// that aborted leaves the entry served again once no leave is under way.
fn leave_ended(locked: &Locked, key: &Key, committed: bool) {
    let Some(entry) = locked.find(key) else {
        return;
    };
    entry.closers = (entry.closers - 1).max(0);
    if committed {
        entry.row_id = [0; 16];
    }
    if entry.closers == 0 && entry.row_id == [0; 16] {
        locked.remove(key);
    }
}

fn apply_commit(locked: &Locked, pending: &Pending) {
    let shared = locked.shared;
    // Left sessions: their rows are closed now.
    for (_, key) in &pending.closing {
        leave_ended(locked, key, true);
    }
    // What a flush wrote is in the rows now; what it found closed or gone is dropped.
    if !pending.collected.is_empty() {
        let written: HashSet<&[u8; 16]> = pending.written.iter().flat_map(|(_, w)| w).collect();
        let mut rows = 0;
        for (_, key, row_id, alive_at) in &pending.collected {
            let Some(entry) = locked.find(key) else {
                continue;
            };
            if entry.row_id != *row_id {
                continue;
            }
            if written.contains(row_id) {
                entry.flushed_at = entry.flushed_at.max(*alive_at);
                rows += 1;
            } else if entry.closers == 0 {
                locked.remove(key);
                shared.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        shared.flushed_rows.fetch_add(rows, Ordering::Relaxed);
        shared.last_flush_at.store(now(), Ordering::Relaxed);
        if let Some(started) = pending.flush_started {
            let took = started.elapsed().as_micros() as i64;
            shared.last_flush_us.store(took, Ordering::Relaxed);
        }
    }
    // Swept or deleted sessions: closed or gone now.
    let swept: HashSet<&[u8; 16]> = pending.swept.iter().flat_map(|(_, s)| s).collect();
    let forget_all = !pending.forget_all.is_empty();
    if !swept.is_empty() || forget_all {
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        locked.remove_where(|e| {
            e.key.database == database && (forget_all || swept.contains(&e.row_id))
        });
    }
}

/// At PRE_COMMIT: the sessions this transaction found active or opened enter the buffer
/// (unless a leave, this transaction's too, is closing them). Not at COMMIT: by then the
/// transaction is visible as committed and its row locks are about to go, so a leave or sweep
/// could close the row and finish before the entry appeared, which would then name a closed
/// row. Now they wait for this transaction's row locks, and find the entry.
fn track_opened() {
    let opened = PENDING.with(|p| std::mem::take(&mut p.borrow_mut().opened));
    if opened.is_empty() {
        return;
    }
    let Some(shared) = shared() else { return };
    let locked = Locked::new(shared, true);
    let mut tracked = Vec::new();
    for (_, row) in &opened {
        if track(&locked, row) {
            tracked.push((row.key, row.row_id));
        }
    }
    drop(locked);
    PENDING.with(|p| p.borrow_mut().tracked.extend(tracked));
}

/// Adds or refreshes the entry for a row known to be active (exclusive lock held).
fn track(locked: &Locked, row: &Opened) -> bool {
    let shared = locked.shared;
    if shared.unmarked_closings.load(Ordering::Acquire) > 0 {
        return false;
    }
    let Some((entry, existed)) = locked.find_or_insert(&row.key, true) else {
        // Full: this session's heartbeats stay direct (and are counted) until there is room.
        shared.fallbacks.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    if existed && entry.closers != 0 {
        return false;
    }
    if existed && entry.row_id == row.row_id {
        entry.alive_at.fetch_max(row.alive_at, Ordering::AcqRel);
        entry.flushed_at = entry.flushed_at.max(row.alive_at);
        return true;
    }
    // A new entry, or one that still named an older row of the same key.
    Entry::fill(entry, row.key, row.row_id, row.entered_at, row.alive_at, 0);
    true
}

/// This transaction starts sweeping (or deleting rows): from now until it ends, heartbeats
/// take the direct path, and buffered heartbeats of transactions still open cannot commit.
/// Exclusive lock held.
fn begin_sweeping(shared: &Shared) {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        if !pending.sweeping {
            pending.sweeping = true;
            count_sweep(shared, 1);
        }
    });
}

/// Counts a sweeping transaction of this database in or out (exclusive lock held).
fn count_sweep(shared: &Shared, delta: i32) {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let slot = shared
        .sweeps
        .iter()
        .find(|s| {
            s.database.load(Ordering::Acquire) == database && s.count.load(Ordering::Acquire) > 0
        })
        .or_else(|| {
            (delta > 0)
                .then(|| {
                    shared
                        .sweeps
                        .iter()
                        .find(|s| s.count.load(Ordering::Acquire) == 0)
                })
                .flatten()
        });
    match slot {
        Some(slot) => {
            slot.database.store(database, Ordering::Release);
            slot.count.fetch_add(delta, Ordering::AcqRel);
        }
        None => {
            shared.sweeps_elsewhere.fetch_add(delta, Ordering::AcqRel);
        }
    }
}

/// How many transactions sweep this database now (or any, for those without a slot).
fn sweeps_here(shared: &Shared) -> i32 {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let here: i32 = shared
        .sweeps
        .iter()
        .filter(|s| s.database.load(Ordering::Acquire) == database)
        .map(|s| s.count.load(Ordering::Acquire))
        .sum();
    here + shared.sweeps_elsewhere.load(Ordering::Acquire)
}

/// Takes this transaction's buffered heartbeats that `which` selects out of its pending
/// list, as the newest time per session: the caller writes them in the transaction.
fn take_own_beats(which: impl Fn(&Beat) -> bool) -> std::collections::HashMap<Key, i64> {
    let sub = subtransaction();
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let mut newest = std::collections::HashMap::new();
        for (_, beat) in pending.beats.iter_mut() {
            if beat.written_in.is_none() && which(beat) {
                beat.written_in = Some(sub);
                let at = newest.entry(beat.key).or_insert(beat.at);
                *at = (*at).max(beat.at);
            }
        }
        newest
    })
}

/// The transaction called the API: it cannot be prepared (in either mode: a prepared
/// transaction would hold a session's row, or the lock flushes and sweeps take, until it is
/// finished, and stall every flush and sweep of its database).
fn mark_used() {
    PENDING.with(|p| p.borrow_mut().used = true);
}

// ---------------------------------------------------------------------------------------
// The SQL-callable side.
// ---------------------------------------------------------------------------------------

/// The heartbeat's buffered path: the same checks as the direct path, then, when the session
/// is in the buffer, "alive at now()" recorded in shared memory and the session's status
/// returned; NULL when the caller must take the direct path.
#[pg_extern(volatile, parallel_unsafe, name = "_buffered_heartbeat", requires = ["schema"])]
fn buffered_heartbeat(
    webinar_id: Option<Uuid>,
    session_id: Option<&str>,
    user_id: Option<Uuid>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<pgrx::composite_type!('static, "session_status")> {
    // Not buffering: the caller's direct path checks the arguments (once). A read-only
    // transaction (a PostgREST GET) goes direct too, where its UPDATE fails with 25006 as it
    // does in direct mode: a heartbeat is a write.
    if guc::heartbeat_mode() != guc::HeartbeatMode::Buffered || unsafe { pg_sys::XactReadOnly } {
        return None;
    }
    let shared = available()?;
    let user = checked_user(webinar_id, session_id, user_id);
    let (webinar_id, session_id) = (webinar_id?, session_id?);
    let key = Key::new(&webinar_id, &user, session_id)?;
    let (row_id, entered_at, at, alive_at) = {
        let locked = Locked::new(shared, false);
        if sweeps_here(shared) != 0 {
            return None;
        }
        let entry = locked.find(&key)?;
        if entry.closers != 0 || entry.row_id == [0; 16] {
            return None;
        }
        let at = now().max(entry.entered_at);
        let alive_at = entry.alive_at.load(Ordering::Acquire).max(at);
        (entry.row_id, entry.entered_at, at, alive_at)
    };
    // Recorded in the entry when this transaction commits (`record_beats`).
    let beat = Beat {
        key,
        row_id,
        at,
        written_in: None,
    };
    PENDING.with(|p| p.borrow_mut().beats.push((subtransaction(), beat)));
    shared.buffered.fetch_add(1, Ordering::Relaxed);
    Some(session_status(
        fcinfo,
        Uuid::from_bytes(row_id),
        webinar_id,
        session_id,
        entered_at,
        alive_at,
    ))
}

fn session_status(
    fcinfo: pg_sys::FunctionCallInfo,
    row_id: Uuid,
    webinar_id: Uuid,
    session_id: &str,
    entered_at: i64,
    alive_at: i64,
) -> PgHeapTuple<'static, AllocatedByRust> {
    let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
    let kind = unsafe { pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc) };
    if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || tupdesc.is_null() {
        raise(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "_buffered_heartbeat must return webinar_sessions.session_status",
        );
    }
    let tupdesc = unsafe { PgTupleDesc::from_pg_copy(tupdesc) };
    let datums = [
        row_id.into_datum(),
        webinar_id.into_datum(),
        session_id.into_datum(),
        "alive".into_datum(),
        timestamp(entered_at).into_datum(),
        timestamp(alive_at).into_datum(),
        None,
        guc::HEARTBEAT_INTERVAL.get().into_datum(),
    ];
    unsafe { PgHeapTuple::from_datums(tupdesc, datums) }.expect("session_status has 8 fields")
}

/// Puts an active row into the buffer when this transaction commits, so that its next
/// heartbeats are buffered. (Not before: until then an abort can still take the row, or the
/// change that made it active, away.) Returns whether buffering is on.
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_track")]
fn buffer_track(
    row_id: Uuid,
    webinar_id: Uuid,
    user_id: Uuid,
    session_id: &str,
    entered_at: TimestampWithTimeZone,
    alive_at: Option<TimestampWithTimeZone>,
) -> bool {
    mark_used();
    if !buffering() {
        return false;
    }
    let Some(key) = Key::new(&webinar_id, &user_id, session_id) else {
        return false;
    };
    let row = Opened {
        key,
        row_id: *row_id.as_bytes(),
        entered_at: micros(entered_at),
        alive_at: alive_at.map_or(NO_TIME, micros),
    };
    PENDING.with(|p| p.borrow_mut().opened.push((subtransaction(), row)));
    true
}

/// Called by `leave` before it closes the row: marks the session closing (no heartbeat is
/// buffered for it from now on) and returns its newest buffered heartbeat not yet written,
/// which the leave writes itself.
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_closing")]
fn buffer_closing(
    webinar_id: Uuid,
    user_id: Uuid,
    session_id: &str,
) -> Option<TimestampWithTimeZone> {
    mark_used();
    let shared = available()?;
    let key = Key::new(&webinar_id, &user_id, session_id)?;
    // This transaction's own buffered heartbeats of the session: the leave writes them.
    let own = take_own_beats(|beat| beat.key == key).remove(&key);
    let locked = Locked::new(shared, true);
    let Some((entry, existed)) = locked.find_or_insert(&key, false) else {
        // No memory even for a mark: hold back every new entry until this leave ends.
        shared.unmarked_closings.fetch_add(1, Ordering::AcqRel);
        PENDING.with(|p| p.borrow_mut().unmarked_closings += 1);
        return own.map(timestamp);
    };
    if !existed {
        Entry::fill(entry, key, [0; 16], NO_TIME, NO_TIME, 0);
    }
    // Every leave under way counts: the entry stays unserved until the last one ends.
    entry.closers += 1;
    let alive_at = entry
        .alive_at
        .load(Ordering::Acquire)
        .max(own.unwrap_or(NO_TIME));
    let unwritten = (alive_at > entry.flushed_at).then(|| timestamp(alive_at));
    PENDING.with(|p| p.borrow_mut().closing.push((subtransaction(), key)));
    unwritten
}

/// Hands the heartbeats buffered in this database and not yet written to the caller's
/// UPDATE, as (row id, alive at). With `for_sweep`, heartbeats take the direct path until
/// this transaction ends. What was written counts as written only when the transaction
/// commits (see `_buffer_written`).
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_collect")]
fn buffer_collect(
    for_sweep: bool,
) -> TableIterator<'static, (name!(id, Uuid), name!(alive_at, TimestampWithTimeZone))> {
    mark_used();
    let Some(shared) = available() else {
        return TableIterator::new(Vec::new());
    };
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let sub = subtransaction();
    let table = session_table().map_or(0, |t| t.to_u32());
    // This transaction's own buffered heartbeats: this flush writes them, in the transaction.
    let own = take_own_beats(|_| true);
    let collected: Vec<(Key, [u8; 16], i64)> = {
        let locked = Locked::new(shared, true);
        if for_sweep {
            begin_sweeping(shared);
        }
        // Entries left behind by a dropped extension's table.
        locked.remove_where(|e| e.key.database == database && e.key.table != table);
        locked
            .entries()
            .filter(|e| e.key.database == database && e.row_id != [0; 16])
            .filter_map(|e| {
                let mine = own.get(&e.key).copied().unwrap_or(NO_TIME);
                let alive_at = e.alive_at.load(Ordering::Acquire).max(mine);
                (alive_at > e.flushed_at).then_some((e.key, e.row_id, alive_at))
            })
            .collect()
    };
    let rows: Vec<_> = collected
        .iter()
        .map(|(_, row_id, at)| (Uuid::from_bytes(*row_id), timestamp(*at)))
        .collect();
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        pending.sweeping |= for_sweep;
        pending
            .flush_started
            .get_or_insert_with(std::time::Instant::now);
        pending
            .collected
            .extend(collected.into_iter().map(|(k, r, a)| (sub, k, r, a)));
    });
    TableIterator::new(rows)
}

fn id_set(ids: Option<Array<Uuid>>) -> HashSet<[u8; 16]> {
    ids.map(|ids| ids.iter().flatten().map(|id| *id.as_bytes()).collect())
        .unwrap_or_default()
}

/// The rows a flush wrote (the others it collected were closed or gone).
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_written")]
fn buffer_written(ids: Option<Array<Uuid>>) {
    mark_used();
    let ids = id_set(ids);
    PENDING.with(|p| p.borrow_mut().written.push((subtransaction(), ids)));
}

/// The rows a sweep closed: their entries go when it commits.
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_swept")]
fn buffer_swept(ids: Option<Array<Uuid>>) {
    mark_used();
    if shared().is_none() {
        return;
    }
    let ids = id_set(ids);
    PENDING.with(|p| p.borrow_mut().swept.push((subtransaction(), ids)));
}

/// For the triggers on DELETE and TRUNCATE of the session table (statements that bypass the
/// API): from now until this transaction ends no heartbeat is buffered, and at commit the
/// entries of the deleted rows (`ids`), or with `all` every entry of this database, go.
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_forget")]
fn buffer_forget(ids: Option<Array<Uuid>>, all: bool) {
    let Some(shared) = shared() else { return };
    let ids = id_set(ids);
    {
        let _locked = Locked::new(shared, true);
        begin_sweeping(shared);
    }
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        pending.used = true;
        if all {
            pending.forget_all.push(subtransaction());
        }
        pending.swept.push((subtransaction(), ids));
    });
}

/// How many flusher workers (one per database other than the worker's) may run at once.
pub const MAX_FLUSHERS: usize = 32;

/// A flusher for `database` takes its slot; false when one already runs there (or every slot
/// is taken).
pub fn claim_flusher(database: pg_sys::Oid) -> bool {
    let Some(shared) = shared() else { return false };
    let _locked = Locked::new(shared, true);
    let database = database.to_u32();
    if shared
        .flushers
        .iter()
        .any(|s| s.load(Ordering::Acquire) == database)
    {
        return false;
    }
    shared
        .flushers
        .iter()
        .find(|s| s.load(Ordering::Acquire) == 0)
        .map(|slot| slot.store(database, Ordering::Release))
        .is_some()
}

pub fn release_flusher(database: pg_sys::Oid) {
    let Some(shared) = shared() else { return };
    let _locked = Locked::new(shared, true);
    for slot in &shared.flushers {
        let _ = slot.compare_exchange(database.to_u32(), 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

pub fn flusher_running(database: pg_sys::Oid) -> bool {
    shared().is_some_and(|shared| {
        shared
            .flushers
            .iter()
            .any(|s| s.load(Ordering::Acquire) == database.to_u32())
    })
}

/// When the worker first started since shared memory was last set up (the server's start, or
/// its restart after a crash), in PostgreSQL's microseconds; the first caller sets it.
pub fn ready_at() -> i64 {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let Some(shared) = shared() else { return now };
    match shared
        .ready_at
        .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => now,
        Err(earlier) => earlier,
    }
}

/// Drops every entry of a database (the worker, when the extension is not installed there or
/// the database is gone).
pub fn forget_database(database: pg_sys::Oid) {
    let Some(shared) = shared() else { return };
    Locked::new(shared, true)
        .remove_where(|e| e.key.database == database.to_u32() && e.closers == 0);
}

/// Databases other than `except` that have entries in the buffer, each with whether some of
/// its heartbeats wait to be written.
pub fn other_databases(except: pg_sys::Oid) -> Vec<(pg_sys::Oid, bool)> {
    let Some(shared) = shared() else {
        return Vec::new();
    };
    let locked = Locked::new(shared, false);
    let mut databases = std::collections::BTreeMap::<u32, bool>::new();
    for e in locked.entries() {
        if e.key.database != except.to_u32() {
            let dirty = e.alive_at.load(Ordering::Acquire) > e.flushed_at;
            *databases.entry(e.key.database).or_default() |= dirty;
        }
    }
    databases
        .into_iter()
        .map(|(database, dirty)| (pg_sys::Oid::from(database), dirty))
        .collect()
}

/// What `webinar_sessions.buffer_stats` shows.
#[pg_extern(volatile, parallel_safe, name = "_buffer_stats")]
#[allow(clippy::type_complexity)]
pub fn buffer_stats() -> TableIterator<
    'static,
    (
        name!(mode, String),
        name!(capacity, i64),
        name!(used, i64),
        name!(dirty, i64),
        name!(memory_bytes, i64),
        name!(bytes_per_session, i64),
        name!(buffered_heartbeats, i64),
        name!(fallbacks, i64),
        name!(flushes, i64),
        name!(flushed_rows, i64),
        name!(evicted, i64),
        name!(last_flush_at, Option<TimestampWithTimeZone>),
        name!(last_flush_ms, Option<f64>),
    ),
> {
    let mode = if buffering() { "buffered" } else { "direct" }.to_string();
    let Some(shared) = shared() else {
        return TableIterator::once((mode, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, None));
    };
    let (used, dirty) = {
        let locked = Locked::new(shared, false);
        let dirty = locked
            .entries()
            .filter(|e| e.alive_at.load(Ordering::Acquire) > e.flushed_at)
            .count() as i64;
        (locked.len(), dirty)
    };
    let memory = memory_bytes(shared.capacity) as i64;
    let last_flush_at = shared.last_flush_at.load(Ordering::Relaxed);
    let flushed = last_flush_at != NO_TIME;
    TableIterator::once((
        mode,
        shared.capacity,
        used,
        dirty,
        memory,
        memory / shared.capacity.max(1),
        shared.buffered.load(Ordering::Relaxed),
        shared.fallbacks.load(Ordering::Relaxed),
        shared.flushes.load(Ordering::Relaxed),
        shared.flushed_rows.load(Ordering::Relaxed),
        shared.evicted.load(Ordering::Relaxed),
        flushed.then(|| timestamp(last_flush_at)),
        flushed.then(|| shared.last_flush_us.load(Ordering::Relaxed) as f64 / 1000.0),
    ))
}
