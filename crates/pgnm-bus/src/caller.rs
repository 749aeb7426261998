//! The caller side: send a command and await its reply, over a reply stream that
//! belongs to this instance.
//!
//! The reply stream is created when the caller starts and kept alive by a
//! refresher while the caller lives; once its owner is gone it expires, and
//! services stop writing to it (`XADD NOMKSTREAM`). Replies are read by one reader
//! on a connection of its own and handed to the waiting calls by request id; a
//! reply nobody waits for (a late or a repeated one) is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use pgnm_protocol::{Deadline, PROTOCOL_VERSION, Reply, Request, Role, decode_reply, encode_request};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::connection::Bus;
use crate::error::BusError;
use crate::resp;

/// Lifetime of a reply stream after its owner's last refresh.
const REPLY_STREAM_TTL: Duration = Duration::from_secs(30);
/// How often the owner refreshes its reply stream.
const REPLY_STREAM_REFRESH: Duration = Duration::from_secs(1);
/// How long a blocking read of the reply stream waits.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// How long a call waits past its deadline for the service's own `DEADLINE_EXCEEDED`.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request could not be sent.
    #[error("sending the request failed")]
    Send(#[from] BusError),
    /// No reply came before the deadline.
    #[error("no reply to request {id} before its deadline")]
    DeadlineExceeded {
        /// The request id.
        id: String,
    },
    /// The caller was shut down while waiting.
    #[error("the caller was shut down")]
    Closed,
}

type Waiters = Mutex<HashMap<String, oneshot::Sender<Reply>>>;

struct Inner {
    bus: Bus,
    name: String,
    reply_stream: String,
    waiters: Waiters,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Sends commands and awaits their replies. Cheap to clone.
#[derive(Clone)]
pub struct Caller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("reply_stream", &self.inner.reply_stream).finish()
    }
}

/// What to call.
#[derive(Debug, Clone)]
pub struct CallSpec<'a, A> {
    /// Command name.
    pub command: &'a str,
    /// Role that must execute it, if any.
    pub role: Option<Role>,
    /// Arguments.
    pub args: Option<A>,
    /// Time the caller waits; becomes the request's absolute deadline.
    pub timeout: Duration,
    /// Request id; a fresh one when `None`.
    pub id: Option<String>,
}

impl<'a> CallSpec<'a, ()> {
    /// Returns a call of `command` without arguments, waiting up to `timeout`.
    pub fn new(command: &'a str, timeout: Duration) -> Self {
        CallSpec { command, role: None, args: None, timeout, id: None }
    }
}

impl<'a, A> CallSpec<'a, A> {
    /// Sets the arguments.
    pub fn args<B>(self, args: B) -> CallSpec<'a, B> {
        CallSpec { command: self.command, role: self.role, args: Some(args), timeout: self.timeout, id: self.id }
    }

    /// Sets the role.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// Sets the request id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

impl Caller {
    /// Creates this instance's reply stream and starts reading it. `name` is the
    /// caller identity put in every request.
    pub async fn start(bus: Bus, name: &str) -> Result<Caller, BusError> {
        let reply_stream = bus.keys().reply(bus.instance());
        let reader = bus.blocking_client(READ_BLOCK).await?;
        let first_id = create_reply_stream(&bus, &reply_stream).await?;
        let inner = Arc::new(Inner {
            bus,
            name: name.to_owned(),
            reply_stream,
            waiters: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        });
        tokio::spawn(read_loop(Arc::downgrade(&inner), inner.stop.clone(), reader, first_id));
        tokio::spawn(keep_alive(inner.bus.clone(), inner.reply_stream.clone(), inner.stop.clone()));
        Ok(Caller { inner })
    }

    /// Stops reading replies and deletes the reply stream at once (instead of
    /// letting it expire).
    pub async fn close(self) {
        self.inner.stop.cancel();
        let stream = self.inner.reply_stream.as_str();
        let _ = resp::run(self.inner.bus.client(), "DEL", stream, vec![Value::from(stream)], false).await;
    }

    /// Returns this caller's reply stream.
    pub fn reply_stream(&self) -> &str {
        &self.inner.reply_stream
    }

    /// Returns the transport this caller uses.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Sends a command to the router's ingress and waits for its reply.
    pub async fn call<A: Serialize>(&self, spec: CallSpec<'_, A>) -> Result<Reply, CallError> {
        let request = self.request(spec);
        let ingress = self.inner.bus.keys().ingress();
        self.call_raw(&ingress, &request.id, request.deadline, encode_request(&request)).await
    }

    /// Builds the request for `spec`, replying to this caller.
    pub fn request<A: Serialize>(&self, spec: CallSpec<'_, A>) -> Request<A> {
        Request {
            version: PROTOCOL_VERSION,
            id: spec.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            command: spec.command.to_owned(),
            role: spec.role.map(|r| r.as_str().to_owned()),
            args: spec.args,
            reply_to: Some(self.inner.reply_stream.clone()),
            deadline: Deadline::after(spec.timeout),
            caller: self.inner.name.clone(),
            trace_id: None,
        }
    }

    /// Adds an already encoded request with id `id` to `stream` and waits for its
    /// reply until `deadline` (plus a short grace for the service's own answer).
    pub async fn call_raw(
        &self,
        stream: &str,
        id: &str,
        deadline: Deadline,
        message: Vec<u8>,
    ) -> Result<Reply, CallError> {
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.lock().expect("waiters lock poisoned").insert(id.to_owned(), tx);
        let guard = WaiterGuard { waiters: &self.inner.waiters, id };
        send(&self.inner.bus, stream, message).await?;
        let outcome = tokio::time::timeout(deadline.remaining() + DEADLINE_GRACE, rx).await;
        drop(guard);
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => Err(CallError::DeadlineExceeded { id: id.to_owned() }),
        }
    }
}

/// Adds one message to `stream`.
pub async fn send(bus: &Bus, stream: &str, message: Vec<u8>) -> Result<(), BusError> {
    let args = vec![
        Value::from(stream),
        Value::from("*"),
        Value::from(pgnm_protocol::ENTRY_FIELD),
        Value::Bytes(Bytes::from(message)),
    ];
    resp::run(bus.client(), "XADD", stream, args, false).await.map(|_| ())
}

/// Adds one message to `stream`, keeping about `maxlen` entries (for streams
/// nobody acknowledges, such as the events stream).
pub async fn send_capped(bus: &Bus, stream: &str, message: Vec<u8>, maxlen: i64) -> Result<(), BusError> {
    let args = vec![
        Value::from(stream),
        Value::from("MAXLEN"),
        Value::from("~"),
        Value::from(maxlen),
        Value::from("*"),
        Value::from(pgnm_protocol::ENTRY_FIELD),
        Value::Bytes(Bytes::from(message)),
    ];
    resp::run(bus.client(), "XADD", stream, args, false).await.map(|_| ())
}

struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    id: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.lock().expect("waiters lock poisoned").remove(self.id);
    }
}

/// Creates the reply stream with a first entry (it has no `m` field and is
/// skipped) and an expiry; returns that entry's id, where reading starts.
async fn create_reply_stream(bus: &Bus, stream: &str) -> Result<String, BusError> {
    let args = vec![Value::from(stream), Value::from("*"), Value::from("created"), Value::from(bus.instance())];
    let id =
        resp::string(resp::run(bus.client(), "XADD", stream, args, false).await?).ok_or(BusError::Reply("XADD"))?;
    expire(bus, stream).await?;
    Ok(id)
}

async fn expire(bus: &Bus, stream: &str) -> Result<bool, BusError> {
    let args = vec![Value::from(stream), Value::from(REPLY_STREAM_TTL.as_millis() as i64)];
    let set = resp::run(bus.client(), "PEXPIRE", stream, args, false).await?;
    Ok(resp::integer(&set) == Some(1))
}

/// Refreshes the reply stream's expiry while the caller lives, and creates the
/// stream again if it vanished (a Redis restart).
async fn keep_alive(bus: Bus, stream: String, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPLY_STREAM_REFRESH) => {}
            _ = stop.cancelled() => break,
        }
        match expire(&bus, &stream).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(stream = %stream, "reply stream vanished (redis restarted?), creating it again");
                if let Err(e) = create_reply_stream(&bus, &stream).await {
                    warn!(error = %e, "cannot create the reply stream yet");
                }
            }
            Err(e) => debug!(error = %e, "refreshing the reply stream failed"),
        }
    }
    // The owner is gone: let the stream go at once rather than after its TTL.
    let _ = resp::run(bus.client(), "DEL", &stream, vec![Value::from(stream.as_str())], false).await;
}

async fn read_loop(inner: std::sync::Weak<Inner>, stop: CancellationToken, reader: Client, mut last_id: String) {
    let mut last_trim = Instant::now();
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let Some(stream) = inner.upgrade().map(|i| i.reply_stream.clone()) else { break };
        let args = vec![
            Value::from("COUNT"),
            Value::from(1000),
            Value::from("BLOCK"),
            Value::from(READ_BLOCK.as_millis() as i64),
            Value::from("STREAMS"),
            Value::from(stream.as_str()),
            Value::from(last_id.as_str()),
        ];
        let read = tokio::select! {
            r = resp::run(&reader, "XREAD", &stream, args, true) => r,
            _ = stop.cancelled() => break,
        };
        let entries = match read {
            Ok(v) => {
                backoff = Duration::from_millis(50);
                resp::read_reply(v)
            }
            Err(e) => {
                debug!(error = %e, "reading replies failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { break };
        for entry in entries {
            last_id = entry.id;
            let Some(payload) = entry.payload else { continue };
            match decode_reply(&payload) {
                Ok(reply) => {
                    let waiter = inner.waiters.lock().expect("waiters lock poisoned").remove(&reply.id);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(reply);
                        }
                        None => debug!(id = %reply.id, "reply nobody waits for (late or repeated)"),
                    }
                }
                Err(e) => warn!(error = %e, "undecodable reply dropped"),
            }
        }
        if last_trim.elapsed() > Duration::from_secs(1) {
            last_trim = Instant::now();
            let bus = inner.bus.clone();
            let args = vec![Value::from(stream.as_str()), Value::from("MINID"), Value::from(last_id.as_str())];
            tokio::spawn(async move {
                let stream = stream;
                let _ = resp::run(bus.client(), "XTRIM", &stream, args, false).await;
            });
        }
    }
    let _ = reader.quit().await;
}
