//! Issue 13, item 1, against real processes: a scenario file is a job spec plus simulation-only
//! sections, so `flotilla job submit examples/digits.toml` submits the scenario's job part unchanged
//! (with one note naming what it left out), and the coordinator runs it with real clients.

use crate::common;

use std::time::Duration;

use common::*;

#[test]
fn the_digits_scenario_runs_as_a_job_on_a_coordinator() {
    let mut f = Federation::new("scenario-submit", None);
    let out = f.admin_cli(&["job", "submit", "examples/digits.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("note: examples/digits.toml is a scenario")
            && stderr.contains("clients, eval_every, data, partition, simulation"),
        "{stderr}"
    );
    let job = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    // The job part as the scenario says it: 50 rounds of 10 clients, named after the file's name.
    let s = f.status(&job);
    assert_eq!(s["name"], "digits", "{s}");
    assert_eq!(s["rounds_total"], 50, "{s}");
    let listed = f.admin_cli(&["job", "list", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("\"rounds_total\":50"), "{listed}");

    // Ten real clients (clients_per_round = 10, min_clients defaults to it) commit rounds.
    f.start_clients(10);
    let s = f.wait_for(&job, "a committed round", Duration::from_secs(300), |s| {
        s["rounds_completed"].as_u64().unwrap_or(0) >= 1
    });
    let participants = s["history"][0]["participants"]
        .as_array()
        .map_or(0, Vec::len);
    // min_report_fraction = 0.5 of clients_per_round = 10; all ten are online, so normally 10.
    assert!((5..=10).contains(&participants), "{s}");
}
