//! The models `flotilla server` provides to the coordinator: the built-in burn models of
//! `flotilla-ml`, and server-side evaluation on a `flotilla-data` test split. The coordinator
//! library links neither; it receives them through [`ModelProvider`].

use std::path::PathBuf;

use flotilla_coordinator::models::{EvalReport, Evaluate, JobModel, ModelProvider};
use flotilla_coordinator::spec::JobSpec;
use flotilla_data::Dataset;
use flotilla_ml::{Samples, Trainer};

/// Built-in models, evaluation datasets read from `data_dir`.
#[derive(Debug)]
pub struct BuiltinModels {
    /// Where evaluation datasets are read from (`$FLOTILLA_DATA_DIR`, else `DATA_DIR/data`).
    pub data_dir: PathBuf,
}

impl BuiltinModels {
    /// The model of `spec`, built (deterministically from its seed) by `flotilla_ml::build`.
    fn build(spec: &JobSpec) -> Result<Box<dyn Trainer>, String> {
        let ml = spec.ml_spec().map_err(|e| e.to_string())?;
        flotilla_ml::build(&ml, spec.seed).map_err(|e| format!("model: {e}"))
    }
}

impl ModelProvider for BuiltinModels {
    fn model(&self, spec: &JobSpec) -> Result<JobModel, String> {
        let trainer = Self::build(spec)?;
        Ok(JobModel {
            layout: trainer.layout().clone(),
            initial: trainer.parameters(),
        })
    }

    fn evaluator(&self, spec: &JobSpec) -> Result<Box<dyn Evaluate>, String> {
        let name = spec
            .evaluation_dataset
            .as_deref()
            .ok_or("evaluation.dataset: the job names no evaluation dataset")?;
        let ds = name
            .parse()
            .map_err(|e| format!("evaluation.dataset: {e}"))?;
        let tt = flotilla_data::load(ds, &self.data_dir, &flotilla_data::LoadOptions::default())
            .map_err(|e| format!("evaluation.dataset: {e}"))?;
        let n =
            u32::try_from(tt.test.len()).map_err(|_| "evaluation.dataset: too large".to_owned())?;
        Ok(Box::new(TestSplit {
            trainer: Self::build(spec)?,
            test: tt.test,
            indices: (0..n).collect(),
        }))
    }
}

/// Evaluation of committed models on a dataset's test split.
struct TestSplit {
    trainer: Box<dyn Trainer>,
    test: Dataset,
    indices: Vec<u32>,
}

impl Evaluate for TestSplit {
    fn evaluate(&mut self, params: &[f32]) -> Result<EvalReport, String> {
        let data = Samples {
            features: &self.test.features,
            feature_len: self.test.feature_len(),
            labels: &self.test.labels,
            indices: &self.indices,
        };
        // Not `set_parameters` + `evaluate`: that would leave trainable tensors in burn's autodiff
        // bookkeeping at every commit (~4 KB a round), which only a backward pass frees.
        self.trainer
            .evaluate_params(params, &data)
            .map_err(|e| e.to_string())
    }
}
