//! Transport settings: clap flags, each with its `PGNM_*` environment variable.

use std::time::Duration;

/// How to reach Redis and which installation to serve.
#[derive(Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL: `redis://host:port[/db]`, `rediss://` for TLS;
    /// `redis-cluster://host:port[?node=host:port...]` for a cluster;
    /// `redis-sentinel://host:port[/db]?sentinelServiceName=NAME[&node=host:port...]`
    /// through Sentinel (`rediss-cluster`, `rediss-sentinel` with TLS).
    #[arg(long = "redis-url", env = "PGNM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Redis ACL user name (overrides one in the URL).
    #[arg(long = "redis-username", env = "PGNM_REDIS_USERNAME")]
    pub username: Option<String>,
    /// Redis password (overrides one in the URL); set it from a secret, in the environment only.
    #[arg(long = "redis-password", env = "PGNM_REDIS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// PEM file of the CA certificates that sign the Redis server's certificate
    /// (TLS URLs only); without it the Mozilla root certificates are trusted.
    #[arg(long = "redis-ca-file", env = "PGNM_REDIS_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Prefix of every Redis key of this installation, so several can share one Redis.
    #[arg(long, env = "PGNM_PREFIX", default_value = "pgnm")]
    pub prefix: String,
    /// Timeout of one Redis command, in milliseconds.
    #[arg(long = "redis-timeout-ms", env = "PGNM_REDIS_TIMEOUT_MS", default_value_t = 5000)]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, and the URL without its own.
        f.debug_struct("RedisArgs")
            .field("url", &crate::connection::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl RedisArgs {
    /// Returns settings for `url` and `prefix` with default timeouts.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self { url: url.into(), prefix: prefix.into(), timeout_ms: 5000, username: None, password: None, ca_file: None }
    }
}

/// How a consumer-group worker behaves.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Most entries this instance works on at once.
    #[arg(long, env = "PGNM_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Milliseconds an entry may stay unacknowledged by a silent consumer before a
    /// live instance reclaims it (live consumers refresh their claims well before).
    #[arg(long, env = "PGNM_CLAIM_IDLE_MS", default_value_t = 15_000)]
    pub claim_idle_ms: u64,
    /// Deliveries after which an entry is moved to the dead-letter stream.
    #[arg(long, env = "PGNM_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,
    /// Seconds a reply is kept, to answer a repeated request id without executing it again.
    #[arg(long, env = "PGNM_RESULT_TTL_SECS", default_value_t = 600)]
    pub result_ttl_secs: u64,
    /// Largest accepted message, in bytes.
    #[arg(long, env = "PGNM_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,
    /// Milliseconds to wait on shutdown for in-flight work before handing it back.
    #[arg(long, env = "PGNM_DRAIN_TIMEOUT_MS", default_value_t = 20_000)]
    pub drain_timeout_ms: u64,
    /// Milliseconds one blocking read waits for new entries (also the longest delay
    /// before a shutdown is noticed).
    #[arg(long, env = "PGNM_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            claim_idle_ms: 15_000,
            max_deliveries: 5,
            result_ttl_secs: 600,
            max_payload_bytes: 1 << 20,
            drain_timeout_ms: 20_000,
            block_ms: 1000,
        }
    }
}

impl WorkerArgs {
    /// Returns the result-record lifetime.
    pub fn result_ttl(&self) -> Duration {
        Duration::from_secs(self.result_ttl_secs)
    }
}
