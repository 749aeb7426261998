//! Caller → router → role → caller, for every role, from Rust, from the CLI and
//! from the Python example of `proto-schemas/`.

use std::time::Duration;

use pgnm_bus::CallSpec;
use pgnm_protocol::ping::{PingArgs, PingResult};
use pgnm_protocol::{ErrorCode, Role};
use pgnm_tests::Env;

fn ping_result(value: &rmpv::Value) -> PingResult {
    pgnm_protocol::decode_data(value).expect("a ping result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reaches_every_role_and_comes_back() {
    let mut env = Env::new().await;
    env.start_all().await;
    let caller = env.caller().await;
    let timeout = Duration::from_secs(5);

    for role in [Role::Checker, Role::Scheduler, Role::Router] {
        let args = PingArgs { echo: Some(format!("hello {role}")), delay_ms: None };
        let reply = caller.call(CallSpec::new("ping", timeout).role(role).args(args)).await.expect("a reply");
        let result = ping_result(reply.result().expect("ok"));
        assert_eq!(result.role, role);
        assert_eq!(result.echo.as_deref(), Some(format!("hello {role}").as_str()));
        assert_eq!(reply.instance, format!("{}-1", role.as_str()));
    }

    // Without a role, ping is fanned out to every executing role and joined.
    let reply = caller.call(CallSpec::new("ping", timeout)).await.expect("a reply");
    let data = reply.result().expect("ok");
    assert_eq!(ping_result(&data["checker"]).role, Role::Checker);
    assert_eq!(ping_result(&data["scheduler"]).role, Role::Scheduler);

    // A command served by no such role is refused by the router.
    let reply = caller.call(CallSpec::new("taskList", timeout).role(Role::Checker)).await.expect("a reply");
    assert_eq!(reply.result().unwrap_err().code, ErrorCode::UnknownCommand);

    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_call_prints_the_reply_and_sets_the_exit_status() {
    let mut env = Env::new().await;
    env.start_all().await;
    let run = |args: &[&str]| pgnm_tests::run_cli(&env, args);

    let out = run(&["call", "ping", "--role", "checker", "--args", r#"{"echo":"from the cli"}"#, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(reply["data"]["role"], "checker");
    assert_eq!(reply["data"]["echo"], "from the cli");
    assert_eq!(reply["instance"], "checker-1");

    let out = run(&["call", "ping", "--role", "scheduler"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok: ping answered by scheduler-1"), "{text}");

    let out = run(&["call", "noSuchCommand", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(reply["error"]["code"], "UNKNOWN_COMMAND");

    let out = run(&["call", "ping", "--args", "[1]"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--args: must be a JSON object"));

    env.finish().await;
}

/// The Python example of `proto-schemas/README.md` runs against the live system.
/// It needs the `redis` and `msgpack` packages; `make test` installs them in a
/// virtual environment and points `PGNM_PYTHON` at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_calls_through_the_router() {
    let mut env = Env::new().await;
    env.start_all().await;
    let python = std::env::var("PGNM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto-schemas/examples/ping.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("PGNM_REDIS_URL", &env.url)
        .env("PGNM_PREFIX", &env.prefix)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python example failed (set PGNM_PYTHON to a Python with redis and msgpack, as `make test` does):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"role\": \"checker\""), "{stdout}");
    assert!(stdout.contains("UNKNOWN_COMMAND"), "{stdout}");
    env.finish().await;
}
