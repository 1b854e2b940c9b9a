//! The process harness lives in the test kit.

pub use flotilla_testkit::federation::*;
pub use flotilla_testkit::process::{Procs, bin, free_port, last_line, workspace_root};

/// The kit finds the binary from the test executable's path; cargo's own answer must agree.
#[test]
fn the_kit_runs_the_binary_cargo_built() {
    let cargo = std::path::Path::new(env!("CARGO_BIN_EXE_flotilla"));
    assert_eq!(
        std::path::Path::new(bin()).canonicalize().unwrap(),
        cargo.canonicalize().unwrap()
    );
}
