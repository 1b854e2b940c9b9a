//! Range checks shared by the sections, with messages in `flotilla_core::limits`' words.

use crate::SpecError;

/// A count written as a signed TOML integer that must be in `min..=max`.
pub(crate) fn int(field: &'static str, v: i64, min: u64, max: u64) -> Result<u64, SpecError> {
    match u64::try_from(v) {
        Ok(u) if u >= min && u <= max => Ok(u),
        Ok(u) if u > max => Err(SpecError::new(field, format!("must be ≤ {max}, got {v}"))),
        _ => Err(SpecError::new(
            field,
            format!("must be in {min}..={max}, got {v}"),
        )),
    }
}

/// As [`int`], for a `usize`.
pub(crate) fn size(field: &'static str, v: i64, min: u64, max: u64) -> Result<usize, SpecError> {
    let u = int(field, v, min, max)?;
    usize::try_from(u).map_err(|_| SpecError::new(field, format!("{v} is too large")))
}

/// A seed: any non-negative integer.
pub(crate) fn seed(field: &'static str, v: Option<i64>, default: u64) -> Result<u64, SpecError> {
    match v {
        None => Ok(default),
        Some(s) => {
            u64::try_from(s).map_err(|_| SpecError::new(field, format!("must be ≥ 0, got {s}")))
        }
    }
}

/// A fraction in `[0, 1]` with the ends in or out as asked.
pub(crate) fn fraction(
    field: &'static str,
    v: f64,
    lo_inclusive: bool,
    hi_inclusive: bool,
) -> Result<f64, SpecError> {
    let ok = v.is_finite()
        && (if lo_inclusive { v >= 0.0 } else { v > 0.0 })
        && (if hi_inclusive { v <= 1.0 } else { v < 1.0 });
    if ok {
        return Ok(v);
    }
    let (l, h) = (
        if lo_inclusive { '[' } else { '(' },
        if hi_inclusive { ']' } else { ')' },
    );
    Err(SpecError::new(
        field,
        format!("must be in {l}0, 1{h}, got {v}"),
    ))
}

/// A required key.
pub(crate) fn need<T>(v: Option<T>, field: &'static str) -> Result<T, SpecError> {
    v.ok_or_else(|| SpecError::new(field, "is required"))
}
