//! `make bench`: starts release builds of the router and the checker against the
//! local Redis under a fresh prefix, then measures the round trip caller → router
//! → role → caller of `ping`: requests per second and latency percentiles at
//! several concurrencies, and the Redis commands spent per request.

#![allow(clippy::print_stdout)] // printing figures is this binary's job

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fred::prelude::*;
use pgnm_bus::{Bus, CallSpec, Caller, RedisArgs};
use pgnm_protocol::Role;

/// pgnm-bench: round-trip figures of the running system.
#[derive(Debug, Parser)]
#[command(name = "pgnm-bench")]
struct Cli {
    /// Redis to benchmark against.
    #[arg(long = "redis-url", env = "PGNM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Requests per measured run.
    #[arg(long, env = "PGNM_BENCH_REQUESTS", default_value_t = 20_000)]
    requests: usize,
    /// Concurrencies to measure (requests in flight at once).
    #[arg(long, env = "PGNM_BENCH_CONCURRENCY", value_delimiter = ',', default_value = "1,100")]
    concurrency: Vec<usize>,
    /// PostgreSQL database the benchmark makes its own schema in.
    #[arg(long, env = "PGNM_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// Tasks due every second in the scheduler benchmark.
    #[arg(long, env = "PGNM_BENCH_TASKS", default_value_t = 1000)]
    tasks: usize,
    /// Simulated nodes in the check-round benchmark.
    #[arg(long, env = "PGNM_BENCH_NODES", default_value_t = 10_000)]
    nodes: usize,
    /// Seconds the scheduler benchmark measures.
    #[arg(long, env = "PGNM_BENCH_SCHEDULER_SECS", default_value_t = 10)]
    scheduler_secs: u64,
}

struct Figures {
    requests: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
    redis_commands: u64,
}

impl Figures {
    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let admin = Builder::from_config(Config::from_url(&cli.redis_url)?).build()?;
    admin.init().await.context("connecting to Redis")?;

    // A schema of the benchmark's own, migrated, on the search path of every service.
    let schema = prefix.clone();
    let (pg, connection) =
        tokio_postgres::connect(&cli.database_url, tokio_postgres::NoTls).await.context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    pg.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
    let separator = if cli.database_url.contains('?') { '&' } else { '?' };
    let db_url = format!("{}{separator}options=-c%20search_path%3D{schema}", cli.database_url);
    pgnm_store::Store::new(&pgnm_store::DbArgs::new(db_url.clone()))?.migrate().await?;
    let env = [("PGNM_DATABASE_URL", db_url.as_str()), ("PGNM_CHECK_INTERVAL_MS", "3600000")];

    let mut services = Vec::new();
    for (binary, instance) in [("pgnm-router", "router-1"), ("pgnm-checker", "checker-1")] {
        services.push(spawn(binary, instance, &cli.redis_url, &prefix, &env)?);
    }
    let bus = Bus::connect(&RedisArgs::new(cli.redis_url.clone(), prefix.clone()), "bench").await?;
    let caller = Arc::new(Caller::start(bus, "pgnm-bench").await?);
    wait_until_up(&caller).await?;

    println!("pgnm-bench: ping via the router to the checker, release build, prefix {prefix}");
    println!(
        "{:>11} {:>9} {:>10} {:>9} {:>9} {:>9} {:>12}",
        "concurrency", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "redis cmd/req"
    );
    let outcome = async {
        // Warm up connections and allocators.
        run(&caller, &admin, 10, 2_000).await.context("warming up")?;
        for &c in &cli.concurrency {
            let requests = if c == 1 { cli.requests.min(5_000) } else { cli.requests };
            let f = run(&caller, &admin, c.max(1), requests).await.context("measuring round trips")?;
            println!(
                "{:>11} {:>9} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>12.1}",
                c,
                f.requests,
                f.requests as f64 / f.seconds,
                f.percentile(0.50),
                f.percentile(0.99),
                f.percentile(1.0),
                f.redis_commands as f64 / f.requests as f64,
            );
        }
        services.push(spawn("pgnm-scheduler", "scheduler-1", &cli.redis_url, &prefix, &env)?);
        scheduler(&cli, &caller, &admin, &prefix).await.context("measuring the scheduler")?;
        // Its thousand tasks would load the checker during the next figures.
        if let Some(mut s) = services.pop() {
            let _ = s.start_kill();
            let _ = s.wait().await;
        }
        let checker_pid = services[1].id();
        health(&cli, &caller, &admin, checker_pid).await.context("measuring health checks")?;
        anyhow::Ok(())
    }
    .await;

    if let Ok(caller) = Arc::try_unwrap(caller) {
        caller.close().await;
    }
    for mut child in services {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    delete_keys(&admin, &prefix).await?;
    pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
    outcome
}

/// Measures the scheduler's dispatch delay: from a tick's due time to its
/// command's arrival on the executing role's stream, with `cli.tasks` tasks due
/// every second. The tasks ping the checker, which answers at once; a reader
/// tails the checker's stream and notes when each command arrived.
async fn scheduler(cli: &Cli, caller: &Arc<Caller>, admin: &Client, prefix: &str) -> anyhow::Result<()> {
    let keys = pgnm_protocol::Keys::new(prefix)?;
    let target = keys.inbox(Role::Checker);
    let adds = (0..cli.tasks).map(|i| {
        let caller = caller.clone();
        async move {
            let args = serde_json::json!({"name": format!("bench-{i}"), "command": "ping", "role": "checker",
                "intervalMs": 1000, "timeoutMs": 900});
            let spec = CallSpec::new("taskAdd", Duration::from_secs(30)).role(Role::Scheduler).args(args);
            let reply = caller.call(spec).await?;
            if let Err(e) = reply.result() {
                bail!("taskAdd failed: {} {}", e.code, e.message);
            }
            anyhow::Ok(())
        }
    });
    for r in futures_buffered(adds.collect(), 50).await {
        r?;
    }
    // Let every task reach its steady schedule, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = pgnm_protocol::now_ms();
    let until = from + cli.scheduler_secs * 1000;
    let tail = admin.clone_new();
    tail.init().await?;
    let mut last = format!("{from}-0");
    let mut entries: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> = Vec::new();
    while pgnm_protocol::now_ms() < until + 500 {
        let read: Value = tail.xread(Some(5000), Some(100), target.as_str(), last.as_str()).await?;
        if read.is_null() {
            continue;
        }
        // [[stream, [[id, [field, value, ...]], ...]]]
        let Value::Array(streams) = read else { continue };
        for stream in streams {
            let Value::Array(mut parts) = stream else { continue };
            let Some(Value::Array(batch)) = parts.pop() else { continue };
            for entry in batch {
                let Value::Array(mut e) = entry else { continue };
                let fields = e.pop();
                let Some(id) = e.pop().and_then(|v| v.as_string()) else { continue };
                let mut map = std::collections::HashMap::new();
                if let Some(Value::Array(f)) = fields {
                    let mut it = f.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let (Some(k), Some(v)) = (k.as_string(), v.as_bytes()) {
                            map.insert(k, v.to_vec());
                        }
                    }
                }
                last = id.clone();
                entries.push((id, map));
            }
        }
    }
    let _ = tail.quit().await;
    let mut delays: Vec<i64> = Vec::new();
    for (id, fields) in entries {
        let arrived: i64 = id.split('-').next().unwrap_or("0").parse().unwrap_or(0);
        let Some(m) = fields.get("m") else { continue };
        let Some(request) = pgnm_protocol::decode_header(m).id else { continue };
        let Some(due) = request.rsplit(':').next().and_then(|d| d.parse::<i64>().ok()) else { continue };
        if due >= from as i64 && due < until as i64 {
            delays.push(arrived - due);
        }
    }
    delays.sort_unstable();
    if delays.is_empty() {
        bail!("no scheduled command arrived");
    }
    let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
    let expected = cli.tasks as u64 * (until - from) / 1000;
    println!();
    println!(
        "pgnm-bench: scheduler dispatch delay (due time -> command on the role's stream), {} tasks every 1 s, 1 replica",
        cli.tasks
    );
    println!("{:>10} {:>10} {:>8} {:>8} {:>8}", "dispatched", "expected", "p50 ms", "p99 ms", "max ms");
    println!("{:>10} {:>10} {:>8} {:>8} {:>8}", delays.len(), expected, pct(0.5), pct(0.99), pct(1.0));
    Ok(())
}

/// Runs the futures with at most `limit` at once; returns their outputs.
async fn futures_buffered<F: Future>(futures: Vec<F>, limit: usize) -> Vec<F::Output> {
    use futures::StreamExt as _;
    futures::stream::iter(futures).buffer_unordered(limit).collect().await
}

/// Sends `requests` pings with `concurrency` of them in flight at once.
async fn run(caller: &Arc<Caller>, admin: &Client, concurrency: usize, requests: usize) -> anyhow::Result<Figures> {
    run_command(caller, admin, concurrency, requests, "ping", serde_json::json!({})).await
}

/// Sends `requests` `command`s to the checker with `concurrency` in flight at once.
async fn run_command(
    caller: &Arc<Caller>,
    admin: &Client,
    concurrency: usize,
    requests: usize,
    command: &'static str,
    args: serde_json::Value,
) -> anyhow::Result<Figures> {
    let before = command_calls(admin).await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let caller = caller.clone();
        let next = next.clone();
        let args = args.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let t = Instant::now();
                let spec = CallSpec::new(command, Duration::from_secs(10)).role(Role::Checker).args(args.clone());
                let reply = caller.call(spec).await?;
                if let Err(e) = reply.result() {
                    bail!("{command} failed: {} {}", e.code, e.message);
                }
                latencies.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latencies)
        })
    });
    let mut latencies_us = Vec::with_capacity(requests);
    for worker in futures_join(workers.collect()).await {
        latencies_us.extend(worker??);
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = command_calls(admin).await?;
    latencies_us.sort_unstable();
    // The two INFO calls themselves are not the system's.
    Ok(Figures { requests, seconds, latencies_us, redis_commands: after.saturating_sub(before + 1) })
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

/// Returns the total number of commands Redis has executed (`INFO commandstats`).
async fn command_calls(admin: &Client) -> anyhow::Result<u64> {
    let info: String = admin.info(Some(fred::types::InfoKind::CommandStats)).await?;
    Ok(info.lines().filter_map(|l| l.split_once("calls=")?.1.split(',').next()?.parse::<u64>().ok()).sum())
}

async fn wait_until_up(caller: &Caller) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Ok(reply) = caller.call(CallSpec::new("ping", Duration::from_millis(500)).role(Role::Checker)).await
            && reply.result().is_ok()
        {
            return Ok(());
        }
    }
    bail!("the services did not answer within 50 s")
}

fn spawn(
    binary: &str,
    instance: &str,
    url: &str,
    prefix: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    let path: PathBuf = exe.parent().context("the bench binary has a directory")?.join(binary);
    tokio::process::Command::new(&path)
        .envs(env.iter().copied())
        .env("PGNM_REDIS_URL", url)
        .env("PGNM_PREFIX", prefix)
        .env("PGNM_INSTANCE", instance)
        .env("PGNM_LOG", "warn")
        .env("PGNM_ADMIN_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("starting {} (build it with `cargo build --release --workspace --bins`)", path.display())
        })
}

async fn delete_keys(admin: &Client, prefix: &str) -> anyhow::Result<()> {
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys): (String, Vec<String>) = admin
            .custom(
                fred::cmd!("SCAN"),
                vec![cursor.clone(), "MATCH".into(), format!("*{prefix}*"), "COUNT".into(), "1000".into()],
            )
            .await?;
        if !keys.is_empty() {
            let _: i64 = admin.del(keys).await?;
        }
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}

/// Measures a check round over `cli.nodes` simulated nodes (duration, nodes
/// per second, the checker's peak memory), then
/// `getBestNode` round trips.
async fn health(cli: &Cli, caller: &Arc<Caller>, admin: &Client, checker_pid: Option<u32>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", listener.local_addr()?);
    let names: Vec<String> = (0..cli.nodes).map(|i| format!("sim-{i:05}")).collect();
    let nodes =
        names.iter().map(|n| (n.clone(), pgnm_sim::NodeBehaviour::healthy(pgnm_sim::Family::Evm, "evm"))).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(pgnm_sim::serve(listener, pgnm_sim::Sim::new(nodes), stop.clone()));
    let adds = names.iter().map(|n| {
        let caller = caller.clone();
        let args = serde_json::json!({"type": "evm-dev", "config": {"name": n, "url": format!("{sim_url}/node/{n}")}});
        async move {
            let spec = CallSpec::new("addNode", Duration::from_secs(30)).role(Role::Checker).args(args);
            let reply = caller.call(spec).await?;
            if let Err(e) = reply.result() {
                bail!("addNode failed: {} {}", e.code, e.message);
            }
            anyhow::Ok(())
        }
    });
    for r in futures_buffered(adds.collect(), 100).await {
        r?;
    }
    println!();
    println!(
        "pgnm-bench: check round over {} simulated EVM nodes (one batched JSON-RPC request each), 1 checker replica",
        cli.nodes
    );
    println!("{:>6} {:>9} {:>12} {:>12}", "round", "ms", "nodes/s", "peak RSS MB");
    for round in 1..=3 {
        let spec = CallSpec::new("check", Duration::from_secs(300)).role(Role::Checker).args(serde_json::json!({}));
        let started = Instant::now();
        let reply = caller.call(spec).await?;
        let wall = started.elapsed();
        let data = reply.into_result().map_err(|e| anyhow::anyhow!("check failed: {} {}", e.code, e.message))?;
        let result: pgnm_protocol::health::CheckResult = pgnm_protocol::decode_data(&data)?;
        let peak = checker_pid.and_then(peak_rss_mb).map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into());
        println!(
            "{:>6} {:>9} {:>12.0} {:>12}",
            round,
            result.duration_ms,
            f64::from(result.checked) / wall.as_secs_f64(),
            peak
        );
    }
    println!();
    println!("pgnm-bench: getBestNode via the router ({} nodes of the type in the view)", cli.nodes);
    println!("{:>11} {:>9} {:>10} {:>9} {:>9} {:>9}", "concurrency", "requests", "req/s", "p50 ms", "p99 ms", "max ms");
    let args = serde_json::json!({"type": "evm-dev"});
    run_command(caller, admin, 10, 2_000, "getBestNode", args.clone()).await?;
    for &c in &cli.concurrency {
        let requests = if c == 1 { cli.requests.min(5_000) } else { cli.requests };
        let f = run_command(caller, admin, c.max(1), requests, "getBestNode", args.clone()).await?;
        println!(
            "{:>11} {:>9} {:>10.0} {:>9.3} {:>9.3} {:>9.3}",
            c,
            f.requests,
            f.requests as f64 / f.seconds,
            f.percentile(0.50),
            f.percentile(0.99),
            f.percentile(1.0)
        );
    }
    stop.cancel();
    Ok(())
}

/// Returns a process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
