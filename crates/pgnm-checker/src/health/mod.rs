//! Node health: check rounds, each node's status, and the best node of a type,
//! answered from an in-memory view of the fleet that every checker replica keeps
//! current from the database.

mod metrics;
pub mod probe;
pub mod status;
pub mod transport;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use pgnm_protocol::health::{
    CheckArgs, CheckNodeResult, CheckResult, ChosenNode, GetBestNodeArgs, GetBestNodeResult, NodeStatusView,
    StatusEvent,
};
use pgnm_protocol::node::{NodeKey, Transport};
use pgnm_protocol::{ErrorBody, ErrorCode};
use pgnm_store::{NodeRow, NodeState, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::registry::chains::Chains;
use crate::registry::store_error;
use pgnm_rpc::{RpcClient, secrets};
use probe::Observation;
use status::{Hysteresis, Probed};

pub use metrics::describe as describe_metrics;

/// Health-check settings.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Probes running at once in a check round.
    #[arg(long, env = "PGNM_CHECK_CONCURRENCY", default_value_t = 64)]
    pub check_concurrency: usize,
    /// Probe timeout of a node without its own `timeoutMs`, in milliseconds.
    #[arg(long, env = "PGNM_CHECK_TIMEOUT_MS", default_value_t = 5_000)]
    pub check_timeout_ms: u64,
    /// Good checks in a row before a node is eligible again.
    #[arg(long, env = "PGNM_RISE", default_value_t = 2)]
    pub rise: u32,
    /// Bad checks in a row before an eligible node is dropped.
    #[arg(long, env = "PGNM_FALL", default_value_t = 2)]
    pub fall: u32,
    /// How long a node that answered HTTP 429 without `Retry-After` is left alone, in milliseconds.
    #[arg(long, env = "PGNM_RATE_LIMIT_COOLDOWN_MS", default_value_t = 30_000)]
    pub rate_limit_cooldown_ms: u64,
    /// How often the in-memory view of the fleet is reloaded, in milliseconds.
    #[arg(long, env = "PGNM_VIEW_REFRESH_MS", default_value_t = 500)]
    pub view_refresh_ms: u64,
}

impl Default for HealthArgs {
    fn default() -> Self {
        HealthArgs {
            check_concurrency: 64,
            check_timeout_ms: 5_000,
            rise: 2,
            fall: 2,
            rate_limit_cooldown_ms: 30_000,
            view_refresh_ms: 500,
        }
    }
}

/// The fleet as last loaded: every node with its state.
#[derive(Debug, Default)]
struct Snapshot {
    nodes: Vec<(NodeRow, Option<NodeState>)>,
    /// Per type: the indexes of its nodes, and of its eligible nodes in order
    /// of preference (tier, then score), with their scores — built once per
    /// reload so that `getBestNode` does not scan the fleet.
    by_type: HashMap<String, TypeIndex>,
    by_id: HashMap<i64, usize>,
}

#[derive(Debug, Default)]
struct TypeIndex {
    all: Vec<usize>,
    eligible: Vec<(usize, f64)>,
}

/// Lower is better: latency, inflated by the error rate and the lag, divided by
/// the weight.
fn score(n: &NodeRow, s: &NodeState) -> f64 {
    let lag = match (s.group_head, s.height) {
        (Some(g), Some(h)) => (g - h).max(0) as f64,
        _ => 0.0,
    };
    let base = s.latency_ewma_ms.max(1.0) * (1.0 + 4.0 * s.error_rate) + lag * 20.0;
    base * 100.0 / f64::from(n.spec.weight.max(1))
}

impl Snapshot {
    fn new(nodes: Vec<(NodeRow, Option<NodeState>)>) -> Snapshot {
        let mut by_type: HashMap<String, TypeIndex> = HashMap::new();
        for (i, (n, s)) in nodes.iter().enumerate() {
            let index = by_type.entry(n.node_type.clone()).or_default();
            index.all.push(i);
            if let Some(s) = s
                && s.eligible
                && n.spec.enabled
            {
                index.eligible.push((i, score(n, s)));
            }
        }
        for index in by_type.values_mut() {
            index.eligible.sort_by(|a, b| {
                let (na, nb) = (&nodes[a.0].0, &nodes[b.0].0);
                na.spec.priority.cmp(&nb.spec.priority).then(a.1.total_cmp(&b.1)).then(na.id.cmp(&nb.id))
            });
        }
        let by_id = nodes.iter().enumerate().map(|(i, (n, _))| (n.id, i)).collect();
        Snapshot { nodes, by_type, by_id }
    }
}

/// The fingerprint of the fleet a view was loaded at.
type FleetVersion = (i64, i64, i64);

/// Where status changes are published.
pub type EventSink = Box<dyn Fn(Vec<StatusEvent>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Health checks and best-node selection.
pub struct Health {
    store: Store,
    chains: Chains,
    rpc: RpcClient,
    args: HealthArgs,
    view: RwLock<Arc<Snapshot>>,
    version: Mutex<Option<(FleetVersion, Instant)>>,
    sticky: Mutex<HashMap<String, i64>>,
    events: EventSink,
    proxy: pgnm_bus::Caller,
    gauges: metrics::FleetGauges,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("args", &self.args).finish_non_exhaustive()
    }
}

/// Returns a node's live health as replies show it.
pub fn status_view(state: &NodeState) -> NodeStatusView {
    NodeStatusView {
        status: state.status.clone(),
        raw_status: state.raw_status.clone(),
        reason: state.reason.clone(),
        eligible: state.eligible,
        height: state.height,
        group_head: state.group_head,
        lag: match (state.group_head, state.height) {
            (Some(g), Some(h)) => Some((g - h).max(0)),
            _ => None,
        },
        latency_ms: state.latency_ms,
        latency_ewma_ms: state.latency_ewma_ms,
        error_rate: state.error_rate,
        checked_at: state.checked_at,
        changed_at: state.changed_at,
    }
}

fn now_ms() -> i64 {
    pgnm_protocol::now_ms() as i64
}

impl Health {
    /// Returns the health service over `store`; `events` publishes status changes.
    pub fn new(store: Store, chains: Chains, args: HealthArgs, events: EventSink, proxy: pgnm_bus::Caller) -> Health {
        Health {
            store,
            chains,
            rpc: RpcClient::new(),
            args,
            view: RwLock::new(Arc::default()),
            version: Mutex::default(),
            sticky: Mutex::default(),
            events,
            proxy,
            gauges: metrics::FleetGauges::default(),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.view.read().expect("view lock poisoned").clone()
    }

    /// Reloads the view from the database.
    pub async fn refresh(&self) -> Result<(), pgnm_store::StoreError> {
        let version = self.store.fleet_version().await?;
        self.load(version).await
    }

    /// Reloads the view if the fleet changed since the last load.
    async fn refresh_if_changed(&self) -> Result<(), pgnm_store::StoreError> {
        // The fingerprint can miss a change committed late with an older
        // timestamp: reload in full every ten periods whatever it says.
        let version = self.store.fleet_version().await?;
        let full_after = Duration::from_millis(self.args.view_refresh_ms.max(10) * 10);
        let unchanged = matches!(
            *self.version.lock().expect("version lock poisoned"),
            Some((v, at)) if v == version && at.elapsed() < full_after
        );
        if unchanged {
            return Ok(());
        }
        self.load(version).await
    }

    async fn load(&self, version: FleetVersion) -> Result<(), pgnm_store::StoreError> {
        // The version is read first: a change after it makes the next one differ.
        let nodes = self.store.fleet().await?;
        self.gauges.export(&nodes);
        let snapshot = Arc::new(Snapshot::new(nodes));
        *self.view.write().expect("view lock poisoned") = snapshot;
        *self.version.lock().expect("version lock poisoned") = Some((version, Instant::now()));
        Ok(())
    }

    /// Keeps the view current until `stop`; while the database is away the last
    /// view keeps answering.
    pub async fn refresh_loop(self: Arc<Self>, stop: CancellationToken) {
        let period = Duration::from_millis(self.args.view_refresh_ms.max(10));
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let refreshed = self.refresh_if_changed().await;
            if let Some((_, at)) = *self.version.lock().expect("version lock poisoned") {
                metrics::view_age(at.elapsed());
            }
            match refreshed {
                Ok(()) if failing => {
                    info!("the fleet view is current again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    warn!(error = %e, "cannot reload the fleet view; answering from the last one");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// Returns the live health of node `id`, from the view.
    pub fn live_status(&self, id: i64) -> Option<NodeStatusView> {
        let snap = self.snapshot();
        let i = *snap.by_id.get(&id)?;
        snap.nodes[i].1.as_ref().map(status_view)
    }

    /// `check`: one round over the enabled nodes the arguments select.
    pub async fn check(&self, args: CheckArgs) -> Result<CheckResult, ErrorBody> {
        let shards = args.shards.unwrap_or(1);
        let shard = args.shard.unwrap_or(0);
        if !(1..=1024).contains(&shards) {
            return Err(ErrorBody::bad_request(format!("args.shards: must be between 1 and 1024, got {shards}")));
        }
        if shard >= shards {
            return Err(ErrorBody::bad_request(format!("args.shard: must be below shards ({shards}), got {shard}")));
        }
        if let Some(t) = &args.node_type
            && self.chains.get(t).is_none()
        {
            return Err(ErrorBody::bad_request(format!("args.type: unknown chain type {t:?}")));
        }
        let started = Instant::now();
        let fleet = self.store.fleet().await.map_err(store_error)?;
        let targets: Vec<usize> = fleet
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| {
                n.spec.enabled
                    && args.node_type.as_ref().is_none_or(|t| *t == n.node_type)
                    && n.id.rem_euclid(i64::from(shards)) == i64::from(shard)
            })
            .map(|(i, _)| i)
            .collect();
        let round = self.run_round(&fleet, &targets).await;
        metrics::round(round.is_ok(), started.elapsed(), targets.len());
        let (states, changed) = round?;
        let mut by_status: BTreeMap<String, u32> = BTreeMap::new();
        let mut group_heads = BTreeMap::new();
        for s in &states {
            *by_status.entry(s.status.clone()).or_default() += 1;
        }
        let type_of: HashMap<i64, &str> =
            targets.iter().map(|&i| (fleet[i].0.id, fleet[i].0.node_type.as_str())).collect();
        for s in &states {
            if let (Some(t), Some(g)) = (type_of.get(&s.node_id), s.group_head) {
                group_heads.insert((*t).to_owned(), g as u64);
            }
        }
        let result = CheckResult {
            checked: states.len() as u32,
            by_status,
            changed,
            duration_ms: started.elapsed().as_millis() as u64,
            group_heads,
        };
        debug!(checked = result.checked, changed, duration_ms = result.duration_ms, "check round done");
        Ok(result)
    }

    /// `checkNode`: checks one node now.
    pub async fn check_node(&self, key: NodeKey) -> Result<CheckNodeResult, ErrorBody> {
        let fleet = self.store.fleet().await.map_err(store_error)?;
        let index = fleet
            .iter()
            .position(|(n, _)| match &key {
                NodeKey::Id(id) => n.id == *id,
                NodeKey::Hash(h) => n.node_hash == *h,
                NodeKey::Name(name) => n.spec.name == *name,
            })
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no node with {key}")))?;
        let (states, _) = self.run_round(&fleet, &[index]).await?;
        let node = &fleet[index].0;
        let state = states.first().ok_or_else(|| ErrorBody::internal("the check produced no state"))?;
        Ok(CheckNodeResult {
            name: node.spec.name.clone(),
            node_hash: node.node_hash.clone(),
            status: status_view(state),
        })
    }

    /// Probes `targets` (indexes into `fleet`), evaluates them against their
    /// types' group heads, saves the states in one batch and publishes changes.
    async fn run_round(
        &self,
        fleet: &[(NodeRow, Option<NodeState>)],
        targets: &[usize],
    ) -> Result<(Vec<NodeState>, u32), ErrorBody> {
        let now = now_ms();
        let probes: Vec<_> = targets
            .iter()
            .copied()
            .map(|i| {
            let (node, prev) = &fleet[i];
            async move {
                let lookup = |name: &str| std::env::var(name).ok();
                let Some(chain) = self.chains.get(&node.node_type) else {
                    return (i, Probed::NotProbed("unknown_type"));
                };
                if prev.as_ref().and_then(|p| p.cooldown_until).is_some_and(|c| c > now) {
                    return (i, Probed::CoolingDown);
                }
                let timeout = Duration::from_millis(node.spec.timeout_ms.map(u64::from).unwrap_or(self.args.check_timeout_ms));
                let probe = probe::for_family(chain.family);
                let result = if node.spec.transport == Transport::JrpcProxy {
                    let rpc = transport::ViaProxy { caller: &self.proxy, spec: &node.spec };
                    probe.probe(&rpc, chain, timeout).await
                } else {
                    let endpoint = match secrets::resolve_endpoint(&node.spec, &lookup) {
                        Ok(e) => e,
                        Err(why) => {
                            warn!(node = %node.node_hash, name = %node.spec.name, error = %why, "cannot resolve the node's secrets");
                            return (i, Probed::NotProbed("secret_missing"));
                        }
                    };
                    let rpc = transport::Direct { client: &self.rpc, endpoint };
                    probe.probe(&rpc, chain, timeout).await
                };
                (i, match result {
                    Ok(obs) => Probed::Seen(obs),
                    Err(e) => Probed::Failed(e),
                })
            }
        })
            .collect();
        let probed: Vec<(usize, Probed)> =
            futures::stream::iter(probes).buffer_unordered(self.args.check_concurrency.max(1)).collect().await;

        // Group heads from this round's good observations, and the stored heights
        // of the type's other nodes that are healthy enough to count.
        let mut seen: HashMap<usize, &Observation> = HashMap::new();
        for (i, p) in &probed {
            if let Probed::Seen(obs) = p {
                seen.insert(*i, obs);
            }
        }
        let types: HashSet<&str> = targets.iter().map(|&i| fleet[i].0.node_type.as_str()).collect();
        let in_round: HashSet<usize> = targets.iter().copied().collect();
        let heights = fleet
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| n.spec.enabled && types.contains(&n.node_type.as_str()))
            .filter_map(|(i, (n, s))| match seen.get(&i) {
                Some(obs) if obs.wrong_chain.is_none() && !obs.syncing => Some((n.node_type.clone(), obs.height)),
                Some(_) => None,
                None if in_round.contains(&i) => None,
                None => s
                    .as_ref()
                    .filter(|s| s.raw_status == status::OK || s.raw_status == status::LAGGING)
                    .filter(|s| now - s.checked_at < 60_000)
                    .and_then(|s| s.height)
                    .map(|h| (n.node_type.clone(), h.max(0) as u64)),
            });
        let heads = status::group_heads(heights);

        let hysteresis = Hysteresis { rise: self.args.rise.max(1) as i32, fall: self.args.fall.max(1) as i32 };
        let mut states = Vec::with_capacity(probed.len());
        let mut events = Vec::new();
        for (i, p) in &probed {
            let (node, prev) = &fleet[*i];
            let Some(chain) = self.chains.get(&node.node_type) else { continue };
            let head = heads.get(&node.node_type).copied();
            let (state, changed) = status::evaluate(
                node,
                chain,
                prev.as_ref(),
                p,
                head,
                now,
                self.args.rate_limit_cooldown_ms as i64,
                hysteresis,
            );
            if changed {
                let from = prev.as_ref().map(|p| p.status.clone()).unwrap_or_else(|| status::UNKNOWN.to_owned());
                info!(node = %node.node_hash, name = %node.spec.name, from = %from, to = %state.status, reason = %state.reason, height = ?state.height, "node status changed");
                metrics::status_changed(&node.node_type, &state.status);
                events.push(StatusEvent {
                    node_id: node.id,
                    node_hash: node.node_hash.clone(),
                    name: node.spec.name.clone(),
                    node_type: node.node_type.clone(),
                    from,
                    to: state.status.clone(),
                    reason: state.reason.clone(),
                    height: state.height,
                    group_head: state.group_head,
                    time: now,
                });
            }
            states.push(state);
        }
        self.store.save_checks(&states).await.map_err(store_error)?;
        let changed = events.len() as u32;
        if !events.is_empty() {
            (self.events)(events).await;
        }
        // This replica sees its own round at once; the others on their next reload.
        if let Err(e) = self.refresh().await {
            debug!(error = %e, "cannot reload the view after a round");
        }
        Ok((states, changed))
    }

    /// `getBestNode`: the node of a type to use now, from the view.
    pub fn best_node(&self, args: &GetBestNodeArgs) -> Result<GetBestNodeResult, ErrorBody> {
        let Some(chain) = self.chains.get(&args.node_type) else {
            return Err(ErrorBody::bad_request(format!("args.type: unknown chain type {:?}", args.node_type)));
        };
        let max_fallbacks = args.max_fallbacks.unwrap_or(pgnm_protocol::health::DEFAULT_FALLBACKS);
        if max_fallbacks > pgnm_protocol::health::MAX_FALLBACKS {
            return Err(ErrorBody::bad_request(format!(
                "args.maxFallbacks: must be at most {}, got {max_fallbacks}",
                pgnm_protocol::health::MAX_FALLBACKS
            )));
        }
        let snap = self.snapshot();
        let empty = TypeIndex::default();
        let index = snap.by_type.get(&args.node_type).unwrap_or(&empty);
        let labelled = |n: &NodeRow| args.labels.iter().all(|(k, v)| n.spec.labels.get(k) == Some(v));
        // The eligible nodes, already in order of preference; only the first few
        // are looked at (the answer and its fallbacks), plus the sticky choice.
        let mut ranked = index.eligible.iter().filter_map(|&(i, score)| {
            let (n, s) = &snap.nodes[i];
            s.as_ref().filter(|_| labelled(n)).map(|s| (n, s, score))
        });
        let eligible: Vec<(&NodeRow, &NodeState, f64)> = ranked.by_ref().take(max_fallbacks as usize + 1).collect();
        if eligible.is_empty() {
            let candidates: Vec<&(NodeRow, Option<NodeState>)> =
                index.all.iter().map(|&i| &snap.nodes[i]).filter(|(n, _)| labelled(n)).collect();
            // Each node's reason, for the first hundred (a reply stays small).
            let nodes: Vec<rmpv::Value> = candidates
                .iter()
                .take(100)
                .map(|(n, s)| {
                    let (status, reason) = match (s, n.spec.enabled) {
                        (_, false) => ("disabled".to_owned(), "disabled".to_owned()),
                        (Some(s), true) => (s.status.clone(), s.reason.clone()),
                        (None, true) => (status::UNKNOWN.to_owned(), "not checked yet".to_owned()),
                    };
                    rmpv::Value::Map(vec![
                        ("name".into(), n.spec.name.clone().into()),
                        ("nodeHash".into(), n.node_hash.clone().into()),
                        ("status".into(), status.into()),
                        ("reason".into(), reason.into()),
                    ])
                })
                .collect();
            let what = if args.labels.is_empty() { String::new() } else { " with these labels".to_owned() };
            return Err(ErrorBody::new(
                ErrorCode::NoHealthyNode,
                format!("no eligible {} node{what} ({} known)", chain.name, candidates.len()),
            )
            .with_details(rmpv::Value::Map(vec![
                ("nodes".into(), rmpv::Value::Array(nodes)),
                ("known".into(), (candidates.len() as u64).into()),
            ])));
        }
        let best = eligible[0];
        // Sticky: keep the current choice while it is eligible, in the best tier,
        // and not clearly worse than the best (half the score or better).
        let key = format!("{}|{:?}", args.node_type, args.labels);
        let mut sticky = self.sticky.lock().expect("sticky lock poisoned");
        let current = sticky.get(&key).and_then(|id| snap.by_id.get(id)).and_then(|&i| {
            let (n, s) = &snap.nodes[i];
            let s = s.as_ref().filter(|s| s.eligible && n.spec.enabled && labelled(n))?;
            Some((n, s, score(n, s)))
        });
        let chosen = match current {
            Some(c) if c.0.spec.priority == best.0.spec.priority && c.2 <= best.2 * 2.0 => c,
            _ => best,
        };
        if current.map(|c| c.0.id) != Some(chosen.0.id) {
            info!(r#type = %args.node_type, node = %chosen.0.node_hash, name = %chosen.0.spec.name, "best node switched");
            metrics::best_switched(&args.node_type);
        }
        sticky.insert(key, chosen.0.id);
        drop(sticky);
        let view = |(n, s, _): &(&NodeRow, &NodeState, f64)| ChosenNode {
            id: n.id,
            node_hash: n.node_hash.clone(),
            name: n.spec.name.clone(),
            url: secrets::redact_url(&n.spec.url),
            priority: n.spec.priority,
            height: s.height,
            latency_ewma_ms: s.latency_ewma_ms,
        };
        let node = view(&chosen);
        let fallbacks =
            eligible.iter().filter(|e| e.0.id != chosen.0.id).take(max_fallbacks as usize).map(view).collect();
        Ok(GetBestNodeResult { node, fallbacks })
    }

    /// Deletes check history older than `older_than_secs`.
    pub async fn prune(&self, older_than_secs: u64) -> Result<u64, ErrorBody> {
        self.store.prune_checks(older_than_secs).await.map_err(store_error)
    }
}
