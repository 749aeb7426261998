//! Connecting to Redis, and the handle every part of the transport shares.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use pgnm_protocol::Keys;

use crate::config::RedisArgs;
use crate::error::BusError;
use crate::resp;

/// A connection to one installation's Redis keys, on behalf of one instance.
///
/// Cloning is cheap and shares the connection. Commands from concurrent tasks are
/// pipelined on it; blocking reads get their own connection from
/// [`Bus::blocking_client`].
#[derive(Clone)]
pub struct Bus {
    client: Client,
    keys: Keys,
    instance: Arc<str>,
    timeout: Duration,
    url: Arc<str>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("prefix", &self.keys.prefix()).field("instance", &self.instance).finish()
    }
}

/// Returns `url` with any password replaced, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Bus {
    /// Connects to Redis; fails at once (within the connection timeout) when the
    /// settings are invalid or the server does not answer.
    pub async fn connect(args: &RedisArgs, instance: &str) -> Result<Bus, BusError> {
        let keys = Keys::new(&args.prefix).map_err(|e| BusError::Config(e.to_string()))?;
        if instance.is_empty() || instance.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BusError::Config(format!("invalid instance name {instance:?}")));
        }
        let timeout = Duration::from_millis(args.timeout_ms.max(1));
        let config = config(args)?;
        let client = build(config, timeout)?;
        let url: Arc<str> = redact_url(&args.url).into();
        init(&client, &url, timeout).await?;
        Ok(Bus { client, keys, instance: instance.into(), timeout, url })
    }

    /// Returns a new, separate connection with the same settings, for one blocking
    /// reader: a blocked connection would queue every other command behind it.
    pub async fn blocking_client(&self, block: Duration) -> Result<Client, BusError> {
        let config = self.client.client_config();
        let client = build(config, self.timeout + block)?;
        init(&client, &self.url, self.timeout).await?;
        Ok(client)
    }

    /// Returns the shared (non-blocking) client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Returns the key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Returns this instance's name (the consumer name in every group it joins).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Returns the timeout of one command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Returns whether Redis answers a `PING` right now.
    pub async fn is_reachable(&self) -> bool {
        self.client.ping::<()>(None).await.is_ok()
    }

    /// Returns a readiness check (see [`pgnm_runtime::Readiness`]) that Redis
    /// answers and `group` exists on `stream`.
    pub fn group_check(
        &self,
        stream: String,
        group: &'static str,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
        let bus = self.clone();
        move || {
            let (bus, stream) = (bus.clone(), stream.clone());
            Box::pin(async move { bus.group_ready(&stream, group).await })
        }
    }

    /// Readiness: Redis answers and `group` exists on `stream`.
    pub async fn group_ready(&self, stream: &str, group: &str) -> Result<(), String> {
        let args = vec![Value::from("GROUPS"), Value::from(stream)];
        let reply =
            resp::run(&self.client, "XINFO", stream, args, false).await.map_err(|e| pgnm_runtime::error_chain(&e))?;
        let found = resp::records(reply)
            .into_iter()
            .any(|g| g.into_iter().any(|(k, v)| k == "name" && resp::string(v).as_deref() == Some(group)));
        if found { Ok(()) } else { Err(format!("consumer group {group} missing on {stream}")) }
    }
}

/// URL schemes accepted: single server, cluster and Sentinel, each plain or TLS.
const SCHEMES: [&str; 6] = ["redis", "rediss", "redis-cluster", "rediss-cluster", "redis-sentinel", "rediss-sentinel"];

/// Reads the URL and applies the credentials and TLS settings given beside it.
fn config(args: &RedisArgs) -> Result<Config, BusError> {
    let invalid = |message: String| BusError::Config(format!("redis url {}: {message}", redact_url(&args.url)));
    let scheme = args.url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !SCHEMES.contains(&scheme) {
        return Err(invalid(format!("the scheme must be one of {}", SCHEMES.join(", "))));
    }
    let mut config = Config::from_url(&args.url).map_err(|e| invalid(e.details().to_owned()))?;
    if let Some(user) = &args.username {
        config.username = Some(user.clone());
    }
    if let Some(password) = &args.password {
        if password.is_empty() {
            return Err(invalid("PGNM_REDIS_PASSWORD is set but empty".to_owned()));
        }
        config.password = Some(password.clone());
    }
    match (&mut config.tls, &args.ca_file) {
        (Some(tls), ca_file) => {
            let rustls = pgnm_runtime::tls::client_config(ca_file.as_deref()).map_err(invalid)?;
            tls.connector = fred::types::config::TlsConnector::from(rustls);
        }
        (None, Some(_)) => {
            return Err(invalid("a CA file is set (PGNM_REDIS_CA_FILE) but the URL does not use TLS".to_owned()));
        }
        (None, None) => {}
    }
    Ok(config)
}

/// Returns whether the error is Redis refusing our credentials (retrying cannot help).
fn is_auth_error(e: &fred::error::Error) -> bool {
    let details = e.details();
    matches!(e.kind(), fred::error::ErrorKind::Auth)
        || ["NOAUTH", "WRONGPASS", "NOPERM", "invalid password", "invalid username-password"]
            .iter()
            .any(|m| details.contains(m))
}

fn build(config: Config, timeout: Duration) -> Result<Client, BusError> {
    let perf = PerformanceConfig { default_command_timeout: timeout, ..Default::default() };
    let conn = ConnectionConfig {
        connection_timeout: Duration::from_secs(3),
        internal_command_timeout: Duration::from_secs(3),
        max_command_attempts: 3,
        ..Default::default()
    };
    // Reconnect for ever, backing off from 50 ms to 2 s: Redis restarts are survived.
    let policy = ReconnectPolicy::new_exponential(0, 50, 2_000, 2);
    Builder::from_config(config)
        .set_performance_config(perf)
        .set_connection_config(conn)
        .set_policy(policy)
        .build()
        .map_err(|e| BusError::Config(e.details().to_owned()))
}

async fn init(client: &Client, url: &str, timeout: Duration) -> Result<(), BusError> {
    let connect = async {
        client.init().await?;
        client.ping::<()>(None).await
    };
    match tokio::time::timeout(timeout.max(Duration::from_secs(3)), connect).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => {
            // A client that gave up is stopped already; quitting it again only warns.
            if client.state() != fred::types::ClientState::Disconnected {
                let _ = client.quit().await;
            }
            if is_auth_error(&source) {
                return Err(BusError::Auth { url: url.to_owned(), reason: source.details().to_owned() });
            }
            Err(BusError::Connect { url: url.to_owned(), source })
        }
        Err(_) => {
            let _ = client.quit().await;
            Err(BusError::Connect {
                url: url.to_owned(),
                source: fred::error::Error::new(fred::error::ErrorKind::Timeout, "no answer within the timeout"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn debug_of_the_settings_never_shows_a_password() {
        let mut args = crate::RedisArgs::new("redis://u:in-url@h:1", "p");
        args.password = Some("from-env".into());
        let shown = format!("{args:?}");
        assert!(!shown.contains("in-url") && !shown.contains("from-env"), "{shown}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
