//! flotilla-data's integration tests, one test binary (`it`) like every crate's: partitioning
//! properties.
#![forbid(unsafe_code)]

mod partition_props;
