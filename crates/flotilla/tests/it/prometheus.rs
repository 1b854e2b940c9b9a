//! A real Prometheus (`/usr/bin/prometheus`, Debian package `prometheus`) scrapes a coordinator
//! that runs a real federation with client processes, through `--metrics-listen`, every second.
//! Its HTTP API must then answer `flotilla_rounds_committed_total{job}` equal to the rounds the job
//! committed, and show a client's own metrics; every alert rule in `deploy/prometheus/alerts.yml`
//! (loaded as a rule file, so a syntax error fails) and every PromQL expression of the Grafana
//! dashboards in `deploy/grafana/` must evaluate against it without error.
//!
//! Skipped (with a message) only when `prometheus` is not installed and
//! `FLOTILLA_REQUIRE_PROMETHEUS` is unset; `.ci/run` sets it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PROMETHEUS: &str = "prometheus";

/// Whether a `prometheus` binary runs; panics if it does not and one is required.
fn prometheus_available() -> bool {
    let ok = Command::new(PROMETHEUS)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_PROMETHEUS").is_none(),
            "FLOTILLA_REQUIRE_PROMETHEUS is set but `prometheus` is not installed \
             (apt-get install prometheus)"
        );
        eprintln!(
            "SKIPPED prometheus::*: `prometheus` is not installed (apt-get install prometheus; \
             set FLOTILLA_REQUIRE_PROMETHEUS=1 to make this a failure)"
        );
    }
    ok
}

/// A blocking HTTP client for Prometheus' API (plain HTTP on loopback).
fn http() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET /api/v1/query?query=Q` on Prometheus at `base`: the whole answer.
fn query(http: &reqwest::blocking::Client, base: &str, q: &str) -> Value {
    let url =
        reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), &[("query", q)]).unwrap();
    http.get(url)
        .send()
        .and_then(|r| r.json::<Value>())
        .unwrap_or_else(|e| serde_json::json!({"status": "unreachable", "error": e.to_string()}))
}

/// The single sample's value of an instant query (None without exactly one sample).
fn scalar(answer: &Value) -> Option<f64> {
    let result = answer["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// Polls `check` every 500 ms until it returns `Some`, panicking with `what` after `timeout`.
fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// `honor_labels: true`: Flotilla's `job` label (the FL job id) must not be renamed to
// `exported_job` by the scrape target's own `job` label; see docs/how-to/metrics.md.

/// Every `expr` of a Grafana dashboard: `panels[].targets[].expr`, rows' nested panels included.
fn grafana_exprs(v: &Value, out: &mut Vec<String>) {
    if let Some(panels) = v["panels"].as_array() {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) {
                    out.push(e.to_owned());
                }
            }
            grafana_exprs(p, out);
        }
    }
}

/// A Grafana expression as Prometheus can run it: the interval variables become `1m`, `$__range`
/// `1h`, and every other variable (`$job`, `${tenant}`, `[[x]]`) matches anything.
fn grafana_to_promql(expr: &str) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "1m")
        .replace("${__interval}", "1m")
        .replace("$__range", "1h")
        .replace("${__range}", "1h");
    // `${name}`, `${name:fmt}`, `$name`, `[[name]]` → `.*`
    let mut out = String::with_capacity(e.len());
    let b = e.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let word = |j: usize| {
            let mut k = j;
            while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
                k += 1;
            }
            k
        };
        if b[i] == b'$' && i + 1 < b.len() && b[i + 1] == b'{' {
            let end = e[i..].find('}').map_or(b.len(), |k| i + k + 1);
            out.push_str(".*");
            i = end;
        } else if b[i] == b'$'
            && i + 1 < b.len()
            && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_')
        {
            out.push_str(".*");
            i = word(i + 1);
        } else if e[i..].starts_with("[[") {
            let end = e[i..].find("]]").map_or(b.len(), |k| i + k + 2);
            out.push_str(".*");
            i = end;
        } else {
            let c = e[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    e = out;
    e
}

fn write_config(dir: &Path, targets: &[(&str, String)], rules: Option<&Path>) -> PathBuf {
    let mut cfg = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    if let Some(r) = rules {
        cfg.push_str(&format!("rule_files:\n  - '{}'\n", r.display()));
    }
    cfg.push_str("scrape_configs:\n");
    for (job, target) in targets {
        cfg.push_str(&format!(
            "  - job_name: '{job}'\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
        ));
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn prometheus_scrapes_a_federation_and_evaluates_the_alerts_and_dashboards() {
    if !prometheus_available() {
        return;
    }
    let root = workspace_root();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut f = Federation::with_server(
        "prometheus",
        None,
        &["--metrics-listen", &metrics_addr],
        &[],
    );
    let clients = 3;
    let token = f.last_line(&["enroll-token", "create", "--uses", "3", "--expires", "1h"]);
    let client_metrics = format!("127.0.0.1:{}", free_port());
    for i in 0..clients {
        let extra: Vec<&str> = if i == 0 {
            vec!["--metrics-listen", &client_metrics]
        } else {
            vec![]
        };
        f.spawn_client_with(
            &format!("client-{i}"),
            &token,
            &format!("{i}/{clients}"),
            &extra,
            "warn",
        );
    }

    let alerts = root.join("deploy/prometheus/alerts.yml");
    let rules = alerts.exists().then_some(alerts.as_path());
    let config = write_config(
        &f.dir,
        &[
            ("flotilla-coordinator", metrics_addr.clone()),
            ("flotilla-client", client_metrics.clone()),
        ],
        rules,
    );
    let prom_port = free_port();
    let base = format!("http://127.0.0.1:{prom_port}");
    let _prometheus = Procs(vec![
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                f.dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(f.dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus"),
    ]);
    let http = http();

    let spec = std::fs::read_to_string(root.join("examples/job-digits.toml"))
        .unwrap()
        .replace("rounds = 20", "rounds = 3")
        .replace("clients_per_round = 10", "clients_per_round = 3")
        .replace("min_clients = 10", "min_clients = 3");
    let job = f.submit(&spec);
    let status = f.wait_for(&job, "3 rounds", Duration::from_secs(240), completed);
    let committed = status["rounds_completed"]
        .as_u64()
        .or_else(|| status["job"]["rounds_completed"].as_u64())
        .unwrap_or_else(|| panic!("rounds_completed in {status}"));
    assert_eq!(committed, 3);

    // The coordinator's exposition itself: every label is from the bounded vocabulary.
    let text = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_labels_bounded(&text);

    let q = format!("flotilla_rounds_committed_total{{job=\"{job}\"}}");
    poll(
        "Prometheus to see every committed round",
        Duration::from_secs(60),
        || {
            let a = query(&http, &base, &q);
            match scalar(&a) {
                Some(v) if v == committed as f64 => Ok(()),
                _ => Err(a.to_string()),
            }
        },
    );
    poll("the client's own metrics", Duration::from_secs(30), || {
        let a = query(
            &http,
            &base,
            "flotilla_client_tasks_total{outcome=\"done\"}",
        );
        match scalar(&a) {
            Some(v) if v >= 1.0 => Ok(()),
            _ => Err(a.to_string()),
        }
    });
    for q in [
        "flotilla_job_state{state=\"completed\"} == 1",
        "process_resident_memory_bytes",
        "flotilla_build_info",
        "flotilla_tls_cert_expiry_timestamp_seconds",
        "flotilla_clients_enrolled",
    ] {
        poll(q, Duration::from_secs(30), || {
            let a = query(&http, &base, q);
            match a["data"]["result"].as_array() {
                Some(r) if !r.is_empty() => Ok(()),
                _ => Err(a.to_string()),
            }
        });
    }

    // Alert rules: loaded by Prometheus (a broken file would have stopped it), each evaluated by
    // it without error, and each expression again through the query API.
    if rules.is_some() {
        let groups = poll(
            "every alert rule evaluated",
            Duration::from_secs(60),
            || {
                let v: Value = http
                    .get(format!("{base}/api/v1/rules"))
                    .send()
                    .and_then(|r| r.json())
                    .map_err(|e| e.to_string())?;
                let rules: Vec<Value> = v["data"]["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                let pending = rules.iter().any(|r| r["health"] == "unknown");
                if rules.is_empty() || pending {
                    return Err(v.to_string());
                }
                Ok(rules)
            },
        );
        for r in &groups {
            assert_eq!(
                r["health"], "ok",
                "rule {} failed: {}",
                r["name"], r["lastError"]
            );
            let expr = r["query"].as_str().unwrap();
            let a = query(&http, &base, expr);
            assert_eq!(a["status"], "success", "alert {}: {expr}: {a}", r["name"]);
        }
        eprintln!("{} alert rules evaluated", groups.len());
    } else {
        eprintln!("no deploy/prometheus/alerts.yml yet: alert rules not evaluated");
    }

    let mut dashboards = 0;
    for entry in std::fs::read_dir(root.join("deploy/grafana"))
        .into_iter()
        .flatten()
    {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut exprs = Vec::new();
        grafana_exprs(&v, &mut exprs);
        assert!(!exprs.is_empty(), "{}: no expressions", path.display());
        for e in exprs {
            let promql = grafana_to_promql(&e);
            let a = query(&http, &base, &promql);
            assert_eq!(
                a["status"],
                "success",
                "{}: {e} (as {promql}): {a}",
                path.display()
            );
        }
        dashboards += 1;
    }
    eprintln!("{dashboards} Grafana dashboards evaluated");
}

/// Every label name in an exposition is one of the bounded vocabulary: never a client id.
fn assert_labels_bounded(text: &str) {
    const ALLOWED: [&str; 13] = [
        "job", "tenant", "reason", "stage", "rpc", "outcome", "state", "kind", "op", "version",
        "git_sha", "le", "quantile",
    ];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(open) = line.find('{') else { continue };
        let close = line.rfind('}').unwrap();
        for pair in line[open + 1..close].split("\",") {
            let name = pair.split('=').next().unwrap().trim();
            if name.is_empty() {
                continue;
            }
            assert!(
                ALLOWED.contains(&name),
                "unbounded label {name:?} in {line}"
            );
        }
    }
}

#[test]
fn grafana_variables_become_promql() {
    assert_eq!(
        grafana_to_promql("rate(x{job=~\"$job\",tenant=~\"${tenant:regex}\"}[$__rate_interval])"),
        "rate(x{job=~\".*\",tenant=~\".*\"}[1m])"
    );
    assert_eq!(
        grafana_to_promql("up{instance=~\"[[instance]]\"}"),
        "up{instance=~\".*\"}"
    );
}
