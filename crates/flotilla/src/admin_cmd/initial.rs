//! `flotilla job submit` of a job whose model is given by `[model] initial`: the file is read
//! relative to the job file's directory and sent with the spec (`multipart/form-data`, parts
//! `spec` and `initial`); the coordinator checks it.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// A model file to send with the spec.
pub(super) struct InitialFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its bytes (a safetensors file; the coordinator validates it).
    pub bytes: Vec<u8>,
}

/// The `[model] initial` file of the job text `text` (read from `job_file`), resolved relative to
/// the job file's directory; `None` for a built-in model. A file that cannot be read is one line
/// naming `model.initial` and the resolved path.
pub(super) fn read(job_file: &Path, text: &str) -> Result<Option<InitialFile>> {
    // A file that does not parse goes to the coordinator as it is, which names the problem.
    let Some(given) = flotilla_spec::read(text)
        .ok()
        .and_then(|d| d.model)
        .and_then(|m| m.initial)
    else {
        return Ok(None);
    };
    let path = resolve(job_file, &given);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(InitialFile { path, bytes })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{}: model.initial: {} does not exist (the path is relative to the job file)",
            job_file.display(),
            path.display()
        ),
        Err(e) => bail!(
            "{}: model.initial: cannot read {}: {e} (the path is relative to the job file)",
            job_file.display(),
            path.display()
        ),
    }
}

/// `given` relative to the directory of `job_file` (an absolute `given` stays as it is).
fn resolve(job_file: &Path, given: &str) -> PathBuf {
    match job_file.parent() {
        Some(dir) => dir.join(given),
        None => PathBuf::from(given),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_relative_to_the_job_file() {
        assert_eq!(
            resolve(Path::new("jobs/a/job.toml"), "init.safetensors"),
            PathBuf::from("jobs/a/init.safetensors")
        );
        assert_eq!(
            resolve(Path::new("job.toml"), "m/init.safetensors"),
            PathBuf::from("m/init.safetensors")
        );
        assert_eq!(
            resolve(Path::new("jobs/job.toml"), "/abs/init.safetensors"),
            PathBuf::from("/abs/init.safetensors")
        );
    }

    #[test]
    fn a_missing_file_names_the_key_and_the_resolved_path() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.toml");
        let text = "[model]\ninitial = \"nope.safetensors\"\n";
        let e = read(&job, text).err().unwrap().to_string();
        assert!(e.contains("model.initial: "), "{e}");
        assert!(
            e.contains(&dir.path().join("nope.safetensors").display().to_string()),
            "{e}"
        );
        assert!(e.contains("the path is relative to the job file"), "{e}");
        std::fs::write(dir.path().join("nope.safetensors"), b"bytes").unwrap();
        let f = read(&job, text).unwrap().unwrap();
        assert_eq!(f.bytes, b"bytes");
        assert!(
            read(&job, "[model]\nkind = \"logreg\"\n")
                .unwrap()
                .is_none()
        );
    }
}
