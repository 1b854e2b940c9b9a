//! flotilla-client's integration tests, one test binary (`it`): the client SDK against an
//! in-process fake coordinator (`common`).
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-client
//! --test it file::`). A test file moved here replaces its `mod common;` with `use crate::common;`.
#![forbid(unsafe_code)]

mod common;
mod config;
mod evaluate;
mod run;
mod tls;
