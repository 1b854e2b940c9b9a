//! `flotilla model …`: the model registry on a coordinator's admin API: register a job's model,
//! list and show models and versions (lineage, gate report, evaluations), promote through the
//! release gate, roll back, set the gate, export a version as safetensors or raw f32.
//!
//! Output is for people by default; `--json` prints the coordinator's answer. Token, URL and TLS
//! handling are `admin_cmd`'s.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use flotilla_coordinator::api::{
    ModelDetail, ModelVersionInfo, PromoteRequest, PromoteResult, RegisterRequest,
    RegisteredModelInfo, RollbackRequest, RolledBack, VersionDetail,
};
use flotilla_registry::{Gate, ModelName, ModelRef, Stage};

use crate::admin_cmd::{Admin, AdminArgs, JsonArg, body, typed};
use crate::model_file::ModelFormat;

mod export;
mod view;

/// `flotilla model …`
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Register a job's committed model (default: its last committed round) as the next version
    /// of NAME; prints NAME@VERSION as the last line of stdout.
    Register {
        #[command(flatten)]
        admin: AdminArgs,
        /// The job that trained it
        #[arg(long, value_name = "ID")]
        job: u64,
        /// Its committed round [default: the job's last committed round]
        #[arg(long, value_name = "R")]
        round: Option<u64>,
        /// The model's name (a-z, 0-9, '.', '_', '-'; created on its first version)
        #[arg(long, value_name = "NAME")]
        name: String,
        #[command(flatten)]
        output: JsonArg,
    },
    /// List the registered models.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Show a model (its versions, and the production or latest version in detail) or one
    /// version: lineage, stage, gate report, evaluations.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// NAME or NAME@VERSION
        model: String,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Move a version to staging, production or archived; staging, production and canaries go
    /// through the model's release gate, which refuses naming the failing rule.
    Promote {
        #[command(flatten)]
        admin: AdminArgs,
        /// NAME@VERSION
        model: String,
        /// The stage to move to
        #[arg(long, value_enum, default_value = "production")]
        stage: StageArg,
        /// Serve the version to PERCENT % of clients (1-99) while production serves the rest
        #[arg(long, value_name = "PERCENT", conflicts_with = "full")]
        canary: Option<u8>,
        /// Serve it to every client (production; ends a canary of this version)
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Roll back at once: end a canary, else return production to the previous production version.
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        /// The model
        name: String,
        /// Why (kept in the audit log)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        output: JsonArg,
    },
    /// The model's release gate.
    #[command(subcommand)]
    Gate(GateCommand),
    /// Federated evaluation of a version: a sample of the tenant's clients evaluate it on their
    /// local data; prints overall and per-cohort loss and accuracy and the fairness view, and
    /// stores the result with the version (the release gate reads it).
    Evaluate {
        /// NAME@VERSION
        model: String,
        #[command(flatten)]
        args: crate::admin_cmd::evaluate_cmd::EvaluateArgs,
    },
    /// Write a version's parameters to a file: safetensors (named F32 tensors, with the layout as
    /// FILE.layout.json beside it) or raw little-endian f32; checked against its SHA-256.
    Export {
        #[command(flatten)]
        admin: AdminArgs,
        /// NAME@VERSION
        model: String,
        /// File format
        #[arg(long, value_enum, default_value = "safetensors")]
        format: ModelFormat,
        /// Where to write it
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        output: JsonArg,
    },
}

/// `flotilla model gate …`
#[derive(Debug, clap::Subcommand)]
pub enum GateCommand {
    /// Set (replace) the release gate: the rules given; a rule left out is not checked.
    Set {
        #[command(flatten)]
        admin: AdminArgs,
        /// The model
        name: String,
        /// Minimum overall accuracy of the version's latest federated evaluation, 0-1
        #[arg(long, value_name = "F")]
        min_accuracy: Option<f64>,
        /// Most the overall accuracy may fall below production's, in points
        #[arg(long, value_name = "POINTS")]
        max_regression: Option<f64>,
        /// Most any cohort's accuracy may fall below production's, in points
        #[arg(long, value_name = "POINTS")]
        max_cohort_regression: Option<f64>,
        /// Most ε the job that trained the version may have spent
        #[arg(long, value_name = "F")]
        max_epsilon: Option<f64>,
        /// The job must have run under `[secagg]`
        #[arg(long)]
        require_secagg: bool,
        /// Fewest clients the latest federated evaluation must have heard from
        #[arg(long, value_name = "N")]
        min_eval_clients: Option<u64>,
        /// Promote a newly registered version that passes to staging by itself
        #[arg(long)]
        auto_staging: bool,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Show the release gate.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The model
        name: String,
        #[command(flatten)]
        output: JsonArg,
    },
}

/// `--stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StageArg {
    /// Passed the gate, not yet served
    Staging,
    /// Served to clients
    Production,
    /// No longer served
    Archived,
}

impl From<StageArg> for Stage {
    fn from(s: StageArg) -> Stage {
        match s {
            StageArg::Staging => Stage::Staging,
            StageArg::Production => Stage::Production,
            StageArg::Archived => Stage::Archived,
        }
    }
}

/// `NAME@VERSION`, required to have its version.
pub(crate) fn versioned(s: &str) -> Result<(ModelName, u64)> {
    let r: ModelRef = s.parse().map_err(|e| anyhow!("{e}"))?;
    match r.version {
        Some(v) => Ok((r.name, v)),
        None => bail!("{s}: name a version, e.g. {s}@1 (see `flotilla model show {s}`)"),
    }
}

fn name_arg(s: &str) -> Result<ModelName> {
    ModelName::new(s).map_err(|e| anyhow!("{e}"))
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Evaluate { model, args } => {
            let r: flotilla_registry::ModelRef =
                model.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            if r.version.is_none() {
                anyhow::bail!("model evaluate needs NAME@VERSION, e.g. {model}@1");
            }
            crate::admin_cmd::evaluate_cmd::run(
                &args,
                crate::admin_cmd::evaluate_cmd::Subject::Model(r.to_string()),
            )?;
        }
        ModelCommand::Register {
            admin,
            job,
            round,
            name,
            output,
        } => {
            let name = name_arg(&name)?;
            if round == Some(0) {
                bail!("--round: rounds are numbered from 1");
            }
            let req = RegisterRequest {
                job_id: job,
                round,
                name: name.to_string(),
            };
            let v = Admin::new(&admin)?.call(reqwest::Method::POST, "/v1/models", body(&req)?)?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            let v: ModelVersionInfo = typed(v, "model register")?;
            eprintln!(
                "registered job {} round {} as {}@{} ({}, sha256 {})",
                v.job_id, v.round, v.name, v.version, v.stage, v.model_sha256
            );
            println!("{}@{}", v.name, v.version);
        }
        ModelCommand::List { admin, output } => {
            let v = Admin::new(&admin)?.call(reqwest::Method::GET, "/v1/models", None)?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            let models: Vec<RegisteredModelInfo> = typed(v, "model list")?;
            print!("{}", view::model_list(&models));
        }
        ModelCommand::Show {
            admin,
            model,
            output,
        } => {
            let r: ModelRef = model.parse().map_err(|e| anyhow!("{e}"))?;
            let a = Admin::new(&admin)?;
            match r.version {
                Some(ver) => {
                    let v = a.call(
                        reqwest::Method::GET,
                        &format!("/v1/models/{}/versions/{ver}", r.name),
                        None,
                    )?;
                    if output.json {
                        println!("{v}");
                        return Ok(());
                    }
                    let d: VersionDetail = typed(v, "model version")?;
                    print!("{}", view::version_detail(&d));
                }
                None => {
                    let v = a.call(
                        reqwest::Method::GET,
                        &format!("/v1/models/{}", r.name),
                        None,
                    )?;
                    if output.json {
                        println!("{v}");
                        return Ok(());
                    }
                    let m: ModelDetail = typed(v, "model")?;
                    print!("{}", view::model_detail(&m));
                    // The version people ask about: production, else the latest.
                    if let Some(ver) = m.model.production.or(m.versions.last().map(|v| v.version)) {
                        let v = a.call(
                            reqwest::Method::GET,
                            &format!("/v1/models/{}/versions/{ver}", r.name),
                            None,
                        )?;
                        let d: VersionDetail = typed(v, "model version")?;
                        println!();
                        print!("{}", view::version_detail(&d));
                    }
                }
            }
        }
        ModelCommand::Promote {
            admin,
            model,
            stage,
            canary,
            full,
            output,
        } => {
            let (name, ver) = versioned(&model)?;
            let stage = Stage::from(stage);
            if (canary.is_some() || full) && stage != Stage::Production {
                bail!("--canary and --full roll a version out to production: leave --stage out");
            }
            if canary.is_some_and(|p| !(1..=99).contains(&p)) {
                bail!("--canary: a canary serves 1 to 99 % of clients (use --full for all)");
            }
            let req = PromoteRequest {
                stage: Some(stage),
                canary_percent: canary,
            };
            let v = Admin::new(&admin)?.call(
                reqwest::Method::POST,
                &format!("/v1/models/{name}/versions/{ver}/promote"),
                body(&req)?,
            )?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            let p: PromoteResult = typed(v, "model promote")?;
            match p.canary_percent {
                Some(pc) => println!(
                    "{}@{} is a canary for {pc}% of clients (production serves the rest); \
                     `flotilla model promote {}@{} --full` completes it, `flotilla model rollback {}` ends it",
                    p.version.name,
                    p.version.version,
                    p.version.name,
                    p.version.version,
                    p.version.name
                ),
                None => println!(
                    "{}@{} is {}",
                    p.version.name, p.version.version, p.version.stage
                ),
            }
            if let Some(r) = &p.gate_report
                && !r.rules.is_empty()
            {
                print!("{}", view::gate_report(r));
            }
        }
        ModelCommand::Rollback {
            admin,
            name,
            reason,
            output,
        } => {
            let name = name_arg(&name)?;
            let req = RollbackRequest { reason };
            let v = Admin::new(&admin)?.call(
                reqwest::Method::POST,
                &format!("/v1/models/{name}/rollback"),
                body(&req)?,
            )?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            let r: RolledBack = typed(v, "model rollback")?;
            if r.ended_canary {
                println!(
                    "ended the canary of {}@{}: every client gets production {}@{} on its next fetch",
                    r.name, r.from, r.name, r.to
                );
            } else {
                println!(
                    "rolled {} back: production is {}@{} again ({}@{} archived); clients get it on their next fetch",
                    r.name, r.name, r.to, r.name, r.from
                );
            }
        }
        ModelCommand::Gate(GateCommand::Set {
            admin,
            name,
            min_accuracy,
            max_regression,
            max_cohort_regression,
            max_epsilon,
            require_secagg,
            min_eval_clients,
            auto_staging,
            output,
        }) => {
            let name = name_arg(&name)?;
            let gate = Gate {
                min_accuracy,
                max_regression_points: max_regression,
                max_cohort_regression_points: max_cohort_regression,
                max_epsilon,
                require_secagg,
                min_eval_clients,
                auto_staging,
            };
            // Locally first, naming the flag.
            gate.validate().map_err(|e| {
                anyhow!(
                    "--{}",
                    e.0.replace("_points", "")
                        .replacen('_', "-", 3)
                        .trim_start_matches('-')
                )
            })?;
            let v = Admin::new(&admin)?.call(
                reqwest::Method::PUT,
                &format!("/v1/models/{name}/gate"),
                body(&gate)?,
            )?;
            if output.json {
                println!("{v}");
                return Ok(());
            }
            let m: RegisteredModelInfo = typed(v, "model gate set")?;
            println!("release gate of {} set", m.name);
            print!("{}", view::gate(m.gate.as_ref()));
        }
        ModelCommand::Gate(GateCommand::Show {
            admin,
            name,
            output,
        }) => {
            let name = name_arg(&name)?;
            let v = Admin::new(&admin)?.call(
                reqwest::Method::GET,
                &format!("/v1/models/{name}"),
                None,
            )?;
            let m: ModelDetail = typed(v, "model")?;
            if output.json {
                println!(
                    "{}",
                    serde_json::to_string(&m.model.gate).context("encoding the gate")?
                );
                return Ok(());
            }
            println!("release gate of {}", m.model.name);
            print!("{}", view::gate(m.model.gate.as_ref()));
        }
        ModelCommand::Export {
            admin,
            model,
            format,
            out,
            output,
        } => {
            let (name, ver) = versioned(&model)?;
            export::export(&Admin::new(&admin)?, &name, ver, format, &out, output.json)?;
        }
    }
    Ok(())
}
