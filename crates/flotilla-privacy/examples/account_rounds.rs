//! Times the accountant: `cargo run --release -p flotilla-privacy --example account_rounds`.
//!
//! Prints the median wall time (of 21 runs, after one warm-up) of accounting 10,000 rounds one
//! round at a time — constant (q, σ), then alternating between two settings — each followed by
//! the final ε; also ε after every round (per-round reporting) and one fresh RDP curve.

use std::hint::black_box;
use std::time::{Duration, Instant};

use flotilla_privacy::{Budget, JobPrivacy, RdpAccountant};

fn median(mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..21)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() -> Result<(), flotilla_privacy::PrivacyError> {
    const ROUNDS: u64 = 10_000;
    let constant = median(|| {
        let mut a = RdpAccountant::new();
        for _ in 0..ROUNDS {
            a.compose(0.01, 1.1, 1).expect("valid");
        }
        black_box(a.epsilon(1e-5).expect("valid"));
    });
    let alternating = median(|| {
        let mut a = RdpAccountant::new();
        for r in 0..ROUNDS {
            let (q, sigma) = if r % 2 == 0 { (0.01, 1.1) } else { (0.02, 1.3) };
            a.compose(q, sigma, 1).expect("valid");
        }
        black_box(a.epsilon(1e-5).expect("valid"));
    });
    let budgeted = median(|| {
        let mut job = JobPrivacy::new("bench", Budget::new(1e9, 1e-5).expect("valid"));
        for _ in 0..ROUNDS {
            black_box(job.record_round(0.01, 1.1).expect("fits"));
        }
    });
    let mut a = RdpAccountant::new();
    a.compose(0.01, 1.1, ROUNDS)?;
    let per_round = median(|| {
        black_box(a.per_round(1e-5).expect("valid"));
    });
    let fresh_curve = median(|| {
        let mut a = RdpAccountant::new();
        a.compose(black_box(0.01), 1.1, 1).expect("valid");
    });
    println!("10,000 rounds, constant (q, sigma), then epsilon:          {constant:?}");
    println!("10,000 rounds, alternating two (q, sigma), then epsilon:   {alternating:?}");
    println!("10,000 rounds through JobPrivacy::record_round (check+ε):  {budgeted:?}");
    println!("epsilon after each of 10,000 rounds (per_round):          {per_round:?}");
    println!("one RDP curve computed from scratch (156 orders):          {fresh_curve:?}");
    println!("epsilon after 10,000 rounds: {:?}", a.epsilon(1e-5)?);
    Ok(())
}
