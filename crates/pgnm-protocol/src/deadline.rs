//! Absolute deadlines, in Unix epoch milliseconds, as carried by every request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Returns the current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An absolute deadline: the Unix time in milliseconds after which nobody waits
/// for the answer any more, so the request is no longer executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Deadline(pub u64);

impl Deadline {
    /// Returns the deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Deadline(now_ms().saturating_add(timeout.as_millis() as u64))
    }

    /// Returns whether the deadline has passed.
    pub fn is_expired(self) -> bool {
        now_ms() >= self.0
    }

    /// Returns the time left, zero once expired.
    pub fn remaining(self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(now_ms()))
    }
}

impl schemars::JsonSchema for Deadline {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Deadline".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "minimum": 1,
            "description": "Absolute deadline in Unix epoch milliseconds; past it the request is not executed and gets DEADLINE_EXCEEDED."
        })
    }
}
