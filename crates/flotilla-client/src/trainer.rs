//! What an SDK user implements ([`LocalTrainer`]) and the built-in implementation on Flotilla's
//! datasets and reference models ([`DatasetTrainer`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::SystemTime;

use flotilla_core::ParamLayout;
use flotilla_data::{Dataset, DatasetName, LoadOptions, PartitionSpec};
use flotilla_ml::{
    FitConfig, LocalObjective, ModelKind, ModelSpec, Samples, Trainer, TrainerError,
};

/// Error type a [`LocalTrainer`] returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`ModelDescription::kind`] of a model given to the coordinator as a file of named tensors
/// (`[model] initial`): it has a layout only, no sizes, and only a trainer brought for it trains it.
pub const CUSTOM_MODEL_KIND: &str = "custom";

/// The model a task is about, as announced by the coordinator (`ModelInfo.spec`).
///
/// It mirrors the wire message and is not validated, so that a custom [`LocalTrainer`] can
/// interpret `kind` freely; [`ModelDescription::to_ml_spec`] converts it for `flotilla-ml`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ModelDescription {
    /// Model family, e.g. `"logreg"`, `"mlp"`, `"cnn"`, `"char_mlp"`, or [`CUSTOM_MODEL_KIND`].
    pub kind: String,
    /// Shape of one input sample, e.g. `[64]` or `[1, 28, 28]`.
    pub input_shape: Vec<u64>,
    /// Number of classes (for `char_mlp` also the vocabulary size).
    pub num_classes: u32,
    /// Hidden width (`mlp`, `char_mlp`); 0 otherwise.
    pub hidden: u32,
    /// Embedding width (`char_mlp`); 0 otherwise.
    pub embed: u32,
}

impl ModelDescription {
    /// The `flotilla-ml` [`ModelSpec`] this describes. `mlp` needs `hidden > 0`; `char_mlp` needs
    /// `hidden > 0` and `embed > 0`. Further checks (shapes, sizes) are [`flotilla_ml::build`]'s.
    pub fn to_ml_spec(&self) -> Result<ModelSpec, TrainerError> {
        let invalid = |m: String| TrainerError::InvalidSpec(m);
        let width = |name: &str, v: u32| -> Result<usize, TrainerError> {
            if v == 0 {
                return Err(invalid(format!("{} needs {name} > 0", self.kind)));
            }
            usize::try_from(v).map_err(|_| invalid(format!("{name} {v} is too large")))
        };
        if self.kind == CUSTOM_MODEL_KIND {
            return Err(invalid(
                "the job's model is custom (given by model.initial); the built-in trainer trains \
                 logreg|mlp|cnn|char_mlp only: bring a trainer (a LocalTrainer for the job's layout)"
                    .to_owned(),
            ));
        }
        let kind = match self.kind.parse::<ModelKind>()? {
            ModelKind::LogReg => ModelKind::LogReg,
            ModelKind::Cnn => ModelKind::Cnn,
            ModelKind::Mlp { .. } => ModelKind::Mlp {
                hidden: width("hidden", self.hidden)?,
            },
            ModelKind::CharMlp { .. } => ModelKind::CharMlp {
                embed: width("embed", self.embed)?,
                hidden: width("hidden", self.hidden)?,
            },
        };
        let input_shape = self
            .input_shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| invalid(format!("input dimension {d} is too large")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let num_classes = usize::try_from(self.num_classes)
            .map_err(|_| invalid(format!("num_classes {} is too large", self.num_classes)))?;
        Ok(ModelSpec {
            kind,
            input_shape,
            num_classes,
        })
    }
}

/// Local training hyper-parameters of a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingConfig {
    /// Local epochs over the client's data.
    pub epochs: u32,
    /// Minibatch size.
    pub batch_size: u32,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// Seed for shuffling and any other randomness of this task.
    pub seed: u64,
    /// FedProx μ: weight of the proximal term `μ/2·‖w − w_global‖²` added to the local loss
    /// (0 = plain local SGD).
    pub proximal_mu: f64,
    /// Clip each local SGD step's loss gradient to this global L2 norm (0 = no clipping).
    pub max_grad_norm: f64,
}

/// Everything a [`LocalTrainer`] needs to know about one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    /// The job.
    pub job_id: String,
    /// Round number within the job.
    pub round: u64,
    /// Attempt number of the round.
    pub attempt: u32,
    /// Index of the stage within the round.
    pub stage_index: u32,
    /// Version of the global model the task starts from.
    pub model_version: u64,
    /// Layout of the global model (and of the parameters to return).
    pub layout: ParamLayout,
    /// Fingerprint of `layout` as announced by the coordinator (equal to `layout.fingerprint()`;
    /// the client checks this before training).
    pub layout_fingerprint: [u8; 32],
    /// The architecture to build, if the coordinator named one.
    pub model: Option<ModelDescription>,
    /// Hyper-parameters.
    pub training: TrainingConfig,
    /// SCAFFOLD only: `c − cᵢ` (server minus this client's control variate, flat in layout order),
    /// to be added to every local gradient. The SDK keeps `cᵢ` and computes `Δcᵢ` itself; a trainer
    /// only applies the correction and reports [`TrainOutcome::local_steps`].
    pub gradient_correction: Option<Vec<f32>>,
    /// Upload deadline on this machine's clock, if any: the time of receipt plus the task's
    /// `time_remaining_ms` (relative, so clock skew with the coordinator does not matter), or the
    /// coordinator's absolute `deadline_unix_ms` from a coordinator that does not send it.
    pub deadline: Option<SystemTime>,
}

/// What local training produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainOutcome {
    /// The new parameters, in the task's layout (same length, all finite).
    pub params: Vec<f32>,
    /// Number of local examples trained on: the update's weight (must be > 0).
    pub num_samples: u64,
    /// Training metrics such as `"train_loss"` (finite values; at most
    /// [`flotilla_proto::MAX_METRICS`]).
    pub metrics: BTreeMap<String, f64>,
    /// Local optimisation steps taken (minibatches). Required (> 0) under SCAFFOLD, whose control
    /// variate update divides by it; otherwise informational (0 = not reported).
    pub local_steps: u64,
}

/// What evaluating a model on the client's held-out data gave.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalOutcome {
    /// Mean loss over the evaluated samples (must be finite).
    pub loss: f64,
    /// Samples evaluated: the evaluation's weight in the job's mean (must be in `1..=2^53`).
    pub num_samples: u64,
    /// Further metrics; `"accuracy"` (in `[0, 1]`) is reported to the coordinator, the others
    /// are not sent.
    pub metrics: BTreeMap<String, f64>,
}

/// The one trait an SDK user implements to bring their own model and data.
///
/// [`crate::Client::run`] calls [`LocalTrainer::evaluate`] and then [`LocalTrainer::train`] on a
/// blocking thread (`spawn_blocking`), one task at a time.
pub trait LocalTrainer: Send {
    /// Samples this client holds (sent at check-in for eligibility).
    fn num_samples(&self) -> u64;

    /// Train from `global` for one task; return new parameters (same layout), sample count and
    /// metrics. An error abandons the task (logged; the client goes on checking in).
    fn train(&mut self, task: &TaskInfo, global: &[f32]) -> Result<TrainOutcome, BoxError>;

    /// Evaluates the task's global model on local held-out data before training (federated
    /// evaluation). Default: no evaluation.
    ///
    /// Called with the downloaded global model, on the same blocking thread as
    /// [`LocalTrainer::train`] and just before it, for every training task (plain, secure
    /// aggregation, FedBuff). The SDK reports the outcome with the update as the metrics
    /// `eval_loss`, `eval_samples` and, if `metrics["accuracy"]` exists, `eval_accuracy`; the
    /// coordinator records their sample-weighted mean per round (`federated_eval`). An error or an
    /// invalid outcome (non-finite loss, 0 or more than 2^53 samples, accuracy outside `[0, 1]`) is
    /// logged and the task trains on without evaluation metrics. Those three metric names are
    /// reserved: [`TrainOutcome::metrics`] of the same names are dropped.
    fn evaluate(
        &mut self,
        task: &TaskInfo,
        global: &[f32],
    ) -> Result<Option<EvalOutcome>, BoxError> {
        let _ = (task, global);
        Ok(None)
    }
}

/// Seed of the IID partition used by [`DatasetTrainer::from_partition`].
pub const PARTITION_SEED: u64 = 42;

/// Errors of the built-in [`DatasetTrainer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetTrainerError {
    /// Loading the dataset failed.
    #[error(transparent)]
    Data(#[from] flotilla_data::DataError),
    /// Partitioning the dataset failed.
    #[error(transparent)]
    Partition(#[from] flotilla_data::PartitionError),
    /// `index` is not below `of`.
    #[error("partition index {index} is out of range for {of} parts (use 0..{of})")]
    BadPartitionIndex {
        /// Requested part.
        index: usize,
        /// Number of parts.
        of: usize,
    },
    /// The selected samples are empty or out of the dataset's range.
    #[error("invalid sample selection: {0}")]
    BadSelection(String),
    /// The task names no model to build.
    #[error("the task does not say which model to build (ModelInfo.spec is missing)")]
    MissingSpec,
    /// The task's model does not fit this client's data; the message says how, e.g. "input has
    /// 63 features, model expects 64" (reported to the coordinator as the task's failure reason).
    #[error("{reason}")]
    SpecMismatch {
        /// The task's model.
        spec: ModelDescription,
        /// Why.
        reason: String,
    },
    /// The locally built model does not have the task's layout.
    #[error("locally built {kind} model has a different parameter layout than the task's")]
    LayoutMismatch {
        /// The model family.
        kind: String,
    },
    /// A hyper-parameter cannot be used.
    #[error("invalid training configuration: {0}")]
    BadConfig(String),
    /// Building or training the model failed.
    #[error(transparent)]
    Trainer(#[from] TrainerError),
}

/// Built-in [`LocalTrainer`]: a local share of a `flotilla-data` dataset, trained with the
/// `flotilla-ml` reference model the task names (built once per distinct spec and cached).
///
/// Before training it checks that the locally built model's layout fingerprint equals the task's,
/// then trains from the global parameters with the task's epochs, batch size, learning rate and
/// seed, and reports `train_loss` (mean loss over the last epoch). Same inputs give bit-identical
/// outputs.
pub struct DatasetTrainer {
    data: Dataset,
    indices: Vec<u32>,
    /// Held-out rows [`LocalTrainer::evaluate`] evaluates on (`None`: the training rows).
    eval: Option<(Dataset, Vec<u32>)>,
    models: HashMap<ModelSpec, Box<dyn Trainer>>,
}

impl std::fmt::Debug for DatasetTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetTrainer")
            .field("num_samples", &self.indices.len())
            .field("eval_samples", &self.eval.as_ref().map(|(_, i)| i.len()))
            .field("feature_shape", &self.data.feature_shape)
            .field("num_classes", &self.data.num_classes)
            .field("cached_models", &self.models.len())
            .finish()
    }
}

impl DatasetTrainer {
    /// Trains on the rows `indices` of `data`.
    pub fn new(data: Dataset, indices: Vec<u32>) -> Result<Self, DatasetTrainerError> {
        if indices.is_empty() {
            return Err(DatasetTrainerError::BadSelection(
                "no samples selected".into(),
            ));
        }
        if let Some(&i) = indices.iter().find(|&&i| i as usize >= data.len()) {
            return Err(DatasetTrainerError::BadSelection(format!(
                "index {i} is out of range for {} samples",
                data.len()
            )));
        }
        Ok(Self {
            data,
            indices,
            eval: None,
            models: HashMap::new(),
        })
    }

    /// Evaluates ([`LocalTrainer::evaluate`], federated evaluation) on the rows `indices` of
    /// `data` instead of the training rows; `data` must have the training data's feature length
    /// and at most its number of classes.
    pub fn with_eval(
        mut self,
        data: Dataset,
        indices: Vec<u32>,
    ) -> Result<Self, DatasetTrainerError> {
        if indices.is_empty() {
            return Err(DatasetTrainerError::BadSelection(
                "no evaluation samples selected".into(),
            ));
        }
        if let Some(&i) = indices.iter().find(|&&i| i as usize >= data.len()) {
            return Err(DatasetTrainerError::BadSelection(format!(
                "evaluation index {i} is out of range for {} samples",
                data.len()
            )));
        }
        if data.feature_len() != self.data.feature_len() || data.num_classes > self.data.num_classes
        {
            return Err(DatasetTrainerError::BadSelection(format!(
                "the evaluation data has {} features and {} classes, the training data {} and {}",
                data.feature_len(),
                data.num_classes,
                self.data.feature_len(),
                self.data.num_classes
            )));
        }
        self.eval = Some((data, indices));
        Ok(self)
    }

    /// The rows [`LocalTrainer::evaluate`] uses: `(dataset, indices)` of the held-out data given
    /// by [`DatasetTrainer::with_eval`], or the training rows.
    pub fn eval_rows(&self) -> (&Dataset, &[u32]) {
        match &self.eval {
            Some((d, i)) => (d, i),
            None => (&self.data, &self.indices),
        }
    }

    /// Loads `dataset`'s train split (default [`LoadOptions`]: 20 % test, split seed 42) from
    /// `data_dir` (ignored for the built-in digits) and keeps part `index` (0-based) of an IID
    /// partition into `of` near-equal parts drawn with the fixed seed [`PARTITION_SEED`] (42).
    /// It evaluates ([`LocalTrainer::evaluate`]) on part `index` of the same partition of the
    /// test split, or on its training rows when the test split has fewer than `of` rows.
    ///
    /// Every client started with the same `dataset` and `of` therefore holds a disjoint share:
    /// `flotilla client --dataset digits --partition 3/10` uses part 3 of 10.
    pub fn from_partition(
        dataset: DatasetName,
        data_dir: &Path,
        index: usize,
        of: usize,
    ) -> Result<Self, DatasetTrainerError> {
        if index >= of {
            return Err(DatasetTrainerError::BadPartitionIndex { index, of });
        }
        let split = flotilla_data::load(dataset, data_dir, &LoadOptions::default())?;
        let (train, test) = (split.train, split.test);
        let mut parts = flotilla_data::partition(
            &train.labels,
            train.groups.as_deref(),
            train.num_classes,
            of,
            &PartitionSpec::Iid,
            PARTITION_SEED,
        )?;
        if index >= parts.clients.len() {
            return Err(DatasetTrainerError::BadPartitionIndex { index, of });
        }
        let indices = parts.clients.swap_remove(index);
        let trainer = Self::new(train, indices)?;
        // Evaluation rows: part `index` of the same IID partition of the test split, when there
        // are enough test rows for every part to get some; otherwise the training rows.
        match Self::test_part(&test, index, of) {
            Some(rows) => trainer.with_eval(test, rows),
            None => Ok(trainer),
        }
    }

    /// Part `index` of `of` of an IID partition (seed [`PARTITION_SEED`]) of `test`, if every
    /// part is non-empty.
    fn test_part(test: &Dataset, index: usize, of: usize) -> Option<Vec<u32>> {
        if test.len() < of {
            return None;
        }
        let mut parts = flotilla_data::partition(
            &test.labels,
            test.groups.as_deref(),
            test.num_classes,
            of,
            &PartitionSpec::Iid,
            PARTITION_SEED,
        )
        .ok()?;
        (index < parts.clients.len() && parts.clients.iter().all(|p| !p.is_empty()))
            .then(|| parts.clients.swap_remove(index))
    }

    /// The dataset this trainer holds a share of.
    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// The rows of [`DatasetTrainer::dataset`] this client trains on.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    fn samples(&self) -> Samples<'_> {
        Samples {
            features: &self.data.features,
            feature_len: self.data.feature_len(),
            labels: &self.data.labels,
            indices: &self.indices,
        }
    }

    /// Trains for `task` from `global`; the typed-error form of [`LocalTrainer::train`].
    pub fn train_task(
        &mut self,
        task: &TaskInfo,
        global: &[f32],
    ) -> Result<TrainOutcome, DatasetTrainerError> {
        let cfg = fit_config(&task.training)?;
        let trainer = Self::model_for(&mut self.models, &self.data, task)?;
        trainer.set_parameters(global)?;
        let data = Samples {
            features: &self.data.features,
            feature_len: self.data.feature_len(),
            labels: &self.data.labels,
            indices: &self.indices,
        };
        let objective = LocalObjective {
            proximal_mu: task.training.proximal_mu as f32,
            gradient_correction: task.gradient_correction.as_deref(),
        };
        let report = trainer.fit_with(&data, &cfg, &objective)?;
        let params = trainer.parameters();
        let mut metrics = BTreeMap::new();
        if report.mean_loss.is_finite() {
            metrics.insert("train_loss".to_owned(), report.mean_loss);
        }
        Ok(TrainOutcome {
            params,
            num_samples: report.num_samples as u64,
            metrics,
            local_steps: report.steps,
        })
    }

    /// Evaluates `global` for `task` on the evaluation rows ([`DatasetTrainer::eval_rows`]): mean
    /// loss and accuracy; the typed-error form of [`LocalTrainer::evaluate`].
    pub fn evaluate_task(
        &mut self,
        task: &TaskInfo,
        global: &[f32],
    ) -> Result<EvalOutcome, DatasetTrainerError> {
        let trainer = Self::model_for(&mut self.models, &self.data, task)?;
        let (data, indices) = match &self.eval {
            Some((d, i)) => (d, i),
            None => (&self.data, &self.indices),
        };
        trainer.set_parameters(global)?;
        let samples = Samples {
            features: &data.features,
            feature_len: data.feature_len(),
            labels: &data.labels,
            indices,
        };
        let report = trainer.evaluate(&samples)?;
        Ok(EvalOutcome {
            loss: report.loss,
            num_samples: report.num_samples as u64,
            metrics: [("accuracy".to_owned(), report.accuracy)].into(),
        })
    }

    /// The cached model for `task`'s spec, built on first use, after checking that the spec fits
    /// this client's data and the built model has the task's layout.
    fn model_for<'m>(
        models: &'m mut HashMap<ModelSpec, Box<dyn Trainer>>,
        data: &Dataset,
        task: &TaskInfo,
    ) -> Result<&'m mut Box<dyn Trainer>, DatasetTrainerError> {
        let desc = task
            .model
            .as_ref()
            .ok_or(DatasetTrainerError::MissingSpec)?;
        let spec = desc.to_ml_spec()?;
        let mismatch = |reason: String| DatasetTrainerError::SpecMismatch {
            spec: desc.clone(),
            reason,
        };
        let input_len = spec
            .input_shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if input_len != Some(data.feature_len()) {
            // Exactly what an operator needs to fix the data or the job: both feature counts.
            let expects = match (input_len, spec.input_shape.len()) {
                (Some(n), 1) => n.to_string(),
                (Some(n), _) => format!("{n} (shape {:?})", spec.input_shape),
                (None, _) => format!("shape {:?}", spec.input_shape),
            };
            return Err(mismatch(format!(
                "input has {} features, model expects {expects}",
                data.feature_len()
            )));
        }
        if spec.num_classes < data.num_classes {
            return Err(mismatch(format!(
                "input has {} classes, model expects at most {}",
                data.num_classes, spec.num_classes
            )));
        }
        // Check the layout before building anything else (a wrong spec must not train).
        let kind = spec.kind.name().to_owned();
        let trainer = match models.entry(spec) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let built = flotilla_ml::build(e.key(), 0)?;
                e.insert(built)
            }
        };
        if trainer.layout().fingerprint() != task.layout_fingerprint
            || trainer.layout() != &task.layout
        {
            return Err(DatasetTrainerError::LayoutMismatch { kind });
        }
        Ok(trainer)
    }
}

fn fit_config(t: &TrainingConfig) -> Result<FitConfig, DatasetTrainerError> {
    let bad = |m: String| DatasetTrainerError::BadConfig(m);
    if t.epochs == 0 {
        return Err(bad("epochs must be at least 1".into()));
    }
    if t.batch_size == 0 {
        return Err(bad("batch_size must be at least 1".into()));
    }
    let mu = t.proximal_mu;
    if !(mu.is_finite() && mu >= 0.0) {
        return Err(bad(format!("proximal_mu must be finite and ≥ 0, got {mu}")));
    }
    let max_grad_norm = match t.max_grad_norm {
        0.0 => None,
        m if m.is_finite() && m > 0.0 && m <= f64::from(f32::MAX) => Some(m as f32),
        m => {
            return Err(bad(format!(
                "max_grad_norm must be finite and ≥ 0 (0 = none), got {m}"
            )));
        }
    };
    let lr = t.learning_rate as f32;
    if !(lr.is_finite() && lr > 0.0) {
        return Err(bad(format!(
            "learning_rate must be finite and > 0, got {}",
            t.learning_rate
        )));
    }
    Ok(FitConfig {
        epochs: t.epochs,
        batch_size: usize::try_from(t.batch_size)
            .map_err(|_| bad(format!("batch_size {} is too large", t.batch_size)))?,
        learning_rate: lr,
        seed: t.seed,
        max_grad_norm,
    })
}

impl LocalTrainer for DatasetTrainer {
    fn num_samples(&self) -> u64 {
        self.samples().len() as u64
    }

    fn train(&mut self, task: &TaskInfo, global: &[f32]) -> Result<TrainOutcome, BoxError> {
        Ok(self.train_task(task, global)?)
    }

    fn evaluate(
        &mut self,
        task: &TaskInfo,
        global: &[f32],
    ) -> Result<Option<EvalOutcome>, BoxError> {
        Ok(Some(self.evaluate_task(task, global)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logreg_task(layout: ParamLayout) -> TaskInfo {
        TaskInfo {
            job_id: "j".into(),
            round: 1,
            attempt: 0,
            stage_index: 0,
            model_version: 0,
            layout_fingerprint: layout.fingerprint(),
            layout,
            model: Some(ModelDescription {
                kind: "logreg".into(),
                input_shape: vec![64],
                num_classes: 10,
                hidden: 0,
                embed: 0,
            }),
            training: TrainingConfig {
                epochs: 1,
                batch_size: 16,
                learning_rate: 0.1,
                seed: 3,
                proximal_mu: 0.0,
                max_grad_norm: 0.0,
            },
            gradient_correction: None,
            deadline: None,
        }
    }

    #[test]
    fn a_custom_model_is_refused_by_the_built_in_trainer_with_its_reason() {
        let custom = ModelDescription {
            kind: CUSTOM_MODEL_KIND.to_owned(),
            ..ModelDescription::default()
        };
        let e = custom.to_ml_spec().unwrap_err().to_string();
        assert!(
            e.contains("the job's model is custom (given by model.initial)")
                && e.contains("bring a trainer"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn partition_trains_and_checks_layout() {
        let mut t =
            DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 0, 10).unwrap();
        let n = t.num_samples();
        assert!(n > 100 && n < 200, "{n}");
        // Parts are disjoint.
        let other =
            DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 1, 10).unwrap();
        assert!(t.indices().iter().all(|i| !other.indices().contains(i)));

        let spec = ModelSpec {
            kind: ModelKind::LogReg,
            input_shape: vec![64],
            num_classes: 10,
        };
        let init = flotilla_ml::build(&spec, 9).unwrap();
        let task = logreg_task(init.layout().clone());
        let global = init.parameters();
        let a = t.train_task(&task, &global).unwrap();
        assert_eq!(a.params.len(), global.len());
        assert_ne!(a.params, global);
        assert_eq!(a.num_samples, n);
        assert!(a.metrics["train_loss"].is_finite());
        // Deterministic, and the cached model is reset from `global` each time.
        let b = t.train_task(&task, &global).unwrap();
        assert_eq!(a, b);

        let mut wrong = task.clone();
        wrong.layout_fingerprint = [0; 32];
        assert!(matches!(
            t.train_task(&wrong, &global),
            Err(DatasetTrainerError::LayoutMismatch { .. })
        ));
        let mut wrong = task.clone();
        wrong.model.as_mut().unwrap().input_shape = vec![1, 28, 28];
        assert!(matches!(
            t.train_task(&wrong, &global),
            Err(DatasetTrainerError::SpecMismatch { .. })
        ));
        let mut wrong = task.clone();
        wrong.model = None;
        assert!(matches!(
            t.train_task(&wrong, &global),
            Err(DatasetTrainerError::MissingSpec)
        ));
        let mut wrong = task;
        wrong.training.learning_rate = f64::NAN;
        assert!(matches!(
            t.train_task(&wrong, &global),
            Err(DatasetTrainerError::BadConfig(_))
        ));
    }

    #[test]
    fn evaluates_on_its_part_of_the_test_split() {
        let mut t =
            DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 1, 4).unwrap();
        let (data, rows) = t.eval_rows();
        let n = rows.len() as u64;
        // digits: 1797 rows, 20 % test, a quarter of it per client.
        assert!(n > 60 && n < 120, "{n}");
        assert_ne!(
            data.len(),
            t.dataset().len(),
            "the test split, not the training rows"
        );
        let spec = ModelSpec {
            kind: ModelKind::LogReg,
            input_shape: vec![64],
            num_classes: 10,
        };
        let init = flotilla_ml::build(&spec, 9).unwrap();
        let task = logreg_task(init.layout().clone());
        let global = init.parameters();
        let e = t.evaluate_task(&task, &global).unwrap();
        assert_eq!(e.num_samples, n);
        assert!(e.loss.is_finite());
        let a = e.metrics["accuracy"];
        assert!((0.0..=1.0).contains(&a), "{a}");
        // Trained parameters do better on the held-out rows, deterministically.
        let trained = t.train_task(&task, &global).unwrap().params;
        let better = t.evaluate_task(&task, &trained).unwrap();
        assert!(better.metrics["accuracy"] > a, "{better:?} vs {e:?}");
        assert_eq!(better, t.evaluate_task(&task, &trained).unwrap());
        // Through the trait, as the SDK calls it.
        let via_trait = LocalTrainer::evaluate(&mut t, &task, &trained).unwrap();
        assert_eq!(via_trait, Some(better));

        // Other evaluation rows: checked against the training data.
        let other = t.dataset().clone();
        assert!(
            DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 0, 4)
                .unwrap()
                .with_eval(other.clone(), vec![])
                .is_err()
        );
        let t = DatasetTrainer::new(other.clone(), vec![0, 1])
            .unwrap()
            .with_eval(other, vec![5, 6, 7])
            .unwrap();
        assert_eq!(t.eval_rows().1, &[5, 6, 7]);
    }

    #[test]
    fn bad_partition_index() {
        assert!(matches!(
            DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 10, 10),
            Err(DatasetTrainerError::BadPartitionIndex { index: 10, of: 10 })
        ));
    }

    #[test]
    fn spec_conversion() {
        let d = |kind: &str, hidden, embed| ModelDescription {
            kind: kind.into(),
            input_shape: vec![80],
            num_classes: 60,
            hidden,
            embed,
        };
        assert_eq!(
            d("char_mlp", 32, 4).to_ml_spec().unwrap().kind,
            ModelKind::CharMlp {
                embed: 4,
                hidden: 32
            }
        );
        assert_eq!(
            d("mlp", 16, 0).to_ml_spec().unwrap().kind,
            ModelKind::Mlp { hidden: 16 }
        );
        assert!(d("mlp", 0, 0).to_ml_spec().is_err());
        assert!(d("char_mlp", 32, 0).to_ml_spec().is_err());
        assert!(d("resnet", 0, 0).to_ml_spec().is_err());
    }
}
