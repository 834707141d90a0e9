//! Sluice's data plane: a Pingora proxy in front of OpenAI, Anthropic and Gemini that
//! forwards traffic byte for byte and reads it inline (model, usage, tool calls).

pub mod admin;
pub mod approvals;
pub mod catalogue;
pub mod config;
pub mod control_client;
pub mod conversations;
pub mod cork;
pub mod cost;
pub mod drain;
pub mod env_number;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod header_deadline;
pub mod header_names;
pub mod journal;
pub mod keys;
pub mod lease;
pub mod list_prices;
pub mod listen;
pub mod live;
pub mod llm;
pub mod mcp;
pub mod metrics;
pub mod optimise;
pub mod overload;
pub mod passthrough;
pub mod phases;
pub mod quarantine;
pub mod rate;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod spend;
pub mod sse;
pub mod toon;
pub mod trace;
pub mod upstream_pool;
