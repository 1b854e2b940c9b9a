//! Loading a dataset by name and splitting it into train and test parts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, TrainTest, stratified_split};
use crate::error::DataError;
use crate::name::DatasetName;

/// Options for [`load`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadOptions {
    /// Fraction of samples held out for testing, in `[0, 1)`. Default 0.2.
    ///
    /// Used by digits and MNIST (stratified split) and by Shakespeare (the last
    /// fraction of each role's samples). Fashion-MNIST keeps its official
    /// 60,000/10,000 split and ignores it.
    pub test_fraction: f64,
    /// Seed of the train/test split (digits, MNIST). Default 42.
    pub split_seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            test_fraction: 0.2,
            split_seed: 42,
        }
    }
}

impl LoadOptions {
    fn validate(&self) -> Result<(), DataError> {
        if !(self.test_fraction.is_finite() && (0.0..1.0).contains(&self.test_fraction)) {
            return Err(DataError::InvalidOption {
                field: "test_fraction",
                message: format!("must be in [0, 1), got {}", self.test_fraction),
            });
        }
        Ok(())
    }
}

/// The default data directory: `$FLOTILLA_DATA_DIR` if set and non-empty, else `./data`.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("FLOTILLA_DATA_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("data"),
    }
}

/// Loads a dataset and splits it into train and test parts.
///
/// Digits is built in and ignores `data_dir`. The others must have been
/// fetched into `data_dir` with [`crate::fetch::fetch`] first; if their files
/// are absent this returns [`DataError::Missing`]. (Checksums are verified by
/// `fetch`/[`crate::fetch::is_present`], not on every load; a damaged file is
/// still reported as [`DataError::Malformed`] when parsed.)
///
/// Digits and MNIST use a stratified split (see [`stratified_split`]) whose
/// rows come out in a seeded random order; Fashion-MNIST keeps its official
/// split and file order; Shakespeare splits each role in text order.
pub fn load(
    name: DatasetName,
    data_dir: &Path,
    opts: &LoadOptions,
) -> Result<TrainTest, DataError> {
    opts.validate()?;
    if let Some(pin) = crate::fetch::pinned(name) {
        let dir = data_dir.join(name.as_str());
        if pin.files.iter().any(|f| !dir.join(f.path).is_file()) {
            return Err(DataError::Missing {
                dataset: name,
                dir: data_dir.to_path_buf(),
            });
        }
    }
    let out = match name {
        DatasetName::Digits => {
            let all = crate::digits::load_all()?;
            split_dataset(&all, opts)
        }
        DatasetName::Mnist => {
            let all = crate::mnist::load_all(&data_dir.join(name.as_str()))?;
            split_dataset(&all, opts)
        }
        DatasetName::FashionMnist => crate::idx::load_fashion_mnist(&data_dir.join(name.as_str()))?,
        DatasetName::Shakespeare => {
            crate::shakespeare::load(&data_dir.join(name.as_str()), opts.test_fraction)?
        }
    };
    out.train.validate(name.as_str())?;
    out.test.validate(name.as_str())?;
    Ok(out)
}

fn split_dataset(all: &Dataset, opts: &LoadOptions) -> TrainTest {
    let (train, test) = stratified_split(
        &all.labels,
        all.num_classes,
        opts.test_fraction,
        opts.split_seed,
    );
    TrainTest {
        train: all.subset(&train),
        test: all.subset(&test),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_split_is_stratified() {
        let opts = LoadOptions::default();
        let tt = load(DatasetName::Digits, Path::new("/nonexistent"), &opts).expect("digits");
        assert_eq!(tt.train.len(), 1437);
        assert_eq!(tt.test.len(), 360);
        assert_eq!(tt.train.feature_shape, vec![64]);
        assert_eq!(tt.train.num_classes, 10);
        let hist = |d: &Dataset| {
            let mut h = [0usize; 10];
            for &l in &d.labels {
                h[l as usize] += 1;
            }
            h
        };
        let (tr, te) = (hist(&tt.train), hist(&tt.test));
        for c in 0..10 {
            let total = tr[c] + te[c];
            let share = te[c] as f64 / total as f64;
            assert!(
                (share - 0.2).abs() < 0.01,
                "class {c}: {} of {total}",
                te[c]
            );
        }
        // deterministic, and a different seed gives a different split
        let again = load(DatasetName::Digits, Path::new("."), &opts).expect("digits");
        assert_eq!(again, tt);
        let other = load(
            DatasetName::Digits,
            Path::new("."),
            &LoadOptions {
                split_seed: 7,
                ..opts.clone()
            },
        )
        .expect("digits");
        assert_ne!(other.train.features, tt.train.features);
        // train and test are disjoint: no row appears in both
        let train_rows: std::collections::HashSet<Vec<u32>> = (0..tt.train.len())
            .filter_map(|i| tt.train.sample(i))
            .map(|r| r.iter().map(|v| v.to_bits()).collect())
            .collect();
        let shared = (0..tt.test.len())
            .filter_map(|i| tt.test.sample(i))
            .filter(|r| train_rows.contains(&r.iter().map(|v| v.to_bits()).collect::<Vec<_>>()))
            .count();
        assert!(shared <= 2, "{shared} test rows also in train"); // digits has a few duplicate images
    }

    #[test]
    fn invalid_test_fraction() {
        for f in [-0.1, 1.0, f64::NAN] {
            let opts = LoadOptions {
                test_fraction: f,
                split_seed: 0,
            };
            let err = load(DatasetName::Digits, Path::new("."), &opts).expect_err("invalid");
            assert!(err.to_string().contains("test_fraction"), "{err}");
        }
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    /// `sample_shape` is the same fact as the loaded data, for every dataset that is present.
    #[test]
    fn sample_shape_matches_loaded_data() {
        for name in DatasetName::ALL {
            match load(name, &crate::test_data_dir(), &LoadOptions::default()) {
                Ok(tt) => {
                    assert_eq!(
                        (tt.train.feature_shape.clone(), tt.train.num_classes),
                        name.sample_shape(),
                        "{name}"
                    );
                }
                Err(DataError::Missing { .. }) => {
                    eprintln!("note: {name} not fetched; shape not cross-checked")
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
}
