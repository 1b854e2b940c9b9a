//! `[compression]`: how clients compress their updates before upload (`flotilla_compress`), validated
//! against `[privacy]` and `[secagg]`.
//!
//! ```toml
//! [compression]
//! kind = "quantize"   # or "none" (default), "topk"
//! bits = 8            # quantize: 8 (default) or 4
//! block = 1024        # quantize: coordinates per scale block (default 1024)
//! # fraction = 0.01   # topk: share of coordinates sent, in (0, 1] (required)
//! ```
//!
//! What combines with what:
//! - **Central DP** (`[privacy]`, `mode = "central"`): any kind. The server clips each *decoded*
//!   update to `C` and adds the noise to the clipped sum, so the mechanism and its accounting are
//!   unchanged; compression only adds (unbiased, for quantize) error before the clip.
//! - **Distributed DP** (`mode = "distributed"`): `quantize` only, applied after the client's
//!   clip and noise share, with the same caveat as secure aggregation's fixed-point rounding (the
//!   accounting treats the rounded sum as the continuous Gaussian mechanism). `topk` is refused:
//!   which coordinates are sent depends on the data, and error feedback carries unsent noise into
//!   later rounds, so the committed sum is no longer the sum of noised updates the accountant counts.
//! - **`[secagg]`**: `quantize` only (quantize before masking into a smaller ring). A top-k update
//!   is sparse, data-dependent in its support, and cannot be masked as a fixed-length vector.

pub use flotilla_compress::Compression;
use flotilla_compress::{DEFAULT_BLOCK, MAX_BLOCK};
use flotilla_core::dp::{DpMode, PrivacySpec};

use crate::SpecError;
use crate::checks::size;
use crate::raw::RawCompression;

/// Validates `[compression]` (absent: [`Compression::None`]) for a job with `privacy` and, if
/// `secagg`, secure aggregation. Errors name the key.
pub fn compression_from_raw(
    raw: Option<&RawCompression>,
    privacy: Option<&PrivacySpec>,
    secagg: bool,
) -> Result<Compression, SpecError> {
    let Some(raw) = raw else {
        return Ok(Compression::None);
    };
    let Some(kind) = raw.kind.as_deref() else {
        return Err(SpecError::new(
            "compression.kind",
            "is required: \"none\", \"quantize\" or \"topk\"",
        ));
    };
    let only = |key: &'static str, given: bool, for_kind: &str| {
        if given {
            Err(SpecError::new(
                key,
                format!("applies to kind = \"{for_kind}\" only, not \"{kind}\""),
            ))
        } else {
            Ok(())
        }
    };
    let c = match kind {
        "none" => {
            only("compression.bits", raw.bits.is_some(), "quantize")?;
            only("compression.block", raw.block.is_some(), "quantize")?;
            only("compression.fraction", raw.fraction.is_some(), "topk")?;
            Compression::None
        }
        "quantize" => {
            only("compression.fraction", raw.fraction.is_some(), "topk")?;
            let bits = match raw.bits {
                None => 8,
                Some(b @ (4 | 8)) => b as u8,
                Some(b) => {
                    return Err(SpecError::new(
                        "compression.bits",
                        format!("must be 8 or 4, got {b}"),
                    ));
                }
            };
            let block = match raw.block {
                None => DEFAULT_BLOCK,
                Some(b) => size("compression.block", b, 1, MAX_BLOCK as u64)?,
            };
            Compression::Quantize { bits, block }
        }
        "topk" => {
            only("compression.bits", raw.bits.is_some(), "quantize")?;
            only("compression.block", raw.block.is_some(), "quantize")?;
            let Some(fraction) = raw.fraction else {
                return Err(SpecError::new(
                    "compression.fraction",
                    "is required with kind = \"topk\" (the share of coordinates sent, e.g. 0.01)",
                ));
            };
            if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
                return Err(SpecError::new(
                    "compression.fraction",
                    format!("must be in (0, 1], got {fraction}"),
                ));
            }
            Compression::TopK { fraction }
        }
        other => {
            return Err(SpecError::new(
                "compression.kind",
                format!("must be \"none\", \"quantize\" or \"topk\", got \"{other}\""),
            ));
        }
    };
    // Both checks below name compression.kind: it is the key to change (or [privacy]/[secagg]).
    if let Compression::TopK { .. } = c {
        if secagg {
            return Err(SpecError::new(
                "compression.kind",
                "\"topk\" cannot run under [secagg]: secure aggregation masks fixed-length dense \
                 vectors, and a top-k update is sparse with a data-dependent support; use \
                 kind = \"quantize\"",
            ));
        }
        if privacy.is_some_and(|p| p.dp.mode == DpMode::Distributed) {
            return Err(SpecError::new(
                "compression.kind",
                "\"topk\" is unsound under [privacy] mode = \"distributed\": the coordinates sent \
                 depend on the data and error feedback carries unsent noise into later rounds, so \
                 the sum is not the noised sum the accountant counts; use kind = \"quantize\" or \
                 mode = \"central\"",
            ));
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: &str) -> RawCompression {
        RawCompression {
            kind: Some(kind.into()),
            ..RawCompression::default()
        }
    }

    #[test]
    fn defaults_and_kinds() {
        assert_eq!(
            compression_from_raw(None, None, false),
            Ok(Compression::None)
        );
        assert_eq!(
            compression_from_raw(Some(&raw("quantize")), None, true),
            Ok(Compression::Quantize {
                bits: 8,
                block: DEFAULT_BLOCK
            })
        );
        let mut r = raw("quantize");
        r.bits = Some(3);
        let e = compression_from_raw(Some(&r), None, false).unwrap_err();
        assert_eq!(e.to_string(), "compression.bits: must be 8 or 4, got 3");
        r.bits = Some(4);
        r.block = Some(0);
        assert_eq!(
            compression_from_raw(Some(&r), None, false)
                .unwrap_err()
                .field,
            "compression.block"
        );
        let mut t = raw("topk");
        assert_eq!(
            compression_from_raw(Some(&t), None, false)
                .unwrap_err()
                .field,
            "compression.fraction"
        );
        t.fraction = Some(0.01);
        assert_eq!(
            compression_from_raw(Some(&t), None, false),
            Ok(Compression::TopK { fraction: 0.01 })
        );
        t.bits = Some(8);
        assert_eq!(
            compression_from_raw(Some(&t), None, false)
                .unwrap_err()
                .field,
            "compression.bits"
        );
        assert_eq!(
            compression_from_raw(Some(&raw("zip")), None, false)
                .unwrap_err()
                .field,
            "compression.kind"
        );
    }

    #[test]
    fn topk_is_refused_under_secagg() {
        let mut t = raw("topk");
        t.fraction = Some(0.1);
        let e = compression_from_raw(Some(&t), None, true).unwrap_err();
        assert_eq!(e.field, "compression.kind");
        assert!(e.message.contains("[secagg]"), "{e}");
    }
}
