//! Secure aggregation through the coordinator, in process: the stage rpc refuses bad input with a
//! clear status and a counter while the round goes on, and a round in which a client vanishes after
//! its masked input commits the mean of everyone's (clipped) delta.
// Clients are addressed by index in both `cs` and the secagg client map.
#![allow(clippy::needless_range_loop)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use flotilla_proto::v1;
use flotilla_secagg::{
    Client as SecAggClient, ClientId as SecAggId, ClientMessage, Params, ServerMessage,
    UnmaskResponse,
};
use tonic::Code;

const LEN: usize = 10;

fn rejections(m: &serde_json::Value, k: &str) -> u64 {
    m["rejections"][k].as_u64().unwrap_or(0)
}

fn params_of(task: &v1::Task) -> Params {
    let c = task.secagg.as_ref().expect("secagg parameters in the task");
    let bits = (c.quantization_bits > 0).then_some(c.quantization_bits as u8);
    Params::new(
        c.max_clients as usize,
        c.threshold as usize,
        c.neighbours as usize,
        LEN,
        c.clip_range,
    )
    .and_then(|p| p.with_quantization_bits(bits))
    .unwrap()
}

/// Uploads a masked input in its ring's width: 2-byte words in a 16-bit ring, else 4. Also the
/// request body's size (each message with gRPC's 5-byte prefix).
async fn upload_masked(
    c: &mut Client,
    t: &v1::Task,
    masked: &[u32],
    sixteen: bool,
) -> (Result<v1::UploadResponse, tonic::Status>, u64) {
    use prost::Message;
    use sha2::{Digest, Sha256};
    let words: Vec<f32> = masked.iter().map(|w| f32::from_bits(*w)).collect();
    let mut hd = header(t, &words, 10);
    hd.stage = v1::Stage::MaskedInput as i32;
    let bytes: Vec<u8> = if sixteen {
        masked
            .iter()
            .flat_map(|w| (*w as u16).to_le_bytes())
            .collect()
    } else {
        masked.iter().flat_map(|w| w.to_le_bytes()).collect()
    };
    hd.payload_kind = if sixteen {
        v1::PayloadKind::MaskedU16
    } else {
        v1::PayloadKind::MaskedU32
    } as i32;
    hd.total_bytes = bytes.len() as u64;
    hd.sha256 = Sha256::digest(&bytes).to_vec();
    let msgs: Vec<_> = flotilla_proto::upload_byte_messages(hd, &bytes, 16, 0).collect();
    let wire = msgs.iter().map(|m| 5 + m.encoded_len() as u64).sum();
    let req = authed(tokio_stream::iter(msgs), &c.credential);
    let r = c.grpc.upload_update(req).await.map(|r| r.into_inner());
    (r, wire)
}

async fn send(
    c: &mut Client,
    task: &v1::Task,
    stage_index: u32,
    payload: Vec<u8>,
) -> Result<(), tonic::Status> {
    let req = v1::StageMessageRequest {
        job_id: task.job_id.clone(),
        round: task.round,
        attempt: task.attempt,
        stage_index,
        payload,
    };
    c.grpc
        .submit_stage_message(authed(req, &c.credential))
        .await
        .map(|_| ())
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
    (0..LEN)
        .map(|k| {
            if i == 3 && k == 0 {
                1.75
            } else {
                0.01 * (i as f32 + 1.0) + 0.001 * k as f32
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_rpc_refuses_bad_input_and_a_round_with_a_dropout_commits_the_secure_mean() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let toml = job_toml(1, 4).replace("deadline_seconds = 60", "deadline_seconds = 4")
        + "[secagg]\nclip_range = 1.0\n";
    let job = h.submit(&toml).await;
    let mut cs = vec![
        h.enroll("a").await,
        h.enroll("b").await,
        h.enroll("c").await,
        h.enroll("d").await,
    ];
    let tasks = wait_tasks(&mut cs).await;
    assert!(
        tasks
            .iter()
            .all(|t| t.stage == v1::Stage::AdvertiseKeys as i32
                && t.stage_index == 0
                && t.secagg_payload.is_empty())
    );
    let params = params_of(&tasks[0]);
    let initial = cs[0].download(&tasks[0]).await;
    let rid = flotilla_secagg::round_id(tasks[0].round, tasks[0].attempt);
    let mut sa: BTreeMap<usize, SecAggClient> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                i,
                SecAggClient::new(params, SecAggId(c.id), rid, [i as u8 + 7; 32]),
            )
        })
        .collect();
    let t0 = tasks[0].clone();
    let adv = |i: usize, sa: &BTreeMap<usize, SecAggClient>| {
        ClientMessage::AdvertiseKeys(sa[&i].advertise()).to_bytes()
    };

    // --- Bad input, all from client a during stage 0 ---
    let a_id = SecAggId(cs[0].id);
    let before = h.metrics().await;
    let cases: Vec<(Result<(), tonic::Status>, Code, &str)> = vec![
        (
            send(&mut cs[0], &t0, 0, vec![0xff; 12]).await,
            Code::InvalidArgument,
            "secagg_malformed",
        ),
        (
            send(&mut cs[0], &t0, 0, adv(1, &sa)).await,
            Code::PermissionDenied,
            "secagg_sender_mismatch",
        ),
        (
            send(&mut cs[0], &t0, 1, adv(0, &sa)).await,
            Code::FailedPrecondition,
            "wrong_stage",
        ),
        (
            send(
                &mut cs[0],
                &v1::Task {
                    round: 2,
                    ..t0.clone()
                },
                0,
                adv(0, &sa),
            )
            .await,
            Code::FailedPrecondition,
            "wrong_round",
        ),
        (
            // A message of another secagg round (e.g. replayed from an earlier attempt).
            send(
                &mut cs[0],
                &t0,
                0,
                ClientMessage::AdvertiseKeys(
                    SecAggClient::new(params, a_id, flotilla_secagg::round_id(1, 9), [1; 32])
                        .advertise(),
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
                ClientMessage::Unmask(UnmaskResponse {
                    round: rid,
                    sender: a_id,
                    seed_shares: vec![],
                    key_shares: vec![],
                })
                .to_bytes(),
            )
            .await,
            Code::InvalidArgument,
            "secagg_wrong_stage",
        ),
        (
            send(
                &mut cs[0],
                &t0,
                0,
                vec![0; params.max_client_message_len() + 1],
            )
            .await,
            Code::InvalidArgument,
            "secagg_too_large",
        ),
        (
            send(
                &mut cs[0],
                &v1::Task {
                    job_id: "999".into(),
                    ..t0.clone()
                },
                0,
                adv(0, &sa),
            )
            .await,
            Code::NotFound,
            "unknown_job",
        ),
    ];
    let after = h.metrics().await;
    for (res, code, counter) in &cases {
        let e = res.as_ref().expect_err(counter);
        assert_eq!(e.code(), *code, "{counter}: {e:?}");
        assert!(
            rejections(&after, counter) > rejections(&before, counter),
            "counter {counter} did not move: {after}"
        );
    }
    // The good message, then its replay.
    send(&mut cs[0], &t0, 0, adv(0, &sa))
        .await
        .expect("advertise accepted");
    let e = send(&mut cs[0], &t0, 0, adv(0, &sa)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // A parameter upload at a secure-aggregation stage is refused by the round machine.
    let r = cs[1]
        .upload(&tasks[1], &initial, 10)
        .await
        .expect("a well-formed upload gets an answer");
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected, "{r:?}");
    assert!(r.message.contains("advertise_keys"), "{r:?}");

    // --- The round goes on unaffected ---
    for i in 1..4 {
        send(&mut cs[i], &tasks[i], 0, adv(i, &sa))
            .await
            .expect("advertise");
    }
    for i in 0..4 {
        let t = task_for_stage(&mut cs[i], 1).await;
        let ServerMessage::Roster(r) =
            ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap()
        else {
            panic!("roster")
        };
        assert_eq!(r.clients.len(), 4);
        let m = sa.get_mut(&i).unwrap().handle_roster(&r).unwrap();
        send(&mut cs[i], &t, 1, ClientMessage::ShareKeys(m).to_bytes())
            .await
            .expect("shares");
    }
    for i in 0..4 {
        let t = task_for_stage(&mut cs[i], 2).await;
        assert_eq!(t.stage, v1::Stage::MaskedInput as i32);
        let ServerMessage::Shares(b) =
            ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap()
        else {
            panic!("shares")
        };
        let c = sa.get_mut(&i).unwrap();
        c.handle_shares(&b).unwrap();
        // The masked input cannot go through the stage rpc.
        let m = c.masked_input(&delta(i)).unwrap();
        if i == 0 {
            let e = send(
                &mut cs[i],
                &t,
                2,
                ClientMessage::MaskedInput(m.clone()).to_bytes(),
            )
            .await
            .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
        let words: Vec<f32> = m.masked.iter().map(|w| f32::from_bits(*w)).collect();
        let mut hd = header(&t, &words, 10 + i as u64);
        hd.stage = v1::Stage::MaskedInput as i32;
        hd.payload_kind = v1::PayloadKind::MaskedU32 as i32;
        // Federated evaluation travels in the clear beside the masked vector.
        hd.metrics.insert("eval_loss".into(), (i + 1) as f64);
        hd.metrics
            .insert("eval_samples".into(), 10.0 * (i + 1) as f64);
        if i == 1 {
            // Wrong length for the layout: refused before any state changes.
            let mut short = hd.clone();
            short.total_bytes -= 4;
            assert!(cs[i].upload_header(short, &words[1..]).await.is_err());
        }
        let r = cs[i]
            .upload_header(hd.clone(), &words)
            .await
            .expect("masked upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{r:?}");
        // Idempotent: the same upload again is a duplicate, not a second input.
        let r = cs[i]
            .upload_header(hd, &words)
            .await
            .expect("masked re-upload");
        assert_eq!(status_of(&r), v1::UploadStatus::Duplicate, "{r:?}");
    }
    // Client d vanishes after its masked input; a, b and c unmask.
    for i in 0..3 {
        let t = task_for_stage(&mut cs[i], 3).await;
        let ServerMessage::UnmaskRequest(r) =
            ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap()
        else {
            panic!("request")
        };
        let m = sa.get_mut(&i).unwrap().handle_unmask(&r).unwrap();
        send(&mut cs[i], &t, 3, ClientMessage::Unmask(m).to_bytes())
            .await
            .expect("unmask");
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
    let participants: Vec<u64> = status["history"][0]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(
        participants,
        cs.iter().map(|c| c.id).collect::<Vec<_>>(),
        "d's masked input still counts"
    );
    assert_eq!(
        status["history"][0]["metrics"]["num_samples"],
        10 + 11 + 12 + 13
    );
    // Every contributor's evaluation counts: (1·10 + 2·20 + 3·30 + 4·40) / 100 = 3.
    let f = &status["history"][0]["metrics"]["federated_eval"];
    assert_eq!(f["loss"], 3.0, "{status}");
    assert_eq!(f["accuracy"], serde_json::Value::Null, "{status}");
    assert_eq!(
        (f["samples"].as_u64(), f["clients"].as_u64()),
        (Some(100), Some(4))
    );

    // The committed model is the unweighted mean of the clipped deltas, within the quantization bound.
    // Read from the blob store: the job completed, so its model is no longer served over gRPC.
    let model = committed_model(&data, &tasks[0].job_id, 1);
    let bound = params.quantization_error_bound(4) / 4.0 + 1e-6;
    for k in 0..LEN {
        let mean: f64 = (0..4)
            .map(|i| f64::from(delta(i)[k]).clamp(-1.0, 1.0))
            .sum::<f64>()
            / 4.0;
        let expected = f64::from(initial[k]) + mean;
        assert!(
            (f64::from(model[k]) - expected).abs() <= bound,
            "coordinate {k}: {} vs {expected}",
            model[k]
        );
    }
}

/// Runs one secure round with all of `cs` taking part; client `i` masks `input(i)` (its already
/// clipped and noised delta). Returns the tasks of the masked-input stage.
/// Also the bytes of the accepted masked uploads' request bodies.
async fn secure_round(
    cs: &mut [Client],
    input: &dyn Fn(usize) -> Vec<f32>,
) -> (Vec<v1::Task>, u64) {
    let tasks = wait_tasks(cs).await;
    let params = params_of(&tasks[0]);
    let rid = flotilla_secagg::round_id(tasks[0].round, tasks[0].attempt);
    let mut sa: Vec<SecAggClient> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| SecAggClient::new(params, SecAggId(c.id), rid, [i as u8 + 40; 32]))
        .collect();
    for (i, c) in cs.iter_mut().enumerate() {
        send(
            c,
            &tasks[i],
            0,
            ClientMessage::AdvertiseKeys(sa[i].advertise()).to_bytes(),
        )
        .await
        .expect("advertise");
    }
    for (i, c) in cs.iter_mut().enumerate() {
        let t = task_for_stage(c, 1).await;
        let ServerMessage::Roster(r) =
            ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap()
        else {
            panic!("roster")
        };
        let m = sa[i].handle_roster(&r).unwrap();
        send(c, &t, 1, ClientMessage::ShareKeys(m).to_bytes())
            .await
            .expect("shares");
    }
    let mut masked_tasks = Vec::new();
    let mut wire = 0;
    for (i, c) in cs.iter_mut().enumerate() {
        let t = task_for_stage(c, 2).await;
        let ServerMessage::Shares(b) =
            ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap()
        else {
            panic!("shares")
        };
        sa[i].handle_shares(&b).unwrap();
        let masked = sa[i].masked_input(&input(i)).unwrap().masked;
        let sixteen = params.ring_bits() == 16;
        if sixteen && i == 0 {
            // The wrong width for this job's ring is refused, naming the kind it wants.
            let e = upload_masked(c, &t, &masked, false).await.0.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().contains("PAYLOAD_KIND_MASKED_U16"),
                "{}",
                e.message()
            );
        }
        let (r, w) = upload_masked(c, &t, &masked, sixteen).await;
        let r = r.expect("masked upload");
        wire += w;
        assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{r:?}");
        masked_tasks.push(t);
    }
    for (i, c) in cs.iter_mut().enumerate() {
        let t = task_for_stage(c, 3).await;
        let ServerMessage::UnmaskRequest(r) =
            ServerMessage::from_bytes(&t.secagg_payload, &params).unwrap()
        else {
            panic!("request")
        };
        let m = sa[i].handle_unmask(&r).unwrap();
        send(c, &t, 3, ClientMessage::Unmask(m).to_bytes())
            .await
            .expect("unmask");
    }
    (masked_tasks, wire)
}

/// Distributed DP over secure aggregation through the coordinator: every secure task carries the
/// clip norm and the client's noise std; the committed model is the sum of the clients' noised
/// inputs over the fixed denominator (no server noise); ε is charged and shown in the job status; and
/// the combinations that cannot work are refused at submission naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_dp_over_secure_aggregation_commits_and_accounts() {
    use rand::SeedableRng;
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let base = job_toml(2, 4).replace("deadline_seconds = 60", "deadline_seconds = 10");
    // σ = 1, C = 0.5, n_min = 2 (0.5 × 4): each share has std 0.5/√2; the range needs ≥ 0.5 + 10 × 0.354.
    let privacy = "[privacy]\nmode = \"distributed\"\nnoise_multiplier = 1.0\nclip_norm = 0.5\ndelta = 1e-5\npopulation = 4\n";
    for (extra, key) in [
        (format!("{privacy}[secagg]\nclip_range = 1.0\n"), "secagg.clip_range"),
        (format!("{}[secagg]\nclip_range = 9.0\n", privacy.replace("\"distributed\"", "\"central\"")), "privacy.mode"),
        (
            "[privacy]\nnoise_multiplier = 1.0\ndelta = 1e-5\npopulation = 4\n[privacy.adaptive]\ncount_noise_std = 1.0\n[secagg]\nclip_range = 9.0\n"
                .to_string(),
            "privacy.adaptive",
        ),
    ] {
        let (code, body) = h.admin("POST", "/v1/jobs", &format!("{base}{extra}")).await;
        assert_eq!(code, 400, "{extra}: {body}");
        let m = body["error"].as_str().unwrap();
        assert!(m.starts_with(key), "{extra}: {m}");
    }
    let job = h
        .submit(&format!("{base}{privacy}[secagg]\nclip_range = 4.5\n"))
        .await;
    let mut cs = vec![
        h.enroll("a").await,
        h.enroll("b").await,
        h.enroll("c").await,
        h.enroll("d").await,
    ];
    let want_std = 0.5 / 2f64.sqrt();
    let mut global: Option<Vec<f32>> = None;
    for round in 1..=2u64 {
        // The test's clients noise with a seeded RNG so the expected model can be recomputed; a real
        // client uses OS entropy (flotilla-client).
        let inputs: Vec<Vec<f32>> = (0..4)
            .map(|i| {
                let mut d: Vec<f32> = (0..LEN)
                    .map(|k| 0.3 * (i as f32 + 1.0) - 0.05 * k as f32)
                    .collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(round * 10 + i as u64);
                flotilla_core::dp::clip_and_add_noise(&mut d, 0.5, want_std, &mut rng);
                d
            })
            .collect();
        let (tasks, _) = secure_round(&mut cs, &|i| inputs[i].clone()).await;
        for t in &tasks {
            let c = t.secagg.as_ref().unwrap();
            assert_eq!(c.dp_clip_norm, 0.5);
            assert!(
                (c.dp_noise_std - want_std).abs() < 1e-15,
                "{}",
                c.dp_noise_std
            );
        }
        let start = match &global {
            Some(g) => g.clone(),
            None => cs[0].download(&tasks[0]).await,
        };
        // Wait for the commit, then fetch the model.
        let mut st = serde_json::Value::Null;
        for _ in 0..200 {
            let (_, s) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
            if s["rounds_completed"].as_u64() == Some(round) {
                st = s;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(st["rounds_completed"].as_u64(), Some(round), "{st}");
        let p = &st["history"][round as usize - 1]["metrics"]["privacy"];
        assert_eq!(
            p["noise_std"].as_f64(),
            Some(0.0),
            "the server adds no noise: {p}"
        );
        // From the blob store: after the last round the job is not running, and not served over gRPC.
        let model = committed_model(&data, &tasks[0].job_id, round);
        let params = params_of(&tasks[0]);
        let bound = params.quantization_error_bound(4) / 4.0 + 1e-6;
        for k in 0..LEN {
            let expected =
                f64::from(start[k]) + inputs.iter().map(|d| f64::from(d[k])).sum::<f64>() / 4.0;
            assert!(
                (f64::from(model[k]) - expected).abs() <= bound,
                "round {round} coordinate {k}: {} vs {expected}",
                model[k]
            );
        }
        global = Some(model);
    }
    let (_, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(st["state"], "completed", "{st}");
    // q = 4 selected / min(population 4, 4 enrolled) = 1.
    let want = flotilla_privacy::epsilon(1.0, 1.0, 2, 1e-5)
        .unwrap()
        .epsilon;
    let spent = st["privacy"]["epsilon_spent"].as_f64().unwrap_or(f64::NAN);
    assert!(spent > 0.0 && (spent - want).abs() < 1e-9 * want, "{st}");
    assert_eq!(st["privacy"]["delta"].as_f64(), Some(1e-5));
    h.stop().await;
}

/// `[compression] kind = "quantize"` under `[secagg]`: 8-bit values for 4 clients sum in a 16-bit
/// ring, so every masked input is 2 bytes per coordinate (half of the 32-bit default), and the
/// committed model is the mean of the clipped deltas within the quantization error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantized_secure_rounds_send_half_the_bytes_and_commit_the_mean() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    let job = h
        .submit(&format!(
            "{}[secagg]\nclip_range = 1.0\n[compression]\nkind = \"quantize\"\nbits = 8\n",
            job_toml(2, 4)
        ))
        .await;
    let mut cs = vec![
        h.enroll("a").await,
        h.enroll("b").await,
        h.enroll("c").await,
        h.enroll("d").await,
    ];
    let received = |m: &serde_json::Value| {
        let text = m.as_str().unwrap_or_default().to_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("flotilla_received_bytes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let before = received(&h.admin("GET", "/metrics", "").await.1);
    let (tasks, wire) = secure_round(&mut cs, &|i| delta(i)).await;
    let after = received(&h.admin("GET", "/metrics", "").await.1);
    // The round's base model (still served: the job has a second round to run).
    let initial = cs[0].download(&tasks[0]).await;
    let c = tasks[0].secagg.unwrap();
    assert_eq!(c.quantization_bits, 8);
    let params = params_of(&tasks[0]);
    assert_eq!(params.ring_bits(), 16);
    // Four accepted masked inputs of 2 bytes per coordinate: the request bodies, byte for byte (the
    // 4-byte attempt was refused from its header; its body may have been read in part, so at most
    // its size more).
    assert!(wire > 4 * 2 * LEN as u64);
    assert!(
        (wire..=wire + 1000).contains(&(after - before)),
        "{} bytes received, {wire} sent accepted",
        after - before
    );
    for _ in 0..200 {
        if h.job_status(job).await.job.rounds_completed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.job_status(job).await.job.rounds_completed, 1);
    let model = committed_model(&data, &job.to_string(), 1);
    let bound = params.quantization_error_bound(4) / 4.0 + 1e-6;
    for k in 0..LEN {
        let mean = (0..4)
            .map(|i| f64::from(delta(i)[k].clamp(-1.0, 1.0)))
            .sum::<f64>()
            / 4.0;
        let expected = f64::from(initial[k]) + mean;
        assert!(
            (f64::from(model[k]) - expected).abs() <= bound,
            "coordinate {k}: {} vs {expected} (bound {bound})",
            model[k]
        );
    }
    h.stop().await;
}
