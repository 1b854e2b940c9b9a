//! flotilla-secagg's integration tests, one test binary (`it`): the SecAgg+ protocol, its
//! properties and adversarial inputs.
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-secagg
//! --test it file::`). A test file moved here replaces its `mod common;` with `use crate::common;`.
#![forbid(unsafe_code)]

mod adversarial;
mod common;
mod properties;
mod protocol;
mod quantized;
mod round_aggregator;
