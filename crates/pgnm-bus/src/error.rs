//! Errors of the transport.

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The Redis settings cannot be used.
    #[error("invalid redis configuration: {0}")]
    Config(String),
    /// Redis could not be reached within the connection timeout.
    #[error("cannot connect to redis at {url}")]
    Connect {
        /// The server, with any password removed.
        url: String,
        /// The cause.
        #[source]
        source: fred::error::Error,
    },
    /// Redis refused the credentials (or asked for some and none were given).
    #[error("redis at {url} refused the credentials (check PGNM_REDIS_USERNAME / PGNM_REDIS_PASSWORD): {reason}")]
    Auth {
        /// The server, with any password removed.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// A Redis command failed.
    #[error("redis {command} failed")]
    Redis {
        /// The command.
        command: &'static str,
        /// The cause.
        #[source]
        source: fred::error::Error,
    },
    /// Redis answered something this code does not expect.
    #[error("unexpected redis reply to {0}")]
    Reply(&'static str),
}

impl BusError {
    /// Returns a closure that wraps a fred error as a failure of `command`.
    pub(crate) fn redis(command: &'static str) -> impl FnOnce(fred::error::Error) -> BusError {
        move |source| BusError::Redis { command, source }
    }

    /// Returns whether the failure is a missing consumer group (after a Redis restart).
    pub(crate) fn is_no_group(&self) -> bool {
        matches!(self, BusError::Redis { source, .. } if source.details().contains("NOGROUP"))
    }
}
