// A build script makes cargo resolve this crate's build-dependencies: they unify the features of
// crates used by build scripts and proc-macros (host builds).
fn main() {}
