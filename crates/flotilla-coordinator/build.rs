//! Embeds the git commit the coordinator was built from (`flotilla_build_info{git_sha}`):
//! `FLOTILLA_GIT_SHA` from the environment if set, else `git rev-parse --short HEAD`, else
//! `unknown` (a source tarball without git).
//!
//! Also writes the software bill of materials of the build (`$OUT_DIR/sbom.cdx.json`, CycloneDX 1.5
//! JSON, one component per package of the workspace's `Cargo.lock`, read with the `toml` crate) and
//! the build's target, profile and compiler for the evidence pack (`evidence.rs`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FLOTILLA_GIT_SHA");
    let sha = std::env::var("FLOTILLA_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()?;
            let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && !s.is_empty()).then_some(s)
        })
        .unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves (only if the file is there: a missing path would rebuild always).
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        && out.status.success()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        for f in ["HEAD", "logs/HEAD"] {
            let p = std::path::Path::new(&dir).join(f);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    println!("cargo:rustc-env=FLOTILLA_GIT_SHA={sha}");
    build_facts();
    sbom();
}

/// Target triple, profile and compiler version, as `FLOTILLA_BUILD_*` environment variables.
fn build_facts() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unknown".into());
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FLOTILLA_BUILD_TARGET={}", env("TARGET"));
    println!("cargo:rustc-env=FLOTILLA_BUILD_PROFILE={}", env("PROFILE"));
    println!("cargo:rustc-env=FLOTILLA_BUILD_RUSTC={rustc}");
}

/// The nearest `Cargo.lock` above this crate (the workspace's), if any.
fn find_lockfile() -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    dir.ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
}

/// A purl's version: percent-encoded as the purl spec requires (`+` in semver build metadata).
fn purl_version(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Writes `$OUT_DIR/sbom.cdx.json`: CycloneDX 1.5, a component per `[[package]]` of `Cargo.lock`
/// with name, version, purl `pkg:cargo/NAME@VERSION` and the registry's SHA-256 when it has one.
/// Without a lockfile (a crate built outside its workspace) the list is empty and says so.
fn sbom() {
    let lock = find_lockfile();
    let mut components = Vec::new();
    if let Some(path) = &lock {
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(path).expect("Cargo.lock is readable");
        let doc: toml::Table = text.parse().expect("Cargo.lock is TOML");
        let packages = doc
            .get("package")
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default();
        for p in packages {
            let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let (Some(name), Some(version)) = (field("name"), field("version")) else {
                continue;
            };
            let purl = format!("pkg:cargo/{name}@{}", purl_version(&version));
            let mut c = serde_json::json!({
                "type": "library",
                "bom-ref": purl,
                "name": name,
                "version": version,
                "purl": purl,
            });
            if let Some(sum) = field("checksum") {
                c["hashes"] = serde_json::json!([{ "alg": "SHA-256", "content": sum }]);
            }
            match field("source") {
                Some(src) => {
                    c["properties"] = serde_json::json!([{ "name": "cargo:source", "value": src }])
                }
                None => {
                    c["properties"] =
                        serde_json::json!([{ "name": "cargo:source", "value": "workspace" }])
                }
            }
            components.push(c);
        }
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let bom = serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "tools": { "components": [{ "type": "application", "name": "flotilla-coordinator build.rs", "version": version }] },
            "component": {
                "type": "application",
                "bom-ref": format!("pkg:cargo/flotilla@{}", purl_version(&version)),
                "name": "flotilla",
                "version": version,
                "purl": format!("pkg:cargo/flotilla@{}", purl_version(&version)),
            },
            "properties": [{
                "name": "flotilla:source",
                "value": if lock.is_some() { "Cargo.lock of the workspace, at build time" } else { "no Cargo.lock found at build time: no components" },
            }],
        },
        "components": components,
    });
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set"));
    std::fs::write(
        out.join("sbom.cdx.json"),
        serde_json::to_string(&bom).expect("the SBOM is JSON"),
    )
    .expect("writing the SBOM to OUT_DIR");
}
