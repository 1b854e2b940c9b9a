//! Flotilla's shared test harnesses, one copy for every crate's integration tests.
//!
//! - [`process`]: child processes killed on drop, free ports, the workspace root, the `flotilla`
//!   binary under test.
//! - [`certs`]: a throw-away CA and server certificate (what `flotilla dev-certs` writes).
//! - `pg` (feature `pg`): a fresh schema per test on the shared PostgreSQL server.
//! - `store` (feature `store`): one test body on SQLite and on PostgreSQL.
//! - `coordinator` (feature `coordinator`): a real coordinator in-process over TLS, with a gRPC
//!   client and the admin API.
//! - `federation` (feature `federation`): a `flotilla server` process and `flotilla client`
//!   processes, driven through the CLI.
//!
//! Harnesses panic on failure: a panic is how a test fails, and the message says what to look at
//! (a log file, a directory). Nothing here is published or used outside tests.
#![forbid(unsafe_code)]

pub mod certs;
#[cfg(feature = "coordinator")]
pub mod coordinator;
#[cfg(feature = "federation")]
pub mod federation;
#[cfg(feature = "pg")]
pub mod pg;
pub mod process;
#[cfg(feature = "store")]
pub mod store;
