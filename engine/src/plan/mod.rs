//! The plan: plain data, reproducible to the byte, and saved as JSON for `apply`.
//!
//! In: a [`Diff`](crate::diff::Diff) and the live objects it saw. Out: a [`Plan`] with a
//! fingerprint of that live state (so a stale saved plan is refused) and a plan id (so
//! idempotency tokens are stable across retries and resumes). Rendering lives in
//! [`display`] (text, DOT), [`markdown`] (the merge-request comment), [`terraform`] (the JSON
//! plan for tools) and [`gitlab`] (GitLab's Terraform report), over one grouping of pool
//! members, [`pools`]; nothing else prints a plan.

pub mod digest;
pub mod display;
pub mod gitlab;
pub mod markdown;
pub mod pools;
pub mod terraform;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::desired::{short_hash, Address, CloudTarget, Desired};
use crate::diff::{Action, Blocked, Change, Diff};
use crate::provider::{Cloud, LiveResource};

/// The JSON format version of saved plans. The JSON plan for tools has its own,
/// [`terraform::JSON_FORMAT_VERSION`]; what tells the two apart is [`Plan::saved_plan`].
pub const FORMAT_VERSION: &str = "1.1";

/// Counts of changes by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `+`
    pub create: usize,
    /// `~`
    pub update: usize,
    /// `±` and `∓`
    pub replace: usize,
    /// `-`
    pub delete: usize,
    /// unchanged
    pub no_op: usize,
    /// cannot be made (name held by another machine)
    pub blocked: usize,
}

impl Summary {
    /// Whether the plan would change anything.
    pub fn has_changes(&self) -> bool {
        self.create + self.update + self.replace + self.delete > 0
    }
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT_VERSION`].
    pub format_version: String,
    /// `true` in every plan fleet saves (`fleet plan -o`): what tells a saved plan from the
    /// JSON plan for tools, which carries a `format_version` too but is not applied. Left out
    /// of the plan id, so plans saved before it was written still apply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub saved_plan: bool,
    /// The fleet name.
    pub fleet: String,
    /// The fleet file.
    pub source: String,
    /// The SHA-256 of the fleet file's bytes ([`digest::fleet_file_digest`]), when the plan
    /// was made from a file: which revision of it was reviewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_file_sha256: Option<String>,
    /// Where each cloud is reached.
    pub clouds: BTreeMap<Cloud, CloudTarget>,
    /// The clouds this plan covers (all of `clouds`, or the one of `--only-cloud`).
    pub scope_clouds: Vec<Cloud>,
    /// What each cloud was reached through, e.g. `simulated GCP (sim dir: sim-state)`.
    pub providers: BTreeMap<Cloud, String>,
    /// `--target` patterns, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// A hash of the live state the plan was made against.
    pub live_fingerprint: String,
    /// A hash of everything above and below: the same inputs give the same id.
    pub plan_id: String,
    /// Counts.
    pub summary: Summary,
    /// Every resource, changed or not, sorted by address.
    pub resource_changes: Vec<Change>,
    /// Resources that cannot be made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<Blocked>,
    /// Zones discovery could not reach, and the resources there left out of the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<UnreachableZone>,
}

/// A zone the cloud reported as unreachable while planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableZone {
    /// The cloud.
    pub cloud: Cloud,
    /// The zone.
    pub zone: String,
    /// The fleet's resources there, neither created, changed nor deleted by this plan.
    pub not_planned: Vec<Address>,
}

impl Plan {
    /// Builds a plan from a diff.
    pub fn new(
        desired: &Desired,
        scope_clouds: Vec<Cloud>,
        providers: BTreeMap<Cloud, String>,
        targets: Vec<String>,
        live_fingerprint: String,
        diff: Diff,
    ) -> Plan {
        let mut summary = Summary {
            blocked: diff.blocked.len(),
            ..Summary::default()
        };
        for change in &diff.changes {
            match change.action {
                Action::NoOp => summary.no_op += 1,
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate => {
                    summary.replace += 1
                }
                Action::Delete => summary.delete += 1,
            }
        }
        let mut plan = Plan {
            format_version: FORMAT_VERSION.to_string(),
            saved_plan: true,
            fleet: desired.fleet.clone(),
            source: desired.source.clone(),
            fleet_file_sha256: None,
            clouds: desired.clouds.clone(),
            scope_clouds,
            providers,
            targets,
            live_fingerprint,
            plan_id: String::new(),
            summary,
            resource_changes: diff.changes,
            blocked: diff.blocked,
            unreachable: Vec::new(),
        };
        plan.plan_id = plan.content_hash();
        plan
    }

    /// The plan with the digest of the fleet file it was made from, and its id made anew
    /// (the id covers the digest, so a saved plan cannot claim another revision).
    pub fn with_fleet_file(mut self, bytes: &[u8]) -> Plan {
        self.fleet_file_sha256 = Some(digest::fleet_file_digest(bytes));
        self.plan_id = self.content_hash();
        self
    }

    /// The zones that did not answer, `gcp us-east1-d, …`; empty when all did.
    pub fn unreachable_zones(&self) -> String {
        self.unreachable
            .iter()
            .map(|zone| format!("{} {}", zone.cloud, zone.zone))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The hash of the plan's content, without its id.
    pub fn content_hash(&self) -> String {
        let mut copy = self.clone();
        copy.plan_id = String::new();
        copy.saved_plan = false;
        let bytes = serde_json::to_vec(&copy).unwrap_or_default();
        short_hash(&[&String::from_utf8_lossy(&bytes)])
    }

    /// The changes that do something.
    pub fn actionable(&self) -> impl Iterator<Item = &Change> {
        self.resource_changes
            .iter()
            .filter(|change| change.action != Action::NoOp)
    }

    /// The saved-plan JSON.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// A hash of live state: what discovery saw of this fleet, in a stable order.
pub fn fingerprint(live: &[LiveResource]) -> String {
    let mut sorted: Vec<&LiveResource> = live.iter().collect();
    sorted.sort_by(|a, b| (a.cloud, &a.id).cmp(&(b.cloud, &b.id)));
    let bytes = serde_json::to_vec(&sorted).unwrap_or_default();
    short_hash(&[&String::from_utf8_lossy(&bytes)])
}
