//! flotilla-proto's integration tests, one test binary (`it`): wire messages, model transfer,
//! uploads and the gRPC service.
//!
//! One binary instead of one per file: each test binary links the whole dependency tree, so fewer
//! binaries build and link faster. Tests are named `file::test` (`cargo test -p flotilla-proto
//! --test it file::`). A test file moved here replaces its `mod common;` with `use crate::common;`.
#![forbid(unsafe_code)]

mod common;
mod compressed_upload;
mod grpc;
mod masked_upload;
mod messages;
mod transfer;
mod upload_properties;
