//! Raw stream commands and the parsing of their replies.
//!
//! Stream commands go through fred's `custom` interface so that every argument
//! and every reply shape is explicit; each command is hashed on its key so that it
//! reaches the right node of a Redis Cluster.

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use fred::util::redis_keyslot;

use crate::error::BusError;

/// One stream entry: its id and the payload of its `m` field, if it has one.
#[derive(Debug, Clone)]
pub(crate) struct StreamEntry {
    pub id: String,
    pub payload: Option<Bytes>,
}

/// Returns the custom command `name` hashed on `key`.
pub(crate) fn command(name: &'static str, key: &str, blocking: bool) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Custom(redis_keyslot(key.as_bytes())), blocking)
}

/// Runs `name` on `key` with `args` (the key included, where the command wants it).
pub(crate) async fn run(
    client: &Client,
    name: &'static str,
    key: &str,
    args: Vec<Value>,
    blocking: bool,
) -> Result<Value, BusError> {
    client.custom::<Value, Value>(command(name, key, blocking), args).await.map_err(BusError::redis(name))
}

/// Returns the value as bytes, if it is a string.
pub(crate) fn bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        _ => None,
    }
}

/// Returns the value as a string, if it is one.
pub(crate) fn string(v: Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// Returns the value as an integer, if it is one (or a string holding one).
pub(crate) fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn into_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        Value::Map(m) => m.inner().into_iter().flat_map(|(k, v)| [Value::from(k), v]).collect(),
        other => vec![other],
    }
}

/// Parses a list of entries: `[[id, [field, value, ...]], ...]`. A deleted entry
/// (`[id, nil]`) has no payload.
pub(crate) fn entries(v: Value) -> Vec<StreamEntry> {
    into_array(v)
        .into_iter()
        .filter_map(|e| {
            let mut parts = into_array(e).into_iter();
            let id = string(parts.next()?)?;
            let fields = into_array(parts.next().unwrap_or(Value::Null));
            let mut payload = None;
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if string(k).as_deref() == Some(pgnm_protocol::ENTRY_FIELD) {
                    payload = bytes(v);
                }
            }
            Some(StreamEntry { id, payload })
        })
        .collect()
}

/// Parses the reply of `XREAD`/`XREADGROUP` on one stream: `[[key, entries]]`, or
/// nil on timeout.
pub(crate) fn read_reply(v: Value) -> Vec<StreamEntry> {
    let mut out = Vec::new();
    match v {
        Value::Map(m) => {
            for (_, entries_value) in m.inner() {
                out.extend(entries(entries_value));
            }
        }
        other => {
            for stream in into_array(other) {
                let mut parts = into_array(stream).into_iter();
                let _key = parts.next();
                if let Some(e) = parts.next() {
                    out.extend(entries(e));
                }
            }
        }
    }
    out
}

/// Parses the reply of `XAUTOCLAIM`: `[next-cursor, entries, deleted-ids]`.
pub(crate) fn autoclaim_reply(v: Value) -> Result<(String, Vec<StreamEntry>), BusError> {
    let mut parts = into_array(v).into_iter();
    let cursor = parts.next().and_then(string).ok_or(BusError::Reply("XAUTOCLAIM"))?;
    let claimed = entries(parts.next().unwrap_or(Value::Null));
    Ok((cursor, claimed))
}

/// Parses the extended `XPENDING` reply into (id, deliveries) pairs.
pub(crate) fn pending_counts(v: Value) -> Vec<(String, u32)> {
    into_array(v)
        .into_iter()
        .filter_map(|row| {
            let mut parts = into_array(row).into_iter();
            let id = string(parts.next()?)?;
            let _consumer = parts.next();
            let _idle = parts.next();
            let count = integer(&parts.next()?)?;
            Some((id, u32::try_from(count).unwrap_or(u32::MAX)))
        })
        .collect()
}

/// Parses a flat `[name, value, name, value, ...]` record (as in `XINFO`) into
/// pairs.
pub(crate) fn record(v: Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut it = into_array(v).into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(k) = string(k) {
            out.push((k, v));
        }
    }
    out
}

/// Returns the list of records of an `XINFO GROUPS`/`XINFO CONSUMERS` reply.
pub(crate) fn records(v: Value) -> Vec<Vec<(String, Value)>> {
    into_array(v).into_iter().map(record).collect()
}

/// Returns the value as a stream id, if it is one.
pub(crate) fn stream_id(v: Value) -> Option<String> {
    string(v)
}

/// Compares two stream ids (`ms-seq`) numerically.
pub(crate) fn id_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a).cmp(&parts(b))
}
