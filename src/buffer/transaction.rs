//! What a transaction has done to the buffer, applied by its commit callbacks: the sessions
//! it found or opened enter the buffer at PRE_COMMIT, its buffered heartbeats are recorded
//! then (all or none), and its leaves, flushes and sweeps take effect at COMMIT.

use super::shmem::{lock_exclusive, lock_shared, shared, ExclusiveGuard, Shared, Slot};
use super::{now, Entry, Key};
use crate::error::{raise, Error};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

// ---------------------------------------------------------------------------------------
// What a transaction has done to the buffer, applied when it commits.
// ---------------------------------------------------------------------------------------

pub(crate) struct Opened {
    pub(crate) key: Key,
    pub(crate) row_id: [u8; 16],
    pub(crate) entered_at: i64,
    pub(crate) alive_at: i64,
}

/// A heartbeat answered from the buffer, recorded in its entry when the transaction commits.
pub(crate) struct Beat {
    pub(crate) key: Key,
    pub(crate) row_id: [u8; 16],
    pub(crate) at: i64,
    /// Written by a flush of this transaction, in that subtransaction: skipped at commit,
    /// and owed again if that subtransaction aborts or the flush did not write its row.
    pub(crate) written_in: Option<pg_sys::SubTransactionId>,
    /// Handed to a leave of this transaction, in that subtransaction, which writes it as it
    /// closes the row: at commit it counts only if the entry still names its row (else
    /// another transaction closed the row first, and the leave closed nothing, or another
    /// row); owed again if that subtransaction aborts.
    pub(crate) closed_in: Option<pg_sys::SubTransactionId>,
}

#[derive(Default)]
pub(crate) struct Pending {
    /// (subtransaction, what): undone when that subtransaction aborts.
    pub(crate) opened: Vec<(pg_sys::SubTransactionId, Opened)>,
    pub(crate) closing: Vec<(pg_sys::SubTransactionId, Key)>,
    pub(crate) beats: Vec<(pg_sys::SubTransactionId, Beat)>,
    pub(crate) collected: Vec<(pg_sys::SubTransactionId, Key, [u8; 16], i64)>,
    pub(crate) written: Vec<(pg_sys::SubTransactionId, HashSet<[u8; 16]>)>,
    pub(crate) swept: Vec<(pg_sys::SubTransactionId, HashSet<[u8; 16]>)>,
    /// Counted in `Shared::sweeps` until this transaction ends.
    pub(crate) sweeping: bool,
    /// The table was truncated (in these subtransactions): every entry of this database goes
    /// at commit.
    pub(crate) forget_all: Vec<pg_sys::SubTransactionId>,
    /// Entries this transaction added at PRE_COMMIT: (key, row, None) for one it created,
    /// removed again if it aborts after all; (key, row, Some(alive at)) for a committed entry
    /// of the same row, whose times it moves only at COMMIT, when its row update is visible
    /// (an abort then leaves the entry as the other transactions made it).
    pub(crate) tracked: Vec<(Key, [u8; 16], Option<i64>)>,
    /// The transaction called the API (any mode): it cannot be prepared.
    pub(crate) used: bool,
    /// Leaves of this transaction counted in `Shared::unmarked_closings`.
    pub(crate) unmarked_closings: i32,
    /// Set by a flush (which also holds a lock on sweep_runs until the transaction ends).
    pub(crate) flush_started: Option<std::time::Instant>,
    /// A flush of this transaction read a transaction snapshot (REPEATABLE READ or
    /// SERIALIZABLE): the sessions it did not write may be rows it cannot see, so their
    /// entries are not evicted at its commit.
    pub(crate) old_snapshot: bool,
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
            && !self.old_snapshot
    }
}

thread_local! {
    pub(crate) static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

pub(crate) fn subtransaction() -> pg_sys::SubTransactionId {
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
    let mut locked = lock_exclusive(shared);
    if commit {
        // The rows this transaction found or opened are visible now: serve their entries,
        // with the time this transaction wrote into the row.
        for (key, row_id, refreshed) in &pending.tracked {
            if let Some(entry) = locked.find(key).filter(|e| e.row_id == *row_id) {
                if let Some(alive_at) = *refreshed {
                    entry.alive_at.fetch_max(alive_at, Ordering::AcqRel);
                    entry.flushed_at = entry.flushed_at.max(alive_at);
                }
                entry.committed = true;
            }
        }
        apply_commit(&mut locked, &pending);
    } else {
        for (_, key) in &pending.closing {
            leave_ended(&mut locked, key, false);
        }
        // Failed after PRE_COMMIT (a serializable transaction's commit-time check can): the
        // entries it created name rows that will never exist. An entry it only refreshed is
        // left alone: it holds other transactions' heartbeats, which are owed to the row.
        for (key, row_id, refreshed) in &pending.tracked {
            if refreshed.is_none()
                && locked
                    .find(key)
                    .is_some_and(|e| e.row_id == *row_id && !e.committed && e.closers == 0)
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
/// entries, all or none. (A commit can still fail after this, in SERIALIZABLE's commit-time
/// check: the heartbeat then stays recorded; undoing it could take back a time another
/// transaction has been answered with meanwhile.) None can while a sweep that began after them is still open (it
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
        let locked = lock_shared(shared);
        let sweeping = sweeps_here(shared) - own_sweep > 0;
        let entries: Vec<Option<&Entry>> = beats
            .iter()
            .map(|(_, beat)| {
                locked.find(&beat.key).filter(|e| {
                    // One our own leave wrote: the entry, kept by our count of closers, still
                    // names the row only if nobody closed it before us.
                    e.row_id == beat.row_id
                        && (beat.closed_in.is_some() || (!sweeping && e.closers == 0))
                })
            })
            .collect();
        let stale = entries.iter().any(Option::is_none);
        if !stale {
            for (entry, (_, beat)) in entries.into_iter().zip(&beats) {
                if beat.closed_in.is_none() {
                    entry
                        .expect("checked")
                        .alive_at
                        .fetch_max(beat.at, Ordering::AcqRel);
                }
            }
        }
        stale
    };
    if stale {
        Error::new(
            pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "webinar_sessions: a sweep or leave changed the session while its heartbeat's transaction was open",
        )
        .detail("A sweep of this database began after the heartbeat was answered and is still open, or a leave or sweep has taken the session since.")
        .hint("Retry the heartbeat.")
        .raise();
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
                    if let Some(closed) = beat.closed_in.as_mut() {
                        adopt(closed);
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
                    if beat.closed_in.is_some_and(|c| c >= subid) {
                        beat.closed_in = None;
                    }
                }
                pending.forget_all.retain(|s| *s < subid);
                pending.collected.retain(|(s, ..)| *s < subid);
                pending.written.retain(|(s, _)| *s < subid);
                pending.swept.retain(|(s, _)| *s < subid);
                if let (false, Some(shared)) = (undone.is_empty(), shared()) {
                    let mut locked = lock_exclusive(shared);
                    for (_, key) in &undone {
                        leave_ended(&mut locked, key, false);
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
fn leave_ended(locked: &mut ExclusiveGuard, key: &Key, committed: bool) {
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

fn apply_commit(locked: &mut ExclusiveGuard, pending: &Pending) {
    let shared = locked.shared();
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
            } else if entry.closers == 0 && !pending.old_snapshot {
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
    // Swept or deleted sessions: closed or gone now. An entry a leave is counted in stays, as
    // a placeholder naming no row, until the last of those leaves ends (`leave_ended`
    // removes it then): removed now, the key's next session could enter the buffer while
    // the leave is under way, and the leave's end would take that entry, with heartbeats
    // it had answered and not yet written, for its own.
    let swept: HashSet<&[u8; 16]> = pending.swept.iter().flat_map(|(_, s)| s).collect();
    let forget_all = !pending.forget_all.is_empty();
    if !swept.is_empty() || forget_all {
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        let gone: Vec<Key> = locked
            .entries()
            .filter(|e| e.key.database == database && e.row_id != [0; 16])
            .filter(|e| forget_all || swept.contains(&e.row_id))
            .map(|e| e.key)
            .collect();
        for key in &gone {
            let leaving = locked.find(key).is_some_and(|entry| {
                entry.row_id = [0; 16];
                entry.closers != 0
            });
            if !leaving {
                locked.remove(key);
            }
        }
    }
}

/// At PRE_COMMIT: the sessions this transaction found active or opened enter the buffer
/// (unless a leave, this transaction's too, is closing them). Not at COMMIT: by then the
/// transaction is visible as committed and its row locks are about to go, so a leave or sweep
/// could close the row and finish before the entry appeared, which would then name a closed
/// row. Now they wait for this transaction's row locks, and find the entry. An entry added
/// here is served only once the COMMIT callback marks it committed: until the transaction is
/// visible, a session it opened is a row nobody else can see, which a sweep's flush would
/// skip (and then drop the entry with a heartbeat it had answered).
fn track_opened() {
    let opened = PENDING.with(|p| std::mem::take(&mut p.borrow_mut().opened));
    if opened.is_empty() {
        return;
    }
    let Some(shared) = shared() else { return };
    let mut locked = lock_exclusive(shared);
    let mut tracked = Vec::new();
    for (_, row) in &opened {
        match track(&mut locked, row) {
            Tracked::Created => tracked.push((row.key, row.row_id, None)),
            Tracked::Refresh => tracked.push((row.key, row.row_id, Some(row.alive_at))),
            Tracked::Not => {}
        }
    }
    drop(locked);
    PENDING.with(|p| p.borrow_mut().tracked.extend(tracked));
}

enum Tracked {
    /// A new entry (or one reset to this row), served once this transaction commits.
    Created,
    /// The entry names this row already: its times move at COMMIT.
    Refresh,
    Not,
}

/// Adds the entry for a row known to be active, or finds it there already.
fn track(locked: &mut ExclusiveGuard, row: &Opened) -> Tracked {
    let shared = locked.shared();
    if shared.unmarked_closings.load(Ordering::Acquire) > 0 {
        return Tracked::Not;
    }
    match locked.slot(&row.key, true) {
        // Full: this session's heartbeats stay direct (and are counted) until there is room.
        None => {
            shared.fallbacks.fetch_add(1, Ordering::Relaxed);
            Tracked::Not
        }
        Some(Slot::Occupied(entry)) if entry.closers != 0 => Tracked::Not,
        Some(Slot::Occupied(entry)) if entry.row_id == row.row_id => Tracked::Refresh,
        // One that still named an older row of the same key.
        Some(Slot::Occupied(entry)) => {
            entry.reset(row.row_id, row.entered_at, row.alive_at);
            Tracked::Created
        }
        Some(Slot::Vacant(slot)) => {
            slot.fill(row.key, row.row_id, row.entered_at, row.alive_at, 0);
            Tracked::Created
        }
    }
}

/// This transaction starts sweeping (or deleting rows): from now until it ends, heartbeats
/// take the direct path, and buffered heartbeats of transactions still open cannot commit.
/// Exclusive lock held.
pub(crate) fn begin_sweeping(shared: &Shared) {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        if !pending.sweeping {
            pending.sweeping = true;
            count_sweep(shared, 1);
        }
    });
}

/// Counts a sweeping transaction of this database in or out (exclusive lock held).
pub(crate) fn count_sweep(shared: &Shared, delta: i32) {
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
pub(crate) fn sweeps_here(shared: &Shared) -> i32 {
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let here: i32 = shared
        .sweeps
        .iter()
        .filter(|s| s.database.load(Ordering::Acquire) == database)
        .map(|s| s.count.load(Ordering::Acquire))
        .sum();
    here + shared.sweeps_elsewhere.load(Ordering::Acquire)
}

/// This transaction's buffered heartbeats that `which` selects and nobody has taken yet,
/// as the newest time per session, marked taken by `mark` (with the current
/// subtransaction): the caller writes them in the transaction.
pub(crate) fn take_own_beats(
    which: impl Fn(&Beat) -> bool,
    mark: fn(&mut Beat) -> &mut Option<pg_sys::SubTransactionId>,
) -> std::collections::HashMap<Key, i64> {
    let sub = subtransaction();
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let mut newest = std::collections::HashMap::new();
        for (_, beat) in pending.beats.iter_mut() {
            if beat.written_in.is_none() && beat.closed_in.is_none() && which(beat) {
                *mark(beat) = Some(sub);
                let at = newest.entry(beat.key).or_insert(beat.at);
                *at = (*at).max(beat.at);
            }
        }
        newest
    })
}

/// After a flush's UPDATE: this transaction's own heartbeats that the flush took in this
/// subtransaction but whose rows it did not write are owed again (so that the commit checks
/// them, and fails if their rows are closed).
pub(crate) fn return_unwritten_beats(written: &HashSet<[u8; 16]>) {
    let sub = subtransaction();
    PENDING.with(|p| {
        for (_, beat) in p.borrow_mut().beats.iter_mut() {
            if beat.written_in == Some(sub) && !written.contains(&beat.row_id) {
                beat.written_in = None;
            }
        }
    });
}

/// The transaction called the API: it cannot be prepared (in either mode: a prepared
/// transaction would hold a session's row, or the lock flushes and sweeps take, until it is
/// finished, and stall every flush and sweep of its database).
pub(crate) fn mark_used() {
    PENDING.with(|p| p.borrow_mut().used = true);
}
