//! `GET /metrics` on the admin listener: the admin token is required unless `metrics_public`;
//! after a round every family the docs promise is there, and no label is a client id.

use crate::common;

use common::*;
use flotilla_proto::v1;

const LEN: usize = 10; // logreg [4] -> 2

/// The label names a Flotilla exposition may use: bounded vocabularies only.
const ALLOWED_LABELS: [&str; 12] = [
    "job", "tenant", "reason", "stage", "rpc", "outcome", "state", "kind", "op", "version",
    "git_sha", "le",
];

fn label_names(line: &str) -> Vec<&str> {
    let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
        return Vec::new();
    };
    line[open + 1..close]
        .split("\",")
        .filter_map(|p| p.split('=').next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_and_name_every_family_after_a_round() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let (code, body) = h.admin_with("GET", "/metrics", "", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = h.admin_with("GET", "/metrics", "", Some("wrong")).await;
    assert_eq!(code, 401);

    let job = h.submit(&job_toml(1, 2)).await;
    let mut clients = vec![h.enroll("c0").await, h.enroll("c1").await];
    let tasks = wait_tasks(&mut clients).await;
    for (i, (c, t)) in clients.iter_mut().zip(&tasks).enumerate() {
        let r = c.upload(t, &update(i, 1, LEN), samples(i)).await.unwrap();
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    }
    assert_eq!(h.job_status(job).await.job.rounds_completed, 1);

    let (code, body) = h.admin("GET", "/metrics", "").await;
    assert_eq!(code, 200, "{body}");
    let text = body.as_str().expect("text exposition").to_owned();
    let j = format!("job=\"{job}\"");
    for want in [
        "flotilla_checkins_total ".to_owned(),
        "flotilla_tasks_issued_total 2".to_owned(),
        "flotilla_uploads_total{outcome=\"accepted\",reason=\"none\"} 2".to_owned(),
        "flotilla_received_bytes_total ".to_owned(),
        "flotilla_sent_bytes_total ".to_owned(),
        "flotilla_rpc_duration_seconds_count{rpc=\"CheckIn\"}".to_owned(),
        "flotilla_rpc_duration_seconds_count{rpc=\"UploadUpdate\"} 2".to_owned(),
        format!("flotilla_rounds_committed_total{{{j}}} 1"),
        format!("flotilla_round_duration_seconds_count{{{j}}} 1"),
        format!("flotilla_round_participants{{{j}}} 2"),
        format!("flotilla_job_state{{{j},state=\"completed\"}} 1"),
        format!("flotilla_job_state{{{j},state=\"running\"}} 0"),
        format!("flotilla_job_round{{{j}}} 1"),
        format!("flotilla_job_round_deadline_seconds{{{j}}} 60.0"),
        format!("flotilla_last_commit_timestamp_seconds{{{j}}} "),
        "flotilla_clients_enrolled{tenant=\"default\"} 2".to_owned(),
        "flotilla_clients_active{tenant=\"default\"} 2".to_owned(),
        "flotilla_auth_failures_total{kind=\"admin_unauthenticated\"} 2".to_owned(),
        "flotilla_rejections_total{reason=\"admin_unauthenticated\"} 2".to_owned(),
        "flotilla_tls_handshake_failures_total ".to_owned(),
        "flotilla_store_operation_duration_seconds_count{op=\"commit_round\"} 1".to_owned(),
        "flotilla_build_info{".to_owned(),
        "flotilla_tls_cert_expiry_timestamp_seconds ".to_owned(),
        "process_resident_memory_bytes ".to_owned(),
        "process_cpu_seconds_total ".to_owned(),
        "process_open_fds ".to_owned(),
        "process_max_fds ".to_owned(),
        "process_start_time_seconds ".to_owned(),
    ] {
        assert!(text.contains(want.as_str()), "missing {want:?} in\n{text}");
    }
    // Families without a series yet (abandoned attempts, evaluations, DP, secure aggregation)
    // are left out of the exposition until they have one: the unit tests in `metrics/tests.rs`
    // cover their names.
    // No client id anywhere: label names are from the bounded vocabulary.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        for name in label_names(line) {
            assert!(ALLOWED_LABELS.contains(&name), "label {name:?} in {line}");
        }
    }
    // The JSON counters are the same counters.
    let m = h.metrics().await;
    assert_eq!(m["uploads_accepted"], 2, "{m}");
    assert_eq!(m["rounds_committed"], 1, "{m}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_public_serves_them_without_the_token_and_nothing_else() {
    let (_dir, data, certs) = tmp();
    let h = start_with(&data, &certs, |c| c.metrics_public = true).await;
    let (code, body) = h.admin_with("GET", "/metrics", "", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.as_str().unwrap().contains("flotilla_checkins_total 0"),
        "{body}"
    );
    // Every other admin route still needs the token.
    let (code, _) = h.admin_with("GET", "/v1/metrics", "", None).await;
    assert_eq!(code, 401);
    let (code, _) = h.admin_with("GET", "/v1/jobs", "", None).await;
    assert_eq!(code, 401);
    h.stop().await;
}
