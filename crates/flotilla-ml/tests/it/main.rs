//! flotilla-ml's integration tests, one test binary (`it`): the burn trainers and parameter counts.
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-ml --test
//! it file::`).
#![forbid(unsafe_code)]

mod param_count;
mod trainer;
