//! The closed set of error codes and the error body carried by a failed reply.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a command failed. The set is closed and documented in `proto-schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request or its arguments are malformed; sending it again will not help.
    BadRequest,
    /// The command name is unknown, or the named role does not serve it.
    UnknownCommand,
    /// The object the command names does not exist.
    NotFound,
    /// The command conflicts with the current state (duplicate, stale revision).
    Conflict,
    /// The deployment does not allow what the request asks (revealing credentials).
    Forbidden,
    /// The request's deadline passed before it could be answered.
    DeadlineExceeded,
    /// No node of the requested type is eligible right now.
    NoHealthyNode,
    /// A dependency (Redis, PostgreSQL, a node) is unavailable; retry later.
    Unavailable,
    /// The message is larger than the configured limit.
    PayloadTooLarge,
    /// The message failed too many deliveries and was moved to the dead-letter stream.
    DeadLettered,
    /// A bug or an unexpected failure inside pgnm.
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownCommand,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Forbidden,
        ErrorCode::DeadlineExceeded,
        ErrorCode::NoHealthyNode,
        ErrorCode::Unavailable,
        ErrorCode::PayloadTooLarge,
        ErrorCode::DeadLettered,
        ErrorCode::Internal,
    ];

    /// Returns the code as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::NoHealthyNode => "NO_HEALTHY_NODE",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::DeadLettered => "DEAD_LETTERED",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Returns whether sending the same request again (with a fresh deadline) may succeed.
    pub const fn default_retryable(self) -> bool {
        matches!(self, ErrorCode::DeadlineExceeded | ErrorCode::NoHealthyNode | ErrorCode::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of a failed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// One of the documented codes.
    pub code: ErrorCode,
    /// A human-readable message; it names the offending field where there is one.
    pub message: String,
    /// Whether the same request may succeed if sent again with a fresh deadline.
    pub retryable: bool,
    /// Structured details, where the code defines them (for example each node's
    /// reason with `NO_HEALTHY_NODE`, or each role's reply of a fanned-out command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub details: Option<rmpv::Value>,
}

impl ErrorBody {
    /// Returns an error with the code's default retryability and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retryable: code.default_retryable(), details: None }
    }

    /// Returns the error with `details` attached.
    pub fn with_details(mut self, details: rmpv::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Shorthand for a `BAD_REQUEST`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// Shorthand for an `INTERNAL` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}
