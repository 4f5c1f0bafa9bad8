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
    before.spec.metadata.is_empty()
        || before
            .spec
            .metadata
            .values()
            .any(|text| text.contains(name))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::MachineSpec;
    use crate::test_support::{desired, desired_set, live, plan_of};
    use petgraph::algo::{has_path_connecting, is_cyclic_directed};

    fn step(graph: &ApplyGraph, kind: StepKind, address: &str) -> NodeIndex {
        graph
            .graph
            .node_indices()
            .find(|node| {
                graph.graph[*node].kind == kind && graph.graph[*node].address.as_str() == address
            })
            .unwrap_or_else(|| panic!("no {} {address} in {:?}", kind.verb(), graph.graph))
    }

    fn path(graph: &ApplyGraph, from: NodeIndex, to: NodeIndex) -> bool {
        has_path_connecting(&graph.graph, from, to, None)
    }

    /// A config.toml with one runner named `runner` using the template named `template`.
    fn serve(spec: &mut MachineSpec, runner: &str, template: &str) {
        spec.metadata.insert(
            crate::render::RUNNER_CONFIG.to_string(),
            format!(
                "concurrent = 1\n\n[[runners]]\nname = \"{runner}\"\n[runners.autoscaler.plugin_config]\nname = \"{template}\"\n"
            ),
        );
    }

    #[test]
    fn deletions_wait_only_for_what_must_go_first() {
        let helper = desired(ResourceKind::Helper, "prometheus");
        let mut user = desired(ResourceKind::Manager, "user");
        serve(&mut user.spec, "r1", "old-template");
        let mut unrelated = desired(ResourceKind::Manager, "unrelated");
        serve(&mut unrelated.spec, "r2", "another-template");
        let template = desired(ResourceKind::Template, "old-template");
        let live_objects = [
            live(&helper, "h"),
            live(&user, "u"),
            live(&unrelated, "x"),
            live(&template, "t"),
        ];
        let plan = plan_of(&desired_set(Vec::new()), &live_objects);
        let graph = build(&plan);
        assert!(!is_cyclic_directed(&graph.graph));
        assert_eq!(graph.step_count(), 4, "no barrier or other extra node");
        let helper = step(&graph, StepKind::Delete, "helper.prometheus");
        let user = step(&graph, StepKind::Delete, "manager.user");
        let unrelated = step(&graph, StepKind::Delete, "manager.unrelated");
        let template = step(&graph, StepKind::Delete, "template.old-template");
        // The template goes after the manager that uses it.
        assert!(graph.graph.contains_edge(user, template));
        // Nothing else is ordered: a helper or an unrelated manager depends on nothing and
        // nothing depends on them.
        for node in [user, unrelated, template] {
            assert!(!path(&graph, helper, node) && !path(&graph, node, helper));
        }
        assert!(!path(&graph, unrelated, template));
        assert!(!path(&graph, unrelated, user) && !path(&graph, user, unrelated));
    }

    #[test]
    fn a_manager_whose_files_the_cloud_hides_may_use_any_template() {
        let user = desired(ResourceKind::Manager, "user");
        let template = desired(ResourceKind::Template, "old-template");
        // EC2 does not return user data: the live manager shows no files.
        let live_objects = [live(&user, "u"), live(&template, "t")];
        let plan = plan_of(&desired_set(Vec::new()), &live_objects);
        let graph = build(&plan);
        assert!(graph.graph.contains_edge(
            step(&graph, StepKind::Delete, "manager.user"),
            step(&graph, StepKind::Delete, "template.old-template")
        ));
    }

    #[test]
    fn replacements_create_before_they_delete_unless_the_name_must_be_freed() {
        // A zone change: the new VM can exist beside the old one (±).
        let moved_live = desired(ResourceKind::Manager, "moved");
        let mut moved = moved_live.clone();
        moved.spec.zone = "us-east1-d".to_string();
        // A machine type change of a GCE VM staying in its zone: the name is freed first (∓).
        let resized_live = desired(ResourceKind::Manager, "resized");
        let mut resized = resized_live.clone();
        resized.spec.machine_type = "n1-standard-8".to_string();
        let plan = plan_of(
            &desired_set(vec![moved, resized]),
            &[live(&moved_live, "m"), live(&resized_live, "r")],
        );
        let graph = build(&plan);
        assert!(!is_cyclic_directed(&graph.graph));
        assert!(graph.graph.contains_edge(
            step(&graph, StepKind::Create, "manager.moved"),
            step(&graph, StepKind::Delete, "manager.moved")
        ));
        assert!(graph.graph.contains_edge(
            step(&graph, StepKind::Delete, "manager.resized"),
            step(&graph, StepKind::Create, "manager.resized")
        ));
    }

    #[test]
    fn a_template_version_goes_after_its_users_moved_to_the_new_one() {
        let mut old_template = desired(ResourceKind::Template, "t");
        old_template.cloud_name = "t-old".to_string();
        let mut new_template = desired(ResourceKind::Template, "t");
        new_template.cloud_name = "t-new".to_string();
        let mut old_user = desired(ResourceKind::Manager, "m");
        serve(&mut old_user.spec, "r", "t-old");
        let mut user = desired(ResourceKind::Manager, "m");
        serve(&mut user.spec, "r", "t-new");
        user.depends_on = vec![new_template.address.clone()];
        let plan = plan_of(
            &desired_set(vec![new_template, user]),
            &[live(&old_template, "t1"), live(&old_user, "m1")],
        );
        let graph = build(&plan);
        assert!(!is_cyclic_directed(&graph.graph));
        let create = step(&graph, StepKind::Create, "template.t");
        let update = step(&graph, StepKind::Update, "manager.m");
        let delete = step(&graph, StepKind::Delete, "template.t");
        assert!(graph.graph.contains_edge(create, update));
        assert!(graph.graph.contains_edge(update, delete));
        assert!(!path(&graph, delete, create));
    }

    #[test]
    fn the_old_colour_is_drained_only_after_the_new_one_exists() {
        let mut blue = desired(ResourceKind::Manager, "runners-blue-1");
        serve(&mut blue.spec, "shared-runner", "t");
        let mut green = desired(ResourceKind::Manager, "runners-green-1");
        serve(&mut green.spec, "shared-runner", "t");
        let mut other = desired(ResourceKind::Manager, "other-1");
        serve(&mut other.spec, "other-runner", "t");
        let plan = plan_of(&desired_set(vec![green, other]), &[live(&blue, "b")]);
        let graph = build(&plan);
        let drain = step(&graph, StepKind::Delete, "manager.runners-blue-1");
        assert!(graph.graph.contains_edge(
            step(&graph, StepKind::Create, "manager.runners-green-1"),
            drain
        ));
        // A new manager serving other runners is no successor.
        assert!(!path(
            &graph,
            step(&graph, StepKind::Create, "manager.other-1"),
            drain
        ));
    }
}
