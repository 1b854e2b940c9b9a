//! In-memory datasets and the stratified split; names are in `crate::name`, loading in
//! `crate::loader`.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::DataError;

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
