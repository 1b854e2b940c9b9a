//! The tamper-evident audit log end to end, on SQLite and PostgreSQL: a real coordinator with an
//! audit signing key, real clients, a DP job, a cancelled job, a revocation, an expired credential
//! and failed admin logins; every kind of entry is in the log, `flotilla audit verify` passes on
//! the untouched log, names the entry whose row was changed with `sqlite3`/`psql`, and names the
//! first missing entry once the last rows are deleted.

use crate::common;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How the test reaches the database behind the server: the `sqlite3` or `psql` command line.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres { schema: String },
}

impl Db {
    /// Runs one SQL statement (a query prints its rows, `|`-separated, no header).
    fn sql(&self, statement: &str) -> String {
        let out = match self {
            Db::Sqlite(file) => Command::new("sqlite3")
                .args(["-cmd", ".timeout 5000"])
                .arg(file)
                .arg(statement)
                .output()
                .expect("sqlite3 runs"),
            Db::Postgres { schema } => Command::new("psql")
                .arg(flotilla_testkit::pg::base_url())
                .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(format!("SET search_path TO {schema}; {statement}"))
                .output()
                .expect("psql runs"),
        };
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `audit export --format jsonl` as parsed entries.
fn export(f: &Federation) -> Vec<Value> {
    let o = f.admin_cli(&["audit", "export", "--format", "jsonl"]);
    assert!(o.status.success(), "export: {}", text(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn actions(entries: &[Value]) -> BTreeSet<String> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls the export until `done` holds (panics naming `what` after `timeout`).
fn wait_log(
    f: &Federation,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let e = export(f);
        if done(&e) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; actions {:?}; logs in {}",
            actions(&e),
            f.dir.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn job_spec(rounds: u64, clients: usize, dp: bool) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    let mut s = base
        .replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {clients}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {clients}"));
    if dp {
        s.push_str(&format!(
            "\n[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = {clients}\n"
        ));
    }
    s
}

fn run(name: &str, schema: Option<&flotilla_testkit::pg::PgSchema>) {
    // The key is made before the server starts, as an operator would.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("audit.pem");
    let o = Command::new(bin())
        .args(["audit", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    let public_key = last_line(&o);
    assert_eq!(public_key.len(), 64, "{}", text(&o));

    let mut f = Federation::with_server(
        name,
        schema.map(|s| s.url().to_owned()),
        &[
            "--audit-signing-key",
            key.to_str().unwrap(),
            "--audit-interval",
            "1s",
        ],
        &[],
    );
    let db = match schema {
        Some(s) => Db::Postgres {
            schema: s.name().to_owned(),
        },
        None => Db::Sqlite(f.dir.join("server/flotilla.db")),
    };

    // Events: a token, three enrollments, a DP job that completes, a job that is cancelled, a
    // revocation, an expired credential, and a flood of bad admin tokens.
    f.start_clients(3);
    let dp_job = f.submit(&job_spec(2, 3, true));
    f.wait_for(&dp_job, "the DP job", Duration::from_secs(180), completed);
    let long_job = f.submit(&job_spec(1000, 3, false));
    let o = f.admin_cli(&["job", "cancel", &long_job, "--reason", "audit test"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = f.admin_cli(&["client", "revoke", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    // Client 2's credential expires now: its next call (after the 10 s credential cache) is
    // refused, and the refusal is audited once however often it retries.
    db.sql("UPDATE clients SET credential_expires_at_ms = 1 WHERE id = 2");
    for _ in 0..5 {
        let o = Command::new(bin())
            .args([
                "job",
                "list",
                "--admin-url",
                &f.admin_url(),
                "--ca-cert",
                &f.ca(),
            ])
            .env("FLOTILLA_ADMIN_TOKEN", "wrong-token")
            .output()
            .unwrap();
        assert!(!o.status.success());
    }

    let wanted = [
        "enrollment_token.created",
        "client.enrolled",
        "job.started",
        "dp.charge",
        "job.completed",
        "job.cancelled",
        "client.revoked",
        "client.credential_expired",
        "admin.auth_failed",
        "audit.checkpoint",
    ];
    let entries = wait_log(&f, "every kind of entry", Duration::from_secs(60), |e| {
        let have = actions(e);
        wanted.iter().all(|w| have.contains(*w))
    });
    let count = |a: &str| entries.iter().filter(|e| e["action"] == a).count();
    assert_eq!(count("client.enrolled"), 3);
    assert_eq!(count("dp.charge"), 2, "one charge per committed round");
    assert_eq!(count("client.credential_expired"), 1, "once per credential");
    let charge = entries
        .iter()
        .rfind(|e| e["action"] == "dp.charge")
        .unwrap();
    let d = &charge["details"];
    assert_eq!(d["round"], 2);
    assert!(d["epsilon_round"].as_f64().unwrap() > 0.0);
    assert!(d["epsilon_total"].as_f64().unwrap() > d["epsilon_round"].as_f64().unwrap());
    assert_eq!(d["delta"], 1e-5);
    let failed: u64 = entries
        .iter()
        .filter(|e| e["action"] == "admin.auth_failed")
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert!(
        failed >= 5 && count("admin.auth_failed") <= 3,
        "5 failures aggregated into at most three entries (one per second): {failed} in {}",
        count("admin.auth_failed")
    );
    let cancel = entries
        .iter()
        .find(|e| e["action"] == "job.cancelled")
        .unwrap();
    assert_eq!(cancel["resource"], format!("job:{long_job}"));
    assert_eq!(cancel["actor"], "admin-token");
    let revoke = entries
        .iter()
        .find(|e| e["action"] == "client.revoked")
        .unwrap();
    assert_eq!(
        (&revoke["resource"], &revoke["tenant"]),
        (&Value::from("client:1"), &Value::from("default"))
    );
    let enrolled = entries
        .iter()
        .find(|e| e["action"] == "client.enrolled")
        .unwrap();
    assert!(enrolled["actor"].as_str().unwrap().starts_with("client:"));

    // Nothing changes the log from here on: no clients, no failures; the last checkpoint comes.
    drop(std::mem::take(&mut f.clients));
    let entries = wait_log(
        &f,
        "a checkpoint of the head",
        Duration::from_secs(30),
        |e| e.last().is_some_and(|l| l["action"] == "audit.checkpoint"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let entries = {
        let again = export(&f);
        assert_eq!(again.len(), entries.len(), "the log is quiet");
        again
    };
    let n = entries.len() as u64;
    assert_eq!(entries.last().unwrap()["seq"], n);

    // Untouched: ok, also with the key pinned; another key is refused.
    let o = f.admin_cli(&["audit", "verify", "--public-key", &public_key]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(&format!("ok: {n} entries, head {n} ")) && out.contains("last checkpoint"),
        "{out}"
    );
    let o = f.admin_cli(&["audit", "verify", "--public-key", &"ab".repeat(32)]);
    assert!(
        !o.status.success(),
        "a checkpoint signed by another key: {}",
        text(&o)
    );
    assert!(text(&o).contains("pinned"), "{}", text(&o));

    // One row's details changed: verify names it.
    let victim = 5;
    let original = db.sql(&format!(
        "SELECT details_json FROM audit_log WHERE seq = {victim}"
    ));
    db.sql(&format!(
        "UPDATE audit_log SET details_json = '{{\"forged\":true}}' WHERE seq = {victim}"
    ));
    let o = f.admin_cli(&["audit", "verify"]);
    assert!(!o.status.success(), "altered log verified: {}", text(&o));
    assert!(
        text(&o).contains(&format!("audit entry {victim} was altered")),
        "{}",
        text(&o)
    );
    // Restored, it verifies again.
    db.sql(&format!(
        "UPDATE audit_log SET details_json = '{}' WHERE seq = {victim}",
        original.replace('\'', "''")
    ));
    let o = f.admin_cli(&["audit", "verify"]);
    assert!(o.status.success(), "restored: {}", text(&o));

    // The last three rows deleted: verify names the first missing entry.
    db.sql(&format!("DELETE FROM audit_log WHERE seq > {}", n - 3));
    let o = f.admin_cli(&["audit", "verify"]);
    assert!(!o.status.success(), "truncated log verified: {}", text(&o));
    assert!(
        text(&o).contains(&format!("audit entries {}..={n} were removed", n - 2)),
        "{}",
        text(&o)
    );
    // Even with the head moved back as well, the checkpoint this server signed is missing.
    let head_hash = db.sql(&format!("SELECT hash FROM audit_log WHERE seq = {}", n - 3));
    db.sql(&format!(
        "UPDATE audit_head SET seq = {}, hash = '{head_hash}'",
        n - 3
    ));
    let o = f.admin_cli(&["audit", "verify"]);
    assert!(
        !o.status.success(),
        "truncated log with its head verified: {}",
        text(&o)
    );
    assert!(
        text(&o).contains(&format!("audit entry {} was removed", n - 2)),
        "{}",
        text(&o)
    );
}

#[test]
fn audit_log_sqlite() {
    run("audit-sqlite", None);
}

#[test]
fn audit_log_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_audit") else {
        return;
    };
    run("audit-postgres", Some(&schema));
}
