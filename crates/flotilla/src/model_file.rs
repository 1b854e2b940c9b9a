//! Writing a downloaded model to disk: checked against its SHA-256, as safetensors (tensor names
//! and shapes from the job's layout) or raw little-endian `f32`, atomically (a temporary file in the
//! destination directory, renamed into place only when complete).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use safetensors::tensor::{Dtype, TensorView};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Output format of `job download`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelFormat {
    /// safetensors: named F32 tensors, loadable by PyTorch, JAX, candle, burn…
    Safetensors,
    /// The flat parameter vector as raw little-endian f32, in layout order
    Raw,
}

/// One tensor of the layout, as `GET /v1/jobs/{id}/model/info` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorEntry {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Refuses `bytes` unless their SHA-256 is `expected` (hex, any case).
pub fn verify_sha256(bytes: &[u8], expected: &str, round: u64) -> Result<()> {
    let got = sha256_hex(bytes);
    if !got.eq_ignore_ascii_case(expected.trim()) {
        bail!(
            "the downloaded model's SHA-256 is {got} but round {round} committed {expected}; nothing was written (retry; if it persists, the coordinator's blob store is damaged)"
        );
    }
    Ok(())
}

/// Checks that `tensors` cover exactly `len_bytes` of f32 data.
pub fn check_layout(tensors: &[TensorEntry], len_bytes: usize) -> Result<()> {
    ensure!(
        !tensors.is_empty(),
        "the coordinator described the model with no tensors"
    );
    let numel: usize = tensors.iter().map(TensorEntry::numel).sum();
    ensure!(
        numel * 4 == len_bytes,
        "the model is {len_bytes} bytes but its layout describes {numel} f32 values ({} bytes)",
        numel * 4
    );
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        ensure!(
            seen.insert(t.name.as_str()),
            "the layout names tensor {:?} twice",
            t.name
        );
    }
    Ok(())
}

/// Writes `bytes` (raw little-endian f32 in layout order) to `out` in `format`, atomically: the
/// file appears complete or not at all, and nothing is left behind on failure. `metadata` goes into
/// the safetensors header (ignored for raw).
pub fn write_model(
    out: &Path,
    format: ModelFormat,
    tensors: &[TensorEntry],
    bytes: &[u8],
    metadata: HashMap<String, String>,
) -> Result<u64> {
    check_layout(tensors, bytes.len())?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    ensure!(
        dir.is_dir(),
        "--out {}: directory {} does not exist",
        out.display(),
        dir.display()
    );
    // Dropped (and deleted) on any early return below.
    let mut tmp = tempfile::Builder::new()
        .prefix(".flotilla-download-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    match format {
        ModelFormat::Raw => tmp
            .write_all(bytes)
            .with_context(|| format!("writing {}", tmp.path().display()))?,
        ModelFormat::Safetensors => {
            let mut views = Vec::with_capacity(tensors.len());
            let mut offset = 0;
            for t in tensors {
                let len = t.numel() * 4;
                let view =
                    TensorView::new(Dtype::F32, t.shape.clone(), &bytes[offset..offset + len])
                        .with_context(|| format!("tensor {} {:?}", t.name, t.shape))?;
                views.push((t.name.clone(), view));
                offset += len;
            }
            let mut metadata = metadata;
            // safetensors orders tensors by name in the file; the flat vector's order is kept here so
            // the original parameter vector (and its SHA-256) can be rebuilt.
            metadata.insert(
                "tensor_order".into(),
                tensors
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            safetensors::tensor::serialize_to_file(views, Some(metadata), tmp.path())
                .with_context(|| format!("writing safetensors to {}", tmp.path().display()))?;
        }
    }
    // Through the path, not the temporary file's own handle: safetensors writes a new file at the
    // path rather than into the one the handle holds.
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("flushing {}", tmp.path().display()))?;
    tmp.persist(out)
        .with_context(|| format!("moving the download into place at {}", out.display()))?;
    let size = std::fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn layout() -> Vec<TensorEntry> {
        vec![
            TensorEntry {
                name: "linear.weight".into(),
                shape: vec![3, 2],
            },
            TensorEntry {
                name: "linear.bias".into(),
                shape: vec![2],
            },
        ]
    }

    fn params() -> Vec<u8> {
        (0..8)
            .flat_map(|i| (i as f32 * 0.5 - 1.0).to_le_bytes())
            .collect()
    }

    #[test]
    fn safetensors_round_trip_keeps_names_shapes_values_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.safetensors");
        let bytes = params();
        let meta = HashMap::from([("round".to_owned(), "4".to_owned())]);
        let size = write_model(&out, ModelFormat::Safetensors, &layout(), &bytes, meta).unwrap();
        let file = std::fs::read(&out).unwrap();
        assert_eq!(size, file.len() as u64);
        let st = SafeTensors::deserialize(&file).unwrap();
        let w = st.tensor("linear.weight").unwrap();
        assert_eq!((w.dtype(), w.shape()), (Dtype::F32, &[3usize, 2][..]));
        assert_eq!(w.data(), &bytes[..24]);
        assert_eq!(st.tensor("linear.bias").unwrap().data(), &bytes[24..]);
        let (_, md) = SafeTensors::read_metadata(&file).unwrap();
        let md = md.metadata().clone().unwrap();
        assert_eq!(md["round"], "4");
        // The flat vector rebuilt in the recorded order hashes to the original.
        let flat: Vec<u8> = md["tensor_order"]
            .split(',')
            .flat_map(|n| st.tensor(n).unwrap().data().to_vec())
            .collect();
        assert_eq!(sha256_hex(&flat), sha256_hex(&bytes));
        // Nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn raw_is_the_bytes_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.f32");
        write_model(&out, ModelFormat::Raw, &layout(), &params(), HashMap::new()).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), params());
    }

    #[test]
    fn a_tampered_model_is_refused() {
        let bytes = params();
        let good = sha256_hex(&bytes);
        verify_sha256(&bytes, &good, 3).unwrap();
        verify_sha256(&bytes, &good.to_uppercase(), 3).unwrap();
        let mut bad = bytes.clone();
        bad[5] ^= 1;
        let e = verify_sha256(&bad, &good, 3).unwrap_err().to_string();
        assert!(
            e.contains("round 3") && e.contains("nothing was written") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn a_layout_that_does_not_fit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.safetensors");
        let short = &params()[..28];
        let e = write_model(
            &out,
            ModelFormat::Safetensors,
            &layout(),
            short,
            HashMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("28 bytes"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let dup = vec![layout()[1].clone(), layout()[1].clone()];
        assert!(check_layout(&dup, 16).is_err());
    }
}
