//! The JSON plan for tools: the shape of `terraform show -json`, so that what reads a
//! Terraform plan (OPA/conftest policies, `jq '.resource_changes[].change.actions'`) reads
//! fleet's.
//!
//! In: a [`Plan`]. Out: a JSON document with `format_version` [`JSON_FORMAT_VERSION`],
//! `fleet_version`, `planned_values`, and `resource_changes[]` each with `address`, `mode`,
//! `type`, `name`, `provider_name` and a `change` (`actions`, `before`, `after`,
//! `after_unknown`, `before_sensitive`, `after_sensitive`), `before` and `after` in one shape
//! ([`Values`]). Fleet's own data keeps names Terraform does not use: per change `kind`,
//! `cloud`, `reasons`, `impact`, `files`, `gone`; at the top `fleet`, `plan_id`, `summary`,
//! `pools`, `blocked`, `unreachable`, …. Secrets are masked in `before` and `after`, and the
//! attributes that held them are flagged in `*_sensitive`.
//!
//! It is not the saved plan: a saved plan ([`Plan::to_json`]) carries `saved_plan`, this does
//! not, and `fleet apply` refuses it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::pools::{self, PoolChanges};
use super::{Plan, Summary, UnreachableZone};
use crate::desired::CloudTarget;
use crate::diff::{Action, Blocked, Change, FileDiff, Impact, Reason};
use crate::provider::{Cloud, InstanceStatus, MachineSpec, ObjectKind};
use crate::render;

/// The `format_version` of the JSON plan: Terraform's plan format it follows.
pub const JSON_FORMAT_VERSION: &str = "1.2";

/// The fleet release that wrote a JSON plan (`fleet_version`, as Terraform writes
/// `terraform_version`).
pub const FLEET_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a masked secret reads as.
const MASK: &str = "(sensitive)";

#[derive(Serialize)]
struct Document<'a> {
    format_version: &'static str,
    fleet_version: &'static str,
    /// Terraform's: whether apply would run (nothing blocked).
    applyable: bool,
    /// Terraform's: whether the plan covers everything (every zone answered).
    complete: bool,
    errored: bool,
    planned_values: PlannedValues<'a>,
    resource_changes: Vec<ResourceChange<'a>>,
    fleet: &'a str,
    source: &'a str,
    clouds: &'a BTreeMap<Cloud, CloudTarget>,
    scope_clouds: &'a [Cloud],
    providers: &'a BTreeMap<Cloud, String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    targets: &'a [String],
    live_fingerprint: &'a str,
    plan_id: &'a str,
    summary: &'a Summary,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pools: Vec<PoolChanges>,
    #[serde(skip_serializing_if = "<[Blocked]>::is_empty")]
    blocked: &'a [Blocked],
    #[serde(skip_serializing_if = "<[UnreachableZone]>::is_empty")]
    unreachable: &'a [UnreachableZone],
}

#[derive(Serialize)]
struct PlannedValues<'a> {
    root_module: RootModule<'a>,
}

#[derive(Serialize)]
struct RootModule<'a> {
    resources: Vec<PlannedResource<'a>>,
}

#[derive(Serialize)]
struct PlannedResource<'a> {
    address: &'a str,
    mode: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    provider_name: &'static str,
    schema_version: u32,
    values: Values<'a>,
    sensitive_values: Value,
}

#[derive(Serialize)]
struct ResourceChange<'a> {
    address: &'a str,
    mode: &'static str,
    #[serde(rename = "type")]
    kind_type: &'static str,
    name: &'a str,
    provider_name: &'static str,
    change: ChangeBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action_reason: Option<&'static str>,
    kind: &'static str,
    cloud: Cloud,
    reasons: &'a [Reason],
    #[serde(skip_serializing_if = "<[FileDiff]>::is_empty")]
    files: &'a [FileDiff],
    #[serde(skip_serializing_if = "Option::is_none")]
    impact: Option<&'a Impact>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    gone: &'a [String],
}

#[derive(Serialize)]
struct ChangeBody<'a> {
    actions: Action,
    before: Option<Values<'a>>,
    after: Option<Values<'a>>,
    after_unknown: Value,
    before_sensitive: Value,
    after_sensitive: Value,
}

/// A resource as `before` and `after` show it, one shape for both: what the cloud reports
/// and what the fleet file wants.
#[derive(Serialize)]
struct Values<'a> {
    cloud: Cloud,
    object: ObjectKind,
    name: &'a str,
    /// The cloud's id; unknown (left out, `after_unknown.id`) for what is yet to be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    status: InstanceStatus,
    #[serde(flatten)]
    spec: MachineSpec,
}

/// `spec` with secrets masked, and which metadata items held one, as Terraform's
/// `*_sensitive` objects: `{"metadata": {"fleet-secrets": true}}`, `{}` when none did.
fn masked(spec: &MachineSpec) -> (MachineSpec, Value) {
    let mut flagged = serde_json::Map::new();
    let mut copy = spec.clone();
    for (key, value) in copy.metadata.iter_mut() {
        let shown = if key == render::SECRETS {
            MASK.to_string()
        } else {
            render::mask_secrets(value)
        };
        if &shown != value {
            flagged.insert(key.clone(), Value::Bool(true));
            *value = shown;
        }
    }
    let sensitive = if flagged.is_empty() {
        json!({})
    } else {
        json!({ "metadata": flagged })
    };
    (copy, sensitive)
}

fn provider_name(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Gcp => "fleet/gcp",
        Cloud::Aws => "fleet/aws",
    }
}

/// The values of the desired object, and its `*_sensitive` flags.
fn after_values(change: &Change) -> Option<(Values<'_>, Value)> {
    let after = change.after.as_ref()?;
    // An object changed in place keeps its id; a new one gets its id from the cloud.
    let id = match change.action {
        Action::Update | Action::NoOp => change.before.as_ref().map(|b| b.id.as_str()),
        _ => None,
    };
    let (spec, sensitive) = masked(&after.spec);
    let status = match after.object {
        ObjectKind::Instance => InstanceStatus::Running,
        ObjectKind::InstanceTemplate => InstanceStatus::Available,
    };
    Some((
        Values {
            cloud: after.cloud,
            object: after.object,
            name: &after.cloud_name,
            id,
            status,
            spec,
        },
        sensitive,
    ))
}

fn before_values(change: &Change) -> Option<(Values<'_>, Value)> {
    match &change.before {
        Some(before) => {
            let (spec, sensitive) = masked(&before.spec);
            Some((
                Values {
                    cloud: before.cloud,
                    object: before.kind,
                    name: &before.name,
                    id: Some(&before.id),
                    status: before.status,
                    spec,
                },
                sensitive,
            ))
        }
        // An unchanged object is kept once, as the desired one (`diff` drops its live copy to
        // save memory): before and after are the same.
        None if change.action == Action::NoOp => after_values(change),
        None => None,
    }
}

/// Terraform's `action_reason`, where one of its reasons says why.
fn action_reason(change: &Change) -> Option<&'static str> {
    match change.action {
        Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate => {
            Some("replace_because_cannot_update")
        }
        Action::Delete if change.reasons.contains(&Reason::Orphan) => {
            Some("delete_because_no_resource_config")
        }
        _ => None,
    }
}

fn resource_change(change: &Change) -> ResourceChange<'_> {
    let before = before_values(change);
    let after = after_values(change);
    let made = matches!(
        change.action,
        Action::Create | Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate
    );
    let after_unknown = match (&after, made) {
        (None, _) => Value::Bool(false),
        (Some(_), true) => json!({ "id": true }),
        (Some(_), false) => json!({}),
    };
    let (before, before_sensitive) = match before {
        Some((values, sensitive)) => (Some(values), sensitive),
        None => (None, Value::Bool(false)),
    };
    let (after, after_sensitive) = match after {
        Some((values, sensitive)) => (Some(values), sensitive),
        None => (None, Value::Bool(false)),
    };
    let kind = change.kind.as_str();
    ResourceChange {
        address: change.address.as_str(),
        mode: "managed",
        kind_type: kind,
        name: change.address.name(),
        provider_name: provider_name(change.cloud),
        change: ChangeBody {
            actions: change.action,
            before,
            after,
            after_unknown,
            before_sensitive,
            after_sensitive,
        },
        action_reason: action_reason(change),
        kind,
        cloud: change.cloud,
        reasons: &change.reasons,
        files: &change.files,
        impact: change.impact.as_ref(),
        gone: &change.gone,
    }
}

/// The JSON plan, as `fleet plan --format json` prints it.
pub fn json(plan: &Plan) -> String {
    let planned = plan
        .resource_changes
        .iter()
        .filter(|change| change.action != Action::Delete)
        .filter_map(|change| {
            let (values, sensitive_values) = after_values(change)?;
            Some(PlannedResource {
                address: change.address.as_str(),
                mode: "managed",
                kind: change.kind.as_str(),
                name: change.address.name(),
                provider_name: provider_name(change.cloud),
                schema_version: 0,
                values,
                sensitive_values,
            })
        })
        .collect();
    let document = Document {
        format_version: JSON_FORMAT_VERSION,
        fleet_version: FLEET_VERSION,
        applyable: plan.blocked.is_empty(),
        complete: plan.unreachable.is_empty(),
        errored: false,
        planned_values: PlannedValues {
            root_module: RootModule { resources: planned },
        },
        resource_changes: plan.resource_changes.iter().map(resource_change).collect(),
        fleet: &plan.fleet,
        source: &plan.source,
        clouds: &plan.clouds,
        scope_clouds: &plan.scope_clouds,
        providers: &plan.providers,
        targets: &plan.targets,
        live_fingerprint: &plan.live_fingerprint,
        plan_id: &plan.plan_id,
        summary: &plan.summary,
        pools: pools::pools(&plan.resource_changes),
        blocked: &plan.blocked,
        unreachable: &plan.unreachable,
    };
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}
