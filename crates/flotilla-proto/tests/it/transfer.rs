//! Upload reassembly, model download and header validation.

use crate::common;

use common::{bits, expected, header_for, layout, params};
use flotilla_proto::v1;
use flotilla_proto::{
    HeaderError, ModelInfoError, ModelReceiver, PushOutcome, TransferError, UploadAssembler,
    UploadLimits, chunk_f32, chunk_f32_from, model_chunks, model_info, payload_sha256,
    upload_messages, validate_header,
};
use proptest::prelude::*;
use tonic::Code;

fn assembler(p: &[f32]) -> UploadAssembler {
    UploadAssembler::new(header_for(p), &expected(p.len()), &UploadLimits::default())
        .expect("valid header")
}

fn chunk(offset: u64, data: Vec<u8>) -> v1::UpdateChunk {
    v1::UpdateChunk { offset, data }
}

fn le_bytes(p: &[f32]) -> Vec<u8> {
    p.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Pushes every chunk of `p` (chunk size `size`) and returns the final values via drain + finish.
fn upload_all(a: &mut UploadAssembler, p: &[f32], size: usize) {
    for (off, data) in chunk_f32_from(p, size, a.received()) {
        assert_eq!(
            a.push(&chunk(off, data)),
            Ok(PushOutcome::Appended {
                bytes: size.min((4 * p.len()) - off as usize)
            })
        );
    }
}

#[test]
fn happy_path_with_incremental_drain() {
    let p = params(1000);
    let mut a = assembler(&p);
    let mut got = Vec::new();
    for (off, data) in chunk_f32(&p, 333) {
        a.push(&chunk(off, data)).unwrap();
        a.drain_f32(&mut |vs| got.extend_from_slice(vs)).unwrap();
        // Only whole values are handed out; the odd bytes wait for the next chunk.
        assert_eq!(got.len() as u64, a.received() / 4);
        assert_eq!(a.drained(), got.len() as u64);
    }
    assert!(a.is_complete());
    assert_eq!(a.received(), 4000);
    let rest = a.finish().unwrap();
    assert!(rest.is_empty());
    assert_eq!(bits(&got), bits(&p));
}

#[test]
fn finish_without_drain_returns_everything() {
    let p = params(17);
    let mut a = assembler(&p);
    upload_all(&mut a, &p, 5);
    assert_eq!(bits(&a.finish().unwrap()), bits(&p));
}

#[test]
fn resume_after_broken_connection() {
    let p = params(300);
    let mut a = assembler(&p);
    // First connection: chunks of 7 bytes, breaks after 50 chunks (mid-value: 350 is not a multiple of 4).
    for (off, data) in chunk_f32(&p, 7).take(50) {
        a.push(&chunk(off, data)).unwrap();
    }
    let mut got = Vec::new();
    a.drain_f32(&mut |vs| got.extend_from_slice(vs)).unwrap();
    assert_eq!(a.received(), 350);
    assert!(!a.is_complete());

    // Second connection: the client re-sends the header (identical) and resumes at the server's
    // offset with a different chunk size, via the message helper.
    let mut msgs = upload_messages(header_for(&p), &p, 64, a.received());
    let Some(v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Header(h)),
    }) = msgs.next()
    else {
        panic!("header first");
    };
    assert_eq!(&h, a.header());
    for m in msgs {
        let Some(v1::upload_message::Kind::Chunk(c)) = m.kind else {
            panic!("chunks after the header")
        };
        assert!(matches!(a.push(&c), Ok(PushOutcome::Appended { .. })));
    }
    got.extend(a.finish().unwrap());
    assert_eq!(bits(&got), bits(&p));
}

#[test]
fn gap_is_refused_and_changes_nothing() {
    let p = params(10);
    let mut a = assembler(&p);
    a.push(&chunk(0, le_bytes(&p[..2]))).unwrap();
    let e = a.push(&chunk(12, le_bytes(&p[3..5]))).unwrap_err();
    assert_eq!(
        e,
        TransferError::UnexpectedOffset {
            expected: 8,
            got: 12
        }
    );
    assert_eq!(e.grpc_code(), Code::Aborted);
    assert_eq!(a.received(), 8);
    upload_all(&mut a, &p, 8);
    assert_eq!(bits(&a.finish().unwrap()), bits(&p));
}

#[test]
fn overlaps() {
    let p = params(10);
    let bytes = le_bytes(&p);
    let mut a = assembler(&p);
    a.push(&chunk(0, bytes[..8].to_vec())).unwrap();
    a.push(&chunk(8, bytes[8..16].to_vec())).unwrap();

    // Exact re-send of the most recent chunk: ignored.
    assert_eq!(
        a.push(&chunk(8, bytes[8..16].to_vec())),
        Ok(PushOutcome::Duplicate)
    );
    assert_eq!(a.received(), 16);

    // Same offset and length, different bytes.
    let mut bad = bytes[8..16].to_vec();
    bad[3] ^= 1;
    let e = a.push(&chunk(8, bad)).unwrap_err();
    assert_eq!(e, TransferError::ConflictingChunk { offset: 8 });
    assert_eq!(e.grpc_code(), Code::InvalidArgument);

    // Partial overlap, or an older chunk: resume from the expected offset.
    assert_eq!(
        a.push(&chunk(12, bytes[12..20].to_vec())),
        Err(TransferError::UnexpectedOffset {
            expected: 16,
            got: 12
        })
    );
    assert_eq!(
        a.push(&chunk(0, bytes[..8].to_vec())),
        Err(TransferError::UnexpectedOffset {
            expected: 16,
            got: 0
        })
    );
    assert_eq!(a.received(), 16);
    upload_all(&mut a, &p, 24);
    // The final chunk can be re-sent after completion too.
    assert_eq!(
        a.push(&chunk(16, bytes[16..].to_vec())),
        Ok(PushOutcome::Duplicate)
    );
    assert_eq!(bits(&a.finish().unwrap()), bits(&p));
}

#[test]
fn size_limits() {
    let p = params(10);
    // Declared size above the limit.
    let small = UploadLimits {
        max_total_bytes: 39,
        ..UploadLimits::default()
    };
    let e = UploadAssembler::new(header_for(&p), &expected(10), &small).unwrap_err();
    assert_eq!(
        e,
        TransferError::InvalidHeader(HeaderError::TooLarge { got: 40, max: 39 })
    );
    assert_eq!(e.grpc_code(), Code::ResourceExhausted);

    // A chunk larger than the chunk limit.
    let limits = UploadLimits {
        max_chunk_bytes: 16,
        ..UploadLimits::default()
    };
    let mut a = UploadAssembler::new(header_for(&p), &expected(10), &limits).unwrap();
    let e = a.push(&chunk(0, vec![0; 17])).unwrap_err();
    assert_eq!(e, TransferError::ChunkTooLarge { len: 17, max: 16 });
    assert_eq!(e.grpc_code(), Code::ResourceExhausted);

    // Bytes past the declared end.
    let mut a = assembler(&p);
    a.push(&chunk(0, le_bytes(&p[..8]))).unwrap();
    let e = a.push(&chunk(32, vec![0; 12])).unwrap_err();
    assert_eq!(
        e,
        TransferError::PastEnd {
            offset: 32,
            len: 12,
            total: 40
        }
    );
    assert_eq!(e.grpc_code(), Code::OutOfRange);
    // An offset near u64::MAX does not overflow.
    let e = a.push(&chunk(u64::MAX, vec![0; 4])).unwrap_err();
    assert_eq!(
        e,
        TransferError::UnexpectedOffset {
            expected: 32,
            got: u64::MAX
        }
    );

    // Empty chunks are refused.
    assert_eq!(
        a.push(&chunk(32, vec![])),
        Err(TransferError::EmptyChunk { offset: 32 })
    );
    assert_eq!(a.received(), 32);
}

#[test]
fn wrong_sha_is_data_loss() {
    let p = params(64);
    let mut h = header_for(&p);
    h.sha256 = payload_sha256(&params(63)).to_vec();
    let mut a = UploadAssembler::new(h, &expected(64), &UploadLimits::default()).unwrap();
    upload_all(&mut a, &p, 100);
    let e = a.finish().unwrap_err();
    assert_eq!(e, TransferError::ShaMismatch);
    assert_eq!(e.grpc_code(), Code::DataLoss);
    let s = tonic::Status::from(e);
    assert_eq!(s.code(), Code::DataLoss);
}

#[test]
fn early_finish_is_incomplete() {
    let p = params(8);
    let mut a = assembler(&p);
    a.push(&chunk(0, le_bytes(&p[..3]))).unwrap();
    let e = a.finish().unwrap_err();
    assert_eq!(
        e,
        TransferError::Incomplete {
            received: 12,
            total: 32
        }
    );
    assert_eq!(e.grpc_code(), Code::FailedPrecondition);
}

#[test]
fn non_finite_values_are_refused() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut p = params(50);
        p[37] = bad;
        // The header's SHA-256 is honest, so only the finiteness check can catch it.
        let mut a = assembler(&p);
        upload_all(&mut a, &p, 9);
        let mut seen = 0;
        let e = a.drain_f32(&mut |vs| seen += vs.len()).unwrap_err();
        assert_eq!(e, TransferError::NonFinite { index: 37 });
        assert_eq!(e.grpc_code(), Code::InvalidArgument);
        assert!(seen < 38, "the bad value was handed out");
        assert_eq!(
            a.finish().unwrap_err(),
            TransferError::NonFinite { index: 37 }
        );

        // Without draining, finish catches it.
        let mut a = assembler(&p);
        upload_all(&mut a, &p, 4);
        assert_eq!(
            a.finish().unwrap_err(),
            TransferError::NonFinite { index: 37 }
        );
    }
}

#[test]
fn header_validation() {
    let p = params(10);
    let exp = expected(10);
    let lim = UploadLimits {
        max_samples: 1000,
        ..UploadLimits::default()
    };
    let check = |f: &dyn Fn(&mut v1::UpdateHeader)| {
        let mut h = header_for(&p);
        f(&mut h);
        validate_header(&h, &exp, &lim)
    };
    assert_eq!(check(&|_| {}), Ok(()));
    assert_eq!(check(&|h| h.job_id.clear()), Err(HeaderError::EmptyJobId));
    assert_eq!(
        check(&|h| h.job_id = "j".repeat(257)),
        Err(HeaderError::JobIdTooLong { max: 256 })
    );
    for id in ["", "has space", "slash/es", "ünï", &"u".repeat(129)] {
        assert_eq!(
            check(&|h| h.upload_id = id.into()),
            Err(HeaderError::BadUploadId { max: 128 }),
            "{id:?}"
        );
    }
    assert_eq!(check(&|h| h.upload_id = "u".repeat(128)), Ok(()));
    assert_eq!(
        check(&|h| h.stage = 0),
        Err(HeaderError::UnsupportedStage(0))
    );
    assert_eq!(
        check(&|h| h.stage = v1::Stage::MaskedInput as i32),
        Err(HeaderError::UnsupportedStage(4))
    );
    assert_eq!(
        check(&|h| h.stage = -3),
        Err(HeaderError::UnsupportedStage(-3))
    );
    assert_eq!(check(&|h| h.num_samples = 0), Err(HeaderError::ZeroSamples));
    assert_eq!(
        check(&|h| h.num_samples = 1001),
        Err(HeaderError::TooManySamples {
            got: 1001,
            max: 1000
        })
    );
    assert_eq!(
        check(&|h| h.total_bytes = 42),
        Err(HeaderError::NotF32Aligned(42))
    );
    assert_eq!(
        check(&|h| h.total_bytes = 44),
        Err(HeaderError::SizeMismatch {
            got: 44,
            expected: 40
        })
    );
    assert_eq!(
        check(&|h| h.total_bytes = 0),
        Err(HeaderError::SizeMismatch {
            got: 0,
            expected: 40
        })
    );
    assert_eq!(
        check(&|h| h.layout_fingerprint.clear()),
        Err(HeaderError::BadFingerprintLength(0))
    );
    assert_eq!(
        check(&|h| h.layout_fingerprint = layout(11).fingerprint().to_vec()),
        Err(HeaderError::LayoutMismatch)
    );
    assert_eq!(
        check(&|h| h.sha256 = vec![0; 33]),
        Err(HeaderError::BadShaLength(33))
    );
    assert_eq!(
        check(&|h| h.metrics = (0..65).map(|i| (format!("m{i}"), 1.0)).collect()),
        Err(HeaderError::TooManyMetrics { got: 65, max: 64 })
    );
    assert_eq!(
        check(&|h| {
            h.metrics.insert(String::new(), 1.0);
        }),
        Err(HeaderError::BadMetricName(String::new()))
    );
    for bad in [f64::NAN, f64::INFINITY] {
        assert_eq!(
            check(&|h| {
                h.metrics.insert("loss".into(), bad);
            }),
            Err(HeaderError::NonFiniteMetric("loss".into()))
        );
    }
    let e = TransferError::from(check(&|h| h.total_bytes = 42).unwrap_err());
    assert_eq!(e.grpc_code(), Code::InvalidArgument);
    // The assembler refuses what validate_header refuses.
    let mut h = header_for(&p);
    h.total_bytes = 42;
    assert!(UploadAssembler::new(h, &exp, &lim).is_err());
}

#[test]
fn model_download_happy_path_and_resume() {
    let l = layout(257);
    let p = params(257);
    let info = model_info(&l, &p);
    let mut r = ModelReceiver::new(&info, 1 << 20).unwrap();
    assert_eq!(r.layout(), &l);
    assert_eq!(r.total_bytes(), 1028);
    // Connection breaks after 3 chunks of 100 bytes.
    for c in model_chunks(&p, 100, 0).take(3) {
        r.push(&c).unwrap();
    }
    assert_eq!(r.received(), 300);
    // Re-sent last chunk is ignored; a gap is refused.
    let again = model_chunks(&p, 100, 200).next().unwrap();
    assert_eq!(r.push(&again), Ok(PushOutcome::Duplicate));
    let gap = v1::ModelChunk {
        offset: 304,
        data: vec![0; 4],
    };
    assert_eq!(
        r.push(&gap),
        Err(TransferError::UnexpectedOffset {
            expected: 300,
            got: 304
        })
    );
    // Resume: the server streams from the receiver's offset.
    for c in model_chunks(&p, 333, r.received()) {
        r.push(&c).unwrap();
    }
    assert!(r.is_complete());
    assert_eq!(bits(&r.finish().unwrap()), bits(&p));
}

#[test]
fn model_download_failures() {
    let l = layout(8);
    let p = params(8);
    let info = model_info(&l, &p);

    // Corrupted payload (honest size): SHA-256 mismatch.
    let mut r = ModelReceiver::new(&info, 1 << 20).unwrap();
    let mut bytes = le_bytes(&p);
    bytes[5] ^= 0x10;
    r.push(&v1::ModelChunk {
        offset: 0,
        data: bytes,
    })
    .unwrap();
    assert_eq!(r.finish().unwrap_err(), TransferError::ShaMismatch);

    // Non-finite value in a model whose SHA-256 matches.
    let mut q = p.clone();
    q[6] = f32::NAN;
    let mut r = ModelReceiver::new(&model_info(&l, &q), 1 << 20).unwrap();
    let e = r
        .push(&v1::ModelChunk {
            offset: 0,
            data: le_bytes(&q),
        })
        .unwrap_err();
    assert_eq!(e, TransferError::NonFinite { index: 6 });
    assert_eq!(
        r.finish().unwrap_err(),
        TransferError::NonFinite { index: 6 }
    );

    // Truncated stream.
    let mut r = ModelReceiver::new(&info, 1 << 20).unwrap();
    r.push(&v1::ModelChunk {
        offset: 0,
        data: le_bytes(&p[..7]),
    })
    .unwrap();
    assert!(!r.is_complete());
    assert_eq!(
        r.finish().unwrap_err(),
        TransferError::Incomplete {
            received: 28,
            total: 32
        }
    );

    // Bad descriptions.
    let e = ModelReceiver::new(&info, 16).unwrap_err();
    assert_eq!(
        e,
        TransferError::InvalidModelInfo(ModelInfoError::TooLarge { got: 32, max: 16 })
    );
    let mut lying = info.clone();
    lying.size_bytes = 36;
    assert_eq!(
        ModelReceiver::new(&lying, 1 << 20).unwrap_err(),
        TransferError::InvalidModelInfo(ModelInfoError::SizeMismatch {
            got: 36,
            expected: 32
        })
    );
}

#[test]
fn chunking_edge_cases() {
    assert_eq!(chunk_f32(&[], 16).count(), 0);
    assert_eq!(chunk_f32(&[1.0], 0).count(), 4, "0 is treated as 1");
    assert_eq!(chunk_f32_from(&[1.0, 2.0], 3, 8).count(), 0);
    assert_eq!(chunk_f32_from(&[1.0, 2.0], 3, u64::MAX).count(), 0);
    let v: Vec<_> = chunk_f32(&[1.0, 2.0], 3)
        .map(|(o, d)| (o, d.len()))
        .collect();
    assert_eq!(v, vec![(0, 3), (3, 3), (6, 2)]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128), ..ProptestConfig::default() })]

    /// Any chunking of any finite vector, with drains at arbitrary points, reassembles to the same
    /// bits, and the SHA-256 the assembler verified is the payload's.
    #[test]
    fn any_chunking_reassembles(
        p in proptest::collection::vec(-1e30f32..1e30f32, 0..400),
        sizes in proptest::collection::vec(1usize..40, 1..200),
        drain_every in 1usize..5,
    ) {
        let mut a = assembler(&p);
        let total = 4 * p.len() as u64;
        let mut got = Vec::new();
        let mut i = 0;
        while a.received() < total {
            let size = sizes[i % sizes.len()];
            let (off, data) = chunk_f32_from(&p, size, a.received()).next().unwrap();
            prop_assert_eq!(a.push(&chunk(off, data)).unwrap(), PushOutcome::Appended { bytes: size.min((total - off) as usize) });
            if i % drain_every == 0 {
                a.drain_f32(&mut |vs| got.extend_from_slice(vs)).unwrap();
            }
            i += 1;
        }
        got.extend(a.finish().unwrap());
        prop_assert_eq!(bits(&got), bits(&p));
    }

    /// Resuming from any byte gives exactly the suffix of the encoding.
    #[test]
    fn chunking_from_any_offset(
        p in proptest::collection::vec(any::<f32>(), 0..64),
        size in 1usize..20,
        from in 0u64..300,
    ) {
        let all = le_bytes(&p);
        let mut joined = Vec::new();
        let mut expect_off = from;
        for (off, data) in chunk_f32_from(&p, size, from) {
            prop_assert_eq!(off, expect_off);
            prop_assert!(!data.is_empty() && data.len() <= size);
            expect_off += data.len() as u64;
            joined.extend(data);
        }
        let start = (from as usize).min(all.len());
        prop_assert_eq!(joined, all[start..].to_vec());
    }

    /// Arbitrary chunk messages never panic the assembler and never move it except forwards.
    #[test]
    fn arbitrary_chunks_never_panic(
        pushes in proptest::collection::vec((0u64..80, proptest::collection::vec(any::<u8>(), 0..24)), 0..40),
    ) {
        let p = params(16);
        let mut a = assembler(&p);
        for (off, data) in pushes {
            let before = a.received();
            let _ = a.push(&chunk(off, data));
            prop_assert!(a.received() >= before && a.received() <= 64);
            let _ = a.drain_f32(&mut |_| {});
        }
        let _ = a.finish();
    }
}

/// `push_into`: the receiving fast path decodes values split across chunks, recognises re-sends
/// and conflicts like `push`, and stops at a non-finite value with the values before it.
#[test]
fn push_into_decodes_straight_into_the_buffer() {
    let p = params(50);
    let bytes = le_bytes(&p);
    let mut a = assembler(&p);
    let mut out = Vec::new();
    // 7-byte chunks: most values straddle two chunks.
    let mut off = 0;
    while off < bytes.len() {
        let end = (off + 7).min(bytes.len());
        let c = chunk(off as u64, bytes[off..end].to_vec());
        assert_eq!(
            a.push_into(&c, &mut out),
            Ok(PushOutcome::Appended { bytes: end - off })
        );
        assert_eq!(out.len() as u64, a.received() / 4);
        // Exact re-send of the most recent chunk: ignored; different bytes: a conflict.
        assert_eq!(a.push_into(&c, &mut out), Ok(PushOutcome::Duplicate));
        let mut bad = c.clone();
        bad.data[0] ^= 1;
        assert_eq!(
            a.push_into(&bad, &mut out),
            Err(TransferError::ConflictingChunk { offset: off as u64 })
        );
        assert_eq!(
            out.len() as u64,
            a.received() / 4,
            "a refused chunk adds nothing"
        );
        off = end;
    }
    assert!(
        a.push_into(&chunk(0, bytes[..4].to_vec()), &mut out)
            .is_err()
    );
    assert!(a.finish().unwrap().is_empty());
    assert_eq!(bits(&out), bits(&p));

    // Mixed with `push` (buffered bytes are decoded first).
    let mut a = assembler(&p);
    let mut out = Vec::new();
    a.push(&chunk(0, bytes[..10].to_vec())).unwrap();
    a.push_into(&chunk(10, bytes[10..].to_vec()), &mut out)
        .unwrap();
    assert_eq!(bits(&out), bits(&p));
    assert!(a.finish().unwrap().is_empty());

    // A NaN inside a chunk and one split across chunks.
    for (at, size) in [(17usize, 40usize), (3, 6)] {
        let mut q = p.clone();
        q[at] = f32::NAN;
        let qb = le_bytes(&q);
        let mut a = assembler(&q);
        let mut out = Vec::new();
        let mut off = 0;
        let err = loop {
            let end = (off + size).min(qb.len());
            if let Err(e) = a.push_into(&chunk(off as u64, qb[off..end].to_vec()), &mut out) {
                break e;
            }
            off = end;
        };
        assert_eq!(err, TransferError::NonFinite { index: at as u64 });
        assert_eq!(bits(&out), bits(&q[..at]));
    }
}
