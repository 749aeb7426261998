//! The node registry over the wire: every command through the router to the
//! checker, against the real PostgreSQL and Redis.

use pgnm_bus::Caller;
use pgnm_protocol::{ErrorBody, ErrorCode, Role};
use pgnm_tests::{Env, fast_worker, spawn_binary_logged};
use serde_json::{Value, json};

async fn call(caller: &Caller, command: &str, args: Value) -> Result<Value, ErrorBody> {
    pgnm_tests::call_json(caller, Role::Checker, command, args).await
}

async fn ok(caller: &Caller, command: &str, args: Value) -> Value {
    call(caller, command, args.clone()).await.unwrap_or_else(|e| panic!("{command} {args} failed: {e:?}"))
}

async fn err(caller: &Caller, command: &str, args: Value) -> ErrorBody {
    match call(caller, command, args.clone()).await {
        Ok(v) => panic!("{command} {args} succeeded: {v}"),
        Err(e) => e,
    }
}

async fn start(env: &mut Env) -> Caller {
    env.start_router("router-1", fast_worker());
    env.start_checker("checker-1", fast_worker());
    env.wait_for_groups().await;
    env.caller().await
}

fn write_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

fn temp_dir(env: &Env) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgnm-test-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_command_works_over_the_wire() {
    let mut env = Env::new().await;
    let caller = start(&mut env).await;

    let added = ok(
        &caller,
        "addNode",
        json!({"type": "btc", "config": {
            "name": "btc-1", "url": "http://rpc:hunter2@10.0.0.1:8332/", "priority": 1,
            "labels": {"region": "eu"}, "timeoutMs": 2000
        }}),
    )
    .await;
    assert_eq!(added["type"], "btc");
    assert_eq!(added["family"], "bitcoin");
    assert_eq!(added["revision"], 1);
    assert_eq!(added["source"], "api");
    assert_eq!(added["config"]["url"], "http://rpc:***@10.0.0.1:8332/", "the literal password is redacted");
    assert_eq!(added["config"]["enabled"], true);
    assert_eq!(added["config"]["weight"], 100);
    let id = added["id"].as_i64().unwrap();
    let hash = added["nodeHash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 32);

    ok(
        &caller,
        "addNode",
        json!({"type": "eth", "config": {"name": "eth-1", "url": "https://eth.example", "labels": {"region": "us"}}}),
    )
    .await;
    ok(
        &caller,
        "addNode",
        json!({"type": "eth", "config": {"name": "eth-2", "url": "https://eth2.example", "enabled": false}}),
    )
    .await;

    // getNodeConfig by id, hash and name.
    for selector in [json!({"id": id}), json!({"nodeHash": hash}), json!({"name": "btc-1"})] {
        let got = ok(&caller, "getNodeConfig", selector).await;
        assert_eq!(got["id"], id);
        assert_eq!(got["config"]["timeoutMs"], 2000);
    }

    // getNodes with filters, in id order.
    let names = |v: &Value| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["config"]["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ok(&caller, "getNodes", json!({})).await), ["btc-1", "eth-1", "eth-2"]);
    assert_eq!(names(&ok(&caller, "getNodes", json!({"type": "eth"})).await), ["eth-1", "eth-2"]);
    assert_eq!(names(&ok(&caller, "getNodes", json!({"enabled": false})).await), ["eth-2"]);
    assert_eq!(names(&ok(&caller, "getNodes", json!({"labels": {"region": "eu"}})).await), ["btc-1"]);

    // updateNode: a partial change, based on the revision.
    let updated =
        ok(&caller, "updateNode", json!({"name": "btc-1", "revision": 1, "set": {"weight": 7, "timeoutMs": null}}))
            .await;
    assert_eq!(updated["revision"], 2);
    assert_eq!(updated["config"]["weight"], 7);
    assert_eq!(updated["config"]["priority"], 1, "untouched fields keep their value");
    assert!(updated["config"].get("timeoutMs").is_none(), "null clears an optional field");
    // A new URL gives a new hash.
    let moved =
        ok(&caller, "updateNode", json!({"id": id, "revision": 2, "set": {"url": "http://10.0.0.2:8332"}})).await;
    assert_ne!(moved["nodeHash"], hash);

    // rmNode, then it is gone.
    let removed = ok(&caller, "rmNode", json!({"id": id})).await;
    assert_eq!(removed["config"]["name"], "btc-1");
    assert_eq!(err(&caller, "getNodeConfig", json!({"id": id})).await.code, ErrorCode::NotFound);
    assert_eq!(err(&caller, "rmNode", json!({"id": id})).await.code, ErrorCode::NotFound);
    assert_eq!(names(&ok(&caller, "getNodes", json!({})).await), ["eth-1", "eth-2"]);

    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_node_commands_get_errors_naming_the_field() {
    let mut env = Env::new().await;
    let caller = start(&mut env).await;
    ok(&caller, "addNode", json!({"type": "eth", "config": {"name": "eth-1", "url": "https://eth.example:443/"}}))
        .await;

    let node = |config: Value| json!({"type": "eth", "config": config});
    // (arguments, expected code, text the message must contain)
    let cases: Vec<(&str, Value, ErrorCode, &str)> = vec![
        (
            "addNode",
            json!({"type": "dogecoin-classic", "config": {"name": "x", "url": "http://h"}}),
            ErrorCode::BadRequest,
            "type: unknown chain type",
        ),
        ("addNode", node(json!({"name": "x", "url": "not a url"})), ErrorCode::BadRequest, "config.url: malformed URL"),
        (
            "addNode",
            node(json!({"name": "x", "url": "ws://h:8546"})),
            ErrorCode::BadRequest,
            "config.url: unsupported scheme",
        ),
        ("addNode", node(json!({"name": "x", "url": "https://ETH.example"})), ErrorCode::Conflict, "config.url"),
        ("addNode", node(json!({"name": "eth-1", "url": "https://other.example"})), ErrorCode::Conflict, "config.name"),
        (
            "addNode",
            node(
                json!({"name": "x", "url": "http://h", "auth": {"username": "u", "password": "${PGNM_TEST_SURELY_UNSET}"}}),
            ),
            ErrorCode::BadRequest,
            "config.auth.password: environment variable PGNM_TEST_SURELY_UNSET is not set",
        ),
        ("addNode", node(json!({"name": "x", "url": "http://h", "weight": 0})), ErrorCode::BadRequest, "config.weight"),
        (
            "addNode",
            node(json!({"name": "x", "url": "http://h", "priority": 10})),
            ErrorCode::BadRequest,
            "config.priority",
        ),
        (
            "addNode",
            node(json!({"name": "x", "url": "http://h", "priority": -1})),
            ErrorCode::BadRequest,
            "args.config.priority",
        ),
        (
            "addNode",
            node(json!({"name": "x", "url": "http://h", "timeoutMs": 5})),
            ErrorCode::BadRequest,
            "config.timeoutMs",
        ),
        ("addNode", node(json!({"name": "x", "url": "http://h", "colour": "red"})), ErrorCode::BadRequest, "colour"),
        ("addNode", node(json!({"name": "bad name!", "url": "http://h"})), ErrorCode::BadRequest, "config.name"),
        ("addNode", json!({"type": "eth"}), ErrorCode::BadRequest, "config"),
        ("getNodeConfig", json!({}), ErrorCode::BadRequest, "id, nodeHash or name"),
        ("getNodeConfig", json!({"id": 1, "name": "eth-1"}), ErrorCode::BadRequest, "only one"),
        ("getNodeConfig", json!({"name": "eth-1", "revealSecrets": true}), ErrorCode::Forbidden, "revealSecrets"),
        ("getNodeConfig", json!({"name": "nope"}), ErrorCode::NotFound, "nope"),
        ("getNodes", json!({"limit": 0}), ErrorCode::BadRequest, "args.limit"),
        ("getNodes", json!({"after": "zz"}), ErrorCode::BadRequest, "args.after"),
        ("getNodes", json!({"type": "nope"}), ErrorCode::BadRequest, "args.type"),
        ("updateNode", json!({"name": "eth-1", "revision": 7, "set": {"weight": 3}}), ErrorCode::Conflict, "revision"),
        (
            "updateNode",
            json!({"name": "eth-1", "revision": 1, "set": {"weight": 20000}}),
            ErrorCode::BadRequest,
            "set.weight",
        ),
        ("updateNode", json!({"name": "eth-1", "revision": 1, "set": {"type": "btc"}}), ErrorCode::BadRequest, "type"),
        ("updateNode", json!({"name": "ghost", "revision": 1, "set": {}}), ErrorCode::NotFound, "ghost"),
        ("rmNode", json!({"nodeHash": "00000000000000000000000000000000"}), ErrorCode::NotFound, "nodeHash"),
    ];
    for (command, args, code, text) in cases {
        let e = err(&caller, command, args.clone()).await;
        assert_eq!(e.code, code, "{command} {args}: {}", e.message);
        assert!(e.message.contains(text), "{command} {args}: {:?} should mention {text:?}", e.message);
    }
    // Nothing of that was written.
    assert_eq!(ok(&caller, "getNodes", json!({})).await["nodes"].as_array().unwrap().len(), 1);
    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_updates_one_wins_the_other_conflicts() {
    let mut env = Env::new().await;
    let caller = start(&mut env).await;
    let added =
        ok(&caller, "addNode", json!({"type": "eth", "config": {"name": "eth-1", "url": "http://h:8545"}})).await;
    let rev = added["revision"].as_i64().unwrap();
    for round in 0..5 {
        let a = call(
            &caller,
            "updateNode",
            json!({"name": "eth-1", "revision": rev + round, "set": {"weight": 10 + round}}),
        );
        let b = call(
            &caller,
            "updateNode",
            json!({"name": "eth-1", "revision": rev + round, "set": {"weight": 50 + round}}),
        );
        let (a, b) = tokio::join!(a, b);
        let (winner, loser) = match (a, b) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("round {round}: exactly one update must win: {other:?}"),
        };
        assert_eq!(loser.code, ErrorCode::Conflict, "{}", loser.message);
        assert_eq!(winner["revision"], rev + round + 1);
        let now = ok(&caller, "getNodeConfig", json!({"name": "eth-1"})).await;
        assert_eq!(now["config"]["weight"], winner["config"]["weight"], "the winner's change is the one stored");
    }
    caller.close().await;
    env.finish().await;
}

const NODES_FILE: &str = r#"
nodes:
  - type: btc
    name: btc-a
    url: http://10.0.0.1:8332
    auth: {username: rpc, password: "${PGNM_TEST_UNUSED_BUT_SET}"}
  - type: btc
    name: btc-b
    url: http://10.0.0.2:8332
    weight: 50
  - type: eth
    name: eth-a
    url: https://eth-a.example
    labels: {region: eu}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_is_idempotent_exact_and_never_half_applied() {
    let mut env = Env::new().await;
    let dir = temp_dir(&env);
    // The file references a variable; use PATH, which every environment has.
    let file = write_file(&dir, "nodes.yaml", &NODES_FILE.replace("PGNM_TEST_UNUSED_BUT_SET", "PATH"));
    env.start_router("router-1", fast_worker());
    let mut config = env.checker_config("checker-1", fast_worker());
    config.nodes_file = Some(file.clone());
    env.start_checker_with(config);
    env.wait_for_groups().await;
    let caller = env.caller().await;
    let count = async |caller: &Caller| ok(caller, "getNodes", json!({})).await["nodes"].as_array().unwrap().len();

    // The cold start (empty registry) loaded the file by itself.
    assert_eq!(count(&caller).await, 3);
    let names = |v: &Value, list: &str| {
        let mut n: Vec<String> =
            v[list].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
        n.sort();
        n
    };

    // Twice from the same file: nothing changes.
    let again = ok(&caller, "bootstrap", json!({})).await;
    assert_eq!(names(&again, "unchanged"), ["btc-a", "btc-b", "eth-a"]);
    assert!(again["added"].as_array().unwrap().is_empty() && again["changed"].as_array().unwrap().is_empty());
    assert_eq!(again["applied"], false);
    let rev_before = ok(&caller, "getNodeConfig", json!({"name": "btc-a"})).await["revision"].clone();

    // An edited file reports exactly what changed.
    let edited = NODES_FILE.replace("PGNM_TEST_UNUSED_BUT_SET", "PATH").replace("weight: 50", "weight: 60")
        + "  - {type: doge, name: doge-a, url: 'http://10.0.0.9:22555'}\n";
    std::fs::write(&file, edited).unwrap();
    let dry = ok(&caller, "bootstrap", json!({"dryRun": true})).await;
    assert_eq!(dry["applied"], false);
    assert_eq!(names(&dry, "added"), ["doge-a"]);
    assert_eq!(count(&caller).await, 3, "a dry run changes nothing");
    let report = ok(&caller, "bootstrap", json!({})).await;
    assert_eq!(report["applied"], true);
    assert_eq!(names(&report, "added"), ["doge-a"]);
    assert_eq!(names(&report, "changed"), ["btc-b"]);
    assert_eq!(report["changed"][0]["fields"], json!(["weight"]));
    assert_eq!(names(&report, "unchanged"), ["btc-a", "eth-a"]);
    assert_eq!(ok(&caller, "getNodeConfig", json!({"name": "btc-b"})).await["config"]["weight"], 60);
    assert_eq!(ok(&caller, "getNodeConfig", json!({"name": "btc-a"})).await["revision"], rev_before);

    // One invalid entry: the whole file is refused, with that entry's reason.
    let broken = std::fs::read_to_string(&file).unwrap()
        + "  - {type: eth, name: eth-new, url: 'https://eth-new.example'}\n  - {type: eth, name: eth-bad, url: 'gopher://x'}\n";
    std::fs::write(&file, &broken).unwrap();
    let refused = ok(&caller, "bootstrap", json!({})).await;
    assert_eq!(refused["applied"], false);
    assert_eq!(refused["invalid"].as_array().unwrap().len(), 1);
    assert_eq!(refused["invalid"][0]["index"], 5);
    assert_eq!(refused["invalid"][0]["name"], "eth-bad");
    assert!(refused["invalid"][0]["reason"].as_str().unwrap().contains("nodes[5].url: unsupported scheme"));
    assert_eq!(count(&caller).await, 4, "nothing of a refused file is applied");
    assert_eq!(err(&caller, "getNodeConfig", json!({"name": "eth-new"})).await.code, ErrorCode::NotFound);

    // Asked to skip invalid entries, the rest is applied.
    let skipped = ok(&caller, "bootstrap", json!({"skipInvalid": true})).await;
    assert_eq!(skipped["applied"], true);
    assert_eq!(names(&skipped, "added"), ["eth-new"]);
    assert_eq!(skipped["invalid"].as_array().unwrap().len(), 1);
    assert_eq!(count(&caller).await, 5);

    // A broken file is an error naming the file.
    std::fs::write(&file, "nodes: {").unwrap();
    let e = err(&caller, "bootstrap", json!({})).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("nodes.yaml"), "{}", e.message);

    caller.close().await;
    env.finish().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_nodes_pages_through_ten_thousand_nodes() {
    let mut env = Env::new().await;
    let dir = temp_dir(&env);
    let mut text = String::from("nodes:\n");
    for i in 0..10_000 {
        let t = if i % 2 == 0 { "btc" } else { "eth" };
        text.push_str(&format!(
            "  - {{type: {t}, name: n{i:05}, url: 'http://10.{}.{}.{}:8000'}}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let file = write_file(&dir, "nodes.yaml", &text);
    env.start_router("router-1", fast_worker());
    let mut config = env.checker_config("checker-1", fast_worker());
    config.nodes_file = Some(file);
    env.start_checker_with(config);
    env.wait_for_groups().await;
    let caller = env.caller().await;

    // Explicit load (the cold start may be racing it; both are idempotent).
    let loaded = ok(&caller, "bootstrap", json!({})).await;
    let total = loaded["added"].as_array().unwrap().len() + loaded["unchanged"].as_array().unwrap().len();
    assert_eq!(total, 10_000);

    for (filter, expected) in [(json!({}), 10_000), (json!({"type": "eth"}), 5_000)] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut args = filter.clone();
            args["limit"] = json!(1000);
            if let Some(a) = &after {
                args["after"] = json!(a);
            }
            let page = ok(&caller, "getNodes", args).await;
            pages += 1;
            for n in page["nodes"].as_array().unwrap() {
                seen.push(n["id"].as_i64().unwrap());
            }
            match page.get("next") {
                Some(Value::String(n)) => after = Some(n.clone()),
                _ => break,
            }
        }
        assert_eq!(seen.len(), expected, "{filter}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "stable id order, no repeats");
        assert_eq!(pages, expected / 1000, "no empty trailing page");
    }
    caller.close().await;
    env.finish().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_replies_logs_and_rows() {
    let mut env = Env::new().await;
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    let var = format!("PGNM_TEST_SECRET_{}", env.prefix.to_uppercase());
    let log = temp_dir(&env).join("checker.log");
    env.start_router("router-1", fast_worker());
    let mut checker = spawn_binary_logged(
        &env,
        "pgnm-checker",
        &[(var.as_str(), secret.clone()), ("PGNM_LOG", "debug".to_owned()), ("PGNM_INSTANCE", "checker-1".to_owned())],
        &log,
    );
    env.wait_for_groups().await;
    env.wait_for_group(Role::Checker).await;
    let caller = env.caller().await;

    let url = format!("https://rpc.example/v3/${{{var}}}?apikey=${{{var}}}");
    let added = ok(
        &caller,
        "addNode",
        json!({"type": "eth", "config": {
            "name": "eth-secret", "url": url,
            "auth": {"username": "rpc", "password": format!("${{{var}}}")},
            "headers": {"x-api-key": format!("${{{var}}}")}
        }}),
    )
    .await;
    let mut replies = vec![added.to_string()];
    replies.push(ok(&caller, "getNodeConfig", json!({"name": "eth-secret"})).await.to_string());
    replies.push(ok(&caller, "getNodes", json!({})).await.to_string());
    replies.push(
        ok(&caller, "updateNode", json!({"name": "eth-secret", "revision": 1, "set": {"weight": 5}})).await.to_string(),
    );
    // The reference is what is stored and shown: the operator sees which secret is used.
    assert!(replies[1].contains(&format!("${{{var}}}")), "{}", replies[1]);
    // Without the variable the node is refused: the value is really looked up.
    let e = err(
        &caller,
        "addNode",
        json!({"type": "eth", "config": {"name": "x", "url": "http://h/${PGNM_TEST_NOT_SET_ANYWHERE}"}}),
    )
    .await;
    assert!(e.message.contains("PGNM_TEST_NOT_SET_ANYWHERE is not set"), "{}", e.message);
    // Revealing is off by default.
    assert_eq!(
        err(&caller, "getNodeConfig", json!({"name": "eth-secret", "revealSecrets": true})).await.code,
        ErrorCode::Forbidden
    );

    let rows = env.sql().await.query("SELECT row_to_json(n)::text FROM nodes n", &[]).await.unwrap();
    let rows: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(rows.len(), 1);

    checker.kill().await.unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("node added"), "the checker logged at debug level:\n{logs}");
    for (what, text) in
        replies.iter().map(|r| ("a reply", r)).chain(rows.iter().map(|r| ("a row", r))).chain([("the log", &logs)])
    {
        assert!(!text.contains(&secret), "the secret leaked into {what}: {text}");
    }
    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_nodes_and_tasks() {
    let mut env = Env::new().await;
    env.start_all().await;
    let pgnm = |args: &[&str]| {
        let out = pgnm_tests::run_cli(&env, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = pgnm(&[
        "nodes",
        "add",
        "btc",
        "btc-cli",
        "http://rpc:pw@10.1.1.1:8332",
        "--label",
        "region=eu",
        "--weight",
        "7",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("added node btc-cli"), "{out}");
    assert!(out.contains("http://rpc:***@10.1.1.1:8332"), "{out}");
    let (code, out, _) = pgnm(&["nodes", "update", "btc-cli", "--priority", "2"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("revision 2"), "{out}");
    let (code, out, _) = pgnm(&["nodes", "list"]);
    assert_eq!(code, Some(0));
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("LABELS"), "{out}");
    assert!(out.contains("btc-cli") && out.contains("region=eu") && out.contains("1 node(s)"), "{out}");
    let (_, out, _) = pgnm(&["nodes", "list", "--json"]);
    let page: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(page["nodes"][0]["config"]["weight"], 7);
    assert_eq!(page["nodes"][0]["config"]["priority"], 2);
    let (code, out, _) = pgnm(&["nodes", "add", "btc", "dup", "http://10.1.1.1:8332"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("CONFLICT"), "{out}");
    let (code, _, _) = pgnm(&["nodes", "rm", "btc-cli"]);
    assert_eq!(code, Some(0));
    let (code, out, _) = pgnm(&["nodes", "show", "btc-cli"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("NOT_FOUND"), "{out}");

    let (code, out, err) = pgnm(&["tasks", "add", "hello", "ping", "--role", "checker", "--every-ms", "60000"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = pgnm(&["tasks", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines().any(|l| l.starts_with("hello") && l.contains("ping@checker") && l.contains("every 60000 ms")),
        "{out}"
    );
    let (code, out, _) = pgnm(&["tasks", "add", "bad", "ping", "--cron", "whenever"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("args.cron"), "{out}");
    let (code, out, _) = pgnm(&["tasks", "run", "hello"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("queued a run of hello"), "{out}");
    env.finish().await;
}
