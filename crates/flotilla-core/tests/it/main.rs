//! flotilla-core's integration tests, one test binary (`it`): the round machine, strategies,
//! FedBuff, secure-aggregation stages, TOML parsing.
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-core
//! --test it file::`).
#![forbid(unsafe_code)]

mod ceilings;
mod config_toml;
mod fake_secagg;
mod fedbuff;
mod fedbuff_props;
mod federated_eval;
mod round_machine;
mod round_machine_props;
mod secagg_failures;
mod secagg_props;
mod secagg_stages;
mod strategies;
mod task_failure;
