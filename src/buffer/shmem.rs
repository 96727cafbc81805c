//! The shared-memory table and its lock, typed: a `SharedGuard` reads entries, an
//! `ExclusiveGuard` changes them. Also the slots the worker keeps here (flushers, sweeps in
//! progress, its start time) and the buffer saved at a clean shutdown.

use super::{Entry, Key, NO_TIME};
use crate::guc;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};

/// How many transactions of a database are sweeping now (changed under the exclusive lock).
#[repr(C)]
pub(crate) struct SweepCount {
    pub(crate) database: AtomicU32,
    pub(crate) count: AtomicI32,
}

pub(crate) const SWEEP_SLOTS: usize = 64;

#[repr(C)]
pub(crate) struct Shared {
    pub(crate) lock: *mut pg_sys::LWLock,
    pub(crate) capacity: i64,
    /// How many transactions of each database are sweeping (or deleting rows behind the
    /// API's back) now: a sweep in one database does not send another's heartbeats direct.
    pub(crate) sweeps: [SweepCount; SWEEP_SLOTS],
    /// Sweeps of databases that found no slot: they count for every database.
    pub(crate) sweeps_elsewhere: AtomicI32,
    /// When the worker first started after this memory was set up (server start or restart
    /// after a crash): the sweeper's grace period counts from there.
    pub(crate) ready_at: AtomicI64,
    /// Databases that have a flusher worker now (0: a free slot).
    pub(crate) flushers: [AtomicU32; MAX_FLUSHERS],
    /// The worker has written its database's buffer and left on SIGTERM (a planned stop),
    /// and has not started again since: only then does the postmaster save the buffer at its
    /// exit (an immediate stop also ends the postmaster with code 0, but SIGQUITs the worker).
    pub(crate) worker_left_cleanly: std::sync::atomic::AtomicBool,
    /// Leaves that could not place a "closing" mark for lack of memory: while non-zero no
    /// entry is added.
    pub(crate) unmarked_closings: AtomicI32,
    pub(crate) buffered: AtomicI64,
    pub(crate) fallbacks: AtomicI64,
    pub(crate) flushes: AtomicI64,
    pub(crate) flushed_rows: AtomicI64,
    pub(crate) evicted: AtomicI64,
    pub(crate) last_flush_at: AtomicI64,
    pub(crate) last_flush_us: AtomicI64,
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
        if slot.is_null() {
            break;
        }
        let entry = unsafe { Entry::write(slot, key, row_id, entered_at, alive_at, 0, true) };
        entry.flushed_at = flushed_at;
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

pub(crate) fn shared() -> Option<&'static Shared> {
    unsafe { (!SHARED.is_null()).then(|| &*SHARED) }
}

/// Whether this server has the buffer (the library was preloaded) and can write (it is
/// not a standby).
pub(crate) fn available() -> Option<&'static Shared> {
    shared().filter(|_| unsafe { !pg_sys::RecoveryInProgress() })
}

/// Whether this session's heartbeats are buffered.
pub(crate) fn buffering() -> bool {
    guc::heartbeat_mode() == guc::HeartbeatMode::Buffered && available().is_some()
}

/// The buffer's lock held in shared mode: entries can be read, and only their atomics
/// (`alive_at`) moved. References handed out are borrowed from the guard, so none outlives
/// the lock.
pub(crate) struct SharedGuard<'a> {
    shared: &'a Shared,
}

/// The buffer's lock held exclusively: entries can be added, changed and removed.
pub(crate) struct ExclusiveGuard<'a> {
    shared: &'a Shared,
}

pub(crate) fn lock_shared(shared: &Shared) -> SharedGuard<'_> {
    unsafe { pg_sys::LWLockAcquire(shared.lock, pg_sys::LWLockMode::LW_SHARED) };
    SharedGuard { shared }
}

pub(crate) fn lock_exclusive(shared: &Shared) -> ExclusiveGuard<'_> {
    unsafe { pg_sys::LWLockAcquire(shared.lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
    ExclusiveGuard { shared }
}

impl Drop for SharedGuard<'_> {
    fn drop(&mut self) {
        unsafe { pg_sys::LWLockRelease(self.shared.lock) };
    }
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        unsafe { pg_sys::LWLockRelease(self.shared.lock) };
    }
}

fn search(key: &Key, action: pg_sys::HASHACTION::Type, found: *mut bool) -> *mut Entry {
    unsafe { pg_sys::hash_search(TABLE, (key as *const Key).cast(), action, found) as *mut Entry }
}

fn table_len() -> i64 {
    unsafe { pg_sys::hash_get_num_entries(TABLE) as i64 }
}

/// A scan of the whole table; ended (`hash_seq_term`) when dropped before its end.
pub(crate) struct Entries<'g> {
    status: pg_sys::HASH_SEQ_STATUS,
    done: bool,
    _guard: std::marker::PhantomData<&'g ()>,
}

impl<'g> Entries<'g> {
    fn new() -> Self {
        let mut status = pg_sys::HASH_SEQ_STATUS::default();
        unsafe { pg_sys::hash_seq_init(&mut status, TABLE) };
        Entries {
            status,
            done: false,
            _guard: std::marker::PhantomData,
        }
    }
}

impl<'g> Iterator for Entries<'g> {
    type Item = &'g Entry;
    fn next(&mut self) -> Option<&'g Entry> {
        if self.done {
            return None;
        }
        let entry = unsafe { (pg_sys::hash_seq_search(&mut self.status) as *const Entry).as_ref() };
        self.done = entry.is_none();
        entry
    }
}

impl Drop for Entries<'_> {
    fn drop(&mut self) {
        if !self.done {
            unsafe { pg_sys::hash_seq_term(&mut self.status) };
        }
    }
}

impl SharedGuard<'_> {
    pub(crate) fn find(&self, key: &Key) -> Option<&Entry> {
        unsafe { search(key, pg_sys::HASHACTION::HASH_FIND, std::ptr::null_mut()).as_ref() }
    }

    pub(crate) fn entries(&self) -> Entries<'_> {
        Entries::new()
    }

    pub(crate) fn len(&self) -> i64 {
        table_len()
    }
}

/// Where `ExclusiveGuard::slot` found room for a key.
pub(crate) enum Slot<'g> {
    Occupied(&'g mut Entry),
    /// A new slot, whose contents beyond the key are not initialised yet: `fill` it.
    Vacant(Vacant<'g>),
}

pub(crate) struct Vacant<'g> {
    entry: *mut Entry,
    _guard: std::marker::PhantomData<&'g mut ()>,
}

impl<'g> Vacant<'g> {
    pub(crate) fn fill(
        self,
        key: Key,
        row_id: [u8; 16],
        entered_at: i64,
        alive_at: i64,
        closers: i32,
    ) -> &'g mut Entry {
        unsafe {
            Entry::write(
                self.entry, key, row_id, entered_at, alive_at, closers, false,
            )
        }
    }
}

impl<'a> ExclusiveGuard<'a> {
    pub(crate) fn shared(&self) -> &'a Shared {
        self.shared
    }

    pub(crate) fn find(&mut self, key: &Key) -> Option<&mut Entry> {
        unsafe { search(key, pg_sys::HASHACTION::HASH_FIND, std::ptr::null_mut()).as_mut() }
    }

    /// The entry for `key`, or room for it; `None` when there is no memory left for another
    /// entry (or, with `within_capacity`, when the table holds `buffer_capacity` already).
    pub(crate) fn slot(&mut self, key: &Key, within_capacity: bool) -> Option<Slot<'_>> {
        let existing = search(key, pg_sys::HASHACTION::HASH_FIND, std::ptr::null_mut());
        if !existing.is_null() {
            return Some(Slot::Occupied(unsafe { &mut *existing }));
        }
        if within_capacity && table_len() >= self.shared.capacity {
            return None;
        }
        let mut found = false;
        let entry = search(key, pg_sys::HASHACTION::HASH_ENTER_NULL, &mut found);
        (!entry.is_null()).then_some(Slot::Vacant(Vacant {
            entry,
            _guard: std::marker::PhantomData,
        }))
    }

    pub(crate) fn remove(&mut self, key: &Key) {
        search(key, pg_sys::HASHACTION::HASH_REMOVE, std::ptr::null_mut());
    }

    /// Removes every entry for which `doomed` holds.
    pub(crate) fn remove_where(&mut self, doomed: impl Fn(&Entry) -> bool) {
        let keys: Vec<Key> = self
            .entries()
            .filter(|e| doomed(e))
            .map(|e| e.key)
            .collect();
        for key in &keys {
            self.remove(key);
        }
    }

    pub(crate) fn entries(&self) -> Entries<'_> {
        Entries::new()
    }
}

/// How many flusher workers (one per database other than the worker's) may run at once.
pub const MAX_FLUSHERS: usize = 32;

/// A flusher for `database` takes its slot; false when one already runs there (or every slot
/// is taken).
pub fn claim_flusher(database: pg_sys::Oid) -> bool {
    let Some(shared) = shared() else { return false };
    let _locked = lock_exclusive(shared);
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
    let _locked = lock_exclusive(shared);
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
    lock_exclusive(shared).remove_where(|e| e.key.database == database.to_u32() && e.closers == 0);
}

/// Databases other than `except` that have entries in the buffer, each with whether some of
/// its heartbeats wait to be written.
pub fn other_databases(except: pg_sys::Oid) -> Vec<(pg_sys::Oid, bool)> {
    let Some(shared) = shared() else {
        return Vec::new();
    };
    let locked = lock_shared(shared);
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
