//! Commands that talk to a coordinator's admin HTTP/JSON API: `enroll-token`, `job`, `client`.
//! Output is for people by default (see `admin_view`); `--json` prints the coordinator's answer.
//!
//! Every request carries `authorization: Bearer <token>`: `--token`, else `$FLOTILLA_TOKEN`, else
//! `$FLOTILLA_ADMIN_TOKEN`. TLS is verified against the
//! CA given with `--ca-cert` (and only that CA); plain `http://` needs `--insecure`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_coordinator::api::{
    CancelRequest, ErrorBody, JobSubmitted, TokenIssued, TokenRequest,
};
use serde_json::Value;

use crate::admin_view::{self, Clock};
use crate::model_file::ModelFormat;

pub(crate) mod client_model;
mod download;
#[path = "evaluate_cmd.rs"]
pub(crate) mod evaluate_cmd;
#[path = "evidence_cmd.rs"]
pub(crate) mod evidence_cmd;
mod initial;
#[path = "principal_cmd.rs"]
pub(crate) mod principal_cmd;
#[path = "retention_cmd.rs"]
pub(crate) mod retention_cmd;
mod wait;

/// Where the admin API is and how to trust it.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Admin API of the coordinator, e.g. https://127.0.0.1:7443
    #[arg(long, env = "FLOTILLA_ADMIN_URL", value_name = "URL")]
    admin_url: String,
    /// CA certificate (PEM) that signed the coordinator's certificate
    #[arg(long, env = "FLOTILLA_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Allow a plain-text http:// admin URL (development only)
    #[arg(long)]
    insecure: bool,
    /// How long to wait for a coordinator that is still starting (connection refused), e.g. 10s;
    /// 0 fails at once
    #[arg(long, env = "FLOTILLA_ADMIN_WAIT", value_name = "DURATION", default_value = "5s",
          value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Token to call with: a principal's token [default: $FLOTILLA_TOKEN, else
    /// $FLOTILLA_ADMIN_TOKEN, the bootstrap admin]
    #[arg(
        long,
        env = "FLOTILLA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

/// `--json` / `--quiet`: who reads the output.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OutputArgs {
    /// Print the coordinator's answer as JSON (for scripts)
    #[arg(long, conflicts_with = "quiet")]
    pub(crate) json: bool,
    /// Print only the essential value (an id, a token), nothing else
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

/// `--json` alone, for commands with nothing to be quiet about.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct JsonArg {
    /// Print the coordinator's answer as JSON (for scripts)
    #[arg(long)]
    pub(crate) json: bool,
}

/// `flotilla enroll-token …`
#[derive(Debug, clap::Subcommand)]
pub enum EnrollTokenCommand {
    /// Create an enrollment token; prints it as the last line of stdout.
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// Tenant the enrolled clients belong to
        #[arg(long, default_value = "default")]
        tenant: String,
        /// How many clients may enroll with it
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid, e.g. 30m, 24h, 7d
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        expires: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `flotilla job …`
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Submit a job spec (TOML); prints the job id as the last line of stdout.
    Submit {
        #[command(flatten)]
        admin: AdminArgs,
        /// The job spec, e.g. examples/job-digits.toml
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List jobs.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Show a job's state, current round, clients and last committed rounds.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Job id
        id: String,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        admin: AdminArgs,
        /// Job id
        id: String,
        /// Why, recorded with the job and shown in its status
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Approve a job waiting for approval (needs `approver` in its tenant; not its submitter).
    Approve {
        #[command(flatten)]
        admin: AdminArgs,
        /// Job id
        id: String,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Reject a job waiting for approval: it is cancelled and never runs.
    Reject {
        #[command(flatten)]
        admin: AdminArgs,
        /// Job id
        id: String,
        /// Why, recorded with the job and shown in its status
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Wait until a job ends, printing its progress; exits non-zero unless it completed.
    Wait {
        #[command(flatten)]
        admin: AdminArgs,
        /// Job id
        id: String,
        /// Give up after this long, e.g. 30m [default: wait as long as the job runs]
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// How often to ask the coordinator
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Federated evaluation of a committed model: N clients of the job's tenant evaluate it on
    /// their local data; prints the result overall, per cohort, and the fairness view.
    Evaluate {
        /// Job id
        id: u64,
        /// Round whose model to evaluate [default: the latest committed round]
        #[arg(long, value_name = "R")]
        round: Option<u64>,
        #[command(flatten)]
        args: evaluate_cmd::EvaluateArgs,
    },
    /// Download a committed model, verified against the round's SHA-256.
    Download {
        #[command(flatten)]
        admin: AdminArgs,
        /// Job id
        id: String,
        /// Round whose model to download [default: the latest committed round]
        #[arg(long, value_name = "R")]
        round: Option<u64>,
        /// Where to write it (replaced atomically if it exists)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// File format
        #[arg(long, value_enum, default_value = "safetensors")]
        format: ModelFormat,
        #[command(flatten)]
        output: JsonArg,
    },
}

/// `flotilla client …` (administration of enrolled clients)
#[derive(Debug, clap::Subcommand)]
pub enum ClientAdminCommand {
    /// List enrolled clients.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Revoke a client's credential; its next call is refused.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// Client id
        id: String,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Erase a client's record (right to erasure) and print what was removed and kept.
    Forget {
        #[command(flatten)]
        admin: AdminArgs,
        /// Client id
        id: String,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Registered models for inference (`client model pull NAME --out FILE`).
    #[command(subcommand)]
    Model(client_model::ClientModelCommand),
}

pub(crate) struct Admin {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
    /// `--wait`: how long a refused connection is retried.
    wait: Duration,
}

impl Admin {
    pub(crate) fn new(args: &AdminArgs) -> Result<Self> {
        let token = match &args.token {
            Some(t) => t.trim().to_owned(),
            None => std::env::var("FLOTILLA_ADMIN_TOKEN").map_err(|_| {
                anyhow!(
                    "no token: pass --token, or set FLOTILLA_TOKEN (a principal's token) or \
                     FLOTILLA_ADMIN_TOKEN (the coordinator's admin token)"
                )
            })?,
        };
        let base = args.admin_url.trim_end_matches('/').to_string();
        // reqwest is built without a default crypto provider; use ring, as the rest of the stack does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
        if base.starts_with("http://") {
            if !args.insecure {
                bail!("--admin-url {base} is plain text; use https:// or pass --insecure");
            }
        } else if base.starts_with("https://") {
            let path = args
                .ca_cert
                .as_ref()
                .ok_or_else(|| anyhow!("--ca-cert is required for an https:// admin URL"))?;
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("--ca-cert {} is not a PEM certificate", path.display())
            })?;
            builder = builder.tls_certs_only([cert]);
        } else {
            bail!("--admin-url must start with https:// (or http:// with --insecure), got {base}");
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            base,
            token,
            http,
            wait: args.wait,
        })
    }

    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let deadline = Instant::now() + self.wait;
        let resp = loop {
            let req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            let req = match &body {
                Some(Body::Json(v)) => req.json(v),
                Some(Body::Toml(t)) => req
                    .header("content-type", "application/toml")
                    .body(t.clone()),
                Some(Body::Cedar(t)) => req.header("content-type", "text/plain").body(t.clone()),
                Some(Body::Multipart {
                    spec,
                    initial,
                    file_name,
                }) => {
                    let part = reqwest::blocking::multipart::Part::bytes(initial.clone())
                        .file_name(file_name.clone())
                        .mime_str("application/octet-stream")
                        .context("building the request")?;
                    let form = reqwest::blocking::multipart::Form::new()
                        .text("spec", spec.clone())
                        .part("initial", part);
                    // A large model takes longer than a request's usual 30 s to send.
                    let secs = 30 + (initial.len() as u64 >> 20);
                    req.multipart(form).timeout(Duration::from_secs(secs))
                }
                None => req,
            };
            match req.send() {
                Ok(resp) => break resp,
                // Refused: nothing listens yet and the request never left this process, so it is
                // safe to send again; any other error may have reached the server (no retry).
                Err(e) if connection_refused(&e) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.no_coordinator());
                    }
                    std::thread::sleep(left.min(Duration::from_millis(100)));
                }
                Err(e) => {
                    let e = flotilla_client::diagnose_tls(&e, None, &url)
                        .map_or_else(|| anyhow!(e), |hint| anyhow!(hint));
                    return Err(e).with_context(|| format!("calling {url}"));
                }
            }
        };
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        if !status.is_success() {
            let msg = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            bail!("{status}: {}", msg.trim());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{url} answered with invalid JSON"))
    }
}

impl Admin {
    /// `GET path` of a binary answer (a model's parameters): its headers and at most `max` bytes
    /// (one more is read, so a longer answer is refused rather than cut to size).
    pub(crate) fn get_bytes(
        &self,
        path: &str,
        max: u64,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>)> {
        use std::io::Read;
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().unwrap_or_default();
            let msg = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            bail!("{status}: {}", msg.trim());
        }
        let headers = resp.headers().clone();
        let mut bytes = Vec::new();
        resp.take(max + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading the answer of {url}"))?;
        if bytes.len() as u64 > max {
            bail!("{url} answered with more than {max} bytes; refusing it");
        }
        Ok((headers, bytes))
    }

    /// The one-line error when nothing listens at the admin URL, even after `--wait`.
    fn no_coordinator(&self) -> anyhow::Error {
        let listen = reqwest::Url::parse(&self.base)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_else(|| self.base.clone());
        let waited = if self.wait.is_zero() {
            "--wait 0".to_string()
        } else {
            format!("waited {}", humantime::format_duration(self.wait))
        };
        anyhow!(
            "no coordinator answers at {} ({waited}): is `flotilla server` running with --admin-listen {listen}?",
            self.base
        )
    }
}

/// Whether `e` is a refused TCP connection: the request was never sent.
fn connection_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return e.is_connect();
        }
        source = err.source();
    }
    false
}

pub(crate) enum Body {
    Json(Value),
    Toml(String),
    /// A Cedar policy file (`policy apply`).
    Cedar(String),
    /// A job spec with its `[model] initial` file (`multipart/form-data`).
    Multipart {
        spec: String,
        initial: Vec<u8>,
        file_name: String,
    },
}

/// Parses an answer into the typed form it is rendered from.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v)
        .with_context(|| format!("the coordinator's {what} answer is not understood (try --json)"))
}

/// A request body as JSON.
pub(crate) fn body(req: &impl serde::Serialize) -> Result<Option<Body>> {
    Ok(Some(Body::Json(
        serde_json::to_value(req).context("encoding the request")?,
    )))
}

/// Who cancels a job, as recorded with it: the login name, else "admin".
fn operator() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "admin".to_owned())
}

pub fn enroll_token(cmd: EnrollTokenCommand) -> Result<()> {
    let EnrollTokenCommand::Create {
        admin,
        tenant,
        uses,
        expires,
        output,
    } = cmd;
    let expires_in =
        humantime::parse_duration(&expires).with_context(|| format!("--expires {expires}"))?;
    if uses == 0 {
        bail!("--uses must be ≥ 1");
    }
    let a = Admin::new(&admin)?;
    let req = TokenRequest {
        tenant: Some(tenant.clone()),
        uses: Some(uses),
        expires_in_seconds: Some(expires_in.as_secs()),
    };
    let v = a.call(reqwest::Method::POST, "/v1/enrollment-tokens", body(&req)?)?;
    let issued: TokenIssued = typed(v.clone(), "enrollment token")?;
    if output.json {
        println!("{v}");
        return Ok(());
    }
    if !output.quiet {
        // Context on stderr: stdout stays the token alone, for `TOKEN=$(…)` and `| tail -1`.
        let clock = Clock::local();
        let until = format!(", valid until {}", clock.both(issued.expires_at_ms));
        let plural = if uses == 1 { "client" } else { "clients" };
        eprintln!(
            "enrollment token for tenant {}: enrolls up to {uses} {plural}{until}",
            admin_view::clean(&tenant)
        );
    }
    println!("{}", issued.token);
    Ok(())
}

pub fn job(cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Submit {
            admin,
            file,
            output,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            // A scenario file is a job spec plus simulation-only sections: submit its job part,
            // validated here first so that errors point into the file as written. A job file goes
            // as it is (the coordinator validates it, and would refuse simulation-only sections).
            let is_scenario = flotilla_spec::read(&text)
                .is_ok_and(|d| !flotilla_spec::moved::simulation_keys(&d).is_empty());
            let (text, removed) = if !is_scenario {
                (text, Vec::new())
            } else {
                flotilla_spec::strip_simulation_only(&text).map_err(|e| match e {
                    flotilla_spec::ParseError::Syntax(t) => {
                        anyhow!("{}", t.in_file(&file.display().to_string()))
                    }
                    flotilla_spec::ParseError::Invalid(e) => anyhow!("{}: {e}", file.display()),
                })?
            };
            if !removed.is_empty() && !output.quiet {
                eprintln!(
                    "note: {} is a scenario; submitting its job part without the simulation-only {}",
                    file.display(),
                    removed.join(", ")
                );
            }
            // A model given by `[model] initial` goes with the spec, read relative to the file.
            let body = match initial::read(&file, &text)? {
                None => Body::Toml(text),
                Some(f) => Body::Multipart {
                    spec: text,
                    initial: f.bytes,
                    file_name: f
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "initial.safetensors".to_owned()),
                },
            };
            let v = Admin::new(&admin)?
                .call(reqwest::Method::POST, "/v1/jobs", Some(body))
                .map_err(|e| {
                    // The coordinator says `toml: line L, column C: …`; name the file as a compiler would.
                    let msg = e.to_string();
                    match flotilla_core::config_toml::TomlError::split_displayed(&msg) {
                        Some((at, rest)) => {
                            anyhow!("{}:{}:{}: {rest}", file.display(), at.line, at.column)
                        }
                        None => e,
                    }
                })?;
            let id = typed::<JobSubmitted>(v.clone(), "job submission")?.job_id;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            if !output.quiet {
                eprintln!(
                    "submitted {} as job {id}; follow it with: flotilla job status {id}",
                    file.display()
                );
            }
            // The id is the last line of stdout: scripts and tests read it.
            println!("{id}");
        }
        JobCommand::List { admin, output } => {
            let v = Admin::new(&admin)?.call(reqwest::Method::GET, "/v1/jobs", None)?;
            if output.json {
                println!("{v}");
            } else {
                let jobs = v.get("jobs").cloned().unwrap_or(v);
                let jobs: Vec<admin_view::JobSummary> = typed(jobs, "job list")?;
                print!("{}", admin_view::job_list(&jobs, &Clock::local()));
            }
        }
        JobCommand::Status { admin, id, output } => {
            let a = Admin::new(&admin)?;
            let v = a.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)?;
            if output.json {
                println!("{v}");
            } else {
                let s: admin_view::JobStatus = typed(v, "job status")?;
                print!("{}", admin_view::job_status(&s, &Clock::local()));
                print!("{}", evaluate_cmd::job_status_lines(&a, &id));
            }
        }
        JobCommand::Cancel {
            admin,
            id,
            reason,
            output,
        } => {
            let req = CancelRequest {
                by: Some(operator()),
                reason,
            };
            let v = Admin::new(&admin)?.call(
                reqwest::Method::POST,
                &format!("/v1/jobs/{id}/cancel"),
                body(&req)?,
            )?;
            if output.json {
                println!("{v}");
            } else {
                println!("job {id} cancelled");
            }
        }
        JobCommand::Approve { admin, id, output } => principal_cmd::approve(&admin, &id, output)?,
        JobCommand::Reject {
            admin,
            id,
            reason,
            output,
        } => principal_cmd::reject(&admin, &id, reason, output)?,
        JobCommand::Wait {
            admin,
            id,
            timeout,
            interval,
            output,
        } => {
            let interval = interval.clamp(Duration::from_millis(100), Duration::from_secs(600));
            wait::wait(&Admin::new(&admin)?, &id, timeout, interval, output.json)?;
        }
        JobCommand::Evaluate { id, round, args } => {
            evaluate_cmd::run(&args, evaluate_cmd::Subject::Job { id, round })?;
        }
        JobCommand::Download {
            admin,
            id,
            round,
            out,
            format,
            output,
        } => {
            download::download(&Admin::new(&admin)?, &id, round, &out, format, output.json)?;
        }
    }
    Ok(())
}

pub fn client_admin(cmd: ClientAdminCommand) -> Result<()> {
    match cmd {
        ClientAdminCommand::List { admin, output } => {
            let v = Admin::new(&admin)?.call(reqwest::Method::GET, "/v1/clients", None)?;
            if output.json {
                println!("{v}");
            } else {
                let clients = v.get("clients").cloned().unwrap_or(v);
                let clients: Vec<admin_view::ClientEntry> = typed(clients, "client list")?;
                print!("{}", admin_view::client_list(&clients, &Clock::local()));
            }
        }
        ClientAdminCommand::Revoke { admin, id, output } => {
            let v = Admin::new(&admin)?.call(
                reqwest::Method::POST,
                &format!("/v1/clients/{id}/revoke"),
                None,
            )?;
            if output.json {
                println!("{v}");
            } else {
                println!("client {id} revoked; its next call is refused");
            }
        }
        ClientAdminCommand::Forget { admin, id, output } => {
            retention_cmd::forget(&admin, &id, output)?;
        }
        ClientAdminCommand::Model(cmd) => client_model::run(cmd)?,
    }
    Ok(())
}
