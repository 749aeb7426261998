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

/// Encodes a request as a MessagePack map.
pub fn encode_request<A: Serialize>(request: &Request<A>) -> Vec<u8> {
    rmp_serde::to_vec_named(request).expect("a request with serializable arguments always encodes")
}

/// Decodes a request, with arguments of type `A`.
pub fn decode_request<A: DeserializeOwned>(bytes: &[u8]) -> Result<Request<A>, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(DecodeError)
}

/// Reads what can be read of a request's header from a message that may be
/// malformed: the id, reply stream and command, where each is a string.
pub fn decode_header(bytes: &[u8]) -> Header {
    let mut header = Header::default();
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
