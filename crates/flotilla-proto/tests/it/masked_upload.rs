//! Secure-aggregation masked inputs through the chunked upload: u32 words, no finiteness check,
//! but length, layout and SHA-256 are checked as for parameters.

use crate::common;

use common::{expected, header_for};
use flotilla_proto::v1;
use flotilla_proto::{
    HeaderError, TransferError, UploadAssembler, UploadLimits, masked_words, payload_sha256,
    validate_header,
};

fn words_as_f32(words: &[u32]) -> Vec<f32> {
    words.iter().map(|w| f32::from_bits(*w)).collect()
}

fn masked_header(words: &[u32]) -> v1::UpdateHeader {
    let f = words_as_f32(words);
    let mut h = header_for(&f);
    h.stage = v1::Stage::MaskedInput as i32;
    h.payload_kind = v1::PayloadKind::MaskedU32 as i32;
    h.sha256 = payload_sha256(&f).to_vec();
    h
}

#[test]
fn masked_words_that_are_nan_or_infinite_as_f32_pass_bit_exactly() {
    // 0x7fc0_0001 and 0xffff_ffff are NaN patterns, 0x7f80_0000 is +inf as f32.
    let words: Vec<u32> = vec![0x7fc0_0001, 0xffff_ffff, 0x7f80_0000, 0, 1, 0x8000_0000];
    let h = masked_header(&words);
    let mut a = UploadAssembler::new(h, &expected(words.len()), &UploadLimits::default()).unwrap();
    assert!(a.is_masked());
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut out = Vec::new();
    // Split mid-word to exercise the carried partial value.
    a.push_into(
        &v1::UpdateChunk {
            offset: 0,
            data: bytes[..7].to_vec(),
        },
        &mut out,
    )
    .unwrap();
    a.push_into(
        &v1::UpdateChunk {
            offset: 7,
            data: bytes[7..].to_vec(),
        },
        &mut out,
    )
    .unwrap();
    out.extend(a.finish().unwrap());
    assert_eq!(masked_words(&out), words);
}

#[test]
fn masked_payloads_still_have_their_length_stage_and_sha_checked() {
    let words: Vec<u32> = (0..6).map(|i| 0x7fc0_0000 | i).collect();
    let limits = UploadLimits::default();
    // Wrong length for the layout.
    let mut h = masked_header(&words);
    h.total_bytes += 4;
    assert!(validate_header(&h, &expected(words.len()), &limits).is_err());
    // A masked payload only goes with STAGE_MASKED_INPUT, parameters only with STAGE_TRAIN.
    let mut h = masked_header(&words);
    h.stage = v1::Stage::Train as i32;
    assert_eq!(
        validate_header(&h, &expected(words.len()), &limits),
        Err(HeaderError::UnsupportedStage(1))
    );
    let mut h = masked_header(&words);
    h.payload_kind = v1::PayloadKind::ParametersF32 as i32;
    assert_eq!(
        validate_header(&h, &expected(words.len()), &limits),
        Err(HeaderError::UnsupportedStage(4))
    );
    // The same NaN bit patterns as parameters are refused.
    let f = words_as_f32(&words);
    let mut a = UploadAssembler::new(header_for(&f), &expected(f.len()), &limits).unwrap();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut out = Vec::new();
    assert!(matches!(
        a.push_into(
            &v1::UpdateChunk {
                offset: 0,
                data: bytes.clone()
            },
            &mut out
        ),
        Err(TransferError::NonFinite { index: 0 })
    ));
    // A corrupted masked payload fails its SHA-256.
    let mut a =
        UploadAssembler::new(masked_header(&words), &expected(words.len()), &limits).unwrap();
    let mut bad = bytes;
    bad[0] ^= 1;
    a.push_into(
        &v1::UpdateChunk {
            offset: 0,
            data: bad,
        },
        &mut out,
    )
    .unwrap();
    assert!(matches!(a.finish(), Err(TransferError::ShaMismatch)));
}

#[test]
fn sixteen_bit_masked_words_arrive_in_two_bytes_each_across_any_split() {
    use sha2::{Digest, Sha256};
    let words: Vec<u32> = vec![0, 1, 0xffff, 0x8000, 0x1234, 7, 0xfffe];
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| (*w as u16).to_le_bytes())
        .collect();
    let mut h = masked_header(&words);
    h.payload_kind = v1::PayloadKind::MaskedU16 as i32;
    h.total_bytes = bytes.len() as u64;
    h.sha256 = Sha256::digest(&bytes).to_vec();
    let limits = UploadLimits::default();
    // 4 bytes per word would be the wrong size for this kind.
    let mut wide = h.clone();
    wide.total_bytes = 4 * words.len() as u64;
    assert!(matches!(
        validate_header(&wide, &expected(words.len()), &limits),
        Err(HeaderError::SizeMismatch { .. })
    ));
    for split in 1..bytes.len() {
        let mut a = UploadAssembler::new(h.clone(), &expected(words.len()), &limits).unwrap();
        assert!(a.is_masked());
        let mut out = Vec::new();
        for (offset, part) in [(0, &bytes[..split]), (split, &bytes[split..])] {
            let chunk = v1::UpdateChunk {
                offset: offset as u64,
                data: part.to_vec(),
            };
            a.push_into(&chunk, &mut out).unwrap();
        }
        out.extend(a.finish().unwrap());
        assert_eq!(masked_words(&out), words, "split at {split}");
    }
    // Through `push` and `finish` too, and a wrong SHA-256 is caught.
    let mut a = UploadAssembler::new(h.clone(), &expected(words.len()), &limits).unwrap();
    a.push(&v1::UpdateChunk {
        offset: 0,
        data: bytes.clone(),
    })
    .unwrap();
    assert_eq!(masked_words(&a.finish().unwrap()), words);
    let mut bad = h;
    bad.sha256 = vec![0; 32];
    let mut a = UploadAssembler::new(bad, &expected(words.len()), &limits).unwrap();
    a.push(&v1::UpdateChunk {
        offset: 0,
        data: bytes,
    })
    .unwrap();
    assert_eq!(a.finish(), Err(TransferError::ShaMismatch));
}
