//! The runner: claims due ticks in the database, dispatches them through the
//! router, keeps their leases fresh while they are in flight, records their
//! outcome, and takes over the runs of replicas that died.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgnm_bus::{CallError, CallSpec, Caller};
use pgnm_protocol::Role;
use pgnm_store::{ClaimedRun, RunOutcome, Store};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::schedule;

/// Runs claimed per query.
const BATCH: i64 = 500;

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
    info!(instance = %settings.instance, "task runner started");
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(settings.poll) => {}
        }
        let claimed = store.claim_due_runs(&settings.instance, BATCH, settings.lease_ms, schedule::next_run).await;
        let taken = store.take_over_runs(&settings.instance, BATCH, settings.lease_ms).await;
        match (claimed, taken) {
            (Ok(claimed), Ok(taken)) => {
                if failing {
                    info!("task runner reaches the database again");
                    failing = false;
                }
                for run in taken.iter() {
                    info!(task = %run.name, request = %run.request_id, attempt = run.attempts, "taking over a run");
                }
                for run in claimed.into_iter().chain(taken) {
                    held.lock().expect("held lock poisoned").insert(run.run_id);
                    tracker.spawn(dispatch(store.clone(), caller.clone(), run, held.clone()));
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                if !failing {
                    warn!(error = %e, "task runner cannot reach the database; retrying");
                    failing = true;
                }
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_millis(settings.lease_ms), tracker.wait()).await.is_err() {
        warn!("runs still in flight at shutdown; another replica takes them over when their lease ends");
    }
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

async fn dispatch(store: Store, caller: Caller, run: ClaimedRun, held: Held) {
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
    for attempt in 0..5 {
        match store.finish_run(run.run_id, outcome, error.as_deref()).await {
            Ok(_) => break,
            Err(e) => {
                warn!(task = %run.name, error = %e, attempt, "cannot record a run's outcome");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    if outcome != RunOutcome::Ok {
        debug!(task = %run.name, outcome = outcome.as_str(), error = ?error, "run finished");
    }
    held.lock().expect("held lock poisoned").remove(&run.run_id);
}
