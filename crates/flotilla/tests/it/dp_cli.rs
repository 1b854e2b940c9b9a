//! `flotilla dp epsilon`: JSON against Google's dp-accounting (the reference table of
//! `flotilla-privacy`), and bad input.

use std::path::Path;
use std::process::{Command, Output};

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .expect("the flotilla binary runs")
}

/// The reference row `q, sigma, steps, delta` → (epsilon, order), from the committed table.
fn reference(q: &str, sigma: &str, steps: &str, delta: &str) -> (f64, f64) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../flotilla-privacy/tests/data/dp_accounting_reference.csv");
    let table = std::fs::read_to_string(&path).expect("the reference table exists");
    table
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() == 6 && f[..4] == [q, sigma, steps, delta])
        .map(|f| (f[4].parse().expect("epsilon"), f[5].parse().expect("order")))
        .expect("the row is in the table")
}

#[test]
fn json_matches_dp_accounting() {
    for (q, sigma, steps, delta, delta_flag) in [
        ("0.01", "1.1", "1000", "1e-05", "1e-5"),
        ("0.2", "0.5", "20000", "1e-07", "1e-7"),
    ] {
        let out = flotilla(&[
            "dp",
            "epsilon",
            "--sampling-rate",
            q,
            "--noise-multiplier",
            sigma,
            "--steps",
            steps,
            "--delta",
            delta_flag,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        let (want_eps, want_order) = reference(q, sigma, steps, delta);
        let eps = json["epsilon"].as_f64().expect("epsilon");
        assert!(
            (eps - want_eps).abs() <= 0.01 * want_eps,
            "epsilon {eps} vs dp-accounting {want_eps}"
        );
        assert_eq!(json["order"].as_f64(), Some(want_order));
        assert_eq!(json["delta"].as_f64(), Some(delta_flag.parse().unwrap()));
        assert_eq!(json["steps"].as_u64(), Some(steps.parse().unwrap()));
        assert_eq!(json["sampling_rate"].as_f64(), Some(q.parse().unwrap()));
        assert_eq!(
            json["noise_multiplier"].as_f64(),
            Some(sigma.parse().unwrap())
        );
        assert!(json["round_epsilon"].as_f64().unwrap() <= eps);
    }
}

#[test]
fn text_output_names_the_numbers() {
    let out = flotilla(&[
        "dp",
        "epsilon",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1.1",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("epsilon = 1.7117"), "{text}");
    assert!(
        text.contains("delta = 1e-5") && text.contains("Renyi order 9.6"),
        "{text}"
    );
}

#[test]
fn bad_input_is_one_line_naming_the_flag_and_range() {
    let ok = [
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1.1",
        "--steps",
        "10",
        "--delta",
        "1e-5",
    ];
    let cases: [(&str, &str, &str); 9] = [
        (
            "--sampling-rate",
            "1.5",
            "--sampling-rate must be in (0, 1], got 1.5",
        ),
        (
            "--sampling-rate",
            "0",
            "--sampling-rate must be in (0, 1], got 0",
        ),
        (
            "--sampling-rate",
            "abc",
            "--sampling-rate must be a number in (0, 1], got \"abc\"",
        ),
        (
            "--noise-multiplier",
            "-1",
            "--noise-multiplier must be finite and > 0, got -1",
        ),
        (
            "--noise-multiplier",
            "inf",
            "--noise-multiplier must be finite and > 0, got inf",
        ),
        ("--steps", "0", "--steps must be at least 1, got 0"),
        (
            "--steps",
            "2.5",
            "--steps must be a whole number, at least 1, got \"2.5\"",
        ),
        ("--delta", "1", "--delta must be in (0, 1), got 1"),
        (
            "--delta",
            "-1e-5",
            "--delta must be in (0, 1), got -0.00001",
        ),
    ];
    for (flag, value, message) in cases {
        let mut args = vec!["dp", "epsilon"];
        for pair in ok.chunks(2) {
            args.extend([pair[0], if pair[0] == flag { value } else { pair[1] }]);
        }
        let out = flotilla(&args);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!("error: {message}"),
            "{flag} {value}"
        );
        assert!(out.stdout.is_empty());
    }
}
