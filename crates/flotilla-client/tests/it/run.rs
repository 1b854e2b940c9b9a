//! End-to-end runs of the client against an in-process fake coordinator (plain-text HTTP/2 on
//! 127.0.0.1): enrollment and credential reuse, training on digits, resumed download and upload,
//! backoff on UNAVAILABLE and on a coordinator that is not up yet, rejected uploads, revoked,
//! expired and refused credentials.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Fake, Faults};
use flotilla_client::{
    CREDENTIAL_FILE, Client, ClientConfig, ClientError, ClientStats, DatasetTrainer, RunError,
    StoredCredential,
};
use flotilla_data::DatasetName;

/// Digits, IID part 0 of 10.
fn trainer() -> DatasetTrainer {
    DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 0, 10).unwrap()
}

/// Runs a client until the fake has settled the upload (or the run ends by itself).
async fn run(fake: &Arc<Fake>, config: ClientConfig) -> Result<ClientStats, RunError> {
    let f = Arc::clone(fake);
    let client = Client::new(config).unwrap();
    tokio::time::timeout(
        Duration::from_secs(120),
        client.run(trainer(), async move { f.finished.notified().await }),
    )
    .await
    .expect("client run timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_trains_uploads_and_reuses_the_credential() {
    let fake = Fake::new(Faults::default());
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let stats = run(&fake, common::config(addr, &state)).await.unwrap();
    let samples = trainer().indices().len() as u64;
    common::check_accepted(&fake, samples);
    assert!(stats.enrolled);
    assert_eq!(stats.tasks_received, 1);
    assert_eq!(stats.tasks_done, 1);
    assert_eq!(stats.uploads_accepted, 1);
    assert_eq!(
        (stats.tasks_failed, stats.uploads_rejected, stats.reconnects),
        (0, 0, 0)
    );
    assert_eq!((stats.download_resumes, stats.upload_resumes), (0, 0));
    {
        let s = fake.seen.lock().unwrap();
        assert_eq!(s.enroll_calls, 1);
        assert_eq!(s.download_offsets, vec![0]);
        assert_eq!(s.upload_offsets, vec![0]);
        assert!(s.num_samples.iter().all(|&n| n == samples));
        // RetryAfter first, then the task, then the check-in that ends the test.
        assert!(s.check_ins >= 3, "{}", s.check_ins);
    }

    // The credential is stored privately and names its coordinator.
    let path = state.join(CREDENTIAL_FILE);
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(stored["client_id"], common::CLIENT_ID);
    assert_eq!(stored["credential"], common::CREDENTIAL);
    assert_eq!(stored["coordinator"], format!("http://{addr}"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A second start needs no token and does not enroll again.
    let mut again = common::config(addr, &state);
    again.enrollment_token = None;
    let client = Client::new(again.clone()).unwrap();
    assert_eq!(client.client_id(), Some(common::CLIENT_ID));
    let stats = run(&fake, again).await.unwrap();
    assert!(!stats.enrolled);
    assert_eq!(fake.seen.lock().unwrap().enroll_calls, 1);

    // The stored credential is bound to its coordinator.
    let mut other = common::config(addr, &state);
    other.coordinator = "http://127.0.0.1:1".into();
    assert!(matches!(
        Client::new(other),
        Err(ClientError::CoordinatorMismatch { .. })
    ));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_a_broken_download() {
    let fake = Fake::new(Faults {
        drop_download_after: Some(2),
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(&fake, common::config(addr, dir.path())).await.unwrap();
    common::check_accepted(&fake, trainer().indices().len() as u64);
    assert_eq!(
        fake.seen.lock().unwrap().download_offsets,
        vec![0, 2 * common::DOWNLOAD_CHUNK as u64]
    );
    assert_eq!(stats.download_resumes, 1);
    assert_eq!(stats.tasks_done, 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_download_is_detected_and_fetched_again() {
    let fake = Fake::new(Faults {
        corrupt_first_download: true,
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(&fake, common::config(addr, dir.path())).await.unwrap();
    common::check_accepted(&fake, trainer().indices().len() as u64);
    assert_eq!(fake.seen.lock().unwrap().download_offsets, vec![0, 0]);
    assert_eq!(stats.tasks_done, 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_a_broken_upload() {
    let fake = Fake::new(Faults {
        break_upload_after: Some(2),
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(addr, dir.path());
    let chunk = config.upload_chunk_bytes as u64;
    let stats = run(&fake, config).await.unwrap();
    common::check_accepted(&fake, trainer().indices().len() as u64);
    {
        let s = fake.seen.lock().unwrap();
        assert_eq!(s.upload_offsets, vec![0, 2 * chunk]);
        assert_eq!(s.queries, 1);
    }
    assert_eq!(stats.upload_resumes, 1);
    assert_eq!(stats.uploads_accepted, 1);
    assert!(stats.reconnects >= 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_off_while_the_coordinator_is_unavailable() {
    let fake = Fake::new(Faults {
        unavailable_check_ins: 4,
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(&fake, common::config(addr, dir.path())).await.unwrap();
    common::check_accepted(&fake, trainer().indices().len() as u64);
    assert_eq!(stats.reconnects, 4);
    assert_eq!(stats.tasks_done, 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_coordinator_that_is_not_up_yet() {
    // Reserve a port, free it, start the client, then bring the coordinator up on that port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let fake = Fake::new(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(addr, dir.path());
    let f = Arc::clone(&fake);
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        common::serve_on(f, listener).await;
    });
    let stats = run(&fake, config).await.unwrap();
    common::check_accepted(&fake, trainer().indices().len() as u64);
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(stats.enrolled);
    starter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_upload_is_logged_and_the_client_moves_on() {
    let fake = Fake::new(Faults {
        reject_uploads: true,
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(&fake, common::config(addr, dir.path())).await.unwrap();
    assert_eq!(stats.uploads_rejected, 1);
    assert_eq!(stats.uploads_accepted, 0);
    assert_eq!((stats.tasks_done, stats.tasks_failed), (0, 1));
    assert_eq!(fake.seen.lock().unwrap().rejected, 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_stale_upload_is_not_a_failure_and_the_client_checks_in_for_fresh_work() {
    // FedBuff: the coordinator refuses an update whose base model fell more than max_staleness
    // versions behind, naming it `too_stale`. The SDK does not retry it, does not count a failed
    // task, and checks in again (the fake ends the run at that check-in).
    let fake = Fake::new(Faults {
        reject_uploads: true,
        reject_reason: "too_stale",
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(&fake, common::config(addr, dir.path())).await.unwrap();
    assert_eq!((stats.uploads_rejected, stats.uploads_outdated), (1, 1));
    assert_eq!((stats.tasks_done, stats.tasks_failed), (0, 0));
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.rejected, 1, "the refused update is not sent again");
    assert_eq!(seen.queries, 0);
    drop(seen);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_ends_the_run() {
    let fake = Fake::new(Faults {
        revoked: true,
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(&fake, common::config(addr, dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err.error, ClientError::Unauthenticated { message } if message.contains("revoked")),
        "{err}"
    );
    assert!(err.to_string().contains("re-enroll"), "{err}");
    assert!(err.stats.enrolled);
    assert_eq!(err.stats.tasks_received, 0);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_enrollment_ends_the_run_and_stores_nothing() {
    let fake = Fake::new(Faults::default());
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(addr, dir.path());
    config.enrollment_token = Some("wrong".into());
    let err = run(&fake, config).await.unwrap_err();
    assert!(
        matches!(
            err.error,
            ClientError::EnrollmentRefused {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dir.path().join(CREDENTIAL_FILE).exists());

    // Without a token and without a stored credential there is nothing to try.
    let mut config = common::config(addr, dir.path());
    config.enrollment_token = None;
    let err = run(&fake, config).await.unwrap_err();
    assert!(
        matches!(err.error, ClientError::NotEnrolled { .. }),
        "{err}"
    );
    assert_eq!(fake.seen.lock().unwrap().enroll_calls, 1);
    server.abort();
}

/// Writes a credential file as an earlier run would have left it.
fn store_credential(state: &Path, addr: std::net::SocketAddr, client_id: &str, credential: &str) {
    StoredCredential {
        client_id: client_id.into(),
        credential: credential.into(),
        coordinator: format!("http://{addr}"),
    }
    .save(&state.join(CREDENTIAL_FILE))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_credential_is_replaced_by_enrolling_again() {
    let fake = Fake::new(Faults {
        first_credential_expired: true,
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    store_credential(&state, addr, common::CLIENT_ID, common::CREDENTIAL);

    let stats = run(&fake, common::config(addr, &state)).await.unwrap();
    assert_eq!(stats.re_enrollments, 1);
    assert!(stats.enrolled);
    assert_eq!((stats.tasks_done, stats.uploads_accepted), (1, 1));
    {
        let s = fake.seen.lock().unwrap();
        assert_eq!((s.enroll_calls, s.expired_refusals), (1, 1));
        // The update was sent under the new identity.
        let (h, _) = s.accepted.as_ref().expect("update accepted");
        assert_eq!(
            h.upload_id,
            flotilla_client::upload_id(common::JOB, 1, 0, 0, common::CLIENT_ID_2)
        );
    }
    // The expired credential was replaced on disk.
    let stored = StoredCredential::load(&state.join(CREDENTIAL_FILE))
        .unwrap()
        .expect("new credential stored");
    assert_eq!(
        (stored.client_id.as_str(), stored.credential.as_str()),
        (common::CLIENT_ID_2, common::CREDENTIAL_2)
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_credential_without_a_token_stops_the_client_and_is_deleted() {
    let fake = Fake::new(Faults {
        first_credential_expired: true,
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    store_credential(dir.path(), addr, common::CLIENT_ID, common::CREDENTIAL);
    let mut config = common::config(addr, dir.path());
    config.enrollment_token = None;

    let err = run(&fake, config).await.unwrap_err();
    assert!(
        matches!(&err.error, ClientError::CredentialExpired { message }
            if message.contains("credential expired; enroll again") && message.contains("no enrollment token")),
        "{err}"
    );
    assert!(err.to_string().contains("--token"), "{err}");
    assert!(!dir.path().join(CREDENTIAL_FILE).exists());
    assert_eq!((err.stats.enrolled, err.stats.re_enrollments), (false, 0));
    assert_eq!(err.stats.tasks_received, 0);
    let s = fake.seen.lock().unwrap();
    assert_eq!((s.enroll_calls, s.expired_refusals), (0, 1));
    drop(s);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_credential_refused_as_expired_stops_instead_of_looping() {
    let fake = Fake::new(Faults {
        every_credential_expired: true,
        ..Faults::default()
    });
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    store_credential(dir.path(), addr, common::CLIENT_ID, common::CREDENTIAL);

    let err = run(&fake, common::config(addr, dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err.error, ClientError::CredentialExpired { message } if message.contains("moments ago")),
        "{err}"
    );
    // The stored credential expired, the client enrolled once more, and that one was refused too.
    assert_eq!((err.stats.re_enrollments, err.stats.enrolled), (1, true));
    let s = fake.seen.lock().unwrap();
    assert_eq!((s.enroll_calls, s.expired_refusals), (1, 2));
    drop(s);
    assert!(!dir.path().join(CREDENTIAL_FILE).exists());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_does_not_fit_the_model_is_reported_to_the_coordinator() {
    // 63 features against the fake's 64-input model: training fails, the task is abandoned, and
    // the coordinator is told why, with the data-incompatible kind, before the client moves on.
    let fake = Fake::new(Faults::default());
    let (addr, server) = common::serve(Arc::clone(&fake)).await;
    let dir = tempfile::tempdir().unwrap();
    let n = 20;
    let data = flotilla_data::Dataset {
        features: vec![0.5; n * 63],
        feature_shape: vec![63],
        labels: (0..n as u32).map(|i| i % 10).collect(),
        num_classes: 10,
        groups: None,
        group_names: Vec::new(),
    };
    let trainer = DatasetTrainer::new(data, (0..n as u32).collect()).unwrap();
    let f = Arc::clone(&fake);
    let client = Client::new(common::config(addr, dir.path())).unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(120),
        client.run(trainer, async move { f.finished.notified().await }),
    )
    .await
    .expect("client run timed out")
    .unwrap();
    assert_eq!((stats.tasks_done, stats.tasks_failed), (0, 1));
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.task_failures.len(), 1, "{:?}", seen.task_failures);
    let f = &seen.task_failures[0];
    assert_eq!(
        (f.job_id.as_str(), f.round, f.stage_index),
        (common::JOB, 1, 0)
    );
    assert_eq!(
        f.kind,
        flotilla_proto::v1::FailureKind::DataIncompatible as i32
    );
    assert_eq!(f.reason, "input has 63 features, model expects 64");
    assert!(seen.accepted.is_none());
    drop(seen);
    server.abort();
}
