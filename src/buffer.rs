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
//! * `leave` marks the entry "closing" before it closes the row, and the entry goes away when
//!   the leave commits (or is reinstated when it aborts); a closing entry is never served and
//!   blocks new entries for the key;
//! * a sweep raises a flag, under the exclusive lock, at the moment it collects the buffered
//!   heartbeats it will write; while the flag is up every heartbeat takes the direct path (row
//!   locks decide the race as they do without the buffer), and the entries of the rows it
//!   closed are removed before the flag drops at its commit;
//! * flushes and sweeps are serialised (they lock `sweep_runs`), and a flush marks what it
//!   wrote as written only when it commits, so an aborted flush loses nothing: the next one
//!   writes it.
//!
//! Nothing here is durable: after a crash the buffer starts empty and the heartbeats since
//! the last flush are gone (at most `webinar_sessions.flush_interval` of them).

use crate::guc;
use crate::input::{checked_user, raise};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
use pgrx::PgTupleDesc;
use pgrx::Uuid;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};

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
    /// Non-zero while a leave in that backend is closing the session.
    closing_pid: i32,
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
        closing_pid: i32,
    ) {
        let slot: *mut Entry = slot;
        unsafe {
            slot.write(Entry {
                key,
                row_id,
                entered_at,
                alive_at: AtomicI64::new(alive_at),
                flushed_at: alive_at,
                closing_pid,
                _padding: 0,
            })
        };
    }
}

const NO_TIME: i64 = i64::MIN;

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    capacity: i64,
    /// Non-zero while that backend's sweep runs (under the exclusive lock).
    sweeping_pid: AtomicI32,
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
                sweeping_pid: AtomicI32::new(0),
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

#[derive(Default)]
struct Pending {
    /// (subtransaction, what): undone when that subtransaction aborts.
    opened: Vec<(pg_sys::SubTransactionId, Opened)>,
    closing: Vec<(pg_sys::SubTransactionId, Key)>,
    collected: Vec<(pg_sys::SubTransactionId, Key, [u8; 16], i64)>,
    written: Vec<(pg_sys::SubTransactionId, HashSet<[u8; 16]>)>,
    swept: Vec<(pg_sys::SubTransactionId, HashSet<[u8; 16]>)>,
    sweeping: bool,
    /// The table was truncated: every entry of this database goes at commit.
    forget_all: bool,
    /// Leaves of this transaction counted in `Shared::unmarked_closings`.
    unmarked_closings: i32,
    flush_started: Option<std::time::Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.opened.is_empty()
            && self.closing.is_empty()
            && self.collected.is_empty()
            && !self.sweeping
            && self.unmarked_closings == 0
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
        pg_sys::XactEvent::XACT_EVENT_COMMIT => true,
        pg_sys::XactEvent::XACT_EVENT_ABORT => false,
        // The buffer's changes are applied by the backend that made them, at its commit; a
        // prepared transaction would commit elsewhere, later. Refuse (the abort that follows
        // undoes them).
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            if !PENDING.with(|p| p.borrow().is_empty()) {
                raise(
                    pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "cannot PREPARE a transaction that has called webinar_sessions' heartbeat, leave or sweep functions",
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
            reinstate(&locked, key);
        }
    }
    shared
        .unmarked_closings
        .fetch_sub(pending.unmarked_closings, Ordering::AcqRel);
    if pending.sweeping {
        let me = unsafe { pg_sys::MyProcPid };
        let _ = shared
            .sweeping_pid
            .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire);
    }
    drop(locked);
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
                pending.collected.retain(|(s, ..)| *s < subid);
                pending.written.retain(|(s, _)| *s < subid);
                pending.swept.retain(|(s, _)| *s < subid);
                if let (false, Some(shared)) = (undone.is_empty(), shared()) {
                    let locked = Locked::new(shared, true);
                    for (_, key) in &undone {
                        reinstate(&locked, key);
                    }
                }
            }
            _ => {}
        }
    });
}

/// A leave that did not happen: its session is served from the buffer again.
fn reinstate(locked: &Locked, key: &Key) {
    if let Some(entry) = locked.find(key) {
        if entry.closing_pid == unsafe { pg_sys::MyProcPid } {
            if entry.row_id == [0; 16] {
                locked.remove(key);
            } else {
                entry.closing_pid = 0;
            }
        }
    }
}

fn apply_commit(locked: &Locked, pending: &Pending) {
    let me = unsafe { pg_sys::MyProcPid };
    let shared = locked.shared;
    // Sessions this transaction found active or opened: active now, unless a leave (this
    // transaction's too) is closing them.
    for (_, opened) in &pending.opened {
        track(locked, opened);
    }
    // Left sessions: their rows are closed now.
    for (_, key) in &pending.closing {
        if locked.find(key).is_some_and(|e| e.closing_pid == me) {
            locked.remove(key);
        }
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
            } else if entry.closing_pid == 0 {
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
    if !swept.is_empty() || pending.forget_all {
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        locked.remove_where(|e| {
            e.key.database == database && (pending.forget_all || swept.contains(&e.row_id))
        });
    }
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
    if existed && entry.closing_pid != 0 {
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
    // Not buffering: the caller's direct path checks the arguments (once).
    if guc::heartbeat_mode() != guc::HeartbeatMode::Buffered {
        return None;
    }
    let shared = available()?;
    let user = checked_user(webinar_id, session_id, user_id);
    let (webinar_id, session_id) = (webinar_id?, session_id?);
    let key = Key::new(&webinar_id, &user, session_id)?;
    let (row_id, entered_at, alive_at) = {
        let locked = Locked::new(shared, false);
        if shared.sweeping_pid.load(Ordering::Acquire) != 0 {
            return None;
        }
        let entry = locked.find(&key)?;
        if entry.closing_pid != 0 || entry.row_id == [0; 16] {
            return None;
        }
        let at = now().max(entry.entered_at);
        let before = entry.alive_at.fetch_max(at, Ordering::AcqRel);
        (entry.row_id, entry.entered_at, before.max(at))
    };
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
    let shared = available()?;
    let key = Key::new(&webinar_id, &user_id, session_id)?;
    let me = unsafe { pg_sys::MyProcPid };
    let locked = Locked::new(shared, true);
    let Some((entry, existed)) = locked.find_or_insert(&key, false) else {
        // No memory even for a mark: hold back every new entry until this leave ends.
        shared.unmarked_closings.fetch_add(1, Ordering::AcqRel);
        PENDING.with(|p| p.borrow_mut().unmarked_closings += 1);
        return None;
    };
    if !existed {
        Entry::fill(entry, key, [0; 16], NO_TIME, NO_TIME, me);
    } else if entry.closing_pid != 0 && entry.closing_pid != me {
        // Another leave of the same session is under way: it holds the row; ours will wait
        // for it on the row lock and find the session closed.
        return None;
    }
    entry.closing_pid = me;
    let alive_at = entry.alive_at.load(Ordering::Acquire);
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
    let Some(shared) = available() else {
        return TableIterator::new(Vec::new());
    };
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let me = unsafe { pg_sys::MyProcPid };
    let sub = subtransaction();
    let table = session_table().map_or(0, |t| t.to_u32());
    let collected: Vec<(Key, [u8; 16], i64)> = {
        let locked = Locked::new(shared, true);
        if for_sweep {
            shared.sweeping_pid.store(me, Ordering::Release);
        }
        // Entries left behind by a dropped extension's table.
        locked.remove_where(|e| e.key.database == database && e.key.table != table);
        locked
            .entries()
            .filter(|e| e.key.database == database && e.row_id != [0; 16])
            .filter_map(|e| {
                let alive_at = e.alive_at.load(Ordering::Acquire);
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
    let ids = id_set(ids);
    PENDING.with(|p| p.borrow_mut().written.push((subtransaction(), ids)));
}

/// The rows a sweep closed: their entries go when it commits.
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_swept")]
fn buffer_swept(ids: Option<Array<Uuid>>) {
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
        shared
            .sweeping_pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
    }
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        pending.sweeping = true;
        pending.forget_all |= all;
        pending.swept.push((subtransaction(), ids));
    });
}

/// Drops every entry of a database (the worker, when the extension is not installed there or
/// the database is gone).
pub fn forget_database(database: pg_sys::Oid) {
    let Some(shared) = shared() else { return };
    Locked::new(shared, true)
        .remove_where(|e| e.key.database == database.to_u32() && e.closing_pid == 0);
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
