//! flotilla-sim's integration tests, one test binary (`it`): whole simulations: plain, strategies,
//! FedBuff, privacy, secure aggregation.
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-sim --test
//! it file::`).
#![forbid(unsafe_code)]

mod common;
mod compress;
mod fedbuff;
mod privacy;
mod scale;
mod secagg;
mod secagg_dp;
mod sim;
mod strategies;
