//! A user's own data as a CSV file: one sample per line, feature values then an integer label.

use std::path::Path;

use crate::dataset::Dataset;
use crate::error::DataError;

/// Largest label accepted, so a typo cannot make a model with millions of classes.
pub const MAX_CSV_CLASSES: u32 = 100_000;

/// Loads `path`: no header, comma-separated, every line `f1,…,fd,label` with the same `d ≥ 1`,
/// finite features and a whole-number label in `0..MAX_CSV_CLASSES`. Features keep their values
/// (scale them beforehand as the model expects); `feature_shape` is `[d]` and `num_classes` is
/// the largest label + 1.
pub fn load_csv(path: &Path) -> Result<Dataset, DataError> {
    let file = path.display().to_string();
    let bad =
        |line: u64, m: String| DataError::malformed(file.clone(), format!("line {line}: {m}"));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| DataError::malformed(file.clone(), e.to_string()))?;
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    let mut width = None;
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 1;
        let record = record.map_err(|e| bad(line, e.to_string()))?;
        let n = record.len();
        if n < 2 {
            return Err(bad(line, "need at least one feature and a label".into()));
        }
        if *width.get_or_insert(n) != n {
            return Err(bad(
                line,
                format!("{n} columns, earlier lines have {}", width.unwrap_or(n)),
            ));
        }
        for (j, field) in record.iter().take(n - 1).enumerate() {
            let v: f32 = field
                .parse()
                .map_err(|_| bad(line, format!("column {}: `{field}` is not a number", j + 1)))?;
            if !v.is_finite() {
                return Err(bad(
                    line,
                    format!("column {}: {field} is not finite", j + 1),
                ));
            }
            features.push(v);
        }
        let field = &record[n - 1];
        let label: u32 = field
            .parse()
            .ok()
            .filter(|l| *l < MAX_CSV_CLASSES)
            .ok_or_else(|| {
                bad(
                    line,
                    format!("label `{field}` must be a whole number below {MAX_CSV_CLASSES}"),
                )
            })?;
        labels.push(label);
    }
    let Some(width) = width else {
        return Err(DataError::malformed(file, "no samples"));
    };
    let num_classes = labels.iter().max().map_or(1, |m| *m as usize + 1);
    Ok(Dataset {
        features,
        feature_shape: vec![width - 1],
        labels,
        num_classes,
        groups: None,
        group_names: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("d.csv");
        std::fs::write(&p, text).expect("write");
        (dir, p)
    }

    #[test]
    fn loads_features_and_labels() {
        let (_d, p) = write("0.5, 1, 2\n-1,0.25,0\n");
        let d = load_csv(&p).expect("valid");
        assert_eq!(d.features, vec![0.5, 1.0, -1.0, 0.25]);
        assert_eq!(d.labels, vec![2, 0]);
        assert_eq!((d.feature_shape.clone(), d.num_classes), (vec![2], 3));
    }

    #[test]
    fn refuses_bad_files_with_the_line() {
        for (text, needle) in [
            ("1,2,0\n1,0\n", "line 2"),
            ("1,x,0\n", "not a number"),
            ("1,NaN,0\n", "not finite"),
            ("1,2,-1\n", "label"),
            ("1,2,0.5\n", "label"),
            ("1,2,999999999\n", "label"),
            ("7\n", "at least one feature"),
            ("", "no samples"),
        ] {
            let (_d, p) = write(text);
            let e = load_csv(&p).expect_err(text).to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
        assert!(load_csv(Path::new("/does/not/exist.csv")).is_err());
    }
}
