//! `flotilla bench secagg`: one SecAgg+ round (flotilla-secagg) with N simulated clients in this
//! process, every message encoded to bytes and decoded on the other side.
//!
//! Clients are simulated on `--workers` threads (default: all cores, as Flower's simulation uses
//! them); each client's work is timed on its own (`client_seconds_*`), and the server's work
//! (decoding, summing, routing, reconstruction, unmasking; one server, behind a lock) is timed
//! separately (`server_seconds`). `round_seconds` is the wall time of the whole simulated round —
//! every client and the server on this machine, which is how the Flower peer script runs too — and
//! `round_seconds_critical_path` is what a deployment with clients on their own devices would see:
//! server time plus the slowest client in each stage. Dropouts (`--dropout F`) leave after sharing
//! their keys and before sending their masked input, the costlier case for the server (their mask
//! keys are reconstructed and their pair masks removed). Generating each client's synthetic update
//! is not timed (that is training, not secure aggregation).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use flotilla_secagg::{Client, ClientId, ClientMessage, Params, Server, ServerMessage};
use serde_json::json;

/// Arguments of `flotilla bench secagg`.
#[derive(Debug, clap::Args)]
pub struct SecaggArgs {
    /// Clients in the round.
    #[arg(long)]
    clients: usize,
    /// Parameters (vector length) per update.
    #[arg(long)]
    params: usize,
    /// Fraction of clients that drop out after sharing keys, before their masked input.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Threads the server uses to expand masks (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Threads that simulate clients (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Graph degree k (default: the crate's recommendation for N, ≈ 3·log2 N).
    #[arg(long)]
    neighbours: Option<usize>,
    /// Threshold t (default: k/2 + 1).
    #[arg(long)]
    threshold: Option<usize>,
    /// Quantize each coordinate to this many bits (stochastic rounding) and sum in the smallest
    /// ring that holds the cohort's sum (16 bits for 8-bit values and ≤ 256 clients); default: the
    /// 32-bit fixed-point encoding.
    #[arg(long)]
    quantization_bits: Option<u8>,
    /// Seed of the synthetic updates, the dropout choice and the clients' secrets.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Synthetic update in [-1.2, 1.2] (clip range 1: some coordinates are clipped), written into `out`
/// (one buffer per worker, reused: a fresh 4 bytes × D per client would time the allocator).
fn update(seed: u64, client: u64, out: &mut [f32]) {
    let base = splitmix(seed ^ client.wrapping_mul(0xA24B_AED4_963E_E407));
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((splitmix(base ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32) * 2.4 - 1.2;
    }
}

/// Per-client bookkeeping of the benchmark.
#[derive(Default, Clone, Copy)]
struct Tally {
    seconds: f64,
    stage_seconds: [f64; 4],
    up: usize,
    down: usize,
}

/// Runs `work` for every index in `items` on `workers` threads; `work` (given its worker's index)
/// returns the client's message bytes and its timed seconds, which are handed to the server under
/// a lock.
fn stage<T: Send, C: Send>(
    workers: usize,
    items: &mut [(T, C)],
    server: &Mutex<(Server, f64)>,
    work: impl Fn(usize, &T, &mut C) -> anyhow::Result<Option<(ClientId, Vec<u8>, f64)>> + Sync,
) -> anyhow::Result<Vec<(ClientId, usize, f64)>> {
    let per = items.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks_mut(per)
            .enumerate()
            .map(|(w, chunk)| {
                let work = &work;
                s.spawn(move || -> anyhow::Result<Vec<(ClientId, usize, f64)>> {
                    let mut out = Vec::new();
                    for (t, c) in chunk.iter_mut() {
                        let Some((id, bytes, secs)) = work(w, t, c)? else {
                            continue;
                        };
                        let mut guard = server
                            .lock()
                            .map_err(|_| anyhow::anyhow!("server lock poisoned"))?;
                        let t0 = Instant::now();
                        guard.0.receive(id, &bytes)?;
                        guard.1 += t0.elapsed().as_secs_f64();
                        out.push((id, bytes.len(), secs));
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client worker panicked"))??,
            );
        }
        Ok(all)
    })
}

/// Runs the benchmark.
pub fn run(args: SecaggArgs) -> anyhow::Result<()> {
    ensure!(
        (0.0..0.5).contains(&args.dropout),
        "--dropout must be in [0, 0.5), got {}",
        args.dropout
    );
    let n = args.clients;
    let d = args.params;
    let rec = Params::recommended(n, d, 1.0).context("secure-aggregation parameters")?;
    let k = args.neighbours.unwrap_or(rec.neighbours());
    let t = args.threshold.unwrap_or(k / 2 + 1);
    let params = Params::new(n, t, k, d, 1.0)
        .and_then(|p| p.with_quantization_bits(args.quantization_bits))
        .context("secure-aggregation parameters")?;
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
    let threads = args.threads.unwrap_or(cores);
    let workers = args.workers.unwrap_or(cores);
    let round = 1u64;
    let n_drop = (args.dropout * n as f64).round() as usize;
    let mut order: Vec<u64> = (0..n as u64).collect();
    order.sort_by_key(|&i| splitmix(args.seed ^ 0xD509 ^ i));
    let dropped: BTreeSet<ClientId> = order[..n_drop].iter().map(|&i| ClientId(i)).collect();
    let mut graph_seed = [0u8; 32];
    graph_seed[..8].copy_from_slice(&splitmix(args.seed).to_le_bytes());

    let started = Instant::now();
    let mut server = Server::new(params, round, graph_seed);
    server.set_threads(threads);
    let server = Mutex::new((server, 0.0f64));
    let lock = || {
        server
            .lock()
            .map_err(|_| anyhow::anyhow!("server lock poisoned"))
    };
    let timed = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        let t0 = Instant::now();
        f()?;
        lock()?.1 += t0.elapsed().as_secs_f64();
        Ok(())
    };

    // Stage 0: clients are created and advertise keys.
    let mut items: Vec<(ClientId, Option<(Client, Tally)>)> =
        (0..n as u64).map(|i| (ClientId(i), None)).collect();
    let seed = args.seed;
    let record = |tally: &mut Tally, stage: usize, secs: f64, up: usize, down: usize| {
        tally.seconds += secs;
        tally.stage_seconds[stage] += secs;
        tally.up += up;
        tally.down += down;
    };
    stage(workers, &mut items, &server, |_, &id, slot| {
        let t0 = Instant::now();
        let mut secret = [0u8; 32];
        for (j, c) in secret.chunks_mut(8).enumerate() {
            c.copy_from_slice(&splitmix(seed ^ (id.0 << 8) ^ j as u64 ^ 0x5EC).to_le_bytes());
        }
        let c = Client::new(params, id, round, secret);
        let bytes = ClientMessage::AdvertiseKeys(c.advertise()).to_bytes();
        let secs = t0.elapsed().as_secs_f64();
        let mut tally = Tally::default();
        record(&mut tally, 0, secs, bytes.len(), 0);
        *slot = Some((c, tally));
        Ok(Some((id, bytes, secs)))
    })?;

    // Stage 1.
    let mut roster = Vec::new();
    timed(&mut || {
        roster = ServerMessage::Roster(lock()?.0.close_advertise()?).to_bytes();
        Ok(())
    })?;
    stage(workers, &mut items, &server, |_, &id, slot| {
        let Some((c, tally)) = slot else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let ServerMessage::Roster(r) = ServerMessage::from_bytes(&roster, &params)? else {
            bail!("expected a roster")
        };
        let bytes = ClientMessage::ShareKeys(c.handle_roster(&r)?).to_bytes();
        let secs = t0.elapsed().as_secs_f64();
        record(tally, 1, secs, bytes.len(), roster.len());
        Ok(Some((id, bytes, secs)))
    })?;

    // Stage 2: survivors mask their updates; the plain sum is kept per worker (untimed).
    let mut bundles = std::collections::BTreeMap::new();
    timed(&mut || {
        bundles = lock()?
            .0
            .close_share_keys()?
            .into_iter()
            .map(|(id, b)| (id, ServerMessage::Shares(b).to_bytes()))
            .collect();
        Ok(())
    })?;
    // Per worker (its lock is never contended): the plain-sum accumulator of the correctness check
    // and the buffer the synthetic updates are generated into.
    let plain_parts: Vec<Mutex<(Vec<f64>, Vec<f32>)>> = (0..workers.max(1))
        .map(|_| Mutex::new((Vec::new(), Vec::new())))
        .collect();
    stage(workers, &mut items, &server, |w, &id, slot| {
        let Some((c, tally)) = slot else {
            return Ok(None);
        };
        if dropped.contains(&id) {
            return Ok(None);
        }
        let Some(bundle) = bundles.get(&id) else {
            return Ok(None);
        };
        let mut part = plain_parts[w]
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let (acc, x) = &mut *part;
        if acc.is_empty() {
            acc.resize(d, 0.0);
            x.resize(d, 0.0);
        }
        update(seed, id.0, x);
        for (s, v) in acc.iter_mut().zip(x.iter()) {
            *s += f64::from(*v).clamp(-1.0, 1.0);
        }
        let t0 = Instant::now();
        let ServerMessage::Shares(b) = ServerMessage::from_bytes(bundle, &params)? else {
            bail!("expected shares")
        };
        c.handle_shares(&b)?;
        let bytes = ClientMessage::MaskedInput(c.masked_input(x)?).to_bytes();
        let secs = t0.elapsed().as_secs_f64();
        record(tally, 2, secs, bytes.len(), bundle.len());
        Ok(Some((id, bytes, secs)))
    })?;
    let plain_sum = plain_parts
        .into_iter()
        .map(|m| {
            m.into_inner()
                .map(|(acc, _)| acc)
                .map_err(|_| anyhow::anyhow!("poisoned"))
        })
        .collect::<anyhow::Result<Vec<Vec<f64>>>>()?
        .into_iter()
        .filter(|v| !v.is_empty())
        .reduce(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(s, v)| *s += v);
            a
        })
        .unwrap_or_else(|| vec![0.0; d]);

    // Stage 3.
    let mut requests = std::collections::BTreeMap::new();
    timed(&mut || {
        requests = lock()?
            .0
            .close_masked_input()?
            .into_iter()
            .map(|(id, r)| (id, ServerMessage::UnmaskRequest(r).to_bytes()))
            .collect();
        Ok(())
    })?;
    stage(workers, &mut items, &server, |_, &id, slot| {
        let Some((c, tally)) = slot else {
            return Ok(None);
        };
        let Some(req) = requests.get(&id) else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let ServerMessage::UnmaskRequest(r) = ServerMessage::from_bytes(req, &params)? else {
            bail!("expected a request")
        };
        let bytes = ClientMessage::Unmask(c.handle_unmask(&r)?).to_bytes();
        let secs = t0.elapsed().as_secs_f64();
        record(tally, 3, secs, bytes.len(), req.len());
        Ok(Some((id, bytes, secs)))
    })?;
    let t0 = Instant::now();
    let agg = lock()?.0.finish()?;
    let finish_s = t0.elapsed().as_secs_f64();
    let round_s = started.elapsed().as_secs_f64();
    let server_s = lock()?.1 + finish_s;

    let contributors = n - n_drop;
    ensure!(
        agg.contributors.len() == contributors,
        "contributors {} != {contributors}",
        agg.contributors.len()
    );
    let max_err = agg
        .sum
        .iter()
        .zip(&plain_sum)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    let correct = max_err <= agg.error_bound * (1.0 + 1e-9) + 1e-9;
    ensure!(
        correct,
        "aggregate off by {max_err}, bound {}",
        agg.error_bound
    );

    let live: Vec<Tally> = items
        .iter()
        .filter(|(id, _)| !dropped.contains(id))
        .filter_map(|(_, s)| s.as_ref().map(|(_, t)| *t))
        .collect();
    let mean =
        |f: &dyn Fn(&Tally) -> f64| live.iter().map(f).sum::<f64>() / live.len().max(1) as f64;
    let stage_max: f64 = (0..4)
        .map(|s| {
            live.iter()
                .map(|t| t.stage_seconds[s])
                .fold(0.0f64, f64::max)
        })
        .sum();
    let client_mean = mean(&|t| t.seconds);
    let client_max = live.iter().map(|t| t.seconds).fold(0.0f64, f64::max);
    let up = mean(&|t| t.up as f64);
    let down = mean(&|t| t.down as f64);
    let plain = (d * 4) as f64;
    let report = json!({
        "clients": n,
        "params": d,
        "dropout": args.dropout,
        "dropped": n_drop,
        "neighbours_k": params.neighbours(),
        "threshold_t": params.threshold(),
        "quantization_bits": params.quantization_bits(),
        "ring_bits": params.ring_bits(),
        "server_threads": threads,
        "client_workers": workers,
        "round_seconds": round_s,
        "round_seconds_critical_path": server_s + stage_max,
        "server_seconds": server_s,
        "server_finish_seconds": finish_s,
        "client_seconds_mean": client_mean,
        "client_seconds_max": client_max,
        "client_stage_seconds_mean": (0..4).map(|s| mean(&|t| t.stage_seconds[s])).collect::<Vec<f64>>(),
        "bytes_per_client": up,
        "download_bytes_per_client": down,
        "plain_bytes_per_client": plain,
        "expansion": up / plain,
        "max_abs_error": max_err,
        "error_bound": agg.error_bound,
        "correct": correct,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "SecAgg+ round: {n} clients × {d} params, {n_drop} dropped, k = {}, t = {}",
            params.neighbours(),
            params.threshold()
        );
        println!(
            "  round {round_s:.3} s (critical path {:.3} s), server {server_s:.3} s (finish {finish_s:.3} s on {threads} threads)",
            server_s + stage_max
        );
        println!(
            "  client mean {client_mean:.4} s (by stage {:.4?}), max {client_max:.4} s; upload {up:.0} B/client vs {plain:.0} B plain ({:.4}×)",
            (0..4)
                .map(|s| mean(&|t| t.stage_seconds[s]))
                .collect::<Vec<f64>>(),
            up / plain
        );
        println!(
            "  max |error| {max_err:.3e} ≤ bound {:.3e}",
            agg.error_bound
        );
    }
    Ok(())
}
