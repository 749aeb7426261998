//! The Redis-streams transport every pgnm service uses.
//!
//! - [`worker`]: the consumer-group loop — bounded in-flight work, ack after the
//!   reply is written, reclaim of a dead consumer's entries, claim refreshing for
//!   long work, dead-lettering after too many deliveries, safe trimming, group
//!   re-creation and graceful drain.
//! - [`service`]: a role's command executor on top of the worker — envelope
//!   checks, deadlines, idempotent replies per request id.
//! - [`caller`]: the caller side — send a command and await its reply on a
//!   per-instance reply stream.

mod config;
mod connection;
mod error;
mod resp;

pub mod caller;
pub mod metrics;
pub mod service;
pub mod worker;

pub use caller::{CallError, CallSpec, Caller};
pub use config::{RedisArgs, WorkerArgs};
pub use connection::Bus;
pub use error::BusError;
pub use service::{Call, CommandHandler};
pub use worker::{Delivery, Disposition, EntryHandler};
