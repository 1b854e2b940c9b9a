//! Shared fixtures.
#![allow(dead_code)]

use flotilla_core::{ParamLayout, TensorSpec};
use flotilla_proto::v1;
use flotilla_proto::{ExpectedLayout, payload_sha256};

pub fn layout(n: usize) -> ParamLayout {
    ParamLayout::new(vec![TensorSpec::new("w", [n])])
}

pub fn params(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 7.5) * 0.37).collect()
}

/// A valid header for `params` laid out as `layout(params.len())`.
pub fn header_for(params: &[f32]) -> v1::UpdateHeader {
    let l = layout(params.len());
    v1::UpdateHeader {
        job_id: "job-1".into(),
        round: 3,
        attempt: 1,
        stage: v1::Stage::Train as i32,
        num_samples: 42,
        metrics: [("train_loss".to_string(), 0.25)].into_iter().collect(),
        total_bytes: 4 * params.len() as u64,
        layout_fingerprint: l.fingerprint().to_vec(),
        sha256: payload_sha256(params).to_vec(),
        upload_id: "up-0123.abc_Z".into(),
        base_model_version: 2,
        stage_index: 0,
        ..Default::default()
    }
}

pub fn expected(n: usize) -> ExpectedLayout {
    ExpectedLayout::of(&layout(n))
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
