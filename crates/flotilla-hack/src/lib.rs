//! No code: this crate exists for its `Cargo.toml`, which cargo-hakari generates.
//!
//! It depends on every third-party crate the workspace uses, with the union of the features any
//! build of the workspace turns on (tests and dev-dependencies included). The binary (`flotilla`)
//! and the Python extension (`flotilla-py`) depend on it, so `cargo build --release`,
//! `cargo test --workspace` and `maturin build -p flotilla-py` all resolve each dependency with the
//! same features and share its compiled artifact instead of compiling it again.
//! See `README.md` in this crate for how to regenerate it.
#![forbid(unsafe_code)]
