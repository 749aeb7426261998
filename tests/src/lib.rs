//! Shared helpers of the system tests: an isolated installation (a unique key
//! prefix) on the real Redis, the real services started in-process or as
//! processes, and raw wire-protocol access for speaking to them as a user would.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fred::prelude::*;
use pgnm_bus::{Bus, Caller, RedisArgs, WorkerArgs};
use pgnm_protocol::{Deadline, Keys, PROTOCOL_VERSION, Reply, Request, decode_reply, encode_request};
use pgnm_runtime::AdminArgs;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Returns the Redis URL the tests use (`PGNM_TEST_REDIS_URL`, else the local default).
pub fn redis_url() -> String {
    std::env::var("PGNM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Installs a log subscriber for the test (once per process); `RUST_LOG` filters it.
pub fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Worker settings for tests: short claim timeout and drain so that reclaiming
/// and shutdown happen within a test's patience.
pub fn fast_worker() -> WorkerArgs {
    WorkerArgs { claim_idle_ms: 1000, drain_timeout_ms: 3000, block_ms: 200, ..WorkerArgs::default() }
}

/// One isolated installation: a unique prefix on the test Redis.
#[derive(Debug)]
pub struct Env {
    /// The key prefix.
    pub prefix: String,
    /// The Redis URL.
    pub url: String,
    /// The key layout.
    pub keys: Keys,
    /// A plain client for raw access.
    pub redis: Client,
    /// Database settings: the test database, with this installation's own schema
    /// (migrated) on the search path.
    pub db: pgnm_store::DbArgs,
    /// The schema.
    pub schema: String,
    services: Vec<Service>,
    roles: Vec<pgnm_protocol::Role>,
}

/// A service started in-process.
#[derive(Debug)]
pub struct Service {
    /// Cancelling it starts the service's drain.
    pub shutdown: CancellationToken,
    /// Ends when the service has stopped.
    pub handle: JoinHandle<Result<(), String>>,
}

impl Service {
    /// Stops the service and waits for its drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

impl Env {
    /// Creates an installation with a fresh prefix on the test Redis.
    pub async fn new() -> Env {
        Self::with_url(redis_url()).await
    }

    /// Creates an installation with a fresh prefix on the Redis at `url`.
    pub async fn with_url(url: String) -> Env {
        init_logs();
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut builder = Builder::from_config(Config::from_url(&url).expect("valid test redis url"));
        builder.set_policy(ReconnectPolicy::new_constant(0, 100));
        let redis = builder.build().expect("client");
        redis.init().await.expect("the test Redis must be running (see README)");
        let schema = prefix.clone();
        let admin = pg_connect(&database_url()).await;
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("create the test schema");
        let db = pgnm_store::DbArgs::new(format!("{}?options=-c%20search_path%3D{schema}", database_url()));
        pgnm_store::Store::new(&db).expect("db settings").migrate().await.expect("migrate the test schema");
        Env {
            keys: Keys::new(&prefix).expect("valid prefix"),
            prefix,
            url,
            redis,
            db,
            schema,
            services: Vec::new(),
            roles: Vec::new(),
        }
    }

    /// Returns Redis settings for this installation.
    pub fn redis_args(&self) -> RedisArgs {
        RedisArgs::new(self.url.clone(), self.prefix.clone())
    }

    /// Returns a bus connection for instance `instance`.
    pub async fn bus(&self, instance: &str) -> Bus {
        Bus::connect(&self.redis_args(), instance).await.expect("connect the bus")
    }

    /// Returns a caller with its own reply stream.
    pub async fn caller(&self) -> Caller {
        let name = format!("test-caller-{}", uuid::Uuid::new_v4().simple());
        Caller::start(self.bus(&name).await, "tests").await.expect("start a caller")
    }

    /// Starts a router in-process.
    pub fn start_router(&mut self, instance: &str, worker: WorkerArgs) -> &Service {
        let config = pgnm_router::RouterConfig {
            redis: self.redis_args(),
            worker,
            instance: Some(instance.to_owned()),
            admin: AdminArgs::off(),
        };
        let shutdown = CancellationToken::new();
        let handle = spawn_service("router", pgnm_router::run(config, shutdown.clone()));
        self.roles.push(pgnm_protocol::Role::Router);
        self.push(Service { shutdown, handle })
    }

    /// Returns checker settings for this installation (its Redis prefix and database schema).
    pub fn checker_config(&self, instance: &str, worker: WorkerArgs) -> pgnm_checker::CheckerConfig {
        pgnm_checker::CheckerConfig {
            redis: self.redis_args(),
            worker,
            db: self.db.clone(),
            health: pgnm_checker::health::HealthArgs { view_refresh_ms: 100, ..Default::default() },
            instance: Some(instance.to_owned()),
            nodes_file: None,
            chains_file: None,
            allow_secret_reveal: false,
            admin: AdminArgs::off(),
        }
    }

    /// Starts a checker in-process.
    pub fn start_checker(&mut self, instance: &str, worker: WorkerArgs) -> &Service {
        let config = self.checker_config(instance, worker);
        self.start_checker_with(config)
    }

    /// Starts a checker in-process with `config`.
    pub fn start_checker_with(&mut self, config: pgnm_checker::CheckerConfig) -> &Service {
        let shutdown = CancellationToken::new();
        let handle = spawn_service("checker", pgnm_checker::run(config, shutdown.clone()));
        self.roles.push(pgnm_protocol::Role::Checker);
        self.push(Service { shutdown, handle })
    }

    /// Returns scheduler settings for this installation; runs poll every 50 ms
    /// and are leased for 2 s, so that takeovers happen within a test's patience.
    pub fn scheduler_config(&self, instance: &str, worker: WorkerArgs) -> pgnm_scheduler::SchedulerConfig {
        pgnm_scheduler::SchedulerConfig {
            redis: self.redis_args(),
            worker,
            db: self.db.clone(),
            instance: Some(instance.to_owned()),
            poll_ms: 50,
            lease_ms: 2_000,
            check_shards: 2,
            check_interval_ms: 1_000,
            history_retention_secs: 3600,
            admin: AdminArgs::off(),
        }
    }

    /// Starts a scheduler in-process.
    pub fn start_scheduler(&mut self, instance: &str, worker: WorkerArgs) -> &Service {
        let config = self.scheduler_config(instance, worker);
        self.start_scheduler_with(config)
    }

    /// Starts a scheduler in-process with `config`.
    pub fn start_scheduler_with(&mut self, config: pgnm_scheduler::SchedulerConfig) -> &Service {
        let shutdown = CancellationToken::new();
        let handle = spawn_service("scheduler", pgnm_scheduler::run(config, shutdown.clone()));
        self.roles.push(pgnm_protocol::Role::Scheduler);
        self.push(Service { shutdown, handle })
    }

    /// Starts a jrpc-proxy in-process.
    pub fn start_jrpc_proxy(&mut self, instance: &str, worker: WorkerArgs) -> &Service {
        let config = pgnm_jrpc_proxy::ProxyConfig {
            redis: self.redis_args(),
            worker,
            instance: Some(instance.to_owned()),
            admin: AdminArgs::off(),
        };
        let shutdown = CancellationToken::new();
        let handle = spawn_service("jrpc-proxy", pgnm_jrpc_proxy::run(config, shutdown.clone()));
        self.roles.push(pgnm_protocol::Role::JrpcProxy);
        self.push(Service { shutdown, handle })
    }

    /// Starts router, checker and scheduler in-process, with test worker settings.
    pub async fn start_all(&mut self) {
        self.start_router("router-1", fast_worker());
        self.start_checker("checker-1", fast_worker());
        self.start_scheduler("scheduler-1", fast_worker());
        self.wait_for_groups().await;
    }

    fn push(&mut self, s: Service) -> &Service {
        self.services.push(s);
        self.services.last().expect("just pushed")
    }

    /// Takes the services started so far, to stop them one by one.
    pub fn take_services(&mut self) -> Vec<Service> {
        std::mem::take(&mut self.services)
    }

    /// Waits until the consumer groups of the roles started in-process exist.
    pub async fn wait_for_groups(&self) {
        for role in self.roles.clone() {
            self.wait_for_group(role).await;
        }
    }

    /// Waits until `role`'s consumer group exists (its first replica is up).
    pub async fn wait_for_group(&self, role: pgnm_protocol::Role) {
        let stream = self.keys.inbox(role);
        for _ in 0..200 {
            let groups: Result<Vec<Value>, _> = self.redis.xinfo_groups(stream.as_str()).await;
            if groups.is_ok_and(|g| !g.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the {role} group did not appear within 5 s");
    }

    /// Creates a raw reply stream for this test (as a non-Rust caller would) and
    /// returns its name.
    pub async fn raw_reply_stream(&self, name: &str) -> String {
        let stream = self.keys.reply(name);
        let _: String = self.redis.xadd(stream.as_str(), false, None, "*", ("created", "1")).await.expect("xadd");
        let _: i64 = self.redis.pexpire(stream.as_str(), 120_000, None).await.expect("pexpire");
        stream
    }

    /// Builds a request envelope.
    pub fn request(
        &self,
        id: &str,
        command: &str,
        args: Option<rmpv::Value>,
        reply_to: Option<&str>,
        timeout: Duration,
    ) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            id: id.to_owned(),
            command: command.to_owned(),
            role: None,
            args,
            reply_to: reply_to.map(str::to_owned),
            deadline: Deadline::after(timeout),
            caller: "tests".to_owned(),
            trace_id: None,
        }
    }

    /// Adds raw bytes as the `m` field of an entry of `stream`.
    pub async fn xadd_raw(&self, stream: &str, payload: Vec<u8>) -> String {
        self.redis.xadd(stream, false, None, "*", ("m", payload)).await.expect("xadd")
    }

    /// Adds a request to the ingress.
    pub async fn send(&self, request: &Request) -> String {
        self.xadd_raw(&self.keys.ingress(), encode_request(request)).await
    }

    /// Returns every reply in `stream`, in order.
    pub async fn replies(&self, stream: &str) -> Vec<Reply> {
        let entries: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
            self.redis.xrange(stream, "-", "+", None).await.expect("xrange");
        entries
            .into_iter()
            .filter_map(|(_, f)| f.get("m").map(|m| decode_reply(m).expect("a well-formed reply")))
            .collect()
    }

    /// Waits until `stream` holds at least `n` replies (or `patience` passes) and returns them.
    pub async fn wait_replies(&self, stream: &str, n: usize, patience: Duration) -> Vec<Reply> {
        let until = tokio::time::Instant::now() + patience;
        loop {
            let replies = self.replies(stream).await;
            if replies.len() >= n || tokio::time::Instant::now() >= until {
                return replies;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Returns the number of entries of `stream`.
    pub async fn xlen(&self, stream: &str) -> u64 {
        self.redis.xlen(stream).await.expect("xlen")
    }

    /// Returns the entries of a dead-letter stream as field maps.
    pub async fn dead_letters(&self, stream: &str) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
        let entries: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
            self.redis.xrange(stream, "-", "+", None).await.expect("xrange");
        entries.into_iter().map(|(_, f)| f).collect()
    }

    /// Waits until a dead-letter stream holds `n` entries (at most 10 s) and returns them.
    pub async fn wait_dead_letters(&self, stream: &str, n: usize) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
        for _ in 0..500 {
            let dead = self.dead_letters(stream).await;
            if dead.len() >= n {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.dead_letters(stream).await
    }

    /// Stops every service and deletes the installation's keys.
    pub async fn finish(mut self) {
        for s in self.take_services() {
            s.stop().await;
        }
        let pattern = format!("*{}*", self.prefix);
        // Each node's keys (one node unless Redis is a cluster), deleted one by
        // one (keys of different slots cannot share a DEL).
        let nodes: Vec<Option<fred::types::config::Server>> = if self.redis.is_clustered() {
            self.redis.active_connections().into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        for node in nodes {
            let options = fred::types::config::Options { cluster_node: node, ..Default::default() };
            let on_node = self.redis.with_options(&options);
            let mut cursor = "0".to_owned();
            loop {
                let args = vec![cursor.clone(), "MATCH".into(), pattern.clone(), "COUNT".into(), "1000".into()];
                let Ok((next, keys)) = on_node.custom::<(String, Vec<String>), _>(fred::cmd!("SCAN"), args).await
                else {
                    break;
                };
                for key in keys {
                    let _: Result<i64, _> = self.redis.del(key).await;
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        let _ = self.redis.quit().await;
        let admin = pg_connect(&database_url()).await;
        let _ = admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await;
    }

    /// Returns a plain database connection with this installation's schema on the path.
    pub async fn sql(&self) -> tokio_postgres::Client {
        pg_connect(&self.db.url).await
    }
}

/// Returns the database the tests use (`PGNM_TEST_DATABASE_URL`, else the local `test` database).
pub fn database_url() -> String {
    std::env::var("PGNM_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the test PostgreSQL must be running (see README): {e}"));
    tokio::spawn(connection);
    client
}

fn spawn_service<E: std::fmt::Display>(
    name: &'static str,
    run: impl Future<Output = Result<(), E>> + Send + 'static,
) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        run.await.map_err(|e| {
            tracing::error!(service = name, error = %e, "service failed");
            format!("{name}: {e}")
        })
    })
}

/// Sends `command` to `role` and returns its result as JSON, or its error.
pub async fn call_json(
    caller: &Caller,
    role: pgnm_protocol::Role,
    command: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value, pgnm_protocol::ErrorBody> {
    let spec = pgnm_bus::CallSpec::new(command, Duration::from_secs(15)).role(role).args(args);
    let reply = caller.call(spec).await.expect("a reply");
    reply.into_result().map(|data| pgnm_protocol::decode_data(&data).expect("JSON-compatible data"))
}

/// Runs the `pgnm` CLI against this installation.
pub fn run_cli(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("pgnm"))
        .args(args)
        .env("PGNM_REDIS_URL", &env.url)
        .env("PGNM_PREFIX", &env.prefix)
        .output()
        .expect("run pgnm")
}

/// Returns the path of one of the workspace's binaries, built by `make test`
/// (`cargo build --workspace --bins`) next to the test executables.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from <profile>/deps, binaries of this package from <profile>.
    let parent = exe.parent().expect("the executable's directory");
    let dir = if parent.ends_with("deps") { parent.parent().expect("target profile directory") } else { parent };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, done by `make test`)",
        path.display()
    );
    path
}

/// Returns the command line of one of the workspace's binaries for this
/// installation (its admin server on a free loopback port), with `extra` added.
pub fn binary_command(env: &Env, name: &str, extra: &[(&str, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary(name));
    cmd.env("PGNM_REDIS_URL", &env.url)
        .env("PGNM_PREFIX", &env.prefix)
        .env("PGNM_DATABASE_URL", &env.db.url)
        .env("PGNM_LOG", "warn")
        .env("PGNM_ADMIN_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// Starts one of the workspace's binaries for this installation, with `extra` added.
pub fn spawn_binary(env: &Env, name: &str, extra: &[(&str, String)]) -> tokio::process::Child {
    binary_command(env, name, extra).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// Starts one of the workspace's binaries like [`spawn_binary`], its standard
/// error (the logs, as JSON) written to `log`.
pub fn spawn_binary_logged(
    env: &Env,
    name: &str,
    extra: &[(&str, String)],
    log: &std::path::Path,
) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("create the log file");
    let mut cmd = binary_command(env, name, extra);
    if !extra.iter().any(|(k, _)| *k == "PGNM_LOG_FORMAT") {
        cmd.env("PGNM_LOG_FORMAT", "json");
    }
    cmd.stderr(file).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// Returns a free loopback port (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

/// A Redis server of the test's own on a free loopback port, without persistence,
/// that the test may kill and start again (a Redis restart loses every key).
#[derive(Debug)]
pub struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
    extra: Vec<String>,
    tls: bool,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub async fn start() -> OwnRedis {
        Self::start_with(&[], false).await
    }

    /// Starts `redis-server` with `extra` arguments; with `tls`, the free port is
    /// its TLS port (`--tls-port`, the TLS settings among `extra`) and plain TCP is off.
    pub async fn start_with(extra: &[&str], tls: bool) -> OwnRedis {
        let port = free_port();
        let extra = extra.iter().map(|a| a.to_string()).collect();
        let mut redis = OwnRedis { port, child: None, extra, tls };
        redis.spawn().await;
        redis
    }

    /// Returns the server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, as a crash would) and starts a fresh one on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports = if self.tls { vec!["--port", "0", "--tls-port", &port] } else { vec!["--port", &port] };
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(ports)
            .args(&self.extra)
            .args(if self.extra.iter().any(|a| a == "--dir") {
                vec![]
            } else {
                vec!["--dir".into(), std::env::temp_dir().display().to_string()]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real EVM node: `anvil` from the npm package `@foundry-rs/anvil` (installed
/// by `make test` under `node_modules/`, or named by `PGNM_ANVIL`), on a free port.
#[derive(Debug)]
pub struct Anvil {
    /// Its JSON-RPC URL.
    pub url: String,
    port: u16,
    args: Vec<String>,
    child: std::process::Child,
}

impl Anvil {
    /// Starts anvil with `args` added (`--block-time 1`, `--chain-id 1`, ...) and
    /// waits until it answers.
    pub async fn start(args: &[&str]) -> Anvil {
        let port = free_port();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = Self::spawn(port, &args);
        let anvil = Anvil { url: format!("http://127.0.0.1:{port}"), port, args, child };
        anvil.wait().await;
        anvil
    }

    fn spawn(port: u16, args: &[String]) -> std::process::Child {
        let binary = std::env::var("PGNM_ANVIL").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
        });
        std::process::Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--silent"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}); `make test` installs it with npm", binary.display()))
    }

    async fn wait(&self) {
        for _ in 0..100 {
            if self.rpc("eth_chainId", serde_json::json!([])).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("anvil did not answer on port {}", self.port);
    }

    /// Starts the node again on the same port (a fresh chain) after [`Anvil::kill`].
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.port, &self.args);
        self.wait().await;
    }

    /// Calls a JSON-RPC method.
    pub async fn rpc(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, String> {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response = reqwest::Client::new().post(&self.url).json(&body).send().await.map_err(|e| e.to_string())?;
        let value: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if let Some(e) = value.get("error") {
            return Err(e.to_string());
        }
        Ok(value["result"].clone())
    }

    /// Returns the latest block number.
    pub async fn height(&self) -> u64 {
        let h = self.rpc("eth_blockNumber", serde_json::json!([])).await.expect("eth_blockNumber");
        u64::from_str_radix(h.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    /// Stops producing blocks (the height freezes).
    pub async fn freeze(&self) {
        self.rpc("evm_setIntervalMining", serde_json::json!([0])).await.expect("evm_setIntervalMining");
    }

    /// Kills the node.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP forwarder between a service and one of its dependencies, that a test
/// can cut (every connection dropped, new ones closed at once) and mend, to
/// take Redis or PostgreSQL away from one process without stopping it for the
/// other tests.
#[derive(Debug)]
pub struct Gate {
    port: u16,
    cut: std::sync::Arc<std::sync::Mutex<CancellationToken>>,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
}

impl Gate {
    /// Starts forwarding a free loopback port to `target` (`host:port`).
    pub async fn open(target: &str) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the gate");
        let port = listener.local_addr().expect("gate address").port();
        let gate = Gate {
            port,
            cut: std::sync::Arc::new(std::sync::Mutex::new(CancellationToken::new())),
            up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            stop: CancellationToken::new(),
        };
        let (cut, up, stop, target) = (gate.cut.clone(), gate.up.clone(), gate.stop.clone(), target.to_owned());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.cancelled() => return,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                if !up.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let token = cut.lock().expect("gate lock").clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        gate
    }

    /// Returns the port to connect to instead of the target's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every forwarded connection and refuses new ones until [`Gate::mend`].
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut token = self.cut.lock().expect("gate lock");
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Forwards new connections again.
    pub fn mend(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().expect("gate lock").cancel();
    }
}

/// Returns `url` with its `host:port` replaced by `127.0.0.1:<port>`.
pub fn with_port(url: &str, port: u16) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let host_start = rest.rfind('@').map(|i| i + 1).unwrap_or(0);
    let host_end = rest[host_start..].find(['/', '?']).map(|i| i + host_start).unwrap_or(rest.len());
    format!("{}{}127.0.0.1:{port}{}", &url[..scheme_end], &rest[..host_start], &rest[host_end..])
}

/// Fetches `path` from an admin server; returns the status and body.
pub async fn admin_get(port: u16, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Waits until `path` of the admin server answers `status`, or panics after `patience`.
pub async fn wait_admin_status(port: u16, path: &str, status: u16, patience: Duration) -> String {
    let until = tokio::time::Instant::now() + patience;
    loop {
        let (got, body) = admin_get(port, path).await;
        if got == status {
            return body;
        }
        if tokio::time::Instant::now() > until {
            panic!("{path} answered {got} ({body}), expected {status} within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
