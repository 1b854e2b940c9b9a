//! The model registry with a real coordinator and clients, on SQLite (with DP) and PostgreSQL:
//! a digits job with `[registry] name` registers its final model by itself; `model show` prints
//! its lineage (job, rounds, participants, spec hash, ε under DP) and the parameters' SHA-256 is the
//! job's last `model_sha256`; `model register --round 1` adds a worse candidate; gate rules that
//! need no evaluation refuse naming the rule; promote, promote, roll back; `model export`
//! safetensors loads back with the artifact's values; another tenant's principal sees nothing.

use crate::common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn spec(dp: bool) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    let mut s = base
        .replace("rounds = 20", "rounds = 3")
        .replace("clients_per_round = 10", "clients_per_round = 3")
        .replace("min_clients = 10", "min_clients = 3")
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0");
    s.push_str("\n[registry]\nname = \"digits\"\n");
    if dp {
        s.push_str(
            "\n[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 3\n",
        );
    }
    s
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `flotilla ARGS` that must succeed; its stdout.
fn ok(f: &Federation, args: &[&str]) -> String {
    let o = f.admin_cli(args);
    assert!(o.status.success(), "flotilla {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `flotilla ARGS` that must fail; its stderr.
fn fails(f: &Federation, args: &[&str]) -> String {
    let o = f.admin_cli(args);
    assert!(
        !o.status.success(),
        "flotilla {args:?} succeeded: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(f: &Federation, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(f, &a)).unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn run(name: &str, database_url: Option<String>, dp: bool) {
    let mut f = Federation::new(name, database_url);
    f.start_clients(3);
    let job = f.submit(&spec(dp));
    let s = f.wait_for(&job, "3 rounds", Duration::from_secs(240), completed);
    let history = s["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{s}");
    let sha = |i: usize| {
        history[i]["metrics"]["model_sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // `[registry]`: registered by the coordinator right after the job completed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v1 = loop {
        let o = f.admin_cli(&["model", "show", "digits@1", "--json"]);
        if o.status.success() {
            break serde_json::from_slice::<Value>(&o.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "digits@1 was not registered: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(v1["registered_by"], "system", "{v1}");
    assert_eq!(v1["stage"], "candidate");
    assert_eq!(
        v1["model_sha256"].as_str().unwrap(),
        sha(2),
        "the job's last model"
    );
    let l = &v1["lineage"];
    assert_eq!(l["job_id"].as_u64().unwrap().to_string(), job);
    assert_eq!(
        (l["round"].as_u64(), l["rounds_total"].as_u64()),
        (Some(3), Some(3))
    );
    let participants: Vec<u64> = serde_json::from_value(l["participants"].clone()).unwrap();
    let recorded: Vec<u64> = history
        .iter()
        .map(|r| r["participants"].as_array().unwrap().len() as u64)
        .collect();
    assert_eq!(participants, recorded);
    assert_eq!(participants, [3, 3, 3]);
    let spec_sha = l["spec_sha256"].as_str().unwrap().to_owned();
    assert_eq!(spec_sha.len(), 64);
    assert_eq!(l["strategy"], "fedavg");
    assert_eq!(l["secagg"], false);
    let epsilon = l["epsilon"].as_f64();
    if dp {
        let e = epsilon.expect("ε under [privacy]");
        let last = history[2]["metrics"]["privacy"]["epsilon_spent"]
            .as_f64()
            .unwrap();
        assert!(e > 0.0 && (e - last).abs() < 1e-9, "{e} vs {last}");
        assert_eq!(l["delta"].as_f64(), Some(1e-5));
    } else {
        assert_eq!(epsilon, None);
    }

    // For people: the lineage block.
    let shown = ok(&f, &["model", "show", "digits@1"]);
    for want in [
        format!("job            {job} (digits)"),
        "round          3 of 3".to_owned(),
        "participants   3, 3, 3".to_owned(),
        format!("spec sha256    {spec_sha}"),
        format!("params sha256  {}", sha(2)),
        "strategy       fedavg".to_owned(),
    ] {
        assert!(shown.contains(&want), "{want:?} in\n{shown}");
    }
    assert_eq!(shown.contains("ε = "), dp, "{shown}");

    // A worse candidate: round 1's model, version 2, whose parent is version 1.
    let reg = ok(
        &f,
        &[
            "model", "register", "--job", &job, "--round", "1", "--name", "digits",
        ],
    );
    assert_eq!(reg.lines().last(), Some("digits@2"), "{reg}");
    let v2 = json(&f, &["model", "show", "digits@2"]);
    assert_eq!(v2["model_sha256"].as_str().unwrap(), sha(0));
    assert_eq!(v2["lineage"]["participants"].as_array().unwrap().len(), 1);
    assert_eq!(v2["lineage"]["parent_version"], 1);
    assert!(
        fails(
            &f,
            &[
                "model", "register", "--job", &job, "--round", "9", "--name", "digits"
            ]
        )
        .contains("no committed round 9")
    );

    // Gate rules that need no evaluation refuse, naming the rule; the report is kept.
    let mut rules: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--require-secagg"], "require_secagg"),
        (vec!["--min-accuracy", "0.5"], "min_accuracy"),
    ];
    if dp {
        rules.push((vec!["--max-epsilon", "0.0001"], "max_epsilon"));
    }
    for (flags, rule) in rules {
        let mut args = vec!["model", "gate", "set", "digits"];
        args.extend(flags);
        ok(&f, &args);
        let err = fails(&f, &["model", "promote", "digits@1"]);
        assert!(
            err.contains("409") && err.contains(&format!("gate refused digits@1: {rule}: ")),
            "{err}"
        );
        let v = json(&f, &["model", "show", "digits@1"]);
        assert_eq!(v["gate_report"]["passed"], false, "{v}");
        assert_eq!(v["stage"], "candidate");
    }
    let gate = json(&f, &["model", "gate", "show", "digits"]);
    if dp {
        assert_eq!(gate["max_epsilon"].as_f64(), Some(0.0001), "{gate}");
    } else {
        assert_eq!(gate["min_accuracy"].as_f64(), Some(0.5), "{gate}");
    }

    // Promote, promote, roll back.
    ok(&f, &["model", "gate", "set", "digits"]);
    assert!(ok(&f, &["model", "promote", "digits@1"]).contains("digits@1 is production"));
    assert!(ok(&f, &["model", "promote", "digits@2", "--full"]).contains("digits@2 is production"));
    let m = json(&f, &["model", "show", "digits"]);
    assert_eq!(m["production"], 2, "{m}");
    assert_eq!(m["versions"][0]["stage"], "archived");
    let rb = ok(
        &f,
        &[
            "model",
            "rollback",
            "digits",
            "--reason",
            "round 1 is worse",
        ],
    );
    assert!(rb.contains("production is digits@1 again"), "{rb}");
    let m = json(&f, &["model", "show", "digits"]);
    assert_eq!(m["production"], 1, "{m}");
    assert_eq!(
        (
            m["versions"][0]["stage"].as_str(),
            m["versions"][1]["stage"].as_str()
        ),
        (Some("production"), Some("archived"))
    );
    assert!(fails(&f, &["model", "rollback", "digits"]).contains("first production version"));
    let listed = ok(&f, &["model", "list"]);
    assert!(
        listed.contains("digits") && listed.contains("default"),
        "{listed}"
    );

    // Export: safetensors with the layout beside it, values equal to the artifact's.
    let st_path = f.dir.join("digits-1.safetensors");
    let raw_path = f.dir.join("digits-1.f32");
    let out = ok(
        &f,
        &[
            "model",
            "export",
            "digits@1",
            "--out",
            st_path.to_str().unwrap(),
        ],
    );
    assert!(out.contains("digits-1.safetensors.layout.json"), "{out}");
    ok(
        &f,
        &[
            "model",
            "export",
            "digits@1",
            "--format",
            "raw",
            "--out",
            raw_path.to_str().unwrap(),
        ],
    );
    let raw = std::fs::read(&raw_path).unwrap();
    assert_eq!(sha256_hex(&raw), sha(2));
    let file = std::fs::read(&st_path).unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    let layout: Value = serde_json::from_slice(
        &std::fs::read(f.dir.join("digits-1.safetensors.layout.json")).unwrap(),
    )
    .unwrap();
    let mut flat = Vec::new();
    for t in layout["tensors"].as_array().unwrap() {
        let v = st.tensor(t["name"].as_str().unwrap()).unwrap();
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        assert_eq!(
            (v.dtype(), v.shape()),
            (safetensors::Dtype::F32, shape.as_slice())
        );
        flat.extend_from_slice(v.data());
    }
    assert_eq!(st.len(), layout["tensors"].as_array().unwrap().len());
    assert_eq!(flat, raw, "the tensors in layout order are the artifact");

    // Another tenant's principal: the model does not exist for it.
    let token = f.last_line(&[
        "principal",
        "create",
        "outsider",
        "--tenant",
        "clinic",
        "--role",
        "operator",
    ]);
    let as_outsider = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .args(["--admin-url", &f.admin_url(), "--ca-cert", &f.ca()])
            .env("FLOTILLA_TOKEN", &token)
            .current_dir(workspace_root())
            .output()
            .unwrap()
    };
    for args in [
        &["model", "show", "digits"][..],
        &["model", "show", "digits@1"],
        &["model", "rollback", "digits"],
    ] {
        let o = as_outsider(args);
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("404") && err.contains("model digits"), "{err}");
        assert!(
            !err.contains("default"),
            "the tenant is not revealed: {err}"
        );
    }
    let o = as_outsider(&["model", "list", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "[]",
        "{}",
        text(&o)
    );
    let o = as_outsider(&["model", "register", "--job", &job, "--name", "stolen"]);
    assert!(text(&o).contains("404"), "{}", text(&o));
}

#[test]
fn a_registered_model_has_its_lineage_gate_rollback_and_export_sqlite_dp() {
    run("registry", None, true);
}

#[test]
fn a_registered_model_has_its_lineage_gate_rollback_and_export_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_registry") else {
        return;
    };
    run("registry-pg", Some(schema.url().to_owned()), false);
}
