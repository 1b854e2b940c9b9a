//! Hostile and broken input: each gets a clear status, a counter moves, the server stays up and
//! the job's state is unchanged.

use crate::common;

use std::time::Duration;

use common::*;
use flotilla_proto::{AuthError, payload_sha256, v1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const LEN: usize = 10;

fn rejections(m: &serde_json::Value, k: &str) -> u64 {
    m["rejections"][k].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_server_stays_up() {
    let (_dir, data, certs) = tmp();
    // A client enrolled by an earlier run of the coordinator configured with a 1 ms credential
    // lifetime: its expiry is stored with it, so by the time the coordinator below is up it has
    // expired.
    let short = start_with(&data, &certs, |c| {
        c.credential_ttl = Duration::from_millis(1)
    })
    .await;
    let mut expired = short.enroll("expired").await;
    short.stop().await;
    let h = start(&data, &certs, None).await;
    expired.grpc = h.grpc().await;
    let job = h.submit(&job_toml(1, 2)).await;
    let mut ab = vec![h.enroll("a").await, h.enroll("b").await];
    let t = wait_tasks(&mut ab).await;
    let (ta, tb) = (t[0].clone(), t[1].clone());
    let mut b = ab.pop().unwrap();
    let mut a = ab.pop().unwrap();

    // No credential.
    let mut g = h.grpc().await;
    let e = g.check_in(v1::CheckInRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(AuthError::of(&e), Some(AuthError::Missing));
    // Wrong credential.
    let e = g
        .check_in(authed(v1::CheckInRequest::default(), "flt_client_nope"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(AuthError::of(&e), Some(AuthError::Unknown));
    let m = h.metrics().await;
    assert_eq!(m["auth_failures"], 2, "{m}");
    assert_eq!(rejections(&m, "unauthenticated"), 2);

    // Revoked credential.
    let mut c = h.enroll("c").await;
    let (code, _) = h
        .admin("POST", &format!("/v1/clients/{}/revoke", c.id), "")
        .await;
    assert_eq!(code, 200);
    let e = c.check_in(10).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("revoked"), "{}", e.message());
    assert_eq!(rejections(&h.metrics().await, "revoked"), 1);
    assert_eq!(AuthError::of(&e), Some(AuthError::Revoked));

    // Expired credential: UNAUTHENTICATED, machine-readable reason, nothing changed.
    let clients_before = h.admin("GET", "/v1/clients", "").await.1;
    let m0 = h.metrics().await;
    let e = expired.check_in(10).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(e.message(), "credential expired; enroll again");
    assert_eq!(AuthError::of(&e), Some(AuthError::Expired));
    let m1 = h.metrics().await;
    assert_eq!(rejections(&m1, "credential_expired"), 1, "{m1}");
    assert_eq!(
        m1["auth_failures"].as_u64(),
        m0["auth_failures"].as_u64().map(|n| n + 1),
        "{m1}"
    );
    assert_eq!(
        m1["checkins"], m0["checkins"],
        "a refused call is not a check-in"
    );
    // Every authenticated RPC refuses it the same way.
    let e = expired
        .upload(&ta, &update(9, 1, LEN), 10)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), AuthError::of(&e)),
        (Code::Unauthenticated, Some(AuthError::Expired))
    );
    let req = authed(
        v1::QueryUploadRequest {
            upload_id: "x".into(),
        },
        &expired.credential,
    );
    let e = expired.grpc.query_upload(req).await.unwrap_err();
    assert_eq!(
        (e.code(), AuthError::of(&e)),
        (Code::Unauthenticated, Some(AuthError::Expired))
    );
    assert_eq!(rejections(&h.metrics().await, "credential_expired"), 3);
    assert_eq!(
        h.admin("GET", "/v1/clients", "").await.1,
        clients_before,
        "state unchanged"
    );
    let listed = clients_before
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == expired.id)
        .cloned()
        .unwrap();
    assert!(
        listed["credential_expires_at_ms"].as_i64().is_some(),
        "{listed}"
    );
    // Enrolling again gives a new identity with a working credential (default lifetime).
    let mut renewed = h.enroll("renewed").await;
    assert_ne!(renewed.id, expired.id);
    assert!(renewed.check_in(1).await.is_ok());

    // A client of another tenant: offered no task, and the job's model and uploads are closed to it.
    let mut other = h.enroll_in("other", "other").await;
    match other.check_in(10).await.unwrap() {
        v1::check_in_response::Outcome::RetryAfter(r) => {
            assert_eq!(r.reason, "no running job matches")
        }
        t => panic!("a job of another tenant was offered: {t:?}"),
    }
    let req = authed(
        v1::DownloadRequest {
            job_id: ta.job_id.clone(),
            model_version: 0,
            offset: 0,
            ..Default::default()
        },
        &other.credential,
    );
    let e = other.grpc.download_model(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = other.upload(&ta, &update(8, 1, LEN), 10).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(rejections(&h.metrics().await, "tenant_mismatch"), 2);

    // Bad enrollment token: PERMISSION_DENIED (see coordinator.proto for why not UNAUTHENTICATED).
    let e = g
        .enroll(v1::EnrollRequest {
            enrollment_token: "flt_enroll_bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(AuthError::of(&e), None);

    // Admin API without the token.
    let (code, body) = h.admin_with("GET", "/v1/jobs", "", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = h.admin_with("GET", "/v1/jobs", "", Some("wrong")).await;
    assert_eq!(code, 401, "{body}");
    // Invalid job spec: 400 naming the field.
    let (code, body) = h
        .admin(
            "POST",
            "/v1/jobs",
            &job_toml(1, 2).replace("clients_per_round = 2", "clients_per_round = 0"),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("clients_per_round:"),
        "{body}"
    );

    let ua = update(0, 1, LEN);
    // Upload for an unknown job.
    let mut hd = header(&ta, &ua, 10);
    hd.job_id = "999".into();
    let e = a.upload_header(hd, &ua).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(rejections(&h.metrics().await, "unknown_job"), 1);

    // Wrong round.
    let mut hd = header(&ta, &ua, 10);
    hd.round = 7;
    let r = a.upload_header(hd, &ua).await.unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected);
    assert!(r.message.contains("round 7"), "{}", r.message);
    assert_eq!(rejections(&h.metrics().await, "wrong_round"), 1);

    // Wrong layout fingerprint.
    let mut hd = header(&ta, &ua, 10);
    hd.layout_fingerprint = vec![0; 32];
    let e = a.upload_header(hd, &ua).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(rejections(&h.metrics().await, "layout_mismatch"), 1);

    // Oversized total_bytes.
    let mut hd = header(&ta, &ua, 10);
    hd.total_bytes = 1 << 40;
    let e = a.upload_header(hd, &ua).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(rejections(&h.metrics().await, "too_large"), 1);

    // NaN in the payload (with a matching SHA-256).
    let mut bad = update(1, 1, LEN);
    bad[3] = f32::NAN;
    let mut hd = header(&tb, &bad, 10);
    hd.sha256 = payload_sha256(&bad).to_vec();
    let e = b.upload_header(hd, &bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(rejections(&h.metrics().await, "non_finite"), 1);

    // SHA-256 mismatch.
    let mut hd = header(&tb, &bad, 10);
    hd.sha256 = vec![1; 32];
    let e = b
        .upload_header(hd.clone(), &update(1, 1, LEN))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");

    // A valid upload, then the same again: DUPLICATE.
    let r = a.upload(&ta, &ua, 10).await.unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    let r = a.upload(&ta, &ua, 10).await.unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Duplicate, "{}", r.message);
    // ... and a different payload for the same key: REJECTED.
    let r = a.upload(&ta, &update(5, 1, LEN), 10).await.unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Rejected, "{}", r.message);
    let m = h.metrics().await;
    assert_eq!(m["uploads_duplicate"], 1, "{m}");
    assert_eq!(m["uploads_accepted"], 1, "{m}");

    // Garbage bytes to the gRPC port.
    let before = h.metrics().await["tls_handshake_failures"]
        .as_u64()
        .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(h.grpc_addr).await.unwrap();
    tcp.write_all(b"\x00\x01garbage GET / HTTP/1.1\r\n\r\n\xff\xfe")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    drop(tcp);
    let mut ok = false;
    for _ in 0..100 {
        if h.metrics().await["tls_handshake_failures"]
            .as_u64()
            .unwrap()
            > before
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "handshake failure counted");

    // The job state is unchanged by all of the above and the server still serves: the second
    // client's valid update completes the round.
    let (_, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(st["rounds_completed"], 0, "{st}");
    let mut b = Client {
        grpc: h.grpc().await,
        ..b
    };
    let r = b.upload(&tb, &update(1, 1, LEN), samples(1)).await.unwrap();
    assert_eq!(status_of(&r), v1::UploadStatus::Accepted, "{}", r.message);
    let (_, st) = h.admin("GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(st["state"], "completed", "{st}");
    let hist = st["history"].as_array().unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0]["participants"].as_array().unwrap().len(), 2);
    h.stop().await;
}
