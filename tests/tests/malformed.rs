//! Malformed input gets a typed error reply where a reply stream can be read, a
//! dead-letter entry otherwise, and the services keep serving.

use std::time::Duration;

use pgnm_bus::CallSpec;
use pgnm_protocol::{ErrorCode, Role};
use pgnm_tests::Env;
use serde_json::json;

fn msgpack(v: serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_typed_errors_or_dead_letters() {
    let mut env = Env::new().await;
    env.start_all().await;
    let replies = env.raw_reply_stream("bad").await;
    let deadline = pgnm_protocol::now_ms() + 30_000;
    let good = |id: &str, command: &str| json!({"version": 1, "id": id, "command": command, "replyTo": replies, "deadline": deadline, "caller": "tests"});

    // (request id, payload, expected code) — each answered on the reply stream.
    let mut wrong_type = good("wrong-type", "ping");
    wrong_type["deadline"] = json!("tomorrow");
    let mut missing = good("missing-field", "ping");
    missing.as_object_mut().unwrap().remove("caller");
    let mut bad_version = good("bad-version", "ping");
    bad_version["version"] = json!(99);
    let mut bad_args = good("bad-args", "ping");
    bad_args["role"] = json!("checker");
    bad_args["args"] = json!({"delayMs": -5});
    let mut not_a_map = good("args-not-a-map", "ping");
    not_a_map["role"] = json!("checker");
    not_a_map["args"] = json!([1, 2]);
    let mut far_deadline = good("far-deadline", "ping");
    far_deadline["deadline"] = json!(pgnm_protocol::now_ms() + 365 * 24 * 3600 * 1000);
    let mut bad_role = good("bad-role", "ping");
    bad_role["role"] = json!("janitor");
    let mut oversize = good("oversize", "ping");
    oversize["args"] = json!({"echo": "x".repeat(2 << 20)});
    let answered: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("wrong-type", msgpack(wrong_type), ErrorCode::BadRequest),
        ("missing-field", msgpack(missing), ErrorCode::BadRequest),
        ("bad-version", msgpack(bad_version), ErrorCode::BadRequest),
        ("far-deadline", msgpack(far_deadline), ErrorCode::BadRequest),
        ("unknown-command", msgpack(good("unknown-command", "launchRockets")), ErrorCode::UnknownCommand),
        ("bad-args", msgpack(bad_args), ErrorCode::BadRequest),
        ("args-not-a-map", msgpack(not_a_map), ErrorCode::BadRequest),
        ("bad-role", msgpack(bad_role), ErrorCode::BadRequest),
        ("oversize", msgpack(oversize), ErrorCode::PayloadTooLarge),
    ];
    for (_, payload, _) in &answered {
        env.xadd_raw(&env.keys.ingress(), payload.clone()).await;
    }
    // Unanswerable: garbage bytes, a map without a readable replyTo, a replyTo
    // outside the reply namespace, an entry without the `m` field.
    env.xadd_raw(&env.keys.ingress(), vec![0xc1, 0xff, 0x00, 0x13, 0x37]).await;
    // Nested 100,000 deep: refused before any recursive decoder sees it (it
    // would overflow the stack and take the router down).
    let mut deep = vec![0x81, 0xa4, b'a', b'r', b'g', b's'];
    deep.extend(std::iter::repeat_n(0x91u8, 100_000));
    deep.push(0xc0);
    env.xadd_raw(&env.keys.ingress(), deep).await;
    env.xadd_raw(&env.keys.ingress(), msgpack(json!({"id": 5, "replyTo": 7}))).await;
    let mut hijack = good("hijack", "ping");
    hijack["replyTo"] = json!(env.keys.inbox(Role::Checker));
    env.xadd_raw(&env.keys.ingress(), msgpack(hijack)).await;
    let _: String =
        fred::prelude::StreamsInterface::xadd(&env.redis, env.keys.ingress(), false, None, "*", ("other", "field"))
            .await
            .unwrap();

    let got = env.wait_replies(&replies, answered.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), answered.len(), "{got:#?}");
    for (id, _, code) in &answered {
        let reply = got.iter().find(|r| r.id == *id).unwrap_or_else(|| panic!("no reply to {id}"));
        let error = reply.error.as_ref().unwrap_or_else(|| panic!("{id} succeeded"));
        assert_eq!(error.code, *code, "{id}: {}", error.message);
        assert!(!error.message.is_empty());
    }
    let messages: Vec<(&str, &str)> =
        got.iter().map(|r| (r.id.as_str(), r.error.as_ref().unwrap().message.as_str())).collect();
    let message = |id: &str| messages.iter().find(|(i, _)| *i == id).unwrap().1;
    assert!(message("bad-args").contains("args.delayMs"), "{}", message("bad-args"));
    assert!(message("missing-field").contains("caller"), "{}", message("missing-field"));

    let dead = env.wait_dead_letters(&env.keys.dead_letter(Role::Router), 5).await;
    assert_eq!(dead.len(), 5, "{dead:?}");
    assert!(dead.iter().all(|d| d.contains_key("reason") && d.contains_key("entry")));

    // Still serving.
    let caller = env.caller().await;
    let reply = caller.call(CallSpec::new("ping", Duration::from_secs(5)).role(Role::Checker)).await.unwrap();
    assert!(reply.error.is_none());
    caller.close().await;
    env.finish().await;
}
