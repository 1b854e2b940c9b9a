//! `ModelSpec::param_count` (used to refuse oversized specs before anything is allocated) agrees with
//! the layouts the models are built with, and saturates instead of overflowing.

use flotilla_ml::{ModelKind, ModelSpec, build};

#[test]
fn param_count_matches_the_built_layouts() {
    for (kind, shape, classes) in [
        (ModelKind::LogReg, vec![64], 10),
        (ModelKind::Mlp { hidden: 7 }, vec![2, 8], 3),
        (ModelKind::Cnn, vec![1, 28, 28], 10),
        (
            ModelKind::CharMlp {
                embed: 4,
                hidden: 9,
            },
            vec![5],
            30,
        ),
    ] {
        let spec = ModelSpec {
            kind,
            input_shape: shape,
            num_classes: classes,
        };
        let built = build(&spec, 1).unwrap().layout().len() as u64;
        assert_eq!(spec.param_count(), built, "{kind}");
    }
    assert_eq!(spec_count(ModelKind::Cnn, vec![1, 28, 28], 10), 52_138);
}

fn spec_count(kind: ModelKind, input_shape: Vec<usize>, num_classes: usize) -> u64 {
    ModelSpec {
        kind,
        input_shape,
        num_classes,
    }
    .param_count()
}

#[test]
fn param_count_saturates() {
    assert_eq!(
        spec_count(
            ModelKind::Mlp { hidden: usize::MAX },
            vec![usize::MAX, usize::MAX],
            10
        ),
        u64::MAX
    );
    assert_eq!(
        spec_count(
            ModelKind::CharMlp {
                embed: usize::MAX,
                hidden: 2
            },
            vec![usize::MAX],
            usize::MAX
        ),
        u64::MAX
    );
}
