//! Secure aggregation in the coordinator: a job with `[secagg]` runs every round through the round
//! machine's four stages (advertise keys, share keys, masked input, unmasking). The machine owns
//! the cryptography (`flotilla_secagg::RoundAggregator`, installed here when a job's runtime is
//! built); this module only carries bytes: a client's stage message or masked input goes into the
//! machine as `Event::StageMessage`, and each task carries the payload the machine holds for the
//! client (`RoundMachine::stage_payload`) and the job's parameters.
//!
//! Who validates what:
//!
//! - the **round machine**: round, attempt, stage, cohort, duplicates, full stage, the form of the
//!   input, the sample count at the masked input;
//! - its **secure aggregator** (`flotilla-secagg`): the payload — size, decoding, sender =
//!   authenticated caller, secagg round, stage, lengths, keys, share commitments;
//! - the **transport** (`service.rs`, `flotilla-proto`): credentials, tenant, sizes, SHA-256, and for
//!   the masked input the layout and length (but not finiteness: the words are in Z_2^32).
//!
//! **Distributed DP** (`[privacy] mode = "distributed"`): every task carries the clip norm and the
//! per-client noise standard deviation (`SecAggConfig.dp_clip_norm`, `dp_noise_std`); clients clip and
//! add their noise share before masking, and the round machine divides the unmasked sum by the fixed
//! denominator `clients_per_round` (`Strategy::apply_secure_sum`). Admission and accounting are the
//! central mode's (`crate::privacy`).
//!
//! The aggregator's state lives only in memory: after a coordinator restart the machine's
//! `recover()` abandons the attempt that was in flight, and the runtime installs a fresh
//! aggregator. It never holds an individual unmasked update (`RoundAggregator::held_vectors`).

use flotilla_core::round::{
    ClientId, Event, RefusalKind, RejectReason, ReportMetrics, RoundMachine, StageInput,
};
use flotilla_proto::v1;
use flotilla_secagg::RoundAggregator;
use tonic::Status;

use crate::state::{JobInner, JobRuntime, Shared};

/// `[secagg]` of a job spec: the shared vocabulary's [`flotilla_spec::SecAggConfig`] (parsed and
/// checked there, stored with the job).
pub use flotilla_spec::SecAggConfig as SecAggSpec;

/// Installs a `[secagg]` job's secure aggregator in its machine (new or recovered) and returns the
/// parameters every task carries; `None` for a job without `[secagg]`.
pub(crate) fn install(
    spec: &crate::spec::JobSpec,
    machine: &mut RoundMachine,
) -> Result<Option<v1::SecAggConfig>, String> {
    let Some(s) = &spec.secagg else {
        return Ok(None);
    };
    let params = s
        .params(spec.clients_per_round, machine.layout().len())
        .map_err(|e| e.to_string())?;
    // Distributed DP (validated at load: distributed mode, fixed clip, clip range large enough).
    let dp = spec
        .strategy
        .dp
        .as_ref()
        .map(|dp| (dp.initial_clip_norm(), dp.client_noise_std()));
    machine.set_secure_aggregator(Box::new(RoundAggregator::new(params)));
    Ok(Some(v1::SecAggConfig {
        max_clients: u32::try_from(params.max_clients()).unwrap_or(u32::MAX),
        threshold: u32::try_from(params.threshold()).unwrap_or(u32::MAX),
        neighbours: u32::try_from(params.neighbours()).unwrap_or(u32::MAX),
        clip_range: params.clip_range(),
        dp_clip_norm: dp.map_or(0.0, |d| d.0),
        dp_noise_std: dp.map_or(0.0, |d| d.1),
        quantization_bits: params.quantization_bits().map_or(0, u32::from),
    }))
}

/// The payload kind of a masked input for a job with secagg parameters `c`: 2-byte words in a
/// 16-bit ring, 4-byte words otherwise.
pub(crate) fn masked_kind(c: &v1::SecAggConfig) -> v1::PayloadKind {
    let bits = u8::try_from(c.quantization_bits).ok().filter(|b| *b > 0);
    match flotilla_secagg::Params::ring_bits_for(bits, c.max_clients as usize) {
        16 => v1::PayloadKind::MaskedU16,
        _ => v1::PayloadKind::MaskedU32,
    }
}

/// A refused stage message: the rejection-counter reason and the gRPC status.
pub(crate) type Refusal = (&'static str, Status);

fn machine_refusal(r: &RejectReason) -> Refusal {
    let msg = r.to_string();
    match r {
        RejectReason::Duplicate => ("duplicate", Status::already_exists(msg)),
        RejectReason::NotAccepting(_) => ("not_accepting", Status::failed_precondition(msg)),
        RejectReason::WrongRound { .. } => ("wrong_round", Status::failed_precondition(msg)),
        RejectReason::WrongStage { .. } => ("wrong_stage", Status::failed_precondition(msg)),
        RejectReason::WrongStageKind { .. } => {
            ("wrong_stage_kind", Status::failed_precondition(msg))
        }
        RejectReason::NotSelected => ("not_selected", Status::failed_precondition(msg)),
        RejectReason::RoundFull => ("round_full", Status::failed_precondition(msg)),
        RejectReason::BadSampleCount { .. } => ("bad_sample_count", Status::invalid_argument(msg)),
        RejectReason::BadUpdate(_) => ("bad_update", Status::invalid_argument(msg)),
        RejectReason::BadEval(_) => ("bad_eval", Status::invalid_argument(msg)),
        RejectReason::SecureAggregation(s) => (
            s.code,
            match s.kind {
                RefusalKind::Malformed => Status::invalid_argument(msg),
                RefusalKind::Precondition => Status::failed_precondition(msg),
                RefusalKind::SenderMismatch => Status::permission_denied(msg),
                RefusalKind::Duplicate => Status::already_exists(msg),
            },
        ),
        // FedBuff reasons; secure aggregation never runs FedBuff.
        RejectReason::TooStale { .. } => ("too_stale", Status::failed_precondition(msg)),
        RejectReason::NoTask => ("no_task", Status::failed_precondition(msg)),
    }
}

/// Handles `SubmitStageMessage`: the payload goes into the machine unread.
pub(crate) async fn submit_stage(
    shared: &Shared,
    job: &JobRuntime,
    inner: &mut JobInner,
    client: ClientId,
    r: &v1::StageMessageRequest,
) -> Result<(), Refusal> {
    let input = StageInput::Message(&r.payload);
    let at = (r.round, r.attempt, r.stage_index);
    let metrics = ReportMetrics {
        train_loss: f64::NAN,
        eval: None,
    };
    report(shared, job, inner, client, at, input, (0, metrics)).await
}

/// Handles a completed masked-input upload (`PAYLOAD_KIND_MASKED_U32`): the aggregator adds the
/// words into its running masked sum and drops them. `metrics` are the header's
/// (`service::upload::report_metrics`): the training loss and the federated evaluation, which
/// travel in the clear beside the masked vector.
pub(crate) async fn accept_masked(
    shared: &Shared,
    job: &JobRuntime,
    inner: &mut JobInner,
    client: ClientId,
    (header, metrics): (&v1::UpdateHeader, ReportMetrics),
    words: Vec<u32>,
) -> Result<(), Refusal> {
    let at = (header.round, header.attempt, header.stage_index);
    let input = StageInput::Masked(words);
    report(
        shared,
        job,
        inner,
        client,
        at,
        input,
        (header.num_samples, metrics),
    )
    .await
}

async fn report(
    shared: &Shared,
    job: &JobRuntime,
    inner: &mut JobInner,
    client: ClientId,
    (round, attempt, stage): (u64, u32, u32),
    input: StageInput<'_>,
    (num_samples, metrics): (u64, ReportMetrics),
) -> Result<(), Refusal> {
    if job.secagg.is_none() {
        return Err((
            "not_secagg",
            Status::failed_precondition(format!("job {} does not use secure aggregation", job.id)),
        ));
    }
    let message = matches!(input, StageInput::Message(_));
    let event = Event::StageMessage {
        client,
        round,
        attempt,
        stage,
        input,
        num_samples,
        metrics,
    };
    let out = shared.drive(job, inner, event, Some(client)).await;
    if let Some(msg) = out.persist_failed {
        return Err((
            "persist_failed",
            Status::unavailable(format!("store unavailable: {msg}; retry later")),
        ));
    }
    if out.accepted {
        return Ok(());
    }
    let reason = out.reject.unwrap_or(RejectReason::NotAccepting("unknown"));
    match reason {
        // A stage message where the machine expects the masked vector: say where it goes.
        RejectReason::WrongStageKind { stage, kind } if message => Err((
            "secagg_wrong_transport",
            Status::invalid_argument(format!(
                "stage {stage} ({kind}) takes the masked input through UploadUpdate with \
                 PAYLOAD_KIND_MASKED_U32"
            )),
        )),
        r => Err(machine_refusal(&r)),
    }
}
