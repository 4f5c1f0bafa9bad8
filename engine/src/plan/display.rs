//! Renders a plan for people and machines: text (terminal), markdown (merge-request
//! comment, in [`super::markdown`]), JSON for tools (Terraform's shape, in
//! [`super::terraform`]) and DOT (`fleet graph`). The saved plan is [`Plan::to_json`].
//!
//! In: a [`Plan`]. Out: a string. Stable: the same plan renders to the same bytes.

use std::fmt::Write as _;

use super::Plan;
use crate::diff::{Action, Change, Reason};
use crate::provider::labels;
use crate::render;

/// Text output options.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOptions {
    /// ANSI colours.
    pub color: bool,
}

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn action(&self, action: Action, text: &str) -> String {
        let code = match action {
            Action::Create => "32",
            Action::Update => "33",
            Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate => "35",
            Action::Delete => "31",
            Action::NoOp => "0",
        };
        self.wrap(code, text)
    }

    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }

    fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }
}

fn heading(action: Action) -> &'static str {
    match action {
        Action::Create => "",
        Action::Update => "  (update in place)",
        Action::ReplaceCreateBeforeDestroy => {
            "  (replace: create the new one, then remove the old)"
        }
        Action::ReplaceDestroyBeforeCreate => {
            "  (replace: remove the old one, then create the new)"
        }
        Action::Delete => "",
        Action::NoOp => "",
    }
}

/// The one-line summary: `Plan: 1 to create, 0 to update, 0 to replace, 0 to delete.`
pub fn summary_line(plan: &Plan) -> String {
    let s = &plan.summary;
    let mut line = format!(
        "Plan: {} to create, {} to update, {} to replace, {} to delete.",
        s.create, s.update, s.replace, s.delete
    );
    if s.blocked > 0 {
        let _ = write!(line, " {} blocked.", s.blocked);
    }
    line
}

/// Objects with the fleet's labels that fleet did not make, which it leaves alone: said
/// wherever the plan is shown, though nothing is done to them.
fn made_outside(plan: &Plan) -> impl Iterator<Item = (&Change, String)> {
    plan.resource_changes.iter().flat_map(|change| {
        change
            .reasons
            .iter()
            .filter(|reason| matches!(reason, crate::diff::Reason::MadeOutsideFleet { .. }))
            .map(move |reason| (change, reason.message()))
    })
}

/// What an unreachable zone means for the plan, in one sentence.
pub(crate) fn unreachable_note(zone: &crate::plan::UnreachableZone) -> String {
    let listed: Vec<&str> = zone.not_planned.iter().map(|a| a.as_str()).collect();
    let which = if listed.is_empty() {
        "the fleet has nothing there".to_string()
    } else {
        format!(
            "{} resource(s) there are left out of this plan ({})",
            listed.len(),
            listed.join(", ")
        )
    };
    format!(
        "{which}; nothing there is created or deleted while fleet cannot see it. Plan again when the zone answers."
    )
}

/// Human text, as `fleet plan` prints it.
pub fn text(plan: &Plan, options: TextOptions) -> String {
    let paint = Paint { on: options.color };
    let mut out = String::new();
    let _ = writeln!(out, "Fleet {} ({})", paint.bold(&plan.fleet), plan.source);
    for (cloud, provider) in &plan.providers {
        let _ = writeln!(out, "  {cloud}: {provider}");
    }
    if !plan.targets.is_empty() {
        let _ = writeln!(out, "  targets: {}", plan.targets.join(", "));
    }
    for zone in &plan.unreachable {
        let _ = writeln!(
            out,
            "\n{} {} zone {} did not answer: {}",
            paint.wrap("33;1", "!"),
            zone.cloud,
            zone.zone,
            unreachable_note(zone)
        );
    }
    for (change, note) in made_outside(plan) {
        let _ = writeln!(
            out,
            "\n{} {}: {}",
            paint.wrap("33;1", "!"),
            change.address,
            note
        );
    }
    // Objects made outside fleet are shown above, not counted as the fleet's resources.
    let total = plan.resource_changes.len() + plan.blocked.len() - made_outside(plan).count();
    let actionable: Vec<&Change> = plan.actionable().collect();
    if actionable.is_empty() && plan.blocked.is_empty() {
        let what = if plan.unreachable.is_empty() {
            "The live fleet matches the fleet file"
        } else {
            "What could be reached matches the fleet file"
        };
        let _ = writeln!(out, "\nNo changes. {what} ({total} resources).");
        return out;
    }
    if !actionable.is_empty() {
        let _ = writeln!(out, "\nfleet will perform these actions:");
    }
    for change in actionable {
        let _ = writeln!(
            out,
            "\n  {} {}{}",
            paint.action(change.action, change.action.symbol()),
            paint.bold(change.address.as_str()),
            paint.dim(heading(change.action))
        );
        write_change(&mut out, change, &paint);
    }
    let changed_pools: Vec<_> = super::pools::pools(&plan.resource_changes)
        .into_iter()
        .filter(|pool| pool.has_changes())
        .collect();
    if !changed_pools.is_empty() {
        let _ = writeln!(out, "\nPools:");
        for pool in changed_pools {
            let _ = writeln!(out, "  {}", pool.line());
        }
    }
    if !plan.blocked.is_empty() {
        let _ = writeln!(
            out,
            "\nBlocked: fleet never deletes or overwrites a machine it did not make."
        );
        for blocked in &plan.blocked {
            let _ = writeln!(
                out,
                "\n  {} {}",
                paint.wrap("31;1", "!"),
                paint.bold(blocked.address.as_str())
            );
            let _ = writeln!(
                out,
                "      held by   {} ({}, {})",
                blocked.holder.name,
                blocked.holder.id,
                blocked.holder.status.as_str()
            );
            let _ = writeln!(out, "      to fix    {}", blocked.help);
        }
    }
    let _ = writeln!(out, "\n{}", paint.bold(&summary_line(plan)));
    out
}

fn write_change(out: &mut String, change: &Change, paint: &Paint) {
    let row = |out: &mut String, key: &str, value: &str| {
        let _ = writeln!(out, "      {key:<13} {value}");
    };
    match change.action {
        Action::Create => {
            if let Some(after) = &change.after {
                row(out, "name", &after.cloud_name);
                row(out, "cloud", after.cloud.as_str());
                row(out, "machine_type", &after.spec.machine_type);
                row(out, "zone", &after.spec.zone);
                row(out, "image", &after.spec.image);
                row(
                    out,
                    "disk",
                    &format!("{}, {} GB", after.spec.disk_type, after.spec.disk_size_gb),
                );
                let net = &after.spec.networking;
                if let Some(network) = &net.network {
                    row(out, "network", network);
                }
                if let Some(subnet) = &net.subnet {
                    row(out, "subnet", subnet);
                }
                if !net.security_groups.is_empty() {
                    row(out, "groups", &net.security_groups.join(", "));
                }
                let identity = &after.spec.identity;
                if let Some(profile) = &identity.instance_profile {
                    row(out, "profile", profile);
                }
                if let Some(account) = &identity.service_account {
                    row(out, "account", account);
                    row(out, "scopes", &identity.scopes.join(", "));
                }
                let shown: Vec<String> = after
                    .spec
                    .labels
                    .iter()
                    .filter(|(key, _)| key.as_str() != labels::SPEC_HASH)
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                row(out, "labels", &shown.join(", "));
                if !after.depends_on.is_empty() {
                    let deps: Vec<&str> = after.depends_on.iter().map(|a| a.as_str()).collect();
                    row(out, "after", &deps.join(", "));
                }
                if let Some(version) = after.spec.metadata.get(render::RUNNER_VERSION) {
                    row(out, "gitlab-runner", version);
                }
                let files: Vec<String> = after
                    .spec
                    .metadata
                    .iter()
                    .filter(|(key, _)| key.as_str() != render::RUNNER_VERSION)
                    .filter_map(|(key, text)| {
                        render::file_path(key)
                            .map(|path| format!("/{path} ({} lines)", text.lines().count()))
                    })
                    .collect();
                for (index, file) in files.iter().enumerate() {
                    row(out, if index == 0 { "files" } else { "" }, file);
                }
            }
        }
        _ => {
            if let Some(before) = &change.before {
                row(
                    out,
                    "id",
                    &format!(
                        "{} ({}, {})",
                        before.id,
                        before.cloud,
                        before.status.as_str()
                    ),
                );
            }
            if let (Some(after), Some(before)) = (&change.after, &change.before) {
                if after.cloud_name != before.name {
                    row(out, "new name", &after.cloud_name);
                }
            }
        }
    }
    for reason in &change.reasons {
        // File changes are shown as diffs below.
        let shown_as_diff = matches!(reason, Reason::FieldChanged { field, .. }
            if field.strip_prefix("metadata.").is_some_and(|key| render::file_path(key).is_some() && key != render::RUNNER_VERSION)
                && !change.files.is_empty());
        if matches!(reason, Reason::Missing) || shown_as_diff {
            continue;
        }
        let text = reason.message();
        let text = match reason {
            Reason::FieldChanged {
                forces_replacement: true,
                ..
            } => paint.action(Action::ReplaceCreateBeforeDestroy, &text),
            Reason::Drift
            | Reason::NotWorking { .. }
            | Reason::Orphan
            | Reason::Duplicate { .. } => paint.wrap("33", &text),
            _ => text,
        };
        let _ = writeln!(out, "      {}", text);
    }
    if let Some(impact) = &change.impact {
        let _ = writeln!(
            out,
            "      {} {}",
            paint.bold("impact:"),
            paint.bold(impact.class.as_str())
        );
        let _ = writeln!(out, "        {}", impact.procedure);
    }
    for file in &change.files {
        for line in file.diff.lines() {
            let colored = if line.starts_with('+') && !line.starts_with("+++") {
                paint.wrap("32", line)
            } else if line.starts_with('-') && !line.starts_with("---") {
                paint.wrap("31", line)
            } else {
                line.to_string()
            };
            let _ = writeln!(out, "        {colored}");
        }
    }
}

/// Markdown for a merge-request comment, within [`super::markdown::MARKDOWN_BUDGET`]
/// characters; see [`super::markdown`].
pub fn markdown(plan: &Plan) -> String {
    super::markdown::markdown(plan)
}

/// The JSON plan for tools, in the shape of `terraform show -json`; see [`super::terraform`].
/// Not the saved plan, which is [`Plan::to_json`].
pub fn json(plan: &Plan) -> String {
    super::terraform::json(plan)
}

/// The plan's resources and dependencies as a Graphviz DOT graph, each node marked with
/// its action.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", plan.fleet);
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  node [shape=box, fontname=\"monospace\"];");
    for change in &plan.resource_changes {
        let color = match change.action {
            Action::Create => "darkgreen",
            Action::Update => "darkgoldenrod",
            Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate => "purple",
            Action::Delete => "red",
            Action::NoOp => "gray40",
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{} {}\", color={color}];",
            change.address,
            change.action.symbol().trim(),
            change.address
        );
    }
    for change in &plan.resource_changes {
        if let Some(after) = &change.after {
            for dependency in &after.depends_on {
                let _ = writeln!(out, "  \"{dependency}\" -> \"{}\";", change.address);
            }
        }
    }
    let _ = writeln!(out, "}}");
    out
}
