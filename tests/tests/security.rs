//! Connection security and start-up failures of the real binaries: Redis over
//! TLS with a CA of our own, Redis AUTH, and bad configuration ending the
//! process at once with one clear line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pgnm_bus::{Bus, Caller, RedisArgs};
use pgnm_protocol::Role;
use pgnm_tests::{OwnRedis, admin_get, binary, call_json, free_port, wait_admin_status};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// Runs a service binary with `env` (added to a clean `PGNM_*` environment) and
/// returns its exit status and standard error, failing if it runs longer than 15 s.
async fn run_to_exit(name: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(binary(name));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGNM_")) {
        cmd.env_remove(k);
    }
    cmd.env("PGNM_ADMIN_ADDR", "off").envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).kill_on_drop(true);
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not exit within 15 s with {env:?}"))
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(started.elapsed() < Duration::from_secs(12), "{name} took {:?} to give up", started.elapsed());
    (out.status.code(), stderr)
}

/// Asserts a failed start: exit status 1, one line naming the binary, no panic.
fn assert_one_clear_line(name: &str, (code, stderr): (Option<i32>, String), expect: &str) {
    assert_eq!(code, Some(1), "{name}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{name} printed more than one line:\n{stderr}");
    assert!(lines[0].starts_with(&format!("{name}: ")), "{stderr}");
    assert!(lines[0].contains(expect), "expected {expect:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn bad_configuration_ends_the_process_with_one_clear_line() {
    let nothing = free_port();
    let redis = ("PGNM_REDIS_URL", "redis://127.0.0.1:6379".to_owned());
    let db_down = ("PGNM_DATABASE_URL", format!("postgres://postgres@127.0.0.1:{nothing}/pgnm"));

    let r = run_to_exit("pgnm-router", &[("PGNM_REDIS_URL", "http://127.0.0.1:6379".to_owned())]).await;
    assert_one_clear_line("pgnm-router", r, "invalid redis configuration");

    let r = run_to_exit("pgnm-router", &[("PGNM_REDIS_URL", format!("redis://127.0.0.1:{nothing}"))]).await;
    assert_one_clear_line("pgnm-router", r, "cannot connect to redis");

    let r = run_to_exit("pgnm-checker", &[redis.clone(), db_down.clone()]).await;
    assert_one_clear_line("pgnm-checker", r, "database unavailable");
    let r = run_to_exit("pgnm-scheduler", &[redis.clone(), db_down]).await;
    assert_one_clear_line("pgnm-scheduler", r, "database unavailable");

    let r = run_to_exit("pgnm-checker", &[redis.clone(), ("PGNM_DATABASE_CA_FILE", "/nonexistent/ca.pem".to_owned())])
        .await;
    assert_one_clear_line("pgnm-checker", r, "sslmode=require");

    let r = run_to_exit(
        "pgnm-router",
        &[("PGNM_REDIS_URL", "redis://127.0.0.1:6379".to_owned()), ("PGNM_ADMIN_ADDR", "not-an-address".to_owned())],
    )
    .await;
    assert_eq!(r.0, Some(2), "clap refuses a bad flag value: {}", r.1);
    assert!(r.1.contains("PGNM_ADMIN_ADDR") || r.1.contains("admin-addr"), "{}", r.1);

    let port = free_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let r = run_to_exit("pgnm-router", &[redis, ("PGNM_ADMIN_ADDR", format!("127.0.0.1:{port}"))]).await;
    assert_one_clear_line("pgnm-router", r, "admin server cannot listen");
}

#[tokio::test]
async fn redis_auth_missing_or_wrong_password_fails_clearly_and_the_right_one_works() {
    let redis = OwnRedis::start_with(&["--requirepass", "s3cret-pass"], false).await;
    let url = ("PGNM_REDIS_URL", redis.url());

    let r = run_to_exit("pgnm-router", std::slice::from_ref(&url)).await;
    assert_one_clear_line("pgnm-router", r, "refused the credentials");
    let r = run_to_exit("pgnm-router", &[url.clone(), ("PGNM_REDIS_PASSWORD", "wrong".to_owned())]).await;
    assert_one_clear_line("pgnm-router", r.clone(), "refused the credentials");
    assert!(!r.1.contains("wrong"), "the password is never printed: {}", r.1);

    // The right password, from the environment: the router runs and is ready.
    let port = free_port();
    let mut cmd = tokio::process::Command::new(binary("pgnm-router"));
    cmd.env("PGNM_REDIS_URL", redis.url())
        .env("PGNM_REDIS_PASSWORD", "s3cret-pass")
        .env("PGNM_PREFIX", "auth-test")
        .env("PGNM_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let _router = cmd.spawn().unwrap();
    wait_admin_status(port, "/readyz", 200, Duration::from_secs(15)).await;
    assert_eq!(admin_get(port, "/healthz").await.0, 200);
}

/// Runs a router on `args` and pings it through a caller on the same settings.
async fn ping_through_a_router(args: &RedisArgs, echo: &str) {
    let router = pgnm_router::RouterConfig {
        redis: args.clone(),
        worker: pgnm_tests::fast_worker(),
        instance: Some(format!("router-{echo}").replace(' ', "-")),
        admin: pgnm_runtime::AdminArgs::off(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(pgnm_router::run(router, shutdown.clone()));
    let bus = Bus::connect(args, "security-caller").await.expect("connect");
    let caller = Caller::start(bus, "tests").await.unwrap();
    let pong = call_json(&caller, Role::Router, "ping", serde_json::json!({ "echo": echo })).await.unwrap();
    assert_eq!(pong["echo"], echo);
    caller.close().await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A CA and a server certificate for 127.0.0.1, written under `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "pgnm test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[tokio::test]
async fn the_bus_runs_over_redis_tls_verified_against_our_ca() {
    let dir = std::env::temp_dir().join(format!("pgnm-tls-{}", uuid::Uuid::new_v4().simple()));
    let (ca, cert, key) = certificates(&dir);
    let (ca_s, cert_s, key_s) = (ca.display().to_string(), cert.display().to_string(), key.display().to_string());
    let redis = OwnRedis::start_with(
        &[
            "--tls-cert-file",
            &cert_s,
            "--tls-key-file",
            &key_s,
            "--tls-ca-cert-file",
            &ca_s,
            "--tls-auth-clients",
            "no",
        ],
        true,
    )
    .await;
    let url = format!("rediss://127.0.0.1:{}", redis.port());

    // Without our CA the server's certificate is not trusted: a clear failure.
    let refused = Bus::connect(&RedisArgs::new(url.clone(), "tls"), "tls-untrusted").await.unwrap_err();
    let chain = pgnm_runtime::error_chain(&refused);
    assert!(chain.contains("cannot connect to redis"), "{chain}");

    // With it: a round trip through a router over TLS.
    let mut args = RedisArgs::new(url, format!("tls{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    args.ca_file = Some(ca.clone());
    ping_through_a_router(&args, "over tls").await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_bus_finds_its_redis_through_sentinel() {
    let master = OwnRedis::start().await;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("pgnm-sentinel-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    // Sentinel rewrites its configuration file, so it gets one of its own.
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor pgnm 127.0.0.1 {} 1\n",
            dir.display(),
            master.port()
        ),
    )
    .unwrap();
    let mut sentinel = tokio::process::Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server --sentinel");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("redis-sentinel://127.0.0.1:{port}/0?sentinelServiceName=pgnm");
    let args = RedisArgs::new(url, format!("sentinel{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    ping_through_a_router(&args, "via sentinel").await;
    let _ = sentinel.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs `program` as the `postgres` user when we are root (PostgreSQL refuses
/// to run as root), as ourselves otherwise.
fn as_postgres(program: &Path) -> std::process::Command {
    if is_root() {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        std::process::Command::new(program)
    }
}

#[tokio::test]
async fn the_store_runs_over_postgresql_tls_verified_against_our_ca() {
    use std::os::unix::fs::PermissionsExt;
    let bindir = std::process::Command::new("pg_config").arg("--bindir").output().expect("pg_config (PostgreSQL)");
    let bindir = PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim());
    let dir = std::env::temp_dir().join(format!("pgnm-pgtls-{}", uuid::Uuid::new_v4().simple()));
    let (ca, cert, key) = certificates(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = dir.join("db");
    if is_root() {
        let status = std::process::Command::new("chown").arg("postgres").arg(&key).arg(&cert).status().unwrap();
        assert!(status.success(), "chown the server key to postgres");
    }
    let out = as_postgres(&bindir.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust"])
        .output()
        .expect("initdb");
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let mut server = as_postgres(&bindir.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
        .arg("-k")
        .arg(&dir)
        .arg("-c")
        .arg(format!("ssl_cert_file={}", cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", key.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = tokio::process::Command::from(server).kill_on_drop(true).spawn().expect("postgres");
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut args = pgnm_store::DbArgs::new(url.clone());
    args.ca_file = Some(ca.clone());
    let store = pgnm_store::Store::new(&args).unwrap();
    // Verified against our CA: connects, migrates and passes the readiness check.
    let migrated = loop {
        match store.migrate().await {
            Ok(applied) => break applied,
            Err(_) if std::time::Instant::now() < until => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("migrating over TLS: {}", pgnm_runtime::error_chain(&e)),
        }
    };
    assert!(!migrated.is_empty());
    store.check().await.expect("ready over TLS");
    // Against the built-in roots the server's certificate is refused: TLS really is in use.
    let untrusted = pgnm_store::Store::new(&pgnm_store::DbArgs::new(url)).unwrap();
    let e = untrusted.check().await.expect_err("an unknown CA is refused");
    let chain = pgnm_runtime::error_chain(&e);
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
