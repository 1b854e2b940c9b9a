//! Dataset names: the datasets this crate knows, their sample shapes, and parsing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Characters of context per Shakespeare sample (`crate::shakespeare::SEQ_LEN`).
pub(crate) const SHAKESPEARE_SEQ_LEN: usize = 80;
/// Number of Shakespeare character ids (`crate::shakespeare::VOCAB_SIZE`).
pub(crate) const SHAKESPEARE_VOCAB_SIZE: usize = 96;

/// A dataset name that is not one of [`DatasetName::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dataset `{name}`; valid names: {}", valid_names())]
pub struct UnknownDatasetError {
    /// The name that was given.
    pub name: String,
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
            DatasetName::Shakespeare => (vec![SHAKESPEARE_SEQ_LEN], SHAKESPEARE_VOCAB_SIZE),
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
}
