//! FedAvg fold throughput without the CLI: `FedAvg::accept` one update at a time against
//! `FedAvg::accept_many` with batches of B, on K resident updates of D parameters; checks that every
//! variant gives the same bits. Prints one JSON line per variant.
//!
//! `cargo run -p flotilla-core --profile bench --locked --example agg_kernel -- K D REPEATS B1,B2,…`
//! (B = 1 means `accept`). GB/s = K·D·4 / median seconds (bytes of updates read once).

use std::time::Instant;

use flotilla_core::FedAvg;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (k, d, repeats) = (arg(1, 100), arg(2, 1_000_000), arg(3, 5).max(1));
    let batches: Vec<usize> = args
        .get(4)
        .map(|s| s.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 16, 32, 64]);
    let updates: Vec<Vec<f32>> = (0..k).map(|c| values(c as u64, d)).collect();
    let pairs: Vec<(&[f32], f64)> = updates
        .iter()
        .enumerate()
        .map(|(c, u)| (u.as_slice(), 10.0 + (c % 91) as f64))
        .collect();
    let mut reference: Option<Vec<f64>> = None;
    for &b in &batches {
        let mut times = Vec::new();
        let mut sum = Vec::new();
        for _ in 0..repeats {
            let t0 = Instant::now();
            let mut agg = FedAvg::new(d);
            if b <= 1 {
                for &(u, w) in &pairs {
                    agg.accept(u, w)?;
                }
            } else {
                for group in pairs.chunks(b) {
                    agg.accept_many(group)?;
                }
            }
            let mean = agg.finish()?;
            times.push(t0.elapsed().as_secs_f64());
            std::hint::black_box(mean);
            sum = agg.sum().to_vec();
        }
        let identical = match &reference {
            None => {
                reference = Some(sum);
                true
            }
            Some(r) => r.iter().zip(&sum).all(|(a, b)| a.to_bits() == b.to_bits()),
        };
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "{{\"K\":{k},\"D\":{d},\"batch\":{b},\"median_s\":{med:.5},\"min_s\":{:.5},\"gb_per_s\":{:.3},\"bit_identical_to_first\":{identical}}}",
            times[0],
            (k * d * 4) as f64 / med / 1e9
        );
    }
    Ok(())
}

/// Uniform values in [−1, 1), deterministic per client.
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
