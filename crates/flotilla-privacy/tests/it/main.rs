//! flotilla-privacy's integration tests, one test binary (`it`): the RDP accountant against
//! dp-accounting and its properties.
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-privacy
//! --test it file::`).
#![forbid(unsafe_code)]

mod properties;
mod reference;
