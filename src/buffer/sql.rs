//! The SQL-callable side: the buffered heartbeat, the hooks the API's functions call, the
//! flush's collection, and `buffer_stats`.

use super::shmem::{available, buffering, lock_exclusive, lock_shared, memory_bytes, shared, Slot};
use super::transaction::{
    begin_sweeping, mark_used, return_unwritten_beats, subtransaction, sweeps_here, take_own_beats,
    Beat, Opened, PENDING,
};
use super::{micros, now, session_table, timestamp, Key, NO_TIME};
use crate::error::{raise, Error};
use crate::guc;
use crate::input::checked_user;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::{
    ERRCODE_FEATURE_NOT_SUPPORTED, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
};
use pgrx::PgTupleDesc;
use pgrx::Uuid;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

// ---------------------------------------------------------------------------------------
// The SQL-callable side.
// ---------------------------------------------------------------------------------------

/// The heartbeat's buffered path, for arguments already checked: when the session is in the
/// buffer, "alive at now()" is recorded (at commit, see `record_beats`) and the session's
/// status returned; NULL when the caller must write the row. `webinar_sessions.heartbeat`
/// calls it once, after its checks; nobody else may (see `sql/privileges.sql`).
///
/// A read-only transaction (a PostgREST GET) is not answered here: its UPDATE then fails with
/// 25006 as in direct mode, since a heartbeat is a write.
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_probe", requires = ["schema"])]
fn buffer_probe(
    webinar_id: Uuid,
    user_id: Uuid,
    session_id: &str,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<pgrx::composite_type!('static, "session_status")> {
    probe(&webinar_id, &user_id, session_id, fcinfo)
}

/// The probe as 0.3.0 and earlier declared it (checking the arguments itself): kept so that
/// their install scripts (and a database not yet updated) still find it in the library. Not
/// part of the current SQL.
#[pg_extern(sql = false)]
fn buffered_heartbeat(
    webinar_id: Option<Uuid>,
    session_id: Option<&str>,
    user_id: Option<Uuid>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<pgrx::composite_type!('static, "session_status")> {
    let user = checked_user(webinar_id, session_id, user_id);
    probe(&webinar_id?, &user, session_id?, fcinfo)
}

fn probe(
    webinar_id: &Uuid,
    user_id: &Uuid,
    session_id: &str,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<PgHeapTuple<'static, AllocatedByRust>> {
    if guc::heartbeat_mode() != guc::HeartbeatMode::Buffered || unsafe { pg_sys::XactReadOnly } {
        return None;
    }
    let shared = available()?;
    let key = Key::new(webinar_id, user_id, session_id)?;
    let (row_id, entered_at, at, alive_at) = {
        let locked = lock_shared(shared);
        if sweeps_here(shared) != 0 {
            return None;
        }
        let entry = locked.find(&key)?;
        if entry.closers != 0 || entry.row_id == [0; 16] || !entry.committed {
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
        closed_in: None,
    };
    PENDING.with(|p| p.borrow_mut().beats.push((subtransaction(), beat)));
    shared.buffered.fetch_add(1, Ordering::Relaxed);
    let fields = AliveRow {
        id: Uuid::from_bytes(row_id),
        webinar_id: *webinar_id,
        session_id,
        entered_at,
        alive_at,
    };
    Some(fields.tuple(fcinfo))
}

/// What a buffered heartbeat answers. The row's shape is SQL's (`webinar_sessions.session_status`
/// in `sql/schema.sql`): its columns are filled by name, whatever their order.
struct AliveRow<'a> {
    id: Uuid,
    webinar_id: Uuid,
    session_id: &'a str,
    entered_at: i64,
    alive_at: i64,
}

impl AliveRow<'_> {
    fn tuple(&self, fcinfo: pg_sys::FunctionCallInfo) -> PgHeapTuple<'static, AllocatedByRust> {
        let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
        let kind =
            unsafe { pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc) };
        if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || tupdesc.is_null() {
            raise(
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "_buffer_probe must return a row type",
            );
        }
        let tupdesc = unsafe { PgTupleDesc::from_pg_copy(tupdesc) };
        let datums: Vec<Option<pg_sys::Datum>> = tupdesc
            .iter()
            .map(|attribute| {
                if attribute.is_dropped() {
                    return None;
                }
                match attribute.name() {
                    "id" => self.id.into_datum(),
                    "webinar_id" => self.webinar_id.into_datum(),
                    "session_id" => self.session_id.into_datum(),
                    "status" => "alive".into_datum(),
                    "entered_at" => timestamp(self.entered_at).into_datum(),
                    "last_heartbeat_at" => timestamp(self.alive_at).into_datum(),
                    "exited_at" => None,
                    "heartbeat_interval_s" => guc::HEARTBEAT_INTERVAL.get().into_datum(),
                    other => raise(
                        ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!("_buffer_probe cannot fill column {other} of its row type"),
                    ),
                }
            })
            .collect();
        unsafe { PgHeapTuple::from_datums(tupdesc, datums) }
            .expect("one datum for each column of the row type")
    }
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
///
/// Only the heartbeats of the row the entry names are handed over. A placeholder (the key's
/// row closed by another leave or a sweep still under way's commit) names no row: the times
/// it still holds belong to that closed row, and written into the key's next session they
/// would put its last heartbeat before its entry. This transaction's own buffered
/// heartbeats of such a row stay pending: they can no longer be recorded, so its commit
/// fails with 40001 (`record_beats`), as it must.
#[pg_extern(volatile, parallel_unsafe, name = "_buffer_closing")]
fn buffer_closing(
    webinar_id: Uuid,
    user_id: Uuid,
    session_id: &str,
) -> Option<TimestampWithTimeZone> {
    mark_used();
    let shared = available()?;
    let key = Key::new(&webinar_id, &user_id, session_id)?;
    let mut locked = lock_exclusive(shared);
    // Under REPEATABLE READ or SERIALIZABLE the leave's UPDATE reads the transaction's
    // snapshot, which may predate the buffered row: it would close nothing and still take
    // the row's heartbeats out of the buffer.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32
        && locked.find(&key).is_some_and(|e| e.row_id != [0; 16])
    {
        drop(locked);
        Error::new(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            "webinar_sessions: leave cannot run under REPEATABLE READ or SERIALIZABLE while the session's heartbeats are buffered",
        )
        .hint("Call it in a READ COMMITTED transaction, as PostgREST does.")
        .raise();
    }
    let entry = match locked.slot(&key, false) {
        Some(Slot::Occupied(entry)) => entry,
        Some(Slot::Vacant(slot)) => slot.fill(key, [0; 16], NO_TIME, NO_TIME, 0),
        None => {
            // No memory even for a mark: hold back every new entry until this leave ends.
            shared.unmarked_closings.fetch_add(1, Ordering::AcqRel);
            PENDING.with(|p| p.borrow_mut().unmarked_closings += 1);
            return None;
        }
    };
    // Every leave under way counts: the entry stays unserved until the last one ends.
    entry.closers += 1;
    PENDING.with(|p| p.borrow_mut().closing.push((subtransaction(), key)));
    if entry.row_id == [0; 16] {
        return None;
    }
    // This transaction's own buffered heartbeats of the row: the leave writes them.
    let row = entry.row_id;
    let own = take_own_beats(
        |beat| beat.key == key && beat.row_id == row,
        |beat| &mut beat.closed_in,
    )
    .remove(&key);
    let alive_at = entry
        .alive_at
        .load(Ordering::Acquire)
        .max(own.unwrap_or(NO_TIME));
    (alive_at > entry.flushed_at).then(|| timestamp(alive_at))
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
    let collected: Vec<(Key, [u8; 16], i64)> = {
        let mut locked = lock_exclusive(shared);
        if for_sweep {
            begin_sweeping(shared);
        }
        // Entries left behind by a dropped extension's table.
        locked.remove_where(|e| e.key.database == database && e.key.table != table);
        let rows: std::collections::HashMap<Key, [u8; 16]> = locked
            .entries()
            .filter(|e| e.key.database == database && e.row_id != [0; 16])
            .map(|e| (e.key, e.row_id))
            .collect();
        // This transaction's own buffered heartbeats of those rows: this flush writes them,
        // in the transaction. (Those of a row that has left the buffer since stay owed: the
        // commit fails on them.)
        let own = take_own_beats(
            |beat| rows.get(&beat.key) == Some(&beat.row_id),
            |beat| &mut beat.written_in,
        );
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
    // Under REPEATABLE READ or SERIALIZABLE the flush reads one snapshot, older than the
    // rows opened since: what it does not write is not taken for closed (see apply_commit).
    let old_snapshot = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        pending.sweeping |= for_sweep;
        pending.old_snapshot |= old_snapshot;
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
    return_unwritten_beats(&ids);
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
        let _locked = lock_exclusive(shared);
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
        let locked = lock_shared(shared);
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
