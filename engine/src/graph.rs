//! The dependency graph of apply steps.
//!
//! In: a [`Plan`]. Out: an [`ApplyGraph`] of [`Step`]s (create, update, delete) with edges
//! "must finish before": dependencies are created first (templates before the managers whose
//! runners use them, managers before the helpers that scrape them); create-before-destroy
//! replacements remove the old object only after its dependents were repointed. Deletions wait
//! only for what must happen before them, never for unrelated deletions: a template goes after
//! the managers that may use it were repointed or removed, and a runner manager leaves only
//! after the new manager serving its runners (the next colour) was created.

use std::collections::BTreeMap;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::desired::Address;
use crate::diff::Action;
use crate::plan::Plan;
use crate::spec::model::ResourceKind;

/// What one step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepKind {
    /// Create the desired object.
    Create,
    /// Update the live object in place.
    Update,
    /// Delete the live object.
    Delete,
}

impl StepKind {
    /// A verb for progress lines.
    pub fn verb(self) -> &'static str {
        match self {
            StepKind::Create => "create",
            StepKind::Update => "update",
            StepKind::Delete => "delete",
        }
    }
}

/// One step: an action on the object of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index into [`Plan::resource_changes`].
    pub change: usize,
    /// What to do.
    pub kind: StepKind,
    /// The address, for messages.
    pub address: Address,
}

/// Steps and their order.
#[derive(Debug, Clone, Default)]
pub struct ApplyGraph {
    /// Edge `a → b`: `a` must succeed before `b` starts.
    pub graph: DiGraph<Step, ()>,
}

impl ApplyGraph {
    /// The number of steps.
    pub fn step_count(&self) -> usize {
        self.graph.node_count()
    }
}

/// Builds the step graph of a plan.
pub fn build(plan: &Plan) -> ApplyGraph {
    let mut graph = DiGraph::new();
    let mut arrival: BTreeMap<&Address, NodeIndex> = BTreeMap::new();
    let mut deletes: Vec<(NodeIndex, usize, bool)> = Vec::new();
    for (index, change) in plan.resource_changes.iter().enumerate() {
        let step = |kind| Step {
            change: index,
            kind,
            address: change.address.clone(),
        };
        match change.action {
            Action::NoOp => {}
            Action::Create => {
                arrival.insert(&change.address, graph.add_node(step(StepKind::Create)));
            }
            Action::Update => {
                arrival.insert(&change.address, graph.add_node(step(StepKind::Update)));
            }
            Action::ReplaceCreateBeforeDestroy => {
                let create = graph.add_node(step(StepKind::Create));
                let delete = graph.add_node(step(StepKind::Delete));
                graph.add_edge(create, delete, ());
                arrival.insert(&change.address, create);
                deletes.push((delete, index, true));
            }
            Action::ReplaceDestroyBeforeCreate => {
                let delete = graph.add_node(step(StepKind::Delete));
                let create = graph.add_node(step(StepKind::Create));
                graph.add_edge(delete, create, ());
                arrival.insert(&change.address, create);
                deletes.push((delete, index, false));
            }
            Action::Delete => {
                let delete = graph.add_node(step(StepKind::Delete));
                deletes.push((delete, index, true));
            }
        }
    }
    // Dependencies arrive first.
    let mut dependents: BTreeMap<&Address, Vec<NodeIndex>> = BTreeMap::new();
    for change in &plan.resource_changes {
        let Some(after) = &change.after else { continue };
        let Some(&node) = arrival.get(&change.address) else {
            continue;
        };
        for dependency in &after.depends_on {
            if let Some(&first) = arrival.get(dependency) {
                graph.add_edge(first, node, ());
            }
            dependents.entry(dependency).or_default().push(node);
        }
    }
    // An old object goes only after what depended on it was repointed (not for ∓, whose
    // deletion must come first).
    for &(delete, index, after_dependents) in &deletes {
        if !after_dependents {
            continue;
        }
        let change = &plan.resource_changes[index];
        for &node in dependents.get(&change.address).into_iter().flatten() {
            graph.add_edge(node, delete, ());
        }
    }
    // A template goes after every manager that may still use it moved off it: managers
    // updated or replaced away from it, and managers deleted while pointing at it.
    for &(delete, index, after_dependents) in &deletes {
        let template = &plan.resource_changes[index];
        let Some(old) = template.before.as_ref() else {
            continue;
        };
        if !after_dependents || template.kind != ResourceKind::Template {
            continue;
        }
        for (other_index, other) in plan.resource_changes.iter().enumerate() {
            if other.kind != ResourceKind::Manager || !may_use(other.before.as_ref(), &old.name) {
                continue;
            }
            // The manager's step that moves it off the template: its arrival, or its deletion
            // when it is only deleted.
            let arrival_node = arrival.get(&other.address).copied();
            let leaving = deletes
                .iter()
                .find(|(_, i, after)| *i == other_index && *after)
                .map(|(node, _, _)| *node);
            for node in [arrival_node, leaving].into_iter().flatten() {
                if node != delete {
                    graph.add_edge(node, delete, ());
                }
            }
        }
    }
    // Blue/green: a runner manager that leaves is drained only once the new manager taking
    // over its runners exists.
    for &(delete, index, _) in &deletes {
        let old = &plan.resource_changes[index];
        if old.kind != ResourceKind::Manager || old.action != Action::Delete {
            continue;
        }
        let Some(before) = old.before.as_ref() else {
            continue;
        };
        let served = runner_names(&before.spec.metadata);
        for change in &plan.resource_changes {
            if change.kind != ResourceKind::Manager || change.action != Action::Create {
                continue;
            }
            let Some(after) = &change.after else { continue };
            let Some(&create) = arrival.get(&change.address) else {
                continue;
            };
            // Where the cloud does not show what the old manager served (EC2 user data), any
            // new manager may be its successor.
            let takes_over = served.is_none()
                || served.as_ref().is_some_and(|served| {
                    runner_names(&after.spec.metadata)
                        .is_some_and(|new| new.iter().any(|name| served.contains(name)))
                });
            if takes_over {
                graph.add_edge(create, delete, ());
            }
        }
    }
    ApplyGraph { graph }
}

/// Whether a live manager may use the template named `name`: its delivered files name it, or
/// the cloud does not show its files (EC2 user data), so it might.
fn may_use(before: Option<&crate::provider::LiveResource>, name: &str) -> bool {
    let Some(before) = before else {
        return false;
    };
    before.spec.metadata.is_empty() || before.spec.metadata.values().any(|text| text.contains(name))
}

/// The `[[runners]]` names of a manager's config.toml, or `None` when the cloud does not show
/// it.
fn runner_names(metadata: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let config = metadata.get(crate::render::RUNNER_CONFIG)?;
    let table = toml::from_str::<toml::Table>(config).ok()?;
    Some(
        table
            .get("runners")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|runner| runner.get("name").and_then(toml::Value::as_str))
            .map(str::to_string)
            .collect(),
    )
}
