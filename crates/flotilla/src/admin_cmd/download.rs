//! `flotilla job download`: fetches a committed model from the admin API
//! (`GET /v1/jobs/{id}/model/info`, then `GET /v1/jobs/{id}/model` of that very round), checks it
//! against the round's `model_sha256` and writes it as safetensors or raw f32.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use flotilla_coordinator::api::{ErrorBody, ModelInfo};
use serde_json::Value;

use super::{Admin, typed};
use crate::admin_view::{self, Table, bytes_human, clean, thousands};
use crate::model_file::{self, ModelFormat, TensorEntry};

/// Refuses models this large rather than trying to hold them (the server sends at most what the
/// layout says; this only bounds a confused answer).
const MAX_MODEL_BYTES: u64 = 64 << 30;

pub(super) fn download(
    a: &Admin,
    id: &str,
    round: Option<u64>,
    out: &Path,
    format: ModelFormat,
    json: bool,
) -> Result<()> {
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("job id must be a number, got {id:?}"))?;
    let query = round.map(|r| format!("?round={r}")).unwrap_or_default();
    let info_json = a.call(
        reqwest::Method::GET,
        &format!("/v1/jobs/{id}/model/info{query}"),
        None,
    )?;
    let info: ModelInfo = typed(info_json.clone(), "model description")?;
    if info.size_bytes > MAX_MODEL_BYTES {
        bail!(
            "the coordinator describes a {} model; refusing to download more than {}",
            bytes_human(info.size_bytes),
            bytes_human(MAX_MODEL_BYTES)
        );
    }

    // The round is pinned: "latest" must not move between the description and the bytes.
    let url = format!("{}/v1/jobs/{id}/model?round={}", a.base, info.round);
    let resp = a
        .http
        .get(&url)
        .bearer_auth(&a.token)
        .send()
        .with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        bail!("{status}: {}", msg.trim());
    }
    if let Some(h) = resp
        .headers()
        .get("x-flotilla-model-sha256")
        .and_then(|h| h.to_str().ok())
        && !h.eq_ignore_ascii_case(&info.model_sha256)
    {
        bail!(
            "the coordinator sent the model with SHA-256 {h} but described round {} as {}; nothing was written",
            info.round,
            info.model_sha256
        );
    }
    let mut bytes = Vec::with_capacity(usize::try_from(info.size_bytes).unwrap_or(0));
    // One byte more than announced, so a longer answer is noticed rather than cut to size.
    resp.take(info.size_bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the model of job {id} round {}", info.round))?;
    if bytes.len() as u64 != info.size_bytes {
        bail!(
            "the model of round {} arrived with {} bytes, {} expected; nothing was written (retry)",
            info.round,
            bytes.len(),
            info.size_bytes
        );
    }
    model_file::verify_sha256(&bytes, &info.model_sha256, info.round)?;

    let mut meta = HashMap::from([
        ("job_id".to_owned(), info.job_id.to_string()),
        ("job_name".to_owned(), info.name.clone()),
        ("round".to_owned(), info.round.to_string()),
        ("model_sha256".to_owned(), info.model_sha256.clone()),
        ("format".to_owned(), "flotilla".to_owned()),
    ]);
    if let Some(model) = &info.model {
        meta.insert("model_kind".to_owned(), model.kind.clone());
        // Through a JSON value, whose keys are sorted: the metadata reads as it always has.
        let spec = serde_json::to_value(model).context("encoding the model section")?;
        meta.insert("model_spec".to_owned(), spec.to_string());
    }
    let tensors: Vec<TensorEntry> = info
        .tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            shape: t.shape.clone(),
        })
        .collect();
    let size = model_file::write_model(out, format, &tensors, &bytes, meta)?;

    if json {
        let mut v = info_json;
        v["path"] = Value::String(out.display().to_string());
        v["file_size_bytes"] = size.into();
        v["format"] = Value::String(format_name(format).to_owned());
        println!("{v}");
        return Ok(());
    }
    println!(
        "wrote {} ({}, {})",
        out.display(),
        bytes_human(size),
        format_name(format)
    );
    println!(
        "job {} ({}, {}), round {} of {} committed, sha256 {} (verified)",
        info.job_id,
        clean(&info.name),
        info.state,
        info.round,
        info.rounds_completed,
        info.model_sha256
    );
    let mut t = Table::new(&[("TENSOR", false), ("SHAPE", false), ("VALUES", true)]);
    for e in &info.tensors {
        let shape: Vec<String> = e.shape.iter().map(usize::to_string).collect();
        let n: usize = e.shape.iter().product();
        t.row(vec![
            admin_view::clean(&e.name),
            format!("[{}]", shape.join(", ")),
            thousands(n as u64),
        ]);
    }
    print!("{}", t.render());
    println!(
        "{} f32 parameters in {} tensors",
        thousands(info.num_params),
        info.tensors.len()
    );
    Ok(())
}

fn format_name(f: ModelFormat) -> &'static str {
    match f {
        ModelFormat::Safetensors => "safetensors",
        ModelFormat::Raw => "raw little-endian f32",
    }
}
