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

    let mut services = Vec::new();
    for (binary, instance) in [("pgnm-router", "router-1"), ("pgnm-checker", "checker-1")] {
        services.push(spawn(binary, instance, &cli.redis_url, &prefix)?);
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
        run(&caller, &admin, 10, 2_000).await?;
        for &c in &cli.concurrency {
            let requests = if c == 1 { cli.requests.min(5_000) } else { cli.requests };
            let f = run(&caller, &admin, c.max(1), requests).await?;
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
    outcome
}

/// Sends `requests` pings with `concurrency` of them in flight at once.
async fn run(caller: &Arc<Caller>, admin: &Client, concurrency: usize, requests: usize) -> anyhow::Result<Figures> {
    let before = command_calls(admin).await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let caller = caller.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let t = Instant::now();
                let reply = caller.call(CallSpec::new("ping", Duration::from_secs(10)).role(Role::Checker)).await?;
                if let Err(e) = reply.result() {
                    bail!("ping failed: {} {}", e.code, e.message);
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

fn spawn(binary: &str, instance: &str, url: &str, prefix: &str) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    let path: PathBuf = exe.parent().context("the bench binary has a directory")?.join(binary);
    tokio::process::Command::new(&path)
        .env("PGNM_REDIS_URL", url)
        .env("PGNM_PREFIX", prefix)
        .env("PGNM_INSTANCE", instance)
        .env("PGNM_LOG", "warn")
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
