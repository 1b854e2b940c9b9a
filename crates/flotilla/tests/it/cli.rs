//! End-to-end tests of the `flotilla` binary: a real federation on real data, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::workspace_root;

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("the flotilla binary runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flotilla-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The acceptance scenario itself: 50 rounds of FedAvg on digits over 100 Dirichlet(0.5) clients.
#[test]
fn digits_reference_scenario_converges_and_is_bit_reproducible() {
    let dir = scratch("digits");
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    for out in [&a, &b] {
        let o = flotilla(&[
            "sim",
            "examples/digits.toml",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let (ra, rb) = (read_json(&a), read_json(&b));
    let acc = ra["final_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.85, "final accuracy {acc} < 0.85");
    assert_eq!(
        ra["model_sha256"], rb["model_sha256"],
        "same scenario and seed must give the same model"
    );
    assert_eq!(ra["model_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(ra["rounds"], 50);
    assert_eq!(ra["clients"], 100);
    assert_eq!(ra["clients_per_round"], 10);
    assert_eq!(ra["accuracy_per_round"].as_array().unwrap().len(), 50);
    assert!(ra["wall_seconds"].as_f64().unwrap() > 0.0);
    assert!(ra["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(ra["scenario"], "digits");
    let svg = std::fs::read_to_string(dir.join("a.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("polyline"),
        "plot has a line"
    );

    // A different seed gives a different model.
    let c = dir.join("c.json");
    let o = flotilla(&[
        "sim",
        "examples/digits.toml",
        "--quiet",
        "--rounds",
        "3",
        "--seed",
        "7",
        "--out",
        c.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let rc = read_json(&c);
    assert_eq!(rc["rounds"], 3);
    assert_ne!(rc["model_sha256"], ra["model_sha256"]);
}

fn scenario_with(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let base = std::fs::read_to_string(workspace_root().join("examples/digits.toml")).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, edit(base)).unwrap();
    path
}

/// Runs `sim` on a broken scenario; asserts a one-line error containing `needle` and no panic.
fn assert_refused(args: &[&str], needle: &str) {
    let o = flotilla(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: error is not one line: {err}"
    );
    assert!(
        err.contains(needle),
        "{args:?}: {err:?} does not mention {needle:?}"
    );
}

#[test]
fn bad_scenarios_get_one_line_errors_naming_the_field() {
    let dir = scratch("bad");
    type Edit = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown-key",
            Box::new(|s| s.replace("rounds = 50", "rounds = 50\nrouns = 3")),
            "rouns",
        ),
        (
            "unknown-nested-key",
            Box::new(|s| s.replace("alpha = 0.5", "alpha = 0.5\nbeta = 1")),
            "beta",
        ),
        (
            "zero-clients",
            Box::new(|s| s.replace("clients = 100", "clients = 0")),
            "clients",
        ),
        (
            "negative-rounds",
            Box::new(|s| s.replace("rounds = 50", "rounds = -3")),
            "rounds",
        ),
        (
            "zero-batch",
            Box::new(|s| s.replace("batch_size = 32", "batch_size = 0")),
            "train.batch_size",
        ),
        (
            "negative-lr",
            Box::new(|s| s.replace("learning_rate = 0.1", "learning_rate = -0.1")),
            "train.learning_rate",
        ),
        (
            "cpr-gt-clients",
            Box::new(|s| s.replace("clients_per_round = 10", "clients_per_round = 101")),
            "clients_per_round",
        ),
        (
            "unknown-dataset",
            Box::new(|s| s.replace("dataset = \"digits\"", "dataset = \"cifar\"")),
            "model.dataset",
        ),
        (
            "unknown-model",
            Box::new(|s| s.replace("kind = \"logreg\"", "kind = \"resnet\"")),
            "model.kind",
        ),
        (
            "bad-alpha",
            Box::new(|s| s.replace("alpha = 0.5", "alpha = 0")),
            "partition.alpha",
        ),
        (
            "not-toml",
            Box::new(|_| "rounds = = 3".to_string()),
            "not-toml.toml:1:",
        ),
        (
            "wrong-type",
            Box::new(|s| s.replace("rounds = 50", "rounds = \"many\"")),
            "rounds",
        ),
    ];
    for (name, edit, needle) in cases {
        let path = scenario_with(&dir, name, edit);
        assert_refused(&["sim", path.to_str().unwrap()], needle);
    }
    assert_refused(&["sim", "does/not/exist.toml"], "does/not/exist.toml");
    assert_refused(&["sim", "examples/digits.toml", "--rounds", "0"], "rounds");
}

#[test]
fn missing_data_names_the_fetch_command() {
    let empty = scratch("empty-data");
    let o = flotilla(&[
        "sim",
        "examples/fashion-mnist.toml",
        "--data-dir",
        empty.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("flotilla data fetch fashion-mnist"), "{err}");
}

#[test]
fn partition_stats_summarises_the_reference_partition() {
    let o = flotilla(&["data", "partition-stats", "examples/digits.toml"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("100 clients"), "{out}");
    assert!(out.contains("1437 assigned"), "{out}");
    let o = flotilla(&["data", "partition-stats", "examples/digits.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sizes"].as_array().unwrap().len(), 100);
    assert!(v["min_size"].as_u64().unwrap() >= 2);
}

#[test]
fn fetch_of_builtin_digits_needs_no_network() {
    let o = flotilla(&["data", "fetch", "digits"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("digits: already present"));
    assert_refused(&["data", "fetch", "cifar"], "cifar");
}

/// `[privacy]` end to end: ε and δ at the top of the results and per round, the budget stopping the
/// run early with its reason, and a bad privacy key refused by name.
#[test]
fn sim_with_privacy_reports_epsilon_and_stops_at_the_budget() {
    let dir = scratch("dp");
    let path = scenario_with(&dir, "dp", |s| {
        format!(
            "{s}\n[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\nmax_epsilon = 3.0\n"
        )
    });
    let out = dir.join("dp.json");
    let o = flotilla(&[
        "sim",
        path.to_str().unwrap(),
        "--rounds",
        "20",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("stopped early: privacy budget") && stdout.contains("privacy: ("),
        "{stdout}"
    );
    let r = read_json(&out);
    let eps = r["epsilon_spent"].as_f64().unwrap();
    assert!(eps > 0.0 && eps <= 3.0, "{r}");
    assert_eq!(r["delta"], 1e-5);
    let rounds = r["rounds"].as_u64().unwrap();
    assert!(
        (1..20).contains(&rounds),
        "the budget ends the run early: {rounds}"
    );
    // q = 10 / 100: the CLI's accountant agrees with the results.
    let want = flotilla_privacy::epsilon(0.1, 1.0, rounds, 1e-5)
        .unwrap()
        .epsilon;
    assert!((eps - want).abs() < 1e-12, "{eps} vs {want}");
    assert!(
        r["stopped_reason"]
            .as_str()
            .unwrap()
            .contains(&format!("round {}", rounds + 1))
    );
    let last = &r["history"].as_array().unwrap()[rounds as usize - 1];
    assert_eq!(last["epsilon_spent"].as_f64().unwrap(), eps);
    assert_eq!(last["dp_noise_std"], 1.0);

    let bad = scenario_with(&dir, "dp-bad", |s| {
        format!("{s}\n[privacy]\nnoise_multiplier = 1.0\nclip_norm = -1\ndelta = 1e-5\n")
    });
    assert_refused(&["sim", bad.to_str().unwrap()], "privacy.clip_norm");
}

/// `flotilla completions bash` loads in bash and registers a completion for `flotilla`; zsh and
/// fish get a script naming the subcommands.
#[test]
fn completions_load_in_bash_and_exist_for_zsh_and_fish() {
    let o = Command::new("bash")
        .args([
            "-c",
            "source <(\"$FLOTILLA\" completions bash) && complete -p flotilla",
        ])
        .env("FLOTILLA", env!("CARGO_BIN_EXE_flotilla"))
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "bash could not load the completions: {err}"
    );
    assert!(
        out.contains("complete") && out.trim_end().ends_with(" flotilla"),
        "{out}"
    );
    assert!(err.is_empty(), "loading printed errors: {err}");
    for shell in ["zsh", "fish"] {
        let o = flotilla(&["completions", shell]);
        assert!(
            o.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("enroll-token") && script.contains("completions"),
            "{shell}: {script}"
        );
    }
    let o = flotilla(&["completions", "tcsh"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("tcsh"));
}
