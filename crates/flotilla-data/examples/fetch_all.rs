//! Fetches every dataset into the default data directory (or the directories
//! given as arguments: `cargo run -p flotilla-data --example fetch_all -- [DATA_DIR] [NAMES...]`)
//! and prints timings and sizes.

use std::path::PathBuf;
use std::time::Instant;

use flotilla_data::{DatasetName, FetchEvent, default_data_dir, fetch, load};

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir: PathBuf = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(default_data_dir);
    let names: Vec<DatasetName> = {
        let given: Vec<String> = args.collect();
        if given.is_empty() {
            DatasetName::ALL.to_vec()
        } else {
            given.iter().map(|s| s.parse()).collect::<Result<_, _>>()?
        }
    };
    for name in names {
        let t = Instant::now();
        let out = fetch(name, &dir, &mut |e| match e {
            FetchEvent::Step { message, .. } => println!("  [{name}] {message}"),
            FetchEvent::Bytes { .. } => {}
            FetchEvent::Done {
                already_present, ..
            } => println!("  [{name}] done (already present: {already_present})"),
        })?;
        let fetch_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let tt = load(name, &dir, &Default::default())?;
        let load_s = t.elapsed().as_secs_f64();
        let size = out.dir.as_deref().map(dir_size).unwrap_or(0);
        println!(
            "{name}: fetch {fetch_s:.1}s, {:.1} MiB on disk, load {load_s:.2}s, train {} / test {}, groups {}",
            size as f64 / (1 << 20) as f64,
            tt.train.len(),
            tt.test.len(),
            tt.train.group_names.len()
        );
    }
    Ok(())
}
