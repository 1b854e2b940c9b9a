//! Encode and decode throughput of each kind on a synthetic update, as one JSON line:
//!
//! ```text
//! cargo run -p flotilla-compress --profile bench --example codec_throughput -- [DIM] [REPS]
//! ```
//!
//! Dense-equivalent MB/s (4 bytes per coordinate) so kinds compare by the update they carry. The
//! decoder is fed 1 MiB chunks through `StreamDecoder`, as a server would.

use std::time::Instant;

use flotilla_compress::{Compression, ErrorFeedback, StreamDecoder};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dim: usize = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let reps: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // A delta-like update: small, centred, a few larger coordinates.
    let update: Vec<f32> = (0..dim)
        .map(|_| {
            let u = (rng.next_u32() as f32 / u32::MAX as f32) - 0.5;
            u * u * u * 0.1
        })
        .collect();
    let mut out = vec![0f32; dim];
    let mut rows = Vec::new();
    for (name, c) in [
        ("none", Compression::None),
        ("q8", Compression::Q8),
        (
            "q4",
            Compression::Quantize {
                bits: 4,
                block: 1024,
            },
        ),
        ("top1", Compression::TopK { fraction: 0.01 }),
    ] {
        let mut ef = ErrorFeedback::new(dim);
        let (mut enc_s, mut dec_s, mut bytes) = (f64::INFINITY, f64::INFINITY, 0);
        for _ in 0..reps {
            let t = Instant::now();
            let e = ef.encode(&update, &c, &mut rng)?;
            enc_s = enc_s.min(t.elapsed().as_secs_f64());
            bytes = e.len();
            let t = Instant::now();
            let mut d = StreamDecoder::expecting(dim, c);
            for chunk in e.bytes.chunks(1 << 20) {
                d.feed(chunk, &mut out)?;
            }
            d.finish()?;
            dec_s = dec_s.min(t.elapsed().as_secs_f64());
        }
        let mb = dim as f64 * 4.0 / 1e6;
        rows.push(format!(
            "{{\"kind\":\"{name}\",\"bytes\":{bytes},\"ratio\":{:.4},\"encode_mb_s\":{:.0},\"decode_mb_s\":{:.0}}}",
            bytes as f64 / (4.0 * dim as f64 + 6.0),
            mb / enc_s,
            mb / dec_s
        ));
    }
    println!(
        "{{\"dim\":{dim},\"reps\":{reps},\"best_of\":true,\"kinds\":[{}]}}",
        rows.join(",")
    );
    Ok(())
}
