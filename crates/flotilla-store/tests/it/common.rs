//! The store's harness lives in the test kit.

pub use flotilla_testkit::both_backends;
pub use flotilla_testkit::store::{Kind, TestDb, now_ms};
