//! A role's command executor: the [`EntryHandler`] behind `pgnm-checker`,
//! `pgnm-scheduler` and every other role that executes commands.
//!
//! For each entry of the role's inbox it checks the envelope, refuses expired
//! requests, makes sure a request id is executed once (a result record per id,
//! claimed with `SET NX` before executing), runs the command under its deadline,
//! stores the reply and writes it to the caller's reply stream.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use futures::FutureExt;
use pgnm_protocol::{
    Command, Deadline, ErrorBody, ErrorCode, ReplyBody, Request, Role, decode_header, decode_request, encode_reply,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::WorkerArgs;
use crate::connection::Bus;
use crate::error::BusError;
use crate::metrics::{self, CommandTimer};
use crate::resp;
use crate::worker::{self, Delivery, Disposition, EntryHandler, Source};

/// Marks a result record whose request is being executed; followed by the entry id.
const RUNNING: &[u8] = b"run:";
/// Marks the reply of a retryable failure, kept only so that a redelivery of
/// the same entry is answered the same way; followed by the entry id, a newline
/// and the reply. A new entry with the same request id executes again.
const RETRYABLE: &[u8] = b"retry:";
/// How long a running marker outlives its request's deadline.
const MARKER_GRACE: Duration = Duration::from_secs(60);
/// How often a duplicate of a running request looks for the stored reply.
const DUPLICATE_POLL: Duration = Duration::from_millis(20);

/// One command to execute, with its envelope's context.
#[derive(Debug, Clone)]
pub struct Call {
    /// The command.
    pub command: Command,
    /// Its arguments, as sent (nil when absent); see [`pgnm_protocol::decode_args`].
    pub args: rmpv::Value,
    /// The request id.
    pub request_id: String,
    /// The caller's identity.
    pub caller: String,
    /// The request's deadline.
    pub deadline: Deadline,
    /// The trace id, if any.
    pub trace_id: Option<String>,
}

/// Executes the commands of one role.
pub trait CommandHandler: Send + Sync + 'static {
    /// Executes `call`, returning the MessagePack-encoded result or an error.
    fn execute(&self, call: Call) -> impl Future<Output = Result<Vec<u8>, ErrorBody>> + Send;
}

/// Serves `role`'s inbox with `handler` until `shutdown` is cancelled, then drains.
pub async fn serve<H: CommandHandler>(
    bus: Bus,
    role: Role,
    args: WorkerArgs,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let source = Source {
        stream: bus.keys().inbox(role),
        group: role.as_str().to_owned(),
        dead_letter: bus.keys().dead_letter(role),
    };
    let service = RoleService { bus: bus.clone(), role, args: args.clone(), handler };
    worker::run(bus, source, args, service, shutdown).await
}

struct RoleService<H> {
    bus: Bus,
    role: Role,
    args: WorkerArgs,
    handler: H,
}

impl<H: CommandHandler> EntryHandler for RoleService<H> {
    async fn handle(&self, delivery: Delivery) -> Disposition {
        let Some(payload) = delivery.payload.clone() else {
            return Disposition::DeadLetter(format!("entry has no '{}' field", pgnm_protocol::ENTRY_FIELD));
        };
        if payload.len() > self.args.max_payload_bytes {
            let message =
                format!("message of {} bytes exceeds the limit of {}", payload.len(), self.args.max_payload_bytes);
            return reject_unreadable(&self.bus, &payload, ErrorCode::PayloadTooLarge, message).await;
        }
        let request: Request = match decode_request(&payload) {
            Ok(r) => r,
            Err(e) => return reject_unreadable(&self.bus, &payload, ErrorCode::BadRequest, e.to_string()).await,
        };
        let span = info_span!("command", cmd = %request.command, id = %request.id, trace = request.trace_id.as_deref().unwrap_or(""));
        let timer = CommandTimer::start(self.role.as_str(), &request.command);
        self.handle_request(delivery, request, &timer).instrument(span).await
    }

    async fn give_up(&self, delivery: &Delivery, reason: &str) {
        give_up(&self.bus, Some((self.role, self.args.result_ttl())), delivery, reason).await;
    }
}

impl<H: CommandHandler> RoleService<H> {
    async fn handle_request(&self, delivery: Delivery, request: Request, timer: &CommandTimer) -> Disposition {
        let reply_to = match reply_stream(&self.bus, request.reply_to.as_deref()) {
            Ok(to) => to,
            Err(dead) => return dead,
        };
        let id = request.id.as_str();
        let refuse = |error: ErrorBody| {
            timer.failed(error.code);
            refuse(&self.bus, id, reply_to, error)
        };
        let resend = |stored: Bytes| {
            timer.finish(metrics::REPLAYED);
            resend(&self.bus, reply_to, stored)
        };
        if let Err(e) = request.validate(false) {
            return refuse(ErrorBody::bad_request(e.to_string())).await;
        }
        let command = match request.command.parse::<Command>() {
            Ok(c) if c.roles().contains(&self.role) => c,
            Ok(c) => {
                return refuse(ErrorBody::new(
                    ErrorCode::UnknownCommand,
                    format!("command {c} is not served by role {}", self.role),
                ))
                .await;
            }
            Err(_) => {
                return refuse(ErrorBody::new(
                    ErrorCode::UnknownCommand,
                    format!("unknown command {:?}", request.command),
                ))
                .await;
            }
        };
        // Execute once per request id: claim the result record, or find its reply.
        let key = self.bus.keys().result(self.role, id);
        if request.deadline.is_expired() {
            // Too late to execute; but one already answered (this entry redelivered
            // after its replica died, or a repeat of the id) gets its answer again,
            // never a different one.
            return match stored_answer(&self.bus, &key, &delivery.entry_id).await {
                Ok(Some(reply)) => resend(reply).await,
                Ok(None) => refuse(expired()).await,
                Err(e) => {
                    warn!(error = %e, "cannot read the stored reply; leaving the request pending");
                    Disposition::Retry
                }
            };
        }
        let marker: Bytes = [RUNNING, delivery.entry_id.as_bytes()].concat().into();
        loop {
            let previous = match claim(&self.bus, &key, &marker, request.deadline).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "cannot claim the request; leaving it pending");
                    return Disposition::Retry;
                }
            };
            match previous {
                None => break,
                Some(p) if p == marker => break, // our own entry, reclaimed from a dead consumer
                Some(p) if p.starts_with(RETRYABLE) => match retryable_reply(&p, &delivery.entry_id) {
                    // This very entry failed retryably and its reply went out: the same again.
                    Some(reply) => return resend(reply).await,
                    // The caller sent the id again after a retryable failure: execute again.
                    None => match take_over(&self.bus, &key, &p, &marker, request.deadline).await {
                        Ok(true) => break,
                        Ok(false) => continue,
                        Err(e) => {
                            warn!(error = %e, "cannot claim the request; leaving it pending");
                            return Disposition::Retry;
                        }
                    },
                },
                Some(p) if p.starts_with(RUNNING) => {
                    // The same request id is being executed from another entry: wait for its reply.
                    match wait_for_reply(&self.bus, &key, request.deadline).await {
                        Ok(Some(stored)) if !stored.starts_with(RETRYABLE) => return resend(stored).await,
                        Ok(Some(_)) => continue, // it failed retryably: claim again
                        Ok(None) if request.deadline.is_expired() => return refuse(expired()).await,
                        Ok(None) => continue, // the other execution vanished: claim again
                        Err(e) => {
                            warn!(error = %e, "cannot read the stored reply; leaving the request pending");
                            return Disposition::Retry;
                        }
                    }
                }
                Some(stored) => {
                    debug!("request id already answered; sending the stored reply again");
                    return resend(stored).await;
                }
            }
        }

        let call = Call {
            command,
            args: request.args.clone().unwrap_or(rmpv::Value::Nil),
            request_id: id.to_owned(),
            caller: request.caller.clone(),
            deadline: request.deadline,
            trace_id: request.trace_id.clone(),
        };
        let work = AssertUnwindSafe(self.handler.execute(call)).catch_unwind();
        let outcome = match tokio::time::timeout(request.deadline.remaining(), work).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ErrorBody::internal(format!("command {command} failed unexpectedly (panic)"))),
            Err(_) => Err(expired()),
        };
        let reply = match &outcome {
            Ok(data) => encode_reply(id, self.bus.instance(), ReplyBody::Data(data)),
            Err(error) => encode_reply(id, self.bus.instance(), ReplyBody::Error(error)),
        };
        // A retryable failure is kept apart: sending the same id again executes
        // again, while a redelivery of this entry gets this reply again.
        let reply = Bytes::from(reply);
        let stored = match &outcome {
            Err(e) if e.retryable => Bytes::from([RETRYABLE, delivery.entry_id.as_bytes(), b"\n", &reply].concat()),
            _ => reply.clone(), // shares the bytes
        };
        let written = finish(&self.bus, &key, stored, self.args.result_ttl(), reply_to, reply).await;
        match written {
            Ok(()) => {
                match &outcome {
                    Ok(_) => timer.finish(metrics::OK),
                    Err(e) => timer.failed(e.code),
                }
                Disposition::Ack
            }
            Err(e) => {
                warn!(error = %e, "cannot write the reply; leaving the request pending");
                Disposition::Retry
            }
        }
    }
}

fn expired() -> ErrorBody {
    ErrorBody::new(ErrorCode::DeadlineExceeded, "the request's deadline passed before it was executed")
}

/// Claims the result record of a request: returns nil when it was free (and is now
/// marked running), or what it held.
async fn claim(bus: &Bus, key: &str, marker: &Bytes, deadline: Deadline) -> Result<Option<Bytes>, BusError> {
    let ttl = deadline.remaining() + MARKER_GRACE;
    let args = vec![
        Value::from(key),
        Value::Bytes(marker.clone()),
        Value::from("NX"),
        Value::from("GET"),
        Value::from("PX"),
        Value::from(ttl.as_millis() as i64),
    ];
    Ok(resp::bytes(resp::run(bus.client(), "SET", key, args, false).await?))
}

/// Returns the answer already given to a request, if any: its stored reply, or
/// the retryable failure stored for `entry_id` (not one of another entry).
async fn stored_answer(bus: &Bus, key: &str, entry_id: &str) -> Result<Option<Bytes>, BusError> {
    let value = resp::bytes(resp::run(bus.client(), "GET", key, vec![Value::from(key)], false).await?);
    Ok(match value {
        Some(v) if v.starts_with(RUNNING) => None,
        Some(v) if v.starts_with(RETRYABLE) => retryable_reply(&v, entry_id),
        other => other,
    })
}

/// Returns the stored reply of a retryable failure when it was `entry_id`'s.
fn retryable_reply(record: &Bytes, entry_id: &str) -> Option<Bytes> {
    let rest = record.strip_prefix(RETRYABLE)?;
    let newline = rest.iter().position(|b| *b == b'\n')?;
    (&rest[..newline] == entry_id.as_bytes()).then(|| record.slice(RETRYABLE.len() + newline + 1..))
}

/// Replaces the result record `seen` (a retryable failure of another entry) by
/// our running marker, unless it changed meanwhile; returns whether it did.
async fn take_over(bus: &Bus, key: &str, seen: &Bytes, marker: &Bytes, deadline: Deadline) -> Result<bool, BusError> {
    const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
        return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return false end";
    let ttl = deadline.remaining() + MARKER_GRACE;
    let args = vec![
        Value::from(SCRIPT),
        Value::from(1),
        Value::from(key),
        Value::Bytes(seen.clone()),
        Value::Bytes(marker.clone()),
        Value::from(ttl.as_millis() as i64),
    ];
    Ok(!matches!(resp::run(bus.client(), "EVAL", key, args, false).await?, Value::Null))
}

/// Waits until the result record holds a reply, vanishes (returns `None`), or the
/// deadline passes (returns `None`).
async fn wait_for_reply(bus: &Bus, key: &str, deadline: Deadline) -> Result<Option<Bytes>, BusError> {
    loop {
        let value = resp::bytes(resp::run(bus.client(), "GET", key, vec![Value::from(key)], false).await?);
        match value {
            Some(v) if v.starts_with(RUNNING) => {}
            other => return Ok(other),
        }
        if deadline.is_expired() {
            return Ok(None);
        }
        tokio::time::sleep(DUPLICATE_POLL.min(deadline.remaining())).await;
    }
}

/// Stores the result record `stored` for `ttl` and sends the reply.
async fn finish(
    bus: &Bus,
    key: &str,
    stored: Bytes,
    ttl: Duration,
    reply_to: Option<&str>,
    reply: Bytes,
) -> Result<(), BusError> {
    let pipeline = bus.client().pipeline();
    let args = vec![Value::from(key), Value::Bytes(stored), Value::from("PX"), Value::from(ttl.as_millis() as i64)];
    pipeline.custom::<Value, Value>(resp::command("SET", key, false), args).await.map_err(BusError::redis("SET"))?;
    if let Some(to) = reply_to {
        pipeline
            .custom::<Value, Value>(resp::command("XADD", to, false), reply_args(to, reply))
            .await
            .map_err(BusError::redis("XADD"))?;
    }
    let results: Vec<Value> =
        pipeline.try_all::<Value>().await.into_iter().collect::<Result<_, _>>().map_err(BusError::redis("pipeline"))?;
    let _ = results;
    Ok(())
}

fn reply_args(to: &str, reply: Bytes) -> Vec<Value> {
    // NOMKSTREAM: a reply stream that expired belongs to a caller that is gone.
    vec![
        Value::from(to),
        Value::from("NOMKSTREAM"),
        Value::from("*"),
        Value::from(pgnm_protocol::ENTRY_FIELD),
        Value::Bytes(reply),
    ]
}

/// Writes one reply to a caller's reply stream.
pub async fn send_reply(bus: &Bus, to: &str, reply: &[u8]) -> Result<(), BusError> {
    resp::run(bus.client(), "XADD", to, reply_args(to, Bytes::copy_from_slice(reply)), false).await.map(|_| ())
}

async fn resend(bus: &Bus, reply_to: Option<&str>, stored: Bytes) -> Disposition {
    let Some(to) = reply_to else { return Disposition::Ack };
    match send_reply(bus, to, &stored).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            warn!(error = %e, "cannot send the stored reply; leaving the request pending");
            Disposition::Retry
        }
    }
}

/// Answers a request with an error that is not stored (it does not depend on
/// state, so a repeated request gets the same answer anyway).
/// Returns the request's reply stream once it is known to be a reply stream of
/// this installation; a request naming any other key is dead-lettered.
pub fn reply_stream<'a>(bus: &Bus, reply_to: Option<&'a str>) -> Result<Option<&'a str>, Disposition> {
    match reply_to {
        Some(to) => match bus.keys().check_reply_stream(to) {
            Ok(()) => Ok(Some(to)),
            Err(reason) => Err(Disposition::DeadLetter(format!("replyTo {to:?} {reason}"))),
        },
        None => Ok(None),
    }
}

/// Answers a request the service will not execute with `error`.
pub async fn refuse(bus: &Bus, id: &str, reply_to: Option<&str>, error: ErrorBody) -> Disposition {
    debug!(code = %error.code, message = %error.message, "request refused");
    answer_once(bus, id, reply_to, &error).await
}

pub async fn answer_once(bus: &Bus, id: &str, reply_to: Option<&str>, error: &ErrorBody) -> Disposition {
    let Some(to) = reply_to else { return Disposition::Ack };
    let reply = encode_reply(id, bus.instance(), ReplyBody::Error(error));
    match send_reply(bus, to, &reply).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            warn!(error = %e, "cannot send the error reply; leaving the request pending");
            Disposition::Retry
        }
    }
}

/// Answers a message that is not a valid request: an error reply where its
/// `replyTo` can be read, a dead letter otherwise.
pub async fn reject_unreadable(bus: &Bus, payload: &[u8], code: ErrorCode, message: String) -> Disposition {
    let header = decode_header(payload);
    let reply_to = header.reply_to.filter(|to| bus.keys().check_reply_stream(to).is_ok());
    match reply_to {
        Some(to) => {
            debug!(%code, %message, "malformed request answered with an error");
            let error = ErrorBody::new(code, message);
            answer_once(bus, header.id.as_deref().unwrap_or(""), Some(&to), &error).await
        }
        None => Disposition::DeadLetter(format!("{code}: {message}")),
    }
}

/// Tells the caller of an entry that is given up after too many deliveries
/// (`DEAD_LETTERED`), where its `replyTo` can be read; with `store`, also keeps
/// that reply as the request's result so a repeat gets it too.
pub async fn give_up(bus: &Bus, store_as: Option<(Role, Duration)>, delivery: &Delivery, reason: &str) {
    let Some(payload) = &delivery.payload else { return };
    let header = decode_header(payload);
    let error = ErrorBody::new(ErrorCode::DeadLettered, format!("{reason}; moved to the dead-letter stream"));
    let id = header.id.unwrap_or_default();
    let reply = encode_reply(&id, bus.instance(), ReplyBody::Error(&error));
    if let (Some((role, ttl)), false) = (store_as, id.is_empty()) {
        let key = bus.keys().result(role, &id);
        if let Err(e) = store(bus, &key, &reply, ttl).await {
            warn!(error = %e, "cannot store the dead-letter reply");
        }
    }
    if let Some(to) = header.reply_to.filter(|to| bus.keys().check_reply_stream(to).is_ok())
        && let Err(e) = send_reply(bus, &to, &reply).await
    {
        warn!(error = %e, "cannot tell the caller about the dead letter");
    }
}

/// Answers `ping` for `role`.
pub fn ping(
    role: Role,
    instance: &str,
    args: rmpv::Value,
) -> impl Future<Output = Result<Vec<u8>, ErrorBody>> + Send + 'static {
    let parsed = pgnm_protocol::decode_args::<pgnm_protocol::ping::PingArgs>(args)
        .and_then(|a| a.validate().map(|()| a).map_err(ErrorBody::bad_request));
    let instance = instance.to_owned();
    async move {
        let args = parsed?;
        if let Some(ms) = args.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        pgnm_protocol::encode_data(&pgnm_protocol::ping::PingResult {
            role,
            instance,
            echo: args.echo,
            time: pgnm_protocol::now_ms(),
        })
    }
}

/// Stores a reply for `ttl`.
async fn store(bus: &Bus, key: &str, reply: &[u8], ttl: Duration) -> Result<(), BusError> {
    let args = vec![
        Value::from(key),
        Value::Bytes(Bytes::copy_from_slice(reply)),
        Value::from("PX"),
        Value::from(ttl.as_millis() as i64),
    ];
    resp::run(bus.client(), "SET", key, args, false).await.map(|_| ())
}
