//! JSON-RPC over HTTP (the `direct` transport), with every failure mapped to a
//! distinct, machine-readable reason.

use std::time::Duration;

use serde_json::{Value, json};

use crate::secrets::Endpoint;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The connection was refused or could not be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// HTTP 401 or 403.
    #[error("authentication refused (HTTP {0})")]
    Auth(u16),
    /// HTTP 429.
    #[error("rate limited (HTTP 429)")]
    RateLimited {
        /// `Retry-After`, in seconds, when given.
        retry_after: Option<u64>,
    },
    /// Another HTTP error status.
    #[error("HTTP {0}")]
    Http(u16),
    /// The method does not exist on this node.
    #[error("method not found")]
    MethodNotFound,
    /// A JSON-RPC error.
    #[error("rpc error {code}: {message}")]
    Rpc {
        /// Its code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The answer is not what the protocol promises.
    #[error("bad response: {0}")]
    BadResponse(String),
}

impl RpcError {
    /// Returns the reason recorded for the node.
    pub fn reason(&self) -> &'static str {
        match self {
            RpcError::Timeout => "timeout",
            RpcError::Connect(_) => "unreachable",
            RpcError::Auth(_) => "auth",
            RpcError::RateLimited { .. } => "rate_limited",
            RpcError::Http(s) if *s >= 500 => "http_5xx",
            RpcError::Http(_) => "http_error",
            RpcError::MethodNotFound | RpcError::Rpc { .. } => "rpc_error",
            RpcError::BadResponse(_) => "bad_response",
        }
    }
}

/// The JSON-RPC dialect: bitcoind speaks 1.0, EVM nodes 2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"jsonrpc": "1.0"`.
    V1,
    /// `"jsonrpc": "2.0"`.
    V2,
}

/// An HTTP JSON-RPC client with connection reuse.
#[derive(Debug, Clone)]
pub struct RpcClient {
    http: reqwest::Client,
}

impl Default for RpcClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcClient {
    /// Returns a client; connections are kept alive and reused per host.
    pub fn new() -> RpcClient {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("pgnm-checker/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is valid");
        RpcClient { http }
    }

    /// Calls `method` on `endpoint`, within `timeout`.
    pub async fn call(
        &self,
        endpoint: &Endpoint,
        dialect: Dialect,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let version = match dialect {
            Dialect::V1 => "1.0",
            Dialect::V2 => "2.0",
        };
        let body = json!({"jsonrpc": version, "id": 1, "method": method, "params": params});
        let mut request = self.http.post(&endpoint.url).timeout(timeout).json(&body);
        if let Some((user, pass)) = &endpoint.basic {
            request = request.basic_auth(user, Some(pass));
        }
        for (name, value) in &endpoint.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                RpcError::Timeout
            } else {
                // Never the URL: it may carry credentials.
                RpcError::Connect(root_cause(&e))
            }
        })?;
        let status = response.status().as_u16();
        match status {
            401 | 403 => return Err(RpcError::Auth(status)),
            429 => {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                return Err(RpcError::RateLimited { retry_after });
            }
            _ => {}
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| if e.is_timeout() { RpcError::Timeout } else { RpcError::Connect(root_cause(&e)) })?;
        // bitcoind answers RPC errors with HTTP 500 (or 404 for an unknown
        // method) and a JSON-RPC body: read the body first.
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if let Some(Value::Object(map)) = &parsed {
            if let Some(error) = map.get("error").filter(|e| !e.is_null()) {
                let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
                let message = error.get("message").and_then(Value::as_str).unwrap_or("").chars().take(200).collect();
                return Err(if code == -32601 { RpcError::MethodNotFound } else { RpcError::Rpc { code, message } });
            }
            if (200..300).contains(&status) {
                return map.get("result").cloned().ok_or_else(|| RpcError::BadResponse("no result".to_owned()));
            }
        }
        if !(200..300).contains(&status) {
            return Err(RpcError::Http(status));
        }
        Err(RpcError::BadResponse("not a JSON-RPC response".to_owned()))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
