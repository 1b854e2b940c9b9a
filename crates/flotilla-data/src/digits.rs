//! scikit-learn's 8×8 digits, embedded in the crate.
//!
//! `assets/digits.csv.gz` is `sklearn/datasets/data/digits.csv.gz` from the
//! scikit-learn 1.9.1 wheel (BSD-3-Clause, see `assets/digits.LICENSE`): 1,797
//! lines of 64 pixel values in `0..=16` followed by the label `0..=9`.

use std::io::Read;

use flate2::read::GzDecoder;

use crate::dataset::Dataset;
use crate::error::DataError;

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");
const ASSET: &str = "embedded digits.csv.gz";
const PIXELS: usize = 64;

/// Loads all 1,797 digits (features scaled by 1/16 into `[0, 1]`).
pub(crate) fn load_all() -> Result<Dataset, DataError> {
    let mut text = String::new();
    GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| DataError::malformed(ASSET, format!("cannot decompress: {e}")))?;
    parse_csv(&text, ASSET)
}

/// Parses digits CSV text: each non-empty line holds 64 values in `0..=16`
/// then a label in `0..=9`, comma-separated.
pub(crate) fn parse_csv(text: &str, file: &str) -> Result<Dataset, DataError> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    // Flexible: a row of the wrong width is reported below with both counts, not as csv's error.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    for record in reader.records() {
        let record = record.map_err(|e| {
            let at = e
                .position()
                .map_or(String::new(), |p| format!("line {}: ", p.line()));
            DataError::malformed(file, format!("{at}{e}"))
        })?;
        // A line of blanks is one empty field; csv skips only lines that are truly empty.
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        let lineno = record.position().map_or(0, csv::Position::line);
        let bad = |msg: String| DataError::malformed(file, format!("line {lineno}: {msg}"));
        if record.len() != PIXELS + 1 {
            return Err(bad(format!(
                "expected {} fields, found {}",
                PIXELS + 1,
                record.len()
            )));
        }
        for f in record.iter().take(PIXELS) {
            let v: f64 = f
                .parse()
                .map_err(|_| bad(format!("`{f}` is not a number")))?;
            if !(0.0..=16.0).contains(&v) {
                return Err(bad(format!("pixel value {v} outside 0..=16")));
            }
            features.push((v / 16.0) as f32);
        }
        let label_field = &record[PIXELS];
        let label: f64 = label_field
            .parse()
            .map_err(|_| bad(format!("label `{label_field}` is not a number")))?;
        if !(0.0..=9.0).contains(&label) || label.fract() != 0.0 {
            return Err(bad(format!("label {label} is not an integer in 0..=9")));
        }
        labels.push(label as u32);
    }
    if labels.is_empty() {
        return Err(DataError::malformed(file, "no samples"));
    }
    Ok(Dataset {
        features,
        feature_shape: vec![PIXELS],
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
    fn embedded_digits_parse() {
        let d = load_all().expect("embedded digits");
        assert_eq!(d.len(), 1797);
        assert_eq!(d.feature_len(), 64);
        assert!(d.features.iter().all(|&v| (0.0..=1.0).contains(&v)));
        let mut hist = [0usize; 10];
        for &l in &d.labels {
            hist[l as usize] += 1;
        }
        assert_eq!(hist, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    }

    #[test]
    fn bad_rows_are_errors() {
        let good = format!("{},3\n", vec!["0"; 64].join(","));
        assert!(parse_csv(&good, "t").is_ok());
        let short = format!("{},3\n", vec!["0"; 63].join(","));
        assert!(matches!(
            parse_csv(&short, "t"),
            Err(DataError::Malformed { .. })
        ));
        let nan = format!("x,{},3\n", vec!["0"; 63].join(","));
        assert!(parse_csv(&nan, "t").is_err());
        let big = format!("17,{},3\n", vec!["0"; 63].join(","));
        assert!(parse_csv(&big, "t").is_err());
        let label = format!("{},10\n", vec!["0"; 64].join(","));
        assert!(parse_csv(&label, "t").is_err());
        assert!(parse_csv("", "t").is_err());
    }

    #[test]
    fn blank_lines_are_skipped_and_errors_name_the_line() {
        let good = format!("{},3", vec!["0"; 64].join(", "));
        let short = format!("{},3", vec!["0"; 63].join(","));
        let d = parse_csv(&format!("\n{good}\n   \n{good}\n"), "t").unwrap();
        assert_eq!(d.labels, [3, 3]);
        let e = parse_csv(&format!("{good}\n\n  \n{short}\n"), "t").unwrap_err();
        assert!(
            e.to_string()
                .contains("line 4: expected 65 fields, found 64"),
            "{e}"
        );
    }
}
