//! Turning a coordinator's [`v1::Task`] into what to do, and the trainer's output into an upload:
//! pure functions with no IO (the caller passes the clock reading), the seed of a sans-IO client.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_proto::v1;
use flotilla_proto::{ExpectedLayout, ModelReceiver, UploadLimits};
use sha2::{Digest, Sha256};

use super::{MAX_MODEL_BYTES, eval};
use crate::trainer::{ModelDescription, TaskInfo, TrainOutcome, TrainingConfig};
use flotilla_core::round::ClientEval;

/// Checks a task and prepares the model receiver. Errors are reasons to skip the task.
///
/// `now` is the local time the task was received: a relative deadline counts from it.
pub(super) fn check_task(
    task: &v1::Task,
    now: SystemTime,
) -> Result<(TaskInfo, ModelReceiver, Option<ModelReceiver>), String> {
    match v1::Stage::try_from(task.stage) {
        Ok(
            v1::Stage::Train
            | v1::Stage::AdvertiseKeys
            | v1::Stage::ShareKeys
            | v1::Stage::MaskedInput
            | v1::Stage::Unmasking,
        ) => {}
        Ok(other) => return Err(format!("stage {} is not supported", other.as_str_name())),
        Err(_) => return Err(format!("unknown stage {}", task.stage)),
    }
    if task.job_id.is_empty() || task.job_id.len() > flotilla_proto::MAX_ID_LEN {
        return Err("job_id is empty or too long".into());
    }
    let model = task.model.as_ref().ok_or("the task has no model")?;
    let receiver = ModelReceiver::new(model, MAX_MODEL_BYTES).map_err(|e| e.to_string())?;
    let fingerprint: [u8; 32] = model
        .layout_fingerprint
        .as_slice()
        .try_into()
        .map_err(|_| {
            format!(
                "layout_fingerprint has {} bytes, not 32",
                model.layout_fingerprint.len()
            )
        })?;
    if fingerprint != receiver.layout().fingerprint() {
        return Err("layout_fingerprint does not match the announced layout".into());
    }
    let control = match &task.server_control {
        None => None,
        Some(c) => {
            let r = ModelReceiver::new(c, MAX_MODEL_BYTES)
                .map_err(|e| format!("server_control: {e}"))?;
            if r.layout() != receiver.layout() {
                return Err("server_control has another layout than the model".into());
            }
            Some(r)
        }
    };
    let t = task
        .training
        .as_ref()
        .ok_or("the task has no training configuration")?;
    if !(t.proximal_mu.is_finite() && t.proximal_mu >= 0.0) {
        return Err(format!(
            "proximal_mu must be finite and ≥ 0, got {}",
            t.proximal_mu
        ));
    }
    if !(t.max_grad_norm.is_finite() && t.max_grad_norm >= 0.0) {
        return Err(format!(
            "max_grad_norm must be finite and ≥ 0 (0 = none), got {}",
            t.max_grad_norm
        ));
    }
    let info = TaskInfo {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage_index: task.stage_index,
        model_version: task.model_version,
        layout: receiver.layout().clone(),
        layout_fingerprint: fingerprint,
        model: model.spec.as_ref().map(|s| ModelDescription {
            kind: s.kind.clone(),
            input_shape: s.input_shape.clone(),
            num_classes: s.num_classes,
            hidden: s.hidden,
            embed: s.embed,
        }),
        training: TrainingConfig {
            epochs: t.epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            seed: t.seed,
            proximal_mu: t.proximal_mu,
            max_grad_norm: t.max_grad_norm,
        },
        gradient_correction: None,
        // Relative first: the coordinator's clock and ours need not agree.
        deadline: if task.time_remaining_ms > 0 {
            now.checked_add(Duration::from_millis(task.time_remaining_ms))
        } else {
            (task.deadline_unix_ms > 0)
                .then(|| UNIX_EPOCH.checked_add(Duration::from_millis(task.deadline_unix_ms)))
                .flatten()
        },
    };
    Ok((info, receiver, control))
}

/// Checks a federated evaluation task (`STAGE_EVALUATE`) and prepares the model receiver:
/// the task, its evaluation id and the receiver of the model to evaluate. Errors are reasons to
/// skip the task.
pub(super) fn check_eval_task(
    task: &v1::Task,
    now: SystemTime,
) -> Result<(TaskInfo, String, ModelReceiver), String> {
    let e = task
        .evaluation
        .as_ref()
        .ok_or("the evaluation task names no evaluation")?;
    if e.evaluation_id.is_empty() || e.evaluation_id.len() > flotilla_proto::MAX_ID_LEN {
        return Err("evaluation_id is empty or too long".into());
    }
    if task.job_id.len() > flotilla_proto::MAX_ID_LEN {
        return Err("job_id is too long".into());
    }
    if e.registry_model.is_none() && task.job_id.is_empty() {
        return Err("the evaluation task names neither a registry model nor a job".into());
    }
    let model = task.model.as_ref().ok_or("the task has no model")?;
    let receiver = ModelReceiver::new(model, MAX_MODEL_BYTES).map_err(|e| e.to_string())?;
    let fingerprint: [u8; 32] = model
        .layout_fingerprint
        .as_slice()
        .try_into()
        .map_err(|_| "layout_fingerprint does not have 32 bytes".to_owned())?;
    if fingerprint != receiver.layout().fingerprint() {
        return Err("layout_fingerprint does not match the announced layout".into());
    }
    let t = task.training.unwrap_or_default();
    let info = TaskInfo {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage_index: task.stage_index,
        model_version: task.model_version,
        layout: receiver.layout().clone(),
        layout_fingerprint: fingerprint,
        model: model.spec.as_ref().map(|s| ModelDescription {
            kind: s.kind.clone(),
            input_shape: s.input_shape.clone(),
            num_classes: s.num_classes,
            hidden: s.hidden,
            embed: s.embed,
        }),
        // Nothing is trained: the values are informational only.
        training: TrainingConfig {
            epochs: t.epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            seed: t.seed,
            proximal_mu: t.proximal_mu,
            max_grad_norm: t.max_grad_norm,
        },
        gradient_correction: None,
        deadline: (task.time_remaining_ms > 0)
            .then(|| now.checked_add(Duration::from_millis(task.time_remaining_ms)))
            .flatten(),
    };
    Ok((info, e.evaluation_id.clone(), receiver))
}

/// Deterministic upload id of a task: hex SHA-256 of (job, round, attempt, stage, stage index,
/// client id), so that re-uploading the same task's update is idempotent and resumable.
pub fn upload_id(
    job_id: &str,
    round: u64,
    attempt: u32,
    stage_index: u32,
    client_id: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"flotilla-upload-v1\0");
    h.update((job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(round.to_le_bytes());
    h.update(attempt.to_le_bytes());
    h.update((v1::Stage::Train as i32).to_le_bytes());
    h.update(stage_index.to_le_bytes());
    h.update((client_id.len() as u64).to_le_bytes());
    h.update(client_id.as_bytes());
    flotilla_proto::hex(&h.finalize())
}

/// Checks the trainer's output and builds the upload header. Non-finite or badly named metrics are
/// dropped (with a warning); at most [`flotilla_proto::MAX_METRICS`] are kept. A checked
/// evaluation (`eval::checked`) goes first, as `eval_loss`, `eval_samples` and `eval_accuracy`;
/// training metrics of those reserved names are dropped.
pub(super) fn build_header(
    info: &TaskInfo,
    (outcome, evaluation): (TrainOutcome, Option<ClientEval>),
    extra: Option<&[f32]>,
    client_id: &str,
) -> Result<(v1::UpdateHeader, Vec<f32>), String> {
    let TrainOutcome {
        mut params,
        num_samples,
        metrics,
        local_steps: _,
    } = outcome;
    if params.len() != info.layout.len() {
        return Err(format!(
            "trainer returned {} parameters but the layout has {}",
            params.len(),
            info.layout.len()
        ));
    }
    if let Some(i) = params.iter().position(|v| !v.is_finite()) {
        return Err(format!("parameter {i} is not finite"));
    }
    if num_samples == 0 {
        return Err("trainer reported 0 samples".into());
    }
    // SCAFFOLD's Δcᵢ follows the parameters.
    if let Some(extra) = extra {
        if extra.len() != params.len() || extra.iter().any(|v| !v.is_finite()) {
            return Err(
                "SCAFFOLD control-variate update is not a finite vector of the model's size".into(),
            );
        }
        params.extend_from_slice(extra);
    }
    let mut kept: HashMap<String, f64> = evaluation
        .iter()
        .flat_map(eval::metrics)
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for (name, value) in metrics {
        if eval::RESERVED.contains(&name.as_str()) {
            tracing::warn!(metric = %name, "metric dropped: the name is reserved for federated evaluation (implement LocalTrainer::evaluate)");
            continue;
        }
        let ok_name = !name.is_empty() && name.len() <= flotilla_proto::MAX_NAME_LEN;
        if !ok_name || !value.is_finite() || kept.len() >= flotilla_proto::MAX_METRICS {
            tracing::warn!(metric = %name.chars().take(64).collect::<String>(), value, "metric dropped (bad name, non-finite value or too many metrics)");
            continue;
        }
        kept.insert(name, value);
    }
    let header = v1::UpdateHeader {
        job_id: info.job_id.clone(),
        round: info.round,
        attempt: info.attempt,
        stage: v1::Stage::Train as i32,
        num_samples,
        metrics: kept,
        total_bytes: 4 * params.len() as u64,
        layout_fingerprint: info.layout_fingerprint.to_vec(),
        sha256: flotilla_proto::payload_sha256(&params).to_vec(),
        upload_id: upload_id(
            &info.job_id,
            info.round,
            info.attempt,
            info.stage_index,
            client_id,
        ),
        base_model_version: info.model_version,
        stage_index: info.stage_index,
        ..Default::default()
    };
    flotilla_proto::validate_header(
        &header,
        &ExpectedLayout {
            len: params.len() as u64,
            fingerprint: info.layout_fingerprint,
        },
        &UploadLimits::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok((header, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_id_is_deterministic_and_valid() {
        let a = upload_id("job/with spaces", 3, 1, 0, "client-7");
        assert_eq!(a, upload_id("job/with spaces", 3, 1, 0, "client-7"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        for other in [
            upload_id("job/with spaces", 4, 1, 0, "client-7"),
            upload_id("job/with spaces", 3, 2, 0, "client-7"),
            upload_id("job/with spaces", 3, 1, 1, "client-7"),
            upload_id("job/with spaces", 3, 1, 0, "client-8"),
            upload_id("job/with space", 3, 1, 0, "sclient-7"),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn task_deadline_is_relative_to_receipt() {
        let layout =
            flotilla_core::ParamLayout::new(vec![flotilla_core::TensorSpec::new("w", [3])]);
        let mut task = v1::Task {
            job_id: "j".into(),
            round: 1,
            attempt: 1,
            stage: v1::Stage::Train as i32,
            model_version: 0,
            model: Some(flotilla_proto::model_info(&layout, &[0.0; 3])),
            training: Some(v1::TrainingConfig {
                epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                seed: 0,
                ..Default::default()
            }),
            // A coordinator whose clock is wildly behind ours: its absolute deadline is long past.
            deadline_unix_ms: 1_000,
            stage_index: 0,
            time_remaining_ms: 3_600_000,
            ..Default::default()
        };
        let before = SystemTime::now();
        let deadline = check_task(&task, SystemTime::now())
            .unwrap()
            .0
            .deadline
            .unwrap();
        assert!(
            deadline >= before + Duration::from_secs(3600),
            "{deadline:?}"
        );
        // Without the relative field (an older coordinator), the absolute deadline is used.
        task.time_remaining_ms = 0;
        let deadline = check_task(&task, SystemTime::now())
            .unwrap()
            .0
            .deadline
            .unwrap();
        assert_eq!(deadline, UNIX_EPOCH + Duration::from_millis(1_000));
        task.deadline_unix_ms = 0;
        assert_eq!(
            check_task(&task, SystemTime::now()).unwrap().0.deadline,
            None
        );
    }

    #[test]
    fn evaluation_tasks_are_checked() {
        let layout =
            flotilla_core::ParamLayout::new(vec![flotilla_core::TensorSpec::new("w", [3])]);
        let mut task = v1::Task {
            job_id: "7".into(),
            round: 2,
            stage: v1::Stage::Evaluate as i32,
            model_version: 2,
            model: Some(flotilla_proto::model_info(&layout, &[0.0; 3])),
            time_remaining_ms: 60_000,
            evaluation: Some(v1::EvaluationTask {
                evaluation_id: "5".into(),
                registry_model: None,
            }),
            ..Default::default()
        };
        let (info, id, receiver) = check_eval_task(&task, SystemTime::now()).unwrap();
        assert_eq!(
            (info.job_id.as_str(), info.round, id.as_str()),
            ("7", 2, "5")
        );
        assert_eq!(receiver.total_bytes(), 12);
        assert!(info.deadline.is_some());
        // The training path refuses it: an evaluation is not a training task.
        assert!(check_task(&task, SystemTime::now()).is_err());
        let mut bad = task.clone();
        bad.evaluation = None;
        assert!(check_eval_task(&bad, SystemTime::now()).is_err());
        let mut bad = task.clone();
        bad.evaluation.as_mut().unwrap().evaluation_id.clear();
        assert!(check_eval_task(&bad, SystemTime::now()).is_err());
        let mut bad = task.clone();
        bad.model.as_mut().unwrap().layout_fingerprint = vec![0; 32];
        assert!(check_eval_task(&bad, SystemTime::now()).is_err());
        // A registry version needs no job.
        task.job_id.clear();
        assert!(check_eval_task(&task, SystemTime::now()).is_err());
        task.evaluation.as_mut().unwrap().registry_model = Some(v1::RegistryModelRef {
            name: "digits".into(),
            version: 3,
        });
        assert!(check_eval_task(&task, SystemTime::now()).is_ok());
    }

    #[test]
    fn header_checks_trainer_output() {
        let layout =
            flotilla_core::ParamLayout::new(vec![flotilla_core::TensorSpec::new("w", [3])]);
        let info = TaskInfo {
            job_id: "j".into(),
            round: 1,
            attempt: 0,
            stage_index: 0,
            model_version: 5,
            layout_fingerprint: layout.fingerprint(),
            layout,
            model: None,
            training: TrainingConfig {
                epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                seed: 0,
                proximal_mu: 0.0,
                max_grad_norm: 0.0,
            },
            gradient_correction: None,
            deadline: None,
        };
        let out = |params: Vec<f32>, n| {
            let o = TrainOutcome {
                params,
                num_samples: n,
                metrics: [("train_loss".into(), 0.5), ("bad".into(), f64::NAN)].into(),
                local_steps: 4,
            };
            (o, None)
        };
        let (h, p) = build_header(&info, out(vec![1.0, 2.0, 3.0], 7), None, "c").unwrap();
        assert_eq!(p, vec![1.0, 2.0, 3.0]);
        assert_eq!(h.total_bytes, 12);
        assert_eq!(h.base_model_version, 5);
        assert_eq!(h.metrics.len(), 1);
        assert!(build_header(&info, out(vec![1.0, 2.0], 7), None, "c").is_err());
        assert!(build_header(&info, out(vec![1.0, f32::NAN, 3.0], 7), None, "c").is_err());
        assert!(build_header(&info, out(vec![1.0, 2.0, 3.0], 0), None, "c").is_err());
        // SCAFFOLD: Δcᵢ follows the parameters and must match them in size and be finite.
        let (h, p) = build_header(
            &info,
            out(vec![1.0, 2.0, 3.0], 7),
            Some(&[0.5, 0.0, -0.5]),
            "c",
        )
        .unwrap();
        assert_eq!(p, vec![1.0, 2.0, 3.0, 0.5, 0.0, -0.5]);
        assert_eq!(h.total_bytes, 24);
        // Federated evaluation: its metrics go first; a trainer's own of those names are dropped.
        let mut o = out(vec![1.0, 2.0, 3.0], 7).0;
        o.metrics.insert("eval_loss".into(), 9.0);
        o.metrics.insert("eval_samples".into(), 0.5);
        let (h, _) = build_header(&info, (o.clone(), None), None, "c").unwrap();
        assert_eq!(h.metrics.len(), 1, "{:?}", h.metrics);
        let e = ClientEval {
            loss: 0.25,
            accuracy: Some(0.5),
            samples: 30,
        };
        let (h, _) = build_header(&info, (o, Some(e)), None, "c").unwrap();
        assert_eq!(h.metrics["eval_loss"], 0.25);
        assert_eq!(h.metrics["eval_samples"], 30.0);
        assert_eq!(h.metrics["eval_accuracy"], 0.5);
        assert_eq!(h.metrics["train_loss"], 0.5);
        assert_eq!(h.metrics.len(), 4);
        assert!(build_header(&info, out(vec![1.0, 2.0, 3.0], 7), Some(&[0.5]), "c").is_err());
        assert!(
            build_header(
                &info,
                out(vec![1.0, 2.0, 3.0], 7),
                Some(&[0.5, f32::INFINITY, 0.0]),
                "c"
            )
            .is_err()
        );
    }
}
