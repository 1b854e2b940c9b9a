//! `flotilla`: the command-line interface. The only crate that knows about terminals.
#![forbid(unsafe_code)]

mod admin_cmd;
mod admin_view;
mod audit_cmd;
mod bench_aggregate;
mod bench_cmd;
mod client_metrics;
mod completions_cmd;
mod data_cmd;
mod dev_certs;
mod dp_cmd;
mod log_escape;
mod model_cmd;
mod model_file;
mod net_cmd;
mod plot;
mod policy_cmd;
mod ready;
mod server_cmd;
mod server_models;
mod sim_cmd;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Flotilla: federated learning you can run on a laptop and trust in production.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole federation in this process, as a scenario file describes it.
    Sim(sim_cmd::SimArgs),
    /// Fetch datasets and inspect partitions.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Run a coordinator: gRPC for clients, HTTP/JSON for administration.
    Server(server_cmd::ServerArgs),
    /// Run a client that enrolls, trains on local data and uploads updates; or `client list|revoke`.
    Client(net_cmd::ClientArgs),
    /// Write a development CA and server certificate (for local federations and tests).
    DevCerts(server_cmd::DevCertsArgs),
    /// Create enrollment tokens on a coordinator.
    #[command(subcommand)]
    EnrollToken(admin_cmd::EnrollTokenCommand),
    /// Submit, list, inspect, cancel jobs on a coordinator and download their models.
    #[command(subcommand)]
    Job(admin_cmd::JobCommand),
    /// The model registry: register, list, show, promote, roll back, gate and export models.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Create, list and revoke principals (people and service accounts with roles per tenant).
    #[command(subcommand)]
    Principal(admin_cmd::principal_cmd::PrincipalCommand),
    /// Tenant settings on a coordinator (e.g. whether jobs need approval).
    #[command(subcommand)]
    Tenant(admin_cmd::principal_cmd::TenantCommand),
    /// Measure aggregation, secure aggregation and the coordinator; prints JSON with --json.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// Policies as code (Cedar): validate, apply, list and show the coordinator's policies.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Apply the coordinator's retention rules now (`retention run [--dry-run]`).
    #[command(subcommand)]
    Retention(admin_cmd::retention_cmd::RetentionCommand),
    /// Write a job's evidence pack (evidence.json and evidence.md) for a security review.
    EvidencePack(admin_cmd::evidence_cmd::EvidenceArgs),
    /// Differential privacy: ε of a DP-FedAvg schedule (`dp epsilon`).
    #[command(subcommand)]
    Dp(dp_cmd::DpCommand),
    /// The tamper-evident audit log: verify it, export it, make its signing key.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on stdout.
    Completions(completions_cmd::CompletionsArgs),
}

/// `--data-dir`, shared by the commands that read datasets.
#[derive(Debug, Clone, clap::Args)]
struct DataDirArg {
    /// Where datasets live [default: $FLOTILLA_DATA_DIR, else ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl DataDirArg {
    fn resolve(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(flotilla_data::default_data_dir)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim_cmd::run(args),
        Command::Data(cmd) => data_cmd::run(cmd),
        Command::Server(args) => server_cmd::server(args),
        Command::Client(args) => net_cmd::client(args),
        Command::DevCerts(args) => server_cmd::dev_certs(args),
        Command::EnrollToken(cmd) => admin_cmd::enroll_token(cmd),
        Command::Job(cmd) => admin_cmd::job(cmd),
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Principal(cmd) => admin_cmd::principal_cmd::principal(cmd),
        Command::Tenant(cmd) => admin_cmd::principal_cmd::tenant(cmd),
        Command::Bench(cmd) => bench_cmd::run(cmd),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Dp(cmd) => dp_cmd::run(cmd),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Retention(cmd) => admin_cmd::retention_cmd::retention(cmd),
        Command::EvidencePack(args) => admin_cmd::evidence_cmd::evidence_pack(args),
        Command::Completions(args) => completions_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and its causes, joined.
            // Messages quote the server and files: escaped, so they cannot drive the terminal.
            eprintln!(
                "error: {}",
                log_escape::escape_control(&error_line(&e).replace('\n', " "))
            );
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: ` (as `{:#}` does), leaving out a cause whose message the
/// one before it already quotes: many error types print their source in their own message too
/// (`store: {0}` with `#[source]`), and the line would otherwise say everything twice.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if line.is_empty() || !previous.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
        previous = message;
    }
    line
}

#[cfg(test)]
mod tests {
    /// Prints its source in its own message, and names it as its source too.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "store: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_line_says_each_cause_once() {
        let io = std::io::Error::other("bucket missing");
        let e = anyhow::Error::new(Quoting(io)).context("starting the coordinator");
        assert_eq!(
            super::error_line(&e),
            "starting the coordinator: store: bucket missing"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_line(&plain), "outer: inner");
    }
}
