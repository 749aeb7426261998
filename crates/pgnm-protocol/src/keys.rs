//! Redis key names, all under one configurable prefix.
//!
//! A role's keys carry the Redis Cluster hash tag `{<prefix>:<role>}` so that its
//! inbox, dead-letter stream and result records live on one slot.

use crate::command::Role;

/// The key layout of one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// The prefix is not usable in key names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key prefix {prefix:?}: {reason}")]
pub struct KeyError {
    prefix: String,
    reason: &'static str,
}

impl Keys {
    /// Returns the layout for `prefix`: 1 to 64 characters from `[A-Za-z0-9_.-]`,
    /// and `:` to nest installations.
    pub fn new(prefix: &str) -> Result<Self, KeyError> {
        let reason = if prefix.is_empty() {
            "must not be empty"
        } else if prefix.len() > 64 {
            "must be at most 64 characters"
        } else if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || "_.-:".contains(c)) {
            "may contain only letters, digits, '_', '.', '-' and ':'"
        } else {
            return Ok(Keys { prefix: prefix.to_owned() });
        };
        Err(KeyError { prefix: prefix.to_owned(), reason })
    }

    /// Returns the prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Returns the inbox stream of `role`; the router's inbox is the ingress every
    /// caller writes to.
    pub fn inbox(&self, role: Role) -> String {
        format!("{{{}:{}}}:in", self.prefix, role)
    }

    /// Returns the ingress stream: the router's inbox.
    pub fn ingress(&self) -> String {
        self.inbox(Role::Router)
    }

    /// Returns the dead-letter stream of `role`.
    pub fn dead_letter(&self, role: Role) -> String {
        format!("{{{}:{}}}:dlq", self.prefix, role)
    }

    /// Returns the key of the stored reply to request `id` executed by `role`.
    pub fn result(&self, role: Role, id: &str) -> String {
        format!("{{{}:{}}}:res:{}", self.prefix, role, id)
    }

    /// Returns the namespace every reply stream must live in.
    pub fn reply_prefix(&self) -> String {
        format!("{}:reply:", self.prefix)
    }

    /// Returns the reply stream of caller instance `instance`.
    pub fn reply(&self, instance: &str) -> String {
        format!("{}:reply:{}", self.prefix, instance)
    }

    /// Returns the stream of node status changes.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Checks that `stream` is a reply stream of this installation, so that a reply
    /// can never be written into an inbox or another installation's keys.
    pub fn check_reply_stream(&self, stream: &str) -> Result<(), &'static str> {
        let Some(rest) = stream.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_prefix(":reply:")) else {
            return Err("must start with \"<prefix>:reply:\"");
        };
        if rest.is_empty() || stream.len() > 256 {
            return Err("must name a stream of at most 256 bytes under \"<prefix>:reply:\"");
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}') {
            return Err("must not contain whitespace, control characters or braces");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("pgnm").unwrap();
        assert_eq!(k.ingress(), "{pgnm:router}:in");
        assert_eq!(k.inbox(Role::Checker), "{pgnm:checker}:in");
        assert_eq!(k.result(Role::Checker, "r1"), "{pgnm:checker}:res:r1");
        assert_eq!(k.reply("cli-1"), "pgnm:reply:cli-1");
        assert!(k.check_reply_stream("pgnm:reply:cli-1").is_ok());
        assert!(k.check_reply_stream("{pgnm:checker}:in").is_err());
        assert!(k.check_reply_stream("pgnm:reply:").is_err());
        assert!(k.check_reply_stream("other:reply:x").is_err());
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a{b}").is_err());
    }
}
