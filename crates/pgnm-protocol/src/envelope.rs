//! Request and reply envelopes.

use serde::{Deserialize, Serialize};

use crate::deadline::Deadline;
use crate::error::ErrorBody;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request id, caller identity or trace id a caller may send, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest request id between pgnm's own services: a fanned-out command's
/// sub-requests carry the caller's id followed by `/<role>`.
const MAX_INTERNAL_ID_LEN: usize = MAX_ID_LEN + 16;

/// A request: what a caller puts, MessagePack-encoded, in the `m` field of an
/// entry of the router's ingress stream.
///
/// `A` is the type of the arguments; services decode them as a generic
/// MessagePack value and convert them to the command's typed arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(deserialize = "A: Deserialize<'de>", serialize = "A: Serialize"))]
#[schemars(bound = "", rename = "Request")]
pub struct Request<A = rmpv::Value> {
    /// Protocol version; this build speaks 1.
    pub version: u32,
    /// Unique request id, also the idempotency key: a request id that was already
    /// answered gets the stored answer again instead of a second execution.
    pub id: String,
    /// Command name, exactly as in the command table (`getBestNode`, `taskList`, ...).
    pub command: String,
    /// Optional role that must execute the command (`checker`, `scheduler`, ...);
    /// without one, a command served by several roles goes to all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The command's arguments: a map whose fields each command documents;
    /// absent means no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub args: Option<A>,
    /// Stream the reply goes to, under the installation's `<prefix>:reply:`
    /// namespace; absent means fire-and-forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Absolute deadline in Unix epoch milliseconds.
    pub deadline: Deadline,
    /// The caller's identity (service or user name), for logs and audit.
    pub caller: String,
    /// Optional trace id, carried into every log line about the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A request id: 1 to 128 bytes with no whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Returns the id if it is well-formed.
    pub fn parse(id: &str) -> Result<Self, ValidationError> {
        check_name("id", id, MAX_ID_LEN)?;
        Ok(RequestId(id.to_owned()))
    }

    /// Returns the id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request envelope field that is present but not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The protocol version is not one this build speaks.
    #[error("unsupported protocol version {0} (this service speaks {PROTOCOL_VERSION})")]
    Version(u32),
    /// A name-like field is empty, too long or contains whitespace or control characters.
    #[error("field {field}: {reason}")]
    Field {
        /// The envelope field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > max {
        "is too long (a caller may send at most 128 bytes)"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(ValidationError::Field { field, reason })
}

/// Furthest a deadline may be from now.
pub const MAX_DEADLINE_AHEAD_MS: u64 = 3_600_000;

impl<A> Request<A> {
    /// Checks the envelope fields that typing alone does not: version, id, caller,
    /// trace id and deadline. The reply stream is checked against the key layout
    /// by [`crate::Keys::check_reply_stream`]. `from_caller` applies the limits
    /// of requests from outside (at the ingress) rather than between services.
    pub fn validate(&self, from_caller: bool) -> Result<(), ValidationError> {
        if self.version != PROTOCOL_VERSION {
            return Err(ValidationError::Version(self.version));
        }
        check_name("id", &self.id, if from_caller { MAX_ID_LEN } else { MAX_INTERNAL_ID_LEN })?;
        check_name("caller", &self.caller, MAX_ID_LEN)?;
        if let Some(trace) = &self.trace_id {
            check_name("traceId", trace, MAX_ID_LEN)?;
        }
        if self.deadline.0 == 0 {
            return Err(ValidationError::Field { field: "deadline", reason: "must be a Unix time in milliseconds" });
        }
        // A deadline bounds how long a request may hold a worker and its
        // idempotency marker: one far in the future would hold them for ever.
        if self.deadline.0 > crate::now_ms() + MAX_DEADLINE_AHEAD_MS {
            return Err(ValidationError::Field { field: "deadline", reason: "must be at most one hour from now" });
        }
        Ok(())
    }
}

/// The fields of a request that can be read from a message that is otherwise
/// malformed, so that the error can still reach the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The request id, when it is a string.
    pub id: Option<String>,
    /// The reply stream, when it is a string.
    pub reply_to: Option<String>,
    /// The command name, when it is a string.
    pub command: Option<String>,
}

/// A reply: what a service puts, MessagePack-encoded, in the `m` field of an entry
/// of the caller's reply stream. Exactly one of `data` and `error` is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Reply")]
pub struct Reply {
    /// Protocol version; this build speaks 1.
    pub version: u32,
    /// The request id this reply answers ("" when the request's id could not be read).
    pub id: String,
    /// The instance (pod) that produced the reply.
    pub instance: String,
    /// The command's result, on success; its shape is documented per command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub data: Option<rmpv::Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// Returns the result or the error of the reply.
    pub fn result(&self) -> Result<&rmpv::Value, &ErrorBody> {
        match (&self.error, &self.data) {
            (Some(e), _) => Err(e),
            (None, Some(d)) => Ok(d),
            (None, None) => Ok(&rmpv::Value::Nil),
        }
    }

    /// Consumes the reply, returning its result or its error.
    pub fn into_result(self) -> Result<rmpv::Value, ErrorBody> {
        match (self.error, self.data) {
            (Some(e), _) => Err(e),
            (None, d) => Ok(d.unwrap_or(rmpv::Value::Nil)),
        }
    }
}

/// The outcome carried by a reply being written: the command's result as already
/// encoded MessagePack, or an error.
#[derive(Debug, Clone, Copy)]
pub enum ReplyBody<'a> {
    /// MessagePack bytes of the command's result.
    Data(&'a [u8]),
    /// The error.
    Error(&'a ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(RequestId::parse("abc-123").is_ok());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("a b").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
        assert!(RequestId::parse("ünïcode-is-fine").is_ok());
    }
}
