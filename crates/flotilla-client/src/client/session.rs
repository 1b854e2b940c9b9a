//! A client's session with its coordinator: enrollment and the stored credential, the check-in
//! loop, and carrying out a plain training task (download, train, upload).

use std::sync::Arc;

use flotilla_compress::Compression;
use flotilla_proto::v1::{self, check_in_response::Outcome};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request};
use tracing::Instrument;

use super::*;

impl Session<'_> {
    /// [`Session::serve`], enrolling again whenever the coordinator reports the credential expired
    /// (the stored credential is deleted first). Without an enrollment token, or if a credential
    /// enrolled moments ago is refused as expired too, the run ends with
    /// [`ClientError::CredentialExpired`].
    pub(super) async fn run_loop(&mut self) -> Result<(), ClientError> {
        loop {
            let message = match self.serve().await {
                Err(ClientError::CredentialExpired { message }) => message,
                other => return other,
            };
            let fresh = self.fresh_credential;
            self.discard_credential()?;
            let has_token = self
                .client
                .config
                .enrollment_token
                .as_deref()
                .is_some_and(|t| !t.is_empty());
            if !has_token {
                return Err(ClientError::CredentialExpired {
                    message: format!("{message}; no enrollment token is configured"),
                });
            }
            if fresh {
                return Err(ClientError::CredentialExpired {
                    message: format!(
                        "{message}; a credential enrolled moments ago was refused as expired too \
                         (check the coordinator's --credential-ttl and clock)"
                    ),
                });
            }
            self.stats.re_enrollments += 1;
            tracing::warn!(coordinator_says = %message, "credential expired; enrolling again with the enrollment token");
        }
    }

    /// Deletes the stored credential (file and memory) and drops the channel that sends it.
    pub(super) fn discard_credential(&mut self) -> Result<(), ClientError> {
        let path = self.client.config.credential_path();
        self.client.credential = None;
        self.rpc = None;
        self.fresh_credential = false;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "expired credential deleted");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ClientError::State { path, source }),
        }
    }

    /// Enrolls if needed, then checks in and carries out tasks until an error ends the run.
    async fn serve(&mut self) -> Result<(), ClientError> {
        let bearer = self.ensure_enrolled().await?;
        loop {
            if let Some(o) = &self.client.observer {
                o(self.stats);
            }
            let num_samples = self.trainer.as_ref().map_or(0, |t| t.num_samples());
            let mut req = Request::new(v1::CheckInRequest {
                num_samples,
                job_ids: self.client.config.job_ids.clone(),
                attributes: self
                    .client
                    .config
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
            req.set_timeout(UNARY_TIMEOUT);
            self.stats.check_ins += 1;
            let mut rpc = self.rpc(&bearer);
            let span = trace::task_span();
            let check_in = tracing::info_span!(parent: &span, "check_in");
            match rpc.check_in(req).instrument(check_in).await {
                Ok(resp) => {
                    self.succeeded();
                    self.fresh_credential = false;
                    match resp.into_inner().outcome {
                        Some(Outcome::RetryAfter(r)) => {
                            span.record("otel.name", "check_in");
                            drop(span);
                            let delay = retry_delay(r.retry_after_ms);
                            tracing::debug!(
                                reason = %r.reason,
                                delay_ms = delay.as_millis() as u64,
                                "no task; checking in again later"
                            );
                            tokio::time::sleep(delay).await;
                        }
                        Some(Outcome::Task(task)) => {
                            self.stats.tasks_received += 1;
                            let (started, done) = (Instant::now(), self.stats.tasks_done);
                            let outdated = self.stats.uploads_outdated;
                            trace::record_task(
                                &span,
                                &task.job_id,
                                task.round,
                                task.attempt,
                                task.stage_index,
                            );
                            self.do_task(&bearer, task).instrument(span.clone()).await?;
                            let outcome = if self.stats.tasks_done > done {
                                self.stats.task_time += started.elapsed();
                                "done"
                            } else if self.stats.uploads_outdated > outdated {
                                "outdated"
                            } else {
                                "abandoned"
                            };
                            span.record("outcome", outcome);
                        }
                        None => {
                            tracing::warn!("check-in answer holds neither a task nor RetryAfter");
                            tokio::time::sleep(self.client.config.backoff.delay(0)).await;
                        }
                    }
                }
                Err(status) => match self.classify(&status) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient => self.back_off("CheckIn", &status).await,
                    Failure::Refused if status.code() == Code::PermissionDenied => {
                        return Err(ClientError::PermissionDenied {
                            message: status.message().to_owned(),
                        });
                    }
                    Failure::Refused => {
                        tracing::error!(code = ?status.code(), error = %status_text(&status), "check-in failed");
                        self.back_off("CheckIn", &status).await;
                    }
                },
            }
        }
    }

    /// Returns the `authorization` value, enrolling first if needed.
    pub(super) async fn ensure_enrolled(&mut self) -> Result<MetadataValue<Ascii>, ClientError> {
        let path = self.client.config.credential_path();
        if let Some(c) = &self.client.credential {
            tracing::info!(client_id = %c.client_id, "using stored credential");
            return c
                .bearer()
                .map_err(|reason| ClientError::CorruptCredential { path, reason });
        }
        let token = self
            .client
            .config
            .enrollment_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ClientError::NotEnrolled { path: path.clone() })?;
        let resp = loop {
            let mut rpc = CoordinatorClient::new(self.client.endpoint.connect_lazy());
            let mut req = Request::new(v1::EnrollRequest {
                enrollment_token: token.clone(),
                client_name: self.client.config.client_name.clone(),
                attributes: [
                    ("sdk_version", env!("CARGO_PKG_VERSION")),
                    ("os", std::env::consts::OS),
                    ("arch", std::env::consts::ARCH),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            });
            req.set_timeout(UNARY_TIMEOUT);
            match rpc.enroll(req).await {
                Ok(r) => break r.into_inner(),
                Err(status) => match self.classify(&status) {
                    Failure::Transient => self.back_off("Enroll", &status).await,
                    Failure::Fatal(
                        e @ (ClientError::Tls { .. } | ClientError::ProtocolMismatch { .. }),
                    ) => {
                        return Err(e);
                    }
                    Failure::Fatal(_) | Failure::Refused => {
                        return Err(ClientError::EnrollmentRefused {
                            code: status.code(),
                            message: status.message().to_owned(),
                        });
                    }
                },
            }
        };
        self.succeeded();
        let cred = StoredCredential {
            client_id: resp.client_id,
            credential: resp.credential,
            coordinator: self.client.config.coordinator.trim().to_owned(),
        };
        let bearer = cred.bearer().map_err(ClientError::BadEnrollment)?;
        cred.save(&path)?;
        tracing::info!(client_id = %cred.client_id, path = %path.display(), "enrolled; credential stored");
        self.client.credential = Some(cred);
        self.stats.enrolled = true;
        self.fresh_credential = true;
        Ok(bearer)
    }

    async fn do_task(
        &mut self,
        bearer: &MetadataValue<Ascii>,
        task: v1::Task,
    ) -> Result<(), ClientError> {
        if task.stage == v1::Stage::Evaluate as i32 {
            return self.do_evaluation(bearer, task).await;
        }
        let (mut info, receiver, control_receiver) = match check_task(&task, SystemTime::now()) {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(job = %task.job_id, round = task.round, %reason, "skipping task");
                self.report_failure(
                    bearer,
                    &task,
                    v1::FailureKind::Other,
                    &format!("unusable task: {reason}"),
                )
                .await;
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        match v1::Stage::try_from(task.stage) {
            Ok(v1::Stage::Train) => {}
            Ok(stage) => {
                return self
                    .do_secagg_task(bearer, task, info, receiver, stage)
                    .await;
            }
            Err(_) => return Ok(()),
        }
        let compression = match flotilla_proto::compression_from_proto(task.compression.as_ref()) {
            Ok(c) => c,
            Err(reason) => {
                // Dense parameters are always accepted: the task is still worth doing.
                tracing::warn!(job = %info.job_id, %reason, "the task's compression is unusable; uploading dense parameters");
                Compression::None
            }
        };
        tracing::info!(
            job = %info.job_id,
            round = info.round,
            attempt = info.attempt,
            model_version = info.model_version,
            compression = compression.kind_name(),
            "task received"
        );
        let deadline = info.deadline.map(|d| d + DEADLINE_GRACE);

        let global = match self
            .download(bearer, &task, v1::ModelPart::Global, receiver, deadline)
            .instrument(tracing::info_span!("download", part = "global"))
            .await?
        {
            Done::Ok(p) => Arc::new(p),
            Done::Abandoned | Done::Outdated => {
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        // SCAFFOLD: the server control variate `c`, and this client's own `cᵢ` (zero at first).
        let controls = ControlStore::new(&self.client.config.state_dir);
        let scaffold = match control_receiver {
            None => None,
            Some(r) => match self
                .download(bearer, &task, v1::ModelPart::ServerControl, r, deadline)
                .instrument(tracing::info_span!("download", part = "server_control"))
                .await?
            {
                Done::Ok(c) => {
                    let ci = controls.load(&info.job_id, c.len());
                    info.gradient_correction = Some(scaffold_correction(&c, ci.as_deref()));
                    Some((c, ci.unwrap_or_default()))
                }
                Done::Abandoned | Done::Outdated => {
                    self.pause_after_failed_task().await;
                    return Ok(());
                }
            },
        };

        let info = Arc::new(info);
        let (eval, trained) = self
            .train(&info, &global)
            .instrument(tracing::info_span!("train"))
            .await?;
        let outcome = match trained {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(job = %info.job_id, round = info.round, error = %error_chain(e.as_ref()), "training failed; task abandoned");
                let (kind, why) = (
                    failure::trainer_failure_kind(&e),
                    failure::trainer_failure_reason(&e),
                );
                self.report_failure(bearer, &task, kind, &why).await;
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };

        // SCAFFOLD option II: `cᵢ⁺` from this round's local steps; `Δcᵢ` is reported after the
        // parameters and `cᵢ⁺` kept only once the coordinator has accepted the report.
        let scaffold = match scaffold {
            None => None,
            Some((c, mut ci)) => {
                if outcome.local_steps == 0 || outcome.params.len() != c.len() {
                    tracing::warn!(job = %info.job_id, round = info.round, steps = outcome.local_steps, "SCAFFOLD needs the trainer to report local_steps > 0 and a full parameter vector; task abandoned");
                    let why = "SCAFFOLD needs the trainer to report local_steps > 0 and a full parameter vector";
                    self.report_failure(bearer, &task, v1::FailureKind::TrainingFailed, why)
                        .await;
                    self.pause_after_failed_task().await;
                    return Ok(());
                }
                let lr = info.training.learning_rate as f32;
                let delta = scaffold_client_update(
                    &mut ci,
                    &c,
                    &global,
                    &outcome.params,
                    outcome.local_steps,
                    lr,
                );
                Some((ci, delta))
            }
        };
        let extra = scaffold.as_ref().map(|(_, delta)| delta.as_slice());
        let (mut header, params) = match build_header(
            &info,
            (outcome, eval),
            extra,
            self.client_id(),
        ) {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(job = %info.job_id, round = info.round, %reason, "trainer output unusable; task abandoned");
                let why = format!("unusable trainer output: {reason}");
                self.report_failure(bearer, &task, v1::FailureKind::TrainingFailed, &why)
                    .await;
                self.pause_after_failed_task().await;
                return Ok(());
            }
        };
        // `[compression]`: the delta from the global model, encoded as the job negotiated (never
        // with SCAFFOLD, whose report the coordinator refuses to compress).
        let residuals = ControlStore::residuals(&self.client.config.state_dir);
        let (payload, residual) = match compression {
            Compression::None => (Payload::Values(Arc::new(params)), None),
            _ if scaffold.is_some() => (Payload::Values(Arc::new(params)), None),
            c => {
                let kept = residuals.load(&info.job_id, params.len());
                match compress::encode_update(&mut header, &params, &global, c, kept) {
                    Ok(e) => (Payload::Encoded(Arc::new(e.bytes)), e.residual),
                    Err(reason) => {
                        tracing::warn!(job = %info.job_id, round = info.round, %reason, "update not compressible; uploading dense parameters");
                        (Payload::Values(Arc::new(params)), None)
                    }
                }
            }
        };
        match self
            .upload(bearer, header, payload, deadline)
            .instrument(tracing::info_span!("upload"))
            .await?
        {
            Done::Ok(()) => {
                self.stats.tasks_done += 1;
                if let Some(r) = &residual
                    && let Err(e) = residuals.save(&info.job_id, r)
                {
                    // Not fatal: the next round starts from the previous residual.
                    tracing::warn!(error = %e, "could not keep the compression residual");
                }
                if let Some((ci, _)) = &scaffold
                    && let Err(e) = controls.save(&info.job_id, ci)
                {
                    // Not fatal: the next round starts from the previous cᵢ, which only slows SCAFFOLD.
                    tracing::warn!(error = %e, "could not keep the SCAFFOLD control variate");
                }
            }
            Done::Outdated => {
                // FedBuff: the global model moved on past this task (or the task was dropped).
                // Not a failure of this client: check in again at once for work on the current
                // model, with no pause.
                self.stats.uploads_outdated += 1;
            }
            Done::Abandoned => self.pause_after_failed_task().await,
        }
        Ok(())
    }
}
