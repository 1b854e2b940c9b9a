//! Governance with a real coordinator process, on SQLite and PostgreSQL: principals with roles per
//! tenant, tenant isolation, and job approval (four eyes).
//!
//! - The access-control matrix: every admin endpoint × every role × a resource of the principal's
//!   own tenant and of another tenant, each call made for real and its outcome asserted (allowed,
//!   `403`, or `404` as if the resource did not exist). The same test writes the table as
//!   `docs/access-control.md` and fails if the committed file differs (regenerate it with
//!   `FLOTILLA_BLESS=1`).
//! - A job in a tenant that requires approval waits, gets no client work, cannot be approved by
//!   its submitter, starts when another approver approves it (also after a restart); a rejected
//!   job never runs; a revoked principal's token is `401`.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The tenant every principal of the matrix holds its role in.
const OWN: &str = "hospital";
/// A tenant none of them (but the admin) has a role in.
const OTHER: &str = "clinic";
/// Every role, in the order of the table's columns.
const ROLES: [&str; 6] = [
    "admin",
    "operator",
    "scientist",
    "approver",
    "auditor",
    "viewer",
];

/// A blocking HTTPS client for the admin API (plain threads only: reqwest's blocking client must
/// not run inside a runtime; these tests have none).
struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn new(f: &Federation) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(f.ca()).unwrap()).unwrap();
        Api {
            base: f.admin_url(),
            http: reqwest::blocking::Client::builder()
                .add_root_certificate(ca)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// `METHOD path` with `token` and a body (`application/toml` if `toml`, else JSON): (status,
    /// body as JSON, or as a string if it is not JSON).
    fn call(&self, method: &str, path: &str, token: &str, body: &str, toml: bool) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token);
        if !body.is_empty() {
            let ct = if toml {
                "application/toml"
            } else {
                "application/json"
            };
            req = req.header("content-type", ct).body(body.to_owned());
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }
}

/// The digits job for `tenant`: `rounds` rounds of 2 clients (waits for `min` clients).
fn job_spec(name: &str, tenant: &str, rounds: u64, min: usize) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    let body = base
        .replace("name = \"digits\"", &format!("name = \"{name}\""))
        .replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {min}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {min}"))
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0");
    format!("tenant = \"{tenant}\"\n{body}")
}

/// The admin CLI with `token` in `FLOTILLA_TOKEN` (the bootstrap token stays in the env too:
/// `FLOTILLA_TOKEN` must win).
fn cli_as(f: &Federation, token: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args)
        .args(["--admin-url", &f.admin_url(), "--ca-cert", &f.ca()])
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FLOTILLA_TOKEN", token)
        .current_dir(workspace_root());
    cmd.output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    last_line(out)
}

/// `principal create` by the bootstrap admin; the token (its last stdout line).
fn principal(f: &Federation, name: &str, roles: &[&str]) -> String {
    let mut args = vec!["principal", "create", name, "--tenant", OWN];
    for r in roles {
        args.extend(["--role", r]);
    }
    let token = f.last_line(&args);
    assert!(token.starts_with("flt_pat_"), "{token}");
    token
}

/// A tenant's resources the matrix calls endpoints on.
struct Resources {
    tenant: &'static str,
    /// A job that committed a round (so its model can be read).
    job: String,
    /// An enrolled client.
    client: u64,
    /// A registered model (version 1: the job's model); its name does not name the tenant, so a
    /// `404` can be checked not to reveal it.
    model: &'static str,
}

/// One endpoint of the admin API and how to call it on a tenant's resources. `scoped`: whether it
/// names a tenant's resource (a list or an installation-wide endpoint does not: its other-tenant
/// cell is `—`).
struct Endpoint {
    method: &'static str,
    path: &'static str,
    scoped: bool,
    /// Body for the tenant; `true`: TOML.
    body: fn(&str) -> (String, bool),
}

fn no_body(_: &str) -> (String, bool) {
    (String::new(), false)
}

/// Every admin endpoint, in the table's order.
fn endpoints() -> Vec<Endpoint> {
    let e = |method, path, scoped, body| Endpoint {
        method,
        path,
        scoped,
        body,
    };
    vec![
        e("GET", "/v1/jobs", false, no_body),
        e("GET", "/v1/jobs/{job}", true, no_body),
        e("GET", "/v1/jobs/{job}/model/info", true, no_body),
        e("GET", "/v1/jobs/{job}/model", true, no_body),
        e("POST", "/v1/jobs", true, |t| {
            (job_spec("matrix-submit", t, 1, 50), true)
        }),
        e("POST", "/v1/jobs/{job}/cancel", true, no_body),
        e("POST", "/v1/jobs/{job}/approve", true, no_body),
        e("POST", "/v1/jobs/{job}/reject", true, |_| {
            (r#"{"reason":"matrix"}"#.into(), false)
        }),
        e("GET", "/v1/clients", false, no_body),
        e("POST", "/v1/clients/{client}/revoke", true, no_body),
        e("POST", "/v1/enrollment-tokens", true, |t| {
            (format!(r#"{{"tenant":"{t}"}}"#), false)
        }),
        e("GET", "/v1/tenants/{tenant}", true, no_body),
        e("PUT", "/v1/tenants/{tenant}", true, |_| {
            (r#"{"require_approval":false}"#.into(), false)
        }),
        e("GET", "/v1/principals", false, no_body),
        e("POST", "/v1/principals", false, |_| {
            (
                r#"{"name":"matrix-new","roles":[{"tenant":"hospital","role":"viewer"}]}"#.into(),
                false,
            )
        }),
        e("POST", "/v1/principals/{victim}/revoke", false, no_body),
        e("GET", "/v1/metrics", false, no_body),
        e("GET", "/metrics", false, no_body),
        e("GET", "/v1/models", false, no_body),
        // A name per tenant: a model belongs to the tenant of its first version.
        e("POST", "/v1/models", true, |t| {
            (
                format!(r#"{{"job_id":{{job}},"name":"matrix-{t}"}}"#),
                false,
            )
        }),
        e("GET", "/v1/models/{model}", true, no_body),
        e("GET", "/v1/models/{model}/versions/1", true, no_body),
        e(
            "GET",
            "/v1/models/{model}/versions/1/artifact",
            true,
            no_body,
        ),
        e("PUT", "/v1/models/{model}/gate", true, |_| {
            ("{}".into(), false)
        }),
        e(
            "POST",
            "/v1/models/{model}/versions/1/promote",
            true,
            |_| (r#"{"stage":"staging"}"#.into(), false),
        ),
        e("POST", "/v1/models/{model}/rollback", true, no_body),
    ]
}

/// The expected table: per endpoint (in [`endpoints`] order), the outcome for each role (in
/// [`ROLES`] order) in its own tenant, then in the other tenant. `ok`: authorized; `—`: the
/// endpoint names no tenant's resource.
const EXPECTED: [(&str, [&str; 6], [&str; 6]); 26] = {
    const A: &str = "ok";
    const F: &str = "403";
    const N: &str = "404";
    const X: &str = "—";
    [
        ("GET /v1/jobs", [A, A, A, A, A, A], [X, X, X, X, X, X]),
        ("GET /v1/jobs/{id}", [A, A, A, A, A, A], [A, N, N, N, N, N]),
        (
            "GET /v1/jobs/{id}/model/info",
            [A, A, A, F, A, F],
            [A, N, N, N, N, N],
        ),
        (
            "GET /v1/jobs/{id}/model",
            [A, A, A, F, A, F],
            [A, N, N, N, N, N],
        ),
        // A principal that may submit in no tenant is refused before the body is read.
        ("POST /v1/jobs", [A, F, A, F, F, F], [A, F, N, F, F, F]),
        (
            "POST /v1/jobs/{id}/cancel",
            [A, A, F, F, F, F],
            [A, N, N, N, N, N],
        ),
        (
            "POST /v1/jobs/{id}/approve",
            [A, F, F, A, F, F],
            [A, N, N, N, N, N],
        ),
        (
            "POST /v1/jobs/{id}/reject",
            [A, F, F, A, F, F],
            [A, N, N, N, N, N],
        ),
        ("GET /v1/clients", [A, A, F, F, A, F], [X, X, X, X, X, X]),
        (
            "POST /v1/clients/{id}/revoke",
            [A, A, F, F, F, F],
            [A, N, N, N, N, N],
        ),
        (
            "POST /v1/enrollment-tokens",
            [A, A, F, F, F, F],
            [A, N, N, N, N, N],
        ),
        (
            "GET /v1/tenants/{tenant}",
            [A, A, A, A, A, A],
            [A, N, N, N, N, N],
        ),
        (
            "PUT /v1/tenants/{tenant}",
            [A, F, F, F, F, F],
            [A, N, N, N, N, N],
        ),
        ("GET /v1/principals", [A, F, F, F, A, F], [X, X, X, X, X, X]),
        (
            "POST /v1/principals",
            [A, F, F, F, F, F],
            [X, X, X, X, X, X],
        ),
        (
            "POST /v1/principals/{name}/revoke",
            [A, F, F, F, F, F],
            [X, X, X, X, X, X],
        ),
        ("GET /v1/metrics", [A, A, F, F, A, F], [X, X, X, X, X, X]),
        ("GET /metrics", [A, A, F, F, A, F], [X, X, X, X, X, X]),
        ("GET /v1/models", [A, A, A, A, A, A], [X, X, X, X, X, X]),
        ("POST /v1/models", [A, A, A, F, F, F], [A, N, N, N, N, N]),
        (
            "GET /v1/models/{name}",
            [A, A, A, A, A, A],
            [A, N, N, N, N, N],
        ),
        (
            "GET /v1/models/{name}/versions/{v}",
            [A, A, A, A, A, A],
            [A, N, N, N, N, N],
        ),
        (
            "GET /v1/models/{name}/versions/{v}/artifact",
            [A, A, A, A, A, A],
            [A, N, N, N, N, N],
        ),
        (
            "PUT /v1/models/{name}/gate",
            [A, A, F, A, F, F],
            [A, N, N, N, N, N],
        ),
        // The first allowed call moves version 1 to staging, the next are `409` (already there).
        (
            "POST /v1/models/{name}/versions/{v}/promote",
            [A, A, F, A, F, F],
            [A, N, N, N, N, N],
        ),
        // `409`: no production version to roll back (authorized).
        (
            "POST /v1/models/{name}/rollback",
            [A, A, F, A, F, F],
            [A, N, N, N, N, N],
        ),
    ]
};

/// What a status means in the table: `403`/`404`/`401` as such, anything else `ok` (the request
/// was authorized; it may still be refused for another reason, e.g. `409` for a finished job).
fn outcome(status: u16) -> &'static str {
    match status {
        401 => "401",
        403 => "403",
        404 => "404",
        _ => "ok",
    }
}

/// Starts `n` clients of `tenant` (digits partitions) and returns their ids once enrolled.
fn clients_of(f: &mut Federation, api: &Api, tenant: &str, n: usize) -> Vec<u64> {
    let token = f.last_line(&[
        "enroll-token",
        "create",
        "--tenant",
        tenant,
        "--uses",
        &n.to_string(),
    ]);
    for i in 0..n {
        f.spawn_client(&format!("{tenant}-{i}"), &token, &format!("{i}/{n}"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = api.call("GET", "/v1/clients", ADMIN_TOKEN, "", false);
        let ids: Vec<u64> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["tenant"] == tenant)
            .filter_map(|c| c["client_id"].as_u64())
            .collect();
        if ids.len() >= n {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "clients of {tenant} did not enroll"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The matrix as a Markdown document.
fn render(table: &[(String, Vec<String>, Vec<String>)]) -> String {
    let mut out = String::from(
        "# Access control\n\n\
         <!-- Generated by crates/flotilla/tests/it/governance_authz.rs (the_access_matrix_*); \
         regenerate with FLOTILLA_BLESS=1. Do not edit by hand. -->\n\n\
         Who may call which admin endpoint. Each principal holds one role in its own tenant; the \
         resource named by the request belongs to that tenant (**own**) or to another one \
         (**other**). Every cell was observed against a running coordinator by the test that \
         writes this file.\n\n\
         - **ok**: authorized (the request may still fail for another reason, e.g. `409` for a \
         job that already ended);\n\
         - **403**: the principal has a role in the resource's tenant, but not one that allows this;\n\
         - **404**: the principal has no role in the resource's tenant: the resource is hidden, \
         as if it did not exist;\n\
         - **—**: the endpoint names no tenant's resource (lists show only the tenants the \
         principal has a role in; principals and metrics are installation-wide).\n\n\
         `POST /v1/jobs` names its tenant in the spec: a principal that may submit in no tenant \
         is refused (`403`) before the body is read.\n\n\
         `admin` holds in every tenant; the bootstrap token (`FLOTILLA_ADMIN_TOKEN`) is an admin. \
         A revoked principal's token, an unknown token or none is `401` everywhere.\n\n",
    );
    out.push_str("| endpoint |");
    for r in ROLES {
        out.push_str(&format!(" {r} own | {r} other |"));
    }
    out.push_str("\n|---|");
    for _ in ROLES {
        out.push_str("---|---|");
    }
    out.push('\n');
    for (endpoint, own, other) in table {
        out.push_str(&format!("| `{endpoint}` |"));
        for i in 0..ROLES.len() {
            out.push_str(&format!(" {} | {} |", own[i], other[i]));
        }
        out.push('\n');
    }
    out
}

fn run_matrix(name: &str, database_url: Option<String>) {
    let mut f = Federation::new(name, database_url);
    let api = Api::new(&f);
    let tokens: Vec<String> = ROLES
        .iter()
        .map(|r| principal(&f, &format!("m-{r}"), &[r]))
        .collect();
    // One job per tenant that commits a round (its model can be read), and a client per tenant.
    let mut res = Vec::new();
    for (tenant, model) in [(OWN, "digits-a"), (OTHER, "digits-b")] {
        let clients = clients_of(&mut f, &api, tenant, 2);
        let job = f.submit(&job_spec(&format!("matrix-{tenant}"), tenant, 1, 2));
        f.wait_for(
            &job,
            "the job completed",
            Duration::from_secs(180),
            completed,
        );
        let (status, v) = api.call(
            "POST",
            "/v1/models",
            ADMIN_TOKEN,
            &format!(r#"{{"job_id":{job},"name":"{model}"}}"#),
            false,
        );
        assert_eq!(status, 201, "{v}");
        res.push(Resources {
            tenant,
            job,
            client: clients[0],
            model,
        });
    }
    let mut table = Vec::new();
    let mut mismatches = Vec::new();
    for (ep, (label, want_own, want_other)) in endpoints().iter().zip(EXPECTED) {
        let mut got = [Vec::new(), Vec::new()];
        for (side, r) in res.iter().enumerate() {
            for (i, role) in ROLES.iter().enumerate() {
                if side == 1 && !ep.scoped {
                    got[side].push("—".to_owned());
                    continue;
                }
                // A victim per call: revoking it must not revoke a principal of the matrix.
                let victim = format!("victim-{side}-{role}");
                if ep.path.contains("{victim}") {
                    principal(&f, &victim, &["viewer"]);
                }
                let path = ep
                    .path
                    .replace("{job}", &r.job)
                    .replace("{client}", &r.client.to_string())
                    .replace("{tenant}", r.tenant)
                    .replace("{victim}", &victim)
                    .replace("{model}", r.model);
                let (body, toml) = (ep.body)(r.tenant);
                let body = body.replace("{job}", &r.job);
                let (status, v) = api.call(ep.method, &path, &tokens[i], &body, toml);
                let o = outcome(status);
                if o == "404" && !path.contains(r.tenant) && !body.contains(r.tenant) {
                    // Hidden exactly like a missing resource: its tenant is not named.
                    let text = v.to_string();
                    assert!(!text.contains(r.tenant), "{label} as {role}: {text}");
                }
                let want = if side == 0 {
                    want_own[i]
                } else {
                    want_other[i]
                };
                if o != want {
                    mismatches.push(format!(
                        "{label} as {role} ({}): want {want}, got {status} {v}",
                        if side == 0 { "own" } else { "other" }
                    ));
                }
                got[side].push(o.to_owned());
            }
        }
        let [own, other] = got;
        table.push((label.to_owned(), own, other));
    }
    assert!(
        mismatches.is_empty(),
        "access matrix differs:\n{}",
        mismatches.join("\n")
    );
    // Lists are filtered to the caller's tenants.
    for (i, role) in ROLES.iter().enumerate().skip(1) {
        let (status, v) = api.call("GET", "/v1/jobs", &tokens[i], "", false);
        assert_eq!(status, 200, "{role}: {v}");
        let tenants: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|j| j["tenant"].as_str())
            .collect();
        assert!(!tenants.is_empty(), "{role} sees its tenant's jobs: {v}");
        assert!(tenants.iter().all(|t| *t == OWN), "{role} sees {tenants:?}");
    }
    let (_, v) = api.call("GET", "/v1/clients", &tokens[1], "", false);
    let listed: Vec<&Value> = v.as_array().unwrap().iter().collect();
    assert!(
        !listed.is_empty() && listed.iter().all(|c| c["tenant"] == OWN),
        "{v}"
    );
    // The bootstrap admin sees both tenants.
    let (_, v) = api.call("GET", "/v1/jobs", ADMIN_TOKEN, "", false);
    let all: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["tenant"].as_str())
        .collect();
    assert!(all.contains(&OWN) && all.contains(&OTHER), "{v}");

    let doc = render(&table);
    let path = workspace_root().join("docs/access-control.md");
    if std::env::var("FLOTILLA_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &doc).unwrap();
    } else {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == doc,
            "docs/access-control.md is not the table this test observed; regenerate it with \
             FLOTILLA_BLESS=1 cargo test -p flotilla --test it governance_authz::the_access_matrix"
        );
    }
}

#[test]
fn the_access_matrix_holds_and_is_documented_sqlite() {
    run_matrix("authz-matrix", None);
}

#[test]
fn the_access_matrix_holds_and_is_documented_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_authz") else {
        return;
    };
    run_matrix("authz-matrix-pg", Some(schema.url().to_owned()));
}

fn state(f: &Federation, job: &str) -> String {
    f.status(job)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn run_approval(name: &str, database_url: Option<String>) {
    let mut f = Federation::new(name, database_url);
    let api = Api::new(&f);
    let alice = principal(&f, "alice", &["scientist", "approver"]);
    let bob = principal(&f, "bob", &["approver"]);
    let carol = principal(&f, "carol", &["scientist"]);
    // Only admins change tenant settings.
    let refused = cli_as(
        &f,
        &alice,
        &["tenant", "set", OWN, "--require-approval", "on"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    ok(&f.admin_cli(&["tenant", "set", OWN, "--require-approval", "on"]));
    clients_of(&mut f, &api, OWN, 2);

    // Submitted by alice: stored, not started, while both clients are online.
    let spec = f.dir.join("approval.toml");
    std::fs::write(&spec, job_spec("needs-approval", OWN, 2, 2)).unwrap();
    let spec = spec.to_str().unwrap();
    let job = ok(&cli_as(&f, &alice, &["job", "submit", spec]));
    std::thread::sleep(Duration::from_secs(4));
    let s = f.status(&job);
    assert_eq!(s["state"], "pending_approval", "{s}");
    assert_eq!(s["rounds_completed"], 0, "{s}");
    assert!(s.get("current").is_none(), "no round runs: {s}");
    assert_eq!(s["approval"]["submitted_by"], "principal:alice", "{s}");
    assert_eq!(s["approval"]["state"], "pending", "{s}");
    // Its submitter cannot approve it, even as an approver; a scientist cannot at all.
    let own = cli_as(&f, &alice, &["job", "approve", &job]);
    assert!(!own.status.success());
    let err = String::from_utf8_lossy(&own.stderr);
    assert!(err.contains("403") && err.contains("submitter"), "{err}");
    let (status, v) = api.call(
        "POST",
        &format!("/v1/jobs/{job}/approve"),
        &carol,
        "",
        false,
    );
    assert_eq!(status, 403, "{v}");
    assert_eq!(state(&f, &job), "pending_approval");

    // A restart leaves it waiting.
    f.kill_server();
    f.start_server();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&f, &job), "pending_approval");

    // Another approver approves: it starts and completes as any job would.
    ok(&cli_as(&f, &bob, &["job", "approve", &job]));
    let s = f.wait_for(
        &job,
        "the approved job completed",
        Duration::from_secs(180),
        completed,
    );
    assert_eq!(s["approval"]["state"], "approved", "{s}");
    assert_eq!(s["approval"]["by"], "principal:bob", "{s}");
    assert!(s["approval"]["at_ms"].as_i64().unwrap_or(0) > 0, "{s}");
    assert_eq!(s["rounds_completed"], 2, "{s}");

    // A rejected job never runs.
    let job2 = ok(&cli_as(&f, &alice, &["job", "submit", spec]));
    let out = cli_as(
        &f,
        &bob,
        &["job", "reject", &job2, "--reason", "wrong dataset"],
    );
    assert!(ok(&out).contains("rejected"));
    std::thread::sleep(Duration::from_secs(3));
    let s = f.status(&job2);
    assert_eq!(s["state"], "rejected", "{s}");
    assert_eq!(s["rounds_completed"], 0, "{s}");
    assert!(s["history"].as_array().is_none_or(|h| h.is_empty()), "{s}");
    assert_eq!(s["approval"]["by"], "principal:bob", "{s}");
    assert_eq!(s["approval"]["reason"], "wrong dataset", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("wrong dataset"),
        "{s}"
    );
    // Decided once: approving it now is a conflict.
    let (status, v) = api.call("POST", &format!("/v1/jobs/{job2}/approve"), &bob, "", false);
    assert_eq!(status, 409, "{v}");

    // `principal list` shows them; a revoked principal's valid token is 401 at once.
    let list = ok(&f.admin_cli(&["principal", "list"]));
    let _ = list;
    let out = f.admin_cli(&["principal", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("alice") && table.contains("hospital:approver"),
        "{table}"
    );
    let (status, _) = api.call("GET", "/v1/jobs", &alice, "", false);
    assert_eq!(status, 200);
    ok(&f.admin_cli(&["principal", "revoke", "alice"]));
    let (status, v) = api.call("GET", "/v1/jobs", &alice, "", false);
    assert_eq!(status, 401, "{v}");
    assert!(v.to_string().contains("revoked"), "{v}");
    let out = cli_as(&f, &alice, &["job", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // The principals' tokens are never listed.
    let out = f.admin_cli(&["principal", "list", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v.to_string().contains("flt_pat_"), "{v}");
    let revoked = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "alice")
        .cloned()
        .unwrap_or(json!(null));
    assert_eq!(revoked["revoked"], true, "{v}");
}

#[test]
fn a_job_needing_approval_waits_for_another_approver_sqlite() {
    run_approval("authz-approval", None);
}

#[test]
fn a_job_needing_approval_waits_for_another_approver_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create_blocking("flotilla_authz") else {
        return;
    };
    run_approval("authz-approval-pg", Some(schema.url().to_owned()));
}
