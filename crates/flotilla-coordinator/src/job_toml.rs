//! Parsing a job TOML into a [`JobSpec`]: `flotilla_spec` (the vocabulary scenario files share),
//! then the coordinator's own rules (`privacy::check`). Above both `spec.rs` (the types) and
//! `privacy.rs` (which names [`JobSpec`]), so neither depends on the other's caller.

use flotilla_spec::{JobConfig, ModelSource, ParseError};

use crate::spec::{
    CUSTOM_KIND, FederatedEvalSection, JobSpec, ModelSection, SpecError, TrainSection,
};

impl JobSpec {
    /// Parses and validates a job TOML with `flotilla_spec` (the vocabulary scenario files share),
    /// then applies the coordinator's own rules (`[privacy] population`, distributed DP only over
    /// `[secagg]`). A scenario's simulation-only sections are refused, naming them. Nothing is read
    /// from disk: dataset shapes are known statically, and an evaluation dataset is loaded when the
    /// job starts.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let job = JobConfig::from_job_toml(text).map_err(|e| match e {
            // `toml: line 9, column 1: unknown key …`: the server does not know the file's name,
            // so the position is spelled out for the client to prefix its own (see `TomlError`).
            ParseError::Syntax(e) => SpecError::new("toml", e.to_string()),
            ParseError::Invalid(e) => e,
        })?;
        let name = job.name.clone().unwrap_or_else(|| "job".to_owned());
        flotilla_core::names::check_job_name(&name)
            .map_err(|e| SpecError::new("name", e.to_string()))?;
        check_compression(&job)?;
        let policy = job.policy();
        crate::privacy::check(job.privacy.as_ref(), &policy, job.secagg.is_some())?;
        let model = match &job.model {
            ModelSource::BuiltIn(model) => ModelSection {
                kind: model.kind_name().to_owned(),
                initial: None,
                input_shape: model.spec.input_shape.clone(),
                num_classes: model.spec.num_classes,
                hidden: model.hidden(),
                embed: model.embed(),
            },
            ModelSource::Initial(given) => ModelSection {
                kind: CUSTOM_KIND.to_owned(),
                initial: Some(given.path.clone()),
                input_shape: Vec::new(),
                num_classes: 0,
                hidden: 0,
                embed: 0,
            },
        };
        Ok(JobSpec {
            name,
            tenant: job.tenant,
            seed: job.seed,
            rounds: job.rounds,
            clients_per_round: job.clients_per_round,
            min_clients: policy.min_clients,
            over_selection: policy.over_selection,
            round_deadline_ms: policy.stage_deadline_ms,
            min_report_fraction: policy.min_report_fraction,
            max_attempts: policy.max_attempts,
            selection_window_ms: policy.selection_window_ms,
            retry_after_ms: policy.retry_after_ms,
            checkin_ttl_ms: policy.checkin_ttl_ms,
            model,
            train: TrainSection {
                local_epochs: job.train.local_epochs,
                batch_size: job.train.batch_size,
                learning_rate: job.train.learning_rate,
                max_grad_norm: job.train.max_grad_norm,
            },
            min_samples: job.min_samples,
            evaluation_dataset: job.evaluation_dataset.map(|d| d.to_string()),
            federated_evaluation: job.federated_evaluation.map(|f| FederatedEvalSection {
                every: f.every,
                clients: f.clients,
            }),
            strategy: job.strategy,
            secagg: job.secagg,
            privacy: job.privacy,
            registry: job.registry.map(String::from),
            release: job.release,
            compression: job.compression,
        })
    }
}

/// The coordinator's own limits on `[compression]` (`flotilla_spec` checked it against `[privacy]`
/// and `[secagg]`): a compressed upload is a delta from the round's global model, so a job whose
/// uploads are not exactly that (SCAFFOLD, FedBuff) is refused, naming the key, rather than run
/// uncompressed.
fn check_compression(job: &JobConfig) -> Result<(), SpecError> {
    if job.compression == flotilla_spec::Compression::None {
        return Ok(());
    }
    let why = if job.strategy.scaffold {
        "SCAFFOLD uploads carry the client's control-variate update after the parameters, which \
         the compressed format does not; remove [compression] or use another strategy"
    } else if job.strategy.fedbuff.is_some() {
        "FedBuff updates start from older model versions than the current one, which the server \
         would need to decode a delta; remove [compression] or use round-based aggregation"
    } else {
        // Under `[secagg]` only `quantize` passes `flotilla_spec`, and it becomes the secure
        // round's quantization (`SecAggConfig::quantization_bits`), not a compressed upload.
        return Ok(());
    };
    Err(SpecError::new("compression.kind", why))
}

#[cfg(test)]
mod tests {
    use flotilla_core::strategy::StrategySpec;

    use super::*;

    const DIGITS: &str = r#"
name = "digits"
seed = 42
rounds = 20
clients_per_round = 10
[round]
min_clients = 10
over_selection = 1.0
deadline_seconds = 60
min_report_fraction = 0.8
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
[eligibility]
min_samples = 1
[evaluation]
dataset = "digits"
"#;

    fn err(text: &str) -> String {
        JobSpec::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_example() {
        let s = JobSpec::from_toml(DIGITS).unwrap();
        assert_eq!(s.model.input_shape, vec![64]);
        assert_eq!(s.model.num_classes, 10);
        assert_eq!(s.round_deadline_ms, 60_000);
        assert_eq!(s.evaluation_dataset.as_deref(), Some("digits"));
        s.policy().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err(&DIGITS.replace("clients_per_round = 10", "clients_per_round = 0"))
                .starts_with("clients_per_round:")
        );
        assert!(
            err(&DIGITS.replace("min_clients = 10", "min_clients = 3"))
                .starts_with("round.min_clients:")
        );
        assert!(
            err(&DIGITS.replace("over_selection = 1.0", "over_selection = 0.5"))
                .starts_with("round.over_selection:")
        );
        assert!(
            err(&DIGITS.replace("kind = \"logreg\"", "kind = \"nope\"")).starts_with("model.kind:")
        );
        assert!(
            err(&DIGITS.replace("learning_rate = 0.1", "learning_rate = -1.0"))
                .starts_with("train.learning_rate:")
        );
        assert!(
            err(&DIGITS.replace(
                "learning_rate = 0.1",
                "learning_rate = 0.1\nmax_grad_norm = -2"
            ))
            .starts_with("train.max_grad_norm:")
        );
        assert!(err(&DIGITS.replace("rounds = 20", "rounds = 0")).starts_with("rounds:"));
        assert!(
            err(&DIGITS.replace("deadline_seconds = 60", "deadline_seconds = 0"))
                .starts_with("round.deadline_seconds:")
        );
        assert!(err(&DIGITS.replace("seed = 42", "seed = 42\nbogus = 1")).starts_with("toml:"));
        assert!(
            err(&DIGITS.replace(
                "dataset = \"digits\"\n[train]",
                "dataset = \"nope\"\n[train]"
            ))
            .starts_with("model.dataset:")
        );
        assert!(!err("rounds = ").contains('\n'));
        assert!(
            err(&format!(
                "{DIGITS}[strategy]\nname = \"trimmed_mean\"\nbeta = 0.5\n"
            ))
            .starts_with("strategy.beta:")
        );
        assert!(
            err(&format!("{DIGITS}[strategy]\nname = \"krum\"\nf = 3\n"))
                .starts_with("strategy.f:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[strategy]\nname = \"fedadam\"\nserver_lr = 0\n"
            ))
            .starts_with("strategy.server_lr:")
        );
    }

    #[test]
    fn moved_keys_and_simulation_sections_are_refused_naming_them() {
        let e = err(&DIGITS.replace("[round]\nmin_clients = 10\n", "min_clients = 10\n[round]\n"));
        assert!(e.starts_with("toml: line "), "{e}");
        assert!(e.contains("write it as `[round] min_clients`"), "{e}");
        let e = err(&format!("{DIGITS}[partition]\nkind = \"iid\"\n"));
        assert!(e.contains("`[partition]` is simulation-only"), "{e}");
        let e = err(&DIGITS.replace("seed = 42", "seed = 42\nclients = 100"));
        assert!(e.contains("`clients` is simulation-only"), "{e}");
    }

    #[test]
    fn a_model_given_by_initial_is_custom_with_no_sizes() {
        let text = DIGITS
            .replace(
                "kind = \"logreg\"\ndataset = \"digits\"",
                "initial = \"init.safetensors\"",
            )
            .replace("[evaluation]\ndataset = \"digits\"\n", "");
        let s = JobSpec::from_toml(&text).unwrap();
        assert!(s.is_custom());
        assert_eq!(s.model.kind, CUSTOM_KIND);
        assert_eq!(s.model.initial.as_deref(), Some("init.safetensors"));
        assert_eq!((s.model.input_shape.len(), s.model.num_classes), (0, 0));
        let wire = s.proto_model_spec();
        assert_eq!(wire.kind, "custom");
        assert!(wire.input_shape.is_empty() && wire.num_classes == 0 && wire.hidden == 0);
        assert_eq!(s.ml_spec().unwrap_err().field, "model.initial");
        // Stored and read back; a built-in spec stored before the key existed still loads.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), s);
        let builtin = serde_json::to_value(JobSpec::from_toml(DIGITS).unwrap()).unwrap();
        assert!(builtin["model"].get("initial").is_none());
        assert!(
            !serde_json::from_value::<JobSpec>(builtin)
                .unwrap()
                .is_custom()
        );
        // With [evaluation], and with a built-in key beside it: refused naming the key.
        let e = err(&DIGITS.replace("dataset = \"digits\"\n[train]", "initial = \"x\"\n[train]"));
        assert!(
            e.starts_with("model.kind: does not apply to a model given by model.initial"),
            "{e}"
        );
        let e = err(&text.replace("[train]", "[evaluation]\ndataset = \"digits\"\n[train]"));
        assert!(
            e.starts_with("evaluation.dataset: a model given by model.initial"),
            "{e}"
        );
    }

    #[test]
    fn strategy_defaults_to_fedavg_and_parses_by_name() {
        assert_eq!(
            JobSpec::from_toml(DIGITS).unwrap().strategy,
            StrategySpec::fedavg()
        );
        let s = JobSpec::from_toml(&format!(
            "{DIGITS}[strategy]\nname = \"krum\"\nf = 2\nm = 4\n"
        ))
        .unwrap();
        assert_eq!(s.strategy.name, "krum");
    }

    #[test]
    fn secagg_section_sets_the_stages_and_refuses_per_update_strategies() {
        let s = JobSpec::from_toml(&format!("{DIGITS}[secagg]\nclip_range = 0.5\n")).unwrap();
        assert!(s.policy().secure_aggregation());
        assert_eq!(s.secagg.as_ref().unwrap().clip_range, 0.5);
        assert!(
            !JobSpec::from_toml(DIGITS)
                .unwrap()
                .policy()
                .secure_aggregation()
        );
        // Stored specs without the key still load.
        let mut json = serde_json::to_value(JobSpec::from_toml(DIGITS).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("secagg");
        assert_eq!(
            serde_json::from_value::<JobSpec>(json).unwrap().secagg,
            None
        );
        let sa = "[secagg]\nclip_range = 0.5\n";
        assert!(
            err(&format!("{DIGITS}[strategy]\nname = \"median\"\n{sa}"))
                .starts_with("strategy.name:")
        );
        assert!(
            err(&format!("{DIGITS}[strategy]\nname = \"krum\"\nf = 1\n{sa}"))
                .starts_with("strategy.name:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[strategy]\nname = \"trimmed_mean\"\nbeta = 0.1\n{sa}"
            ))
            .starts_with("strategy.name:")
        );
        assert!(err(&format!("{DIGITS}[strategy]\nname = \"fedavg\"\n[strategy.anomaly]\nmax_norm_z = 3.0\nmax_cosine_distance = 1.0\n{sa}"))
            .starts_with("strategy.anomaly:"));
        assert!(
            err(&format!("{DIGITS}[secagg]\nclip_range = -1.0\n"))
                .starts_with("secagg.clip_range:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[secagg]\nclip_range = 1.0\nthreshold = 50\n"
            ))
            .starts_with("secagg.threshold:")
        );
        assert!(
            err(&format!(
                "{DIGITS}[secagg]\nclip_range = 1.0\nneighbours = 3\n"
            ))
            .starts_with("secagg.neighbours:")
        );
        assert!(
            err(&format!("{DIGITS}[secagg]\nclip_range = 1.0\nbogus = 3\n")).starts_with("toml:")
        );
        for ok in ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] {
            assert!(
                JobSpec::from_toml(&format!("{DIGITS}[strategy]\nname = \"{ok}\"\n{sa}")).is_ok(),
                "{ok}"
            );
        }
    }
}
