//! Compressed deltas (`PAYLOAD_KIND_COMPRESSED_DELTA`) through the chunked upload: decoded while
//! they arrive by the job's codec only, any chunking giving the same delta; the header's size is
//! bounded by the codec and a job without compression refuses them.

use crate::common;

use common::{expected, header_for};
use flotilla_proto::v1;
use flotilla_proto::{
    Compression, HeaderError, TransferError, UploadAssembler, UploadLimits, upload_byte_messages,
    validate_header,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const Q4: Compression = Compression::Quantize { bits: 4, block: 7 };

fn limits(c: Compression) -> UploadLimits {
    UploadLimits {
        compression: c,
        ..UploadLimits::default()
    }
}

/// A deterministic delta of `n` values and its encoding under `c`.
fn encoded(n: usize, c: Compression, seed: u64) -> (Vec<f32>, Vec<u8>) {
    use rand_chacha::rand_core::SeedableRng;
    let delta: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.731 + seed as f32).sin()) * 0.1)
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bytes = match c {
        Compression::TopK { .. } => {
            flotilla_compress::ErrorFeedback::default()
                .encode(&delta, &c, &mut rng)
                .unwrap()
                .bytes
        }
        c => {
            flotilla_compress::encode(&delta, &c, &mut rng)
                .unwrap()
                .bytes
        }
    };
    (delta, bytes)
}

fn compressed_header(n: usize, bytes: &[u8]) -> v1::UpdateHeader {
    let mut h = header_for(&vec![0.0; n]);
    h.payload_kind = v1::PayloadKind::CompressedDelta as i32;
    h.total_bytes = bytes.len() as u64;
    h.sha256 = Sha256::digest(bytes).to_vec();
    h
}

/// Feeds `bytes` in chunks of `chunk` through `push_into` and returns the decoded delta.
fn receive(
    n: usize,
    c: Compression,
    bytes: &[u8],
    chunk: usize,
) -> Result<Vec<f32>, TransferError> {
    let h = compressed_header(n, bytes);
    let mut a = UploadAssembler::new(h.clone(), &expected(n), &limits(c))?;
    assert!(a.is_compressed() && !a.is_masked());
    let mut out = Vec::new();
    for m in upload_byte_messages(h, bytes, chunk, 0).skip(1) {
        let Some(v1::upload_message::Kind::Chunk(ch)) = m.kind else {
            unreachable!()
        };
        a.push_into(&ch, &mut out)?;
    }
    assert_eq!(a.drain_f32(&mut |_| unreachable!())?, 0);
    assert!(a.finish()?.is_empty(), "push_into decoded into `out`");
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_chunking_decodes_to_the_codecs_own_result(
        n in 1usize..300,
        chunk in 1usize..64,
        kind in 0u8..3,
        seed in any::<u64>(),
    ) {
        let c = match kind {
            0 => Compression::Q8,
            1 => Q4,
            _ => Compression::TopK { fraction: 0.1 },
        };
        let (_, bytes) = encoded(n, c, seed);
        let mut want = vec![0.0; n];
        flotilla_compress::decode_into(&bytes, &mut want).unwrap();
        let got = receive(n, c, &bytes, chunk).unwrap();
        prop_assert_eq!(got, want.clone());
        // `push` (no caller buffer) decodes into the assembler's own, returned by `finish`.
        let h = compressed_header(n, &bytes);
        let mut a = UploadAssembler::new(h.clone(), &expected(n), &limits(c)).unwrap();
        for m in upload_byte_messages(h, &bytes, chunk, 0).skip(1) {
            let Some(v1::upload_message::Kind::Chunk(ch)) = m.kind else { unreachable!() };
            a.push(&ch).unwrap();
        }
        prop_assert_eq!(a.finish().unwrap(), want);
    }
}

#[test]
fn the_delta_is_close_to_what_was_sent() {
    let (delta, bytes) = encoded(1000, Compression::Q8, 3);
    assert_eq!(bytes.len(), Compression::Q8.encoded_len(1000).unwrap());
    assert!(bytes.len() * 3 < 4 * 1000, "about a quarter of dense");
    let got = receive(1000, Compression::Q8, &bytes, 100).unwrap();
    for (g, d) in got.iter().zip(&delta) {
        assert!((g - d).abs() <= 0.2 / 255.0 + 1e-6, "{g} vs {d}");
    }
}

#[test]
fn headers_are_checked_against_the_jobs_compression() {
    let (_, bytes) = encoded(50, Compression::Q8, 1);
    let h = compressed_header(50, &bytes);
    assert_eq!(
        validate_header(&h, &expected(50), &UploadLimits::default()),
        Err(HeaderError::CompressionNotNegotiated)
    );
    assert_eq!(
        validate_header(&h, &expected(50), &limits(Compression::Q8)),
        Ok(())
    );
    // Larger than the codec's encoding of the layout, or empty.
    let max = Compression::Q8.encoded_len(50).unwrap() as u64;
    for total in [0, max + 1] {
        let mut bad = h.clone();
        bad.total_bytes = total;
        assert_eq!(
            validate_header(&bad, &expected(50), &limits(Compression::Q8)),
            Err(HeaderError::CompressedSize { got: total, max })
        );
    }
    // Only TRAIN uploads are compressed.
    let mut bad = h.clone();
    bad.stage = v1::Stage::MaskedInput as i32;
    assert!(matches!(
        validate_header(&bad, &expected(50), &limits(Compression::Q8)),
        Err(HeaderError::UnsupportedStage(_))
    ));
    // A dense upload is still accepted by a job with compression.
    let dense = header_for(&[0.0; 50]);
    assert_eq!(
        validate_header(&dense, &expected(50), &limits(Compression::Q8)),
        Ok(())
    );
}

#[test]
fn another_codec_or_corrupt_bytes_are_refused() {
    // Encoded with 4 bits for a job that negotiated 8: the decoder refuses it at the prefix.
    let q4 = Compression::Quantize {
        bits: 4,
        block: 1024,
    };
    let (_, bytes) = encoded(64, q4, 2);
    let e = receive(64, Compression::Q8, &bytes, 16).unwrap_err();
    assert!(matches!(e, TransferError::BadEncoding(_)), "{e:?}");
    assert!(e.to_string().contains("negotiated"), "{e}");
    // Larger than the job's codec could ever produce: refused from the header.
    let (_, bytes) = encoded(64, Q4, 2);
    let e = receive(64, Compression::Q8, &bytes, 16).unwrap_err();
    assert!(
        matches!(
            e,
            TransferError::InvalidHeader(HeaderError::CompressedSize { .. })
        ),
        "{e:?}"
    );
    // A dimension other than the layout's.
    let (_, bytes) = encoded(63, Compression::Q8, 2);
    let e = receive(64, Compression::Q8, &bytes, 16).unwrap_err();
    assert!(matches!(e, TransferError::BadEncoding(_)), "{e:?}");
    // A corrupted scale: refused while it arrives, never a panic or a non-finite value.
    let (_, mut bytes) = encoded(64, Compression::Q8, 2);
    let len = bytes.len();
    bytes[11..15].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(bytes.len(), len);
    let e = receive(64, Compression::Q8, &bytes, 16).unwrap_err();
    assert!(matches!(e, TransferError::BadEncoding(_)), "{e:?}");
    // A top-k payload cut short (a smaller size is allowed by the header, not by the decoder).
    let c = Compression::TopK { fraction: 0.25 };
    let (_, bytes) = encoded(64, c, 2);
    let e = receive(64, c, &bytes[..bytes.len() - 8], 16).unwrap_err();
    assert!(matches!(e, TransferError::BadEncoding(_)), "{e:?}");
    assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);
}
