//! The engine operations the CLI commands call: one operation per command.
//!
//! In: a desired set or a saved plan, the providers, options. Out: a [`Plan`], an
//! [`ApplyOutcome`], or an [`OpError`] saying which cloud call or check failed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::apply::{self, ApplyOptions, ApplyReport, Observer, Providers};
use crate::desired::{Address, Desired};
use crate::diff::{self, Action};
use crate::graph;
use crate::plan::{self, Plan};
use crate::provider::{Cloud, Discovery, LiveResource, ObjectKind, ProviderError};
use crate::retry::RetryPolicy;
use crate::state::{LockInfo, StateError, StateStore};

/// Errors of engine operations.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum OpError {
    /// A cloud call failed after retries.
    #[error("discovery in {cloud} failed: {source}")]
    #[diagnostic(
        code(fleet::discover),
        help("each page was retried under --max-attempts/--retry-for; check the endpoint is reachable, the credentials and the quotas, or try again if it is a passing fault")
    )]
    Discover {
        /// The cloud.
        cloud: Cloud,
        /// The error.
        #[source]
        source: ProviderError,
    },
    /// The fleet file uses a cloud this run has no provider for.
    #[error("no provider for {cloud}")]
    #[diagnostic(
        code(fleet::no_provider),
        help("use `--cloud sim` for the simulator, or limit the run with `--only-cloud`")
    )]
    NoProvider {
        /// The cloud.
        cloud: Cloud,
    },
    /// A saved plan no longer matches the cloud.
    #[error("the plan is stale: the live state of fleet `{fleet}` changed since it was made")]
    #[diagnostic(
        code(fleet::apply::stale_plan),
        help("plan again (`fleet plan … -o PLAN`, or `fleet apply FLEET_FILE`), review it, and apply the new plan; `fleet apply FLEET_FILE --auto-approve` plans again by itself")
    )]
    StalePlan {
        /// The fleet.
        fleet: String,
    },
    /// The plan cannot be applied as it is.
    #[error("{count} resource(s) are blocked: {addresses}")]
    #[diagnostic(
        code(fleet::apply::blocked),
        help("the plan says how to resolve each; or leave them out with `--target`")
    )]
    Blocked {
        /// How many.
        count: usize,
        /// Which.
        addresses: String,
    },
    /// A `--target` pattern matches nothing.
    #[error("--target {pattern} matches no resource")]
    #[diagnostic(
        code(fleet::plan::target),
        help("targets are address patterns such as `manager.runners-manager-*` or `template.amd64-gcp`; `fleet plan` lists the addresses")
    )]
    TargetMatchesNothing {
        /// The pattern.
        pattern: String,
    },
    /// Secrets the plan needs are missing.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Secrets(#[from] crate::secrets::MissingSecrets),
    /// The state store failed or is locked.
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),
}

/// Plan settings.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--target` patterns; empty for everything.
    pub targets: Vec<String>,
    /// `--only-cloud`.
    pub only_cloud: Option<Cloud>,
    /// Retry of discovery calls.
    pub retry: RetryPolicy,
    /// Secret values available now, to tell rotated secrets by digest; may be empty (plans
    /// never need secrets).
    pub secret_values: BTreeMap<String, String>,
}

/// What discovery found.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Objects labelled with the fleet.
    pub objects: Vec<LiveResource>,
    /// Objects holding a desired name, labelled or not.
    pub holders: Vec<LiveResource>,
    /// List calls made.
    pub calls: usize,
    /// Zones that could not be listed, by cloud.
    pub unreachable: BTreeMap<Cloud, BTreeSet<String>>,
}

impl Live {
    /// The fingerprint a saved plan records.
    ///
    /// Objects going away ([`crate::provider::InstanceStatus::Deleting`]) are left out: an
    /// EC2 instance that finishes shutting down between plan and apply changes nothing.
    pub fn fingerprint(&self) -> String {
        let mut all: Vec<LiveResource> = self
            .objects
            .iter()
            .filter(|object| object.status != crate::provider::InstanceStatus::Deleting)
            .cloned()
            .collect();
        all.extend(self.holders.iter().cloned());
        all.sort_by(|a, b| (a.cloud, &a.id).cmp(&(b.cloud, &b.id)));
        all.dedup_by(|a, b| a.cloud == b.cloud && a.id == b.id);
        let seen = plan::fingerprint(&all);
        if self.unreachable.is_empty() {
            return seen;
        }
        // A zone that answers again may hold what the plan did not see: the plan is stale.
        let mut parts = vec![seen];
        for (cloud, zones) in &self.unreachable {
            parts.extend(zones.iter().map(|zone| format!("{cloud}/{zone}")));
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        crate::desired::short_hash(&parts)
    }
}

/// The clouds a run covers.
pub fn scope_clouds(desired: &Desired, only: Option<Cloud>) -> Vec<Cloud> {
    desired
        .clouds
        .keys()
        .copied()
        .filter(|cloud| only.is_none_or(|only| only == *cloud))
        .collect()
}

/// Discovers the fleet's objects in the clouds in scope. Providers retry each list page under
/// the retry policy they were built with; a failure here has used that budget already.
///
/// # Errors
/// [`OpError::Discover`] when a list call fails after retries; [`OpError::NoProvider`].
pub async fn discover(
    desired: &Desired,
    providers: &Providers,
    clouds: &[Cloud],
) -> Result<Live, OpError> {
    let mut live = Live::default();
    for &cloud in clouds {
        let provider = providers.get(cloud).ok_or(OpError::NoProvider { cloud })?;
        let Discovery {
            mut objects,
            unreachable_zones,
        } = provider
            .discover_reachable(&desired.fleet)
            .await
            .map_err(|source| OpError::Discover { cloud, source })?;
        // Only fleet's own objects: autoscaled build machines carry `fleet=` too (Prometheus
        // finds them by it) but no `fleet-kind`; they come and go without making plans stale.
        objects.retain(|object| object.label(crate::provider::labels::KIND).is_some());
        if !unreachable_zones.is_empty() {
            live.unreachable
                .entry(cloud)
                .or_default()
                .extend(unreachable_zones);
        }
        // Secret values delivered to machines never travel further than this.
        objects.iter_mut().for_each(crate::secrets::mask_live);
        let mut names: Vec<String> = desired
            .resources
            .values()
            .filter(|resource| resource.cloud == cloud)
            .map(|resource| resource.cloud_name.clone())
            .collect();
        let known: BTreeSet<&str> = objects.iter().map(|o| o.name.as_str()).collect();
        names.retain(|name| !known.contains(name.as_str()));
        names.sort();
        let holders = if names.is_empty() {
            Vec::new()
        } else {
            provider
                .find_by_names(&names)
                .await
                .map_err(|source| OpError::Discover { cloud, source })?
        };
        live.objects.extend(objects);
        live.holders.extend(holders);
    }
    Ok(live)
}

/// The addresses a `--target` list covers: the matches and, transitively, what they depend on.
///
/// # Errors
/// [`OpError::TargetMatchesNothing`] for a pattern that matches neither a desired nor a live
/// address.
pub fn target_scope(
    desired: &Desired,
    live: &[LiveResource],
    patterns: &[String],
) -> Result<Option<BTreeSet<Address>>, OpError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let live_addresses: BTreeSet<Address> = live.iter().filter_map(diff::live_address).collect();
    let mut scope = BTreeSet::new();
    for pattern in patterns {
        let matched: Vec<Address> = desired
            .resources
            .keys()
            .chain(live_addresses.iter())
            .filter(|address| address.matches(pattern))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err(OpError::TargetMatchesNothing {
                pattern: pattern.clone(),
            });
        }
        scope.extend(matched);
    }
    let mut queue: Vec<Address> = scope.iter().cloned().collect();
    while let Some(address) = queue.pop() {
        if let Some(resource) = desired.resources.get(&address) {
            for dependency in &resource.depends_on {
                if scope.insert(dependency.clone()) {
                    queue.push(dependency.clone());
                }
            }
        }
    }
    Ok(Some(scope))
}

/// `fleet plan`: discovers and diffs.
///
/// # Errors
/// Discovery failures and bad targets.
pub async fn plan(
    desired: &Desired,
    providers: &Providers,
    options: &PlanOptions,
) -> Result<(Plan, Live), OpError> {
    let clouds = scope_clouds(desired, options.only_cloud);
    let live = discover(desired, providers, &clouds).await?;
    let plan = plan_from_live(desired, providers, options, &clouds, &live)?;
    Ok((plan, live))
}

fn plan_from_live(
    desired: &Desired,
    providers: &Providers,
    options: &PlanOptions,
    clouds: &[Cloud],
    live: &Live,
) -> Result<Plan, OpError> {
    let mut scoped = desired.clone();
    scoped
        .resources
        .retain(|_, resource| clouds.contains(&resource.cloud));
    // `--target` may name what is left out below: the plan then says why it is not planned.
    let scope = target_scope(&scoped, &live.objects, &options.targets)?;
    // Machines in a zone that did not answer are left alone: what is there is unknown, so
    // creating could duplicate and nothing there can be deleted.
    let mut unreachable: BTreeMap<(Cloud, String), Vec<Address>> = BTreeMap::new();
    for (cloud, zones) in &live.unreachable {
        for zone in zones {
            unreachable.insert((*cloud, zone.clone()), Vec::new());
        }
    }
    scoped.resources.retain(|address, resource| {
        let key = (resource.cloud, resource.spec.zone.clone());
        match unreachable.get_mut(&key) {
            Some(addresses) if resource.object == ObjectKind::Instance => {
                addresses.push(address.clone());
                false
            }
            _ => true,
        }
    });
    // What such a machine left elsewhere (it moved zones) is not an orphan either.
    // (Copied only then: at 10,000 machines the live objects are hundreds of megabytes.)
    let not_planned: BTreeSet<&Address> = unreachable.values().flatten().collect();
    let seen: Vec<LiveResource>;
    let objects: &[LiveResource] = if not_planned.is_empty() {
        &live.objects
    } else {
        seen = live
            .objects
            .iter()
            .filter(|object| diff::live_address(object).is_none_or(|a| !not_planned.contains(&a)))
            .cloned()
            .collect();
        &seen
    };
    let mut diff = diff::diff(
        &scoped,
        objects,
        &live.holders,
        scope.as_ref(),
        &options.secret_values,
    );
    // Templates are global, and the machines of a zone that does not answer may use any of
    // them: while it does not, no template of that cloud is retired. A new version is made,
    // the old one stays (a later plan removes it as a duplicate or an orphan).
    for change in &mut diff.changes {
        let Some(zones) = live.unreachable.get(&change.cloud) else {
            continue;
        };
        let object = match (&change.after, &change.before) {
            (Some(after), _) => after.object,
            (None, Some(before)) => before.kind,
            (None, None) => continue,
        };
        if object != ObjectKind::InstanceTemplate {
            continue;
        }
        let kept = diff::Reason::OldVersionKept {
            zones: zones.iter().cloned().collect(),
        };
        match change.action {
            Action::ReplaceCreateBeforeDestroy => {
                change.action = Action::Create;
                change.before = None;
                change.reasons.push(kept);
            }
            Action::Delete => {
                change.action = Action::NoOp;
                change.reasons.push(kept);
            }
            _ => {}
        }
    }
    let described: BTreeMap<Cloud, String> = clouds
        .iter()
        .filter_map(|cloud| providers.get(*cloud).map(|p| (*cloud, p.describe())))
        .collect();
    let mut plan = Plan::new(
        desired,
        clouds.to_vec(),
        described,
        options.targets.clone(),
        live.fingerprint(),
        diff,
    );
    if !unreachable.is_empty() {
        plan.unreachable = unreachable
            .into_iter()
            .map(|((cloud, zone), addresses)| plan::UnreachableZone {
                cloud,
                zone,
                not_planned: addresses,
            })
            .collect();
        // The id covers the whole plan (hashing it is not free at 10,000 resources).
        plan.plan_id = plan.content_hash();
    }
    Ok(plan)
}

/// The outcome of `fleet apply`.
#[derive(Debug)]
pub struct ApplyOutcome {
    /// The id of the plan that was applied: the given one, or the one made again under the lock.
    pub plan_id: String,
    /// What the executor did.
    pub report: ApplyReport,
    /// The plan made after apply, against the cloud as it is now (no changes and every zone
    /// seen means converged), or why it could not be made.
    pub verification: Result<Plan, OpError>,
    /// If a killed apply had left the lock, who that was.
    pub took_over_from: Option<LockInfo>,
}

impl ApplyOutcome {
    /// Whether the fleet was seen, after apply, to match the plan everywhere.
    pub fn converged(&self) -> bool {
        self.verification
            .as_ref()
            .is_ok_and(|after| !after.summary.has_changes() && after.unreachable.is_empty())
    }
}

/// Writes apply events to the journal, each line with the id of the plan being applied and
/// the time. After a write that failed every later write fails too, so the journal never
/// holds a line after a torn or missing one.
struct JournalRecorder {
    journal: Box<dyn crate::state::Journal>,
    plan_id: String,
    lines: AtomicU64,
    abort_after: Option<u64>,
    failed: std::sync::Mutex<Option<String>>,
}

impl apply::Recorder for JournalRecorder {
    fn record(&self, event: &apply::ApplyEvent) -> Result<(), StateError> {
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(earlier) = failed.as_ref() {
            return Err(StateError::JournalBroken {
                earlier: earlier.clone(),
            });
        }
        let mut entry = serde_json::to_value(event).unwrap_or_default();
        if let Some(map) = entry.as_object_mut() {
            map.insert("plan_id".into(), self.plan_id.clone().into());
            map.insert("time".into(), crate::state::utc_now().into());
        }
        if let Err(error) = self.journal.append(&entry) {
            *failed = Some(apply::with_causes(&error));
            return Err(error);
        }
        let written = self.lines.fetch_add(1, Ordering::SeqCst) + 1;
        if self.abort_after == Some(written) {
            // The crash tests' kill point: die here, as a killed process would, with nothing
            // cleaned up (the lock's holder file stays, the OS frees the lock).
            std::process::abort();
        }
        Ok(())
    }
}

/// `fleet apply`: locks, checks the plan is current, executes, re-discovers to verify.
///
/// Every plan is checked against the cloud first (its live fingerprint), the one without
/// changes included: a stale plan is refused (or, where allowed, made again under the lock).
/// Every event is written to the fleet's journal before it is shown; a step starts only once
/// its start is written.
///
/// # Errors
/// Lock held, stale plan, blocked resources, discovery failures, a journal that cannot be
/// opened: all before any change. Step failures, a journal that cannot be written and a failed
/// verification are not errors here: they are in the outcome.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    plan: &Plan,
    desired: &Desired,
    providers: &Providers,
    store: &dyn StateStore,
    me: &LockInfo,
    options: &ApplyOptions,
    observer: Arc<dyn Observer>,
) -> Result<ApplyOutcome, OpError> {
    if !plan.blocked.is_empty() {
        return Err(blocked(plan));
    }
    let missing: Vec<String> = secret_references(plan)
        .into_iter()
        .filter(|name| !options.secret_values.contains_key(name))
        .collect();
    if !missing.is_empty() {
        return Err(OpError::Secrets(crate::secrets::MissingSecrets {
            looked_for: "give each as FLEET_SECRET_<NAME> or in --secrets-file".to_string(),
            names: missing,
        }));
    }
    let lock = store.lock(&plan.fleet, me)?;
    let took_over_from = lock.took_over_from().cloned();
    let live = discover(desired, providers, &plan.scope_clouds).await?;
    let plan_options = PlanOptions {
        targets: plan.targets.clone(),
        only_cloud: (plan.scope_clouds.len() == 1 && desired.clouds.len() > 1)
            .then(|| plan.scope_clouds[0]),
        retry: options.retry,
        secret_values: options.secret_values.clone(),
    };
    let replanned;
    let (plan, replan) = if live.fingerprint() == plan.live_fingerprint {
        (plan, None)
    } else if options.replan_when_changed {
        // E.g. machines a killed apply had asked for came up meanwhile: plan what is
        // needed now, under the lock, so nothing is made twice.
        replanned = plan_from_live(desired, providers, &plan_options, &plan.scope_clouds, &live)?;
        if !replanned.blocked.is_empty() {
            return Err(blocked(&replanned));
        }
        let event = apply::ApplyEvent::Replanned {
            plan_id: replanned.plan_id.clone(),
            replaces: plan.plan_id.clone(),
            summary: crate::plan::display::summary_line(&replanned),
            changes: replanned
                .actionable()
                .map(|change| format!("{} {}", change.action.symbol(), change.address))
                .collect(),
        };
        (&replanned, Some(event))
    } else {
        return Err(OpError::StalePlan {
            fleet: plan.fleet.clone(),
        });
    };
    // Nothing to do, and the cloud is as the plan saw it: that is the verification.
    if plan.actionable().next().is_none() {
        drop(lock);
        return Ok(ApplyOutcome {
            plan_id: plan.plan_id.clone(),
            report: ApplyReport::default(),
            verification: Ok(plan.clone()),
            took_over_from,
        });
    }
    let recorder = Arc::new(JournalRecorder {
        journal: store.journal(&plan.fleet)?,
        plan_id: plan.plan_id.clone(),
        lines: AtomicU64::new(0),
        abort_after: options.abort_after_journal_lines,
        failed: std::sync::Mutex::new(None),
    });
    if let Some(event) = &replan {
        // Shown even if it cannot be written; the executor then starts nothing.
        let _ = apply::Recorder::record(&*recorder, event);
        observer.event(event, 0, 0);
    }
    let steps = graph::build(plan);
    let report =
        apply::execute_recorded(plan, &steps, providers, options, observer, recorder).await;
    let verification = match discover(desired, providers, &plan.scope_clouds).await {
        Ok(after) => plan_from_live(
            desired,
            providers,
            &plan_options,
            &plan.scope_clouds,
            &after,
        ),
        Err(error) => Err(error),
    };
    drop(lock);
    Ok(ApplyOutcome {
        plan_id: plan.plan_id.clone(),
        report,
        verification,
        took_over_from,
    })
}

/// The refusal of a plan with blocked resources.
fn blocked(plan: &Plan) -> OpError {
    OpError::Blocked {
        count: plan.blocked.len(),
        addresses: plan
            .blocked
            .iter()
            .map(|b| b.address.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Every secret the creations and updates of a plan reference.
pub fn secret_references(plan: &Plan) -> BTreeSet<String> {
    crate::secrets::references(
        plan.actionable()
            .filter_map(|change| change.after.as_ref())
            .flat_map(|after| after.spec.metadata.values()),
    )
}

/// Rebuilds the desired set a saved plan was made from (for verification after apply).
pub fn desired_of(plan: &Plan) -> Desired {
    let resources = plan
        .resource_changes
        .iter()
        .filter_map(|change| change.after.clone())
        .map(|resource| (resource.address.clone(), resource))
        .collect();
    Desired {
        fleet: plan.fleet.clone(),
        source: plan.source.clone(),
        clouds: plan.clouds.clone(),
        resources,
        hosts: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::ResourceKind;
    use crate::state::{Journal, LockGuard};
    use crate::test_support::{desired, desired_set, live, FakeProvider};
    use std::sync::Mutex;

    /// A state store in memory: a lock that is always free and a journal of JSON lines.
    #[derive(Default)]
    struct MemoryStore {
        lines: Arc<Mutex<Vec<serde_json::Value>>>,
    }

    struct Held;

    impl LockGuard for Held {
        fn took_over_from(&self) -> Option<&LockInfo> {
            None
        }
    }

    struct MemoryJournal(Arc<Mutex<Vec<serde_json::Value>>>);

    impl Journal for MemoryJournal {
        fn append(&self, entry: &serde_json::Value) -> Result<(), StateError> {
            self.0.lock().unwrap().push(entry.clone());
            Ok(())
        }
    }

    impl StateStore for MemoryStore {
        fn lock(&self, _: &str, _: &LockInfo) -> Result<Box<dyn LockGuard>, StateError> {
            Ok(Box::new(Held))
        }

        fn journal(&self, _: &str) -> Result<Box<dyn Journal>, StateError> {
            Ok(Box::new(MemoryJournal(self.lines.clone())))
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Plans `desired` against the fake, then lets `between` change the cloud, then applies.
    fn plan_then_apply(
        desired: &Desired,
        fake: Arc<FakeProvider>,
        options: ApplyOptions,
        between: impl FnOnce(&FakeProvider),
    ) -> (Plan, Result<ApplyOutcome, OpError>, Vec<serde_json::Value>) {
        let mut providers = Providers::new();
        providers.insert(fake.clone());
        let store = MemoryStore::default();
        let runtime = runtime();
        let (plan, _) = runtime
            .block_on(plan(desired, &providers, &PlanOptions::default()))
            .unwrap();
        between(&fake);
        let outcome = runtime.block_on(apply(
            &plan,
            desired,
            &providers,
            &store,
            &LockInfo::current("unit"),
            &options,
            Arc::new(apply::Quiet),
        ));
        let lines = store.lines.lock().unwrap().clone();
        (plan, outcome, lines)
    }

    #[test]
    fn the_journal_of_a_replanned_apply_carries_the_new_plan_id() {
        let want = desired_set(vec![desired(ResourceKind::Manager, "a")]);
        let options = ApplyOptions {
            replan_when_changed: true,
            ..ApplyOptions::default()
        };
        let stray = desired(ResourceKind::Manager, "stray");
        let (old, outcome, lines) =
            plan_then_apply(&want, Arc::new(FakeProvider::default()), options, |fake| {
                fake.objects.lock().unwrap().push(live(&stray, "s1"));
            });
        let outcome = outcome.unwrap();
        assert_ne!(
            outcome.plan_id, old.plan_id,
            "the cloud changed: a new plan"
        );
        assert!(outcome.converged());
        assert_eq!(lines[0]["event"], "replanned");
        assert_eq!(lines[0]["replaces"], old.plan_id.as_str());
        assert!(lines.len() > 1);
        for line in &lines {
            assert_eq!(line["plan_id"], outcome.plan_id.as_str(), "{line}");
        }
    }

    #[test]
    fn a_stale_plan_is_refused_before_anything_is_written() {
        let want = desired_set(vec![desired(ResourceKind::Manager, "a")]);
        let stray = desired(ResourceKind::Manager, "stray");
        let fake = Arc::new(FakeProvider::default());
        let (_, outcome, lines) =
            plan_then_apply(&want, fake.clone(), ApplyOptions::default(), |fake| {
                fake.objects.lock().unwrap().push(live(&stray, "s1"));
            });
        assert!(matches!(outcome, Err(OpError::StalePlan { .. })));
        assert!(lines.is_empty());
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn a_fleet_not_seen_after_apply_is_not_converged() {
        let want = desired_set(vec![desired(ResourceKind::Manager, "a")]);
        let fake = Arc::new(FakeProvider {
            hide_created: true,
            ..FakeProvider::default()
        });
        let (_, outcome, _) = plan_then_apply(&want, fake, ApplyOptions::default(), |_| {});
        let outcome = outcome.unwrap();
        assert!(outcome.report.is_success());
        assert!(outcome.verification.as_ref().unwrap().summary.has_changes());
        assert!(!outcome.converged());
    }

    #[test]
    fn a_verification_that_cannot_run_is_reported_not_dropped() {
        let want = desired_set(vec![desired(ResourceKind::Manager, "a")]);
        let fake = Arc::new(FakeProvider {
            discovery_fails_after_create: true,
            ..FakeProvider::default()
        });
        let (_, outcome, _) = plan_then_apply(&want, fake, ApplyOptions::default(), |_| {});
        let outcome = outcome.unwrap();
        assert!(outcome.report.is_success());
        assert!(matches!(
            outcome.verification,
            Err(OpError::Discover { .. })
        ));
        assert!(!outcome.converged());
    }
}
