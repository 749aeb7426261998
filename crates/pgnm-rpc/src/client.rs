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
        let body = json!({"jsonrpc": dialect.version(), "id": 1, "method": method, "params": params});
        let (status, parsed) = self.post(endpoint, &body, timeout).await?;
        if let Some(Value::Object(map)) = &parsed {
            return answer(map, status);
        }
        if !(200..300).contains(&status) {
            return Err(RpcError::Http(status));
        }
        Err(RpcError::BadResponse("not a JSON-RPC response".to_owned()))
    }

    /// Sends `calls` as one JSON-RPC batch (one HTTP request) and returns each
    /// call's outcome, in order. A node that does not answer batches gets
    /// `BadResponse`, so the caller can fall back to single calls.
    pub async fn batch(
        &self,
        endpoint: &Endpoint,
        dialect: Dialect,
        calls: &[(&str, Value)],
        timeout: Duration,
    ) -> Result<Vec<Result<Value, RpcError>>, RpcError> {
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(id, (method, params))| json!({"jsonrpc": dialect.version(), "id": id, "method": method, "params": params}))
            .collect();
        let (status, parsed) = self.post(endpoint, &Value::Array(body), timeout).await?;
        let Some(Value::Array(items)) = parsed else {
            return Err(match parsed {
                None if !(200..300).contains(&status) => RpcError::Http(status),
                _ => RpcError::BadResponse("the node does not answer JSON-RPC batches".to_owned()),
            });
        };
        let mut out: Vec<Result<Value, RpcError>> =
            calls.iter().map(|_| Err(RpcError::BadResponse("missing from the batch answer".to_owned()))).collect();
        for item in items {
            let Value::Object(map) = item else { continue };
            let Some(id) = map.get("id").and_then(Value::as_u64).map(|i| i as usize).filter(|i| *i < out.len()) else {
                continue;
            };
            out[id] = answer(&map, status);
        }
        Ok(out)
    }

    /// Posts a JSON body; returns the HTTP status and the body parsed as JSON
    /// (if it is). Authentication and rate limits are errors here.
    async fn post(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        timeout: Duration,
    ) -> Result<(u16, Option<Value>), RpcError> {
        let mut request = self.http.post(&endpoint.url).timeout(timeout).json(body);
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
        // method) and a JSON-RPC body: the body is read whatever the status.
        Ok((status, serde_json::from_slice(&bytes).ok()))
    }
}

impl Dialect {
    fn version(self) -> &'static str {
        match self {
            Dialect::V1 => "1.0",
            Dialect::V2 => "2.0",
        }
    }
}

/// Reads one JSON-RPC response object.
fn answer(map: &serde_json::Map<String, Value>, status: u16) -> Result<Value, RpcError> {
    if let Some(error) = map.get("error").filter(|e| !e.is_null()) {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = error.get("message").and_then(Value::as_str).unwrap_or("").chars().take(200).collect();
        return Err(if code == -32601 { RpcError::MethodNotFound } else { RpcError::Rpc { code, message } });
    }
    if !(200..300).contains(&status) {
        return Err(RpcError::Http(status));
    }
    map.get("result").cloned().ok_or_else(|| RpcError::BadResponse("no result".to_owned()))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
