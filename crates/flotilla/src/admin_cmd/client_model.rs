//! `flotilla client model pull NAME`: a registered model for inference, as this client is served
//! it (production, or the canary for a canary rollout's share), written to a file.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use flotilla_client::{Client, ClientConfig, PulledModel};

use crate::admin_view::bytes_human;
use crate::model_file::{self, ModelFormat, TensorEntry};

/// `flotilla client model …`
#[derive(Debug, clap::Subcommand)]
pub enum ClientModelCommand {
    /// Fetch the version of a registered model this client is served (production, or the canary
    /// for a canary's share of clients) and write it to a file
    Pull(PullArgs),
}

/// Arguments of `flotilla client model pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The registered model's name, e.g. digits
    name: String,
    /// Coordinator gRPC URL, e.g. https://127.0.0.1:7070
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// Where the client keeps its credential (enrolls with --token when there is none)
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Enrollment token (needed only on the first start)
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// CA certificate (PEM) that signed the coordinator's certificate
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca_cert: Option<PathBuf>,
    /// Allow a plain-text http:// coordinator (development only)
    #[arg(long)]
    insecure: bool,
    /// File to write (replaced atomically)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// File format
    #[arg(long, value_enum, default_value = "safetensors")]
    format: ModelFormat,
    /// Print one JSON object instead of a sentence
    #[arg(long)]
    json: bool,
}

/// Runs a `flotilla client model` command.
pub fn run(cmd: ClientModelCommand) -> Result<()> {
    match cmd {
        ClientModelCommand::Pull(args) => pull(args),
    }
}

fn pull(args: PullArgs) -> Result<()> {
    let mut config = ClientConfig::new(args.coordinator, args.state_dir);
    config.ca_cert = args.ca_cert;
    config.insecure = args.insecure;
    config.enrollment_token = args.token;
    let mut client = Client::new(config).context("configuring the client")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let m = rt
        .block_on(client.pull_model(&args.name))
        .with_context(|| format!("pulling model {}", args.name))?;
    let bytes: Vec<u8> = m.params.iter().flat_map(|v| v.to_le_bytes()).collect();
    // `pull_model` verified the SHA-256; this checks the bytes about to be written are those.
    anyhow::ensure!(
        model_file::sha256_hex(&bytes) == m.sha256,
        "the pulled model changed in memory; nothing was written (retry)"
    );
    let tensors: Vec<TensorEntry> = m
        .layout
        .tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            shape: t.shape.clone(),
        })
        .collect();
    let size = model_file::write_model(&args.out, args.format, &tensors, &bytes, metadata(&m))?;
    if args.json {
        let v = serde_json::json!({
            "name": m.name, "version": m.version, "canary": m.canary,
            "sha256": m.sha256, "path": args.out.display().to_string(),
            "file_size_bytes": size,
            "format": match args.format { ModelFormat::Safetensors => "safetensors", ModelFormat::Raw => "raw" },
            "client_id": client.client_id(),
        });
        println!("{v}");
    } else {
        println!(
            "pulled {}@{}{} → {}, {}, sha256 {}",
            m.name,
            m.version,
            if m.canary { " (canary)" } else { "" },
            args.out.display(),
            bytes_human(size),
            m.sha256
        );
    }
    Ok(())
}

/// The safetensors header's metadata: which version this is.
fn metadata(m: &PulledModel) -> HashMap<String, String> {
    let mut meta = HashMap::from([
        ("model_name".to_owned(), m.name.clone()),
        ("model_version".to_owned(), m.version.to_string()),
        ("model_sha256".to_owned(), m.sha256.clone()),
        ("canary".to_owned(), m.canary.to_string()),
        ("format".to_owned(), "flotilla".to_owned()),
    ]);
    if let Some(spec) = &m.spec {
        meta.insert("model_kind".to_owned(), spec.kind.clone());
    }
    meta
}
