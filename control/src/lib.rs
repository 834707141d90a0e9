//! Sluice's control plane: the admin API (axum) over SQLite or PostgreSQL (sqlx), which
//! compiles the database into versioned snapshots for every proxy and collects their usage.
//! Proxies never touch the database; nothing here is on a request's path.

pub mod auth;
pub mod crypto;
pub mod dev;
pub mod documents;
pub mod error;
pub mod extract;
pub mod identity;
pub mod leases;
pub mod mcp_tools;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod routes;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod statistics;
pub mod store;
pub mod usage;
mod usage_llm;
pub mod usage_mcp;
