//! The real-process harness of the federation tests: a `flotilla server` process with TLS and its
//! clients, driven through the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_TOKEN: &str = "e2e-admin-token";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_flotilla")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Kills its processes when dropped, so a failing test leaves nothing running.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A coordinator process (TLS, its own data dir and ports) and the client processes started for it.
pub struct Federation {
    pub dir: PathBuf,
    pub grpc: u16,
    pub admin: u16,
    pub database_url: Option<String>,
    /// Extra `flotilla server` arguments (e.g. `--blob-url DIR`).
    pub server_args: Vec<String>,
    /// Extra environment of the server process (e.g. a `RUST_LOG` filter; default `warn`).
    pub server_env: Vec<(String, String)>,
    pub server: Procs,
    pub clients: Procs,
}

impl Federation {
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
        let dir = std::env::temp_dir().join(format!("flotilla-e2e-{}-{name}", std::process::id()));
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

    pub fn ca(&self) -> String {
        self.dir.join("certs/ca.pem").display().to_string()
    }

    pub fn admin_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.admin)
    }

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

    pub fn admin_cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .args(["--admin-url", &self.admin_url(), "--ca-cert", &self.ca()])
            .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
            .current_dir(workspace_root());
        cmd.output().unwrap()
    }

    pub fn last_line(&self, args: &[&str]) -> String {
        let out = self.admin_cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

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

    pub fn submit(&self, spec: &str) -> String {
        let path = self.dir.join("job.toml");
        std::fs::write(&path, spec).unwrap();
        self.last_line(&["job", "submit", path.to_str().unwrap()])
    }

    pub fn status(&self, job: &str) -> Value {
        let out = self.admin_cli(&["job", "status", job, "--json"]);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

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

pub fn completed(s: &Value) -> bool {
    s["state"] == "completed"
}

/// Completed, and its last round evaluated: the coordinator evaluates a committed model after the
/// commit is durable, off the round's path, so the last round's `eval_*` metrics appear shortly
/// after the job completed (earlier rounds may be skipped when rounds commit faster).
pub fn completed_and_evaluated(s: &Value) -> bool {
    completed(s)
        && s["history"]
            .as_array()
            .and_then(|h| h.last())
            .is_some_and(|r| r["metrics"]["eval_accuracy"].is_number())
}
