//! flotilla-coordinator's integration tests, one test binary (`it`): a real coordinator in-process
//! over TLS (harness: `flotilla_testkit::coordinator`).
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p
//! flotilla-coordinator --test it file::`). A test file moved here replaces its `mod common;` with
//! `use crate::common;`.
#![forbid(unsafe_code)]

mod bad_input;
mod common;
mod compressed_upload;
mod fedbuff;
mod federated_eval;
mod federation;
mod initial_model;
mod injected_model;
mod module_layers;
mod privacy;
mod prometheus;
mod secagg_round;
mod spec_errors;
mod upload_resume;
