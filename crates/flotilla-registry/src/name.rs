//! Model names and `NAME@VERSION` references.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest model name, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 64;

/// Why a name or reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name breaks the character rules.
    #[error(
        "model name {0:?}: use 1–64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    BadName(String),
    /// The part after `@` is not a version.
    #[error("model reference {0:?}: the version after '@' must be a number ≥ 1, e.g. digits@3")]
    BadVersion(String),
}

/// A registered model's name: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit
/// (safe in URLs, object-store keys, metric labels and file names as it is).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelName(String);

impl ModelName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_MODEL_NAME_BYTES
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::BadName(name.chars().take(80).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ModelName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(&s)
    }
}

impl From<ModelName> for String {
    fn from(n: ModelName) -> String {
        n.0
    }
}

impl FromStr for ModelName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

/// `NAME` (the model; commands resolve it to a version, usually production) or `NAME@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// The model.
    pub name: ModelName,
    /// The version, numbered from 1 per name.
    pub version: Option<u64>,
}

impl FromStr for ModelRef {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s.split_once('@') {
            None => Ok(ModelRef {
                name: ModelName::new(s)?,
                version: None,
            }),
            Some((name, v)) => {
                let name = ModelName::new(name)?;
                let version = Some(v)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&v| v >= 1)
                    .ok_or_else(|| NameError::BadVersion(s.chars().take(80).collect()))?;
                Ok(ModelRef {
                    name,
                    version: Some(version),
                })
            }
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_references_parse_and_print() {
        assert!(ModelName::new("digits-v2.cnn_1").is_ok());
        for bad in ["", "Digits", "-x", "a b", "a/b", "a@b", &"x".repeat(65)] {
            assert!(ModelName::new(bad).is_err(), "{bad:?}");
        }
        let r: ModelRef = "digits@3".parse().unwrap();
        assert_eq!((r.name.as_str(), r.version), ("digits", Some(3)));
        assert_eq!(r.to_string(), "digits@3");
        assert_eq!("digits".parse::<ModelRef>().unwrap().version, None);
        for bad in ["digits@0", "digits@", "digits@x", "digits@-1", "@3"] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad:?}");
        }
    }
}
