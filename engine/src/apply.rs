//! The executor: walks the step graph and calls the providers.
//!
//! In: a [`Plan`], its [`ApplyGraph`], the providers, a [`Recorder`] (the journal). Out: an
//! [`ApplyReport`] in which every step appears once: succeeded, failed, skipped (naming the
//! failure) or not started (with the reason). Ready steps drain from a dependency queue into a
//! bounded `JoinSet`; each provider call runs under its cloud's concurrency limit and rate, and
//! is retried by [`crate::retry::with_retry`] when the cloud throttles or faults, with the same
//! idempotency token so a retry never makes a second machine. A failed step — a task that
//! panicked or was cancelled included — skips what depends on it; independent steps go on. A
//! step starts only once its start is recorded: when the journal cannot be written, or the
//! user interrupts, no further step starts and the running ones finish.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::graph::{DiGraph, NodeIndex};
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
use crate::retry::{with_retry, RetryPolicy};
use crate::spec::model::ResourceKind;
use crate::state::StateError;

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
    /// A test hook for crash tests: abort the process right after this many journal lines
    /// were written by this apply (`FLEET_TEST_ABORT_AFTER` in the binary). `None` in use.
    pub abort_after_journal_lines: Option<u64>,
    /// Set when the user interrupts the apply (Ctrl-C): no further step starts, the running
    /// ones finish and are reported, the rest are not started.
    pub interrupted: Option<Arc<AtomicBool>>,
}

impl ApplyOptions {
    fn is_interrupted(&self) -> bool {
        self.interrupted
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }
}

impl Default for ApplyOptions {
    fn default() -> ApplyOptions {
        ApplyOptions {
            concurrency: 16,
            retry: RetryPolicy::default(),
            secret_values: BTreeMap::new(),
            replan_when_changed: false,
            abort_after_journal_lines: None,
            interrupted: None,
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
        /// The id of the plan it replaces.
        replaces: String,
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
    /// A step was not started, e.g. because the journal could not be written.
    NotStarted {
        /// Its address.
        address: String,
        /// create, update or delete.
        step: &'static str,
        /// Why.
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
    /// The provider error (or, for a step whose task panicked, an `apply` error saying so).
    pub error: ProviderError,
}

/// A step that was never started, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotStarted {
    /// The address.
    pub address: Address,
    /// create, update or delete.
    pub step: &'static str,
    /// Why it was not started.
    pub because: String,
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
    /// Steps never started, e.g. because the journal could not be written.
    pub not_started: Vec<NotStarted>,
    /// Why the journal could not be written, with its path. From then on no step was started:
    /// what fleet cannot write down, it does not do.
    pub journal_error: Option<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl ApplyReport {
    /// Whether every step ran and succeeded, and every event was recorded.
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
            && self.skipped.is_empty()
            && self.not_started.is_empty()
            && self.journal_error.is_none()
    }
}

/// Where apply writes down what it does (the journal). A step is started only after its
/// start was recorded, so the record never misses a call fleet made.
pub trait Recorder: Send + Sync {
    /// Records one event.
    ///
    /// # Errors
    /// When it cannot be written; the executor then starts no further step.
    fn record(&self, event: &ApplyEvent) -> Result<(), StateError>;
}

/// A recorder that keeps nothing (benchmarks, tests of the executor alone).
pub struct Unrecorded;

impl Recorder for Unrecorded {
    fn record(&self, _: &ApplyEvent) -> Result<(), StateError> {
        Ok(())
    }
}

/// An error with its causes, on one line.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors show their cause in their own message already.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The observer and the recorder of a run, and whether the record is still whole.
struct Events {
    observer: Arc<dyn Observer>,
    recorder: Arc<dyn Recorder>,
    /// Set by the first write that failed; nothing more is written after it, so the journal
    /// never holds lines after a torn one.
    journal_error: std::sync::Mutex<Option<String>>,
}

impl Events {
    fn record(&self, event: &ApplyEvent) -> bool {
        let mut broken = self
            .journal_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if broken.is_some() {
            return false;
        }
        match self.recorder.record(event) {
            Ok(()) => true,
            Err(error) => {
                *broken = Some(with_causes(&error));
                false
            }
        }
    }

    /// Records and shows an event that has happened (shown even if it cannot be recorded).
    fn show(&self, event: &ApplyEvent, done: usize, total: usize) {
        self.record(event);
        self.observer.event(event, done, total);
    }

    /// Records an event about to happen and shows it only if it was recorded.
    fn record_then_show(&self, event: &ApplyEvent, done: usize, total: usize) -> bool {
        let recorded = self.record(event);
        if recorded {
            self.observer.event(event, done, total);
        }
        recorded
    }

    fn journal_error(&self) -> Option<String> {
        self.journal_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
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

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for steps it depends on, or ready and not started yet.
    Waiting,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// The dependency queue: which steps wait on how many others, which are ready, and how each
/// finished. It owns the accounting, so every step ends in exactly one of succeeded, failed,
/// skipped (naming the failure) or not started (with the reason).
struct Queue<'g> {
    graph: &'g DiGraph<Step, ()>,
    unmet: Vec<usize>,
    ready: VecDeque<NodeIndex>,
    state: Vec<State>,
    /// Steps finished, any outcome, for progress.
    done: usize,
    total: usize,
}

impl<'g> Queue<'g> {
    fn new(graph: &'g DiGraph<Step, ()>) -> Queue<'g> {
        let unmet: Vec<usize> = graph
            .node_indices()
            .map(|node| graph.neighbors_directed(node, Direction::Incoming).count())
            .collect();
        let ready = graph
            .node_indices()
            .filter(|node| unmet[node.index()] == 0)
            .collect();
        Queue {
            graph,
            state: vec![State::Waiting; unmet.len()],
            unmet,
            ready,
            done: 0,
            total: graph.node_count(),
        }
    }

    fn start(&mut self, node: NodeIndex) {
        self.state[node.index()] = State::Running;
    }

    /// A step succeeded: what waited only on it becomes ready.
    fn succeeded(&mut self, node: NodeIndex) {
        self.state[node.index()] = State::Succeeded;
        self.done += 1;
        // `neighbors` lists a successor once per edge, so parallel edges count each.
        for successor in self.graph.neighbors_directed(node, Direction::Outgoing) {
            let unmet = &mut self.unmet[successor.index()];
            *unmet = unmet.saturating_sub(1);
            if *unmet == 0 && self.state[successor.index()] == State::Waiting {
                self.ready.push_back(successor);
            }
        }
    }

    /// A step failed: it is reported once, and everything that depends on it, directly or
    /// not, is skipped once, naming this failure. Independent steps are untouched.
    fn failed(
        &mut self,
        node: NodeIndex,
        error: ProviderError,
        events: &Events,
        report: &mut ApplyReport,
    ) {
        let step = &self.graph[node];
        self.state[node.index()] = State::Failed;
        self.done += 1;
        events.show(
            &ApplyEvent::Failed {
                address: step.address.to_string(),
                step: step.kind.verb(),
                error: error.to_string(),
            },
            self.done,
            self.total,
        );
        report.failed.push(Failure {
            address: step.address.clone(),
            step: step.kind.verb(),
            error,
        });
        let mut queue: VecDeque<NodeIndex> = self
            .graph
            .neighbors_directed(node, Direction::Outgoing)
            .collect();
        while let Some(next) = queue.pop_front() {
            if self.state[next.index()] != State::Waiting {
                continue;
            }
            self.state[next.index()] = State::Skipped;
            self.ready.retain(|ready| *ready != next);
            self.done += 1;
            let skipped = &self.graph[next];
            events.show(
                &ApplyEvent::Skipped {
                    address: skipped.address.to_string(),
                    step: skipped.kind.verb(),
                    because: step.address.to_string(),
                },
                self.done,
                self.total,
            );
            report
                .skipped
                .push((skipped.address.clone(), step.address.clone()));
            queue.extend(self.graph.neighbors_directed(next, Direction::Outgoing));
        }
    }

    /// Steps that never started, in graph order.
    fn never_started(&self) -> Vec<NodeIndex> {
        self.graph
            .node_indices()
            .filter(|node| self.state[node.index()] == State::Waiting)
            .collect()
    }
}

/// The failure of a step whose task ended without an answer: it panicked or was cancelled.
fn lost_task(error: tokio::task::JoinError) -> ProviderError {
    if error.is_panic() {
        let payload = error.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        ProviderError::new(
            crate::provider::ErrorKind::Fatal,
            "apply",
            "panicked",
            format!("the step's task panicked: {message}; whether the cloud carried it out is unknown, the next plan will show"),
        )
    } else {
        ProviderError::new(
            crate::provider::ErrorKind::Fatal,
            "apply",
            "cancelled",
            "the step's task was cancelled before it answered; whether the cloud carried it out is unknown, the next plan will show",
        )
    }
}

/// Runs the steps of a plan, recording nothing (see [`execute_recorded`]).
pub async fn execute(
    plan: &Plan,
    graph: &ApplyGraph,
    providers: &Providers,
    options: &ApplyOptions,
    observer: Arc<dyn Observer>,
) -> ApplyReport {
    execute_recorded(
        plan,
        graph,
        providers,
        options,
        observer,
        Arc::new(Unrecorded),
    )
    .await
}

/// Runs the steps of a plan, writing every event to `recorder` before showing it.
///
/// # Guarantees
/// Every step ends in the report exactly once: succeeded (counted), failed (with its error;
/// a task that panicked or was cancelled is a failed step like any other), skipped (naming the
/// failure it depends on) or not started (with the reason). A step starts only after its start
/// was recorded; once a record cannot be written, no further step starts, the steps already
/// running finish and are reported, and [`ApplyReport::journal_error`] says why.
pub async fn execute_recorded(
    plan: &Plan,
    graph: &ApplyGraph,
    providers: &Providers,
    options: &ApplyOptions,
    observer: Arc<dyn Observer>,
    recorder: Arc<dyn Recorder>,
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
    let events = Arc::new(Events {
        observer,
        recorder,
        journal_error: std::sync::Mutex::new(None),
    });
    let plan = Arc::new(plan.clone());
    let secrets = Arc::new(options.secret_values.clone());
    let g = &graph.graph;
    let total = graph.step_count();
    let mut queue = Queue::new(g);
    let mut report = ApplyReport::default();
    let mut tasks: JoinSet<Vec<StepOutcome>> = JoinSet::new();
    // Which steps each task carries, so a task that panics fails exactly those steps.
    let mut running: HashMap<tokio::task::Id, Vec<NodeIndex>> = HashMap::new();
    let concurrency = options.concurrency.max(1);
    loop {
        while tasks.len() < concurrency
            && events.journal_error().is_none()
            && !options.is_interrupted()
        {
            let Some(node) = queue.ready.pop_front() else {
                break;
            };
            let step = g[node].clone();
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
                queue.failed(node, error, &events, &mut report);
                continue;
            };
            // Identical pool members that are ready together go to the cloud as one batch
            // (GCE bulkInsert, EC2 RunInstances with MinCount/MaxCount).
            let mut members = vec![node];
            if step.kind == StepKind::Create && change.kind == ResourceKind::Pool {
                let shape = batch_shape(change);
                let mut index = 0;
                while index < queue.ready.len() && members.len() < MAX_BATCH {
                    let other = &g[queue.ready[index]];
                    let same = other.kind == StepKind::Create
                        && plan.resource_changes.get(other.change).is_some_and(|c| {
                            c.kind == ResourceKind::Pool
                                && c.cloud == cloud
                                && batch_shape(c) == shape
                        });
                    match (same, queue.ready.remove(index)) {
                        (true, Some(member)) => members.push(member),
                        (false, Some(other)) => {
                            queue.ready.insert(index, other);
                            index += 1;
                        }
                        (_, None) => break,
                    }
                }
            }
            // A step whose start cannot be written down is not started.
            let mut recorded = Vec::with_capacity(members.len());
            for member in members {
                let member_step = &g[member];
                let start = ApplyEvent::Started {
                    address: member_step.address.to_string(),
                    step: member_step.kind.verb(),
                    name: plan.resource_changes[member_step.change]
                        .cloud_name()
                        .to_string(),
                };
                if events.record_then_show(&start, queue.done, total) {
                    queue.start(member);
                    recorded.push(member);
                }
            }
            if recorded.is_empty() {
                continue;
            }
            let plan = plan.clone();
            let events = events.clone();
            let retry = options.retry;
            let secrets = secrets.clone();
            let steps: Vec<(NodeIndex, Step)> =
                recorded.iter().map(|&m| (m, g[m].clone())).collect();
            let handle = tasks.spawn(async move {
                if let [(node, step)] = steps.as_slice() {
                    let (attempts, result) =
                        run_step(&plan, step, &lane, retry, &events, total, &secrets).await;
                    return vec![(*node, attempts, result)];
                }
                run_batch(&plan, &steps, &lane, retry, &events, total, &secrets).await
            });
            running.insert(handle.id(), recorded);
        }
        let Some(joined) = tasks.join_next_with_id().await else {
            break;
        };
        let outcomes = match joined {
            Ok((id, outcomes)) => {
                running.remove(&id);
                outcomes
            }
            // A task that panicked (or was cancelled) fails the steps it carried, like any
            // failure: their dependents are skipped, the rest goes on.
            Err(error) => {
                let nodes = running.remove(&error.id()).unwrap_or_default();
                let failure = lost_task(error);
                nodes
                    .into_iter()
                    .map(|node| (node, 1, Err(failure.clone())))
                    .collect()
            }
        };
        for (node, attempts, result) in outcomes {
            report.retries += attempts.saturating_sub(1) as usize;
            let step = &g[node];
            match result {
                Ok(id) => {
                    match step.kind {
                        StepKind::Create => report.created += 1,
                        StepKind::Update => report.updated += 1,
                        StepKind::Delete => report.deleted += 1,
                    }
                    queue.succeeded(node);
                    events.show(
                        &ApplyEvent::Succeeded {
                            address: step.address.to_string(),
                            step: step.kind.verb(),
                            id,
                            seconds: 0.0,
                        },
                        queue.done,
                        total,
                    );
                }
                Err(error) => queue.failed(node, error, &events, &mut report),
            }
        }
    }
    report.journal_error = events.journal_error();
    let because = match &report.journal_error {
        Some(error) => format!("the journal could not be written ({error})"),
        None if options.is_interrupted() => "the apply was interrupted".to_string(),
        None => "it waits on steps that never finished (a cycle in the step graph)".to_string(),
    };
    for node in queue.never_started() {
        let step = &g[node];
        events.show(
            &ApplyEvent::NotStarted {
                address: step.address.to_string(),
                step: step.kind.verb(),
                because: because.clone(),
            },
            queue.done,
            total,
        );
        report.not_started.push(NotStarted {
            address: step.address.clone(),
            step: step.kind.verb(),
            because: because.clone(),
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
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
    events: &Events,
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
    // a whole, with the same tokens: one call per attempt rather than one per member. The call
    // as a whole was refused when every member has the same retryable error; members failing
    // each in their own way (EC2 tagging) go on alone below.
    let attempts = AtomicU32::new(0);
    let first = &steps[0].1;
    let last = &steps[steps.len() - 1].1;
    let whole = with_retry(
        retry,
        |attempt| {
            attempts.store(attempt, Ordering::Relaxed);
            let requests = &requests;
            async move {
                let results = {
                    let _permit = lane.mutations.acquire().await;
                    if let Some(rate) = &lane.rate {
                        rate.acquire().await;
                    }
                    lane.provider.create_batch(requests).await
                };
                let first = results.first().and_then(|result| result.as_ref().err());
                match first {
                    Some(first)
                        if first.kind.is_retryable()
                            && results
                                .iter()
                                .all(|result| result.as_ref().err() == Some(first)) =>
                    {
                        Err(first.clone())
                    }
                    _ => Ok(results),
                }
            }
        },
        // One line for the batch, not one per member.
        |attempt, error, delay| {
            events.show(
                &ApplyEvent::Retrying {
                    address: format!(
                        "{} … {} ({} in one call)",
                        first.address,
                        last.address,
                        steps.len()
                    ),
                    step: first.kind.verb(),
                    attempt,
                    error: error.to_string(),
                    delay_ms: delay.as_millis() as u64,
                },
                0,
                total,
            )
        },
    )
    .await;
    let batch_attempts = attempts.load(Ordering::Relaxed);
    let (results, gave_up) = match whole {
        Ok(results) => (results, false),
        Err(error) => (vec![Err(error); steps.len()], true),
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
                    run_step(plan, step, lane, retry, events, total, secrets).await;
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
///
/// A machine made, deleted out of band and wanted again looks to discovery as it did before it
/// was first made, so its token is the old one: each provider tells such a spent token from a
/// live one (EC2 answers it with instances going away, GCE with a finished operation whose VM
/// is gone, the simulator forgets tokens with their objects) and derives the next alike.
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
    events: &Events,
    total: usize,
    secrets: &BTreeMap<String, String>,
) -> (u32, Result<String, ProviderError>) {
    let change = &plan.resource_changes[step.change];
    let attempts = AtomicU32::new(0);
    let result = with_retry(
        retry,
        |attempt| {
            attempts.store(attempt, Ordering::Relaxed);
            async move {
                let _permit = lane.mutations.acquire().await;
                if let Some(rate) = &lane.rate {
                    rate.acquire().await;
                }
                call(plan, step, change, &*lane.provider, secrets).await
            }
        },
        |attempt, error, delay| {
            events.show(
                &ApplyEvent::Retrying {
                    address: step.address.to_string(),
                    step: step.kind.verb(),
                    attempt,
                    error: error.to_string(),
                    delay_ms: delay.as_millis() as u64,
                },
                0,
                total,
            )
        },
    )
    .await;
    (attempts.load(Ordering::Relaxed), result)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph;
    use crate::test_support::{desired, desired_set, live, plan_of, FakeProvider};
    use std::path::PathBuf;

    fn providers(fake: Arc<FakeProvider>) -> Providers {
        let mut providers = Providers::new();
        providers.insert(fake);
        providers
    }

    fn run(
        plan: &Plan,
        fake: Arc<FakeProvider>,
        options: ApplyOptions,
        recorder: Arc<dyn Recorder>,
    ) -> ApplyReport {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let steps = graph::build(plan);
        runtime.block_on(execute_recorded(
            plan,
            &steps,
            &providers(fake),
            &options,
            Arc::new(Quiet),
            recorder,
        ))
    }

    /// Records events until `limit` lines, then fails as a full disk does.
    struct FillingJournal {
        lines: std::sync::Mutex<Vec<String>>,
        limit: usize,
    }

    impl Recorder for FillingJournal {
        fn record(&self, event: &ApplyEvent) -> Result<(), StateError> {
            let mut lines = self.lines.lock().unwrap();
            if lines.len() >= self.limit {
                return Err(StateError::Io {
                    action: "append to",
                    path: PathBuf::from("state/journal/unit.jsonl"),
                    source: std::io::Error::other("No space left on device"),
                });
            }
            lines.push(serde_json::to_string(event).unwrap());
            Ok(())
        }
    }

    #[test]
    fn a_panicking_call_fails_exactly_its_dependents() {
        let template = desired(ResourceKind::Template, "tmpl");
        let mut user = desired(ResourceKind::Manager, "user");
        user.depends_on = vec![template.address.clone()];
        let other = desired(ResourceKind::Manager, "other");
        let plan = plan_of(&desired_set(vec![template, user, other]), &[]);
        let fake = Arc::new(FakeProvider {
            panic_on: vec!["tmpl".to_string()],
            ..FakeProvider::default()
        });
        let report = run(
            &plan,
            fake.clone(),
            ApplyOptions::default(),
            Arc::new(Unrecorded),
        );
        assert_eq!(report.failed.len(), 1, "{report:#?}");
        assert_eq!(report.failed[0].address.as_str(), "template.tmpl");
        assert_eq!(report.failed[0].error.code, "panicked");
        assert_eq!(
            report.skipped,
            vec![(
                Address::new(ResourceKind::Manager, "user"),
                Address::new(ResourceKind::Template, "tmpl")
            )]
        );
        assert_eq!(report.created, 1, "the independent manager is made");
        assert_eq!(fake.calls(), ["create other"]);
        assert!(!report.is_success());
    }

    #[test]
    fn a_failed_helper_delete_does_not_stop_independent_deletes() {
        let helper = desired(ResourceKind::Helper, "prometheus");
        let manager = desired(ResourceKind::Manager, "old-manager");
        let template = desired(ResourceKind::Template, "old-template");
        let pool = desired(ResourceKind::Manager, "old-other");
        let live_objects = [
            live(&helper, "h1"),
            live(&manager, "m1"),
            live(&template, "t1"),
            live(&pool, "m2"),
        ];
        // Nothing is desired any more: every object is an orphan to delete.
        let plan = plan_of(&desired_set(Vec::new()), &live_objects);
        assert_eq!(plan.summary.delete, 4);
        let fake = Arc::new(FakeProvider {
            fail_on: vec!["prometheus".to_string()],
            ..FakeProvider::default()
        });
        let report = run(
            &plan,
            fake.clone(),
            ApplyOptions::default(),
            Arc::new(Unrecorded),
        );
        assert_eq!(report.failed.len(), 1, "{report:#?}");
        assert_eq!(report.failed[0].address.as_str(), "helper.prometheus");
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.deleted, 3);
        let mut calls = fake.calls();
        calls.sort();
        assert_eq!(
            calls,
            [
                "delete old-manager",
                "delete old-other",
                "delete old-template",
                "delete prometheus"
            ]
        );
    }

    #[test]
    fn a_journal_that_cannot_be_written_stops_new_steps() {
        let names = ["a", "b", "c", "d", "e"];
        let plan = plan_of(
            &desired_set(
                names
                    .iter()
                    .map(|name| desired(ResourceKind::Manager, name))
                    .collect(),
            ),
            &[],
        );
        let fake = Arc::new(FakeProvider::default());
        // Room for: started a, succeeded a, started b. Then the disk is full.
        let journal = Arc::new(FillingJournal {
            lines: std::sync::Mutex::new(Vec::new()),
            limit: 3,
        });
        let options = ApplyOptions {
            concurrency: 1,
            ..ApplyOptions::default()
        };
        let report = run(&plan, fake.clone(), options, journal.clone());
        // The step already running when the journal failed finished and is counted; no other
        // step was started.
        assert_eq!(fake.calls(), ["create a", "create b"]);
        assert_eq!(report.created, 2);
        let not_started: Vec<&str> = report
            .not_started
            .iter()
            .map(|step| step.address.as_str())
            .collect();
        assert_eq!(not_started, ["manager.c", "manager.d", "manager.e"]);
        let error = report.journal_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("state/journal/unit.jsonl") && error.contains("No space left"),
            "{error}"
        );
        assert!(report.not_started[0]
            .because
            .contains("journal could not be written"));
        assert_eq!(journal.lines.lock().unwrap().len(), 3);
        assert!(!report.is_success());
    }

    #[test]
    fn a_step_starts_only_after_its_start_is_recorded() {
        let plan = plan_of(&desired_set(vec![desired(ResourceKind::Manager, "a")]), &[]);
        let fake = Arc::new(FakeProvider::default());
        let journal = Arc::new(FillingJournal {
            lines: std::sync::Mutex::new(Vec::new()),
            limit: 0,
        });
        let report = run(&plan, fake.clone(), ApplyOptions::default(), journal);
        assert!(
            fake.calls().is_empty(),
            "a call was made that no journal line records"
        );
        assert_eq!(report.not_started.len(), 1);
        assert_eq!(report.created, 0);
    }
}
