//! The consumer-group worker loop.
//!
//! One worker reads one stream through one consumer group, under this instance's
//! consumer name:
//!
//! - the reading loop asks for as many entries as it has free slots (`COUNT`), on
//!   a connection of its own, and hands each to the [`EntryHandler`] as a task;
//! - an entry is acknowledged only after its handler says so, that is after the
//!   reply is written; acknowledgements are batched;
//! - a reclaimer takes over entries idle longer than the claim timeout
//!   (`XAUTOCLAIM`, carrying its cursor), so a killed consumer's work is finished
//!   by a live one; a refresher keeps this instance's long-running claims fresh;
//! - an entry delivered more than `max_deliveries` times goes to the dead-letter
//!   stream instead of looping for ever;
//! - a janitor trims the stream below the oldest unacknowledged entry (never
//!   dropping one) and forgets long-gone consumers that own nothing;
//! - a missing group (after a Redis restart) is created again;
//! - on shutdown the loop stops reading, waits for in-flight work up to the drain
//!   timeout and hands back what is left so another instance picks it up at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::WorkerArgs;
use crate::connection::Bus;
use crate::error::BusError;
use crate::metrics as m;
use crate::resp::{self, StreamEntry};

/// Most entries the dead-letter stream keeps (approximately).
const DEAD_LETTER_MAXLEN: u64 = 100_000;
/// Consumers idle this long and owning no entry are removed from the group.
const CONSUMER_FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How often the janitor runs.
const JANITOR_INTERVAL: Duration = Duration::from_secs(5);

/// An entry handed to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stream entry id.
    pub entry_id: String,
    /// The `m` field of the entry, if it has one.
    pub payload: Option<Bytes>,
    /// How many times the entry has been delivered, this time included.
    pub deliveries: u32,
}

/// What to do with an entry once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The entry is answered: acknowledge it.
    Ack,
    /// The entry can never be answered: copy it to the dead-letter stream with this
    /// reason, then acknowledge it.
    DeadLetter(String),
    /// The entry could not be finished (Redis failed mid-way): leave it pending so
    /// it is delivered again after the claim timeout.
    Retry,
}

/// Handles the entries of one stream.
pub trait EntryHandler: Send + Sync + 'static {
    /// Handles one entry.
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Disposition> + Send;

    /// Tells the entry's caller, where possible, that the entry is being given up
    /// after too many deliveries.
    fn give_up(&self, delivery: &Delivery, reason: &str) -> impl Future<Output = ()> + Send;
}

/// The stream a worker reads, and where its dead letters go.
#[derive(Debug, Clone)]
pub struct Source {
    /// The stream.
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// The dead-letter stream.
    pub dead_letter: String,
}

struct Shared<H> {
    bus: Bus,
    source: Source,
    args: WorkerArgs,
    handler: H,
    slots: Arc<Semaphore>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// The in-flight gauge of this worker's group (looked up once, not per entry).
    in_flight_gauge: metrics::Gauge,
    acks: mpsc::UnboundedSender<String>,
    tracker: TaskTracker,
}

/// Runs a worker on `source` until `shutdown` is cancelled, then drains.
pub async fn run<H: EntryHandler>(
    bus: Bus,
    source: Source,
    args: WorkerArgs,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let block = Duration::from_millis(args.block_ms.max(1));
    let reader = bus.blocking_client(block).await?;
    ensure_group(&bus, &source).await?;
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let in_flight_gauge = metrics::gauge!(m::IN_FLIGHT, "group" => source.group.clone());
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(args.max_in_flight.max(1))),
        bus,
        source,
        args,
        handler,
        in_flight: Mutex::new(HashMap::new()),
        in_flight_gauge,
        acks: ack_tx,
        tracker: TaskTracker::new(),
    });
    info!(stream = %shared.source.stream, group = %shared.source.group, consumer = %shared.bus.instance(), "worker started");

    let background = CancellationToken::new();
    // The claims of work in progress stay fresh through the drain, or another
    // instance would take over (and answer again) entries still being worked on.
    let claims = CancellationToken::new();
    let acker = tokio::spawn(ack_loop(shared.bus.clone(), shared.source.clone(), ack_rx));
    let reclaimer = tokio::spawn(reclaim_loop(shared.clone(), background.clone()));
    let refresher = tokio::spawn(refresh_loop(shared.clone(), claims.clone()));
    let janitor = tokio::spawn(janitor_loop(shared.clone(), background.clone()));

    read_loop(&shared, &reader, block, &shutdown).await;

    // Drain: no more reads; wait for in-flight work, then hand back what is left.
    background.cancel();
    let _ = tokio::join!(reclaimer, janitor);
    shared.tracker.close();
    let drain = Duration::from_millis(shared.args.drain_timeout_ms);
    let drained = tokio::time::timeout(drain, shared.tracker.wait()).await.is_ok();
    claims.cancel();
    let _ = refresher.await;
    if !drained {
        hand_back(&shared).await;
    }
    let _ = reader.quit().await;
    let shared = match Arc::try_unwrap(shared) {
        Ok(s) => s,
        Err(_) => {
            warn!("in-flight handlers outlived the drain; their acknowledgements may be lost");
            return Ok(());
        }
    };
    drop(shared.acks);
    let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
    info!(stream = %shared.source.stream, "worker stopped");
    Ok(())
}

/// Creates the consumer group (and the stream) if missing. The group starts at
/// the beginning of the stream so that entries added before it existed (right
/// after a Redis restart) are not skipped.
pub(crate) async fn ensure_group(bus: &Bus, source: &Source) -> Result<(), BusError> {
    let args = vec![
        Value::from("CREATE"),
        Value::from(source.stream.as_str()),
        Value::from(source.group.as_str()),
        Value::from("0"),
        Value::from("MKSTREAM"),
    ];
    match bus.client().custom::<Value, Value>(resp::command("XGROUP", &source.stream, false), args).await {
        Ok(_) => {
            info!(stream = %source.stream, group = %source.group, "consumer group created");
            Ok(())
        }
        Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
        Err(source) => Err(BusError::Redis { command: "XGROUP", source }),
    }
}

async fn read_loop<H: EntryHandler>(
    shared: &Arc<Shared<H>>,
    reader: &Client,
    block: Duration,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        // Wait for one free slot and read as many entries as there are free slots.
        // Only that one slot is held while the read blocks, so the reclaimer can
        // still take slots meanwhile; the others are taken once entries arrive.
        let first = tokio::select! {
            permit = shared.slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let count = (1 + shared.slots.available_permits()).min(1000);
        let args = vec![
            Value::from("GROUP"),
            Value::from(shared.source.group.as_str()),
            Value::from(shared.bus.instance()),
            Value::from("COUNT"),
            Value::from(count as i64),
            Value::from("BLOCK"),
            Value::from(block.as_millis() as i64),
            Value::from("STREAMS"),
            Value::from(shared.source.stream.as_str()),
            Value::from(">"),
        ];
        let read = resp::run(reader, "XREADGROUP", &shared.source.stream, args, true).await;
        match read {
            Ok(v) => {
                backoff = Duration::from_millis(50);
                let entries = resp::read_reply(v);
                let mut permit = Some(first);
                for entry in entries {
                    let permit = match permit.take() {
                        Some(p) => p,
                        None => shared.slots.clone().acquire_owned().await.expect("the slot semaphore is never closed"),
                    };
                    spawn_entry(shared, entry, 1, permit);
                }
            }
            Err(e) if e.is_no_group() => {
                warn!(stream = %shared.source.stream, "consumer group missing (redis restarted?), creating it again");
                if let Err(e) = ensure_group(&shared.bus, &shared.source).await {
                    warn!(error = %e, "cannot create the consumer group yet");
                    sleep_or_cancel(backoff, shutdown).await;
                }
            }
            Err(e) => {
                warn!(stream = %shared.source.stream, error = %e, cause = %source_of(&e), "read failed, retrying");
                sleep_or_cancel(backoff, shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn source_of(e: &BusError) -> String {
    std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default()
}

async fn sleep_or_cancel(d: Duration, token: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = token.cancelled() => {}
    }
}

/// An entry being handled here: since when, and how to stop its handler.
struct InFlight {
    started: Instant,
    abort: Option<tokio::task::AbortHandle>,
}

fn spawn_entry<H: EntryHandler>(
    shared: &Arc<Shared<H>>,
    entry: StreamEntry,
    deliveries: u32,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    {
        let mut in_flight = shared.in_flight.lock().expect("in-flight lock poisoned");
        if in_flight.contains_key(&entry.id) {
            // Already being handled here (claimed back by our own reclaimer).
            return;
        }
        in_flight.insert(entry.id.clone(), InFlight { started: Instant::now(), abort: None });
    }
    let id = entry.id.clone();
    let in_flight = shared.in_flight_gauge.clone();
    in_flight.increment(1);
    let shared2 = shared.clone();
    let handle = shared.tracker.spawn(async move {
        let shared = shared2;
        let delivery = Delivery { entry_id: entry.id.clone(), payload: entry.payload, deliveries };
        let exhausted = deliveries > shared.args.max_deliveries;
        let disposition = if exhausted {
            Disposition::DeadLetter(format!("delivered {deliveries} times without being answered"))
        } else {
            shared.handler.handle(delivery.clone()).await
        };
        match disposition {
            Disposition::Ack => {
                let _ = shared.acks.send(entry.id.clone());
            }
            Disposition::DeadLetter(reason) => {
                warn!(stream = %shared.source.stream, entry = %entry.id, %reason, "entry moved to the dead-letter stream");
                match dead_letter(&shared, &delivery, &reason).await {
                    Ok(()) => {
                        metrics::counter!(m::DEAD_LETTERED, "group" => shared.source.group.clone()).increment(1);
                        // The caller hears of it once the dead letter is there to be found.
                        if exhausted {
                            shared.handler.give_up(&delivery, &reason).await;
                        }
                        let _ = shared.acks.send(entry.id.clone());
                    }
                    Err(e) => warn!(error = %e, entry = %entry.id, "cannot write the dead letter; the entry stays pending"),
                }
            }
            Disposition::Retry => debug!(entry = %entry.id, "entry left pending for another delivery"),
        }
        shared.in_flight.lock().expect("in-flight lock poisoned").remove(&entry.id);
        in_flight.decrement(1);
        drop(permit);
    });
    if let Some(e) = shared.in_flight.lock().expect("in-flight lock poisoned").get_mut(&id) {
        e.abort = Some(handle.abort_handle());
    }
}

async fn dead_letter<H>(shared: &Shared<H>, d: &Delivery, reason: &str) -> Result<(), BusError> {
    let dlq = &shared.source.dead_letter;
    let mut args = vec![
        Value::from(dlq.as_str()),
        Value::from("MAXLEN"),
        Value::from("~"),
        Value::from(DEAD_LETTER_MAXLEN as i64),
        Value::from("*"),
        Value::from("stream"),
        Value::from(shared.source.stream.as_str()),
        Value::from("entry"),
        Value::from(d.entry_id.as_str()),
        Value::from("reason"),
        Value::from(reason),
        Value::from("deliveries"),
        Value::from(i64::from(d.deliveries)),
        Value::from("instance"),
        Value::from(shared.bus.instance()),
    ];
    if let Some(p) = &d.payload {
        args.push(Value::from(pgnm_protocol::ENTRY_FIELD));
        args.push(Value::Bytes(p.clone()));
    }
    resp::run(shared.bus.client(), "XADD", dlq, args, false).await.map(|_| ())
}

/// Acknowledges entries in batches: every id waiting in the channel goes in one `XACK`.
async fn ack_loop(bus: Bus, source: Source, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        let mut args = Vec::with_capacity(batch.len() + 2);
        args.push(Value::from(source.stream.as_str()));
        args.push(Value::from(source.group.as_str()));
        args.extend(batch.drain(..).map(Value::from));
        for attempt in 1..=3u32 {
            match resp::run(bus.client(), "XACK", &source.stream, args.clone(), false).await {
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, attempt, "acknowledgement failed; unacknowledged entries are answered again from the stored reply");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
    }
}

/// Takes over entries that have stayed unacknowledged longer than the claim timeout.
async fn reclaim_loop<H: EntryHandler>(shared: Arc<Shared<H>>, stop: CancellationToken) {
    let idle = Duration::from_millis(shared.args.claim_idle_ms.max(10));
    let interval = (idle / 2).max(Duration::from_millis(20));
    let mut cursor = "0-0".to_owned();
    loop {
        if cursor == "0-0" {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
        }
        if stop.is_cancelled() {
            return;
        }
        let mut permits = Vec::new();
        while let Ok(p) = shared.slots.clone().try_acquire_owned() {
            permits.push(p);
            if permits.len() >= 100 {
                break;
            }
        }
        if permits.is_empty() {
            // Every slot is busy: wait (keeping the cursor) rather than spin.
            sleep_or_cancel(interval, &stop).await;
            continue;
        }
        match reclaim_once(&shared, &cursor, idle, permits.len()).await {
            Ok((next, claimed)) => {
                cursor = next;
                if !claimed.is_empty() {
                    metrics::counter!(m::RECLAIMED, "group" => shared.source.group.clone())
                        .increment(claimed.len() as u64);
                }
                for (entry, deliveries) in claimed {
                    info!(stream = %shared.source.stream, entry = %entry.id, deliveries, "reclaimed an idle entry");
                    let permit = permits.pop().expect("never more entries than COUNT");
                    spawn_entry(&shared, entry, deliveries, permit);
                }
            }
            Err(e) if e.is_no_group() => {
                cursor = "0-0".to_owned();
            }
            Err(e) => {
                warn!(error = %e, "reclaim failed");
                cursor = "0-0".to_owned();
            }
        }
    }
}

async fn reclaim_once<H>(
    shared: &Shared<H>,
    cursor: &str,
    idle: Duration,
    count: usize,
) -> Result<(String, Vec<(StreamEntry, u32)>), BusError> {
    let stream = shared.source.stream.as_str();
    let args = vec![
        Value::from(stream),
        Value::from(shared.source.group.as_str()),
        Value::from(shared.bus.instance()),
        Value::from(idle.as_millis() as i64),
        Value::from(cursor),
        Value::from("COUNT"),
        Value::from(count as i64),
    ];
    let (next, claimed) =
        resp::autoclaim_reply(resp::run(shared.bus.client(), "XAUTOCLAIM", stream, args, false).await?)?;
    if claimed.is_empty() {
        return Ok((next, Vec::new()));
    }
    // XAUTOCLAIM does not say how often each entry was delivered; XPENDING does.
    let first = claimed.iter().map(|e| e.id.as_str()).min_by(|a, b| resp::id_cmp(a, b)).unwrap_or("-");
    let last = claimed.iter().map(|e| e.id.as_str()).max_by(|a, b| resp::id_cmp(a, b)).unwrap_or("+");
    let args = vec![
        Value::from(stream),
        Value::from(shared.source.group.as_str()),
        Value::from(first),
        Value::from(last),
        Value::from(10_000),
        Value::from(shared.bus.instance()),
    ];
    let counts: HashMap<String, u32> =
        resp::pending_counts(resp::run(shared.bus.client(), "XPENDING", stream, args, false).await?)
            .into_iter()
            .collect();
    Ok((
        next,
        claimed
            .into_iter()
            .map(|e| {
                let n = counts.get(&e.id).copied().unwrap_or(2);
                (e, n)
            })
            .collect(),
    ))
}

/// Keeps this instance's long-running claims fresh, so the reclaimers of other
/// instances do not take over work that is still going on.
async fn refresh_loop<H: EntryHandler>(shared: Arc<Shared<H>>, stop: CancellationToken) {
    let period = (Duration::from_millis(shared.args.claim_idle_ms.max(10)) / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        let ids: Vec<String> = {
            let in_flight = shared.in_flight.lock().expect("in-flight lock poisoned");
            in_flight.iter().filter(|(_, e)| e.started.elapsed() >= period).map(|(id, _)| id.clone()).collect()
        };
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = claim_ids(&shared, &ids, None).await {
            warn!(error = %e, "refreshing claims failed");
        }
    }
}

/// Claims `ids` for this instance (resetting their idle time, or setting it to
/// `idle` so that others may take them at once), without counting a delivery.
async fn claim_ids<H>(shared: &Shared<H>, ids: &[String], idle: Option<Duration>) -> Result<(), BusError> {
    let stream = shared.source.stream.as_str();
    let mut args = vec![
        Value::from(stream),
        Value::from(shared.source.group.as_str()),
        Value::from(shared.bus.instance()),
        Value::from(0),
    ];
    args.extend(ids.iter().map(|id| Value::from(id.as_str())));
    if let Some(idle) = idle {
        args.push(Value::from("IDLE"));
        args.push(Value::from(idle.as_millis() as i64));
    }
    args.push(Value::from("JUSTID"));
    resp::run(shared.bus.client(), "XCLAIM", stream, args, false).await.map(|_| ())
}

/// Hands back unfinished entries at the end of a drain: they are marked idle for
/// the whole claim timeout, so another instance's reclaimer takes them at once.
async fn hand_back<H>(shared: &Shared<H>) {
    // Stop the handlers first: one still running after its entry went to
    // another instance would execute the request there a second time.
    let ids: Vec<String> = {
        let in_flight = shared.in_flight.lock().expect("in-flight lock poisoned");
        for e in in_flight.values() {
            if let Some(abort) = &e.abort {
                abort.abort();
            }
        }
        in_flight.keys().cloned().collect()
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.tracker.wait()).await;
    if ids.is_empty() {
        return;
    }
    let idle = Duration::from_millis(shared.args.claim_idle_ms);
    match claim_ids(shared, &ids, Some(idle)).await {
        Ok(()) => warn!(count = ids.len(), "drain timed out; unfinished entries handed back to other instances"),
        Err(e) => {
            warn!(count = ids.len(), error = %e, "drain timed out; unfinished entries will be reclaimed after the claim timeout")
        }
    }
}

/// Trims the stream below its oldest unacknowledged entry and forgets consumers
/// that are long gone and own nothing.
async fn janitor_loop<H: EntryHandler>(shared: Arc<Shared<H>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(JANITOR_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
        let in_flight = shared.in_flight.lock().expect("in-flight lock poisoned").len();
        shared.in_flight_gauge.set(in_flight as f64);
        if let Err(e) = trim(&shared.bus, &shared.source).await {
            debug!(error = %e, "trimming failed");
        }
        if let Err(e) = forget_consumers(&shared.bus, &shared.source).await {
            debug!(error = %e, "forgetting idle consumers failed");
        }
    }
}

/// Trims `source.stream` below the oldest entry its group has not acknowledged
/// (or, with none pending, up to the last delivered one). Entries never delivered
/// and entries still pending are never removed.
pub async fn trim(bus: &Bus, source: &Source) -> Result<(), BusError> {
    let stream = source.stream.as_str();
    let groups =
        resp::records(resp::run(bus.client(), "XINFO", stream, vec!["GROUPS".into(), stream.into()], false).await?);
    let mut threshold: Option<String> = None;
    for group in groups {
        let mut name = None;
        let mut last = None;
        let (mut pending, mut lag) = (None, None);
        for (k, v) in group {
            match k.as_str() {
                "name" => name = resp::string(v),
                "last-delivered-id" => last = resp::stream_id(v),
                "pending" => pending = resp::integer(&v),
                "lag" => lag = resp::integer(&v),
                _ => {}
            }
        }
        let (Some(name), Some(last)) = (name, last) else { return Err(BusError::Reply("XINFO GROUPS")) };
        if name == source.group {
            let group = source.group.clone();
            if let Some(pending) = pending {
                metrics::gauge!(m::PENDING, "group" => group.clone()).set(pending as f64);
            }
            if let Some(lag) = lag {
                metrics::gauge!(m::LAG, "group" => group).set(lag as f64);
            }
        }
        // Summary form: [count, smallest pending id, greatest, consumers].
        let summary =
            resp::run(bus.client(), "XPENDING", stream, vec![stream.into(), name.as_str().into()], false).await?;
        let smallest = match summary {
            Value::Array(mut parts) if parts.len() >= 2 => resp::stream_id(parts.swap_remove(1)),
            _ => None,
        };
        let safe = match smallest {
            Some(p) if resp::id_cmp(&p, &last).is_lt() => p,
            _ => last,
        };
        threshold = Some(match threshold {
            Some(t) if resp::id_cmp(&t, &safe).is_lt() => t,
            _ => safe,
        });
    }
    let Some(threshold) = threshold else { return Ok(()) };
    if threshold == "0-0" {
        return Ok(());
    }
    let args = vec![stream.into(), "MINID".into(), threshold.as_str().into()];
    resp::run(bus.client(), "XTRIM", stream, args, false).await.map(|_| ())
}

async fn forget_consumers(bus: &Bus, source: &Source) -> Result<(), BusError> {
    let stream = source.stream.as_str();
    let args = vec!["CONSUMERS".into(), stream.into(), source.group.as_str().into()];
    let consumers = resp::records(resp::run(bus.client(), "XINFO", stream, args, false).await?);
    let mut seen = HashSet::new();
    for consumer in consumers {
        let (mut name, mut pending, mut idle) = (None, None, None);
        for (k, v) in consumer {
            match k.as_str() {
                "name" => name = resp::string(v),
                "pending" => pending = resp::integer(&v),
                "idle" => idle = resp::integer(&v),
                _ => {}
            }
        }
        let (Some(name), Some(0), Some(idle)) = (name, pending, idle) else { continue };
        if name == bus.instance() || !seen.insert(name.clone()) {
            continue;
        }
        if Duration::from_millis(idle.max(0) as u64) > CONSUMER_FORGET_AFTER {
            let args = vec!["DELCONSUMER".into(), stream.into(), source.group.as_str().into(), name.as_str().into()];
            resp::run(bus.client(), "XGROUP", stream, args, false).await?;
            info!(consumer = %name, "forgot an idle consumer that owned nothing");
        }
    }
    Ok(())
}
