//! `flotilla bench …`: measurements that write JSON, so figures in BENCHMARKS.md come from a command.
//!
//! Each benchmark lives in its own module (`bench_*.rs`) and adds one variant here.

use clap::Subcommand;

#[path = "bench_coordinator.rs"]
mod bench_coordinator;
#[path = "bench_secagg.rs"]
mod bench_secagg;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load-test a running coordinator from this separate process: check-ins/s with latency, and
    /// update ingest MB/s with the server's memory (`--server-pid`).
    Coordinator(bench_coordinator::CoordinatorArgs),
    /// Aggregation throughput (fedavg, median, trimmed_mean, krum) on K updates of D parameters, in
    /// GB/s of updates read, beside a memory-bandwidth probe; FedAvg's peak memory.
    Aggregate(crate::bench_aggregate::AggregateArgs),
    /// One SecAgg+ round (flotilla-secagg) with N simulated clients × D parameters and a dropout
    /// fraction: round, server and per-client seconds, bytes per client vs the plain upload.
    Secagg(bench_secagg::SecaggArgs),
}

/// Runs one benchmark.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Coordinator(args) => bench_coordinator::run(args),
        BenchCommand::Aggregate(args) => crate::bench_aggregate::run(args),
        BenchCommand::Secagg(args) => bench_secagg::run(args),
    }
}
