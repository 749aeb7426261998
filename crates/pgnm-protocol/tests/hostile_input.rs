//! Property tests of the decoders every service runs on untrusted input:
//! arbitrary bytes, mutated and truncated envelopes, deep nesting, huge length
//! prefixes, and structurally valid but hostile arguments (huge strings,
//! unicode, NaN, negative numbers) for every command's argument type. Nothing
//! may panic, overflow the stack or allocate without bound; a decoding either
//! succeeds or names what is wrong.

use pgnm_protocol::health::{CheckArgs, GetBestNodeArgs};
use pgnm_protocol::jrpc::JrpcCallArgs;
use pgnm_protocol::node::{
    AddNodeArgs, BootstrapArgs, CheckNodeArgs, GetNodeConfigArgs, GetNodesArgs, RmNodeArgs, UpdateNodeArgs,
};
use pgnm_protocol::ping::PingArgs;
use pgnm_protocol::task::{PruneHistoryArgs, TaskAddArgs, TaskListArgs, TaskName, TaskUpdateArgs};
use pgnm_protocol::{Deadline, ErrorCode, Request, decode_args, decode_header, decode_reply, decode_request};
use proptest::prelude::*;

/// Decodes `args` as every command's argument type; each must answer Ok or a
/// BAD_REQUEST naming a field, and the typed arguments' own checks must not panic.
fn decode_as_every_command(args: &rmpv::Value) {
    fn one<T: serde::de::DeserializeOwned>(args: &rmpv::Value) -> Option<T> {
        match decode_args::<T>(args.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
                assert!(e.message.starts_with("args"), "the error names the field: {}", e.message);
                None
            }
        }
    }
    if let Some(p) = one::<PingArgs>(args) {
        let _ = p.validate();
    }
    one::<CheckArgs>(args);
    one::<GetBestNodeArgs>(args);
    one::<JrpcCallArgs>(args);
    one::<AddNodeArgs>(args);
    one::<UpdateNodeArgs>(args).map(|a| a.key());
    one::<GetNodesArgs>(args);
    one::<BootstrapArgs>(args);
    one::<RmNodeArgs>(args).map(|a| a.key());
    one::<CheckNodeArgs>(args).map(|a| a.key());
    one::<GetNodeConfigArgs>(args).map(|a| a.key());
    one::<TaskAddArgs>(args);
    one::<TaskUpdateArgs>(args);
    one::<TaskListArgs>(args);
    one::<TaskName>(args);
    one::<PruneHistoryArgs>(args);
}

/// Any MessagePack value, with hostile leaves.
fn value() -> impl Strategy<Value = rmpv::Value> {
    let leaf = prop_oneof![
        Just(rmpv::Value::Nil),
        any::<bool>().prop_map(rmpv::Value::from),
        any::<i64>().prop_map(rmpv::Value::from),
        any::<u64>().prop_map(rmpv::Value::from),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), any::<f64>()].prop_map(rmpv::Value::from),
        any::<f32>().prop_map(rmpv::Value::F32),
        ".{0,40}".prop_map(rmpv::Value::from),
        prop_oneof![Just("ping"), Just("getBestNode"), Just("${HOME}"), Just("\u{202e}\u{0}é😀"), Just("-1")]
            .prop_map(rmpv::Value::from),
        (0usize..200_000).prop_map(|n| rmpv::Value::from("x".repeat(n))),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(rmpv::Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(t, d)| rmpv::Value::Ext(t, d)),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(rmpv::Value::Array),
            proptest::collection::vec((field_name(), inner), 0..8).prop_map(rmpv::Value::Map),
        ]
    })
}

/// Keys that real argument types use, and others.
fn field_name() -> impl Strategy<Value = rmpv::Value> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "name",
            "url",
            "id",
            "nodeHash",
            "labels",
            "maxFallbacks",
            "shard",
            "shards",
            "intervalMs",
            "cron",
            "timeoutMs",
            "priority",
            "weight",
            "delayMs",
            "echo",
            "nodes",
            "set",
            "spec",
            "method",
            "params",
            "olderThanSecs",
        ])
        .prop_map(rmpv::Value::from),
        ".{0,12}".prop_map(rmpv::Value::from),
        any::<i64>().prop_map(rmpv::Value::from),
    ]
}

fn encode(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn valid_request(args: Option<rmpv::Value>) -> Vec<u8> {
    pgnm_protocol::encode_request(&Request {
        version: pgnm_protocol::PROTOCOL_VERSION,
        id: "fuzz-1".to_owned(),
        command: "getBestNode".to_owned(),
        role: None,
        args,
        reply_to: Some("pgnm:reply:fuzz".to_owned()),
        deadline: Deadline::after(std::time::Duration::from_secs(5)),
        caller: "fuzz".to_owned(),
        trace_id: None,
    })
}

/// Every decoder a service runs on an entry, on `bytes`.
fn decode_everything(bytes: &[u8]) {
    let _ = decode_header(bytes);
    let _ = decode_reply(bytes);
    let _ = decode_request::<serde::de::IgnoredAny>(bytes);
    if let Ok(request) = decode_request::<rmpv::Value>(bytes) {
        let _ = request.validate(true);
        decode_as_every_command(&request.args.unwrap_or(rmpv::Value::Nil));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_and_truncated_requests_never_panic(
        args in proptest::option::of(value()),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_request(args);
        decode_everything(&bytes);
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        decode_everything(&bytes);
        let keep = cut.index(bytes.len() + 1);
        decode_everything(&bytes[..keep]);
    }

    #[test]
    fn hostile_arguments_are_refused_with_a_field_or_accepted(args in value()) {
        decode_as_every_command(&args);
        decode_everything(&valid_request(Some(args)));
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    // Where a service decodes: a thread with tokio's default worker stack (2 MiB).
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            for depth in [100usize, 1_000, 10_000, 100_000, 1_000_000] {
                // [[[[...nil...]]]]: a fixarray of one element, `depth` times.
                let mut nested = vec![0x91u8; depth];
                nested.push(0xc0);
                // {version: 1, args: <nested>}
                let mut request = vec![0x82];
                request.extend(encode(&rmpv::Value::from("version")));
                request.push(0x01);
                request.extend(encode(&rmpv::Value::from("args")));
                request.extend(&nested);
                decode_everything(&request);
                decode_everything(&nested);
            }
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

#[test]
fn huge_length_prefixes_do_not_allocate_without_bound() {
    // A map, an array, a string and a binary claiming 4 billion items, with nothing behind them.
    for prefix in [
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],
    ] {
        decode_everything(&prefix);
        let mut inside = vec![0x81];
        inside.extend(encode(&rmpv::Value::from("args")));
        inside.extend(&prefix);
        decode_everything(&inside);
    }
}
