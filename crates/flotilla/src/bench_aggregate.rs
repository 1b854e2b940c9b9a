//! `flotilla bench aggregate`: throughput of the aggregation kernels on K random client updates of D
//! parameters, beside a memory-bandwidth probe on the same machine.
//!
//! GB/s counts the bytes of client updates read once: K·D·4. `fedavg` is the one-at-a-time fold
//! (`FedAvg::accept` per update, then `finish`); `fedavg_batched` folds the same updates `--batch` at a
//! time with `FedAvg::accept_many` (bit-identical result, checked).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use flotilla_core::{FedAvg, aggregate::MAX_BATCH, robust};
use serde_json::{Map, Value, json};

/// `flotilla bench aggregate`.
#[derive(Debug, Args)]
pub struct AggregateArgs {
    /// Number of client updates (K).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Parameters per update (D).
    #[arg(long, default_value_t = 1_000_000)]
    params: usize,
    /// Timed repetitions per strategy; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Trimmed-mean β (fraction dropped at each end), 0 ≤ β < 0.5.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Krum's assumed number of attackers f (default ⌊K/10⌋; needs K ≥ 2f + 3).
    #[arg(long)]
    krum_f: Option<usize>,
    /// Only streaming FedAvg, each update generated on the fly into reused buffers (`--batch` of
    /// them; the K updates are never resident), to show its peak memory is O(B·D) rather than O(K·D).
    #[arg(long)]
    streaming: bool,
    /// Updates per `FedAvg::accept_many` call for `fedavg_batched` (1 ≤ B ≤ K; groups above the
    /// kernel's ceiling `MAX_BATCH` are split by it); in `--streaming` mode, 1 means `accept`.
    #[arg(long, default_value_t = MAX_BATCH)]
    batch: usize,
    /// Run only these strategies (comma-separated: fedavg, fedavg_batched, median, trimmed_mean,
    /// krum, bandwidth); all by default. For instruction counts under callgrind.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its results.
pub fn run(args: AggregateArgs) -> anyhow::Result<()> {
    let (k, d) = (args.clients, args.params);
    if k == 0 || d == 0 || args.repeats == 0 {
        bail!("--clients, --params and --repeats must be ≥ 1");
    }
    if args.batch == 0 {
        bail!("--batch must be ≥ 1");
    }
    const KNOWN: [&str; 6] = [
        "fedavg",
        "fedavg_batched",
        "median",
        "trimmed_mean",
        "krum",
        "bandwidth",
    ];
    if let Some(bad) = args.only.iter().find(|s| !KNOWN.contains(&s.as_str())) {
        bail!(
            "--only: unknown strategy {bad:?} (known: {})",
            KNOWN.join(", ")
        );
    }
    if !(0.0..0.5).contains(&args.beta) {
        bail!("--beta must be in [0, 0.5), got {}", args.beta);
    }
    let input_bytes = k
        .checked_mul(d)
        .and_then(|n| n.checked_mul(4))
        .context("--clients × --params is too large")?;
    let weights: Vec<f64> = (0..k)
        .map(|i| 10.0 + (splitmix(i as u64 ^ 0xfeed) % 91) as f64)
        .collect();
    let out = if args.streaming {
        streaming(&args, &weights, input_bytes)?
    } else {
        batch(&args, &weights, input_bytes)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print_table(&out);
    }
    Ok(())
}

/// All four strategies on K resident updates, plus the bandwidth probe.
fn batch(args: &AggregateArgs, weights: &[f64], input_bytes: usize) -> anyhow::Result<Value> {
    let (k, d) = (args.clients, args.params);
    let mut updates: Vec<Vec<f32>> = Vec::new();
    updates
        .try_reserve_exact(k)
        .context("allocating the updates")?;
    for c in 0..k {
        let mut u = Vec::new();
        u.try_reserve_exact(d)
            .with_context(|| format!("allocating {input_bytes} bytes of updates"))?;
        u.resize(d, 0.0);
        fill_update(&mut u, c as u64);
        updates.push(u);
    }
    let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
    let gb = input_bytes as f64 / 1e9;
    let mut strategies = Map::new();
    let mut record = |name: &str, times: Vec<Duration>| {
        let s = median(times);
        strategies.insert(name.into(), json!({ "seconds": s, "gb_per_s": gb / s }));
    };

    let run = |name: &str| args.only.is_empty() || args.only.iter().any(|s| s == name);

    // FedAvg one update at a time; peak memory above the resident inputs measured once.
    let mut fedavg_extra = None;
    let mut reference: Option<Vec<f64>> = None;
    if run("fedavg") {
        let rss_before = proc_status_kb("VmRSS:");
        let hwm_reset = reset_peak_rss();
        let mut check = Vec::new();
        let mut sum = Vec::new();
        let fedavg = timed(args.repeats, || {
            let mut agg = FedAvg::new(d);
            for (u, &w) in views.iter().zip(weights) {
                agg.accept(u, w)?;
            }
            check = agg.finish()?;
            sum = agg.sum().to_vec();
            Ok(())
        })?;
        fedavg_extra = match (hwm_reset, rss_before, proc_status_kb("VmHWM:")) {
            (true, Some(before), Some(hwm)) => Some(hwm.saturating_sub(before) * 1024),
            _ => None,
        };
        verify_fedavg(&check, &views, weights)?;
        reference = Some(sum);
        record("fedavg", fedavg);
    }
    // The same fold, `--batch` updates per `accept_many`; must give the same bits.
    let mut batched_extra = None;
    if run("fedavg_batched") {
        let pairs: Vec<(&[f32], f64)> =
            views.iter().copied().zip(weights.iter().copied()).collect();
        let rss_before = proc_status_kb("VmRSS:");
        let hwm_reset = reset_peak_rss();
        let mut check = Vec::new();
        let mut sum = Vec::new();
        let times = timed(args.repeats, || {
            let mut agg = FedAvg::new(d);
            for group in pairs.chunks(args.batch) {
                agg.accept_many(group)?;
            }
            check = agg.finish()?;
            sum = agg.sum().to_vec();
            Ok(())
        })?;
        batched_extra = match (hwm_reset, rss_before, proc_status_kb("VmHWM:")) {
            (true, Some(before), Some(hwm)) => Some(hwm.saturating_sub(before) * 1024),
            _ => None,
        };
        verify_fedavg(&check, &views, weights)?;
        if let Some(want) = &reference
            && want
                .iter()
                .zip(&sum)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            bail!("fedavg_batched is not bit-identical to fedavg");
        }
        record("fedavg_batched", times);
    }
    if run("median") {
        record(
            "median",
            timed(args.repeats, || {
                robust::coordinate_median(&views)?;
                Ok(())
            })?,
        );
    }
    if run("trimmed_mean") {
        record(
            "trimmed_mean",
            timed(args.repeats, || {
                robust::trimmed_mean(&views, args.beta)?;
                Ok(())
            })?,
        );
    }
    let f = args.krum_f.unwrap_or(k / 10);
    let krum_note = if !run("krum") {
        None
    } else if k >= 2 * f + 3 {
        record(
            "krum",
            timed(args.repeats, || {
                robust::krum(&views, f, 1)?;
                Ok(())
            })?,
        );
        None
    } else {
        Some(format!("krum skipped: needs K ≥ 2f + 3 = {}", 2 * f + 3))
    };
    let bw = if run("bandwidth") {
        bandwidth(&views, args.repeats.max(5))
    } else {
        Bandwidth {
            one_thread: f64::NAN,
            all_threads: f64::NAN,
            threads: 0,
        }
    };
    Ok(json!({
        "strategies": strategies,
        "bandwidth_gb_per_s": bw.all_threads,
        "bandwidth": {
            "read_all_threads_gb_per_s": bw.all_threads,
            "read_1_thread_gb_per_s": bw.one_thread,
            "threads": bw.threads,
            "what": "read-only vectorised sum over the same K·D·4 input bytes",
        },
        "clients": k,
        "params": d,
        "bytes_read": input_bytes,
        "repeats": args.repeats,
        "trimmed_mean_beta": args.beta,
        "krum_f": f,
        "krum_note": krum_note,
        "batch": args.batch,
        "max_batch": MAX_BATCH,
        "fedavg_batched_bit_identical": reference.is_some() && run("fedavg_batched"),
        "fedavg_memory": {
            "input_bytes": input_bytes,
            "peak_bytes_above_inputs": fedavg_extra,
            "peak_bytes_above_inputs_per_param": fedavg_extra.map(|b| b as f64 / d as f64),
            "batched_peak_bytes_above_inputs": batched_extra,
            "batched_peak_bytes_above_inputs_per_param": batched_extra.map(|b| b as f64 / d as f64),
            "what": "VmHWM (reset through /proc/self/clear_refs) minus VmRSS before the fold: f64 sum (+ f64 scratch when batched) + f32 result",
        },
    }))
}

/// Streaming FedAvg with `--batch` reused update buffers (filled, then folded with one `accept_many`;
/// `--batch 1` uses `accept`); times the folds only, reports the peak RSS.
fn streaming(args: &AggregateArgs, weights: &[f64], input_bytes: usize) -> anyhow::Result<Value> {
    let d = args.params;
    let b = args.batch.min(args.clients);
    let mut bufs: Vec<Vec<f32>> = Vec::new();
    for _ in 0..b {
        let mut buf = Vec::new();
        buf.try_reserve_exact(d)
            .context("allocating the update buffers")?;
        buf.resize(d, 0f32);
        bufs.push(buf);
    }
    let mut folds = Vec::new();
    for _ in 0..args.repeats {
        let mut agg = FedAvg::new(d);
        let mut t = Duration::ZERO;
        for (g, ws) in weights.chunks(b).enumerate() {
            for (i, buf) in bufs.iter_mut().take(ws.len()).enumerate() {
                fill_update(buf, (g * b + i) as u64);
            }
            let t0 = Instant::now();
            if b == 1 {
                agg.accept(&bufs[0], ws[0])?;
            } else {
                let group: Vec<(&[f32], f64)> = bufs
                    .iter()
                    .map(Vec::as_slice)
                    .zip(ws.iter().copied())
                    .collect();
                agg.accept_many(&group)?;
            }
            t += t0.elapsed();
        }
        let t0 = Instant::now();
        drop(agg.finish()?);
        folds.push(t + t0.elapsed());
    }
    let s = median(folds);
    let peak = proc_status_kb("VmHWM:").map(|kb| kb * 1024);
    Ok(json!({
        "strategies": { "fedavg": { "seconds": s, "gb_per_s": input_bytes as f64 / 1e9 / s } },
        "mode": "streaming: updates generated --batch at a time into reused buffers; time of accept/accept_many + finish only",
        "clients": args.clients,
        "params": d,
        "batch": b,
        "bytes_read": input_bytes,
        "peak_rss_bytes": peak,
        "peak_rss_over_input_bytes": peak.map(|p| p as f64 / input_bytes as f64),
        "peak_rss_per_param_bytes": peak.map(|p| p as f64 / d as f64),
    }))
}

/// Checks the fold against a plain f64 weighted mean on a sample of coordinates, so a fast wrong
/// kernel cannot post a number.
fn verify_fedavg(got: &[f32], views: &[&[f32]], weights: &[f64]) -> anyhow::Result<()> {
    let total: f64 = weights.iter().sum();
    let step = (got.len() / 997).max(1);
    for j in (0..got.len()).step_by(step) {
        let want = views
            .iter()
            .zip(weights)
            .map(|(u, w)| f64::from(u[j]) * w)
            .sum::<f64>()
            / total;
        if (f64::from(got[j]) - want).abs() > 1e-6 * want.abs().max(1.0) {
            bail!("FedAvg result wrong at {j}: {} vs {want}", got[j]);
        }
    }
    Ok(())
}

/// Runs `f` `repeats` times and returns each duration.
fn timed(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            f()?;
            Ok(t0.elapsed())
        })
        .collect()
}

/// Median of the durations, in seconds.
fn median(mut t: Vec<Duration>) -> f64 {
    t.sort();
    let n = t.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        t[n / 2].as_secs_f64()
    } else {
        (t[n / 2 - 1] + t[n / 2]).as_secs_f64() / 2.0
    }
}

/// Results of the read-bandwidth probe.
struct Bandwidth {
    one_thread: f64,
    all_threads: f64,
    threads: usize,
}

/// Read bandwidth: a vectorised sum over all the input bytes, on one thread and on every core
/// (contiguous shares, scoped threads); best of `repeats`.
fn bandwidth(views: &[&[f32]], repeats: usize) -> Bandwidth {
    let bytes: usize = views.iter().map(|v| v.len() * 4).sum();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let best = |t: usize| -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..repeats {
            let t0 = Instant::now();
            let total: f32 = std::thread::scope(|s| {
                let per = views.len().div_ceil(t);
                let handles: Vec<_> = views
                    .chunks(per.max(1))
                    .map(|part| s.spawn(move || part.iter().map(|v| lane_sum(v)).sum::<f32>()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            std::hint::black_box(total);
            best = best.min(t0.elapsed().as_secs_f64());
        }
        bytes as f64 / 1e9 / best
    };
    Bandwidth {
        one_thread: best(1),
        all_threads: best(threads),
        threads,
    }
}

/// Sum over 16 independent lanes, so it vectorises and is bound by memory, not by add latency.
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = v.chunks_exact(16);
    for c in &mut it {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// Client `c`'s update: uniform in [−1, 1), deterministic.
fn fill_update(u: &mut [f32], c: u64) {
    let mut s = splitmix(c.wrapping_add(0x5eed));
    for x in u.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *x = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    }
}

/// SplitMix64 finaliser (seeding).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// A `kB` field of /proc/self/status (Linux), if readable.
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0); false if that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Human-readable output.
fn print_table(out: &Value) {
    println!("{:<14} {:>10} {:>10}", "strategy", "seconds", "GB/s");
    if let Some(map) = out["strategies"].as_object() {
        for (name, r) in map {
            println!(
                "{name:<14} {:>10.4} {:>10.2}",
                r["seconds"].as_f64().unwrap_or(f64::NAN),
                r["gb_per_s"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let rest: Map<String, Value> = out
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "strategies")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(rest)).unwrap_or_default()
    );
}
