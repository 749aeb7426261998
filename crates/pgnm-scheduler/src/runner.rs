//! The runner: claims due ticks in the database, dispatches them through the
//! router, keeps their leases fresh while they are in flight, records their
//! outcome, and takes over the runs of replicas that died.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgnm_bus::{CallError, CallSpec, Caller};
use pgnm_protocol::Role;
use pgnm_store::{ClaimedRun, RunOutcome, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::schedule;

/// Runs claimed per query.
const BATCH: i64 = 500;
/// Tries to record a batch of outcomes (about 20 s with the backoff).
const FINISH_ATTEMPTS: u32 = 8;

/// Ticks dispatched, by outcome of the dispatch.
const DISPATCHED: &str = "pgnm_scheduler_runs_dispatched_total";
/// Time from a tick being due to its command being sent.
const DISPATCH_DELAY: &str = "pgnm_scheduler_dispatch_delay_seconds";
/// Ticks that passed unrun (coalesced into a later run).
const MISSED: &str = "pgnm_scheduler_missed_ticks_total";
/// Runs taken over from a replica whose lease ran out.
const TAKEN_OVER: &str = "pgnm_scheduler_runs_taken_over_total";
/// Finished runs, by outcome.
const FINISHED: &str = "pgnm_scheduler_runs_finished_total";

/// Describes the runner's metrics.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(DISPATCHED, "Scheduled runs sent to their role");
    describe_histogram!(DISPATCH_DELAY, Unit::Seconds, "Time from a tick being due to its command being sent");
    describe_counter!(MISSED, "Ticks that passed unrun and were coalesced into a later run");
    describe_counter!(TAKEN_OVER, "Runs taken over from a replica whose lease ran out");
    describe_counter!(FINISHED, "Finished runs, by outcome (ok, error, timeout)");
}

/// How the runner works.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This replica's name, the owner of its leases.
    pub instance: String,
    /// Time between looks for due tasks.
    pub poll: Duration,
    /// Lease of a run in flight.
    pub lease_ms: u64,
}

type Held = Arc<Mutex<HashSet<i64>>>;

/// Runs until `shutdown`, then waits (up to one lease) for the runs in flight;
/// runs still unfinished are taken over by another replica when their lease ends.
pub async fn run(store: Store, caller: Caller, settings: Settings, shutdown: CancellationToken) {
    let held: Held = Arc::default();
    let tracker = TaskTracker::new();
    let renewer = tokio::spawn(renew_loop(store.clone(), settings.clone(), held.clone(), shutdown.clone()));
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let finisher = tokio::spawn(finish_loop(store.clone(), done_rx, held.clone()));
    info!(instance = %settings.instance, "task runner started");
    let mut failing = false;
    let mut wait = settings.poll;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        // Claimed runs are ours even if the takeover query then fails: each
        // result is handled on its own.
        let claimed = store.claim_due_runs(&settings.instance, BATCH, settings.lease_ms, schedule::next_run).await;
        let taken = store.take_over_runs(&settings.instance, BATCH, settings.lease_ms).await;
        let mut busy = false;
        let mut error = None;
        for (result, takeover) in [(claimed, false), (taken, true)] {
            match result {
                Ok(runs) => {
                    busy |= runs.len() as i64 == BATCH;
                    for run in runs {
                        if takeover {
                            info!(task = %run.name, request = %run.request_id, attempt = run.attempts, "taking over a run");
                            metrics::counter!(TAKEN_OVER).increment(1);
                        } else {
                            let delay_ms = (pgnm_protocol::now_ms() as i64 - run.scheduled_for).max(0);
                            metrics::histogram!(DISPATCH_DELAY).record(delay_ms as f64 / 1000.0);
                            if run.missed > 0 {
                                metrics::counter!(MISSED).increment(u64::from(run.missed));
                            }
                        }
                        metrics::counter!(DISPATCHED).increment(1);
                        held.lock().expect("held lock poisoned").insert(run.run_id);
                        tracker.spawn(dispatch(caller.clone(), run, held.clone(), done_tx.clone()));
                    }
                }
                Err(e) => error = Some(e),
            }
        }
        if let Some(e) = error {
            if !failing {
                warn!(error = %e, "task runner cannot reach the database; retrying");
                failing = true;
            }
            wait = settings.poll;
            continue;
        }
        if failing {
            info!("task runner reaches the database again");
            failing = false;
        }
        // Sleep until the next tick is due (at most one poll period), so
        // dispatch is on time without hammering the database.
        wait = if busy {
            Duration::ZERO
        } else {
            match store.next_due().await {
                Ok((Some(due), now)) => {
                    Duration::from_millis((due - now).clamp(2, settings.poll.as_millis() as i64) as u64)
                }
                _ => settings.poll,
            }
        };
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_millis(settings.lease_ms), tracker.wait()).await.is_err() {
        warn!("runs still in flight at shutdown; another replica takes them over when their lease ends");
    }
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), finisher).await;
    renewer.abort();
    info!("task runner stopped");
}

async fn renew_loop(store: Store, settings: Settings, held: Held, shutdown: CancellationToken) {
    let period = Duration::from_millis((settings.lease_ms / 3).max(10));
    loop {
        tokio::time::sleep(period).await;
        let ids: Vec<i64> = held.lock().expect("held lock poisoned").iter().copied().collect();
        if let Err(e) = store.renew_leases(&settings.instance, &ids, settings.lease_ms).await {
            warn!(error = %e, runs = ids.len(), "cannot renew run leases");
        }
        if shutdown.is_cancelled() && ids.is_empty() {
            return;
        }
    }
}

/// The outcome of one run, to record.
type Done = (i64, RunOutcome, Option<String>);

/// Records outcomes in batches: every outcome waiting goes in one statement. A
/// run's lease is kept until its outcome is recorded.
async fn finish_loop(store: Store, mut rx: mpsc::UnboundedReceiver<Done>, held: Held) {
    let mut batch: Vec<Done> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        // A bounded number of tries: past them the runs stay in flight, their
        // leases run out, and they are sent again under the same request ids
        // (answered from the stored replies) and recorded then.
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=FINISH_ATTEMPTS {
            match store.finish_runs(&batch).await {
                Ok(()) => break,
                Err(e) if attempt == FINISH_ATTEMPTS => {
                    warn!(error = %e, runs = batch.len(), "cannot record run outcomes; leaving the runs to be taken over");
                }
                Err(e) => {
                    warn!(error = %e, runs = batch.len(), attempt, "cannot record run outcomes; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let mut held = held.lock().expect("held lock poisoned");
        for (id, _, _) in batch.drain(..) {
            held.remove(&id);
        }
    }
}

async fn dispatch(caller: Caller, run: ClaimedRun, held: Held, done: mpsc::UnboundedSender<Done>) {
    let role = run.role.as_deref().and_then(|r| r.parse::<Role>().ok());
    let args = run.args.clone().map(serde_json::Value::Object);
    let mut spec =
        CallSpec::new(&run.command, Duration::from_millis(run.timeout_ms)).id(run.request_id.clone()).args(args);
    spec.role = role;
    debug!(task = %run.name, request = %run.request_id, "dispatching");
    let (outcome, error) = match caller.call(spec).await {
        Ok(reply) => match reply.result() {
            Ok(_) => (RunOutcome::Ok, None),
            Err(e) => (RunOutcome::Error, Some(format!("{}: {}", e.code, e.message))),
        },
        Err(CallError::DeadlineExceeded { .. }) => {
            (RunOutcome::Timeout, Some("no reply before the deadline".to_owned()))
        }
        Err(e) => {
            // Not sent: the run stays in flight; its lease ends and it is sent again.
            warn!(task = %run.name, error = %e, "cannot dispatch a run; it will be retried");
            held.lock().expect("held lock poisoned").remove(&run.run_id);
            return;
        }
    };
    if outcome != RunOutcome::Ok {
        debug!(task = %run.name, outcome = outcome.as_str(), error = ?error, "run finished");
    }
    metrics::counter!(FINISHED, "outcome" => outcome.as_str()).increment(1);
    let _ = done.send((run.run_id, outcome, error));
}
