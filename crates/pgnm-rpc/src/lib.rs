//! Calling chain nodes: the JSON-RPC client of the `direct` transport (used by
//! the checker and by `pgnm-jrpc-proxy`), and the `${VAR}` secrets of a node's
//! configuration, resolved only to make a call and redacted everywhere else.

pub mod client;
pub mod secrets;

pub use client::{Dialect, RpcClient, RpcError};
pub use secrets::{Endpoint, redact_url, resolve_endpoint};
