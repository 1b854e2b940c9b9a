//! `flotilla dp …`: differential-privacy calculations (`flotilla-privacy`).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use flotilla_privacy::{Param, PrivacyError};
use serde::Serialize;

/// Differential-privacy commands.
#[derive(Debug, Subcommand)]
pub enum DpCommand {
    /// ε of T rounds of the Poisson-sampled Gaussian mechanism (Rényi-DP accountant, the same
    /// orders and conversion as Google's dp-accounting).
    Epsilon(EpsilonArgs),
}

/// `flotilla dp epsilon`.
#[derive(Debug, Args)]
pub struct EpsilonArgs {
    /// Poisson sampling rate q, in (0, 1]: clients per round / population.
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    sampling_rate: String,
    /// Noise multiplier σ, > 0: noise standard deviation over the L2 clip norm.
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    noise_multiplier: String,
    /// Number of rounds (steps), at least 1.
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    steps: String,
    /// δ of the (ε, δ) guarantee, in (0, 1).
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    delta: String,
    /// Print JSON: {"epsilon", "delta", "order", "sampling_rate", "noise_multiplier", "steps", …}.
    #[arg(long)]
    json: bool,
}

/// What `dp epsilon --json` prints.
#[derive(Debug, Serialize)]
struct EpsilonReport {
    epsilon: f64,
    delta: f64,
    /// The Rényi order that attains ε.
    order: f64,
    sampling_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    /// ε of one round alone at the same δ.
    round_epsilon: f64,
    accountant: &'static str,
}

/// Runs a `dp` subcommand.
pub fn run(cmd: DpCommand) -> anyhow::Result<()> {
    match cmd {
        DpCommand::Epsilon(args) => epsilon(args),
    }
}

fn flag(param: Param) -> &'static str {
    match param {
        Param::SamplingRate => "--sampling-rate",
        Param::NoiseMultiplier => "--noise-multiplier",
        Param::Steps => "--steps",
        Param::Delta => "--delta",
        _ => "argument",
    }
}

/// Parses a flag's number, naming the flag and its valid range when it is not one.
fn number(value: &str, param: Param) -> anyhow::Result<f64> {
    match value.trim().parse::<f64>() {
        Ok(v) => Ok(v),
        Err(_) => bail!(
            "{} must be a number {}, got {value:?}",
            flag(param),
            param.valid_range()
        ),
    }
}

/// Maps a validation error to a message that names the flag.
fn named(e: PrivacyError) -> anyhow::Error {
    match e {
        PrivacyError::InvalidParameter { param, value } => {
            anyhow::anyhow!(
                "{} must be {}, got {value}",
                flag(param),
                param.valid_range()
            )
        }
        other => other.into(),
    }
}

fn epsilon(args: EpsilonArgs) -> anyhow::Result<()> {
    let q = number(&args.sampling_rate, Param::SamplingRate)?;
    let sigma = number(&args.noise_multiplier, Param::NoiseMultiplier)?;
    let steps: u64 = match args.steps.trim().parse() {
        Ok(t) => t,
        Err(_) => bail!(
            "--steps must be a whole number, at least 1, got {:?}",
            args.steps
        ),
    };
    let delta = number(&args.delta, Param::Delta)?;
    flotilla_privacy::check_sampling_rate(q).map_err(named)?;
    flotilla_privacy::check_noise_multiplier(sigma).map_err(named)?;
    flotilla_privacy::check_steps(steps).map_err(named)?;
    flotilla_privacy::check_delta(delta).map_err(named)?;

    let spend = flotilla_privacy::epsilon(q, sigma, steps, delta).map_err(named)?;
    let round = flotilla_privacy::epsilon(q, sigma, 1, delta).map_err(named)?;
    let report = EpsilonReport {
        epsilon: spend.epsilon,
        delta,
        order: spend.order,
        sampling_rate: q,
        noise_multiplier: sigma,
        steps,
        round_epsilon: round.epsilon,
        accountant: "rdp",
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("writing JSON")?
        );
    } else {
        println!(
            "epsilon = {:.6} at delta = {delta:e} (Renyi order {}) after {steps} rounds with sampling rate {q} and noise multiplier {sigma}; one round alone: epsilon = {:.6}",
            report.epsilon, report.order, report.round_epsilon
        );
    }
    Ok(())
}
