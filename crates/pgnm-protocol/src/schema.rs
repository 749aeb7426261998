//! JSON Schemas of every envelope, command argument and result, generated from the
//! Rust types. `proto-schemas/` holds their committed copies; a test fails when the
//! two disagree.

use serde_json::{Value, json};

use crate::command::Command;
use crate::envelope::{Reply, Request};
use crate::error::{ErrorBody, ErrorCode};
use crate::ping::{PingArgs, PingResult};
use crate::task;
use crate::{health, jrpc, node};

/// Arguments of a command that takes none.
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // only its schema is used
struct Empty {}

fn schema<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("a schema always converts to JSON")
}

/// Returns every schema as (file name under `proto-schemas/`, schema).
pub fn all() -> Vec<(String, Value)> {
    let mut out = vec![
        ("request.schema.json".to_owned(), schema::<Request>()),
        ("reply.schema.json".to_owned(), schema::<Reply>()),
        ("error.schema.json".to_owned(), schema::<ErrorBody>()),
        ("commands.json".to_owned(), command_table()),
        ("event.schema.json".to_owned(), schema::<health::StatusEvent>()),
    ];
    // (file stem, arguments, result); a command served differently by several
    // roles is named `<command>.<role>`.
    let typed: Vec<(String, Value, Value)> = vec![
        (Command::Ping.to_string(), schema::<PingArgs>(), schema::<PingResult>()),
        (Command::AddNode.to_string(), schema::<node::AddNodeArgs>(), schema::<node::NodeView>()),
        (Command::RmNode.to_string(), schema::<node::RmNodeArgs>(), schema::<node::NodeView>()),
        (Command::UpdateNode.to_string(), schema::<node::UpdateNodeArgs>(), schema::<node::NodeView>()),
        (Command::GetNodeConfig.to_string(), schema::<node::GetNodeConfigArgs>(), schema::<node::NodeView>()),
        (Command::GetNodes.to_string(), schema::<node::GetNodesArgs>(), schema::<node::GetNodesResult>()),
        ("bootstrap.checker".to_owned(), schema::<node::BootstrapArgs>(), schema::<node::BootstrapResult>()),
        ("bootstrap.scheduler".to_owned(), schema::<Empty>(), schema::<task::SchedulerBootstrapResult>()),
        (Command::TaskList.to_string(), schema::<task::TaskListArgs>(), schema::<task::TaskListResult>()),
        (Command::TaskAdd.to_string(), schema::<task::TaskAddArgs>(), schema::<task::TaskView>()),
        (Command::TaskUpdate.to_string(), schema::<task::TaskUpdateArgs>(), schema::<task::TaskView>()),
        (Command::TaskStop.to_string(), schema::<task::TaskName>(), schema::<task::TaskView>()),
        (Command::TaskRemove.to_string(), schema::<task::TaskName>(), schema::<task::TaskView>()),
        (Command::TaskRun.to_string(), schema::<task::TaskName>(), schema::<task::TaskRunResult>()),
        (Command::PruneHistory.to_string(), schema::<task::PruneHistoryArgs>(), schema::<task::PruneHistoryResult>()),
        (Command::Check.to_string(), schema::<health::CheckArgs>(), schema::<health::CheckResult>()),
        (Command::CheckNode.to_string(), schema::<node::CheckNodeArgs>(), schema::<health::CheckNodeResult>()),
        (Command::GetBestNode.to_string(), schema::<health::GetBestNodeArgs>(), schema::<health::GetBestNodeResult>()),
        (Command::JrpcCall.to_string(), schema::<jrpc::JrpcCallArgs>(), schema::<jrpc::JrpcCallResult>()),
    ];
    for (stem, args, result) in typed {
        out.push((format!("commands/{stem}.args.schema.json"), args));
        out.push((format!("commands/{stem}.result.schema.json"), result));
    }
    out
}

/// Returns the routing table and the error codes as a JSON document.
fn command_table() -> Value {
    let commands: Vec<Value> = Command::ALL
        .iter()
        .map(|c| json!({ "name": c.as_str(), "roles": c.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>() }))
        .collect();
    let codes: Vec<Value> = ErrorCode::ALL
        .iter()
        .map(|c| json!({ "code": c.as_str(), "retryableByDefault": c.default_retryable() }))
        .collect();
    json!({
        "protocolVersion": crate::PROTOCOL_VERSION,
        "entryField": crate::ENTRY_FIELD,
        "commands": commands,
        "errorCodes": codes,
    })
}
