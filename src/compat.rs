//! Everything that differs between the PostgreSQL major versions this extension builds for
//! (the `pg15`, `pg16` and `pg18` features), in one place. Callers use these wrappers and never
//! test a version themselves.

use pgrx::pg_sys;

/// Whether `role` owns the schema `schema` (superusers own everything).
/// PostgreSQL 16 replaced the per-kind `pg_*_ownercheck` functions by `object_ownercheck`.
///
/// # Safety
/// Calls into the catalog: inside a transaction only.
pub unsafe fn owns_schema(schema: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    #[cfg(feature = "pg15")]
    {
        pg_sys::pg_namespace_ownercheck(schema, role)
    }
    #[cfg(not(feature = "pg15"))]
    {
        pg_sys::object_ownercheck(pg_sys::NamespaceRelationId, schema, role)
    }
}

/// Installs a signal handler the way PostgreSQL's own processes do. PostgreSQL 18 made
/// `pqsignal` a macro for the backend's `pqsignal_be`, which bindings see by its real name.
///
/// # Safety
/// `handler` must be async-signal-safe.
pub unsafe fn set_signal_handler(signal: u32, handler: unsafe extern "C-unwind" fn(i32)) {
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    pg_sys::pqsignal(signal as i32, Some(handler));
    #[cfg(feature = "pg18")]
    pg_sys::pqsignal_be(signal as i32, Some(handler));
}
