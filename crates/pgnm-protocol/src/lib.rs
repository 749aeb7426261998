//! The pgnm wire protocol: the one place that knows how messages look on Redis.
//!
//! Every message is MessagePack with named fields, carried in the `m` field of a
//! Redis stream entry. Requests travel to the router's ingress stream, are routed
//! to the inbox stream of the role that executes them, and replies travel back to
//! the caller's own reply stream. This crate holds the types, the routing table,
//! the key names and the codec; it does no I/O.

mod codec;
mod command;
mod deadline;
mod envelope;
mod error;
pub mod health;
pub mod jrpc;
mod keys;
pub mod node;
pub mod ping;
pub mod schema;
pub mod task;

pub use codec::{
    DecodeError, ENTRY_FIELD, decode_args, decode_data, decode_header, decode_reply, decode_request, encode_data,
    encode_reply, encode_request,
};
pub use command::{Command, Role, Route, RouteError};
pub use deadline::{Deadline, now_ms};
pub use envelope::{Header, MAX_ID_LEN, PROTOCOL_VERSION, Reply, ReplyBody, Request, RequestId, ValidationError};
pub use error::{ErrorBody, ErrorCode};
pub use keys::{KeyError, Keys};
