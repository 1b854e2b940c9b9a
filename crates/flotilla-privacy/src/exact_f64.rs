//! Serde for `f64` that restores bit-exactly in every format.
//!
//! Values are written as their shortest round-trip decimal string (`"0.01"`, `"1.1"`); Rust's
//! `str::parse::<f64>` is correctly rounded, so reading gives back the same bits whatever the
//! format — unlike JSON numbers, which some parsers (serde_json without `float_roundtrip`) may
//! round differently in the last place. Plain numbers are accepted on input too, for
//! hand-written files.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

pub(crate) fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    // `{:?}` keeps the shortest round-trip digits and writes 1e-7 as "1e-7" rather than
    // "0.0000001"; "inf"/"NaN" round-trip as well.
    serializer.collect_str(&format_args!("{value:?}"))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(ExactF64)
}

struct ExactF64;

impl Visitor<'_> for ExactF64 {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, or a decimal string such as \"0.01\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        v.trim()
            .parse::<f64>()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
}
