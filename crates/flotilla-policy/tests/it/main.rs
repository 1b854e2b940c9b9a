//! flotilla-policy's integration tests, one binary (`it`): the shipped example policies.
#![forbid(unsafe_code)]

mod examples;
