//! Federated evaluation end to end over TLS: clients report `eval_loss`, `eval_samples` and
//! `eval_accuracy` with their updates; the job's history records the sample-weighted means per
//! round (`federated_eval`, of the version the round started from); an unusable `eval_samples`
//! refuses the upload before its payload, naming the metric.

use crate::common;

use common::*;
use flotilla_proto::v1;

const LEN: usize = 10; // logreg [4] -> 2

fn with_eval(h: &mut v1::UpdateHeader, pairs: &[(&str, f64)]) {
    for (k, v) in pairs {
        h.metrics.insert((*k).to_owned(), *v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_evaluations_are_averaged_per_round_by_samples() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let job = h.submit(&job_toml(2, 4)).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(h.enroll(&format!("c{i}")).await);
    }

    // Round 1: clients 0..3 evaluate version 0 (client 3 does not).
    let tasks = wait_tasks(&mut clients).await;
    let u0 = update(0, 1, LEN);
    // Unusable evaluations are refused before any payload byte, naming the metric.
    for (bad, what) in [
        (
            vec![("eval_loss", 0.5), ("eval_samples", 2.5)],
            "eval_samples",
        ),
        (
            vec![("eval_loss", 0.5), ("eval_samples", 0.0)],
            "eval_samples",
        ),
        (vec![("eval_samples", 12.0)], "eval_loss"),
        (
            vec![
                ("eval_loss", 0.5),
                ("eval_samples", 12.0),
                ("eval_accuracy", 1.5),
            ],
            "eval_accuracy",
        ),
    ] {
        let mut hd = header(&tasks[0], &u0, samples(0));
        with_eval(&mut hd, &bad);
        let e = clients[0]
            .upload_header(hd, &u0)
            .await
            .expect_err("an unusable evaluation is refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(what), "{}", e.message());
        assert!(!e.message().contains('\n'), "{}", e.message());
    }
    let evals: [&[(&str, f64)]; 4] = [
        &[
            ("eval_loss", 1.0),
            ("eval_samples", 100.0),
            ("eval_accuracy", 0.5),
        ],
        &[("eval_loss", 4.0), ("eval_samples", 200.0)],
        &[
            ("eval_loss", 0.5),
            ("eval_samples", 100.0),
            ("eval_accuracy", 0.9),
        ],
        &[],
    ];
    for (i, (c, t)) in clients.iter_mut().zip(&tasks).enumerate() {
        let u = update(i, 1, LEN);
        let mut hd = header(t, &u, samples(i));
        with_eval(&mut hd, evals[i]);
        let r = c.upload_header(hd, &u).await.expect("upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    }
    // Round 2: nobody evaluates.
    let tasks = wait_tasks(&mut clients).await;
    for (i, (c, t)) in clients.iter_mut().zip(&tasks).enumerate() {
        assert_eq!(t.round, 2);
        let r = c.upload(t, &update(i, 2, LEN), samples(i)).await.unwrap();
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    }

    let (code, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["state"], "completed", "{st}");
    let hist = st["history"].as_array().unwrap();
    let f = &hist[0]["metrics"]["federated_eval"];
    assert_eq!(f["model_version"], 0, "{st}");
    // Loss (1·100 + 4·200 + 0.5·100) / 400 = 2.375; accuracy (0.5·100 + 0.9·100) / 200 = 0.7.
    assert!((f["loss"].as_f64().unwrap() - 2.375).abs() < 1e-12, "{f}");
    assert!((f["accuracy"].as_f64().unwrap() - 0.7).abs() < 1e-12, "{f}");
    assert_eq!(
        (f["samples"].as_u64(), f["clients"].as_u64()),
        (Some(400), Some(3)),
        "{f}"
    );
    assert!(
        hist[1]["metrics"].get("federated_eval").is_none(),
        "absent when no report carried one: {st}"
    );
    // The typed answer (what `flotilla job status` reads) has it too.
    let typed = h.job_status(job).await;
    let fe = typed.history[0].metrics.federated_eval.as_ref().unwrap();
    assert_eq!((fe.model_version, fe.samples, fe.clients), (0, 400, 3));
    assert_eq!(typed.history[1].metrics.federated_eval, None);
    let m = h.metrics().await;
    assert_eq!(m["rejections"]["bad_eval"], 4, "{m}");
    assert_eq!(m["uploads_accepted"], 8, "{m}");
    h.stop().await;
}
