//! The evidence pack of a DP + SecAgg job, with real processes, on SQLite and PostgreSQL:
//! `flotilla evidence-pack` writes evidence.json and evidence.md; the ε it states is the one
//! `flotilla dp epsilon` prints for the q, σ and steps the rounds recorded, its SBOM lists every
//! package of Cargo.lock (parsed here with the same crate as build.rs, `toml`), and it reports the
//! SecAgg parameters, the TLS offer, every round's model hash and the audit chain's verification.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use flotilla_coordinator::api::evidence::EvidencePack;
use serde_json::Value;

/// Distributed DP over SecAgg+: 3 clients per round out of a population of 6 (q = 0.5), σ = 1,
/// C = 0.5; the clip range holds C plus the noise tails of n_min = 3 shares.
fn job_spec() -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("rounds = 20", "rounds = 2")
        .replace("clients_per_round = 10", "clients_per_round = 3")
        .replace("min_clients = 10", "min_clients = 3")
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0")
        + "\n[privacy]\nmode = \"distributed\"\nnoise_multiplier = 1.0\nclip_norm = 0.5\n\
           delta = 1e-5\nmax_epsilon = 50.0\npopulation = 6\n\n[secagg]\nclip_range = 3.5\n"
}

/// `purl` version encoding, as the purl spec requires (`+` → `%2B`).
fn purl_version(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until `n` clients are enrolled.
fn wait_for_clients(f: &Federation, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = f.admin_cli(&["client", "list", "--json"]);
        let count = serde_json::from_slice::<Vec<Value>>(&out.stdout).map_or(0, |v| v.len());
        if count >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} of {n} clients enrolled"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pack(f: &Federation, job: &str, out: &std::path::Path, identities: bool) -> EvidencePack {
    let out_s = out.to_str().unwrap().to_owned();
    let mut args = vec!["evidence-pack", "--job", job, "--out", &out_s];
    if identities {
        args.push("--identities");
    }
    let o = f.admin_cli(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(out.join("evidence.json")).expect("evidence.json");
    serde_json::from_str(&text).expect("evidence.json is the pack")
}

fn run(name: &str, database_url: Option<String>) {
    let mut f = Federation::with_server(name, database_url, &[], &[]);
    f.start_clients(6);
    // q = selected / min(population, enrolled clients): submit once all six are enrolled.
    wait_for_clients(&f, 6);
    let job = f.submit(&job_spec());
    let status = f.wait_for(
        &job,
        "2 DP+SecAgg rounds",
        Duration::from_secs(300),
        completed,
    );
    let history = status["history"].as_array().unwrap().clone();

    let dir = f.dir.join("evidence");
    let p = pack(&f, &job, &dir, false);
    assert_eq!(p.format, "flotilla-evidence-v1");
    assert_eq!(p.job.job_id.to_string(), job);
    assert_eq!(p.job.state, "completed");
    assert_eq!(p.spec.sha256.len(), 64);

    // ε: recorded (q, σ) of every round → `flotilla dp epsilon` → the pack's total.
    let dp = p.privacy.as_ref().expect("a DP job has a privacy section");
    let recorded: Vec<(f64, f64)> = history
        .iter()
        .map(|r| {
            let pr = &r["metrics"]["privacy"];
            (pr["q"].as_f64().unwrap(), pr["sigma"].as_f64().unwrap())
        })
        .collect();
    assert!(
        recorded.windows(2).all(|w| w[0] == w[1]),
        "every round had the same q and σ: {recorded:?}"
    );
    let (q, sigma) = recorded[0];
    assert_eq!(q, 0.5);
    let out = Command::new(bin())
        .args(["dp", "epsilon", "--sampling-rate", &q.to_string()])
        .args(["--noise-multiplier", &sigma.to_string()])
        .args([
            "--steps",
            &history.len().to_string(),
            "--delta",
            "1e-5",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dp.total.epsilon,
        cli["epsilon"].as_f64().unwrap(),
        "ε of the pack"
    );
    assert_eq!(dp.total.order, cli["order"].as_f64().unwrap());
    assert_eq!(dp.total.steps, history.len() as u64);
    assert_eq!(dp.total.delta, 1e-5);
    assert_eq!(
        dp.rounds.last().unwrap().epsilon,
        dp.total.epsilon,
        "the per-round ε ends at the total"
    );
    assert_eq!(
        dp.rounds.last().unwrap().epsilon_recorded,
        status["epsilon_spent"].as_f64().unwrap()
    );
    assert_eq!(dp.mode, "distributed");
    assert_eq!(dp.orders.len(), flotilla_privacy::DEFAULT_ORDERS.len());
    let cmd = dp.reproduce.as_deref().expect("one segment: a command");
    assert!(
        cmd.starts_with("flotilla dp epsilon --sampling-rate 0.5 --noise-multiplier 1 --steps 2"),
        "{cmd}"
    );

    // SecAgg+ with 3 clients: the complete graph, t = 2.
    let sa = p.secagg.as_ref().expect("secagg section");
    assert_eq!((sa.n, sa.k, sa.t), (3, 2, 2));
    assert_eq!(sa.clip_range, 3.5);
    assert_eq!(sa.dropouts_tolerated.per_round, 0);

    // Rounds: counts, not identities, unless asked for; hashes as the job status has them.
    assert!(!p.identities_included);
    assert_eq!(p.rounds.len(), history.len());
    for (r, h) in p.rounds.iter().zip(&history) {
        assert_eq!(
            r.participants,
            h["participants"].as_array().unwrap().len() as u64
        );
        assert!(r.participant_ids.is_none());
        assert_eq!(
            r.model_sha256.as_deref(),
            h["metrics"]["model_sha256"].as_str()
        );
        assert!(r.model_deleted_at_ms.is_none());
    }
    let with_ids = pack(&f, &job, &f.dir.join("evidence-ids"), true);
    assert!(with_ids.identities_included);
    assert_eq!(
        with_ids.rounds[0].participant_ids.as_ref().map(Vec::len),
        Some(3)
    );

    // Security: what rustls offers; the audit chain.
    let tls = p.security.tls.as_ref().expect("TLS is on");
    assert!(tls.versions.contains(&"TLS 1.3".to_owned()), "{tls:?}");
    assert!(
        tls.cipher_suites.iter().any(|s| s.starts_with("TLS13_")),
        "{tls:?}"
    );
    assert_eq!(p.security.credential_ttl_seconds, 30 * 86_400);
    assert!(p.audit.chain_verified, "{}", p.audit.verification);

    // The SBOM lists every package of Cargo.lock.
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap())
            .unwrap();
    let comps = p.sbom["components"].as_array().unwrap();
    assert_eq!(p.sbom["bomFormat"], "CycloneDX");
    assert_eq!(p.sbom["specVersion"], "1.5");
    let packages = lock["package"].as_array().unwrap();
    assert_eq!(comps.len(), packages.len());
    for pkg in packages {
        let (name, version) = (
            pkg["name"].as_str().unwrap(),
            pkg["version"].as_str().unwrap(),
        );
        let purl = format!("pkg:cargo/{name}@{}", purl_version(version));
        assert!(
            comps.iter().any(|c| c["name"] == name
                && c["version"] == version
                && c["purl"] == purl.as_str()),
            "{name} {version} is not in the SBOM"
        );
    }

    // The document for people.
    let md = std::fs::read_to_string(dir.join("evidence.md")).unwrap();
    for heading in [
        "# Evidence pack: job",
        "## Job spec",
        "## Policies in force",
        "## Approvals",
        "## Security configuration",
        "## Secure aggregation",
        "## Differential privacy",
        "## Rounds",
        "## Audit log",
        "## Software bill of materials",
    ] {
        assert!(md.contains(heading), "evidence.md lacks {heading}");
    }
    assert!(
        md.contains(&format!("**Total: ε = {}", dp.total.epsilon)),
        "{md}"
    );
    assert!(md.contains(&p.spec.sha256));
    assert!(md.contains(" UTC |"), "times are readable: {md}");
}

#[test]
fn evidence_pack_of_a_dp_secagg_job_sqlite() {
    run("evidence-sqlite", None);
}

#[test]
fn evidence_pack_of_a_dp_secagg_job_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_evd") else {
        return;
    };
    run("evidence-postgres", Some(schema.url().to_owned()));
}
