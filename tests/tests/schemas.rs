//! `proto-schemas/` is generated from the Rust types: this test fails when the
//! committed files and the types disagree (`make schemas` rewrites them), and
//! checks that real encoded messages validate against the committed schemas.

use std::path::PathBuf;

use pgnm_protocol::ping::{PingArgs, PingResult};
use pgnm_protocol::{
    Deadline, ErrorBody, ErrorCode, ReplyBody, Request, Role, encode_data, encode_reply, encode_request,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto-schemas")
}

fn committed(name: &str) -> serde_json::Value {
    let path = dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make schemas`)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn committed_schemas_match_the_rust_types() {
    let bless = std::env::var_os("PGNM_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in pgnm_protocol::schema::all() {
        let path = dir().join(&name);
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(stale.is_empty(), "stale or missing schemas {stale:?}: run `make schemas` and commit the result");
}

/// Decodes a MessagePack message into JSON, as a client in another language sees it.
fn as_json(bytes: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice(bytes).expect("valid MessagePack")
}

fn assert_valid(schema: &str, instance: &serde_json::Value) {
    let validator = jsonschema::validator_for(&committed(schema)).expect("a valid schema");
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{instance} does not match {schema}: {errors:?}");
}

fn assert_invalid(schema: &str, instance: &serde_json::Value) {
    let validator = jsonschema::validator_for(&committed(schema)).expect("a valid schema");
    assert!(!validator.is_valid(instance), "{instance} should not match {schema}");
}

#[test]
fn encoded_messages_validate_against_the_committed_schemas() {
    let request = Request {
        version: 1,
        id: "r-1".into(),
        command: "ping".into(),
        role: Some("checker".into()),
        args: Some(PingArgs { echo: Some("hi".into()), delay_ms: Some(5) }),
        reply_to: Some("pgnm:reply:me".into()),
        deadline: Deadline(1_800_000_000_000),
        caller: "schema-test".into(),
        trace_id: None,
    };
    let wire = as_json(&encode_request(&request));
    assert_valid("request.schema.json", &wire);
    assert_valid("commands/ping.args.schema.json", &wire["args"]);

    let result = PingResult { role: Role::Checker, instance: "c-1".into(), echo: None, time: 1 };
    let ok = as_json(&encode_reply("r-1", "c-1", ReplyBody::Data(&encode_data(&result).unwrap())));
    assert_valid("reply.schema.json", &ok);
    assert_valid("commands/ping.result.schema.json", &ok["data"]);

    let error = ErrorBody::new(ErrorCode::DeadlineExceeded, "too late");
    let err = as_json(&encode_reply("r-1", "c-1", ReplyBody::Error(&error)));
    assert_valid("reply.schema.json", &err);
    assert_valid("error.schema.json", &err["error"]);

    // The schemas are strict where the decoder is.
    let mut typo = wire.clone();
    typo["reply_to"] = "pgnm:reply:me".into();
    assert_invalid("request.schema.json", &typo);
    assert_invalid("commands/ping.args.schema.json", &serde_json::json!({"delayMs": 60001}));
    assert_invalid(
        "error.schema.json",
        &serde_json::json!({"code": "NO_SUCH_CODE", "message": "x", "retryable": false}),
    );
}

#[test]
fn the_command_table_lists_every_command_and_code() {
    let table = committed("commands.json");
    let names: Vec<&str> = table["commands"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for command in pgnm_protocol::Command::ALL {
        assert!(names.contains(&command.as_str()), "{command} missing from commands.json");
    }
    let codes: Vec<&str> =
        table["errorCodes"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
    assert_eq!(codes.len(), ErrorCode::ALL.len());
}
