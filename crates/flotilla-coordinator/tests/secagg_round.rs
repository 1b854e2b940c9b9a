//! Secure aggregation through the coordinator, in process: the stage rpc refuses bad input with a
//! clear status and a counter while the round goes on, and a round in which a client vanishes after
//! its masked input commits the mean of everyone's (clipped) delta.
// Clients are addressed by index in both `cs` and the secagg client map.
#![allow(clippy::needless_range_loop)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use flotilla_proto::v1;
use flotilla_secagg::{Client as SecAggClient, ClientId as SecAggId, ClientMessage, Params, ServerMessage, UnmaskResponse};
use tonic::Code;

const LEN: usize = 10;

fn rejections(m: &serde_json::Value, k: &str) -> u64 {
    m["rejections"][k].as_u64().unwrap_or(0)
}

fn params_of(task: &v1::Task) -> Params {
    let c = task.secagg.as_ref().expect("secagg parameters in the task");
    Params::new(c.max_clients as usize, c.threshold as usize, c.neighbours as usize, LEN, c.clip_range).unwrap()
}

async fn send(c: &mut Client, task: &v1::Task, stage_index: u32, payload: Vec<u8>) -> Result<(), tonic::Status> {
    let req = v1::StageMessageRequest {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage_index,
        payload,
    };
    c.grpc.submit_stage_message(authed(req, &c.credential)).await.map(|_| ())
}

/// Checks in until the client gets a task for `stage` (at most 20 s).
async fn task_for_stage(c: &mut Client, stage: u32) -> v1::Task {
    for _ in 0..400 {
        if let v1::check_in_response::Outcome::Task(t) = c.check_in(50).await.expect("check in")
            && t.stage_index == stage
        {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("client {} got no task for stage {stage}", c.id);
}

fn delta(i: usize) -> Vec<f32> {
    // Client 3's first coordinate is outside the clip range and gets clipped to 1.0.
    (0..LEN).map(|k| if i == 3 && k == 0 { 1.75 } else { 0.01 * (i as f32 + 1.0) + 0.001 * k as f32 }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_rpc_refuses_bad_input_and_a_round_with_a_dropout_commits_the_secure_mean() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let toml = job_toml(1, 4).replace("round_deadline_seconds = 60", "round_deadline_seconds = 4") + "[secagg]\nclip_range = 1.0\n";
    let job = h.submit(&toml).await;
    let mut cs = vec![h.enroll("a").await, h.enroll("b").await, h.enroll("c").await, h.enroll("d").await];
    let tasks = wait_tasks(&mut cs).await;
    assert!(tasks.iter().all(|t| t.stage == v1::Stage::AdvertiseKeys as i32 && t.stage_index == 0 && t.secagg_payload.is_empty()));
    let params = params_of(&tasks[0]);
    let initial = cs[0].download(&tasks[0]).await;
    let rid = flotilla_secagg::round_id(tasks[0].round, tasks[0].attempt);
    let mut sa: BTreeMap<usize, SecAggClient> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| (i, SecAggClient::new(params, SecAggId(c.id), rid, [i as u8 + 7; 32])))
        .collect();
    let t0 = tasks[0].clone();
    let adv = |i: usize, sa: &BTreeMap<usize, SecAggClient>| ClientMessage::AdvertiseKeys(sa[&i].advertise()).to_bytes();

    // --- Bad input, all from client a during stage 0 ---
    let a_id = SecAggId(cs[0].id);
    let before = h.metrics().await;
    let cases: Vec<(Result<(), tonic::Status>, Code, &str)> = vec![
        (send(&mut cs[0], &t0, 0, vec![0xff; 12]).await, Code::InvalidArgument, "secagg_malformed"),
        (send(&mut cs[0], &t0, 0, adv(1, &sa)).await, Code::PermissionDenied, "secagg_sender_mismatch"),
        (send(&mut cs[0], &t0, 1, adv(0, &sa)).await, Code::FailedPrecondition, "wrong_stage"),
        (send(&mut cs[0], &v1::Task { round: 2, ..t0.clone() }, 0, adv(0, &sa)).await, Code::FailedPrecondition, "wrong_round"),
        (
            // A message of another secagg round (e.g. replayed from an earlier attempt).
            send(
                &mut cs[0],
                &t0,
                0,
                ClientMessage::AdvertiseKeys(
                    SecAggClient::new(params, a_id, flotilla_secagg::round_id(1, 9), [1; 32]).advertise(),
                )
                .to_bytes(),
            )
            .await,
            Code::FailedPrecondition,
            "secagg_wrong_round",
        ),
        (
            send(
                &mut cs[0],
                &t0,
                0,
                ClientMessage::Unmask(UnmaskResponse { round: rid, sender: a_id, seed_shares: vec![], key_shares: vec![] })
                    .to_bytes(),
            )
            .await,
            Code::InvalidArgument,
            "secagg_wrong_stage",
        ),
        (send(&mut cs[0], &t0, 0, vec![0; params.max_client_message_len() + 1]).await, Code::InvalidArgument, "secagg_too_large"),
        (send(&mut cs[0], &v1::Task { job_id: "999".into(), ..t0.clone() }, 0, adv(0, &sa)).await, Code::NotFound, "unknown_job"),
    ];
    let after = h.metrics().await;
    for (res, code, counter) in &cases {
        let e = res.as_ref().expect_err(counter);
        assert_eq!(e.code(), *code, "{counter}: {e:?}");
        assert!(rejections(&after, counter) > rejections(&before, counter), "counter {counter} did not move: {after}");
    }
    // The good message, then its replay.
    send(&mut cs[0], &t0, 0, adv(0, &sa)).await.expect("advertise accepted");
    let e = send(&mut cs[0], &t0, 0, adv(0, &sa)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // A parameter upload at a secure-aggregation stage is refused by the round machine.
    let r = cs[1].upload(&tasks[1], &initial, 10).await.expect("a well-formed upload gets an answer");
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected, "{r:?}");
    assert!(r.message.contains("advertise_keys"), "{r:?}");

    // --- The round goes on unaffected ---
    for i in 1..4 {
        send(&mut cs[i], &tasks[i], 0, adv(i, &sa)).await.expect("advertise");
    }
    for i in 0..4 {
        let t = task_for_stage(&mut cs[i], 1).await;
        let ServerMessage::Roster(r) = ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap() else { panic!("roster") };
        assert_eq!(r.clients.len(), 4);
        let m = sa.get_mut(&i).unwrap().handle_roster(&r).unwrap();
        send(&mut cs[i], &t, 1, ClientMessage::ShareKeys(m).to_bytes()).await.expect("shares");
    }
    for i in 0..4 {
        let t = task_for_stage(&mut cs[i], 2).await;
        assert_eq!(t.stage, v1::Stage::MaskedInput as i32);
        let ServerMessage::Shares(b) = ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap() else { panic!("shares") };
        let c = sa.get_mut(&i).unwrap();
        c.handle_shares(&b).unwrap();
        // The masked input cannot go through the stage rpc.
        let m = c.masked_input(&delta(i)).unwrap();
        if i == 0 {
            let e = send(&mut cs[i], &t, 2, ClientMessage::MaskedInput(m.clone()).to_bytes()).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
        let words: Vec<f32> = m.masked.iter().map(|w| f32::from_bits(*w)).collect();
        let mut hd = header(&t, &words, 10 + i as u64);
        hd.stage = v1::Stage::MaskedInput as i32;
        hd.payload_kind = v1::PayloadKind::MaskedU32 as i32;
        if i == 1 {
            // Wrong length for the layout: refused before any state changes.
            let mut short = hd.clone();
            short.total_bytes -= 4;
            assert!(cs[i].upload_header(short, &words[1..]).await.is_err());
        }
        let r = cs[i].upload_header(hd.clone(), &words).await.expect("masked upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{r:?}");
        // Idempotent: the same upload again is a duplicate, not a second input.
        let r = cs[i].upload_header(hd, &words).await.expect("masked re-upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Duplicate, "{r:?}");
    }
    // Client d vanishes after its masked input; a, b and c unmask.
    for i in 0..3 {
        let t = task_for_stage(&mut cs[i], 3).await;
        let ServerMessage::UnmaskRequest(r) = ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap() else { panic!("request") };
        let m = sa.get_mut(&i).unwrap().handle_unmask(&r).unwrap();
        send(&mut cs[i], &t, 3, ClientMessage::Unmask(m).to_bytes()).await.expect("unmask");
    }
    // The unmasking stage closes at its deadline; the job then completes.
    let mut status = serde_json::Value::Null;
    for _ in 0..200 {
        let (_, s) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
        if s["state"] == "completed" {
            status = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["state"], "completed", "{status}");
    let participants: Vec<u64> =
        status["history"][0]["participants"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_eq!(participants, cs.iter().map(|c| c.id).collect::<Vec<_>>(), "d's masked input still counts");
    assert_eq!(status["history"][0]["metrics"]["num_samples"], 10 + 11 + 12 + 13);

    // The committed model is the unweighted mean of the clipped deltas, within the quantization bound.
    let model = {
        // `..Default::default()` keeps this compiling when fields are added to the request.
        #[allow(clippy::needless_update)]
        let download = v1::DownloadRequest { job_id: tasks[0].job_id.clone(), model_version: 1, offset: 0, ..Default::default() };
        let req = authed(download, &cs[0].credential);
        let mut stream = cs[0].grpc.download_model(req).await.expect("download v1").into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.expect("chunk") {
            bytes.extend_from_slice(&chunk.data);
        }
        flotilla_core::params_from_le_bytes(&bytes).expect("model bytes")
    };
    let bound = params.quantization_error_bound(4) / 4.0 + 1e-6;
    for k in 0..LEN {
        let mean: f64 = (0..4).map(|i| f64::from(delta(i)[k]).clamp(-1.0, 1.0)).sum::<f64>() / 4.0;
        let expected = f64::from(initial[k]) + mean;
        assert!((f64::from(model[k]) - expected).abs() <= bound, "coordinate {k}: {} vs {expected}", model[k]);
    }
}
