//! The plan as a merge-request comment, made for review.
//!
//! In: a [`Plan`] and [`MarkdownOptions`] (the character budget, where the whole plan is
//! kept). Out: GitLab-flavoured Markdown, at most `budget` characters: a title with the fleet
//! and its clouds; the one-line summary; a warning first whenever anything is destroyed or
//! replaced (naming it, and for runner managers the impact and its procedure); zones that did
//! not answer, drift and objects made outside fleet, blocked resources; then a table per
//! action, each pool one row ([`super::pools`]); then each resource's details and file diffs
//! in collapsible `<details>` with `diff` fences. The head (title to blocked) is never cut;
//! tables and details are cut at a whole row or block when the budget runs out, with a note
//! saying so and where the whole plan is.
//!
//! Every value may come from a fleet file in a merge request: it is escaped for where it lands
//! (text, a table cell, inline code, HTML, a fenced block), so it cannot add markup, links,
//! images or close a section of the comment.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::pools::{self, Group, PoolChanges};
use super::{display, Plan};
use crate::diff::{Action, Change, Reason};
use crate::provider::labels;
use crate::render;

/// GitLab refuses a note over 1,000,000 characters; the comment keeps a margin under it for
/// the marker and header a CI job puts around it.
pub const MARKDOWN_BUDGET: usize = 950_000;

/// How the comment is made.
#[derive(Debug, Clone, Copy)]
pub struct MarkdownOptions<'a> {
    /// The most characters (not bytes: GitLab counts characters) the comment may have.
    pub budget: usize,
    /// Where the whole plan is kept (the `-o` file, a CI artifact), named when details are cut.
    pub artifact: Option<&'a str>,
}

impl Default for MarkdownOptions<'_> {
    fn default() -> Self {
        MarkdownOptions {
            budget: MARKDOWN_BUDGET,
            artifact: None,
        }
    }
}

/// Characters held back for the truncation note, beyond the artifact's name.
const NOTE_RESERVE: usize = 600;

/// Markdown for a merge-request comment, within [`MARKDOWN_BUDGET`].
pub fn markdown(plan: &Plan) -> String {
    markdown_with(plan, MarkdownOptions::default())
}

/// Markdown for a merge-request comment, within `options.budget` characters.
pub fn markdown_with(plan: &Plan, options: MarkdownOptions<'_>) -> String {
    let pools = pools::pools(&plan.resource_changes);
    let by_pool: BTreeMap<&str, &PoolChanges> = pools
        .iter()
        .map(|pool| (pool.pool.as_str(), pool))
        .collect();
    let reserve = NOTE_RESERVE + options.artifact.map_or(0, |a| a.chars().count() * 2);
    let room = options.budget.saturating_sub(reserve);
    let mut out = head(plan, &by_pool);
    let mut used = out.chars().count();
    if used > room {
        // Only a plan destroying tens of thousands of machines gets here: its head is cut at a
        // line, so the comment is still posted, and the note says the list goes on.
        let mut kept = String::new();
        let mut count = 0;
        for line in out.lines() {
            let length = line.chars().count() + 1;
            if count + length > room {
                break;
            }
            kept.push_str(line);
            kept.push('\n');
            count += length;
        }
        out = kept;
        out.push_str(&note(0, 0, true, options.artifact));
        return out;
    }
    let pieces = body(plan, &by_pool);
    let mut shown_rows = 0;
    let mut shown_details = 0;
    let (rows, details) = pieces
        .iter()
        .fold((0, 0), |(r, d), piece| match piece.kind {
            Piece::Row => (r + 1, d),
            Piece::Details => (r, d + 1),
            Piece::Heading => (r, d),
        });
    let mut cut = false;
    for piece in &pieces {
        let length = piece.text.chars().count();
        if used + length > room {
            cut = true;
            break;
        }
        used += length;
        out.push_str(&piece.text);
        match piece.kind {
            Piece::Row => shown_rows += 1,
            Piece::Details => shown_details += 1,
            Piece::Heading => {}
        }
    }
    if cut {
        out.push_str(&note(
            rows - shown_rows,
            details - shown_details,
            false,
            options.artifact,
        ));
    }
    out
}

/// Why and where the comment stops.
fn note(rows: usize, details: usize, head: bool, artifact: Option<&str>) -> String {
    let what = if head {
        "the list of what this plan destroys, replaces or finds changed goes on".to_string()
    } else {
        format!("{rows} table row(s) and the details of {details} resource(s) are not shown")
    };
    let whole = match artifact {
        Some(artifact) => format!("the plan artifact {}", md_code(artifact)),
        None => "the plan artifact (save it with `fleet plan … -o plan.json`)".to_string(),
    };
    format!(
        "\n> **Cut short:** this comment stays under GitLab's limit of 1,000,000 characters a note, so {what}. The whole plan is in {whole}, and `fleet plan` on this fleet file prints it.\n"
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Piece {
    Heading,
    Row,
    Details,
}

struct Part {
    kind: Piece,
    text: String,
}

/// The title, the summary, the warnings and notes: never cut.
fn head(plan: &Plan, by_pool: &BTreeMap<&str, &PoolChanges>) -> String {
    let mut out = String::new();
    let clouds: Vec<&str> = plan.scope_clouds.iter().map(|c| c.as_str()).collect();
    let _ = writeln!(
        out,
        "### fleet plan: {} on {}\n",
        md_code(&plan.fleet),
        if clouds.is_empty() {
            "no cloud".to_string()
        } else {
            clouds.join(" and ")
        }
    );
    let _ = writeln!(out, "Fleet file {}.", md_code(&plan.source));
    for (cloud, provider) in &plan.providers {
        let _ = writeln!(out, "- {cloud}: {}", md_text(provider));
    }
    if !plan.targets.is_empty() {
        let targets: Vec<String> = plan.targets.iter().map(|t| md_code(t)).collect();
        let _ = writeln!(out, "- targets: {}", targets.join(", "));
    }
    let unchanged = plan.summary.no_op;
    let _ = writeln!(
        out,
        "\n**{}** {unchanged} unchanged.",
        md_text(&display::summary_line(plan))
    );
    destroyed_or_replaced(&mut out, plan, by_pool);
    for zone in &plan.unreachable {
        let _ = writeln!(
            out,
            "\n> **Warning:** {} zone {} did not answer: {}",
            zone.cloud,
            md_code(&zone.zone),
            md_text(&display::unreachable_note(zone))
        );
    }
    out_of_band(&mut out, plan);
    if !plan.blocked.is_empty() {
        let _ = writeln!(
            out,
            "\n> **Blocked:** fleet never deletes or overwrites a machine it did not make; `fleet apply` refuses to run until these are resolved.\n>"
        );
        for blocked in &plan.blocked {
            let _ = writeln!(
                out,
                "> - {}: held by {} ({}, {}). {}",
                md_code(blocked.address.as_str()),
                md_text(&blocked.holder.name),
                md_text(&blocked.holder.id),
                blocked.holder.status.as_str(),
                md_text(&blocked.help)
            );
        }
    }
    if plan.actionable().next().is_none() && plan.blocked.is_empty() {
        let what = if plan.unreachable.is_empty() {
            "The live fleet matches the fleet file"
        } else {
            "What could be reached matches the fleet file"
        };
        let _ = writeln!(out, "\nNo changes. {what}.");
    }
    out
}

/// How a destroyed or replaced resource goes.
fn going(action: Action) -> &'static str {
    match action {
        Action::ReplaceCreateBeforeDestroy => "replaced: the new one is made, then the old removed",
        Action::ReplaceDestroyBeforeCreate => "replaced: the old one is removed, then the new made",
        _ => "destroyed",
    }
}

/// The warning that opens the comment whenever anything is destroyed or replaced.
fn destroyed_or_replaced(out: &mut String, plan: &Plan, by_pool: &BTreeMap<&str, &PoolChanges>) {
    let going_away: Vec<&Change> = plan
        .actionable()
        .filter(|change| change.action == Action::Delete || change.action.is_replace())
        .collect();
    if going_away.is_empty() {
        return;
    }
    let (replaced, destroyed) = (plan.summary.replace, plan.summary.delete);
    let what = match (destroyed, replaced) {
        (0, replaced) => format!("replaces {replaced} resource(s)"),
        (destroyed, 0) => format!("destroys {destroyed} resource(s)"),
        (destroyed, replaced) => {
            format!("destroys {destroyed} and replaces {replaced} resource(s)")
        }
    };
    let _ = writeln!(out, "\n> **Warning: this plan {what}.**\n>");
    let mut pools_said: Vec<(&str, Group)> = Vec::new();
    for change in going_away {
        let group = Group::of(change.action).unwrap_or(Group::Delete);
        if let Some(pool) = pools::pool_of(change).and_then(|name| by_pool.get(name)) {
            if pools_said.contains(&(pool.pool.as_str(), group)) {
                continue;
            }
            pools_said.push((pool.pool.as_str(), group));
            let _ = writeln!(
                out,
                "> - {} pool {}: {}",
                md_code(change.action.symbol()),
                md_code(&pool.pool),
                md_text(&pool.group_line(group))
            );
            continue;
        }
        let _ = write!(
            out,
            "> - {} {} is {}",
            md_code(change.action.symbol()),
            md_code(change.address.as_str()),
            going(change.action)
        );
        let why: Vec<String> = shown_reasons(change)
            .map(|reason| md_text(&reason.message()))
            .collect();
        if !why.is_empty() {
            let _ = write!(out, " ({})", why.join("; "));
        }
        match &change.impact {
            Some(impact) => {
                let _ = writeln!(
                    out,
                    ". Impact: **{}**: {}",
                    impact.class.as_str(),
                    md_text(&impact.procedure)
                );
            }
            None => {
                let _ = writeln!(out, ".");
            }
        }
    }
}

/// Reasons that say the cloud was changed outside fleet.
fn is_out_of_band(reason: &Reason) -> bool {
    matches!(
        reason,
        Reason::Drift
            | Reason::NotWorking { .. }
            | Reason::Duplicate { .. }
            | Reason::MadeOutsideFleet { .. }
    )
}

/// Drift and out-of-band changes, called out as such; pool members by pool and reason.
fn out_of_band(out: &mut String, plan: &Plan) {
    let mut lines: Vec<String> = Vec::new();
    let mut by_pool: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
    for change in &plan.resource_changes {
        let found: Vec<String> = change
            .reasons
            .iter()
            .filter(|reason| is_out_of_band(reason))
            .map(Reason::message)
            .collect();
        if found.is_empty() {
            continue;
        }
        match pools::pool_of(change) {
            Some(pool) => by_pool
                .entry((pool, found.join("; ")))
                .or_default()
                .push(change.cloud_name().to_string()),
            None => lines.push(format!(
                "> - {}: {}",
                md_code(change.address.as_str()),
                md_text(&found.join("; "))
            )),
        }
    }
    for ((pool, what), names) in &by_pool {
        lines.push(format!(
            "> - pool {}, {} member(s), {}: {}",
            md_code(pool),
            names.len(),
            md_text(&pools::short_names(pool, names)),
            md_text(what)
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n> **Drift and out-of-band changes:** the cloud was changed outside fleet; this plan puts it back as the fleet file says.\n>"
    );
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

/// Reasons shown in words; file changes are shown as diffs, a missing object is the action.
fn shown_reasons(change: &Change) -> impl Iterator<Item = &Reason> {
    change.reasons.iter().filter(|reason| {
        !matches!(reason, Reason::Missing)
            && !matches!(reason, Reason::FieldChanged { field, .. } if field.starts_with("metadata.") && field != "metadata.gitlab-runner-version")
    })
}

fn section_title(group: Group) -> &'static str {
    match group {
        Group::Create => "Create",
        Group::Update => "Update in place",
        Group::Replace => "Replace",
        Group::Delete => "Destroy",
    }
}

/// The tables and the details, in pieces that are kept or cut whole.
fn body(plan: &Plan, by_pool: &BTreeMap<&str, &PoolChanges>) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut details = Vec::new();
    for group in Group::ALL {
        let changes: Vec<&Change> = plan
            .actionable()
            .filter(|change| Group::of(change.action) == Some(group))
            .collect();
        if changes.is_empty() {
            continue;
        }
        parts.push(Part {
            kind: Piece::Heading,
            text: format!(
                "\n#### {} ({})\n\n| | address | cloud | machine | zone | why |\n|---|---|---|---|---|---|\n",
                section_title(group),
                changes.len()
            ),
        });
        let mut pools_done: Vec<&str> = Vec::new();
        for change in changes {
            if let Some(pool) = pools::pool_of(change).and_then(|name| by_pool.get(name)) {
                if pools_done.contains(&pool.pool.as_str()) {
                    continue;
                }
                pools_done.push(pool.pool.as_str());
                let members: Vec<&Change> = plan
                    .actionable()
                    .filter(|c| {
                        Group::of(c.action) == Some(group)
                            && pools::pool_of(c) == Some(pool.pool.as_str())
                    })
                    .collect();
                parts.push(Part {
                    kind: Piece::Row,
                    text: pool_row(change, pool, group, &members),
                });
                details.push(Part {
                    kind: Piece::Details,
                    text: pool_details(pool, group, &members),
                });
                continue;
            }
            parts.push(Part {
                kind: Piece::Row,
                text: row(change),
            });
            if let Some(text) = change_details(change) {
                details.push(Part {
                    kind: Piece::Details,
                    text,
                });
            }
        }
    }
    if !details.is_empty() {
        parts.push(Part {
            kind: Piece::Heading,
            text: "\n#### Details\n".to_string(),
        });
        parts.extend(details);
    }
    parts
}

fn machine_and_zone(change: &Change) -> (&str, &str) {
    match (&change.after, &change.before) {
        (Some(after), _) => (after.spec.machine_type.as_str(), after.spec.zone.as_str()),
        (None, Some(before)) => (before.spec.machine_type.as_str(), before.spec.zone.as_str()),
        _ => ("", ""),
    }
}

fn row(change: &Change) -> String {
    let (machine, zone) = machine_and_zone(change);
    let why: Vec<String> = shown_reasons(change)
        .map(|reason| md_text(&reason.message()))
        .collect();
    let why = if why.is_empty() && change.action == Action::Create {
        "does not exist yet".to_string()
    } else if why.is_empty() && !change.files.is_empty() {
        let files: Vec<String> = change.files.iter().map(|f| md_text(&f.path)).collect();
        format!("changed: {}", files.join(", "))
    } else {
        why.join("; ")
    };
    format!(
        "| {} | {} | {} | {} | {} | {} |\n",
        md_code(change.action.symbol()),
        md_code(change.address.as_str()),
        change.cloud,
        md_text(machine),
        md_text(zone),
        why
    )
}

/// The reasons of several changes, each once, with how many members gave it.
fn tally(members: &[&Change]) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for change in members {
        for reason in shown_reasons(change) {
            *counts.entry(reason.message()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(message, count)| format!("{message} ({count})"))
        .collect()
}

fn pool_row(first: &Change, pool: &PoolChanges, group: Group, members: &[&Change]) -> String {
    let (machine, zone) = machine_and_zone(first);
    let mut why = md_text(&pool.group_line(group));
    for reason in tally(members) {
        let _ = write!(why, "; {}", md_text(&reason));
    }
    format!(
        "| {} | pool {} | {} | {} | {} | {} |\n",
        md_code(first.action.symbol()),
        md_code(&pool.pool),
        first.cloud,
        md_text(machine),
        md_text(zone),
        why
    )
}

/// A collapsible block: `summary` is HTML already escaped.
fn collapsible(summary: &str, body: &str) -> String {
    format!("\n<details><summary>{summary}</summary>\n\n{body}\n</details>\n")
}

/// Lines describing what a change makes or touches.
fn facts(change: &Change) -> Vec<String> {
    // Values from the cloud or the fleet file go through `md_text`: inline code cannot escape
    // HTML, so a value there could close the `<details>` around it.
    let mut facts = Vec::new();
    if let Some(before) = &change.before {
        facts.push(format!(
            "id {} ({}, {})",
            md_text(&before.id),
            before.cloud,
            before.status.as_str()
        ));
    }
    if let Some(after) = &change.after {
        let spec = &after.spec;
        if change
            .before
            .as_ref()
            .is_none_or(|b| b.name != after.cloud_name)
        {
            facts.push(format!("name {}", md_text(&after.cloud_name)));
        }
        facts.push(format!(
            "machine type {}, zone {}, image {}, disk {} {} GB",
            md_text(&spec.machine_type),
            md_text(&spec.zone),
            md_text(&spec.image),
            md_text(&spec.disk_type),
            spec.disk_size_gb
        ));
        let shown: Vec<String> = spec
            .labels
            .iter()
            .filter(|(key, _)| key.as_str() != labels::SPEC_HASH)
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if !shown.is_empty() {
            facts.push(format!("labels {}", md_text(&shown.join(", "))));
        }
        if let Some(version) = spec.metadata.get(render::RUNNER_VERSION) {
            facts.push(format!("gitlab-runner {}", md_text(version)));
        }
        // What the machine may do and where it is reachable: a reviewer must see the account
        // or role a new machine runs as, not only its size.
        let identity = &spec.identity;
        let mut runs_as = Vec::new();
        if let Some(profile) = &identity.instance_profile {
            runs_as.push(format!("instance profile {profile}"));
        }
        if let Some(account) = &identity.service_account {
            runs_as.push(format!("service account {account}"));
        }
        if !identity.scopes.is_empty() {
            let scopes: Vec<&str> = identity
                .scopes
                .iter()
                .map(|scope| {
                    scope
                        .strip_prefix("https://www.googleapis.com/auth/")
                        .unwrap_or(scope)
                })
                .collect();
            runs_as.push(format!("scopes {}", scopes.join(", ")));
        }
        if !runs_as.is_empty() {
            facts.push(format!("runs as {}", md_text(&runs_as.join(", "))));
        }
        let net = &spec.networking;
        if !net.is_unset() {
            let mut parts = Vec::new();
            if let Some(network) = &net.network {
                parts.push(format!("network {network}"));
            }
            if let Some(subnet) = &net.subnet {
                parts.push(format!("subnet {subnet}"));
            }
            if !net.security_groups.is_empty() {
                parts.push(format!(
                    "security groups {}",
                    net.security_groups.join(", ")
                ));
            }
            facts.push(md_text(&parts.join(", ")));
        }
        // Every delivered item by name: the files are shown below, anything else only here.
        let items: Vec<&str> = spec.metadata.keys().map(String::as_str).collect();
        if !items.is_empty() {
            facts.push(format!("delivers {}", md_text(&items.join(", "))));
        }
    }
    for reason in shown_reasons(change) {
        facts.push(md_text(&reason.message()));
    }
    facts
}

/// The files a new object is given, as diffs from nothing; secrets masked.
fn new_files(change: &Change) -> Vec<(String, String)> {
    let Some(after) = &change.after else {
        return Vec::new();
    };
    after
        .spec
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() != render::RUNNER_VERSION)
        .filter_map(|(key, text)| {
            let path = render::file_path(key)?;
            let text = render::mask_secrets_named(text);
            let mut diff = format!(
                "--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{} @@\n",
                text.lines().count()
            );
            for line in text.lines() {
                diff.push('+');
                diff.push_str(line);
                diff.push('\n');
            }
            Some((path.to_string(), diff))
        })
        .collect()
}

fn fenced(diff: &str) -> String {
    let fence = md_fence(diff);
    let newline = if diff.ends_with('\n') { "" } else { "\n" };
    format!("{fence}diff\n{diff}{newline}{fence}\n")
}

fn change_details(change: &Change) -> Option<String> {
    let mut body = String::new();
    for fact in facts(change) {
        let _ = writeln!(body, "- {fact}");
    }
    if let Some(impact) = &change.impact {
        let _ = writeln!(
            body,
            "\nImpact: **{}**: {}",
            impact.class.as_str(),
            md_text(&impact.procedure)
        );
    }
    let diffs: Vec<String> = if change.action == Action::Create {
        new_files(change)
            .into_iter()
            .map(|(_, diff)| diff)
            .collect()
    } else {
        change.files.iter().map(|file| file.diff.clone()).collect()
    };
    for diff in diffs {
        let _ = write!(body, "\n{}", fenced(&diff));
    }
    let impact = change
        .impact
        .as_ref()
        .map_or(String::new(), |i| format!(": {}", i.class.as_str()));
    Some(collapsible(
        &format!(
            "{} <code>{}</code>{impact}",
            html(change.action.symbol()),
            html(change.address.as_str())
        ),
        &body,
    ))
}

/// One block for the members of a pool one action touches: they differ only by name, so the
/// first stands for them, with every member's reasons counted.
fn pool_details(pool: &PoolChanges, group: Group, members: &[&Change]) -> String {
    let mut body = String::new();
    let _ = writeln!(body, "- {}", md_text(&pool.group_line(group)));
    if let Some(first) = members.first() {
        let _ = writeln!(
            body,
            "- members alike but for their names; {} stands for them:",
            md_text(first.cloud_name())
        );
        for fact in facts(first) {
            let _ = writeln!(body, "  - {fact}");
        }
        let diffs: Vec<String> = if first.action == Action::Create {
            new_files(first).into_iter().map(|(_, diff)| diff).collect()
        } else {
            first.files.iter().map(|file| file.diff.clone()).collect()
        };
        for diff in diffs {
            let _ = write!(body, "\n{}", fenced(&diff));
        }
    }
    for reason in tally(members) {
        let _ = writeln!(body, "- {}", md_text(&reason));
    }
    let symbol = members.first().map_or("", |c| c.action.symbol());
    collapsible(
        &format!(
            "{} pool <code>{}</code>: {} to {}",
            html(symbol),
            html(&pool.pool),
            pool.names(group).len(),
            group.verb()
        ),
        &body,
    )
}

/// Text as Markdown shows it literally, on one line: markup characters escaped, HTML
/// characters as entities, line breaks as spaces (a table cell or a list item stays whole).
pub(crate) fn md_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' | '~' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Inline code that no backtick in `text` can close; `|` escaped, as GitLab's tables need
/// even inside code.
pub fn md_code(text: &str) -> String {
    let text = text.replace(['\n', '\r'], " ").replace('|', "\\|");
    let ticks = "`".repeat(longest_run(&text, '`') + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{text}{pad}{ticks}")
}

/// A code fence longer than any run of backticks in `text`.
fn md_fence(text: &str) -> String {
    "`".repeat(longest_run(text, '`').max(2) + 1)
}

fn longest_run(text: &str, of: char) -> usize {
    let (mut longest, mut run) = (0, 0);
    for c in text.chars() {
        run = if c == of { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

/// Text inside HTML.
fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::ResourceKind;
    use crate::test_support::{desired, desired_set, live, plan_of};

    /// 400 new managers with a config.toml each, and one manager whose machine type changes.
    fn big_plan() -> Plan {
        let config: String = (0..40)
            .map(|n| format!("key{n} = \"value {n}\"\n"))
            .collect();
        let mut wanted: Vec<_> = (0..400)
            .map(|n| {
                let mut resource = desired(ResourceKind::Manager, &format!("m-{n}"));
                resource
                    .spec
                    .metadata
                    .insert(render::RUNNER_CONFIG.to_string(), config.clone());
                resource
            })
            .collect();
        let kept = desired(ResourceKind::Manager, "kept");
        let mut was = live(&kept, "zones/us-east1-c/instances/kept");
        was.spec.machine_type = "n1-standard-8".to_string();
        wanted.push(kept);
        plan_of(&desired_set(wanted), &[was])
    }

    #[test]
    fn details_are_cut_at_a_whole_block_within_the_budget_and_the_head_is_whole() {
        let plan = big_plan();
        let whole = markdown_with(
            &plan,
            MarkdownOptions {
                budget: usize::MAX,
                artifact: None,
            },
        );
        assert!(!whole.contains("Cut short"));
        let budget = 60_000;
        assert!(whole.chars().count() > budget * 2);
        let cut = markdown_with(
            &plan,
            MarkdownOptions {
                budget,
                artifact: Some("plan.json"),
            },
        );
        assert!(cut.chars().count() <= budget, "{}", cut.chars().count());
        let head = head(&plan, &BTreeMap::new());
        assert!(cut.starts_with(&head), "the head was cut");
        assert!(head.contains("> **Warning: this plan replaces 1 resource(s).**"));
        assert!(head.contains("`manager.kept` is replaced"));
        assert!(cut.contains("the plan artifact `plan.json`"));
        assert_eq!(
            cut.matches("<details>").count(),
            cut.matches("</details>").count()
        );
        // What is shown is the start of the whole comment, cut between two pieces.
        let shown = cut.split("\n> **Cut short:**").next().unwrap();
        assert!(whole.starts_with(shown));
    }

    #[test]
    fn a_head_longer_than_the_budget_is_cut_at_a_line_and_keeps_the_summary() {
        let wanted: Vec<_> = Vec::new();
        let gone: Vec<_> = (0..300)
            .map(|n| {
                let orphan = desired(ResourceKind::Manager, &format!("old-manager-{n}"));
                live(
                    &orphan,
                    &format!("zones/us-east1-c/instances/old-manager-{n}"),
                )
            })
            .collect();
        let plan = plan_of(&desired_set(wanted), &gone);
        assert_eq!(plan.summary.delete, 300);
        let budget = 5_000;
        let cut = markdown_with(
            &plan,
            MarkdownOptions {
                budget,
                artifact: None,
            },
        );
        assert!(cut.chars().count() <= budget, "{}", cut.chars().count());
        assert!(cut.contains("**Plan: 0 to create, 0 to update, 0 to replace, 300 to delete.**"));
        assert!(cut.contains("> **Warning: this plan destroys 300 resource(s).**"));
        assert!(cut.contains("`manager.old-manager-0` is destroyed"));
        assert!(
            cut.contains("the list of what this plan destroys, replaces or finds changed goes on")
        );
    }
}
