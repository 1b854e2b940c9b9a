//! Policies as code with real processes: a coordinator started with `--policy`, jobs admitted or
//! refused by it, clients whose announced attributes a job's eligibility policy does not admit,
//! `policy validate`, `policy apply|list|show`, and a server that refuses to start with a malformed
//! policy. On SQLite and PostgreSQL.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The hospital rules of `examples/policies/hospital.cedar`, plus an eligibility rule for jobs
/// named `gated`: their clients must be charging on an unmetered network.
fn policy_text() -> String {
    let hospital =
        std::fs::read_to_string(workspace_root().join("examples/policies/hospital.cedar")).unwrap();
    format!(
        "{hospital}\n@id(\"gated-charging-unmetered\")\n\
         forbid (principal, action == Flotilla::Action::\"participate\", resource)\n\
         when {{ resource.name == \"gated\" }}\n\
         unless {{ principal.charging && principal.unmetered }};\n"
    )
}

/// A digits job named `name` in `tenant`, `rounds` rounds of 2 clients.
fn job(name: &str, tenant: &str, rounds: u64) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace(
        "name = \"digits\"",
        &format!("name = \"{name}\"\ntenant = \"{tenant}\""),
    )
    .replace("rounds = 20", &format!("rounds = {rounds}"))
    .replace("clients_per_round = 10", "clients_per_round = 2")
    .replace("min_clients = 10", "min_clients = 2")
    .replace("deadline_seconds = 60", "deadline_seconds = 20")
}

/// A policy file outside the federation's directory (which the harness creates afresh).
fn policy_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "flotilla-policy-{}-{name}.cedar",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_policy_federation(name: &str, database_url: Option<String>) {
    let file = policy_file(name, &policy_text());
    let mut f = Federation::with_server(
        name,
        database_url,
        &["--policy", file.to_str().unwrap()],
        &[],
    );

    // The file is version 1, in force.
    let listed: Value =
        serde_json::from_slice(&f.admin_cli(&["policy", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["version"], 1);
    assert_eq!(listed[0]["current"], true);

    // Admission: hospital without [secagg] is refused naming the policy; another tenant runs it.
    let path = f.dir.join("hospital.toml");
    std::fs::write(&path, job("xray", "hospital", 2)).unwrap();
    let out = f.admin_cli(&["job", "submit", path.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a hospital job without secagg was admitted"
    );
    let err = stderr(&out);
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("policy hospital-requires-secagg"), "{err}");
    let jobs: Value =
        serde_json::from_slice(&f.admin_cli(&["job", "list", "--json"]).stdout).unwrap();
    assert_eq!(
        jobs.as_array().map(Vec::len),
        Some(0),
        "nothing stored: {jobs}"
    );

    // Eligibility: the gated job waits for two clients; a client on battery is told it is not
    // eligible, and never trains, while two charging, unmetered ones run the job.
    let token = f.last_line(&[
        "enroll-token",
        "create",
        "--tenant",
        "clinic",
        "--uses",
        "3",
    ]);
    let id = f.submit(&job("gated", "clinic", 3));
    f.spawn_client_with(
        "battery",
        &token,
        "2/3",
        &[
            "--attribute",
            "charging=false",
            "--attribute",
            "unmetered=true",
            "--name",
            "battery",
        ],
        "warn,flotilla_client=debug",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(f.dir.join("battery.log")).unwrap_or_default();
        if log.contains("not eligible: policy gated-charging-unmetered") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "battery client log: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let good = [
        "--attribute",
        "charging=true",
        "--attribute",
        "unmetered=yes",
    ];
    for (i, name) in ["good-0", "good-1"].into_iter().enumerate() {
        let extra = [&good[..], &["--name", name]].concat();
        f.spawn_client_with(name, &token, &format!("{i}/3"), &extra, "warn");
    }
    let s = f.wait_for(
        &id,
        "the gated job to complete",
        Duration::from_secs(240),
        completed,
    );
    let clients: Value =
        serde_json::from_slice(&f.admin_cli(&["client", "list", "--json"]).stdout).unwrap();
    let clients = clients.get("clients").cloned().unwrap_or(clients);
    let id_of = |name: &str| {
        clients
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["client_id"].as_u64())
            .unwrap_or_else(|| panic!("client {name} in {clients}"))
    };
    let battery = id_of("battery");
    let history = s["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{s}");
    for r in history {
        let who: Vec<u64> = r["participants"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert!(
            !who.contains(&battery),
            "the client on battery trained: {r}"
        );
        assert!(
            who.contains(&id_of("good-0")) && who.contains(&id_of("good-1")),
            "{r}"
        );
    }
    // A second version through the CLI; `show` prints the one in force.
    let strict = policy_file(
        &format!("{name}-v2"),
        "@id(\"no-long-jobs\")\nforbid (principal, action == Flotilla::Action::\"admit_job\", resource) when { resource.rounds > 500 };\n",
    );
    assert_eq!(
        f.last_line(&["policy", "apply", strict.to_str().unwrap()]),
        "2"
    );
    let shown = f.admin_cli(&["policy", "show"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("no-long-jobs"));
    let v1 = f.admin_cli(&["policy", "show", "1"]);
    assert!(String::from_utf8_lossy(&v1.stdout).contains("hospital-requires-secagg"));
    // Version 2 no longer has the hospital rules: the same job is admitted now.
    let admitted = f.admin_cli(&["job", "submit", path.to_str().unwrap()]);
    assert!(admitted.status.success(), "{}", stderr(&admitted));

    // Restarting with the same --policy file makes it the next version again (it is not in force).
    f.kill_server();
    f.start_server();
    let listed: Value =
        serde_json::from_slice(&f.admin_cli(&["policy", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["version"], 3, "{listed}");
    // And again with it in force: no new version.
    f.kill_server();
    f.start_server();
    let listed: Value =
        serde_json::from_slice(&f.admin_cli(&["policy", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(strict);
}

#[test]
fn policies_gate_admission_and_eligibility_sqlite() {
    run_policy_federation("policy-sqlite", None);
}

#[test]
fn policies_gate_admission_and_eligibility_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_policy") else {
        return;
    };
    run_policy_federation("policy-postgres", Some(schema.url().to_owned()));
}

/// A policy with a syntax error on line 3 and one with an unknown attribute on line 3, column 8.
const BAD_SYNTAX: &str =
    "// a comment\n@id(\"a\")\nforbid (principal, action, resource) when { 1 + };\n";
const BAD_SCHEMA: &str = "@id(\"a\")\nforbid (principal, action == Flotilla::Action::\"admit_job\", resource)\nwhen { resource.colour == \"red\" };\n";

#[test]
fn policy_validate_prints_file_line_and_column() {
    for (text, at) in [(BAD_SYNTAX, ":3:"), (BAD_SCHEMA, ":3:8:")] {
        let file = policy_file(&format!("bad{}", at.len()), text);
        let out = Command::new(bin())
            .args(["policy", "validate"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        let want = format!("{}{at}", file.display());
        assert!(err.contains(&want), "want {want} in {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        let _ = std::fs::remove_file(file);
    }
    for example in ["hospital", "job-limits", "devices", "admin"] {
        let out = Command::new(bin())
            .args(["policy", "validate"])
            .arg(workspace_root().join(format!("examples/policies/{example}.cedar")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{example}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
}

#[test]
fn a_server_with_a_malformed_policy_does_not_start() {
    let file = policy_file("server-bad", BAD_SCHEMA);
    let dir =
        std::env::temp_dir().join(format!("flotilla-policy-{}-server-bad", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(bin())
        .args(["server", "--insecure", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--policy",
        ])
        .arg(&file)
        .env("FLOTILLA_ADMIN_TOKEN", "t")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It exits by itself; a server that started would run until killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with a malformed policy");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    assert!(!status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:3:8:", file.display())), "{err}");
    assert!(err.contains("colour"), "{err}");
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_dir_all(dir);
}
