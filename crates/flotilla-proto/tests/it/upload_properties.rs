//! Properties of the upload state machine and header validation under arbitrary input: any
//! sequence of chunks (offsets anywhere, any sizes, duplicates, overlaps, out of order, tampered
//! bytes), mixing `push`, `push_into` and drains, never panics, never moves the assembler backwards
//! or past the declared size, and never yields a payload whose SHA-256 differs from the header's.
//! Arbitrary headers never panic `validate_header`, and an accepted one satisfies every documented
//! rule.
//!
//! The number of cases follows `PROPTEST_CASES` (proptest's default config reads it; 256 when
//! unset), so a soak run can raise it: `PROPTEST_CASES=100000 cargo test -p flotilla-proto --test
//! upload_properties`.

use crate::common;

use common::{bits, expected, header_for, params};
use flotilla_proto::v1;
use flotilla_proto::{MAX_UPLOAD_ID_LEN, UploadAssembler, UploadLimits, validate_header};
use proptest::prelude::*;
use prost::Message;

fn le_bytes(p: &[f32]) -> Vec<u8> {
    p.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One step a client (honest, confused or hostile) can take.
#[derive(Debug, Clone)]
enum Step {
    /// The next chunk the assembler expects, of this size.
    Next { size: usize, via_push_into: bool },
    /// The most recent chunk again (an exact re-send).
    Repeat,
    /// A chunk at an arbitrary offset and of arbitrary bytes.
    Anywhere { offset: u64, data: Vec<u8> },
    /// A chunk from the true payload at an arbitrary offset (a gap or an overlap).
    Shifted { offset: u64, size: usize },
    /// Flip a bit of the next chunk before sending it.
    Tampered { size: usize, bit: usize },
    /// Hand out the complete values received so far.
    Drain,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..48, any::<bool>()).prop_map(|(size, via_push_into)| Step::Next { size, via_push_into }),
        1 => Just(Step::Repeat),
        1 => (0u64..300, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(offset, data)| Step::Anywhere { offset, data }),
        1 => (0u64..300, 1usize..48).prop_map(|(offset, size)| Step::Shifted { offset, size }),
        1 => (1usize..48, any::<usize>()).prop_map(|(size, bit)| Step::Tampered { size, bit }),
        1 => Just(Step::Drain),
    ]
}

proptest! {
    /// The upload state machine, driven by any sequence of steps.
    #[test]
    fn any_chunk_sequence_never_panics_and_never_accepts_a_wrong_payload(
        n in 1usize..60,
        steps in proptest::collection::vec(step(), 0..120),
    ) {
        let p = params(n);
        let bytes = le_bytes(&p);
        let total = bytes.len() as u64;
        let mut a = UploadAssembler::new(header_for(&p), &expected(n), &UploadLimits::default()).unwrap();
        let mut out: Vec<f32> = Vec::new();
        let mut last: Option<v1::UpdateChunk> = None;
        let mut tampered = false;
        for s in steps {
            let before = a.received();
            let at = before as usize;
            let sent = match s {
                Step::Next { size, via_push_into } => {
                    let end = (at + size).min(bytes.len());
                    let c = v1::UpdateChunk { offset: before, data: bytes[at..end].to_vec() };
                    let r = if via_push_into { a.push_into(&c, &mut out).map(|_| ()) } else { a.push(&c).map(|_| ()) };
                    r.map(|_| c)
                }
                Step::Repeat => match &last {
                    Some(c) => a.push(c).map(|_| c.clone()),
                    None => continue,
                },
                Step::Anywhere { offset, data } => {
                    let c = v1::UpdateChunk { offset, data };
                    // Bytes that differ from the payload at their place taint the upload if accepted.
                    let honest = (offset as usize) < bytes.len()
                        && bytes.get(offset as usize..offset as usize + c.data.len()) == Some(&c.data[..]);
                    let r = a.push(&c).map(|_| c);
                    if r.is_ok() && a.received() > before && !honest {
                        tampered = true;
                    }
                    r
                }
                Step::Shifted { offset, size } => {
                    let start = (offset as usize).min(bytes.len());
                    let end = (start + size).min(bytes.len());
                    let c = v1::UpdateChunk { offset, data: bytes[start..end].to_vec() };
                    a.push(&c).map(|_| c)
                }
                Step::Tampered { size, bit } => {
                    let end = (at + size).min(bytes.len());
                    let mut data = bytes[at..end].to_vec();
                    if data.is_empty() {
                        continue;
                    }
                    let i = bit % (8 * data.len());
                    data[i / 8] ^= 1 << (i % 8);
                    let c = v1::UpdateChunk { offset: before, data };
                    let r = a.push(&c).map(|_| c);
                    if r.is_ok() && a.received() > before {
                        tampered = true;
                    }
                    r
                }
                Step::Drain => {
                    // A tampered value may be non-finite: an error is an allowed answer.
                    let _ = a.drain_f32(&mut |vs| out.extend_from_slice(vs));
                    continue;
                }
            };
            if let Ok(c) = sent {
                last = Some(c);
            }
            prop_assert!(a.received() >= before, "the assembler moved backwards");
            prop_assert!(a.received() <= total, "the assembler went past the declared size");
        }
        let complete = a.is_complete();
        match a.finish() {
            Ok(rest) => {
                out.extend(rest);
                prop_assert!(complete);
                prop_assert!(!tampered, "a payload with altered bytes was accepted");
                prop_assert_eq!(bits(&out), bits(&p));
            }
            Err(_) => prop_assert!(!complete || tampered, "an honest complete upload was refused"),
        }
    }

    /// Header validation over arbitrary field values: never a panic, and an accepted header keeps
    /// every rule (size, fingerprint, SHA length, upload id characters, sample count, metrics).
    #[test]
    fn arbitrary_headers_are_validated_without_panicking(
        job_id in ".{0,80}",
        upload_id in "[A-Za-z0-9._\\-\n\u{1b} é]{0,80}",
        stage in -2i32..6,
        payload_kind in -1i32..4,
        num_samples in prop_oneof![Just(0u64), Just(42u64), any::<u64>()],
        total_bytes in prop_oneof![Just(40u64), any::<u64>()],
        fingerprint_len in prop_oneof![Just(32usize), 0usize..40],
        sha_len in prop_oneof![Just(32usize), 0usize..40],
        metrics in proptest::collection::btree_map(".{0,70}", any::<f64>(), 0..5),
    ) {
        let p = params(10);
        let mut h = header_for(&p);
        let limits = UploadLimits { max_samples: 1 << 32, ..UploadLimits::default() };
        h.job_id = job_id;
        h.upload_id = upload_id;
        h.stage = stage;
        h.payload_kind = payload_kind;
        h.num_samples = num_samples;
        h.total_bytes = total_bytes;
        h.layout_fingerprint.resize(fingerprint_len, 0);
        h.sha256.resize(sha_len, 7);
        h.metrics = metrics.into_iter().collect();
        // Through the wire and back, as the coordinator receives it.
        let h = v1::UpdateHeader::decode(h.encode_to_vec().as_slice()).unwrap();
        if validate_header(&h, &expected(10), &limits).is_ok() {
            prop_assert_eq!(h.total_bytes, 40);
            prop_assert_eq!(h.sha256.len(), 32);
            prop_assert!(h.num_samples >= 1 && h.num_samples <= 1 << 32);
            prop_assert!(!h.upload_id.is_empty() && h.upload_id.len() <= MAX_UPLOAD_ID_LEN);
            prop_assert!(h.upload_id.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)));
            prop_assert!(h.metrics.values().all(|v| v.is_finite()));
            prop_assert!(!h.job_id.is_empty());
        }
    }
}
