//! `flotilla model export NAME@V`: a registered version's parameters
//! (`GET /v1/models/{name}/versions/{v}/artifact`), checked against the version's SHA-256, written
//! as safetensors (named F32 tensors in layout order; the layout as `FILE.layout.json` beside it)
//! or raw little-endian f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flotilla_coordinator::api::VersionDetail;
use flotilla_registry::ModelName;
use serde_json::json;

use crate::admin_cmd::{Admin, typed};
use crate::admin_view::bytes_human;
use crate::model_file::{self, ModelFormat, TensorEntry};

/// Refuses models this large rather than trying to hold them.
const MAX_MODEL_BYTES: u64 = 64 << 30;

/// `FILE.layout.json`.
fn layout_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".layout.json");
    PathBuf::from(s)
}

pub(super) fn export(
    a: &Admin,
    name: &ModelName,
    version: u64,
    format: ModelFormat,
    out: &Path,
    json: bool,
) -> Result<()> {
    let d = a.call(
        reqwest::Method::GET,
        &format!("/v1/models/{name}/versions/{version}"),
        None,
    )?;
    let d: VersionDetail = typed(d, "model version")?;
    let v = &d.version;
    let size = v.num_params.saturating_mul(4);
    if size > MAX_MODEL_BYTES {
        bail!(
            "{name}@{version} is {}; refusing to export more than {}",
            bytes_human(size),
            bytes_human(MAX_MODEL_BYTES)
        );
    }
    let (headers, bytes) = a.get_bytes(
        &format!("/v1/models/{name}/versions/{version}/artifact"),
        size,
    )?;
    if let Some(h) = headers
        .get("x-flotilla-model-sha256")
        .and_then(|h| h.to_str().ok())
        && !h.eq_ignore_ascii_case(&v.model_sha256)
    {
        bail!(
            "the coordinator sent {name}@{version} with SHA-256 {h} but registered it as {}; nothing was written",
            v.model_sha256
        );
    }
    if bytes.len() as u64 != size {
        bail!(
            "{name}@{version} arrived with {} bytes, {size} expected; nothing was written (retry)",
            bytes.len()
        );
    }
    let got = model_file::sha256_hex(&bytes);
    if !got.eq_ignore_ascii_case(&v.model_sha256) {
        bail!(
            "{name}@{version} arrived with SHA-256 {got} but was registered as {}; nothing was written (retry)",
            v.model_sha256
        );
    }
    let tensors: Vec<TensorEntry> = v
        .tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            shape: t.shape.clone(),
        })
        .collect();
    let meta = HashMap::from([
        ("model".to_owned(), v.name.clone()),
        ("version".to_owned(), v.version.to_string()),
        ("job_id".to_owned(), v.job_id.to_string()),
        ("round".to_owned(), v.round.to_string()),
        ("model_sha256".to_owned(), v.model_sha256.clone()),
        ("format".to_owned(), "flotilla".to_owned()),
    ]);
    let written = model_file::write_model(out, format, &tensors, &bytes, meta)?;
    let layout = json!({
        "model": v.name,
        "version": v.version,
        "model_sha256": v.model_sha256,
        "dtype": "F32",
        "byte_order": "little",
        "tensors": v.tensors.iter().map(|t| json!({
            "name": t.name, "shape": t.shape, "offset": t.offset, "numel": t.numel,
        })).collect::<Vec<_>>(),
    });
    let layout_file = layout_path(out);
    std::fs::write(
        &layout_file,
        serde_json::to_string_pretty(&layout).context("encoding the layout")? + "\n",
    )
    .with_context(|| format!("writing {}", layout_file.display()))?;
    if json {
        println!(
            "{}",
            json!({
                "path": out.display().to_string(),
                "layout_path": layout_file.display().to_string(),
                "file_size_bytes": written,
                "format": match format { ModelFormat::Safetensors => "safetensors", ModelFormat::Raw => "raw" },
                "name": v.name,
                "version": v.version,
                "model_sha256": v.model_sha256,
            })
        );
        return Ok(());
    }
    println!(
        "wrote {} ({}, {}) and its layout {}",
        out.display(),
        bytes_human(written),
        match format {
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Raw => "raw little-endian f32",
        },
        layout_file.display()
    );
    println!(
        "{name}@{version}: {} f32 in {} tensors, sha256 {} (verified)",
        v.num_params,
        v.tensors.len(),
        v.model_sha256
    );
    Ok(())
}
