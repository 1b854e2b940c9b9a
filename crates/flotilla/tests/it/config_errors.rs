//! A TOML typo is reported at its own line with the nearest known key, by `flotilla sim`,
//! `flotilla data partition-stats` and `flotilla job submit` (through the admin API), as
//! `FILE:LINE:COLUMN: message` on one line.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{Federation, bin, workspace_root};

fn flotilla(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("the flotilla binary runs")
}

/// `examples/NAME` with `from` replaced by `to`, written to a scratch file.
fn edited(example: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("examples").join(example)).unwrap();
    assert!(text.contains(from), "{example} has no {from:?}");
    let dir = std::env::temp_dir().join(format!("flotilla-config-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(example);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

/// The command failed with exactly one line on stderr, which it returns.
fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).trim_end().to_string();
    assert!(!o.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn a_scenario_typo_names_its_own_line_and_the_key_meant() {
    // In examples/digits.toml `clients = 100` is line 8 and `clients_per_round` line 9.
    let path = edited(
        "digits.toml",
        "clients_per_round = 10",
        "clients_per_rnd = 10",
    );
    let shown = path.display().to_string();
    for args in [
        vec!["sim", &shown, "--quiet"],
        vec!["data", "partition-stats", &shown],
    ] {
        let err = one_line_error(&flotilla(&args));
        assert!(
            err.contains(&format!(
                "{shown}:9:1: unknown key `clients_per_rnd` at the top level"
            )),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("did you mean `clients_per_round`?"),
            "{args:?}: {err}"
        );
        assert!(!err.contains(":8:"), "{args:?}: {err}");
    }

    // A type error keeps its line and column and names the key.
    let path = edited("digits.toml", "rounds = 50", "rounds = \"fifty\"");
    let err = one_line_error(&flotilla(&["sim", path.to_str().unwrap()]));
    assert!(
        err.contains(&format!(
            "{}:7:10: `rounds`: invalid type: string \"fifty\"",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn a_job_typo_is_reported_with_the_file_line_and_suggestion() {
    let fed = Federation::new("config-errors", None);
    // In examples/job-digits.toml `min_clients` is line 9, in `[round]`.
    let path = edited("job-digits.toml", "min_clients = 10", "min_client = 10");
    let err = one_line_error(&fed.admin_cli(&["job", "submit", path.to_str().unwrap()]));
    assert!(
        err.contains(&format!(
            "{}:9:1: unknown key `min_client` in `[round]`",
            path.display()
        )) && err.contains("did you mean `min_clients`?"),
        "{err}"
    );
    // The good file is still accepted, and its id is the last line.
    let out = fed.admin_cli(&["job", "submit", "examples/job-digits.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every example still parses: scenarios (`flotilla sim`) and job specs (`job-*.toml`).
#[test]
fn every_example_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("job-") {
            let text = std::fs::read_to_string(&path).unwrap();
            flotilla_coordinator::JobSpec::from_toml(&text)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            let overrides = flotilla_sim::scenario::Overrides::default();
            flotilla_sim::Scenario::load(&path, &overrides)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        seen += 1;
    }
    assert!(seen >= 7, "only {seen} examples found");
}
