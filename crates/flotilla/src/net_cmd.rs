//! `flotilla client`: a federated client process, plus shared plumbing of the networked commands.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use std::time::Duration;

use flotilla_client::{
    BoxError, Client, ClientConfig, DatasetTrainer, EvalOutcome, LocalTrainer, TaskInfo,
    TrainOutcome,
};
use flotilla_data::DatasetName;

use crate::DataDirArg;
use crate::admin_cmd::{self, ClientAdminCommand};

/// Arguments of `flotilla client`: run a client, or administer clients (`client list`, `client revoke`).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ClientArgs {
    #[command(subcommand)]
    admin: Option<ClientAdminCommand>,
    /// Coordinator gRPC URL, e.g. https://127.0.0.1:7070
    #[arg(long, value_name = "URL", required = true)]
    coordinator: Option<String>,
    /// Enrollment token (needed only on the first start; the credential is kept in --state-dir)
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Where the client keeps its credential
    #[arg(long, value_name = "DIR", required = true)]
    state_dir: Option<PathBuf>,
    /// Built-in dataset to train on (with --partition)
    #[arg(long, value_name = "NAME", requires = "partition")]
    dataset: Option<String>,
    /// This client's share of the dataset: I/N (part I of an IID split into N)
    #[arg(long, value_name = "I/N", requires = "dataset")]
    partition: Option<String>,
    /// Train on your own data instead: a CSV file, one sample per line, features then an integer label
    #[arg(long, value_name = "PATH", conflicts_with_all = ["dataset", "partition"])]
    data: Option<PathBuf>,
    /// CA certificate (PEM) that signed the coordinator's certificate
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca_cert: Option<PathBuf>,
    /// Allow a plain-text http:// coordinator (development only)
    #[arg(long)]
    insecure: bool,
    /// Name shown in the admin API: 1–64 characters of ASCII letters, digits, space and . _ - @ : /
    #[arg(long, default_value = "flotilla-client")]
    name: String,
    /// Only serve these jobs (repeatable); default: any job this client is eligible for
    #[arg(long = "job", value_name = "ID")]
    jobs: Vec<String>,
    /// Announce an attribute at every check-in, for the coordinator's eligibility policies
    /// (repeatable), e.g. charging=true, unmetered=true, region=eu, labels=ward,icu
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    /// A cohort label sent with every federated evaluation report (repeatable), e.g.
    /// region=eu, device=phone: evaluations are summarized per KEY=VALUE
    #[arg(long = "cohort", value_name = "KEY=VALUE", value_parser = parse_cohort)]
    cohorts: Vec<(String, String)>,
    /// Wait this long after each local training before uploading, to act like a slower device
    /// (try deadlines or FedBuff's staleness settings on one machine); at most 3600000
    #[arg(long, value_name = "MS", default_value_t = 0)]
    train_delay_ms: u64,
    /// Serve this client's own GET /metrics (Prometheus; plain HTTP, no token) on this address
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    data_dir: DataDirArg,
    #[command(flatten)]
    telemetry: crate::telemetry::TelemetryArgs,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Longest `--train-delay-ms`: one hour.
const MAX_TRAIN_DELAY_MS: u64 = 3_600_000;

/// A trainer that takes `delay` longer per task than `inner` (`--train-delay-ms`).
struct Slowed<T> {
    inner: T,
    delay: Duration,
}

impl<T: LocalTrainer> LocalTrainer for Slowed<T> {
    fn num_samples(&self) -> u64 {
        self.inner.num_samples()
    }

    fn train(&mut self, task: &TaskInfo, global: &[f32]) -> Result<TrainOutcome, BoxError> {
        let outcome = self.inner.train(task, global);
        // Runs on the SDK's blocking thread, so sleeping here stalls nothing else.
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        outcome
    }

    fn evaluate(
        &mut self,
        task: &TaskInfo,
        global: &[f32],
    ) -> Result<Option<EvalOutcome>, BoxError> {
        self.inner.evaluate(task, global)
    }
}

/// `--cohort KEY=VALUE`, checked like the SDK checks `ClientConfig::cohorts`.
fn parse_cohort(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, e.g. region=eu, got {s:?}"))?;
    let pair = (k.trim().to_owned(), v.trim().to_owned());
    flotilla_registry::check_cohorts([(&pair.0, &pair.1)]).map_err(|e| e.to_string())?;
    Ok(pair)
}

fn parse_partition(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("--partition must look like I/N, e.g. 3/10, got {s}"))?;
    let i: usize = i
        .trim()
        .parse()
        .with_context(|| format!("--partition {s}: I is not a number"))?;
    let n: usize = n
        .trim()
        .parse()
        .with_context(|| format!("--partition {s}: N is not a number"))?;
    if n == 0 || i >= n {
        bail!("--partition {s}: need 0 ≤ I < N");
    }
    Ok((i, n))
}

/// `--attribute KEY=VALUE`: a non-empty key of at most 64 bytes, a value of at most 256.
fn parse_attribute(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, e.g. charging=true, got {s:?}"))?;
    let k = k.trim();
    if k.is_empty() || k.len() > 64 || v.len() > 256 {
        return Err(format!(
            "{s:?}: the key must be 1..=64 bytes and the value at most 256"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

pub fn client(args: ClientArgs) -> Result<()> {
    if let Some(cmd) = args.admin {
        return admin_cmd::client_admin(cmd);
    }
    let rt = runtime()?;
    let telemetry = crate::telemetry::init(&args.telemetry, "flotilla-client", &rt)?;
    let coordinator = args
        .coordinator
        .ok_or_else(|| anyhow!("--coordinator is required"))?;
    if args.train_delay_ms > MAX_TRAIN_DELAY_MS {
        bail!(
            "--train-delay-ms must be in 0..={MAX_TRAIN_DELAY_MS}, got {}",
            args.train_delay_ms
        );
    }
    let state_dir = args
        .state_dir
        .ok_or_else(|| anyhow!("--state-dir is required"))?;
    let trainer = match (args.data, args.dataset, args.partition) {
        (Some(path), _, _) => {
            let data = flotilla_data::load_csv(&path)?;
            let all: Vec<u32> = (0..data.len() as u32).collect();
            DatasetTrainer::new(data, all).with_context(|| format!("using {}", path.display()))?
        }
        (None, Some(dataset), Some(partition)) => {
            let dataset = DatasetName::from_str(&dataset)?;
            let (index, of) = parse_partition(&partition)?;
            DatasetTrainer::from_partition(dataset, &args.data_dir.resolve(), index, of)
                .with_context(|| format!("loading {dataset} part {index}/{of}"))?
        }
        _ => bail!(
            "give the client data to train on: --dataset NAME --partition I/N, or --data FILE.csv"
        ),
    };
    let mut config = ClientConfig::new(coordinator, state_dir);
    config.ca_cert = args.ca_cert;
    config.insecure = args.insecure;
    config.enrollment_token = args.token;
    config.client_name = args.name;
    config.job_ids = args.jobs;
    config.attributes = args.attributes.into_iter().collect();
    config.cohorts = args.cohorts.into_iter().collect();
    let mut client = Client::new(config).context("configuring the client")?;
    let rt = runtime()?;
    if let Some(addr) = args.metrics_listen {
        let metrics = std::sync::Arc::new(crate::client_metrics::ClientMetrics::new());
        let bound = rt.block_on(crate::client_metrics::serve(addr, metrics.clone()))?;
        tracing::info!(addr = %bound, "serving /metrics (plain HTTP, no token)");
        client = client.on_stats(move |s| metrics.observe(s));
    }
    let trainer = Slowed {
        inner: trainer,
        delay: Duration::from_millis(args.train_delay_ms),
    };
    // The run's error, not the `RunError` around it: its Display repeats the error's, which the
    // one-line `error: …` report would then print twice.
    let stats = rt
        .block_on(client.run(trainer, shutdown_signal()))
        .map_err(|e| e.error)
        .context("client stopped");
    if let Ok(stats) = &stats {
        tracing::info!(?stats, "client finished");
    }
    // The last spans (the task cut short by the shutdown) are exported while the runtime runs.
    telemetry.shutdown();
    stats.map(drop)
}
