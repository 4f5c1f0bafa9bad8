//! The executor: walks the step graph and calls the providers.
//!
//! In: a [`Plan`], its [`ApplyGraph`], the providers. Out: an [`ApplyReport`]. Ready steps
//! drain into a bounded `JoinSet`; each provider call runs under its cloud's concurrency limit
//! and rate, and is retried by the [`RetryPolicy`] when the cloud throttles or faults, with the
//! same idempotency token so a retry never makes a second machine. A failed step skips what
//! depends on it; independent steps go on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;
use petgraph::Direction;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::desired::{short_hash, Address, DesiredResource};
use crate::diff::Change;
use crate::graph::{ApplyGraph, Step, StepKind};
use crate::plan::Plan;
use crate::provider::{
    Cloud, CreateRequest, DeleteRequest, LiveResource, MachineSpec, Provider, ProviderError,
    UpdateRequest,
};
use crate::retry::RetryPolicy;
use crate::spec::model::ResourceKind;

/// The providers of a run, one per cloud.
#[derive(Clone, Default)]
pub struct Providers {
    by_cloud: BTreeMap<Cloud, Arc<dyn Provider>>,
}

impl Providers {
    /// No providers.
    pub fn new() -> Providers {
        Providers::default()
    }

    /// Adds the provider of one cloud.
    pub fn insert(&mut self, provider: Arc<dyn Provider>) {
        self.by_cloud.insert(provider.cloud(), provider);
    }

    /// The provider of a cloud.
    pub fn get(&self, cloud: Cloud) -> Option<&Arc<dyn Provider>> {
        self.by_cloud.get(&cloud)
    }

    /// Every provider.
    pub fn iter(&self) -> impl Iterator<Item = (&Cloud, &Arc<dyn Provider>)> {
        self.by_cloud.iter()
    }
}

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Steps in flight at once, over all clouds.
    pub concurrency: usize,
    /// Retry of throttled and transient failures.
    pub retry: RetryPolicy,
    /// Secret values, delivered to the machines that reference them (`fleet-secrets`).
    pub secret_values: BTreeMap<String, String>,
    /// When the cloud changed between the plan and the lock: plan again under the lock and
    /// apply that (`true`), or refuse as stale (`false`, for saved and reviewed plans).
    pub replan_when_changed: bool,
}

impl Default for ApplyOptions {
    fn default() -> ApplyOptions {
        ApplyOptions {
            concurrency: 16,
            retry: RetryPolicy::default(),
            secret_values: BTreeMap::new(),
            replan_when_changed: false,
        }
    }
}

/// The metadata to send for a machine: its files plus, where they reference secrets, the
/// secret values in `fleet-secrets`.
fn with_secrets(
    fleet: &str,
    metadata: &BTreeMap<String, String>,
    values: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = metadata.clone();
    if let Some(delivery) = crate::secrets::delivery(fleet, metadata, values) {
        out.insert(
            crate::render::SECRETS.to_string(),
            serde_json::to_string(&delivery).unwrap_or_default(),
        );
    }
    out
}

/// Something that happened during apply, for progress output and the journal.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApplyEvent {
    /// The cloud changed between the plan and the lock, and the plan was made again (only
    /// where the caller allowed it: an auto-approved apply of a fleet file).
    Replanned {
        /// The new plan's id.
        plan_id: String,
        /// Its one-line summary.
        summary: String,
        /// `symbol address` of each change.
        changes: Vec<String>,
    },
    /// A step began.
    Started {
        /// Its address.
        address: String,
        /// create, update or delete.
        step: &'static str,
        /// The cloud name.
        name: String,
    },
    /// A call failed and will be tried again.
    Retrying {
        /// Its address.
        address: String,
        /// create, update or delete.
        step: &'static str,
        /// The attempt that failed.
        attempt: u32,
        /// The error.
        error: String,
        /// The wait before the next attempt, in milliseconds.
        delay_ms: u64,
    },
    /// A step finished.
    Succeeded {
        /// Its address.
        address: String,
        /// create, update or delete.
        step: &'static str,
        /// The cloud id.
        id: String,
        /// Seconds it took.
        seconds: f64,
    },
    /// A step failed for good.
    Failed {
        /// Its address.
        address: String,
        /// create, update or delete.
        step: &'static str,
        /// The error.
        error: String,
    },
    /// A step was not run because one it depends on failed.
    Skipped {
        /// Its address.
        address: String,
        /// create, update or delete.
        step: &'static str,
        /// The failed step's address.
        because: String,
    },
}

/// Receives apply events as they happen.
pub trait Observer: Send + Sync {
    /// One event; `done` and `total` count steps that finished (any outcome) and all steps.
    fn event(&self, event: &ApplyEvent, done: usize, total: usize);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &ApplyEvent, _: usize, _: usize) {}
}

/// One failed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The address.
    pub address: Address,
    /// create, update or delete.
    pub step: &'static str,
    /// The provider error.
    pub error: ProviderError,
}

/// What an apply did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// Steps that succeeded, by kind.
    pub created: usize,
    /// In-place updates.
    pub updated: usize,
    /// Deletions.
    pub deleted: usize,
    /// Retries made, over all steps.
    pub retries: usize,
    /// Steps that failed, each once.
    pub failed: Vec<Failure>,
    /// Steps skipped, with the failed address that caused it.
    pub skipped: Vec<(Address, Address)>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl ApplyReport {
    /// Whether everything succeeded.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }
}

/// A client-side token bucket, so fleet stays under a cloud's API rate instead of leaning on
/// throttling errors.
struct RateLimiter {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(per_second: f64) -> RateLimiter {
        RateLimiter {
            per_second,
            state: Mutex::new((per_second.max(1.0), Instant::now())),
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                let refill = now.duration_since(state.1).as_secs_f64() * self.per_second;
                state.0 = (state.0 + refill).min(self.per_second.max(1.0));
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.0) / self.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Per-cloud pacing.
struct Lane {
    provider: Arc<dyn Provider>,
    mutations: Semaphore,
    rate: Option<RateLimiter>,
}

/// Runs the steps of a plan.
pub async fn execute(
    plan: &Plan,
    graph: &ApplyGraph,
    providers: &Providers,
    options: &ApplyOptions,
    observer: Arc<dyn Observer>,
) -> ApplyReport {
    let started = Instant::now();
    let mut lanes: BTreeMap<Cloud, Arc<Lane>> = BTreeMap::new();
    for (cloud, provider) in providers.iter() {
        let limits = provider.limits();
        lanes.insert(
            *cloud,
            Arc::new(Lane {
                provider: provider.clone(),
                mutations: Semaphore::new(limits.max_concurrent_mutations.max(1)),
                rate: limits.calls_per_second.map(RateLimiter::new),
            }),
        );
    }
    let plan = Arc::new(plan.clone());
    let secrets = Arc::new(options.secret_values.clone());
    let g = &graph.graph;
    let total = graph.step_count();
    let mut pending: BTreeMap<NodeIndex, usize> = g
        .node_indices()
        .map(|node| {
            (
                node,
                g.neighbors_directed(node, Direction::Incoming).count(),
            )
        })
        .collect();
    let mut ready: VecDeque<NodeIndex> = pending
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(node, _)| *node)
        .collect();
    let mut report = ApplyReport::default();
    let mut done = 0usize;
    let mut finished: BTreeMap<NodeIndex, bool> = BTreeMap::new();
    let mut tasks: JoinSet<Vec<StepOutcome>> = JoinSet::new();
    let concurrency = options.concurrency.max(1);
    loop {
        while tasks.len() < concurrency {
            let Some(node) = ready.pop_front() else { break };
            let step = g[node].clone();
            if step.kind == StepKind::Barrier {
                finished.insert(node, true);
                release(g, node, &mut pending, &mut ready);
                continue;
            }
            let change = &plan.resource_changes[step.change];
            let cloud = match step.kind {
                StepKind::Delete => change.before.as_ref().map_or(change.cloud, |b| b.cloud),
                _ => change.cloud,
            };
            let Some(lane) = lanes.get(&cloud).cloned() else {
                let error = ProviderError::new(
                    crate::provider::ErrorKind::Fatal,
                    "apply",
                    "noProvider",
                    format!(
                        "no provider for {cloud} in this run (is it excluded by --only-cloud?)"
                    ),
                );
                done += 1;
                fail(
                    g,
                    node,
                    &step,
                    error,
                    &mut report,
                    &mut finished,
                    &mut done,
                    total,
                    &*observer,
                );
                continue;
            };
            // Identical pool members that are ready together go to the cloud as one batch
            // (GCE bulkInsert, EC2 RunInstances with MinCount/MaxCount).
            let mut members = vec![node];
            if step.kind == StepKind::Create && change.kind == ResourceKind::Pool {
                let shape = batch_shape(change);
                let mut index = 0;
                while index < ready.len() && members.len() < MAX_BATCH {
                    let other = &g[ready[index]];
                    let same = other.kind == StepKind::Create
                        && plan.resource_changes.get(other.change).is_some_and(|c| {
                            c.kind == ResourceKind::Pool
                                && c.cloud == cloud
                                && batch_shape(c) == shape
                        });
                    match (same, ready.remove(index)) {
                        (true, Some(member)) => members.push(member),
                        (false, Some(other)) => {
                            ready.insert(index, other);
                            index += 1;
                        }
                        (_, None) => break,
                    }
                }
            }
            for &member in &members {
                let member_step = &g[member];
                observer.event(
                    &ApplyEvent::Started {
                        address: member_step.address.to_string(),
                        step: member_step.kind.verb(),
                        name: plan.resource_changes[member_step.change]
                            .cloud_name()
                            .to_string(),
                    },
                    done,
                    total,
                );
            }
            let plan = plan.clone();
            let observer = observer.clone();
            let retry = options.retry;
            let secrets = secrets.clone();
            let steps: Vec<(NodeIndex, Step)> =
                members.iter().map(|&m| (m, g[m].clone())).collect();
            tasks.spawn(async move {
                if let [(node, step)] = steps.as_slice() {
                    let (attempts, result) =
                        run_step(&plan, step, &lane, retry, &*observer, total, &secrets).await;
                    return vec![(*node, attempts, result)];
                }
                run_batch(&plan, &steps, &lane, retry, &*observer, total, &secrets).await
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let outcomes = match joined {
            Ok(outcomes) => outcomes,
            // A panicking step must not take the run with it; nothing can be attributed to it.
            Err(_) => continue,
        };
        for (node, attempts, result) in outcomes {
            report.retries += attempts.saturating_sub(1) as usize;
            let step = g[node].clone();
            done += 1;
            match result {
                Ok(id) => {
                    match step.kind {
                        StepKind::Create => report.created += 1,
                        StepKind::Update => report.updated += 1,
                        StepKind::Delete => report.deleted += 1,
                        StepKind::Barrier => {}
                    }
                    observer.event(
                        &ApplyEvent::Succeeded {
                            address: step.address.to_string(),
                            step: step.kind.verb(),
                            id,
                            seconds: 0.0,
                        },
                        done,
                        total,
                    );
                    finished.insert(node, true);
                    release(g, node, &mut pending, &mut ready);
                }
                Err(error) => {
                    fail(
                        g,
                        node,
                        &step,
                        error,
                        &mut report,
                        &mut finished,
                        &mut done,
                        total,
                        &*observer,
                    );
                }
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn release(
    g: &petgraph::graph::DiGraph<Step, ()>,
    node: NodeIndex,
    pending: &mut BTreeMap<NodeIndex, usize>,
    ready: &mut VecDeque<NodeIndex>,
) {
    let mut next: Vec<NodeIndex> = g.neighbors_directed(node, Direction::Outgoing).collect();
    next.sort();
    next.dedup();
    for successor in next {
        let edges = g.edges_connecting(node, successor).count();
        if let Some(count) = pending.get_mut(&successor) {
            *count = count.saturating_sub(edges);
            if *count == 0 {
                ready.push_back(successor);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fail(
    g: &petgraph::graph::DiGraph<Step, ()>,
    node: NodeIndex,
    step: &Step,
    error: ProviderError,
    report: &mut ApplyReport,
    finished: &mut BTreeMap<NodeIndex, bool>,
    done: &mut usize,
    total: usize,
    observer: &dyn Observer,
) {
    observer.event(
        &ApplyEvent::Failed {
            address: step.address.to_string(),
            step: step.kind.verb(),
            error: error.to_string(),
        },
        *done,
        total,
    );
    report.failed.push(Failure {
        address: step.address.clone(),
        step: step.kind.verb(),
        error,
    });
    finished.insert(node, false);
    // Everything downstream is skipped, once, and says which failure caused it.
    let mut queue: VecDeque<NodeIndex> = g.neighbors_directed(node, Direction::Outgoing).collect();
    while let Some(next) = queue.pop_front() {
        if finished.contains_key(&next) {
            continue;
        }
        finished.insert(next, false);
        let skipped = &g[next];
        if skipped.kind != StepKind::Barrier {
            *done += 1;
            observer.event(
                &ApplyEvent::Skipped {
                    address: skipped.address.to_string(),
                    step: skipped.kind.verb(),
                    because: step.address.to_string(),
                },
                *done,
                total,
            );
            report
                .skipped
                .push((skipped.address.clone(), step.address.clone()));
        }
        queue.extend(g.neighbors_directed(next, Direction::Outgoing));
    }
}

/// A finished step: its node, the attempts it took, and the cloud id or the error.
type StepOutcome = (NodeIndex, u32, Result<String, ProviderError>);

/// The most pool members sent in one batch call.
const MAX_BATCH: usize = 100;

/// What must be equal for two pool members to be created in one call: everything but the
/// name (members of one pool share their labels and metadata too).
fn batch_shape(change: &crate::diff::Change) -> Option<&MachineSpec> {
    change.after.as_ref().map(|after| &after.spec)
}

/// Creates several pool members with one batch call; members whose part of it failed in a
/// retryable way go on alone with the usual retries (same tokens, so nothing is made twice).
async fn run_batch(
    plan: &Plan,
    steps: &[(NodeIndex, Step)],
    lane: &Lane,
    retry: RetryPolicy,
    observer: &dyn Observer,
    total: usize,
    secrets: &BTreeMap<String, String>,
) -> Vec<StepOutcome> {
    let mut requests = Vec::with_capacity(steps.len());
    for (_, step) in steps {
        let change = &plan.resource_changes[step.change];
        let Some(after) = &change.after else {
            return steps
                .iter()
                .map(|(node, step)| (*node, 1, Err(missing("after", step))))
                .collect();
        };
        requests.push(CreateRequest {
            kind: after.object,
            name: after.cloud_name.clone(),
            spec: MachineSpec {
                metadata: with_secrets(&plan.fleet, &after.spec.metadata, secrets),
                ..after.spec.clone()
            },
            idempotency_token: creation_token(&plan.fleet, change, after),
        });
    }
    // A batch call that failed as a whole in a retryable way (throttled, 5xx) is repeated as
    // a whole, with the same tokens: one call per attempt rather than one per member.
    let started = Instant::now();
    let mut batch_attempts = 0u32;
    let (results, gave_up) = loop {
        batch_attempts += 1;
        let results = {
            let _permit = lane.mutations.acquire().await;
            if let Some(rate) = &lane.rate {
                rate.acquire().await;
            }
            lane.provider.create_batch(&requests).await
        };
        // The call as a whole was refused when every member has the same retryable error;
        // members failing each in their own way (EC2 tagging) go on alone below.
        let first = results.first().and_then(|result| result.as_ref().err());
        let call_failed = first.is_some_and(|first| {
            first.kind.is_retryable()
                && results
                    .iter()
                    .all(|result| result.as_ref().err() == Some(first))
        });
        let delay = call_failed
            .then(|| retry.delay(batch_attempts, started.elapsed()))
            .flatten();
        let (Some(delay), Some(Err(error))) = (delay, results.first()) else {
            break (results, call_failed);
        };
        // One line for the batch, not one per member.
        let first = &steps[0].1;
        let last = &steps[steps.len() - 1].1;
        observer.event(
            &ApplyEvent::Retrying {
                address: format!(
                    "{} … {} ({} in one call)",
                    first.address,
                    last.address,
                    steps.len()
                ),
                step: first.kind.verb(),
                attempt: batch_attempts,
                error: error.to_string(),
                delay_ms: delay.as_millis() as u64,
            },
            0,
            total,
        );
        tokio::time::sleep(delay).await;
    };
    let mut outcomes = Vec::with_capacity(steps.len());
    for (index, ((node, step), result)) in steps.iter().zip(results).enumerate() {
        // The batch's attempts count once, on its first member: one call, not one per member.
        let batch_attempts = if index == 0 { batch_attempts } else { 1 };
        match result {
            Ok(live) => outcomes.push((*node, batch_attempts, Ok(live.id))),
            // What failed alone in a call that otherwise worked goes on alone, with the usual
            // retries (same token, so nothing is made twice). A call that kept failing as a
            // whole has used the retry budget already.
            Err(error) if error.kind.is_retryable() && !gave_up => {
                let (attempts, result) =
                    run_step(plan, step, lane, retry, observer, total, secrets).await;
                outcomes.push((*node, attempts + batch_attempts, result));
            }
            Err(error) => outcomes.push((*node, batch_attempts, Err(error))),
        }
    }
    outcomes
}

/// The idempotency token of a creation, from what any apply of the same change sees: the
/// fleet, the address, the cloud name and desired spec, and the live state of the address
/// (the machine a replacement replaces, the ids of machines there that are going away). Not
/// from the plan id: two applies from two machines that plan the same change at once send the
/// same token, so the cloud makes one machine; a re-create after a deletion sees a different
/// live state and is a new creation.
pub fn creation_token(fleet: &str, change: &Change, after: &DesiredResource) -> String {
    let spec = after
        .spec
        .labels
        .get(crate::provider::labels::SPEC_HASH)
        .map(String::as_str)
        .unwrap_or("");
    let mut parts = vec![
        change.address.as_str(),
        after.cloud_name.as_str(),
        spec,
        change
            .before
            .as_ref()
            .map_or("absent", |before| before.id.as_str()),
    ];
    parts.extend(change.gone.iter().map(String::as_str));
    crate::provider::creation_token(fleet, &parts)
}

/// The idempotency token of an update or a deletion of one plan: the same plan and step
/// always give the same token, so a retried or resumed apply never repeats it differently.
pub fn idempotency_token(plan_id: &str, step: &Step, extra: &str) -> String {
    short_hash(&[plan_id, step.address.as_str(), step.kind.verb(), extra])
}

async fn run_step(
    plan: &Plan,
    step: &Step,
    lane: &Lane,
    retry: RetryPolicy,
    observer: &dyn Observer,
    total: usize,
    secrets: &BTreeMap<String, String>,
) -> (u32, Result<String, ProviderError>) {
    let change = &plan.resource_changes[step.change];
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = {
            let _permit = lane.mutations.acquire().await;
            if let Some(rate) = &lane.rate {
                rate.acquire().await;
            }
            call(plan, step, change, &*lane.provider, secrets).await
        };
        match result {
            Ok(id) => return (attempt, Ok(id)),
            Err(error) if error.kind.is_retryable() => {
                match retry.delay(attempt, started.elapsed()) {
                    Some(delay) => {
                        observer.event(
                            &ApplyEvent::Retrying {
                                address: step.address.to_string(),
                                step: step.kind.verb(),
                                attempt,
                                error: error.to_string(),
                                delay_ms: delay.as_millis() as u64,
                            },
                            0,
                            total,
                        );
                        tokio::time::sleep(delay).await;
                    }
                    None => return (attempt, Err(error)),
                }
            }
            Err(error) => return (attempt, Err(error)),
        }
    }
}

async fn call(
    plan: &Plan,
    step: &Step,
    change: &crate::diff::Change,
    provider: &dyn Provider,
    secrets: &BTreeMap<String, String>,
) -> Result<String, ProviderError> {
    match step.kind {
        StepKind::Create => {
            let after = change
                .after
                .as_ref()
                .ok_or_else(|| missing("after", step))?;
            let request = CreateRequest {
                kind: after.object,
                name: after.cloud_name.clone(),
                spec: MachineSpec {
                    metadata: with_secrets(&plan.fleet, &after.spec.metadata, secrets),
                    ..after.spec.clone()
                },
                idempotency_token: creation_token(&plan.fleet, change, after),
            };
            provider
                .create(&request)
                .await
                .map(|live: LiveResource| live.id)
        }
        StepKind::Update => {
            let after = change
                .after
                .as_ref()
                .ok_or_else(|| missing("after", step))?;
            let before = change
                .before
                .as_ref()
                .ok_or_else(|| missing("before", step))?;
            let request = UpdateRequest {
                id: before.id.clone(),
                labels: after.spec.labels.clone(),
                metadata: with_secrets(&plan.fleet, &after.spec.metadata, secrets),
                idempotency_token: idempotency_token(&plan.plan_id, step, &before.id),
            };
            provider.update(&request).await.map(|live| live.id)
        }
        StepKind::Delete => {
            let before = change
                .before
                .as_ref()
                .ok_or_else(|| missing("before", step))?;
            let request = DeleteRequest {
                kind: before.kind,
                id: before.id.clone(),
                name: before.name.clone(),
                idempotency_token: idempotency_token(&plan.plan_id, step, &before.id),
            };
            provider.delete(&request).await.map(|()| before.id.clone())
        }
        StepKind::Barrier => Ok(String::new()),
    }
}

fn missing(what: &str, step: &Step) -> ProviderError {
    ProviderError::new(
        crate::provider::ErrorKind::Fatal,
        "apply",
        "invalidPlan",
        format!(
            "the plan has no `{what}` object for {} {}",
            step.kind.verb(),
            step.address
        ),
    )
}
