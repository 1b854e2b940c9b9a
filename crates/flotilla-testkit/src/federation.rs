//! The real-process harness of the federation tests: a `flotilla server` process with TLS and its
//! clients, driven through the CLI (the binary is [`crate::process::bin`]).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_coordinator::api::JobStatus;
use serde_json::Value;

use crate::process::{Procs, bin, free_port, workspace_root};

/// The admin token of every federation's server.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// A coordinator process (TLS, its own data dir and ports) and the client processes started for it.
#[derive(Debug)]
pub struct Federation {
    /// Its directory: certificates, server data, client state, logs.
    pub dir: PathBuf,
    /// The gRPC port.
    pub grpc: u16,
    /// The admin API port.
    pub admin: u16,
    /// The server's `--database-url`, if not SQLite in its data dir.
    pub database_url: Option<String>,
    /// Extra `flotilla server` arguments (e.g. `--blob-url DIR`).
    pub server_args: Vec<String>,
    /// Extra environment of the server process (e.g. a `RUST_LOG` filter; default `warn`).
    pub server_env: Vec<(String, String)>,
    /// The server process (more than one after a restart; the last is current).
    pub server: Procs,
    /// The client processes.
    pub clients: Procs,
}

impl Federation {
    /// Dev certificates and a started server in a fresh `flotilla-e2e-<pid>-<name>` temp dir.
    pub fn new(name: &str, database_url: Option<String>) -> Self {
        Self::with_server(name, database_url, &[], &[])
    }

    /// [`Federation::new`] whose server gets extra arguments and environment variables.
    pub fn with_server(
        name: &str,
        database_url: Option<String>,
        server_args: &[&str],
        server_env: &[(&str, &str)],
    ) -> Self {
        let dir = scratch_with_certs("e2e", name);
        let mut f = Federation {
            dir,
            grpc: free_port(),
            admin: free_port(),
            database_url,
            server_args: server_args.iter().map(|a| a.to_string()).collect(),
            server_env: server_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            server: Procs(Vec::new()),
            clients: Procs(Vec::new()),
        };
        f.start_server();
        f
    }

    /// The CA certificate's path.
    pub fn ca(&self) -> String {
        self.dir.join("certs/ca.pem").display().to_string()
    }

    /// The admin API's URL.
    pub fn admin_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.admin)
    }

    /// Starts (or restarts) the server process and waits until its admin API answers.
    pub fn start_server(&mut self) {
        let certs = self.dir.join("certs");
        let mut cmd = Command::new(bin());
        cmd.args(["server", "--data-dir"])
            .arg(self.dir.join("server"))
            .args(["--listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin)])
            .arg("--tls-cert")
            .arg(certs.join("server.pem"))
            .arg("--tls-key")
            .arg(certs.join("server-key.pem"))
            .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join(format!("server-{}.log", self.server.0.len())))
                    .unwrap(),
            );
        if let Some(url) = &self.database_url {
            cmd.args(["--database-url", url]);
        }
        cmd.args(&self.server_args);
        cmd.envs(self.server_env.iter().map(|(k, v)| (k, v)));
        self.server.0.push(cmd.spawn().unwrap());
        // Ready when the admin API answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.admin_cli(&["job", "list"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("coordinator did not come up; see {}", self.dir.display());
    }

    /// `kill -9` of the coordinator.
    pub fn kill_server(&mut self) {
        for c in &mut self.server.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET /v1/metrics` (from a plain thread: reqwest's blocking client must not run in a runtime).
    pub fn metrics(&self) -> Value {
        let (url, ca) = (
            format!("{}/v1/metrics", self.admin_url()),
            std::fs::read(self.ca()).unwrap(),
        );
        std::thread::spawn(move || {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let ca = reqwest::Certificate::from_pem(&ca).unwrap();
            let http = reqwest::blocking::Client::builder()
                .add_root_certificate(ca)
                .build()
                .unwrap();
            http.get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .unwrap()
                .json::<Value>()
                .unwrap()
        })
        .join()
        .unwrap()
    }

    /// Runs `flotilla ARGS` against this server's admin API.
    pub fn admin_cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .args(["--admin-url", &self.admin_url(), "--ca-cert", &self.ca()])
            .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
            .current_dir(workspace_root());
        cmd.output().unwrap()
    }

    /// The last stdout line of a successful [`Federation::admin_cli`] call.
    pub fn last_line(&self, args: &[&str]) -> String {
        crate::process::last_line(&self.admin_cli(args))
    }

    /// Creates an enrollment token and starts `n` clients on digits partitions `i/n`.
    pub fn start_clients(&mut self, n: usize) {
        let token = self.last_line(&[
            "enroll-token",
            "create",
            "--uses",
            &n.to_string(),
            "--expires",
            "1h",
        ]);
        for i in 0..n {
            self.spawn_client(&format!("client-{i}"), &token, &format!("{i}/{n}"));
        }
    }

    /// A client process with state in `name/` and log in `name.log`, training on a digits partition.
    pub fn spawn_client(&mut self, name: &str, token: &str, partition: &str) {
        self.spawn_client_with(name, token, partition, &[], "warn");
    }

    /// [`Federation::spawn_client`] with extra CLI arguments and a `RUST_LOG` filter.
    pub fn spawn_client_with(
        &mut self,
        name: &str,
        token: &str,
        partition: &str,
        extra: &[&str],
        log: &str,
    ) {
        let child = Command::new(bin())
            .args([
                "client",
                "--coordinator",
                &format!("https://127.0.0.1:{}", self.grpc),
            ])
            .args(["--ca-cert", &self.ca(), "--token", token])
            .arg("--state-dir")
            .arg(self.dir.join(name))
            .args(["--dataset", "digits", "--partition", partition])
            .args(extra)
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        self.clients.0.push(child);
    }

    /// Submits a job spec; its id.
    pub fn submit(&self, spec: &str) -> String {
        let path = self.dir.join("job.toml");
        std::fs::write(&path, spec).unwrap();
        self.last_line(&["job", "submit", path.to_str().unwrap()])
    }

    /// `job status --json` (`Null` if the call fails).
    pub fn status(&self, job: &str) -> Value {
        let out = self.admin_cli(&["job", "status", job, "--json"]);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Polls the job's status until `done` holds (panics naming `what` after `timeout`).
    pub fn wait_for(
        &self,
        job: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(job);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status {s}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A fresh, empty `flotilla-<kind>-<pid>-<name>` temp directory holding `certs/` from
/// `flotilla dev-certs` (CA, server certificate and key), as a user would make them.
pub fn scratch_with_certs(kind: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flotilla-{kind}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(bin())
        .args(["dev-certs", dir.join("certs").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dev-certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A `job status --json` answer, typed (`None` for `Null` or anything else that is not one).
pub fn typed_status(s: &Value) -> Option<JobStatus> {
    serde_json::from_value(s.clone()).ok()
}

/// Whether a job status says completed.
pub fn completed(s: &Value) -> bool {
    typed_status(s).is_some_and(|s| s.job.state == "completed")
}

/// Completed, and its last round evaluated: the coordinator evaluates a committed model after the
/// commit is durable, off the round's path, so the last round's `eval_*` metrics appear shortly
/// after the job completed (earlier rounds may be skipped when rounds commit faster).
pub fn completed_and_evaluated(s: &Value) -> bool {
    typed_status(s).is_some_and(|s| {
        s.job.state == "completed"
            && s.history
                .last()
                .and_then(|r| r.metrics.eval.as_ref())
                .is_some_and(|e| e.eval_accuracy.is_some())
    })
}
