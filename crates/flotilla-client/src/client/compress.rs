//! Compressing a TRAIN upload as its job negotiated (`Task.compression`): the delta
//! `parameters − global model` in the `flotilla_compress` format (`PAYLOAD_KIND_COMPRESSED_DELTA`).
//! Top-k keeps what it did not send as the error-feedback residual, in the state directory, and
//! adds it to the next update; the caller stores the new residual only once the coordinator has
//! accepted the upload.

use flotilla_compress::{Compression, ErrorFeedback};
use flotilla_proto::v1;
use sha2::{Digest, Sha256};

/// An encoded update and, for top-k, the residual to keep once it is accepted.
pub(super) struct Encoded {
    /// The payload's bytes.
    pub bytes: Vec<u8>,
    /// Top-k's new error-feedback residual.
    pub residual: Option<Vec<f32>>,
}

/// Encodes `params − global` with `compression` (not `None`), starting top-k from `residual` (zero
/// when `None`), and rewrites `header` for it: payload kind, size and SHA-256 of the bytes. The
/// quantizer's randomness is the operating system's, never the task seed's. An error (a value too
/// large to quantize, a stored residual of another size) is the reason to upload dense instead.
pub(super) fn encode_update(
    header: &mut v1::UpdateHeader,
    params: &[f32],
    global: &[f32],
    compression: Compression,
    residual: Option<Vec<f32>>,
) -> Result<Encoded, String> {
    if params.len() != global.len() {
        return Err(format!(
            "the update has {} values, the model {}",
            params.len(),
            global.len()
        ));
    }
    let delta: Vec<f32> = params.iter().zip(global).map(|(p, g)| p - g).collect();
    let mut rng = rand::rng();
    let (encoded, residual) = match compression {
        Compression::TopK { .. } => {
            let mut feedback = ErrorFeedback {
                residual: residual.unwrap_or_default(),
            };
            let e = feedback
                .encode(&delta, &compression, &mut rng)
                .map_err(|e| e.to_string())?;
            (e, Some(feedback.residual))
        }
        c => (
            flotilla_compress::encode(&delta, &c, &mut rng).map_err(|e| e.to_string())?,
            None,
        ),
    };
    header.payload_kind = v1::PayloadKind::CompressedDelta as i32;
    header.total_bytes = encoded.bytes.len() as u64;
    header.sha256 = Sha256::digest(&encoded.bytes).to_vec();
    Ok(Encoded {
        bytes: encoded.bytes,
        residual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_round_trip_and_topk_keeps_the_rest() {
        let global = vec![1.0f32; 100];
        let params: Vec<f32> = (0..100).map(|i| 1.0 + i as f32 / 100.0).collect();
        let mut h = v1::UpdateHeader::default();
        let e = encode_update(&mut h, &params, &global, Compression::Q8, None).unwrap();
        assert_eq!(h.payload_kind, v1::PayloadKind::CompressedDelta as i32);
        assert_eq!(h.total_bytes, e.bytes.len() as u64);
        assert_eq!(
            Some(e.bytes.len()),
            Compression::Q8.encoded_len(100),
            "exact size"
        );
        assert!(e.residual.is_none());
        let mut out = vec![0.0; 100];
        flotilla_compress::decode_into(&e.bytes, &mut out).unwrap();
        for (i, d) in out.iter().enumerate() {
            assert!(
                (d - i as f32 / 100.0).abs() <= 0.99 / 255.0 + 1e-6,
                "{i}: {d}"
            );
        }
        let topk = Compression::TopK { fraction: 0.1 };
        let e = encode_update(&mut h, &params, &global, topk, None).unwrap();
        let residual = e.residual.unwrap();
        flotilla_compress::decode_into(&e.bytes, &mut out).unwrap();
        // Sent plus kept is the whole delta, coordinate by coordinate.
        for i in 0..100 {
            assert_eq!(out[i] + residual[i], params[i] - global[i], "{i}");
        }
        assert_eq!(out.iter().filter(|v| **v != 0.0).count(), 10);
        // A residual of another size is an error (the caller uploads dense).
        assert!(encode_update(&mut h, &params, &global, topk, Some(vec![0.0; 3])).is_err());
        assert!(encode_update(&mut h, &params[..5], &global, topk, None).is_err());
    }
}
