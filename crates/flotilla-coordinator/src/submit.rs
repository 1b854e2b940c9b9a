//! Submitting a job: the spec is parsed, the model provider asked for the job's model (and
//! evaluator) — or, for a model given by `[model] initial`, the submitted file checked
//! (`initial_model`) — the privacy budgets consulted, and only then is anything stored; the layout
//! is stored with the job so it is never rebuilt. A given model's parameters are stored as the
//! job's version-0 blob and named by the job row before the job runs, so recovery before the first
//! commit reads them (no provider could rebuild them).

use flotilla_core::round::RoundMachine;
use flotilla_store::{JobId, JobState, StoreError};

use crate::models::{Evaluate, JobModel};
use crate::retry::retryable;
use crate::spec::JobSpec;
use crate::state::Shared;

/// What the model provider gave for a job.
pub(crate) struct Provided {
    /// The layout and initial parameters, if they were asked for.
    pub model: Option<JobModel>,
    /// The evaluator, for a job with `[evaluation]`.
    pub evaluator: Option<Box<dyn Evaluate>>,
}

/// Why the model provider gave nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProvideError {
    /// The provider cannot serve this spec (or there is none): a one-line reason.
    #[error("{0}")]
    Refused(String),
    /// The blocking task failed (the provider panicked): the process is in trouble, not the spec.
    #[error("{0}")]
    Task(String),
}

/// A new machine for `spec`, at round 1 attempt 1 with the initial model (moved in: a large
/// model is not copied).
pub(crate) fn fresh_machine(
    spec: &JobSpec,
    model: JobModel,
) -> Result<RoundMachine, flotilla_core::ConfigError> {
    RoundMachine::with_strategy(
        spec.policy(),
        model.layout,
        model.initial,
        spec.seed,
        spec.strategy.clone(),
    )
}

impl Shared {
    /// Asks the model provider, on a blocking thread, for what `spec` needs: its model if
    /// `want_model`, and, if `want_evaluator` and the spec has an `[evaluation]` section, an
    /// evaluator.
    pub(crate) async fn provide(
        &self,
        spec: &JobSpec,
        want_model: bool,
        want_evaluator: bool,
    ) -> Result<Provided, ProvideError> {
        let wants_evaluator = want_evaluator && spec.evaluation_dataset.is_some();
        if !want_model && !wants_evaluator {
            return Ok(Provided {
                model: None,
                evaluator: None,
            });
        }
        if spec.is_custom() {
            // Its parameters are stored with the job; a provider builds built-in models only.
            return Err(ProvideError::Refused(
                "model.initial: the job's model was given as a file when it was submitted; no \
                 model provider can build it"
                    .to_owned(),
            ));
        }
        let Some(models) = self.models.clone() else {
            return Err(ProvideError::Refused(crate::models::no_provider(spec)));
        };
        let spec = spec.clone();
        let asked = tokio::task::spawn_blocking(move || {
            let model = if want_model {
                let m = models.model(&spec)?;
                crate::models::check(&m)?;
                Some(m)
            } else {
                None
            };
            let evaluator = if wants_evaluator {
                Some(models.evaluator(&spec)?)
            } else {
                None
            };
            Ok::<_, String>(Provided { model, evaluator })
        })
        .await
        .map_err(|e| ProvideError::Task(format!("the model provider failed: {e}")))?;
        // One line, whatever the provider wrote: it is shown as the submission's error.
        asked.map_err(|m| ProvideError::Refused(m.split_whitespace().collect::<Vec<_>>().join(" ")))
    }

    /// The model of a job given by `[model] initial`: `initial` (the safetensors file submitted
    /// with it) checked on a blocking thread; the model and its parameters as the blob to store
    /// (little-endian `f32` in layout order).
    async fn given_model(
        &self,
        initial: Option<Vec<u8>>,
    ) -> Result<(JobModel, Vec<u8>), SubmitError> {
        let bytes = initial.ok_or_else(|| {
            SubmitError::Invalid(
                "model.initial: the spec names a model file but the request has no `initial` \
                 part; submit with `flotilla job submit`, which sends the file (multipart/form-data \
                 with parts `spec` and `initial`)"
                    .into(),
            )
        })?;
        tokio::task::spawn_blocking(move || {
            let model = crate::initial_model::parse(&bytes)?;
            Ok::<_, crate::initial_model::InitialModelError>((
                model,
                crate::initial_model::data_section(bytes),
            ))
        })
        .await
        .map_err(|e| SubmitError::Internal(format!("checking model.initial failed: {e}")))?
        .map_err(|e| SubmitError::Invalid(e.to_string()))
    }

    /// Validates, stores and starts a job from its TOML text and, for a model given by
    /// `[model] initial`, the safetensors file (`initial`, required then and refused otherwise).
    /// The `actor`'s audit name is recorded with it as its submitter. In a tenant that requires approval
    /// the job is validated and stored but not started: it waits for [`Shared::start_approved`].
    pub async fn submit_job(
        &self,
        actor: &crate::authz::Actor,
        text: String,
        initial: Option<Vec<u8>>,
    ) -> Result<JobId, SubmitError> {
        let submitter = actor.audit_name();
        let submitter = submitter.as_str();
        let spec = JobSpec::from_toml(&text).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        // Policies as code: the policy in force must admit the job (before anything is built).
        let caller = crate::policy::caller(actor, Some(&spec.tenant));
        let in_force = self.policy.current();
        if let Err(d) = in_force
            .set
            .admit_job(&caller, &crate::policy::job_attrs(&spec))
        {
            let resource = format!("job:{}", spec.name);
            crate::policy::audit_denied(
                &self.store,
                actor,
                "job.submit",
                Some(&spec.tenant),
                &resource,
                &d,
            )
            .await;
            return Err(SubmitError::Forbidden(format!(
                "job submission refused by {d}"
            )));
        }
        let needs_approval = self
            .store
            .tenant_settings(&spec.tenant)
            .await
            .map_err(store_error)?
            .require_approval;
        let (model, initial_blob, evaluator) = if spec.is_custom() {
            let (model, blob) = self.given_model(initial).await?;
            // `[evaluation]` was refused with the spec: nothing evaluates a given model here.
            (model, Some(blob), None)
        } else {
            if initial.is_some() {
                return Err(SubmitError::Invalid(
                    "model.initial: the request has an `initial` part but the spec has no \
                     [model] initial; remove the part, or give the model by model.initial \
                     instead of model.kind"
                        .into(),
                ));
            }
            let provided = self.provide(&spec, true, true).await.map_err(|e| match e {
                ProvideError::Refused(m) => SubmitError::Invalid(m),
                ProvideError::Task(m) => SubmitError::Internal(m),
            })?;
            let model = provided
                .model
                .ok_or_else(|| SubmitError::Internal("the model provider was not asked".into()))?;
            (model, None, provided.evaluator)
        };
        // Build the machine before storing anything, so an invalid job leaves no trace.
        let mut machine =
            fresh_machine(&spec, model).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        if spec.privacy.is_some() {
            // The central noise must not be reproducible from the job seed (clients can recover it
            // from their task seeds): a fresh secret key, kept in the machine snapshot.
            let mut key = [0u8; 32];
            rand::Rng::fill_bytes(&mut rand::rng(), &mut key);
            machine.set_noise_key(key);
        }
        // A job whose first round would already exceed its own or its tenant's budget is refused.
        self.privacy
            .check_new(&self.store, &spec)
            .await
            .map_err(SubmitError::Invalid)?;
        let spec_json =
            serde_json::to_value(&spec).map_err(|e| SubmitError::Internal(e.to_string()))?;
        let new_job = flotilla_store::NewJob {
            tenant: &spec.tenant,
            name: &spec.name,
            spec: &spec_json,
            rounds_total: spec.rounds,
            layout: Some(machine.layout()),
        };
        let id = self
            .store
            .create_submitted_job(&new_job, submitter, needs_approval)
            .await
            .map_err(store_error)?;
        if let Some(blob) = initial_blob
            && let Err(e) = self.store_initial_model(id, blob).await
        {
            let _ = self
                .store
                .set_job_state_with_reason(
                    id,
                    JobState::Failed,
                    Some("could not be started: its initial model (model.initial) could not be stored"),
                    "system",
                )
                .await;
            return Err(e);
        }
        if needs_approval {
            // Stored, not started: recovery loads running jobs only, so it waits across restarts.
            tracing::info!(job = id.0, submitter, "job submitted; waiting for approval");
            return Ok(id);
        }
        self.start_stored(id, spec, machine, evaluator).await?;
        tracing::info!(job = id.0, "job submitted and running");
        Ok(id)
    }

    /// Starts a stored job with its new machine, exactly as a submission does: round 1 attempt 1
    /// recorded, the privacy budget registered, the job marked running and its runtime inserted.
    async fn start_stored(
        &self,
        id: JobId,
        spec: JobSpec,
        machine: RoundMachine,
        evaluator: Option<Box<dyn Evaluate>>,
    ) -> Result<(), SubmitError> {
        // Round 1 attempt 1 may be handed out as soon as the job runs: recorded first, so a
        // restart before the first commit resumes at attempt 2, not at a second attempt 1.
        if let Err(e) = self.record_attempt(id, 1, 1).await {
            let _ = self
                .store
                .set_job_state_with_reason(
                    id,
                    JobState::Failed,
                    Some("could not be started: the store was unavailable"),
                    "system",
                )
                .await;
            return Err(SubmitError::Unavailable(e));
        }
        if let Err(why) = self.privacy.register(&self.store, id, &spec).await {
            // Another job of the tenant took the budget in the meantime.
            let _ = self.store.set_job_state(id, JobState::Failed).await;
            return Err(SubmitError::Invalid(why));
        }
        self.store
            .set_job_state(id, JobState::Running)
            .await
            .map_err(|e| SubmitError::Internal(e.to_string()))?;
        let rt = self
            .runtime(id, spec, machine, evaluator)
            .map_err(SubmitError::Internal)?;
        self.insert_job(rt);
        Ok(())
    }
}

/// A store error of a submission, by whose fault.
fn store_error(e: StoreError) -> SubmitError {
    match e {
        StoreError::InvalidArgument(m) => SubmitError::Invalid(m),
        e if retryable(&e) => SubmitError::Unavailable(e.to_string()),
        e => SubmitError::Internal(e.to_string()),
    }
}

impl Shared {
    /// Stores a given model's parameters as version 0 of job `id` and names the blob in the job's
    /// row (still pending: nothing runs it yet), so recovery before the first commit finds it and
    /// the orphan sweep keeps it.
    async fn store_initial_model(&self, id: JobId, blob: Vec<u8>) -> Result<(), SubmitError> {
        let store_error = |e: StoreError| {
            if retryable(&e) {
                SubmitError::Unavailable(format!("storing model.initial: {e}"))
            } else {
                SubmitError::Internal(format!("storing model.initial: {e}"))
            }
        };
        let key = self
            .store
            .put_model(id, 0, blob)
            .await
            .map_err(store_error)?;
        self.store
            .set_initial_model(id, &key)
            .await
            .map_err(store_error)
    }
}

/// Why a job submission failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    /// A policy refused the job (`403`).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
    /// The store failed (infrastructure): nothing the request can change.
    #[error("store unavailable: {0}; retry later")]
    Unavailable(String),
}
