//! Where a job's model comes from: the coordinator trains nothing and links no tensor framework.
//! The embedding program hands it a [`ModelProvider`] in [`crate::ServerConfig::models`], which
//! gives, for a job spec, the parameter layout and initial parameters, and optionally an
//! [`Evaluate`]r that scores committed models on held-out data. `flotilla server` wires the
//! built-in burn models of `flotilla-ml` and the test splits of `flotilla-data`; a test or an
//! integrator can bring any model that is a flat `f32` vector with a named layout.
//!
//! The provider is asked when a job is submitted; its layout is then stored with the job, so a
//! finished job's model is served and a job is resumed without asking again (except for jobs
//! stored before layouts were, and for a job resumed before its first commit, whose initial
//! parameters are asked for again: they must be a function of the spec, seed included).

use std::fmt;

pub use flotilla_model::EvalReport;

use flotilla_core::ParamLayout;

use crate::spec::JobSpec;

/// A job's model as the coordinator needs it: nothing but numbers with names.
#[derive(Debug, Clone, PartialEq)]
pub struct JobModel {
    /// Names and shapes of the tensors, in the order of the flat parameter vector.
    pub layout: ParamLayout,
    /// The initial global model, `layout.len()` finite values.
    pub initial: Vec<f32>,
}

/// Scores a committed global model on data the server holds (e.g. a dataset's test split).
///
/// Called on a blocking thread, after the round is durable and without any job lock held; at
/// most one evaluation of a job runs at a time.
pub trait Evaluate: Send {
    /// Evaluates `params` (in the job's layout). An error is logged and the round stays
    /// unevaluated.
    fn evaluate(&mut self, params: &[f32]) -> Result<EvalReport, String>;
}

/// Builds the models of jobs: what [`crate::Server`] asks for instead of linking a training
/// framework. Methods block (building a model, loading a dataset): the coordinator calls them
/// from `spawn_blocking`. An error is a one-line reason for the operator; at submission it is
/// returned as `400 Bad Request`.
pub trait ModelProvider: Send + Sync + fmt::Debug {
    /// The layout and initial parameters of `spec`'s model. Must be a function of the spec (its
    /// seed included): a job resumed before its first commit asks again.
    fn model(&self, spec: &JobSpec) -> Result<JobModel, String>;

    /// An evaluator for `spec`'s committed models; only asked for jobs with an `[evaluation]`
    /// section. The default refuses: this provider evaluates nothing.
    fn evaluator(&self, spec: &JobSpec) -> Result<Box<dyn Evaluate>, String> {
        let _ = spec;
        Err("evaluation.dataset: this coordinator has no server-side evaluator".to_owned())
    }
}

/// The provider of a server without one: every request fails with the same one-line reason.
pub(crate) fn no_provider(spec: &JobSpec) -> String {
    format!(
        "model: this coordinator has no model provider, so it cannot build a {:?} model (the \
         program embedding it must set ServerConfig::models; `flotilla server` provides the \
         built-in models)",
        spec.model.kind
    )
}

/// Checks what a provider returned against what the coordinator relies on.
pub(crate) fn check(model: &JobModel) -> Result<(), String> {
    if model.initial.len() != model.layout.len() {
        return Err(format!(
            "model: the provider's initial parameters have {} values, its layout {}",
            model.initial.len(),
            model.layout.len()
        ));
    }
    if model.layout.is_empty() {
        return Err("model: the provider's layout is empty".to_owned());
    }
    if model.initial.iter().any(|v| !v.is_finite()) {
        return Err("model: the provider's initial parameters are not all finite".to_owned());
    }
    Ok(())
}
