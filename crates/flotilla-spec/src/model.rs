//! `[model]`: which model, and the shape of its input — from a built-in dataset or given; or a
//! model given as a file of named tensors (`initial`), whose layout is the file's.

use std::str::FromStr;

use flotilla_core::limits;
use flotilla_data::DatasetName;
use flotilla_model::{ModelKind, ModelSpec};

use crate::SpecError;
use crate::checks::{need, size};
use crate::raw::RawModel;

/// Keys of `[model]` that describe a built-in model, so do not apply to `initial`, in the order
/// they are checked.
const BUILT_IN_KEYS: &[&str] = &[
    "kind",
    "dataset",
    "input_shape",
    "num_classes",
    "hidden",
    "embed",
];

/// Longest `[model] initial` path, bytes.
pub const MAX_INITIAL_PATH_LEN: usize = 4096;

/// Where a job's model comes from: a built-in family the driver builds from the seed, or a file
/// of named `f32` tensors the job was submitted with (`[model] initial`). Every driver matches on
/// it: the simulator trains built-in models only; the coordinator aggregates a given model by its
/// layout without building it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `[model] kind = …`: a built-in model.
    BuiltIn(ModelConfig),
    /// `[model] initial = "…"`: a model given by its initial parameters.
    Initial(InitialModel),
}

/// `[model] initial`: a model given as a safetensors file of named `f32` tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialModel {
    /// The file, as written in the job file (relative to the job file's directory). Only the
    /// submitting tool reads it; a server records it for information.
    pub path: String,
}

impl ModelSource {
    /// Validates `[model]`: with `initial`, refuses every key of a built-in model (naming it);
    /// without, [`ModelConfig::from_raw`].
    pub fn from_raw(m: &RawModel) -> Result<Self, SpecError> {
        let Some(path) = &m.initial else {
            return ModelConfig::from_raw(m).map(Self::BuiltIn);
        };
        let given = [
            m.kind.is_some(),
            m.dataset.is_some(),
            m.input_shape.is_some(),
            m.num_classes.is_some(),
            m.hidden.is_some(),
            m.embed.is_some(),
        ];
        if let Some((key, _)) = BUILT_IN_KEYS.iter().zip(given).find(|(_, g)| *g) {
            return Err(SpecError::new(
                format!("model.{key}"),
                "does not apply to a model given by model.initial (its layout is the file's): \
                 remove it, or remove model.initial to train a built-in model",
            ));
        }
        if path.trim().is_empty() || path.len() > MAX_INITIAL_PATH_LEN || path.contains('\0') {
            return Err(SpecError::new(
                "model.initial",
                format!(
                    "must be the path of a safetensors file (1 to {MAX_INITIAL_PATH_LEN} bytes, \
                     relative to the job file)"
                ),
            ));
        }
        Ok(Self::Initial(InitialModel { path: path.clone() }))
    }

    /// The built-in model, or `None` for a model given by `initial`.
    pub fn built_in(&self) -> Option<&ModelConfig> {
        match self {
            Self::BuiltIn(m) => Some(m),
            Self::Initial(_) => None,
        }
    }

    /// The `initial` file, or `None` for a built-in model.
    pub fn initial(&self) -> Option<&InitialModel> {
        match self {
            Self::BuiltIn(_) => None,
            Self::Initial(i) => Some(i),
        }
    }
}

/// A validated `[model]`: the model to build and, when the shape came from one, the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Family, sizes, input shape and classes.
    pub spec: ModelSpec,
    /// `[model] dataset`: where the shape came from (and, in a simulation, the data trained on).
    pub dataset: Option<DatasetName>,
}

impl ModelConfig {
    /// Validates `[model]`: `kind`, then `dataset` or `input_shape` + `num_classes`, then the
    /// widths (defaults from [`ModelKind`]) and the parameter count against
    /// `flotilla_core::limits::MAX_MODEL_PARAMS`.
    pub fn from_raw(m: &RawModel) -> Result<Self, SpecError> {
        let kind_name = need(m.kind.as_deref(), "model.kind")?;
        let kind = ModelKind::from_str(kind_name)
            .map_err(|e| SpecError::new("model.kind", e.to_string()))?;
        let (dataset, input_shape, num_classes) = match (&m.dataset, &m.input_shape, m.num_classes)
        {
            (Some(d), None, None) => {
                let ds = DatasetName::from_str(d)
                    .map_err(|e| SpecError::new("model.dataset", e.to_string()))?;
                let (shape, classes) = ds.sample_shape();
                (Some(ds), shape, classes)
            }
            (Some(_), _, _) => {
                return Err(SpecError::new(
                    "model.dataset",
                    "give either dataset or input_shape and num_classes, not both",
                ));
            }
            (None, Some(s), Some(c)) => {
                if s.is_empty() || s.len() > 8 || s.iter().any(|&d| d < 1) {
                    return Err(SpecError::new(
                        "model.input_shape",
                        "must have 1 to 8 dimensions, each ≥ 1",
                    ));
                }
                let shape: Vec<usize> = s
                    .iter()
                    .map(|&d| size("model.input_shape", d, 1, u64::MAX))
                    .collect::<Result<_, _>>()?;
                let values = limits::product(&shape);
                if values > limits::MAX_INPUT_VALUES {
                    return Err(SpecError::new(
                        "model.input_shape",
                        format!(
                            "values per sample (the product of the dimensions) must be ≤ {}, got {values}",
                            limits::MAX_INPUT_VALUES
                        ),
                    ));
                }
                let classes = size("model.num_classes", c, 2, limits::MAX_CLASSES)?;
                (None, shape, classes)
            }
            (None, None, _) => {
                return Err(SpecError::new(
                    "model.input_shape",
                    "is required without model.dataset",
                ));
            }
            (None, Some(_), None) => {
                return Err(SpecError::new(
                    "model.num_classes",
                    "is required without model.dataset",
                ));
            }
        };
        let not_for = |key: &'static str| {
            SpecError::new(key, format!("does not apply to model {}", kind.name()))
        };
        let width = |key: &'static str, v: Option<i64>, default: usize, max: u64| match v {
            None => Ok(default),
            Some(v) => size(key, v, 1, max),
        };
        let kind = match kind {
            ModelKind::LogReg | ModelKind::Cnn => {
                if m.hidden.is_some() {
                    return Err(not_for("model.hidden"));
                }
                if m.embed.is_some() {
                    return Err(not_for("model.embed"));
                }
                kind
            }
            ModelKind::Mlp { hidden } => {
                if m.embed.is_some() {
                    return Err(not_for("model.embed"));
                }
                ModelKind::Mlp {
                    hidden: width("model.hidden", m.hidden, hidden, limits::MAX_HIDDEN)?,
                }
            }
            ModelKind::CharMlp { embed, hidden } => ModelKind::CharMlp {
                embed: width("model.embed", m.embed, embed, limits::MAX_EMBED)?,
                hidden: width("model.hidden", m.hidden, hidden, limits::MAX_HIDDEN)?,
            },
        };
        let spec = ModelSpec {
            kind,
            input_shape,
            num_classes,
        };
        // Named after what sizes the model: its width, else the input it was given.
        let size_key = match (&spec.kind, dataset) {
            (ModelKind::Mlp { .. } | ModelKind::CharMlp { .. }, _) => "model.hidden",
            (_, Some(_)) => "model.dataset",
            (_, None) => "model.input_shape",
        };
        limits::model_params(size_key, spec.param_count())?;
        Ok(Self { spec, dataset })
    }

    /// The model's name (`logreg`, `mlp`, `cnn`, `char_mlp`).
    pub fn kind_name(&self) -> &'static str {
        self.spec.kind.name()
    }

    /// Hidden width, 0 when the model has none.
    pub fn hidden(&self) -> usize {
        match self.spec.kind {
            ModelKind::Mlp { hidden } | ModelKind::CharMlp { hidden, .. } => hidden,
            ModelKind::LogReg | ModelKind::Cnn => 0,
        }
    }

    /// Embedding width, 0 when the model has none.
    pub fn embed(&self) -> usize {
        match self.spec.kind {
            ModelKind::CharMlp { embed, .. } => embed,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial() -> RawModel {
        RawModel {
            initial: Some("init.safetensors".into()),
            ..RawModel::default()
        }
    }

    #[test]
    fn initial_alone_is_a_given_model() {
        let m = ModelSource::from_raw(&initial()).unwrap();
        assert_eq!(m.initial().unwrap().path, "init.safetensors");
        assert!(m.built_in().is_none());
    }

    #[test]
    fn every_built_in_key_is_refused_with_initial_naming_it() {
        type Set = fn(&mut RawModel);
        let cases: [(&str, Set); 6] = [
            ("model.kind", |m| m.kind = Some("mlp".into())),
            ("model.dataset", |m| m.dataset = Some("digits".into())),
            ("model.input_shape", |m| m.input_shape = Some(vec![64])),
            ("model.num_classes", |m| m.num_classes = Some(10)),
            ("model.hidden", |m| m.hidden = Some(32)),
            ("model.embed", |m| m.embed = Some(8)),
        ];
        for (key, set) in cases {
            let mut m = initial();
            set(&mut m);
            let e = ModelSource::from_raw(&m).unwrap_err();
            assert_eq!(e.field, key);
            assert!(
                e.message
                    .contains("does not apply to a model given by model.initial"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_empty_initial_path_is_refused() {
        for bad in ["", "  ", "a\0b"] {
            let m = RawModel {
                initial: Some(bad.into()),
                ..RawModel::default()
            };
            assert_eq!(
                ModelSource::from_raw(&m).unwrap_err().field,
                "model.initial"
            );
        }
    }

    #[test]
    fn without_initial_the_built_in_rules_apply() {
        let m = RawModel {
            kind: Some("logreg".into()),
            dataset: Some("digits".into()),
            ..RawModel::default()
        };
        let m = ModelSource::from_raw(&m).unwrap();
        assert_eq!(m.built_in().unwrap().spec.num_classes, 10);
        let e = ModelSource::from_raw(&RawModel::default()).unwrap_err();
        assert_eq!(e.field, "model.kind");
    }
}
