//! The admin HTTP server every service runs beside its work: `/healthz` (the
//! process is alive), `/readyz` (its dependencies answer) and `/metrics`
//! (Prometheus text format).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio_util::sync::CancellationToken;

/// Where the admin server listens, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl FromStr for AdminAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AdminAddr(None));
        }
        s.parse().map(|a| AdminAddr(Some(a))).map_err(|_| format!("{s:?} is neither host:port nor `off`"))
    }
}

/// Admin server settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`), or `off`.
    #[arg(long = "admin-addr", env = "PGNM_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub addr: AdminAddr,
}

impl AdminArgs {
    /// No admin server (for services embedded in tests).
    pub fn off() -> Self {
        AdminArgs { addr: AdminAddr(None) }
    }

    /// An admin server on `addr`.
    pub fn at(addr: SocketAddr) -> Self {
        AdminArgs { addr: AdminAddr(Some(addr)) }
    }
}

/// One readiness check: resolves to `Err(reason)` while the dependency is not usable.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Longest a readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` asks: named checks, and whether the service is draining.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
    draining: Option<CancellationToken>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("checks", &self.checks.iter().map(|c| c.0).collect::<Vec<_>>()).finish()
    }
}

impl Readiness {
    /// Readiness that turns false once `shutdown` is cancelled (the service is draining).
    pub fn new(shutdown: &CancellationToken) -> Self {
        Readiness { checks: Vec::new(), draining: Some(shutdown.clone()) }
    }

    /// Adds a named check.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// Runs every check at once; returns each name with its outcome.
    pub async fn run(&self) -> Vec<(&'static str, Result<(), String>)> {
        let draining = self.draining.as_ref().is_some_and(CancellationToken::is_cancelled);
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
            };
            (*name, outcome)
        });
        let mut outcomes = futures::future::join_all(runs).await;
        if draining {
            outcomes.push(("shutdown", Err("draining".to_owned())));
        }
        outcomes
    }
}

/// Returns the process's metrics handle, installing the Prometheus recorder on
/// first use (metrics recorded before that are not kept).
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        const SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        // A gauge not set for a minute is dropped (a node removed from the fleet,
        // say); every live gauge is set at least every few seconds.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)
            .expect("the bucket list is not empty")
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(60)));
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // A second recorder in one process (tests embedding several services) is
        // refused; the handle then renders nothing, which only tests see.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: &'static PrometheusHandle,
}

/// A running admin server; dropping it stops the server.
#[derive(Debug)]
pub struct AdminServer {
    /// Where it listens (`None` when it is `off`).
    pub addr: Option<SocketAddr>,
    _stop: tokio_util::sync::DropGuard,
}

/// Starts the admin server (unless it is `off`); it serves until the returned
/// handle is dropped. A port that cannot be bound is an error at start.
pub async fn start(args: &AdminArgs, readiness: Readiness) -> Result<AdminServer, String> {
    let stop = CancellationToken::new();
    let Some(addr) = args.addr.0 else { return Ok(AdminServer { addr: None, _stop: stop.drop_guard() }) };
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("admin server cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("admin server address: {e}"))?;
    let state = AppState { readiness, metrics: metrics() };
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    let (upkeep, stop_serving) = (stop.clone(), stop.clone());
    tokio::spawn(async move {
        // Histograms and idle series are compacted here rather than on each scrape.
        loop {
            tokio::select! {
                _ = upkeep.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => metrics().run_upkeep(),
            }
        }
    });
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(stop_serving.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    tracing::info!(addr = %local, "admin server listening");
    Ok(AdminServer { addr: Some(local), _stop: stop.drop_guard() })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let outcomes = state.readiness.run().await;
    let ready = outcomes.iter().all(|(_, o)| o.is_ok());
    let checks: serde_json::Map<String, serde_json::Value> = outcomes
        .into_iter()
        .map(|(name, o)| (name.to_owned(), serde_json::Value::String(o.err().unwrap_or_else(|| "ok".to_owned()))))
        .collect();
    let body = serde_json::json!({ "ready": ready, "checks": checks });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(CONTENT_TYPE, "application/json")], format!("{body}\n"))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!("off".parse::<AdminAddr>(), Ok(AdminAddr(None)));
        assert_eq!("127.0.0.1:9090".parse::<AdminAddr>(), Ok(AdminAddr(Some(([127, 0, 0, 1], 9090).into()))));
        assert!("9090".parse::<AdminAddr>().is_err());
    }

    #[tokio::test]
    async fn readiness_reports_each_check_and_draining() {
        let shutdown = CancellationToken::new();
        let readiness =
            Readiness::new(&shutdown).check("a", || async { Ok(()) }).check("b", || async { Err("down".to_owned()) });
        let outcomes = readiness.run().await;
        assert_eq!(outcomes, vec![("a", Ok(())), ("b", Err("down".to_owned()))]);
        shutdown.cancel();
        assert_eq!(readiness.run().await.last(), Some(&("shutdown", Err("draining".to_owned()))));
    }
}
