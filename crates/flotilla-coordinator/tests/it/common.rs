//! The coordinator's harness lives in the test kit.

pub use flotilla_testkit::coordinator::*;
