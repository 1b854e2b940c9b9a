//! End to end over TLS: enrollment, check-in, download, upload, commit, admin status; restart
//! recovery; the same on PostgreSQL.

use crate::common;

use common::*;
use flotilla_proto::v1;

const LEN: usize = 10; // logreg [4] -> 2: weight 4x2 + bias 2

/// Runs one full round with every client; returns the expected new model.
async fn run_round(clients: &mut [Client], round: u64, previous: Option<&[f32]>) -> Vec<f32> {
    let tasks = wait_tasks(clients).await;
    for (c, t) in clients.iter_mut().zip(&tasks) {
        assert_eq!(t.round, round);
        assert_eq!(t.model_version, round - 1);
        assert_eq!(t.stage, v1::Stage::Train as i32);
        assert!(t.deadline_unix_ms > 0);
        let spec = t.model.as_ref().unwrap().spec.as_ref().unwrap();
        assert_eq!(
            (
                spec.kind.as_str(),
                spec.input_shape.as_slice(),
                spec.num_classes
            ),
            ("logreg", &[4u64][..], 2)
        );
        let model = c.download(t).await;
        assert_eq!(model.len(), LEN);
        if let Some(p) = previous {
            assert_eq!(model, p, "the task's model is the last committed one");
        }
    }
    let mut ups = Vec::new();
    for (i, (c, t)) in clients.iter_mut().zip(&tasks).enumerate() {
        let u = update(i, round, LEN);
        let r = c.upload(t, &u, samples(i)).await.expect("upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
        ups.push((u, samples(i)));
    }
    weighted_mean(&ups)
}

async fn two_rounds(database_url: Option<String>) {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, database_url).await;
    let job = h.submit(&job_toml(2, 4)).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }
    let m1 = run_round(&mut clients, 1, None).await;
    let m2 = run_round(&mut clients, 2, Some(&m1)).await;

    let (code, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["state"], "completed", "{st}");
    assert_eq!(st["rounds_completed"], 2);
    assert_eq!(st["rounds_total"], 2);
    let hist = st["history"].as_array().unwrap();
    assert_eq!(hist.len(), 2);
    for (k, r) in hist.iter().enumerate() {
        assert_eq!(r["round"], k as u64 + 1);
        assert_eq!(r["participants"].as_array().unwrap().len(), 4);
        assert_eq!(r["metrics"]["num_samples"], 100);
    }
    // The committed model (version 2) is the weighted mean of the round-2 uploads. The job
    // completed, so gRPC no longer serves it (NOT_FOUND); it is in the blob store.
    let req = authed(
        v1::DownloadRequest {
            job_id: job.to_string(),
            model_version: 2,
            offset: 0,
            ..Default::default()
        },
        &clients[0].credential,
    );
    let e = clients[0]
        .grpc
        .download_model(req)
        .await
        .expect_err("the job is not running");
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::NotFound,
            format!("job {job} is not running (completed)").as_str()
        )
    );
    let got = committed_model(&data, &job.to_string(), 2);
    for (a, b) in got.iter().zip(&m2) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{got:?} vs {m2:?}"
        );
    }
    // Job listing and metrics.
    let (code, list) = h.admin("GET", "/v1/jobs", "").await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let m = h.metrics().await;
    assert_eq!(m["uploads_accepted"], 8, "{m}");
    assert_eq!(m["rounds_committed"], 2, "{m}");
    assert!(m["tasks"].as_u64().unwrap() >= 8);
    let (code, cl) = h.admin("GET", "/v1/clients", "").await;
    assert_eq!(code, 200);
    assert_eq!(cl.as_array().unwrap().len(), 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_round_job_over_tls_sqlite() {
    two_rounds(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_round_resumes_and_commits_each_round_once() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let job = h.submit(&job_toml(2, 4)).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }
    let m1 = run_round(&mut clients, 1, None).await;
    // Round 2: every client gets its task, two upload, then the coordinator goes away.
    let tasks = wait_tasks(&mut clients).await;
    assert!(tasks.iter().all(|t| t.round == 2 && t.attempt == 1));
    for i in 0..2 {
        let r = clients[i]
            .upload(&tasks[i], &update(i, 2, LEN), samples(i))
            .await
            .unwrap();
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted);
    }
    h.stop().await;

    let h = start(&data, &certs, None).await;
    let (_, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["rounds_completed"], 1);
    assert_eq!(st["current"]["round"], 2);
    // `recover()` always moves to a new attempt: whatever the dead process handed out for round 2
    // attempt 1 after its last snapshot is stale.
    assert_eq!(st["current"]["attempt"], 2);
    for c in clients.iter_mut() {
        c.grpc = h.grpc().await;
    }
    // The pre-crash task (attempt 1) is stale.
    let r = clients[2]
        .upload(&tasks[2], &update(2, 2, LEN), samples(2))
        .await
        .unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected, "{}", r.message);
    assert!(r.message.contains("attempt 1"), "{}", r.message);
    // An update for the committed round is refused as late.
    let mut late = header(&tasks[3], &update(3, 1, LEN), samples(3));
    late.round = 1;
    let r = clients[3]
        .upload_header(late, &update(3, 1, LEN))
        .await
        .unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected, "{}", r.message);
    let m2 = run_round(&mut clients, 2, Some(&m1)).await;
    let (_, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(st["state"], "completed", "{st}");
    let rounds: Vec<u64> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, vec![1, 2]);
    let m = h.metrics().await;
    assert_eq!(m["rejections"]["wrong_round"], 2, "{m}");
    let _ = m2;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_round_job_over_tls_postgres() {
    let Some(schema) = flotilla_testkit::pg::PgSchema::create("flotilla_coord_t").await else {
        return;
    };
    let result = tokio::spawn(two_rounds(Some(schema.url().to_owned()))).await;
    drop(schema);
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
