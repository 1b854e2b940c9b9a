//! `[model]`: which model, and the shape of its input — from a built-in dataset or given.

use std::str::FromStr;

use flotilla_core::limits;
use flotilla_data::DatasetName;
use flotilla_model::{ModelKind, ModelSpec};

use crate::SpecError;
use crate::checks::{need, size};
use crate::raw::RawModel;

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
