//! Throughput measurements for the trainers (synthetic data).
//!
//! ```text
//! cargo run --release -p flotilla-ml --example ml_bench            # all
//! cargo run --release -p flotilla-ml --example ml_bench -- logreg  # one of: logreg, fed, det, mlp, cnn
//! ```

use std::time::Instant;

use flotilla_ml::{FitConfig, ModelKind, ModelSpec, Samples, build};

fn synthetic(n: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        for d in 0..dim {
            x.push(next() + if d % classes == c { 0.5 } else { 0.0 });
        }
        y.push(c as u32);
    }
    (x, y)
}

fn logreg_fit(samples: usize) {
    let (dim, classes) = (64, 10);
    let (x, y) = synthetic(samples, dim, classes, 1);
    let idx: Vec<u32> = (0..samples as u32).collect();
    let data = Samples {
        features: &x,
        feature_len: dim,
        labels: &y,
        indices: &idx,
    };
    let spec = ModelSpec {
        kind: ModelKind::LogReg,
        input_shape: vec![dim],
        num_classes: classes,
    };
    let mut t = build(&spec, 0).expect("build");
    let global = t.parameters();
    let iters = 2000;
    for i in 0..50 {
        t.fit(
            &data,
            &FitConfig {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                seed: i,
                max_grad_norm: None,
            },
        )
        .expect("fit");
    }
    let start = Instant::now();
    for i in 0..iters {
        t.fit(
            &data,
            &FitConfig {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                seed: i,
                max_grad_norm: None,
            },
        )
        .expect("fit");
    }
    let fit_us = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
    let start = Instant::now();
    for i in 0..iters {
        t.set_parameters(&global).expect("set");
        t.fit(
            &data,
            &FitConfig {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                seed: i,
                max_grad_norm: None,
            },
        )
        .expect("fit");
        std::hint::black_box(t.parameters());
    }
    let round_us = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
    let steps = samples.div_ceil(32);
    println!(
        "logreg 64->10, {samples} samples, batch 32, 1 epoch ({steps} steps): fit {fit_us:.1} us/call \
         ({:.1} us/step); set+fit+get {round_us:.1} us",
        fit_us / steps as f64
    );
}

/// 50 rounds x 10 clients of ~144 digits-sized samples, sequential, plus a central evaluation.
fn federation() {
    let (dim, classes, clients, per_client) = (64, 10, 10, 144);
    let (x, y) = synthetic(clients * per_client + 360, dim, classes, 2);
    let spec = ModelSpec {
        kind: ModelKind::LogReg,
        input_shape: vec![dim],
        num_classes: classes,
    };
    let start = Instant::now();
    let mut t = build(&spec, 0).expect("build");
    let mut global = t.parameters();
    let test_idx: Vec<u32> =
        ((clients * per_client) as u32..(clients * per_client + 360) as u32).collect();
    for round in 0..50u64 {
        let mut sum = vec![0.0f32; global.len()];
        for c in 0..clients {
            let idx: Vec<u32> = ((c * per_client) as u32..((c + 1) * per_client) as u32).collect();
            let data = Samples {
                features: &x,
                feature_len: dim,
                labels: &y,
                indices: &idx,
            };
            t.set_parameters(&global).expect("set");
            t.fit(
                &data,
                &FitConfig {
                    epochs: 1,
                    batch_size: 32,
                    learning_rate: 0.1,
                    seed: round * 100 + c as u64,
                    max_grad_norm: None,
                },
            )
            .expect("fit");
            for (s, p) in sum.iter_mut().zip(t.parameters()) {
                *s += p / clients as f32;
            }
        }
        global = sum;
        t.set_parameters(&global).expect("set");
        let data = Samples {
            features: &x,
            feature_len: dim,
            labels: &y,
            indices: &test_idx,
        };
        std::hint::black_box(t.evaluate(&data).expect("eval"));
    }
    println!(
        "federation logreg: 50 rounds x 10 clients x {per_client} samples (1 thread, + eval each round): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}

fn image_model(kind: ModelKind, label: &str) {
    let (n, dim, classes) = (640, 784, 10);
    let (x, y) = synthetic(n, dim, classes, 3);
    let idx: Vec<u32> = (0..n as u32).collect();
    let data = Samples {
        features: &x,
        feature_len: dim,
        labels: &y,
        indices: &idx,
    };
    let shape = if kind == ModelKind::Cnn {
        vec![1, 28, 28]
    } else {
        vec![784]
    };
    let spec = ModelSpec {
        kind,
        input_shape: shape,
        num_classes: classes,
    };
    let mut t = build(&spec, 0).expect("build");
    t.fit(
        &data,
        &FitConfig {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.01,
            seed: 0,
            max_grad_norm: None,
        },
    )
    .expect("warmup");
    let epochs = 3;
    let start = Instant::now();
    t.fit(
        &data,
        &FitConfig {
            epochs,
            batch_size: 32,
            learning_rate: 0.01,
            seed: 1,
            max_grad_norm: None,
        },
    )
    .expect("fit");
    let train = (n * epochs as usize) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    t.evaluate(&data).expect("eval");
    let eval = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "{label} ({} params): train {train:.0} samples/s (batch 32), eval {eval:.0} samples/s",
        t.layout().len()
    );
}

/// Prints the SHA-256 of the parameters after a fixed CNN and MLP fit: run twice (or in two
/// profiles) and compare to check bit-identical results across processes.
fn determinism() {
    let (n, dim, classes) = (96, 784, 10);
    let (x, y) = synthetic(n, dim, classes, 4);
    let idx: Vec<u32> = (0..n as u32).collect();
    let data = Samples {
        features: &x,
        feature_len: dim,
        labels: &y,
        indices: &idx,
    };
    for (kind, shape) in [
        (ModelKind::Cnn, vec![1, 28, 28]),
        (ModelKind::Mlp { hidden: 32 }, vec![784]),
    ] {
        let mut t = build(
            &ModelSpec {
                kind,
                input_shape: shape,
                num_classes: classes,
            },
            5,
        )
        .expect("build");
        t.fit(
            &data,
            &FitConfig {
                epochs: 2,
                batch_size: 32,
                learning_rate: 0.05,
                seed: 9,
                max_grad_norm: None,
            },
        )
        .expect("fit");
        println!(
            "det {kind}: {}",
            flotilla_core::params_sha256(&t.parameters())
        );
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let all = which.is_empty();
    if all || which == "logreg" {
        logreg_fit(14);
        logreg_fit(144);
    }
    if all || which == "fed" {
        federation();
    }
    if all || which == "mlp" {
        image_model(ModelKind::Mlp { hidden: 128 }, "mlp 784-128-10");
    }
    if all || which == "det" {
        determinism();
    }
    if all || which == "cnn" {
        image_model(ModelKind::Cnn, "cnn");
    }
}
