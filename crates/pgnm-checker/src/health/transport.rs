//! How a probe reaches its node: `direct` HTTP JSON-RPC from the checker, or
//! through `pgnm-jrpc-proxy` over the bus.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pgnm_bus::{CallError, CallSpec, Caller};
use pgnm_protocol::jrpc::{JrpcCallArgs, JrpcCallResult};
use pgnm_protocol::node::NodeSpec;
use pgnm_protocol::{ErrorCode, Role};
use pgnm_rpc::{Dialect, Endpoint, RpcClient, RpcError};
use serde_json::Value;

/// A boxed call future.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send + 'a>>;

/// A boxed batch future: each call's outcome, in order.
pub type BatchFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Result<Value, RpcError>>, RpcError>> + Send + 'a>>;

/// One node's JSON-RPC.
pub trait JsonRpc: Send + Sync {
    /// Calls `method` within `timeout`.
    fn call<'a>(&'a self, dialect: Dialect, method: &'a str, params: Value, timeout: Duration) -> CallFuture<'a>;

    /// Makes several calls; by default one request each, at once.
    fn batch<'a>(&'a self, dialect: Dialect, calls: Vec<(&'static str, Value)>, timeout: Duration) -> BatchFuture<'a> {
        Box::pin(async move {
            let calls = calls.into_iter().map(|(m, p)| self.call(dialect, m, p, timeout));
            Ok(futures::future::join_all(calls).await)
        })
    }
}

/// HTTP from the checker, secrets resolved here.
#[derive(Debug)]
pub struct Direct<'a> {
    /// The shared client.
    pub client: &'a RpcClient,
    /// The node's endpoint, resolved.
    pub endpoint: Endpoint,
}

impl JsonRpc for Direct<'_> {
    fn call<'a>(&'a self, dialect: Dialect, method: &'a str, params: Value, timeout: Duration) -> CallFuture<'a> {
        Box::pin(self.client.call(&self.endpoint, dialect, method, params, timeout))
    }

    /// One HTTP request for all the calls; a node that refuses batches gets
    /// them one by one.
    fn batch<'a>(&'a self, dialect: Dialect, calls: Vec<(&'static str, Value)>, timeout: Duration) -> BatchFuture<'a> {
        Box::pin(async move {
            match self.client.batch(&self.endpoint, dialect, &calls, timeout).await {
                Err(RpcError::BadResponse(_) | RpcError::Http(400 | 404 | 405 | 415 | 501)) => {
                    let calls =
                        calls.into_iter().map(|(m, p)| self.client.call(&self.endpoint, dialect, m, p, timeout));
                    Ok(futures::future::join_all(calls).await)
                }
                other => other,
            }
        })
    }
}

/// Through `pgnm-jrpc-proxy`: the configuration travels with its `${VAR}`
/// references unresolved; the proxy resolves them from its own environment.
pub struct ViaProxy<'a> {
    /// The checker's caller.
    pub caller: &'a Caller,
    /// The node's configuration.
    pub spec: &'a NodeSpec,
}

impl std::fmt::Debug for ViaProxy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViaProxy").field("node", &self.spec.name).finish_non_exhaustive()
    }
}

impl JsonRpc for ViaProxy<'_> {
    fn call<'a>(&'a self, dialect: Dialect, method: &'a str, params: Value, timeout: Duration) -> CallFuture<'a> {
        Box::pin(async move {
            let args = JrpcCallArgs {
                url: self.spec.url.clone(),
                auth: self.spec.auth.clone(),
                headers: self.spec.headers.clone(),
                jsonrpc: if dialect == Dialect::V1 { "1.0" } else { "2.0" }.to_owned(),
                method: method.to_owned(),
                params,
                timeout_ms: timeout.as_millis() as u64,
            };
            // The bus hop gets a second on top of the node's own timeout.
            let spec = CallSpec::new("jrpcCall", timeout + Duration::from_secs(1)).role(Role::JrpcProxy).args(args);
            let reply = match self.caller.call(spec).await {
                Ok(r) => r,
                Err(CallError::DeadlineExceeded { .. }) => return Err(RpcError::Timeout),
                Err(e) => return Err(RpcError::Connect(format!("jrpc-proxy: {e}"))),
            };
            match reply.into_result() {
                Ok(data) => pgnm_protocol::decode_data::<JrpcCallResult>(&data)
                    .map(|r| r.result)
                    .map_err(|e| RpcError::BadResponse(format!("jrpc-proxy reply: {e}"))),
                Err(e) if e.code == ErrorCode::DeadlineExceeded => Err(RpcError::Timeout),
                Err(e) if e.code == ErrorCode::Unavailable => Err(from_details(e.details.as_ref(), &e.message)),
                Err(e) => Err(RpcError::Connect(format!("jrpc-proxy: {}: {}", e.code, e.message))),
            }
        })
    }
}

/// Rebuilds the proxy's error from its details.
fn from_details(details: Option<&rmpv::Value>, message: &str) -> RpcError {
    let field = |name: &str| {
        details
            .and_then(|d| d.as_map())
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v.clone()))
    };
    let reason = field("reason").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let status = field("httpStatus").and_then(|v| v.as_u64()).unwrap_or(0) as u16;
    match reason.as_str() {
        "timeout" => RpcError::Timeout,
        "auth" => RpcError::Auth(status),
        "rate_limited" => RpcError::RateLimited { retry_after: field("retryAfter").and_then(|v| v.as_u64()) },
        "http_5xx" | "http_error" => RpcError::Http(status),
        "method_not_found" => RpcError::MethodNotFound,
        "rpc_error" => {
            RpcError::Rpc { code: field("rpcCode").and_then(|v| v.as_i64()).unwrap_or(0), message: message.to_owned() }
        }
        "bad_response" => RpcError::BadResponse(message.to_owned()),
        _ => RpcError::Connect(message.to_owned()),
    }
}
