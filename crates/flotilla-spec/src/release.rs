//! `[registry]` and `[release]`: where a job's final model is registered and the release gate set
//! on that model (the coordinator acts on them when the job completes; the simulator ignores them).

use flotilla_registry::{Gate, ModelName};

use crate::SpecError;
use crate::raw::{RawRegistry, RawRelease};

/// `[registry] name`: the model name the job's final model is registered under.
pub(crate) fn registry_name(r: Option<&RawRegistry>) -> Result<Option<ModelName>, SpecError> {
    let Some(r) = r else { return Ok(None) };
    let name = r.name.as_deref().ok_or_else(|| {
        SpecError::new(
            "registry.name",
            "missing: name the model to register the job's final model under, e.g. name = \"digits\"",
        )
    })?;
    ModelName::new(name)
        .map(Some)
        .map_err(|e| SpecError::new("registry.name", e.to_string()))
}

/// `[release]`: the gate, validated, with the offending key named. Needs `[registry]`.
pub(crate) fn release_gate(
    r: Option<&RawRelease>,
    registry: Option<&ModelName>,
) -> Result<Option<Gate>, SpecError> {
    let Some(r) = r else { return Ok(None) };
    if registry.is_none() {
        return Err(SpecError::new(
            "release",
            "a release gate is set on the model the job registers: add [registry] name = \"…\"",
        ));
    }
    let min_eval_clients = match r.min_eval_clients {
        None => None,
        Some(n) => Some(crate::checks::int(
            "release.min_eval_clients",
            n,
            0,
            1_000_000,
        )?),
    };
    let gate = Gate {
        min_accuracy: r.min_accuracy,
        max_regression_points: r.max_regression_points,
        max_cohort_regression_points: r.max_cohort_regression_points,
        max_epsilon: r.max_epsilon,
        require_secagg: r.require_secagg.unwrap_or(false),
        min_eval_clients,
        auto_staging: r.auto_staging.unwrap_or(false),
    };
    // The gate's own messages start with the rule's name (`min_accuracy must be …`).
    gate.validate().map_err(|e| {
        let key = e.0.split_whitespace().next().unwrap_or("").to_owned();
        SpecError::new(
            format!("release.{key}"),
            e.0.trim_start_matches(key.as_str()).trim(),
        )
    })?;
    Ok(Some(gate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_validated_naming_the_key() {
        let name = registry_name(Some(&RawRegistry {
            name: Some("digits".into()),
        }))
        .unwrap();
        assert_eq!(name.as_ref().map(ModelName::as_str), Some("digits"));
        let e = registry_name(Some(&RawRegistry {
            name: Some("Digits!".into()),
        }))
        .unwrap_err();
        assert_eq!(e.field, "registry.name");
        let e = registry_name(Some(&RawRegistry::default())).unwrap_err();
        assert_eq!(e.field, "registry.name");
        let bad = RawRelease {
            min_accuracy: Some(1.5),
            ..RawRelease::default()
        };
        let e = release_gate(Some(&bad), name.as_ref()).unwrap_err();
        assert_eq!(e.field, "release.min_accuracy");
        assert!(e.message.contains("between 0 and 1"), "{e}");
        let e = release_gate(Some(&RawRelease::default()), None).unwrap_err();
        assert_eq!(e.field, "release");
        let ok = RawRelease {
            max_epsilon: Some(2.0),
            auto_staging: Some(true),
            ..RawRelease::default()
        };
        let g = release_gate(Some(&ok), name.as_ref()).unwrap().unwrap();
        assert_eq!((g.max_epsilon, g.auto_staging), (Some(2.0), true));
    }
}
