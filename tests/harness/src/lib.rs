//! The test harness of webinar_sessions, one crate for the integration tests (`tests/`), the
//! main job (`examples/`) and the benchmark's shell scripts (`os_user.sh`):
//!
//! - [`cluster`]: a real PostgreSQL cluster, initdb'd into a fresh folder, running the
//!   installed `webinar_sessions` library, stopped and removed when dropped; crash, stop,
//!   restart and hot standby helpers. PostgreSQL refuses to run as root: when the tests run
//!   as root, every server program runs as `$WEBINAR_SESSIONS_TEST_OS_USER` (default
//!   `postgres`, the account Debian's server package creates).
//! - [`postgrest`]: the one way the tests call the API, shaped like a PostgREST request.
//! - [`data`]: test identities and claims, and what a call answers (`SessionStatus`).

pub mod cluster;
pub mod data;
pub mod postgrest;

pub use cluster::*;
pub use data::*;
pub use postgrest::*;
