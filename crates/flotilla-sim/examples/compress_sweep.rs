//! Accuracy and bytes of one scenario under each update compression, side by side:
//!
//! ```text
//! FLOTILLA_DATA_DIR=data cargo run -p flotilla-sim --profile bench --example compress_sweep -- \
//!     examples/fashion-mnist.toml [ROUNDS] [KINDS]
//! ```
//!
//! `KINDS` is a comma-separated subset of `none,q8,q4,top1` (default all). Loads and partitions
//! the data once, runs the scenario once per kind (same seed, same partition), and prints one JSON
//! line per run, then a summary line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use flotilla_sim::scenario::Overrides;
use flotilla_sim::{Scenario, prepare, run_prepared};
use flotilla_spec::Compression;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = PathBuf::from(
        args.get(1)
            .ok_or("usage: compress_sweep SCENARIO [ROUNDS] [KINDS]")?,
    );
    let rounds = args.get(2).map(|r| r.parse::<u64>()).transpose()?;
    let kinds = args.get(3).map_or("none,q8,q4,top1", String::as_str);
    let base = Scenario::load(&path, &Overrides { rounds, seed: None })?;
    let data_dir =
        std::env::var_os("FLOTILLA_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from);
    let prepared = prepare(&base, Path::new(&data_dir))?;
    let mut summary = Vec::new();
    for kind in kinds.split(',') {
        let compression = match kind {
            "none" => Compression::None,
            "q8" => Compression::Q8,
            "q4" => Compression::Quantize {
                bits: 4,
                block: 1024,
            },
            "top1" => Compression::TopK { fraction: 0.01 },
            other => return Err(format!("unknown kind {other}").into()),
        };
        let scenario = Scenario {
            compression,
            ..base.clone()
        };
        let started = Instant::now();
        let outcome = run_prepared(&scenario, &prepared, &mut |_| {})?;
        let wall = started.elapsed().as_secs_f64();
        let line = json!({
            "kind": kind,
            "compression": compression,
            "rounds": outcome.history.len(),
            "final_accuracy": outcome.final_accuracy,
            "accuracy_per_round": outcome.history.iter().filter_map(|r| r.test_accuracy).collect::<Vec<_>>(),
            "upload": outcome.upload,
            "wall_seconds": wall,
        });
        println!("{line}");
        summary.push(json!({
            "kind": kind,
            "final_accuracy": outcome.final_accuracy,
            "bytes_per_update": outcome.upload.map(|u| u.bytes_per_update),
            "ratio": outcome.upload.map(|u| u.ratio),
            "rounds": outcome.history.len(),
            "wall_seconds": wall,
        }));
    }
    println!("{}", json!({ "scenario": base.name, "summary": summary }));
    Ok(())
}
