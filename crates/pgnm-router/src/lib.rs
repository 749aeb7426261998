//! `pgnm-router`: the one ingress for commands.
//!
//! It reads the ingress stream through the `router` consumer group, checks each
//! envelope, and forwards the message unchanged to the inbox of the role that
//! executes its command (the routing table lives in the protocol crate). It
//! answers malformed, unknown and expired requests itself, answers `ping` for
//! role `router`, and fans a command served by several roles (`bootstrap` without
//! a role) out to each, joining their replies into one. It holds no state: any
//! number of replicas share the ingress.

use std::collections::BTreeMap;

use bytes::Bytes;
use pgnm_bus::metrics::{self, CommandTimer};
use pgnm_bus::service::{self, answer_once, reject_unreadable, send_reply};
use pgnm_bus::worker::{self, Delivery, Disposition, EntryHandler, Source};
use pgnm_bus::{Bus, BusError, Caller, RedisArgs, WorkerArgs};
use pgnm_protocol::{
    Command, ErrorBody, ErrorCode, MAX_ID_LEN, ReplyBody, Request, Role, Route, decode_request, encode_reply,
    encode_request,
};
use pgnm_runtime::{AdminArgs, Readiness};
use serde::de::IgnoredAny;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

/// Settings of `pgnm-router`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterConfig {
    /// Redis settings.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Name of this instance (the consumer name); defaults to host name, role and process id.
    #[arg(long, env = "PGNM_INSTANCE")]
    pub instance: Option<String>,
    /// Admin server settings.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Runs the router until `shutdown` is cancelled, then drains.
pub async fn run(config: RouterConfig, shutdown: CancellationToken) -> Result<(), BusError> {
    let instance = config.instance.clone().unwrap_or_else(|| pgnm_runtime::default_instance("router"));
    let bus = Bus::connect(&config.redis, &instance).await?;
    let readiness = Readiness::new(&shutdown).check("redis", bus.group_check(bus.keys().ingress(), "router"));
    let _admin = pgnm_runtime::admin::start(&config.admin, readiness).await.map_err(BusError::Config)?;
    pgnm_bus::metrics::describe();
    let caller = Caller::start(bus.clone(), &instance).await?;
    let source = Source {
        stream: bus.keys().ingress(),
        group: Role::Router.as_str().to_owned(),
        dead_letter: bus.keys().dead_letter(Role::Router),
    };
    let router = Router { bus: bus.clone(), caller, max_payload: config.worker.max_payload_bytes };
    worker::run(bus, source, config.worker, router, shutdown).await
}

/// Whether the router passes a command on or answers it itself.
enum RouteKind {
    One,
    Here,
}

struct Router {
    bus: Bus,
    caller: Caller,
    max_payload: usize,
}

impl EntryHandler for Router {
    async fn handle(&self, delivery: Delivery) -> Disposition {
        let Some(payload) = delivery.payload else {
            return Disposition::DeadLetter(format!("entry has no '{}' field", pgnm_protocol::ENTRY_FIELD));
        };
        if payload.len() > self.max_payload {
            let message = format!("message of {} bytes exceeds the limit of {}", payload.len(), self.max_payload);
            return reject_unreadable(&self.bus, &payload, ErrorCode::PayloadTooLarge, message).await;
        }
        // Only the envelope is read here; the arguments are the executing role's business.
        let request: Request<IgnoredAny> = match decode_request(&payload) {
            Ok(r) => r,
            Err(e) => return reject_unreadable(&self.bus, &payload, ErrorCode::BadRequest, e.to_string()).await,
        };
        let span = info_span!("route", cmd = %request.command, id = %request.id);
        let timer = CommandTimer::start(Role::Router.as_str(), &request.command);
        self.route(payload, request, delivery.deliveries, &timer).instrument(span).await
    }

    async fn give_up(&self, delivery: &Delivery, reason: &str) {
        service::give_up(&self.bus, None, delivery, reason).await;
    }
}

impl Router {
    async fn route(
        &self,
        payload: Bytes,
        request: Request<IgnoredAny>,
        deliveries: u32,
        timer: &CommandTimer,
    ) -> Disposition {
        let reply_to = match service::reply_stream(&self.bus, request.reply_to.as_deref()) {
            Ok(to) => to,
            Err(dead) => return dead,
        };
        let id = request.id.as_str();
        let refuse = |error: ErrorBody| {
            timer.failed(error.code);
            service::refuse(&self.bus, id, reply_to, error)
        };
        if let Err(e) = request.validate(true) {
            return refuse(ErrorBody::bad_request(e.to_string())).await;
        }
        let (command, route) = match Route::resolve(&request.command, request.role.as_deref()) {
            Ok(r) => r,
            Err(e @ pgnm_protocol::RouteError::UnknownRole(_)) => {
                return refuse(ErrorBody::bad_request(format!("role: {e}"))).await;
            }
            Err(e) => return refuse(ErrorBody::new(ErrorCode::UnknownCommand, e.to_string())).await,
        };
        // A redelivered entry may have been forwarded and answered already (its
        // router died before acknowledging it): it goes to its role again, which
        // answers from what it stored rather than differently.
        let forwarded_before = deliveries > 1 && matches!(route, Route::One(_));
        if request.deadline.is_expired() && !forwarded_before {
            return refuse(ErrorBody::new(
                ErrorCode::DeadlineExceeded,
                "the request's deadline passed before it was routed",
            ))
            .await;
        }
        let route_kind = if matches!(route, Route::One(_)) { RouteKind::One } else { RouteKind::Here };
        let disposition = match route {
            Route::One(role) => self.forward(role, payload).await,
            Route::Local => self.answer_locally(command, &payload, id, reply_to).await,
            Route::FanOut(roles) => self.fan_out(roles, &payload, id, reply_to).await,
        };
        if matches!(disposition, Disposition::Ack) {
            // Answered here (ping, a fan-out's join) or passed on to a role.
            timer.finish(if matches!(route_kind, RouteKind::One) { metrics::FORWARDED } else { metrics::OK });
        }
        disposition
    }

    async fn forward(&self, role: Role, payload: Bytes) -> Disposition {
        match pgnm_bus::caller::send(&self.bus, &self.bus.keys().inbox(role), payload.to_vec()).await {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                warn!(%role, error = %e, "cannot forward; leaving the request pending");
                Disposition::Retry
            }
        }
    }

    async fn answer_locally(&self, command: Command, payload: &[u8], id: &str, reply_to: Option<&str>) -> Disposition {
        let request: Request = match decode_request(payload) {
            Ok(r) => r,
            Err(e) => return answer_once(&self.bus, id, reply_to, &ErrorBody::bad_request(e.to_string())).await,
        };
        let outcome = match command {
            Command::Ping => {
                service::ping(Role::Router, self.bus.instance(), request.args.unwrap_or(rmpv::Value::Nil)).await
            }
            other => {
                Err(ErrorBody::new(ErrorCode::UnknownCommand, format!("command {other} is not served by the router")))
            }
        };
        let Some(to) = reply_to else { return Disposition::Ack };
        let reply = match &outcome {
            Ok(data) => encode_reply(id, self.bus.instance(), ReplyBody::Data(data)),
            Err(e) => encode_reply(id, self.bus.instance(), ReplyBody::Error(e)),
        };
        match send_reply(&self.bus, to, &reply).await {
            Ok(()) => Disposition::Ack,
            Err(_) => Disposition::Retry,
        }
    }

    /// Sends the request to each role under a derived id (`<id>/<role>`) and joins
    /// the replies. A router that dies mid-way leaves the ingress entry pending; the
    /// replica that reclaims it sends the same derived ids, which the roles answer
    /// from their stored replies instead of executing again.
    async fn fan_out(&self, roles: Vec<Role>, payload: &[u8], id: &str, reply_to: Option<&str>) -> Disposition {
        if id.len() > MAX_ID_LEN {
            return answer_once(&self.bus, id, reply_to, &ErrorBody::bad_request("id: too long")).await;
        }
        let request: Request = match decode_request(payload) {
            Ok(r) => r,
            Err(e) => return answer_once(&self.bus, id, reply_to, &ErrorBody::bad_request(e.to_string())).await,
        };
        let calls = roles.iter().map(|role| {
            let mut sub = request.clone();
            sub.id = format!("{id}/{role}");
            sub.role = Some(role.as_str().to_owned());
            sub.reply_to = reply_to.map(|_| self.caller.reply_stream().to_owned());
            let inbox = self.bus.keys().inbox(*role);
            let caller = self.caller.clone();
            async move {
                let message = encode_request(&sub);
                if sub.reply_to.is_none() {
                    return pgnm_bus::caller::send(caller.bus(), &inbox, message).await.map(|()| None).map_err(Some);
                }
                match caller.call_raw(&inbox, &sub.id, sub.deadline, message).await {
                    Ok(reply) => Ok(Some(reply)),
                    Err(pgnm_bus::CallError::Send(e)) => Err(Some(e)),
                    Err(_) => Ok(None),
                }
            }
        });
        let results = futures::future::join_all(calls).await;
        if results.iter().any(|r| r.is_err()) {
            warn!("cannot fan the request out; leaving it pending");
            return Disposition::Retry;
        }
        let Some(to) = reply_to else { return Disposition::Ack };

        let mut data = BTreeMap::new();
        let mut failures = Vec::new();
        for (role, result) in roles.iter().zip(results) {
            let reply = result.expect("errors handled above");
            let body = match reply {
                Some(reply) => reply.into_result(),
                None => Err(ErrorBody::new(ErrorCode::DeadlineExceeded, "no reply before the deadline")),
            };
            match body {
                Ok(value) => {
                    data.insert(role.as_str(), value);
                }
                Err(error) => failures.push((*role, error)),
            }
        }
        let reply = if failures.is_empty() {
            let map = rmpv::Value::Map(data.into_iter().map(|(k, v)| (k.into(), v)).collect());
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &map).expect("writing to a vec cannot fail");
            encode_reply(id, self.bus.instance(), ReplyBody::Data(&bytes))
        } else {
            let message = failures.iter().map(|(r, e)| format!("{r}: {}", e.message)).collect::<Vec<_>>().join("; ");
            let mut details: Vec<(rmpv::Value, rmpv::Value)> =
                data.into_iter().map(|(k, v)| (k.into(), rmpv::Value::Map(vec![("data".into(), v)]))).collect();
            for (role, error) in &failures {
                let error_value = rmpv::Value::Map(vec![
                    ("code".into(), error.code.as_str().into()),
                    ("message".into(), error.message.as_str().into()),
                    ("retryable".into(), error.retryable.into()),
                ]);
                details.push((role.as_str().into(), rmpv::Value::Map(vec![("error".into(), error_value)])));
            }
            let first = &failures[0].1;
            let error = ErrorBody {
                code: first.code,
                message,
                retryable: failures.iter().all(|(_, e)| e.retryable),
                details: Some(rmpv::Value::Map(details)),
            };
            encode_reply(id, self.bus.instance(), ReplyBody::Error(&error))
        };
        match send_reply(&self.bus, to, &reply).await {
            Ok(()) => Disposition::Ack,
            Err(_) => Disposition::Retry,
        }
    }
}
