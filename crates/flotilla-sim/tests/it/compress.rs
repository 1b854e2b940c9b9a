//! `[compression]` in the simulator: clients' deltas cross the boundary through the codec, the bytes
//! are counted, and training still works.

use crate::common::Digits;

use flotilla_sim::{SimError, SimOutcome};

const DIGITS: Digits = Digits {
    name: "digits-compress",
    seed: 7,
    rounds: 10,
    clients: 30,
    clients_per_round: 6,
    ..Digits::DEFAULT
};

fn run(extra: &str) -> Result<SimOutcome, SimError> {
    DIGITS.run(extra)
}

#[test]
fn compressed_runs_count_fewer_bytes_and_still_learn() {
    let dense = run("").unwrap();
    let q8 = run("[compression]\nkind = \"quantize\"\nbits = 8\nblock = 64\n").unwrap();
    let q4 = run("[compression]\nkind = \"quantize\"\nbits = 4\nblock = 64\n").unwrap();
    let top = run("[compression]\nkind = \"topk\"\nfraction = 0.1\n").unwrap();
    let u = |o: &SimOutcome| o.upload.unwrap();
    // Every report is counted: 6 per round, 10 rounds (no dropouts).
    assert_eq!(u(&dense).updates, 60);
    assert_eq!(u(&q8).updates, 60);
    assert_eq!(u(&dense).ratio, 1.0);
    // logreg on digits: 650 parameters; 8 bytes of scale per 64-coordinate block.
    assert!((0.25..0.29).contains(&u(&q8).ratio), "{:?}", u(&q8));
    assert!((0.125..0.17).contains(&u(&q4).ratio), "{:?}", u(&q4));
    assert!((0.19..0.21).contains(&u(&top).ratio), "{:?}", u(&top));
    assert!(dense.final_accuracy > 0.5, "dense {}", dense.final_accuracy);
    for (name, o) in [("q8", &q8), ("q4", &q4), ("top10%", &top)] {
        assert!(
            o.final_accuracy > dense.final_accuracy - 0.1,
            "{name}: {} vs dense {}",
            o.final_accuracy,
            dense.final_accuracy
        );
    }
    // Compression changes what the server sees: not the dense run's model.
    assert_ne!(q8.model_sha256, dense.model_sha256);
    // Deterministic from the seed (the quantizer draws from the task seed).
    let again = run("[compression]\nkind = \"quantize\"\nbits = 8\nblock = 64\n").unwrap();
    assert_eq!(again.model_sha256, q8.model_sha256);
}

#[test]
fn secure_rounds_quantize_before_masking_and_fedbuff_is_refused() {
    let secure = "[secagg]\nclip_range = 0.5\n";
    let plain = run(secure).unwrap();
    let q8 = run(&format!(
        "{secure}[compression]\nkind = \"quantize\"\nbits = 8\n"
    ))
    .unwrap();
    // 8 bits for 6 clients: a 16-bit ring; another (coarser) encoding of the same deltas.
    assert_ne!(q8.model_sha256, plain.model_sha256);
    assert!(
        q8.final_accuracy > plain.final_accuracy - 0.1,
        "quantized {} vs 32-bit {}",
        q8.final_accuracy,
        plain.final_accuracy
    );
    let e = run(
        "[strategy]\nname = \"fedbuff\"\nbuffer_size = 3\nconcurrency = 6\n[compression]\nkind = \"quantize\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("compression.kind:"), "{e}");
}
