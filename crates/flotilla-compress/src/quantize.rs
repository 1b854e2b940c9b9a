//! Stochastic uniform quantization, one block at a time: the encoder and the block decoder the
//! streaming decoder calls. Both compute the decoded value as `(lo as f64 + c as f64 · step as f64)
//! as f32` from the *transmitted* `f32` scale, so the encoder's rounding probabilities refer to
//! exactly the grid the server reconstructs.

use rand_core::Rng;

use crate::DecodeError;

/// Largest code for `bits`: 255 or 15.
pub(crate) fn levels(bits: u8) -> u32 {
    (1u32 << bits) - 1
}

/// Bytes of codes for a block of `n` coordinates.
pub(crate) fn code_bytes(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// A uniform draw in `[0, 1)` with 53 random bits.
fn uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The block's `lo` and `step`: `step` is rounded *up* to `f32` so that `lo + levels·step ≥ max`
/// and every coordinate's `t = (x − lo)/step` lies in `[0, levels]` (no clamping, no bias).
pub(crate) fn scale(block: &[f32], bits: u8) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in block {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let exact = (f64::from(hi) - f64::from(lo)) / f64::from(levels(bits));
    let mut step = exact as f32;
    if f64::from(step) < exact {
        step = step.next_up();
    }
    (lo, step)
}

/// Appends `⌈len/block⌉` blocks (lo, step, codes) for `update` (finite, |x| ≤ MAX_ABS_VALUE).
pub(crate) fn encode_blocks<R: Rng + ?Sized>(
    update: &[f32],
    bits: u8,
    block: usize,
    rng: &mut R,
    out: &mut Vec<u8>,
) {
    let top = levels(bits);
    for chunk in update.chunks(block) {
        let (lo, step) = scale(chunk, bits);
        out.extend_from_slice(&lo.to_le_bytes());
        out.extend_from_slice(&step.to_le_bytes());
        let (lo, step) = (f64::from(lo), f64::from(step));
        let mut code = |x: f32| -> u8 {
            if step == 0.0 {
                return 0;
            }
            let t = ((f64::from(x) - lo) / step).clamp(0.0, f64::from(top));
            let floor = t.floor();
            let up = uniform(rng) < t - floor;
            // floor ≤ top, and up only when t > floor, so the sum is ≤ top ≤ 255.
            (floor as u32 + u32::from(up)).min(top) as u8
        };
        if bits == 8 {
            out.extend(chunk.iter().map(|&x| code(x)));
        } else {
            for pair in chunk.chunks(2) {
                let low = code(pair[0]);
                let high = pair.get(1).map_or(0, |&x| code(x));
                out.push(low | (high << 4));
            }
        }
    }
}

/// Decodes one block record (`lo`, `step`, codes) of `out.len()` coordinates into `out`.
/// `index` is the block's number, for errors.
pub(crate) fn decode_block(
    record: &[u8],
    bits: u8,
    index: usize,
    out: &mut [f32],
) -> Result<(), DecodeError> {
    debug_assert_eq!(record.len(), 8 + code_bytes(out.len(), bits));
    let lo_f = f32::from_le_bytes([record[0], record[1], record[2], record[3]]);
    let step_f = f32::from_le_bytes([record[4], record[5], record[6], record[7]]);
    let (lo, step) = (f64::from(lo_f), f64::from(step_f));
    let top = (lo + f64::from(levels(bits)) * step) as f32;
    if !lo_f.is_finite() || !step_f.is_finite() || step_f < 0.0 || !top.is_finite() {
        return Err(DecodeError::Scale {
            block: index,
            lo: lo_f,
            step: step_f,
        });
    }
    let codes = &record[8..];
    let value = |c: u8| (lo + f64::from(c) * step) as f32;
    if bits == 8 {
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = value(c);
        }
    } else {
        for (pair, &byte) in out.chunks_mut(2).zip(codes) {
            pair[0] = value(byte & 0x0f);
            match pair.get_mut(1) {
                Some(o) => *o = value(byte >> 4),
                None if byte >> 4 != 0 => return Err(DecodeError::Padding(index)),
                None => {}
            }
        }
    }
    Ok(())
}
