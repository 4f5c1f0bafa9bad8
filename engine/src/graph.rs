//! The dependency graph of apply steps.
//!
//! In: a [`Plan`]. Out: an [`ApplyGraph`] of [`Step`]s (create, update, delete) with edges
//! "must finish before": dependencies are created first (templates before the managers whose
//! runners use them, managers before the helpers that scrape them); create-before-destroy
//! replacements remove the old object only after its dependents were repointed; deletions run
//! in reverse order (helpers, then managers and pools, then templates).

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
    /// A no-op that orders deletions of one rank before the next.
    Barrier,
}

impl StepKind {
    /// A verb for progress lines.
    pub fn verb(self) -> &'static str {
        match self {
            StepKind::Create => "create",
            StepKind::Update => "update",
            StepKind::Delete => "delete",
            StepKind::Barrier => "wait",
        }
    }
}

/// One step: an action on the object of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index into [`Plan::resource_changes`]; unused for barriers.
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
    /// Steps that do something (barriers left out).
    pub fn step_count(&self) -> usize {
        self.graph
            .node_weights()
            .filter(|step| step.kind != StepKind::Barrier)
            .count()
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
    let manager_arrivals: Vec<NodeIndex> = arrival
        .iter()
        .filter(|(address, _)| address.kind() == ResourceKind::Manager)
        .map(|(_, node)| *node)
        .collect();
    for &(delete, index, after_dependents) in &deletes {
        if !after_dependents {
            continue;
        }
        let change = &plan.resource_changes[index];
        for &node in dependents.get(&change.address).into_iter().flatten() {
            graph.add_edge(node, delete, ());
        }
        if change.kind == ResourceKind::Template && change.after.is_none() {
            for &node in &manager_arrivals {
                graph.add_edge(node, delete, ());
            }
        }
    }
    // Deletions in reverse creation order: helpers, then managers and pools, then templates.
    let mut by_rank: BTreeMap<u8, Vec<NodeIndex>> = BTreeMap::new();
    for &(delete, index, after_dependents) in &deletes {
        if after_dependents && plan.resource_changes[index].action == Action::Delete {
            by_rank
                .entry(plan.resource_changes[index].kind.rank())
                .or_default()
                .push(delete);
        }
    }
    let ranks: Vec<u8> = by_rank.keys().rev().copied().collect();
    for pair in ranks.windows(2) {
        let barrier = graph.add_node(Step {
            change: usize::MAX,
            kind: StepKind::Barrier,
            address: Address::new(ResourceKind::Helper, "deletions"),
        });
        for &node in &by_rank[&pair[0]] {
            graph.add_edge(node, barrier, ());
        }
        for &node in &by_rank[&pair[1]] {
            graph.add_edge(barrier, node, ());
        }
    }
    ApplyGraph { graph }
}
