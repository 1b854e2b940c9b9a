//! Child processes, ports and paths shared by the tests that run real processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::OnceLock;

/// Kills its processes when dropped, so a failing test leaves nothing running.
#[derive(Debug, Default)]
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it from the ephemeral range).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The workspace root (where `examples/`, `docs/` and `README.md` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `flotilla` binary under test.
///
/// Cargo builds a package's binaries before its integration tests and puts both in the same
/// profile directory (`target/<profile>/flotilla`, tests in `target/<profile>/deps/`), but only the
/// `flotilla` crate's own tests see `env!("CARGO_BIN_EXE_flotilla")`; the kit finds it from the
/// running test executable instead (its tests check the two agree).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("path of the test executable");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in target/<profile>/deps");
        let bin = dir.join(format!("flotilla{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.exists(),
            "{} is missing: only the flotilla crate's tests (which make cargo build it) can run it",
            bin.display()
        );
        bin.to_str().expect("UTF-8 target path").to_owned()
    })
}

/// The last line of a successful command's standard output (panics with its stderr otherwise).
pub fn last_line(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}
