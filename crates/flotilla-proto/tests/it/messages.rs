//! Every message survives a prost encode/decode round trip; garbage never panics the decoder.

use crate::common;

use flotilla_proto::v1;
use flotilla_proto::{layout_to_proto, model_info};
use proptest::prelude::*;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: M) {
    let bytes = m.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, m);
}

fn task() -> v1::Task {
    let p = common::params(10);
    v1::Task {
        job_id: "digits".into(),
        round: 7,
        attempt: 2,
        stage: v1::Stage::Train as i32,
        model_version: 6,
        model: Some(v1::ModelInfo {
            spec: Some(v1::ModelSpec {
                kind: "mlp".into(),
                input_shape: vec![10],
                num_classes: 3,
                hidden: 4,
                embed: 0,
            }),
            ..model_info(&common::layout(10), &p)
        }),
        training: Some(v1::TrainingConfig {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            seed: u64::MAX,
            ..Default::default()
        }),
        deadline_unix_ms: 1_750_000_000_000,
        stage_index: 0,
        time_remaining_ms: 60_000,
        ..Default::default()
    }
}

#[test]
fn every_message_round_trips() {
    let attrs: std::collections::HashMap<String, String> = [
        ("os".to_string(), "linux".to_string()),
        ("charging".into(), "true".into()),
    ]
    .into_iter()
    .collect();
    round_trip(v1::EnrollRequest {
        enrollment_token: "tok".into(),
        client_name: "phone-1".into(),
        attributes: attrs.clone(),
    });
    round_trip(v1::EnrollResponse {
        client_id: "c-1".into(),
        credential: "secret".into(),
    });
    round_trip(v1::CheckInRequest {
        num_samples: 120,
        job_ids: vec!["a".into(), "b".into()],
        attributes: attrs,
    });
    round_trip(v1::CheckInResponse {
        outcome: Some(v1::check_in_response::Outcome::Task(task())),
    });
    let retry = v1::RetryAfter {
        retry_after_ms: 30_000,
        reason: "no round open".into(),
    };
    round_trip(retry.clone());
    round_trip(v1::CheckInResponse {
        outcome: Some(v1::check_in_response::Outcome::RetryAfter(retry)),
    });
    round_trip(v1::CheckInResponse { outcome: None });
    round_trip(v1::TensorSpec {
        name: "fc1.weight".into(),
        shape: vec![64, 10],
    });
    round_trip(layout_to_proto(&common::layout(5)));
    round_trip(model_info(&common::layout(3), &common::params(3)));
    round_trip(v1::TrainingConfig {
        epochs: 5,
        batch_size: 10,
        learning_rate: 1e-3,
        seed: 9,
        ..Default::default()
    });
    round_trip(task());
    round_trip(v1::DownloadRequest {
        job_id: "digits".into(),
        model_version: 6,
        offset: 1 << 33,
        ..Default::default()
    });
    round_trip(v1::ModelChunk {
        offset: 4096,
        data: vec![1, 2, 3, 255],
    });
    let header = common::header_for(&common::params(4));
    round_trip(header.clone());
    round_trip(v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Header(header)),
    });
    let chunk = v1::UpdateChunk {
        offset: 8,
        data: vec![0; 8],
    };
    round_trip(chunk.clone());
    round_trip(v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Chunk(chunk)),
    });
    round_trip(v1::UploadResponse {
        status: v1::UploadStatus::Incomplete as i32,
        message: "resume".into(),
        resume_offset: 12,
        ..Default::default()
    });
    round_trip(v1::QueryUploadRequest {
        upload_id: "up-1".into(),
    });
}

#[test]
fn unknown_fields_and_enum_values_are_tolerated() {
    // A newer peer may add fields (forward compatibility): field 1000, varint 7.
    let mut bytes = common::header_for(&common::params(2)).encode_to_vec();
    bytes.extend_from_slice(&[0xC0, 0x3E, 7]);
    let h = v1::UpdateHeader::decode(bytes.as_slice()).expect("unknown field skipped");
    assert_eq!(h, common::header_for(&common::params(2)));

    // ... or enum values: kept as the raw number, refused by the typed accessor.
    let t = v1::Task {
        stage: 99,
        ..task()
    };
    let back = v1::Task::decode(t.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.stage, 99);
    assert!(v1::Stage::try_from(back.stage).is_err());
    assert_eq!(v1::Stage::try_from(4), Ok(v1::Stage::MaskedInput));
}

#[test]
fn debug_redacts_secrets() {
    let req = v1::EnrollRequest {
        enrollment_token: "tok-SECRET".into(),
        client_name: "n".into(),
        ..Default::default()
    };
    let resp = v1::EnrollResponse {
        client_id: "c-1".into(),
        credential: "cred-SECRET".into(),
    };
    let s = format!("{req:?} {resp:?}");
    assert!(!s.contains("SECRET"), "{s}");
    assert!(s.contains("c-1") && s.contains("<redacted>"));
}

/// Decodes `bytes` as every message type; only the absence of panics matters.
fn decode_all(bytes: &[u8]) {
    let _ = v1::EnrollRequest::decode(bytes);
    let _ = v1::EnrollResponse::decode(bytes);
    let _ = v1::CheckInRequest::decode(bytes);
    let _ = v1::CheckInResponse::decode(bytes);
    let _ = v1::RetryAfter::decode(bytes);
    let _ = v1::TensorSpec::decode(bytes);
    let _ = v1::ParamLayout::decode(bytes);
    let _ = v1::ModelInfo::decode(bytes);
    let _ = v1::TrainingConfig::decode(bytes);
    let _ = v1::Task::decode(bytes);
    let _ = v1::DownloadRequest::decode(bytes);
    let _ = v1::ModelChunk::decode(bytes);
    let _ = v1::UploadMessage::decode(bytes);
    let _ = v1::UpdateHeader::decode(bytes);
    let _ = v1::UpdateChunk::decode(bytes);
    let _ = v1::UploadResponse::decode(bytes);
    let _ = v1::QueryUploadRequest::decode(bytes);
}

#[test]
fn known_garbage_is_an_error() {
    // Truncated length-delimited field, invalid wire type 7, truncated varint.
    for bytes in [&[0x0A, 0x05, b'a'][..], &[0x0F][..], &[0x08, 0xFF][..]] {
        assert!(v1::UpdateHeader::decode(bytes).is_err(), "{bytes:?}");
        assert!(v1::UploadMessage::decode(bytes).is_err(), "{bytes:?}");
    }
    // Invalid UTF-8 in a string field.
    assert!(v1::QueryUploadRequest::decode(&[0x0A, 0x02, 0xC3, 0x28][..]).is_err());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = v1::CheckInResponse { outcome: Some(v1::check_in_response::Outcome::Task(task())) }
            .encode_to_vec();
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        decode_all(&bytes);
        let mut h = common::header_for(&common::params(3)).encode_to_vec();
        h.truncate(h.len() / 2);
        decode_all(&h);
    }
}
