//! The admin server of a real service process: `/healthz`, `/readyz` following
//! Redis and PostgreSQL going away and coming back, and `/metrics` as
//! Prometheus text that moves when commands flow.

use std::collections::BTreeMap;
use std::time::Duration;

use pgnm_protocol::Role;
use pgnm_tests::{Env, Gate, admin_get, call_json, fast_worker, free_port, spawn_binary, wait_admin_status, with_port};

/// Parses Prometheus text format strictly enough to catch a malformed
/// exposition: every sample line is `name{labels} value`, every `# TYPE` names a
/// known type, and samples follow their family's `# TYPE`. Returns each sample
/// (`name{labels}`) with its value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("a metric name");
            let kind = parts.next().expect("a metric type");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad type: {line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unknown comment line: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !name.is_empty(),
            "bad metric name in {line}"
        );
        let labels = &series[name.len()..];
        assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels in {line}");
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(typed.contains(name) || typed.contains(family), "sample before its # TYPE: {line}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn sample(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test]
async fn readyz_follows_redis_and_postgres_and_metrics_move() {
    let mut env = Env::new().await;
    env.start_router("router-1", fast_worker());
    let redis_gate = Gate::open("127.0.0.1:6379").await;
    let pg_gate = Gate::open("127.0.0.1:5432").await;
    let port = free_port();
    let _checker = spawn_binary(
        &env,
        "pgnm-checker",
        &[
            ("PGNM_REDIS_URL", with_port(&env.url, redis_gate.port())),
            ("PGNM_DATABASE_URL", with_port(&env.db.url, pg_gate.port())),
            ("PGNM_ADMIN_ADDR", format!("127.0.0.1:{port}")),
            ("PGNM_INSTANCE", "admin-checker".to_owned()),
            ("PGNM_REDIS_TIMEOUT_MS", "1000".to_owned()),
            ("PGNM_DB_TIMEOUT_MS", "1000".to_owned()),
        ],
    );
    let patience = Duration::from_secs(20);
    assert_eq!(wait_admin_status(port, "/healthz", 200, patience).await.trim(), "ok");
    let ready = wait_admin_status(port, "/readyz", 200, patience).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["checks"]["redis"], "ok");
    assert_eq!(ready["checks"]["postgres"], "ok");

    // Metrics parse, and move when commands flow.
    let before = parse_prometheus(&admin_get(port, "/metrics").await.1);
    let caller = env.caller().await;
    for _ in 0..5 {
        call_json(&caller, Role::Checker, "ping", serde_json::json!({})).await.expect("ping");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let bad = call_json(&caller, Role::Checker, "getBestNode", serde_json::json!({"type": "no-such-type"})).await;
    assert_eq!(bad.unwrap_err().code.as_str(), "BAD_REQUEST");
    let received = |s: &BTreeMap<String, f64>| {
        sample(s, "pgnm_commands_received_total", &["role=\"checker\"", "command=\"ping\""])
    };
    let refused = |s: &BTreeMap<String, f64>| {
        sample(s, "pgnm_commands_answered_total", &["command=\"getBestNode\"", "code=\"BAD_REQUEST\""])
    };
    // A reply is counted just after it is written: poll briefly.
    let (text, after) = loop {
        let (status, text) = admin_get(port, "/metrics").await;
        assert_eq!(status, 200);
        let after = parse_prometheus(&text);
        if refused(&after) >= 1.0 || tokio::time::Instant::now() > deadline {
            break (text, after);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(received(&after) - received(&before), 5.0, "{text}");
    assert_eq!(refused(&after), 1.0, "{text}");
    assert!(sample(&after, "pgnm_command_duration_seconds_count", &["command=\"ping\""]) >= 5.0);
    assert!(text.contains("# HELP pgnm_commands_received_total"));

    // PostgreSQL away: unready, naming it; back: ready.
    pg_gate.cut();
    let body = wait_admin_status(port, "/readyz", 503, patience).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(body["checks"]["postgres"], "ok", "{body}");
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
    assert_eq!(admin_get(port, "/healthz").await.0, 200, "alive while a dependency is away");
    pg_gate.mend();
    wait_admin_status(port, "/readyz", 200, patience).await;

    // Redis away: unready; back: ready (the group is still there).
    redis_gate.cut();
    let body = wait_admin_status(port, "/readyz", 503, patience).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(body["checks"]["redis"], "ok", "{body}");
    redis_gate.mend();
    wait_admin_status(port, "/readyz", 200, patience).await;
    caller.close().await;
    env.finish().await;
}

#[tokio::test]
async fn every_service_serves_its_admin_endpoints() {
    let env = Env::new().await;
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for name in ["pgnm-router", "pgnm-scheduler", "pgnm-jrpc-proxy"] {
        let port = free_port();
        children.push(spawn_binary(&env, name, &[("PGNM_ADMIN_ADDR", format!("127.0.0.1:{port}"))]));
        ports.push((name, port));
    }
    for (name, port) in ports {
        let body = wait_admin_status(port, "/readyz", 200, Duration::from_secs(20)).await;
        assert!(body.contains("\"redis\":\"ok\""), "{name}: {body}");
        let metrics = admin_get(port, "/metrics").await;
        assert_eq!(metrics.0, 200, "{name}");
        parse_prometheus(&metrics.1);
    }
    env.finish().await;
}
