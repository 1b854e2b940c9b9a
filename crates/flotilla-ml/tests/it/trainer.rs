//! Behaviour of the trainers through the public API only.

use flotilla_ml::{
    FitConfig, LocalObjective, ModelKind, ModelSpec, Samples, Trainer, TrainerError, build,
};

/// A tiny deterministic generator for synthetic data (independent of the crate's own RNG).
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        // Irwin–Hall approximation: good enough for synthetic blobs.
        (0..12).map(|_| self.unit()).sum::<f32>() - 6.0
    }
}

struct Dataset {
    features: Vec<f32>,
    feature_len: usize,
    labels: Vec<u32>,
    indices: Vec<u32>,
}

impl Dataset {
    fn view(&self) -> Samples<'_> {
        Samples {
            features: &self.features,
            feature_len: self.feature_len,
            labels: &self.labels,
            indices: &self.indices,
        }
    }
}

/// Gaussian blobs: class `c` is centred on `6 * e_c` in the first `classes` dimensions.
fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> Dataset {
    let mut rng = SplitMix(seed);
    let mut features = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        for d in 0..dim {
            let centre = if d == c { 6.0 } else { 0.0 };
            features.push(centre + rng.normal());
        }
        labels.push(c as u32);
    }
    Dataset {
        features,
        feature_len: dim,
        labels,
        indices: (0..n as u32).collect(),
    }
}

/// 28×28 images: class 0 has a bright left half, class 1 a bright right half, plus noise.
fn halves(n: usize, seed: u64) -> Dataset {
    let mut rng = SplitMix(seed);
    let mut features = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 2) as u32;
        for _row in 0..28 {
            for col in 0..28 {
                let bright = (col < 14) == (c == 0);
                features.push(if bright { 0.8 } else { 0.1 } + 0.2 * rng.unit());
            }
        }
        labels.push(c);
    }
    Dataset {
        features,
        feature_len: 784,
        labels,
        indices: (0..n as u32).collect(),
    }
}

fn logreg(dim: usize, classes: usize, seed: u64) -> Box<dyn Trainer> {
    let spec = ModelSpec {
        kind: ModelKind::LogReg,
        input_shape: vec![dim],
        num_classes: classes,
    };
    build(&spec, seed).expect("valid spec")
}

fn cfg(epochs: u32, batch_size: usize, learning_rate: f32, seed: u64) -> FitConfig {
    FitConfig {
        epochs,
        batch_size,
        learning_rate,
        seed,
        max_grad_norm: None,
    }
}

#[test]
fn layouts_are_named_and_sized() {
    let t = logreg(64, 10, 0);
    let names: Vec<_> = t
        .layout()
        .tensors
        .iter()
        .map(|s| (s.name.as_str(), s.shape.clone()))
        .collect();
    assert_eq!(
        names,
        vec![("linear.weight", vec![64, 10]), ("linear.bias", vec![10])]
    );
    assert_eq!(t.parameters().len(), 650);

    let mlp = build(
        &ModelSpec {
            kind: ModelKind::Mlp { hidden: 32 },
            input_shape: vec![8, 8],
            num_classes: 10,
        },
        0,
    )
    .expect("mlp");
    assert_eq!(mlp.layout().len(), 64 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(mlp.parameters().len(), mlp.layout().len());

    let cnn = build(
        &ModelSpec {
            kind: ModelKind::Cnn,
            input_shape: vec![1, 28, 28],
            num_classes: 10,
        },
        0,
    )
    .expect("cnn");
    assert_eq!(cnn.layout().tensors[0].name, "conv1.weight");
    assert_eq!(cnn.layout().tensors[0].shape, vec![8, 1, 3, 3]);
    assert_eq!(cnn.layout().len(), 52_138);
    assert_eq!(cnn.parameters().len(), cnn.layout().len());

    let chars = build(
        &ModelSpec {
            kind: ModelKind::CharMlp {
                embed: 8,
                hidden: 16,
            },
            input_shape: vec![80],
            num_classes: 30,
        },
        0,
    )
    .expect("char_mlp");
    let names: Vec<_> = chars
        .layout()
        .tensors
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "embedding.weight",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias"
        ]
    );
    assert_eq!(chars.layout().len(), 30 * 8 + 640 * 16 + 16 + 16 * 30 + 30);
}

#[test]
fn initial_parameters_depend_only_on_seed() {
    let mlp = |seed| {
        build(
            &ModelSpec {
                kind: ModelKind::Mlp { hidden: 8 },
                input_shape: vec![20],
                num_classes: 3,
            },
            seed,
        )
        .expect("mlp")
        .parameters()
    };
    assert_eq!(mlp(5), mlp(5));
    assert_ne!(mlp(5), mlp(6));
    // Logistic regression is convex: it starts from zero, the textbook choice, whatever the seed.
    assert!(logreg(20, 3, 5).parameters().iter().all(|&v| v == 0.0));
}

#[test]
fn parameters_round_trip_exactly() {
    let mut t = logreg(5, 3, 1);
    let mut rng = SplitMix(9);
    let p: Vec<f32> = (0..t.layout().len())
        .map(|_| rng.normal() * 1e-3 + f32::MIN_POSITIVE)
        .collect();
    t.set_parameters(&p).expect("set");
    let back = t.parameters();
    assert_eq!(
        p.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        back.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn set_parameters_rejects_bad_input() {
    let mut t = logreg(5, 3, 1);
    let before = t.parameters();
    let n = t.layout().len();
    assert_eq!(
        t.set_parameters(&vec![0.0; n - 1]),
        Err(TrainerError::ParamLength {
            expected: n,
            got: n - 1
        })
    );
    assert!(matches!(
        t.set_parameters(&vec![0.0; n + 1]),
        Err(TrainerError::ParamLength { .. })
    ));
    let mut nan = vec![0.0; n];
    nan[16] = f32::NAN;
    match t.set_parameters(&nan) {
        Err(TrainerError::NonFiniteParam {
            index: 16, tensor, ..
        }) => assert_eq!(tensor, "linear.bias"),
        other => panic!("expected NonFiniteParam, got {other:?}"),
    }
    let mut inf = vec![0.0; n];
    inf[0] = f32::INFINITY;
    assert!(matches!(
        t.set_parameters(&inf),
        Err(TrainerError::NonFiniteParam { index: 0, .. })
    ));
    assert_eq!(
        t.parameters(),
        before,
        "a rejected set must not change the model"
    );
}

#[test]
fn logreg_learns_separable_blobs() {
    let train = blobs(400, 10, 4, 1);
    let test = blobs(200, 10, 4, 2);
    let mut t = logreg(10, 4, 3);
    let before = t.evaluate(&test.view()).expect("eval");
    let report = t.fit(&train.view(), &cfg(5, 32, 0.1, 4)).expect("fit");
    assert_eq!(report.num_samples, 400);
    assert_eq!(
        report.steps,
        5 * 13,
        "13 batches per epoch, the last one partial"
    );
    let after = t.evaluate(&test.view()).expect("eval");
    assert_eq!(after.num_samples, 200);
    assert!(
        after.accuracy > 0.95,
        "accuracy {} (before {})",
        after.accuracy,
        before.accuracy
    );
    assert!(after.loss < before.loss);
    assert!(
        report.mean_loss.is_finite() && report.mean_loss < 0.5,
        "mean loss {}",
        report.mean_loss
    );
}

#[test]
fn training_continues_after_set_parameters() {
    let data = blobs(200, 10, 4, 5);
    let mut a = logreg(10, 4, 0);
    let first = a.fit(&data.view(), &cfg(1, 16, 0.05, 1)).expect("fit");
    // A fresh trainer receives the trained parameters (as a client receives the global model).
    let mut b = logreg(10, 4, 99);
    b.set_parameters(&a.parameters()).expect("set");
    let second = b.fit(&data.view(), &cfg(1, 16, 0.05, 2)).expect("fit");
    b.set_parameters(&b.parameters()).expect("set");
    let third = b.fit(&data.view(), &cfg(1, 16, 0.05, 3)).expect("fit");
    assert!(
        second.mean_loss < first.mean_loss,
        "{} !< {}",
        second.mean_loss,
        first.mean_loss
    );
    assert!(
        third.mean_loss < second.mean_loss,
        "{} !< {}",
        third.mean_loss,
        second.mean_loss
    );
}

#[test]
fn fit_is_seed_deterministic() {
    let data = blobs(150, 12, 3, 8);
    let spec = ModelSpec {
        kind: ModelKind::Mlp { hidden: 16 },
        input_shape: vec![12],
        num_classes: 3,
    };
    let run = |fit_seed: u64| {
        let mut t = build(&spec, 42).expect("build");
        let r = t
            .fit(&data.view(), &cfg(2, 10, 0.1, fit_seed))
            .expect("fit");
        (t.parameters(), r.mean_loss)
    };
    let (p1, l1) = run(7);
    let (p2, l2) = run(7);
    assert_eq!(bits(&p1), bits(&p2));
    assert_eq!(l1.to_bits(), l2.to_bits());
    let (p3, _) = run(8);
    assert_ne!(
        bits(&p1),
        bits(&p3),
        "a different shuffle seed should change the result"
    );
}

#[test]
fn concurrent_trainers_match_sequential() {
    let data = blobs(160, 12, 3, 11);
    let spec = ModelSpec {
        kind: ModelKind::Mlp { hidden: 24 },
        input_shape: vec![12],
        num_classes: 3,
    };
    let run = |seed: u64| {
        let mut t = build(&spec, 1).expect("build");
        t.fit(&data.view(), &cfg(2, 8, 0.05, seed)).expect("fit");
        bits(&t.parameters())
    };
    let sequential: Vec<_> = (0..4).map(run).collect();
    let concurrent: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|seed| s.spawn(move || run(seed))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(sequential, concurrent);
}

#[test]
fn concurrent_cnn_trainers_match_sequential() {
    let data = halves(32, 6);
    let spec = ModelSpec {
        kind: ModelKind::Cnn,
        input_shape: vec![1, 28, 28],
        num_classes: 2,
    };
    let run = |seed: u64| {
        let mut t = build(&spec, 3).expect("build");
        t.fit(&data.view(), &cfg(1, 8, 0.05, seed)).expect("fit");
        bits(&t.parameters())
    };
    let sequential: Vec<_> = (0..2).map(run).collect();
    let concurrent: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|seed| s.spawn(move || run(seed))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(sequential, concurrent);
}

#[test]
fn cnn_trains_on_synthetic_images() {
    let data = halves(64, 3);
    let spec = ModelSpec {
        kind: ModelKind::Cnn,
        input_shape: vec![1, 28, 28],
        num_classes: 2,
    };
    let mut t = build(&spec, 0).expect("cnn");
    let before = t.evaluate(&data.view()).expect("eval");
    let r1 = t.fit(&data.view(), &cfg(1, 16, 0.05, 1)).expect("fit");
    let r2 = t.fit(&data.view(), &cfg(1, 16, 0.05, 2)).expect("fit");
    let after = t.evaluate(&data.view()).expect("eval");
    assert_eq!(r1.steps, 4);
    assert!(
        after.loss < before.loss,
        "loss {} -> {}",
        before.loss,
        after.loss
    );
    assert!(
        r2.mean_loss < r1.mean_loss,
        "{} !< {}",
        r2.mean_loss,
        r1.mean_loss
    );
    assert!(t.parameters().iter().all(|v| v.is_finite()));
}

#[test]
fn char_mlp_trains_on_synthetic_text() {
    // Next char = (last char + 1) mod vocab over windows of 10 ids.
    let (window, vocab, n) = (10usize, 12usize, 120usize);
    let mut rng = SplitMix(4);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..n {
        let start = (rng.next_u64() % vocab as u64) as usize;
        for k in 0..window {
            features.push(((start + k) % vocab) as f32);
        }
        labels.push(((start + window) % vocab) as u32);
    }
    let data = Dataset {
        features,
        feature_len: window,
        labels,
        indices: (0..n as u32).collect(),
    };
    let spec = ModelSpec {
        kind: ModelKind::CharMlp {
            embed: 4,
            hidden: 32,
        },
        input_shape: vec![window],
        num_classes: vocab,
    };
    let mut t = build(&spec, 0).expect("char_mlp");
    let before = t.evaluate(&data.view()).expect("eval");
    t.fit(&data.view(), &cfg(20, 16, 0.1, 1)).expect("fit");
    let after = t.evaluate(&data.view()).expect("eval");
    assert!(after.loss < before.loss);
    assert!(after.accuracy > 0.9, "accuracy {}", after.accuracy);

    // Features that are not ids are rejected, not truncated.
    let mut bad = data.features.clone();
    bad[3] = 2.5;
    let view = Samples {
        features: &bad,
        ..data.view()
    };
    assert!(matches!(
        t.fit(&view, &cfg(1, 4, 0.1, 0)),
        Err(TrainerError::InvalidData(_))
    ));
    bad[3] = vocab as f32;
    let view = Samples {
        features: &bad,
        ..data.view()
    };
    assert!(matches!(
        t.evaluate(&view),
        Err(TrainerError::InvalidData(_))
    ));
}

#[test]
fn invalid_specs_are_reported() {
    let err = |kind, shape: Vec<usize>, classes| {
        build(
            &ModelSpec {
                kind,
                input_shape: shape,
                num_classes: classes,
            },
            0,
        )
        .err()
        .expect("error")
    };
    let msg = err(ModelKind::Cnn, vec![784], 10).to_string();
    assert!(msg.contains("[1, 28, 28]"), "{msg}");
    assert!(
        err(ModelKind::Mlp { hidden: 0 }, vec![4], 2)
            .to_string()
            .contains("hidden")
    );
    assert!(matches!(
        err(ModelKind::LogReg, vec![], 2),
        TrainerError::InvalidSpec(_)
    ));
    assert!(matches!(
        err(ModelKind::LogReg, vec![4, 0], 2),
        TrainerError::InvalidSpec(_)
    ));
    assert!(
        err(ModelKind::LogReg, vec![4], 1)
            .to_string()
            .contains("num_classes")
    );
    assert!(matches!(
        err(
            ModelKind::CharMlp {
                embed: 0,
                hidden: 4
            },
            vec![80],
            30
        ),
        TrainerError::InvalidSpec(_)
    ));
}

#[test]
fn model_kind_parses_names() {
    assert_eq!("logreg".parse::<ModelKind>(), Ok(ModelKind::LogReg));
    assert_eq!("cnn".parse::<ModelKind>(), Ok(ModelKind::Cnn));
    assert!(matches!(
        "mlp".parse::<ModelKind>(),
        Ok(ModelKind::Mlp { .. })
    ));
    assert!(matches!(
        "char_mlp".parse::<ModelKind>(),
        Ok(ModelKind::CharMlp { .. })
    ));
    for name in ModelKind::NAMES {
        assert_eq!(name.parse::<ModelKind>().map(|k| k.name()), Ok(name));
    }
    let msg = "resnet"
        .parse::<ModelKind>()
        .expect_err("error")
        .to_string();
    assert!(
        msg.contains("resnet") && msg.contains("logreg, mlp, cnn, char_mlp"),
        "{msg}"
    );
}

#[test]
fn bad_samples_and_configs_are_errors() {
    let data = blobs(20, 4, 2, 1);
    let mut t = logreg(4, 2, 0);
    let ok = cfg(1, 4, 0.1, 0);
    let wrong_len = Samples {
        feature_len: 5,
        ..data.view()
    };
    assert!(matches!(
        t.fit(&wrong_len, &ok),
        Err(TrainerError::InvalidData(_))
    ));
    let idx = [0u32, 20];
    let out_of_range = Samples {
        indices: &idx,
        ..data.view()
    };
    assert!(matches!(
        t.fit(&out_of_range, &ok),
        Err(TrainerError::InvalidData(_))
    ));
    let labels = vec![2u32; 20];
    let bad_label = Samples {
        labels: &labels,
        ..data.view()
    };
    assert!(matches!(
        t.evaluate(&bad_label),
        Err(TrainerError::InvalidData(_))
    ));
    let empty = Samples {
        indices: &[],
        ..data.view()
    };
    assert_eq!(t.fit(&empty, &ok), Err(TrainerError::EmptyData));
    for bad in [
        cfg(0, 4, 0.1, 0),
        cfg(1, 0, 0.1, 0),
        cfg(1, 4, 0.0, 0),
        cfg(1, 4, f32::NAN, 0),
    ] {
        assert!(
            matches!(
                t.fit(&data.view(), &bad),
                Err(TrainerError::InvalidConfig(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn divergence_is_reported_and_parameters_restored() {
    let mut data = blobs(20, 4, 2, 1);
    for v in data.features.iter_mut() {
        *v *= 1e30;
    }
    let mut t = logreg(4, 2, 0);
    let before = t.parameters();
    let res = t.fit(&data.view(), &cfg(3, 4, 1e10, 0));
    assert!(matches!(res, Err(TrainerError::Diverged { .. })), "{res:?}");
    assert_eq!(bits(&t.parameters()), bits(&before));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn proximal_term_and_gradient_correction_shape_local_training() {
    let train = blobs(200, 10, 4, 1);
    let start = logreg(10, 4, 3).parameters();
    let fit = |objective: &LocalObjective<'_>| {
        let mut t = logreg(10, 4, 3);
        t.set_parameters(&start).unwrap();
        let r = t
            .fit_with(&train.view(), &cfg(3, 16, 0.1, 4), objective)
            .expect("fit");
        (t.parameters(), r.steps)
    };
    let dist = |p: &[f32]| {
        p.iter()
            .zip(&start)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (plain, steps) = fit(&LocalObjective::default());
    assert_eq!(
        fit(&LocalObjective {
            proximal_mu: 0.0,
            gradient_correction: None
        })
        .0,
        plain,
        "μ = 0 is plain SGD"
    );
    let (prox, _) = fit(&LocalObjective {
        proximal_mu: 5.0,
        gradient_correction: None,
    });
    assert!(
        dist(&prox) < 0.5 * dist(&plain),
        "FedProx μ=5 stays near the start: {} vs {}",
        dist(&prox),
        dist(&plain)
    );
    // A constant +1 correction pushes every parameter down by ≈ η per step.
    let ones = vec![1.0f32; start.len()];
    let (corrected, _) = fit(&LocalObjective {
        proximal_mu: 0.0,
        gradient_correction: Some(&ones),
    });
    let mean_shift: f64 = corrected
        .iter()
        .zip(&plain)
        .map(|(c, p)| f64::from(c - p))
        .sum::<f64>()
        / start.len() as f64;
    let want = -0.1 * steps as f64;
    assert!(
        (mean_shift - want).abs() < 0.25 * want.abs(),
        "mean shift {mean_shift}, want ≈ {want}"
    );
    // Bad objectives are errors, not panics.
    let mut t = logreg(10, 4, 3);
    let short = vec![0.0f32; 3];
    assert!(
        t.fit_with(
            &train.view(),
            &cfg(1, 16, 0.1, 4),
            &LocalObjective {
                proximal_mu: 0.0,
                gradient_correction: Some(&short)
            }
        )
        .is_err()
    );
    assert!(
        t.fit_with(
            &train.view(),
            &cfg(1, 16, 0.1, 4),
            &LocalObjective {
                proximal_mu: -1.0,
                gradient_correction: None
            }
        )
        .is_err()
    );
}

/// `max_grad_norm` bounds every SGD step: one full-batch step moves the parameters by at most
/// `lr · max_grad_norm`, while the unclipped step on the same data moves them further; a bad value
/// is refused.
#[test]
fn max_grad_norm_bounds_each_step() {
    let data = blobs(64, 16, 4, 11);
    let step = |clip: Option<f32>| {
        let mut t = logreg(16, 4, 3);
        let before = t.parameters();
        let c = FitConfig {
            max_grad_norm: clip,
            ..cfg(1, 64, 0.5, 5)
        };
        t.fit_with(&data.view(), &c, &LocalObjective::default())
            .expect("fit");
        let moved: f64 = t
            .parameters()
            .iter()
            .zip(&before)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        moved.sqrt()
    };
    let free = step(None);
    let clipped = step(Some(0.1));
    assert!(
        free > 0.5 * 0.1 * 2.0,
        "the unclipped step is not large enough to show clipping: {free}"
    );
    assert!(
        clipped <= 0.5 * 0.1 * (1.0 + 1e-4),
        "clipped step moved {clipped} > lr·max = 0.05"
    );
    assert!(
        clipped > 0.5 * 0.1 * 0.99,
        "clipping to 0.1 should move exactly lr·0.1, got {clipped}"
    );
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let mut t = logreg(16, 4, 3);
        let c = FitConfig {
            max_grad_norm: Some(bad),
            ..cfg(1, 64, 0.5, 5)
        };
        let err = t
            .fit_with(&data.view(), &c, &LocalObjective::default())
            .expect_err("bad max_grad_norm");
        assert!(
            matches!(err, TrainerError::InvalidConfig(ref m) if m.contains("max_grad_norm")),
            "{err}"
        );
    }
}

#[test]
fn evaluating_given_parameters_matches_setting_them_and_validates_them() {
    let train = blobs(400, 10, 4, 1);
    let test = blobs(200, 10, 4, 2);
    let mut t = logreg(10, 4, 3);
    t.fit(&train.view(), &cfg(2, 32, 0.1, 4)).expect("fit");
    let trained = t.parameters();
    // A fresh trainer evaluates the trained parameters as the trained one does.
    let mut other = logreg(10, 4, 9);
    let direct = other
        .evaluate_params(&trained, &test.view())
        .expect("evaluate_params");
    let installed = t.evaluate(&test.view()).expect("evaluate");
    assert_eq!(
        (direct.accuracy, direct.loss, direct.num_samples),
        (installed.accuracy, installed.loss, installed.num_samples)
    );
    assert!(matches!(
        other.evaluate_params(&trained[1..], &test.view()),
        Err(TrainerError::ParamLength { .. })
    ));
    let mut nan = trained.clone();
    nan[3] = f32::NAN;
    assert!(matches!(
        other.evaluate_params(&nan, &test.view()),
        Err(TrainerError::NonFiniteParam { index: 3, .. })
    ));
}
