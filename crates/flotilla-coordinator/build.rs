//! Embeds the git commit the coordinator was built from (`flotilla_build_info{git_sha}`):
//! `FLOTILLA_GIT_SHA` from the environment if set, else `git rev-parse --short HEAD`, else
//! `unknown` (a source tarball without git).

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
}
