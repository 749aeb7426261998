//! `ping`: a round trip through the bus, answered by every role.

use serde::{Deserialize, Serialize};

/// Longest accepted `echo`, in bytes.
pub const MAX_ECHO_LEN: usize = 1024;
/// Longest accepted `delayMs`.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Arguments of `ping`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PingArgs {
    /// Text returned as it is in the result (at most 1024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub echo: Option<String>,
    /// Milliseconds the executing role waits before answering (at most 60000),
    /// to exercise deadlines and long-running work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 60000))]
    pub delay_ms: Option<u64>,
}

impl PingArgs {
    /// Checks the ranges that the types do not.
    pub fn validate(&self) -> Result<(), String> {
        if self.echo.as_ref().is_some_and(|e| e.len() > MAX_ECHO_LEN) {
            return Err(format!("args.echo: must be at most {MAX_ECHO_LEN} bytes"));
        }
        if self.delay_ms.is_some_and(|d| d > MAX_DELAY_MS) {
            return Err(format!("args.delayMs: must be at most {MAX_DELAY_MS}"));
        }
        Ok(())
    }
}

/// Result of `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingResult {
    /// The role that answered.
    pub role: crate::Role,
    /// The instance that answered.
    pub instance: String,
    /// The request's `echo`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<String>,
    /// The answering instance's clock, Unix epoch milliseconds.
    pub time: u64,
}
