//! The simulator at scale (issue 18): reports are fed as each chunk of the cohort finishes training
//! (memory O(threads × model), not O(cohort × model)) without changing any model bit, and the
//! `sampled` partition serves far more clients than the data set has samples.

use std::path::Path;

use flotilla_sim::scenario::Overrides;
use flotilla_sim::{Scenario, SimOutcome};

fn run_text(text: &str) -> SimOutcome {
    let s = Scenario::parse(text, &Overrides::default()).unwrap();
    flotilla_sim::run(&s, Path::new("unused-for-digits"), &mut |_| {}).unwrap()
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A cohort of 24 over 2 and 3 threads crosses several training chunks; over-selection makes the
/// round commit while the cohort's last reports are still being fed (they come back late);
/// SCAFFOLD's controls, dropouts and label-flipping attackers ride along.
const STRESS: &str = r#"
name = "stress"
seed = 7
rounds = 4
clients = 60
clients_per_round = 16
[round]
over_selection = 1.5
min_report_fraction = 0.5
[partition]
kind = "dirichlet"
alpha = 0.5
min_samples = 2
[model]
kind = "mlp"
dataset = "digits"
hidden = 16
[train]
local_epochs = 1
batch_size = 8
learning_rate = 0.05
[attack]
kind = "label_flip"
fraction = 0.2
[simulation]
dropout = 0.1
"#;

/// STRESS with plain FedAvg and backdoor attackers (poisoned data), on 2 threads.
fn backdoor() -> String {
    STRESS.replace(
        "kind = \"label_flip\"\nfraction = 0.2",
        "kind = \"backdoor\"\nfraction = 0.2\ntarget = 0\npoison_fraction = 0.5",
    ) + "threads = 2\n"
}

fn scaffold(threads: usize) -> String {
    format!("{STRESS}threads = {threads}\n[strategy]\nname = \"scaffold\"\n")
}

/// Model SHA-256s the simulator gave before reports were fed chunk by chunk (main 182c37b, its
/// `flotilla sim` release binary): feeding in chunks must not change a bit.
#[test]
fn committed_examples_keep_their_model_bits() {
    let cases = [
        (
            example("digits.toml"),
            "af7cba2d5050384c7397100db42479cd612132544785701e8236428517fe332f",
        ),
        (
            scaffold(2),
            "3fe40d1e5a7f5d4a6a012c7fb7790aa850f590a982a8aeffad10bf5e05f972a8",
        ),
        (
            scaffold(3),
            "3fe40d1e5a7f5d4a6a012c7fb7790aa850f590a982a8aeffad10bf5e05f972a8",
        ),
        (
            backdoor(),
            "c49f67185f9ac6c3f0b5f4e137879230baecbfe088a483072730e3123139348d",
        ),
    ];
    for (text, sha) in cases {
        let out = run_text(&text);
        assert_eq!(out.model_sha256, sha, "{text}");
    }
}

#[test]
fn sampled_partition_serves_many_clients_deterministically() {
    // 200,000 clients on a training set of 1,437 samples, each drawing 12 when selected.
    let text = r#"
name = "sampled"
seed = 3
rounds = 3
clients = 200000
clients_per_round = 40
[partition]
kind = "sampled"
samples_per_client = 12
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 4
learning_rate = 0.1
"#;
    let s = Scenario::parse(text, &Overrides::default()).unwrap();
    let prepared = flotilla_sim::prepare(&s, Path::new("unused-for-digits")).unwrap();
    assert_eq!(prepared.num_clients(), 200_000);
    assert!(prepared.partition.clients.is_empty(), "no list per client");
    assert_eq!(prepared.client_samples(199_999).len(), 12);
    assert_eq!(prepared.client_samples(200_000).len(), 0);
    let a = run_text(&format!("{text}[simulation]\nthreads = 1\n"));
    let b = run_text(&format!("{text}[simulation]\nthreads = 2\n"));
    assert_eq!(a.history.len(), 3);
    assert!(a.history.iter().all(|r| r.participants == 40));
    assert!(a.history.iter().all(|r| r.num_samples == 40 * 12));
    assert_eq!(a.model_sha256, b.model_sha256);
    assert!(a.final_accuracy > a.initial_accuracy);
}

#[test]
fn sampled_partition_is_validated() {
    let base = r#"
name = "sampled"
rounds = 1
clients = 10
clients_per_round = 2
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 4
learning_rate = 0.1
[partition]
kind = "sampled"
"#;
    let err = |extra: &str| {
        Scenario::parse(&format!("{base}{extra}"), &Overrides::default())
            .expect_err("invalid")
            .to_string()
    };
    assert!(
        err("").contains("partition.samples_per_client"),
        "{}",
        err("")
    );
    assert!(err("samples_per_client = 0\n").contains("partition.samples_per_client"));
    assert!(err("samples_per_client = 4\nalpha = 1.0\n").contains("partition.alpha"));
    // Beyond the training set: refused once the data is loaded, before anything trains.
    let s = Scenario::parse(
        &format!("{base}samples_per_client = 1438\n"),
        &Overrides::default(),
    )
    .unwrap();
    let e = flotilla_sim::prepare(&s, Path::new("unused-for-digits"))
        .err()
        .expect("too many samples per client")
        .to_string();
    assert!(
        e.contains("`samples_per_client` must be in 1..=1437"),
        "{e}"
    );
}
