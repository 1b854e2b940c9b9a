//! flotilla's integration tests, one test binary (`it`): the `flotilla` binary: CLI, real
//! federations of processes, the README's commands (harness: `flotilla_testkit::federation`).
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla --test it
//! file::`). A test file moved here replaces its `mod common;` with `use crate::common;`.
#![forbid(unsafe_code)]

mod bench_coordinator;
mod ceilings;
mod cli;
mod common;
mod compressed_federation;
mod config_errors;
mod console;
mod custom_model;
mod dp_cli;
mod fedbuff_federation;
mod federated_evaluation;
mod federation;
mod first_hour_errors;
mod governance_audit;
mod governance_authz;
mod governance_evidence;
mod governance_policy;
mod governance_retention;
mod job_download;
mod job_memory;
mod job_reasons;
mod large_model;
mod model_registry;
mod model_rollout;
mod otlp;
mod prometheus;
mod readiness;
mod readme;
mod scenario_submit;
mod secagg_federation;
mod store_outage;
mod upload_fairness;
