//! The one vocabulary: defaults and bounds in one place, moved keys named with their new place,
//! simulation-only keys refused by a job and stripped from a scenario.

use flotilla_core::round::StageKind;
use flotilla_spec::{JobConfig, ParseError, RoundConfig, SIMULATION_ONLY, strip_simulation_only};

const JOB: &str = r#"
name = "digits"
seed = 42
rounds = 20
clients_per_round = 10
[model]
kind = "logreg"
dataset = "digits"
[train]
learning_rate = 0.1
"#;

fn job(text: &str) -> Result<JobConfig, ParseError> {
    JobConfig::from_job_toml(text)
}

fn err(text: &str) -> String {
    job(text).unwrap_err().to_string()
}

#[test]
fn defaults_live_here_once() {
    let j = job(JOB).unwrap();
    assert_eq!((j.train.local_epochs, j.train.batch_size), (1, 32));
    assert_eq!(j.round, RoundConfig::default());
    assert_eq!(j.tenant, "default");
    assert_eq!(j.min_samples, 1);
    let model = j.model.built_in().unwrap();
    assert_eq!(model.spec.input_shape, vec![64]);
    assert_eq!(model.spec.num_classes, 10);
    let p = j.policy();
    assert_eq!(p.min_report_fraction, 0.8);
    assert_eq!(p.min_clients, 10);
    assert_eq!(p.stage_deadline_ms, 600_000);
    assert_eq!(p.max_attempts, 3);
    assert_eq!(p.stages, vec![StageKind::Train]);
    p.validate().unwrap();
    let sa = job(&format!("{JOB}[secagg]\nclip_range = 0.5\n")).unwrap();
    assert_eq!(sa.policy().stages, StageKind::SECURE_AGGREGATION.to_vec());
}

#[test]
fn errors_name_the_key_with_its_bound() {
    let e = err(&JOB.replace("learning_rate = 0.1", "learning_rate = 1e3"));
    assert!(e.starts_with("train.learning_rate: must be ≤ 1e2"), "{e}");
    let e = err(&format!("{JOB}[round]\nmin_report_fraction = 0\n"));
    assert!(
        e.starts_with("round.min_report_fraction: must be in (0, 1]"),
        "{e}"
    );
    let e = err(&format!("{JOB}[round]\nover_selection = 11\n"));
    assert!(
        e.starts_with("round.over_selection: must be in [1, 10]"),
        "{e}"
    );
    let e = err(&format!("{JOB}[round]\ndeadline_seconds = 0\n"));
    assert!(e.starts_with("round.deadline_seconds:"), "{e}");
    let e = err(&format!("{JOB}[round]\nmin_clients = 3\n"));
    assert!(e.starts_with("round.min_clients:"), "{e}");
    let e = err(&format!(
        "{JOB}[secagg]\nclip_range = 1.0\nthreshold = 50\n"
    ));
    assert!(e.starts_with("secagg.threshold:"), "{e}");
    let e = err(&format!(
        "{}[secagg]\nclip_range = 1.0\n",
        JOB.replace("clients_per_round = 10", "clients_per_round = 2")
    ));
    assert!(
        e.starts_with("clients_per_round: secure aggregation"),
        "{e}"
    );
    let e = err(&JOB.replace("dataset = \"digits\"", "dataset = \"cifar\""));
    assert!(e.starts_with("model.dataset:"), "{e}");
}

#[test]
fn a_moved_key_is_refused_at_its_line_naming_its_new_place() {
    let e = err(&JOB.replace(
        "clients_per_round = 10\n",
        "clients_per_round = 10\nover_selection = 1.2\n",
    ));
    assert_eq!(
        e,
        "line 6, column 1: `over_selection` at the top level has moved: write it as `[round] over_selection`"
    );
    let e = err(&JOB.replace(
        "clients_per_round = 10\n",
        "clients_per_round = 10\nround_deadline_seconds = 60\n",
    ));
    assert!(e.ends_with("write it as `[round] deadline_seconds`"), "{e}");
    let e = err(&format!("{JOB}[round]\ndropout = 0.1\n"));
    assert!(
        e.contains("`[round] dropout` has moved: write it as `[simulation] dropout`"),
        "{e}"
    );
    let e = err(&format!(
        "{JOB}[secagg]\nclip_range = 1.0\nunmasking_dropout = 0.1\n"
    ));
    assert!(
        e.contains("write it as `[simulation] unmasking_dropout`"),
        "{e}"
    );
}

const SCENARIO_PART: &str = r#"
[data]
test_fraction = 0.2
[partition]
kind = "iid"
[simulation]
threads = 1
"#;

#[test]
fn a_job_refuses_simulation_only_keys_and_a_scenario_is_stripped_to_its_job_part() {
    let scenario = format!(
        "{}{SCENARIO_PART}",
        JOB.replace("rounds = 20\n", "rounds = 20\nclients = 100\n")
    );
    let e = err(&scenario);
    assert!(
        e.contains("`clients`, `[data]`, `[partition]`, `[simulation]` are simulation-only"),
        "{e}"
    );
    assert!(e.starts_with("line 5, column 1: "), "{e}");

    let (stripped, removed) = strip_simulation_only(&scenario).unwrap();
    assert_eq!(removed, vec!["clients", "data", "partition", "simulation"]);
    assert!(removed.iter().all(|k| SIMULATION_ONLY.contains(k)));
    assert_eq!(job(&stripped).unwrap(), job(JOB).unwrap());
    // A job file goes through unchanged.
    let (same, none) = strip_simulation_only(JOB).unwrap();
    assert_eq!((same.as_str(), none.len()), (JOB, 0));
}

#[test]
fn a_typo_still_gets_the_nearest_key() {
    let e = err(&JOB.replace("[train]", "[round]\nover_selectoin = 1.0\n[train]"));
    assert!(e.contains("did you mean `over_selection`?"), "{e}");
}

const CUSTOM: &str = r#"
name = "custom"
rounds = 3
clients_per_round = 2
[model]
initial = "init.safetensors"
[train]
learning_rate = 0.1
"#;

#[test]
fn a_model_given_by_initial_is_a_job_without_built_in_keys() {
    let j = job(CUSTOM).unwrap();
    assert_eq!(j.model.initial().unwrap().path, "init.safetensors");
    let e = err(&CUSTOM.replace("[train]", "kind = \"mlp\"\n[train]"));
    assert!(
        e.starts_with("model.kind: does not apply to a model given by model.initial"),
        "{e}"
    );
    let e = err(&CUSTOM.replace("[train]", "input_shape = [4]\n[train]"));
    assert!(e.starts_with("model.input_shape: does not apply"), "{e}");
    let e = err(&format!("{CUSTOM}[evaluation]\ndataset = \"digits\"\n"));
    assert!(
        e.starts_with(
            "evaluation.dataset: a model given by model.initial has no server-side evaluator"
        ),
        "{e}"
    );
}

#[test]
fn compression_is_validated_with_privacy_and_secagg() {
    use flotilla_spec::Compression;
    assert_eq!(job(JOB).unwrap().compression, Compression::None);
    let q4 = job(&format!(
        "{JOB}[compression]\nkind = \"quantize\"\nbits = 4\nblock = 256\n"
    ))
    .unwrap();
    assert_eq!(
        q4.compression,
        Compression::Quantize {
            bits: 4,
            block: 256
        }
    );
    let e = err(&format!(
        "{JOB}[compression]\nkind = \"quantize\"\nbits = 3\n"
    ));
    assert_eq!(e, "compression.bits: must be 8 or 4, got 3");
    let e = err(&format!(
        "{JOB}[compression]\nkind = \"quantize\"\nbitz = 4\n"
    ));
    assert!(e.contains("bits"), "{e}");
    // Quantization is allowed under secure aggregation; top-k is refused, naming the key.
    let sa = "[secagg]\nclip_range = 1.0\n";
    let q = job(&format!("{JOB}{sa}[compression]\nkind = \"quantize\"\n")).unwrap();
    assert_eq!(q.compression, Compression::Q8);
    let e = err(&format!(
        "{JOB}{sa}[compression]\nkind = \"topk\"\nfraction = 0.01\n"
    ));
    assert!(
        e.starts_with("compression.kind:") && e.contains("[secagg]"),
        "{e}"
    );
    // Central DP takes any kind; distributed DP refuses top-k.
    let dp = "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\n";
    let topk = "[compression]\nkind = \"topk\"\nfraction = 0.01\n";
    let c = job(&format!("{JOB}{dp}{topk}")).unwrap();
    assert_eq!(c.compression, Compression::TopK { fraction: 0.01 });
    let e = err(&format!(
        "{JOB}{}{topk}",
        dp.replace("[privacy]\n", "[privacy]\nmode = \"distributed\"\n")
    ));
    assert!(
        e.starts_with("compression.kind:") && e.contains("distributed"),
        "{e}"
    );
}
