//! Mock providers written from the providers' public wire documentation, and the load
//! generator used by `docs/benchmarks.md`.

pub mod client;
pub mod compare;
pub mod loadgen;
pub mod mcp;
pub mod mock;
pub mod scenario;
mod worker;
