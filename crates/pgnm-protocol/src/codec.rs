//! The MessagePack codec: requests and replies as maps with named fields.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Header, PROTOCOL_VERSION, Reply, ReplyBody, Request};
use crate::error::ErrorBody;

/// The stream entry field that holds a message.
pub const ENTRY_FIELD: &str = "m";

/// A message that is not a well-formed envelope.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(#[source] rmp_serde::decode::Error);

/// Deepest nesting of maps and arrays accepted in a message. Real messages
/// nest a few levels; a hostile one nested thousands deep would overflow the
/// stack of the recursive decoders, so it is refused before decoding.
pub const MAX_NESTING: usize = 32;

/// Returns whether the first MessagePack value of `bytes` nests maps and
/// arrays at most `max` deep. Reads iteratively (no recursion), skipping
/// scalars by their length; a truncated or invalid value counts as within the
/// limit (the decoder then reports what is wrong with it).
pub fn nesting_within(bytes: &[u8], max: usize) -> bool {
    let mut pos = 0usize;
    // Values still to read at each open level; the bottom one is the top-level value.
    let mut open: Vec<u64> = vec![1];
    let be = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    while let Some(&marker) = bytes.get(pos) {
        pos += 1;
        // (bytes to skip after the marker, items of a container opened)
        let (skip, items): (u64, Option<u64>) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, None),
            0x80..=0x8f => (0, Some(2 * u64::from(marker & 0x0f))),
            0x90..=0x9f => (0, Some(u64::from(marker & 0x0f))),
            0xa0..=0xbf => (u64::from(marker & 0x1f), None),
            0xc4 | 0xd9 => (1 + be(pos, 1).unwrap_or(0), None),
            0xc5 | 0xda => (2 + be(pos, 2).unwrap_or(0), None),
            0xc6 | 0xdb => (4 + be(pos, 4).unwrap_or(0), None),
            0xc7 => (2 + be(pos, 1).unwrap_or(0), None),
            0xc8 => (3 + be(pos, 2).unwrap_or(0), None),
            0xc9 => (5 + be(pos, 4).unwrap_or(0), None),
            0xca | 0xce | 0xd2 => (4, None),
            0xcb | 0xcf | 0xd3 => (8, None),
            0xcc | 0xd0 => (1, None),
            0xcd | 0xd1 => (2, None),
            0xd4 => (2, None),
            0xd5 => (3, None),
            0xd6 => (5, None),
            0xd7 => (9, None),
            0xd8 => (17, None),
            0xdc => (2, Some(be(pos, 2).unwrap_or(0))),
            0xdd => (4, Some(be(pos, 4).unwrap_or(0))),
            0xde => (2, Some(2 * be(pos, 2).unwrap_or(0))),
            0xdf => (4, Some(2 * be(pos, 4).unwrap_or(0))),
            0xc1 => return true, // never used: the decoder refuses it
        };
        pos = match usize::try_from(skip).ok().and_then(|s| pos.checked_add(s)) {
            Some(p) => p,
            None => return true,
        };
        if let Some(top) = open.last_mut() {
            *top -= 1;
        }
        if let Some(n) = items.filter(|n| *n > 0) {
            open.push(n);
            if open.len() - 1 > max {
                return false;
            }
        }
        while open.last() == Some(&0) {
            open.pop();
        }
        if open.is_empty() {
            return true;
        }
    }
    true
}

fn check_nesting(bytes: &[u8]) -> Result<(), DecodeError> {
    if nesting_within(bytes, MAX_NESTING) {
        Ok(())
    } else {
        Err(DecodeError(rmp_serde::decode::Error::DepthLimitExceeded))
    }
}

/// Encodes a request as a MessagePack map.
pub fn encode_request<A: Serialize>(request: &Request<A>) -> Vec<u8> {
    rmp_serde::to_vec_named(request).expect("a request with serializable arguments always encodes")
}

/// Decodes a request, with arguments of type `A`.
pub fn decode_request<A: DeserializeOwned>(bytes: &[u8]) -> Result<Request<A>, DecodeError> {
    check_nesting(bytes)?;
    rmp_serde::from_slice(bytes).map_err(DecodeError)
}

/// Reads what can be read of a request's header from a message that may be
/// malformed: the id, reply stream and command, where each is a string.
pub fn decode_header(bytes: &[u8]) -> Header {
    let mut header = Header::default();
    if check_nesting(bytes).is_err() {
        return header;
    }
    let Ok(rmpv::Value::Map(fields)) = rmpv::decode::read_value(&mut &bytes[..]) else {
        return header;
    };
    for (key, value) in fields {
        let (Some(key), rmpv::Value::String(value)) = (key.as_str(), value) else { continue };
        let Some(value) = value.into_str() else { continue };
        match key {
            "id" => header.id = Some(value),
            "replyTo" => header.reply_to = Some(value),
            "command" => header.command = Some(value),
            _ => {}
        }
    }
    header
}

/// Encodes a reply. `Data` bytes must already be MessagePack; they are embedded
/// as they are, without being decoded again.
pub fn encode_reply(id: &str, instance: &str, body: ReplyBody<'_>) -> Vec<u8> {
    let extra = match body {
        ReplyBody::Data(d) => d.len(),
        ReplyBody::Error(_) => 64,
    };
    let mut out = Vec::with_capacity(48 + id.len() + instance.len() + extra);
    let w = &mut out;
    // Writing into a Vec cannot fail.
    rmp::encode::write_map_len(w, 4).expect("vec write");
    rmp::encode::write_str(w, "version").expect("vec write");
    rmp::encode::write_uint(w, u64::from(PROTOCOL_VERSION)).expect("vec write");
    rmp::encode::write_str(w, "id").expect("vec write");
    rmp::encode::write_str(w, id).expect("vec write");
    rmp::encode::write_str(w, "instance").expect("vec write");
    rmp::encode::write_str(w, instance).expect("vec write");
    match body {
        ReplyBody::Data(d) => {
            rmp::encode::write_str(w, "data").expect("vec write");
            w.extend_from_slice(d);
        }
        ReplyBody::Error(e) => {
            rmp::encode::write_str(w, "error").expect("vec write");
            rmp_serde::encode::write_named(w, e).expect("an error body always encodes");
        }
    }
    out
}

/// Decodes a reply.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, DecodeError> {
    check_nesting(bytes)?;
    rmp_serde::from_slice(bytes).map_err(DecodeError)
}

/// Converts a reply's generic result into a command's typed result.
pub fn decode_data<T: DeserializeOwned>(data: &rmpv::Value) -> Result<T, DecodeError> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, data).expect("writing to a Vec cannot fail");
    rmp_serde::from_slice(&bytes).map_err(DecodeError)
}

/// Encodes a command's result for [`ReplyBody::Data`].
pub fn encode_data<T: Serialize>(value: &T) -> Result<Vec<u8>, ErrorBody> {
    rmp_serde::to_vec_named(value).map_err(|e| ErrorBody::internal(format!("encoding the result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Deadline, ErrorCode};

    #[test]
    fn request_round_trip_uses_named_fields() {
        let req = Request {
            version: 1,
            id: "r1".into(),
            command: "ping".into(),
            role: None,
            args: Some(rmpv::Value::Map(vec![("echo".into(), "hi".into())])),
            reply_to: Some("pgnm:reply:x".into()),
            deadline: Deadline(123),
            caller: "test".into(),
            trace_id: None,
        };
        let bytes = encode_request(&req);
        let as_value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert!(as_value.is_map());
        let back: Request = decode_request(&bytes).unwrap();
        assert_eq!(back, req);
        let header = decode_header(&bytes);
        assert_eq!(header.id.as_deref(), Some("r1"));
        assert_eq!(header.reply_to.as_deref(), Some("pgnm:reply:x"));
    }

    #[test]
    fn nesting_is_measured_without_recursion() {
        let nested = |depth: usize| {
            let mut v = rmpv::Value::Nil;
            for _ in 0..depth {
                v = rmpv::Value::Map(vec![("k".into(), rmpv::Value::Array(vec![1.into(), "s".into(), v]))]);
            }
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &v).unwrap();
            bytes
        };
        // Each level is a map holding an array: two levels of nesting.
        assert!(nesting_within(&nested(16), 32));
        assert!(!nesting_within(&nested(17), 32));
        assert!(nesting_within(&nested(0), 0));
        let mut deep = vec![0x91u8; 1_000_000];
        deep.push(0xc0);
        assert!(!nesting_within(&deep, MAX_NESTING));
        let err = decode_request::<rmpv::Value>(&deep).unwrap_err();
        assert!(err.to_string().contains("depth"), "{err}");
        assert_eq!(decode_header(&deep), Header::default());
    }

    #[test]
    fn reply_round_trip() {
        let data = encode_data(&serde_json::json!({"a": 1})).unwrap();
        let reply = decode_reply(&encode_reply("r1", "i1", ReplyBody::Data(&data))).unwrap();
        assert_eq!(reply.id, "r1");
        assert_eq!(reply.result().unwrap()["a"], rmpv::Value::from(1));
        let err = ErrorBody::new(ErrorCode::NotFound, "no such node");
        let reply = decode_reply(&encode_reply("r2", "i1", ReplyBody::Error(&err))).unwrap();
        assert_eq!(reply.result().unwrap_err(), &err);
    }

    #[test]
    fn unknown_envelope_fields_are_rejected() {
        let bytes = rmp_serde::to_vec_named(&serde_json::json!({
            "version": 1, "id": "x", "command": "ping", "deadline": 5, "caller": "c", "reply_to": "typo"
        }))
        .unwrap();
        assert!(decode_request::<rmpv::Value>(&bytes).is_err());
        assert_eq!(decode_header(&bytes).id.as_deref(), Some("x"));
    }
}

/// Converts a request's generic arguments into the command's typed arguments; a
/// missing or nil `args` counts as an empty map. The error names the offending field.
pub fn decode_args<T: DeserializeOwned>(args: rmpv::Value) -> Result<T, ErrorBody> {
    let args = match args {
        rmpv::Value::Nil => rmpv::Value::Map(Vec::new()),
        rmpv::Value::Map(m) => rmpv::Value::Map(m),
        other => return Err(ErrorBody::bad_request(format!("args: expected a map, found {}", kind(&other)))),
    };
    // Through bytes rather than rmpv's own deserializer, which does not read enums
    // in the form rmp-serde writes them (a plain string for a unit variant).
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &args).map_err(|e| ErrorBody::internal(format!("re-encoding args: {e}")))?;
    let mut de = rmp_serde::Deserializer::from_read_ref(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "args".to_owned() } else { format!("args.{path}") };
        ErrorBody::bad_request(format!("{path}: {}", e.inner()))
    })
}

fn kind(v: &rmpv::Value) -> &'static str {
    match v {
        rmpv::Value::Nil => "nil",
        rmpv::Value::Boolean(_) => "a boolean",
        rmpv::Value::Integer(_) => "an integer",
        rmpv::Value::F32(_) | rmpv::Value::F64(_) => "a float",
        rmpv::Value::String(_) => "a string",
        rmpv::Value::Binary(_) => "binary",
        rmpv::Value::Array(_) => "an array",
        rmpv::Value::Map(_) => "a map",
        rmpv::Value::Ext(..) => "an extension value",
    }
}

#[cfg(test)]
mod args_tests {
    use super::*;
    use crate::ping::PingArgs;

    #[test]
    fn args_errors_name_the_field() {
        let v = rmpv::Value::Map(vec![("delayMs".into(), "soon".into())]);
        let e = decode_args::<PingArgs>(v).unwrap_err();
        assert!(e.message.starts_with("args.delayMs:"), "{}", e.message);
        let v = rmpv::Value::Map(vec![("bogus".into(), 1.into())]);
        let e = decode_args::<PingArgs>(v).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        assert_eq!(decode_args::<PingArgs>(rmpv::Value::Nil).unwrap(), PingArgs::default());
        assert!(decode_args::<PingArgs>(rmpv::Value::from(3)).is_err());
    }
}
