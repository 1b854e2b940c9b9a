//! FedBuff through the real coordinator: tasks without rounds, a concurrency limit, a server step
//! every K uploads, and a too-stale upload refused.

use crate::common;

use common::*;
use flotilla_proto::v1;

const LEN: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedbuff_job_steps_every_k_uploads_and_refuses_stale_ones() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let toml = format!(
        "{}[strategy]\nname = \"fedbuff\"\nbuffer_size = 2\nconcurrency = 3\nmax_staleness = 0\n",
        job_toml(2, 1)
    );
    let job = h.submit(&toml).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }
    // Three tasks at once on version 0, no round to wait for; the fourth client must retry.
    let mut tasks = Vec::new();
    for (i, c) in clients.iter_mut().take(3).enumerate() {
        let t = c.wait_task(samples(i)).await;
        assert_eq!(t.model_version, 0);
        tasks.push(t);
    }
    let out = clients[3].check_in(samples(3)).await.expect("check in");
    assert!(
        !matches!(out, v1::check_in_response::Outcome::Task(_)),
        "concurrency = 3: {out:?}"
    );
    let m0 = clients[0].download(&tasks[0]).await;
    assert_eq!(m0.len(), LEN);
    // K = 2 fresh uploads: one step, global = v0 + mean(Δ) = mean of the two uploads.
    let u0 = update(0, 1, LEN);
    let u1 = update(1, 1, LEN);
    for (i, u) in [(0, &u0), (1, &u1)] {
        let r = clients[i]
            .upload(&tasks[i], u, samples(i))
            .await
            .expect("upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    }
    // Client 2 still trained on version 0; with max_staleness = 0 it is refused, saying why.
    let r = clients[2]
        .upload(&tasks[2], &update(2, 1, LEN), samples(2))
        .await;
    let refused = match r {
        Ok(r) => {
            assert_ne!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
            r.message
        }
        Err(s) => s.message().to_owned(),
    };
    assert!(refused.contains("stale"), "{refused}");
    // A new task starts from version 1, which is the staleness-weighted (here: plain) mean.
    let t3 = clients[3].wait_task(samples(3)).await;
    assert_eq!(t3.model_version, 1);
    let m1 = clients[3].download(&t3).await;
    let want: Vec<f32> = u0
        .iter()
        .zip(&u1)
        .map(|(a, b)| ((f64::from(*a) + f64::from(*b)) / 2.0) as f32)
        .collect();
    for (a, b) in m1.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5, "{m1:?} vs {want:?}");
    }
    let t2 = clients[2].wait_task(samples(2)).await;
    assert_eq!(t2.model_version, 1);
    for (i, t) in [(3, &t3), (2, &t2)] {
        let r = clients[i]
            .upload(t, &update(i, 2, LEN), samples(i))
            .await
            .expect("upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    }
    let (code, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["state"], "completed", "{st}");
    assert_eq!(st["rounds_completed"], 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_but_allowed_uploads_count_against_their_own_base_version() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    // K = 1: every accepted upload is a server step; a = 0, so each step is global += Δ.
    let toml = format!(
        "{}[strategy]\nname = \"fedbuff\"\nbuffer_size = 1\nconcurrency = 3\nmax_staleness = 2\nstaleness_exponent = 0.0\n",
        job_toml(3, 1)
    );
    let job = h.submit(&toml).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        tasks.push(c.wait_task(samples(i)).await);
    }
    let m0 = clients[0].download(&tasks[0]).await;
    let mut want = m0.clone();
    for i in 0..3 {
        // Client 2 downloads version 0 only after two server steps, then reports with τ = 2.
        assert_eq!(
            clients[i].download(&tasks[i]).await,
            m0,
            "client {i} gets its task's base version 0"
        );
        let u = update(i, 1, LEN);
        let r = clients[i]
            .upload(&tasks[i], &u, samples(i))
            .await
            .expect("upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
        for ((w, n), b) in want.iter_mut().zip(&u).zip(&m0) {
            *w += n - b;
        }
    }
    let (code, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["state"], "completed", "{st}");
    // A completed job is not running: its model is no longer served over gRPC (coordinator.proto)
    // but kept in the blob store, where the admin API reads it.
    let req = authed(
        v1::DownloadRequest {
            job_id: job.to_string(),
            model_version: 3,
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
    let blobs = data.join(format!("models/job-{job}"));
    let v3 = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().starts_with("v3-"))
        .expect("model v3 blob");
    let bytes = std::fs::read(v3.path()).unwrap();
    let got: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5, "{got:?} vs {want:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_task_on_the_same_version_is_accepted_and_too_stale_tasks_free_their_slots() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let toml = format!(
        "{}[strategy]\nname = \"fedbuff\"\nbuffer_size = 2\nconcurrency = 3\nmax_staleness = 0\n",
        job_toml(2, 1)
    );
    let job = h.submit(&toml).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.iter_mut().take(3).enumerate() {
        tasks.push(c.wait_task(samples(i)).await);
    }
    let out = clients[3].check_in(samples(3)).await.expect("check in");
    assert!(
        !matches!(out, v1::check_in_response::Outcome::Task(_)),
        "concurrency = 3: {out:?}"
    );
    let r = clients[0]
        .upload(&tasks[0], &update(0, 1, LEN), samples(0))
        .await
        .expect("upload");
    assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    // Client 0 gets another task on version 0: FedBuff names it like the first one (same round and
    // attempt), and its different update is accepted, not refused as conflicting with the first.
    let again = clients[0].wait_task(samples(0)).await;
    assert_eq!(
        (again.model_version, again.round, again.attempt),
        (0, tasks[0].round, tasks[0].attempt)
    );
    let r = clients[0]
        .upload(&again, &update(0, 2, LEN), samples(0))
        .await
        .expect("upload");
    assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    // That was the second update of the buffer: version 1. Clients 1 and 2 trained on version 0 and
    // max_staleness = 0, so their slots are free at once: client 3 gets a task without waiting.
    let out = clients[3].check_in(samples(3)).await.expect("check in");
    let v1::check_in_response::Outcome::Task(t3) = out else {
        panic!("a too-stale task's slot is free: {out:?}")
    };
    assert_eq!(t3.model_version, 1);
    // Client 1's late update is refused as too stale, with the machine-readable reason.
    let r = clients[1]
        .upload(&tasks[1], &update(1, 1, LEN), samples(1))
        .await
        .expect("upload answer");
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected, "{}", r.message);
    assert_eq!(r.reason, "too_stale", "{}", r.message);
    assert!(r.message.contains("stale"), "{}", r.message);
    // The step's staleness is in the job's history.
    let (code, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(code, 200, "{st}");
    let m = &st["history"][0]["metrics"];
    assert_eq!(m["staleness"], serde_json::json!([0, 0]), "{st}");
    assert_eq!(
        (m["staleness_max"].as_u64(), m["staleness_mean"].as_f64()),
        (Some(0), Some(0.0)),
        "{st}"
    );
    assert_eq!(
        st["history"][0]["participants"].as_array().map(Vec::len),
        Some(2),
        "{st}"
    );
    h.stop().await;
}
