//! In-memory datasets, dataset names and [`load`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, UnknownDatasetError};

/// A labelled dataset held in memory.
///
/// Sample `i` has features `features[i * feature_len() .. (i + 1) * feature_len()]`
/// (row-major, shaped like `feature_shape`) and label `labels[i]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    /// `len() * feature_len()` feature values, row-major.
    pub features: Vec<f32>,
    /// Shape of one sample: `[64]` for digits, `[1, 28, 28]` for the MNIST-like
    /// image sets, `[80]` for Shakespeare (character ids stored as `f32`).
    pub feature_shape: Vec<usize>,
    /// One label per sample, each below `num_classes`.
    pub labels: Vec<u32>,
    /// Number of classes (for Shakespeare, the vocabulary size).
    pub num_classes: usize,
    /// Natural owner of each sample (an index into `group_names`), if the
    /// dataset has one (Shakespeare: the speaking role).
    pub groups: Option<Vec<u32>>,
    /// Names of the groups, e.g. `"HAMLET/OPHELIA"`; empty without groups.
    pub group_names: Vec<String>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of feature values per sample (product of `feature_shape`).
    pub fn feature_len(&self) -> usize {
        self.feature_shape.iter().product()
    }

    /// Features of sample `index`, or `None` if out of range.
    pub fn sample(&self, index: usize) -> Option<&[f32]> {
        let len = self.feature_len();
        let start = index.checked_mul(len)?;
        self.features.get(start..start.checked_add(len)?)
    }

    /// A new dataset holding the given samples, in the given order.
    ///
    /// Indices out of range are skipped. Group ids and names are kept as they are.
    pub fn subset(&self, indices: &[u32]) -> Dataset {
        let len = self.feature_len();
        let mut features = Vec::with_capacity(indices.len() * len);
        let mut labels = Vec::with_capacity(indices.len());
        let mut groups = self
            .groups
            .as_ref()
            .map(|_| Vec::with_capacity(indices.len()));
        for &i in indices {
            let i = i as usize;
            let (Some(x), Some(&y)) = (self.sample(i), self.labels.get(i)) else {
                continue;
            };
            features.extend_from_slice(x);
            labels.push(y);
            if let (Some(out), Some(src)) = (groups.as_mut(), self.groups.as_ref()) {
                out.push(src.get(i).copied().unwrap_or(0));
            }
        }
        Dataset {
            features,
            feature_shape: self.feature_shape.clone(),
            labels,
            num_classes: self.num_classes,
            groups,
            group_names: self.group_names.clone(),
        }
    }

    /// Checks internal consistency (lengths, label range, group ids).
    pub(crate) fn validate(&self, what: &str) -> Result<(), DataError> {
        let n = self.labels.len();
        if self.features.len() != n * self.feature_len() {
            return Err(DataError::malformed(
                what,
                format!(
                    "{} feature values for {n} samples of length {}",
                    self.features.len(),
                    self.feature_len()
                ),
            ));
        }
        if let Some(bad) = self
            .labels
            .iter()
            .find(|&&l| l as usize >= self.num_classes)
        {
            return Err(DataError::malformed(
                what,
                format!("label {bad} is not below {}", self.num_classes),
            ));
        }
        if let Some(groups) = &self.groups {
            if groups.len() != n {
                return Err(DataError::malformed(
                    what,
                    "groups length differs from labels",
                ));
            }
            if groups.iter().any(|&g| g as usize >= self.group_names.len()) {
                return Err(DataError::malformed(what, "group id without a name"));
            }
        }
        Ok(())
    }
}

/// A train/test pair.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainTest {
    /// Training part (what gets partitioned among clients).
    pub train: Dataset,
    /// Held-out test part.
    pub test: Dataset,
}

/// The datasets this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// scikit-learn's 8×8 digits (1,797 samples, 10 classes); built in.
    Digits,
    /// Fashion-MNIST (60,000 train / 10,000 test, 28×28, 10 classes).
    FashionMnist,
    /// A 10,000-digit subset of MNIST (28×28, 10 classes).
    Mnist,
    /// LEAF-style next-character prediction on Shakespeare's plays, one group per role.
    Shakespeare,
}

impl DatasetName {
    /// All dataset names, in a fixed order.
    pub const ALL: [DatasetName; 4] = [
        DatasetName::Digits,
        DatasetName::FashionMnist,
        DatasetName::Mnist,
        DatasetName::Shakespeare,
    ];

    /// The name as used on the command line and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Digits => "digits",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Shakespeare => "shakespeare",
        }
    }

    /// Shape of one sample's features and the number of classes, known without loading anything
    /// (what a model for this dataset must accept and predict).
    pub fn sample_shape(self) -> (Vec<usize>, usize) {
        match self {
            DatasetName::Digits => (vec![64], 10),
            DatasetName::FashionMnist | DatasetName::Mnist => (vec![1, 28, 28], 10),
            DatasetName::Shakespeare => (
                vec![crate::shakespeare::SEQ_LEN],
                crate::shakespeare::VOCAB_SIZE,
            ),
        }
    }

    /// Whether the data ships inside this crate (no fetch needed).
    pub fn is_builtin(self) -> bool {
        matches!(self, DatasetName::Digits)
    }
}

pub(crate) fn valid_names() -> String {
    DatasetName::ALL
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = UnknownDatasetError;

    /// Parses `digits`, `fashion-mnist`, `mnist` or `shakespeare` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        DatasetName::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownDatasetError {
                name: s.to_string(),
            })
    }
}

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

/// Sample indices grouped by label, ascending; labels at or above `num_classes` are left out.
/// Sized by the largest label present, so an absurd `num_classes` allocates nothing extra.
pub(crate) fn indices_by_class(labels: &[u32], num_classes: usize) -> Vec<Vec<u32>> {
    let classes = labels
        .iter()
        .max()
        .map_or(0, |&m| m as usize + 1)
        .min(num_classes);
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(v) = by_class.get_mut(l as usize) {
            v.push(i as u32);
        }
    }
    by_class
}

/// Stratified train/test split of sample indices; returns `(train, test)`.
///
/// Like scikit-learn's `train_test_split(stratify=...)`: the test part has
/// `ceil(test_fraction * n)` samples, shared among the classes in proportion
/// to their sizes (floor of each class's exact share, the remainder going to
/// the classes with the largest fractional parts, ties to the lower class).
/// Within each class (in ascending class order) the indices are shuffled with
/// a ChaCha8 RNG seeded with `seed` and the first ones become test samples;
/// finally both parts are shuffled with the same RNG. Labels not below
/// `num_classes` are ignored. For digits (n = 1,797) at 0.2 this gives
/// 1,437 train / 360 test.
pub fn stratified_split(
    labels: &[u32],
    num_classes: usize,
    test_fraction: f64,
    seed: u64,
) -> (Vec<u32>, Vec<u32>) {
    let by_class = indices_by_class(labels, num_classes);
    let n: usize = by_class.iter().map(Vec::len).sum();
    let frac = if test_fraction.is_finite() {
        test_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let n_test = ((frac * n as f64).ceil() as usize).min(n);

    // Largest-remainder allocation of n_test among classes.
    let mut quota: Vec<usize> = Vec::with_capacity(by_class.len());
    let mut remainders: Vec<(f64, usize)> = Vec::with_capacity(by_class.len());
    for (c, idx) in by_class.iter().enumerate() {
        let exact = if n == 0 {
            0.0
        } else {
            n_test as f64 * idx.len() as f64 / n as f64
        };
        let fl = (exact.floor() as usize).min(idx.len());
        quota.push(fl);
        remainders.push((exact - fl as f64, c));
    }
    let mut left = n_test.saturating_sub(quota.iter().sum());
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    while left > 0 {
        let before = left;
        for &(_, c) in &remainders {
            if left == 0 {
                break;
            }
            if quota[c] < by_class[c].len() {
                quota[c] += 1;
                left -= 1;
            }
        }
        if left == before {
            break;
        }
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut train = Vec::with_capacity(n - n_test);
    let mut test = Vec::with_capacity(n_test);
    for (c, mut idx) in by_class.into_iter().enumerate() {
        idx.shuffle(&mut rng);
        test.extend_from_slice(&idx[..quota[c]]);
        train.extend_from_slice(&idx[quota[c]..]);
    }
    train.shuffle(&mut rng);
    test.shuffle(&mut rng);
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in DatasetName::ALL {
            assert_eq!(name.as_str().parse::<DatasetName>(), Ok(name));
            assert_eq!(name.to_string(), name.as_str());
        }
        assert_eq!(
            "Fashion-MNIST".parse::<DatasetName>(),
            Ok(DatasetName::FashionMnist)
        );
        let err = "cifar".parse::<DatasetName>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown dataset `cifar`; valid names: digits, fashion-mnist, mnist, shakespeare"
        );
        let json = serde_json::to_string(&DatasetName::FashionMnist).expect("json");
        assert_eq!(json, "\"fashion-mnist\"");
    }

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
    fn split_edge_cases() {
        let labels = [0u32, 0, 0, 1, 1, 2];
        let (tr, te) = stratified_split(&labels, 3, 0.0, 1);
        assert_eq!((tr.len(), te.len()), (6, 0));
        let (tr, te) = stratified_split(&labels, 3, 0.5, 1);
        assert_eq!((tr.len(), te.len()), (3, 3));
        let mut all: Vec<u32> = tr.iter().chain(&te).copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        let (tr, te) = stratified_split(&[], 3, 0.2, 1);
        assert!(tr.is_empty() && te.is_empty());
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

    #[test]
    fn subset_keeps_groups() {
        let d = Dataset {
            features: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            feature_shape: vec![2],
            labels: vec![0, 1, 0],
            num_classes: 2,
            groups: Some(vec![1, 0, 1]),
            group_names: vec!["a".into(), "b".into()],
        };
        let s = d.subset(&[2, 0, 99]);
        assert_eq!(s.features, vec![4.0, 5.0, 0.0, 1.0]);
        assert_eq!(s.labels, vec![0, 0]);
        assert_eq!(s.groups, Some(vec![1, 1]));
        assert!(d.validate("t").is_ok());
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
