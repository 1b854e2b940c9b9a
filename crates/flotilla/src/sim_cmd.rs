//! `flotilla sim`: run a scenario in-process, print progress, write results JSON and a plot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use flotilla_sim::scenario::Overrides;
use flotilla_sim::{Scenario, ScenarioError, SimEvent};
use indicatif::{ProgressBar, ProgressStyle};

use crate::DataDirArg;

/// Arguments of `flotilla sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// The scenario file (TOML), e.g. examples/digits.toml.
    scenario: PathBuf,
    /// Run this many rounds instead of the scenario's.
    #[arg(long)]
    rounds: Option<u64>,
    /// Use this seed instead of the scenario's.
    #[arg(long)]
    seed: Option<u64>,
    /// Write results as JSON here, and a convergence plot (SVG) beside it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print only the summary.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    data_dir: DataDirArg,
}

/// Reads a scenario file. Errors name the file once: TOML errors as `FILE:LINE:COLUMN: …`, the
/// others prefixed with `scenario FILE:`.
pub(crate) fn load_scenario(path: &Path, overrides: &Overrides) -> Result<Scenario> {
    Scenario::load(path, overrides).map_err(|e| match e {
        ScenarioError::Read { .. } | ScenarioError::Syntax { .. } => anyhow::Error::new(e),
        ScenarioError::Invalid { .. } => {
            anyhow::Error::new(e).context(format!("scenario {}", path.display()))
        }
    })
}

pub fn run(args: SimArgs) -> Result<()> {
    let t0 = Instant::now();
    let overrides = Overrides {
        rounds: args.rounds,
        seed: args.seed,
    };
    let scenario = load_scenario(&args.scenario, &overrides)?;
    let data_dir = args.data_dir.resolve();
    let prepared = flotilla_sim::prepare(&scenario, &data_dir)?;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(scenario.rounds)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} round {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let quiet = args.quiet;
    // indicatif drops `println` on a hidden bar (output not a terminal): print plainly then, so
    // logs and pipes still get one line per round.
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}")
        } else {
            bar.println(line)
        }
    };
    let mut observe = |e: &SimEvent| match e {
        SimEvent::Started {
            train_samples,
            test_samples,
            num_params,
            initial_accuracy,
        } => {
            if !quiet {
                say(format!(
                    "{}: {} rounds on {} ({} train / {} test samples), {} clients, {} per round, model {} ({} parameters); initial test accuracy {:.4}",
                    scenario.name,
                    scenario.rounds,
                    scenario.data.dataset,
                    train_samples,
                    test_samples,
                    scenario.clients,
                    scenario.clients_per_round,
                    scenario.model.kind,
                    num_params,
                    initial_accuracy
                ));
            }
        }
        SimEvent::Round(r) => {
            bar.set_position(r.round);
            if let (Some(acc), false) = (r.test_accuracy, quiet) {
                say(format!(
                    "round {:>4}  train_loss {:.4}  test_acc {:.4}  clients {:>3}  elapsed {:.2}s",
                    r.round, r.train_loss, acc, r.participants, r.elapsed_seconds
                ));
            }
        }
        SimEvent::RoundAbandoned {
            round,
            attempt,
            reports,
            needed,
        } => {
            if !quiet {
                say(format!(
                    "round {round:>4}  attempt {attempt} abandoned: {reports} of {needed} needed reports; retrying"
                ));
            }
        }
    };
    let outcome = flotilla_sim::run_prepared(&scenario, &prepared, &mut observe)?;
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let rss = flotilla_sim::results::peak_rss_bytes();

    if let Some(p) = &outcome.privacy {
        if let Some(why) = &p.stopped_reason {
            println!("stopped early: {why}");
        }
        println!(
            "privacy: ({:.4}, {:e})-DP after {} rounds ({} mode, q = {}, noise multiplier {})",
            p.epsilon_spent,
            p.delta,
            p.rounds,
            if p.mode == flotilla_core::dp::DpMode::Central {
                "central"
            } else {
                "distributed"
            },
            p.sampling_rate,
            p.noise_multiplier
        );
    }
    if let Some(b) = outcome.final_backdoor_success {
        println!("backdoor success on triggered test inputs: {b:.4}");
    }
    println!(
        "done: {} rounds, final test accuracy {:.4} (loss {:.4}), wall {:.2}s, peak RSS {}, model sha256 {}",
        outcome.history.len(),
        outcome.final_accuracy,
        outcome.final_loss,
        wall,
        rss.map_or("unknown".to_string(), |b| format!(
            "{:.1} MB",
            b as f64 / 1e6
        )),
        outcome.model_sha256
    );

    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let evaluated: Vec<_> = outcome
            .history
            .iter()
            .filter(|r| r.test_accuracy.is_some())
            .collect();
        let plot_path = out.with_extension("svg");
        let points: Vec<(u64, f64)> = std::iter::once((0, outcome.initial_accuracy))
            .chain(
                evaluated
                    .iter()
                    .filter_map(|r| r.test_accuracy.map(|a| (r.round, a))),
            )
            .collect();
        crate::plot::accuracy_svg(&plot_path, &scenario.name, &points)
            .with_context(|| format!("writing plot {}", plot_path.display()))?;
        let plot = plot_path.display().to_string();
        let result = flotilla_sim::results::results_json(
            &scenario,
            &args.scenario.display().to_string(),
            &outcome,
            wall,
            rss,
            Some(&plot),
        );
        let text = serde_json::to_string_pretty(&result).context("encoding results")?;
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
        if !args.quiet {
            println!("results: {}  plot: {}", out.display(), plot_path.display());
        }
    }
    Ok(())
}
