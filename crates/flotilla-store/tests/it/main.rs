//! flotilla-store's integration tests, one test binary (`it`): the store on SQLite and PostgreSQL
//! (harness: `flotilla_testkit::store`).
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-store
//! --test it file::`). A test file moved here replaces its `mod common;` with `use crate::common;`.
#![forbid(unsafe_code)]

mod audit;
mod audit_wiring;
mod common;
mod config;
mod crash;
mod job_reason;
mod outage;
mod registry;
mod retention;
mod store;
mod storm;
mod upgrade;
