//! `pgnm-chaos` (`make chaos`): the whole system under faults, on loopback.
//!
//! Two replicas each of router, checker and scheduler run as real processes
//! against a Redis of their own (append-only, fsync always, so a crash loses no
//! accepted entry) and PostgreSQL reached through a gate the harness can cut. A
//! load generator sends a mix of commands (mostly `getBestNode`, some
//! `updateNode` and `check`), each with a unique request id, while the harness
//! `kill -9`s a random replica every few seconds and starts it again (as
//! Kubernetes would), restarts Redis once (SIGKILL), and takes PostgreSQL away
//! for a while. Every reply is read off the harness's own reply stream, so each
//! one is counted. The report: requests sent, answered ok, answered with an error
//! (by code), answered late, never answered, answered twice, and the longest
//! gap between successful `getBestNode` answers. Exit status 1 when any accepted
//! request was never answered or answered twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fred::prelude::*;
use pgnm_protocol::{Deadline, PROTOCOL_VERSION, Request, Role, decode_reply, encode_request};
use pgnm_tests::{Env, Gate, OwnRedis, spawn_binary, with_port};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

/// pgnm-chaos: faults under load; every request must be answered exactly once.
#[derive(Debug, Parser)]
#[command(name = "pgnm-chaos")]
struct Cli {
    /// How long the load and the faults last, in seconds.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Requests per second sent (open loop: sent whether or not earlier ones were answered).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate: u64,
    /// Milliseconds between two replica kills (at least 1,500: a killed replica is
    /// started again a second later).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1500..))]
    kill_every_ms: u64,
    /// Deadline of each request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// Simulated nodes in the fleet (1 to 10,000).
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    nodes: usize,
    /// Seed of the fault schedule and the command mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A small deterministic generator (xorshift), enough for a fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What was sent, and when its answer was due.
struct Sent {
    command: &'static str,
    deadline: Instant,
}

/// One reply as received.
struct Received {
    at: Instant,
    code: String,
    message: String,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Ledger {
    sent: HashMap<String, Sent>,
    refused: u64,
    replies: HashMap<String, Vec<Received>>,
    ok_best: Vec<Instant>,
    revisions: HashMap<String, i64>,
}

type Shared = Arc<Mutex<Ledger>>;

/// A service process the harness kills and starts again.
struct Replica {
    binary: &'static str,
    instance: String,
    child: Option<Child>,
    /// When a replica that exited by itself is started again (as Kubernetes
    /// restarts a failed container).
    restart_at: Option<Instant>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("pgnm-chaos: {e:#}");
            }
            std::process::exit(2)
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> anyhow::Result<bool> {
    // The harness's own clients see every fault; only errors are worth printing.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned()))
        .with_writer(std::io::stderr)
        .try_init();
    let dir = std::env::temp_dir().join(format!("pgnm-chaos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let dir_arg = dir.display().to_string();
    let mut redis =
        OwnRedis::start_with(&["--appendonly", "yes", "--appendfsync", "always", "--dir", &dir_arg], false).await;
    let env = Env::with_url(redis.url()).await;
    let pg_target = format!("127.0.0.1:{}", pg_port(&env.db.url));
    let pg_gate = Gate::open(&pg_target).await;
    let db_url = with_port(&env.db.url, pg_gate.port());

    // The fleet: simulated EVM nodes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", listener.local_addr()?);
    let names: Vec<String> = (0..cli.nodes).map(|i| format!("chaos-{i:03}")).collect();
    let behaviours =
        names.iter().map(|n| (n.clone(), pgnm_sim::NodeBehaviour::healthy(pgnm_sim::Family::Evm, "evm"))).collect();
    let stop_sim = CancellationToken::new();
    tokio::spawn(pgnm_sim::serve(listener, pgnm_sim::Sim::new(behaviours), stop_sim.clone()));

    let common = vec![
        ("PGNM_DATABASE_URL", db_url.clone()),
        ("PGNM_CLAIM_IDLE_MS", "1500".to_owned()),
        ("PGNM_DRAIN_TIMEOUT_MS", "2000".to_owned()),
        ("PGNM_BLOCK_MS", "200".to_owned()),
        ("PGNM_CHECK_INTERVAL_MS", "1000".to_owned()),
        ("PGNM_CHECK_SHARDS", "2".to_owned()),
        ("PGNM_SCHEDULER_LEASE_MS", "3000".to_owned()),
        ("PGNM_DB_TIMEOUT_MS", "1000".to_owned()),
        ("PGNM_REDIS_TIMEOUT_MS", "2000".to_owned()),
        ("PGNM_LOG", "error".to_owned()),
    ];
    let mut replicas: Vec<Replica> = ["pgnm-router", "pgnm-checker", "pgnm-scheduler"]
        .iter()
        .flat_map(|b| (1..=2).map(move |i| (*b, i)))
        .map(|(binary, i)| Replica { binary, instance: format!("{}-{i}", &binary[5..]), child: None, restart_at: None })
        .collect();
    for r in &mut replicas {
        start(&env, r, &common);
    }
    env.wait_for_groups().await;
    for role in [Role::Checker, Role::Scheduler] {
        env.wait_for_group(role).await;
    }

    // The harness's own reply stream and reader.
    let replies = env.raw_reply_stream("chaos").await;
    // Kept for the whole run (a reply stream normally expires with its caller).
    let _: bool = env.redis.persist(replies.as_str()).await?;
    let ledger: Shared = Arc::default();
    let stop_reader = CancellationToken::new();
    let reader = tokio::spawn(read_replies(redis.url(), replies.clone(), ledger.clone(), stop_reader.clone()));

    // Register the fleet (with replies, so that updates know each revision).
    let caller = env.caller().await;
    for n in &names {
        let args = serde_json::json!({"type": "evm-dev", "config": {"name": n, "url": format!("{sim_url}/node/{n}")}});
        let spec = pgnm_bus::CallSpec::new("addNode", Duration::from_secs(30)).role(Role::Checker).args(args);
        let data = caller.call(spec).await?.into_result().map_err(|e| anyhow::anyhow!("addNode: {}", e.message))?;
        let node: serde_json::Value = pgnm_protocol::decode_data(&data)?;
        ledger.lock().unwrap().revisions.insert(n.clone(), node["revision"].as_i64().unwrap_or(1));
    }
    caller.close().await;
    // Wait until the fleet has a best node.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let caller = env.caller().await;
        let spec = pgnm_bus::CallSpec::new("getBestNode", Duration::from_secs(5))
            .role(Role::Checker)
            .args(serde_json::json!({"type": "evm-dev"}));
        let ok = caller.call(spec).await.is_ok_and(|r| r.error.is_none());
        caller.close().await;
        if ok {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "the fleet never got a best node");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "pgnm-chaos: {} s, {} req/s, 2 routers + 2 checkers + 2 schedulers, {} nodes, a kill every {} ms, seed {}",
        cli.duration_secs, cli.rate, cli.nodes, cli.kill_every_ms, cli.seed
    );

    // Load.
    let started = Instant::now();
    let duration = Duration::from_secs(cli.duration_secs);
    let stop_load = CancellationToken::new();
    let load = tokio::spawn(generate(
        env.redis.clone(),
        env.keys.ingress(),
        replies.clone(),
        names.clone(),
        ledger.clone(),
        cli.rate.max(1),
        Duration::from_millis(cli.deadline_ms),
        cli.seed,
        stop_load.clone(),
    ));

    // Faults.
    let mut rng = Rng(cli.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut events: Vec<String> = Vec::new();
    let redis_restart_at = duration / 3;
    let pg_down_at = duration / 2;
    let pg_down_for = (duration / 6).clamp(Duration::from_secs(3), Duration::from_secs(20));
    let (mut redis_restarted, mut pg_cut, mut pg_mended) = (false, false, false);
    let mut next_kill = Duration::from_millis(cli.kill_every_ms);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = started.elapsed();
        // Supervision: a replica that exited by itself (a checker or scheduler
        // starting while PostgreSQL is away exits at once) is started again a
        // second later, and again, until it stays up.
        for r in &mut replicas {
            let exited = match r.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                r.child = None;
                r.restart_at = Some(Instant::now() + Duration::from_secs(1));
                events.push(format!("{:>6.1} s  {} exited by itself ({status})", t.as_secs_f64(), r.instance));
            }
            if r.restart_at.is_some_and(|at| Instant::now() >= at) {
                r.restart_at = None;
                start(&env, r, &common);
            }
        }
        if t >= next_kill {
            next_kill += Duration::from_millis(cli.kill_every_ms);
            let i = rng.below(replicas.len());
            let r = &mut replicas[i];
            if let Some(mut child) = r.child.take() {
                let _ = child.start_kill();
                let _ = child.wait().await;
                events.push(format!("{:>6.1} s  kill -9 {}", t.as_secs_f64(), r.instance));
                r.restart_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        if !redis_restarted && t >= redis_restart_at {
            redis_restarted = true;
            events.push(format!("{:>6.1} s  redis kill -9 and restart", t.as_secs_f64()));
            redis.restart().await;
        }
        if !pg_cut && t >= pg_down_at {
            pg_cut = true;
            events.push(format!("{:>6.1} s  postgresql away for {} s", t.as_secs_f64(), pg_down_for.as_secs()));
            pg_gate.cut();
        }
        if pg_cut && !pg_mended && t >= pg_down_at + pg_down_for {
            pg_mended = true;
            events.push(format!("{:>6.1} s  postgresql back", t.as_secs_f64()));
            pg_gate.mend();
        }
    }
    pg_gate.mend();
    stop_load.cancel();
    load.await?;
    let ended = Instant::now();
    // Every accepted request has until its deadline plus the claim timeout and a
    // margin to be answered.
    let grace = Duration::from_millis(cli.deadline_ms) + Duration::from_secs(10);
    loop {
        let waiting = {
            let l = ledger.lock().unwrap();
            l.sent.keys().filter(|id| !l.replies.contains_key(*id)).count()
        };
        if waiting == 0 || ended.elapsed() > grace {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // late duplicates, if any
    stop_reader.cancel();
    let _ = reader.await;

    let ok = report(&ledger.lock().unwrap(), &events, started, started + duration);
    for r in &mut replicas {
        if let Some(mut c) = r.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
    stop_sim.cancel();
    // The keys go with this Redis; only the database schema needs dropping.
    let _ = tokio::time::timeout(Duration::from_secs(10), env.finish()).await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

fn pg_port(url: &str) -> u16 {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    host.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(5432)
}

fn start(env: &Env, r: &mut Replica, common: &[(&str, String)]) {
    let mut extra = common.to_vec();
    extra.push(("PGNM_INSTANCE", r.instance.clone()));
    r.child = Some(spawn_binary(env, r.binary, &extra));
}

/// Sends `rate` requests per second until `stop`: 80% getBestNode, 12%
/// updateNode (of a random node, at its last known revision), 8% check.
#[allow(clippy::too_many_arguments)]
async fn generate(
    redis: Client,
    ingress: String,
    reply_to: String,
    names: Vec<String>,
    ledger: Shared,
    rate: u64,
    timeout: Duration,
    seed: u64,
    stop: CancellationToken,
) {
    let mut rng = Rng(seed.wrapping_add(0xD1B5_4A32_D192_ED03) | 1);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        n += 1;
        let id = format!("chaos-{n}");
        let pick = rng.below(100);
        let (command, role, args) = if pick < 80 {
            ("getBestNode", Role::Checker, serde_json::json!({"type": "evm-dev"}))
        } else if pick < 92 {
            let name = &names[rng.below(names.len())];
            let revision = ledger.lock().unwrap().revisions.get(name).copied().unwrap_or(1);
            let weight = 50 + rng.below(100);
            let args = serde_json::json!({"name": name, "revision": revision, "set": {"weight": weight}});
            ("updateNode", Role::Checker, args)
        } else {
            ("check", Role::Checker, serde_json::json!({"type": "evm-dev"}))
        };
        let request = Request {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            command: command.to_owned(),
            role: Some(role.as_str().to_owned()),
            args: Some(rmpv::ext::to_value(&args).expect("JSON converts")),
            reply_to: Some(reply_to.clone()),
            deadline: Deadline::after(timeout),
            caller: "chaos".to_owned(),
            trace_id: None,
        };
        let deadline = Instant::now() + timeout;
        // Recorded before sending, so a fast reply always finds its request.
        ledger.lock().unwrap().sent.insert(id.clone(), Sent { command, deadline });
        let redis = redis.clone();
        let ingress = ingress.clone();
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let sent: Result<String, _> = tokio::time::timeout(
                Duration::from_secs(2),
                redis.xadd(ingress.as_str(), false, None, "*", ("m", encode_request(&request))),
            )
            .await
            .unwrap_or_else(|_| Err(fred::error::Error::new(fred::error::ErrorKind::Timeout, "xadd timed out")));
            if sent.is_err() {
                // Not accepted: the caller knows at once (and would retry).
                let mut l = ledger.lock().unwrap();
                l.sent.remove(&request.id);
                l.refused += 1;
            }
        });
    }
}

/// Streams and their entries, as XREAD returns them.
type XreadReply = Vec<(String, Vec<(String, HashMap<String, Vec<u8>>)>)>;

/// Reads every reply off the harness's reply stream.
async fn read_replies(url: String, stream: String, ledger: Shared, stop: CancellationToken) {
    let mut builder = Builder::from_config(Config::from_url(&url).expect("own redis url"));
    builder.set_policy(ReconnectPolicy::new_constant(0, 100));
    let client = builder.build().expect("client");
    let _ = client.init().await;
    let mut last = "0-0".to_owned();
    while !stop.is_cancelled() {
        let read: Result<Option<XreadReply>, _> = tokio::time::timeout(
            Duration::from_secs(2),
            client.xread(Some(1000), Some(200), stream.as_str(), last.as_str()),
        )
        .await
        .unwrap_or_else(|_| Err(fred::error::Error::new(fred::error::ErrorKind::Timeout, "xread timed out")));
        let Ok(Some(streams)) = read else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let now = Instant::now();
        let mut l = ledger.lock().unwrap();
        for (_, entries) in streams {
            for (entry_id, fields) in entries {
                last = entry_id;
                let Some(bytes) = fields.get("m") else { continue };
                let Ok(reply) = decode_reply(bytes) else { continue };
                let code = reply.error.as_ref().map(|e| e.code.as_str().to_owned()).unwrap_or_else(|| "OK".into());
                let message = reply.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
                let command = l.sent.get(&reply.id).map(|s| s.command);
                if code == "OK" {
                    match command {
                        Some("getBestNode") => l.ok_best.push(now),
                        Some("updateNode") => {
                            if let Ok(Ok(node)) = reply.result().map(pgnm_protocol::decode_data::<serde_json::Value>)
                                && let (Some(name), Some(rev)) = (node["name"].as_str(), node["revision"].as_i64())
                            {
                                l.revisions.insert(name.to_owned(), rev);
                            }
                        }
                        _ => {}
                    }
                }
                l.replies.entry(reply.id.clone()).or_default().push(Received {
                    at: now,
                    code,
                    message,
                    bytes: bytes.clone(),
                });
            }
        }
    }
    let _ = client.quit().await;
}

/// Prints the report; returns whether every accepted request was answered exactly once.
#[allow(clippy::print_stdout)]
fn report(l: &Ledger, events: &[String], started: Instant, ended: Instant) -> bool {
    let mut by_code: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let (mut ok, mut late, mut never, mut twice, mut replayed) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut never_ids = Vec::new();
    let mut twice_ids = Vec::new();
    for (id, sent) in &l.sent {
        match l.replies.get(id) {
            None => {
                never += 1;
                never_ids.push(id.clone());
            }
            Some(rs) => {
                let first = &rs[0];
                if first.at > sent.deadline + Duration::from_millis(500) {
                    late += 1;
                }
                if first.code == "OK" {
                    ok += 1;
                } else {
                    by_code.entry(first.code.as_str()).or_insert((0, first.message.as_str())).0 += 1;
                }
                if rs.len() > 1 {
                    // The same stored reply sent again (a redelivered entry) is
                    // counted apart from a second, different answer.
                    if rs.iter().all(|r| r.bytes == first.bytes) {
                        replayed += 1;
                    } else {
                        twice += 1;
                        let answers: Vec<String> = rs.iter().map(|r| format!("{} {}", r.code, r.message)).collect();
                        twice_ids.push(format!("{id} ({}): {answers:?}", sent.command));
                    }
                }
            }
        }
    }
    let stray = l.replies.keys().filter(|id| !l.sent.contains_key(*id)).count();
    let mut gap = Duration::ZERO;
    let mut previous = started;
    for &t in l.ok_best.iter().filter(|t| **t >= started && **t <= ended) {
        gap = gap.max(t.saturating_duration_since(previous));
        previous = t;
    }
    gap = gap.max(ended.saturating_duration_since(previous));

    println!("faults:");
    for e in events {
        println!("  {e}");
    }
    println!("requests sent (accepted by Redis): {}", l.sent.len());
    println!("not accepted (Redis unreachable when sent; the caller is told at once): {}", l.refused);
    println!("answered ok: {ok}");
    println!("answered with an error: {}", by_code.values().map(|v| v.0).sum::<u64>());
    for (code, (n, example)) in &by_code {
        println!("  {code}: {n}  (e.g. {example:?})");
    }
    println!("answered after the deadline: {late}");
    println!("never answered: {never}");
    println!("answered twice (different answers): {twice}");
    println!("same reply delivered twice (a redelivered entry answered from its stored reply): {replayed}");
    println!("replies to unknown ids: {stray}");
    println!("longest gap between successful getBestNode answers: {} ms", gap.as_millis());
    if !never_ids.is_empty() {
        never_ids.sort();
        let shown: Vec<String> = never_ids.iter().take(20).map(|id| format!("{id} ({})", l.sent[id].command)).collect();
        println!("never answered: {shown:?}");
    }
    if !twice_ids.is_empty() {
        println!("answered twice: {:?}", &twice_ids[..twice_ids.len().min(20)]);
    }
    let passed = never == 0 && twice == 0 && stray == 0;
    println!("pgnm-chaos: {}", if passed { "PASS" } else { "FAIL" });
    passed
}
