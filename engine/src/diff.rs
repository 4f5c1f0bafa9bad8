//! Compares the desired set with the live set.
//!
//! In: the [`Desired`] set, the live objects discovered by label, and the objects that hold
//! desired names without being this fleet's. Out: one [`Change`] per address (and per extra
//! live object), each with its [`Action`] and its reasons, plus the [`Blocked`] resources
//! whose name a machine fleet did not make already holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::desired::{metadata_hash, spec_hash_with, Address, Desired, DesiredResource};
pub use crate::impact::{Impact, ImpactClass};
use crate::provider::{
    is_fleet_token, labels, Cloud, Identity, InstanceStatus, LiveResource, Networking, ObjectKind,
};
use crate::spec::model::ResourceKind;
use crate::{impact, render, secrets};

/// What apply does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Nothing: live matches desired.
    NoOp,
    /// Make it.
    Create,
    /// Change labels or metadata in place.
    Update,
    /// Make the new one, then remove the old (`±`).
    ReplaceCreateBeforeDestroy,
    /// Remove the old one, then make the new (`∓`), when the name cannot be held twice.
    ReplaceDestroyBeforeCreate,
    /// Remove it.
    Delete,
}

impl Action {
    /// The plan symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::ReplaceCreateBeforeDestroy => "±",
            Action::ReplaceDestroyBeforeCreate => "∓",
            Action::Delete => "-",
        }
    }

    /// Terraform's JSON vocabulary for the action.
    pub fn words(self) -> &'static [&'static str] {
        match self {
            Action::NoOp => &["no-op"],
            Action::Create => &["create"],
            Action::Update => &["update"],
            Action::ReplaceCreateBeforeDestroy => &["create", "delete"],
            Action::ReplaceDestroyBeforeCreate => &["delete", "create"],
            Action::Delete => &["delete"],
        }
    }

    /// Parses Terraform's vocabulary back.
    pub fn from_words(words: &[String]) -> Option<Action> {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        [
            Action::NoOp,
            Action::Create,
            Action::Update,
            Action::ReplaceCreateBeforeDestroy,
            Action::ReplaceDestroyBeforeCreate,
            Action::Delete,
        ]
        .into_iter()
        .find(|action| action.words() == words.as_slice())
    }

    /// Whether this is one of the two replacements.
    pub fn is_replace(self) -> bool {
        matches!(
            self,
            Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate
        )
    }

    /// A verb for progress lines.
    pub fn verb(self) -> &'static str {
        match self {
            Action::NoOp => "unchanged",
            Action::Create => "create",
            Action::Update => "update",
            Action::ReplaceCreateBeforeDestroy | Action::ReplaceDestroyBeforeCreate => "replace",
            Action::Delete => "delete",
        }
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.words().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Action, D::Error> {
        let words = Vec::<String>::deserialize(deserializer)?;
        Action::from_words(&words)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown actions {words:?}")))
    }
}

/// Why a resource changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reason {
    /// It does not exist yet.
    Missing,
    /// A field differs.
    FieldChanged {
        /// `machine_type`, `labels.role`, `metadata.fleet-runners`, …
        field: String,
        /// Live value.
        before: String,
        /// Desired value.
        after: String,
        /// Whether this field can only change by replacing the machine.
        forces_replacement: bool,
    },
    /// The object no longer matches what fleet last applied: someone changed it by hand.
    Drift,
    /// The machine is not running: it counts against caps and quotas but does no work.
    NotWorking {
        /// Its status.
        status: InstanceStatus,
    },
    /// Labelled as this fleet's, but no longer in the fleet file.
    Orphan,
    /// A second live object with the same address (e.g. left by a crash).
    Duplicate {
        /// The id of the one that is kept.
        of: String,
    },
    /// Templates are immutable: a change is a new version.
    NewVersion {
        /// The old cloud name.
        before: String,
        /// The new cloud name.
        after: String,
    },
    /// GCE names are unique per zone: the old machine must go before the new takes its name.
    NameHeld,
    /// A secret the machine uses has a new value (told by its digest, never shown).
    SecretChanged {
        /// The secret's name.
        name: String,
    },
    /// The old version is kept: machines in a zone that did not answer may still use it.
    OldVersionKept {
        /// The zones.
        zones: Vec<String>,
    },
    /// An object with this fleet's labels that fleet did not make (its creation token is not
    /// one of this fleet's): a copy made by hand or by another tool. Fleet leaves it alone.
    MadeOutsideFleet {
        /// Its cloud id.
        id: String,
    },
}

impl Reason {
    /// One line for text output.
    pub fn message(&self) -> String {
        match self {
            Reason::Missing => "does not exist yet".to_string(),
            Reason::FieldChanged {
                field,
                before,
                after,
                forces_replacement,
            } => {
                let tail = if *forces_replacement { " (forces replacement)" } else { "" };
                format!("{field}: {} → {}{tail}", show(before), show(after))
            }
            Reason::Drift => "drift: changed outside fleet since the last apply".to_string(),
            Reason::NotWorking { status } => format!(
                "found {}: it counts against the cap but does no work",
                status.as_str()
            ),
            Reason::Orphan => "orphan: labelled as this fleet's but no longer in the fleet file".to_string(),
            Reason::Duplicate { of } => format!("duplicate: a second machine with this address; {of} is kept"),
            Reason::NewVersion { before, after } => format!(
                "templates are immutable: {after} replaces {before}; users are repointed before {before} is removed"
            ),
            Reason::NameHeld => "GCE names are unique per zone: the old machine is removed before the new one takes its name".to_string(),
            Reason::OldVersionKept { zones } => format!("the old version stays: machines in {}, which did not answer, may still use it", zones.join(", ")),
            Reason::SecretChanged { name } => format!("secret {name} changed: (sensitive)"),
            Reason::MadeOutsideFleet { id } => format!(
                "{id} carries this fleet's labels but was made outside fleet: left alone (delete it, or remove its fleet labels)"
            ),
        }
    }
}

fn show(value: &str) -> String {
    if value.is_empty() {
        "(none)".to_string()
    } else if value.contains('\n') {
        format!("({} lines)", value.lines().count())
    } else {
        format!("\"{value}\"")
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The resource address.
    pub address: Address,
    /// Its section.
    pub kind: ResourceKind,
    /// Its cloud (the desired one when it moves).
    pub cloud: Cloud,
    /// What happens.
    #[serde(rename = "actions")]
    pub action: Action,
    /// Why.
    pub reasons: Vec<Reason>,
    /// The live object, for updates, replacements and deletions.
    pub before: Option<LiveResource>,
    /// The desired object, for creations, updates and replacements.
    pub after: Option<DesiredResource>,
    /// Unified diffs of the delivered files that change, secrets masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileDiff>,
    /// For machines that run gitlab-runner: what the change does to the runner process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<Impact>,
    /// Ids of objects at this address that are going away ([`InstanceStatus::Deleting`]).
    /// They enter the creation token, so a machine made again after a deletion is a new
    /// creation to the cloud rather than a repeat of the one that made the deleted machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
}

/// The diff of one delivered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDiff {
    /// Its path on the machine.
    pub path: String,
    /// A unified diff, secrets masked.
    pub diff: String,
}

impl Change {
    /// The cloud name shown for this change.
    pub fn cloud_name(&self) -> &str {
        match (&self.after, &self.before) {
            (Some(after), _) => &after.cloud_name,
            (None, Some(before)) => &before.name,
            (None, None) => self.address.name(),
        }
    }
}

/// A desired resource whose name a machine fleet did not make already holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The desired address.
    pub address: Address,
    /// The object in the way.
    pub holder: LiveResource,
    /// What to do about it.
    pub help: String,
}

/// The outcome of a diff.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    /// Changes, sorted by address; no-ops included.
    pub changes: Vec<Change>,
    /// Resources that cannot be made.
    pub blocked: Vec<Blocked>,
}

/// The address a live object was made for, from its labels: `fleet-kind` and
/// `fleet-resource`, or for a pool member (which has no `fleet-resource`) its name.
pub fn live_address(live: &LiveResource) -> Option<Address> {
    let kind = ResourceKind::parse(live.label(labels::KIND)?)?;
    let name = match live.label(labels::RESOURCE) {
        Some(name) => name,
        None if kind == ResourceKind::Pool && live.kind == ObjectKind::Instance => &live.name,
        None => return None,
    };
    Some(Address::new(kind, name))
}

/// Compares desired with live.
///
/// `live` is what discovery found with this fleet's label; `holders` is what holds a desired
/// name (any labels); `scope` limits the changes to some addresses (`--target`), `None` for all.
pub fn diff(
    desired: &Desired,
    live: &[LiveResource],
    holders: &[LiveResource],
    scope: Option<&BTreeSet<Address>>,
    secret_values: &BTreeMap<String, String>,
) -> Diff {
    let in_scope = |address: &Address| scope.is_none_or(|scope| scope.contains(address));
    let mut by_address: BTreeMap<Address, Vec<&LiveResource>> = BTreeMap::new();
    let mut gone: BTreeMap<Address, Vec<String>> = BTreeMap::new();
    let mut outside: Vec<(Address, &LiveResource)> = Vec::new();
    for object in live {
        if object.label(labels::FLEET) != Some(desired.fleet.as_str()) {
            continue;
        }
        let Some(address) = live_address(object) else {
            continue;
        };
        if object.status == InstanceStatus::Deleting {
            gone.entry(address).or_default().push(object.id.clone());
        } else if object
            .creation_token
            .as_deref()
            .is_some_and(|token| !is_fleet_token(&desired.fleet, token))
        {
            outside.push((address, object));
        } else {
            by_address.entry(address).or_default().push(object);
        }
    }
    gone.values_mut().for_each(|ids| ids.sort());
    let mut out = Diff::default();
    for (address, want) in &desired.resources {
        if !in_scope(address) {
            continue;
        }
        let mut found = by_address.remove(address).unwrap_or_default();
        // Prefer the object that is working and already has the desired name.
        found.sort_by_key(|object| {
            (
                !object.status.is_working(),
                object.name != want.cloud_name,
                object.id.clone(),
            )
        });
        let Some((primary, extra)) = found.split_first() else {
            if let Some(holder) = holder_of(desired, want, holders) {
                out.blocked.push(Blocked {
                    address: address.clone(),
                    help: blocked_help(desired, want, holder),
                    holder: holder.clone(),
                });
                continue;
            }
            out.changes.push(Change {
                address: address.clone(),
                kind: want.kind,
                cloud: want.cloud,
                action: Action::Create,
                reasons: vec![Reason::Missing],
                before: None,
                after: Some(impact::delivered(want, Action::Create, None, None)),
                files: Vec::new(),
                impact: None,
                gone: gone.get(address).cloned().unwrap_or_default(),
            });
            continue;
        };
        let mut change = compare(&desired.fleet, want, primary, secret_values);
        if change.action.is_replace() {
            change.gone = gone.get(address).cloned().unwrap_or_default();
        }
        out.changes.push(change);
        for duplicate in extra {
            let reason = if want.object == ObjectKind::InstanceTemplate {
                Reason::NewVersion {
                    before: duplicate.name.clone(),
                    after: want.cloud_name.clone(),
                }
            } else {
                Reason::Duplicate {
                    of: primary.id.clone(),
                }
            };
            out.changes
                .push(deletion(address.clone(), duplicate, reason));
        }
    }
    for (address, objects) in by_address {
        if !in_scope(&address) {
            continue;
        }
        for object in objects {
            out.changes
                .push(deletion(address.clone(), object, Reason::Orphan));
        }
    }
    // Fleet's labels on an object fleet did not make: shown, never kept, changed or deleted.
    for (address, object) in outside {
        if !in_scope(&address) {
            continue;
        }
        out.changes.push(Change {
            kind: address.kind(),
            address,
            cloud: object.cloud,
            action: Action::NoOp,
            reasons: vec![Reason::MadeOutsideFleet {
                id: object.id.clone(),
            }],
            before: Some(object.clone()),
            after: None,
            files: Vec::new(),
            impact: None,
            gone: Vec::new(),
        });
    }
    out.changes.sort_by(|a, b| {
        (&a.address, a.before.as_ref().map(|o| &o.id))
            .cmp(&(&b.address, b.before.as_ref().map(|o| &o.id)))
    });
    out.blocked.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

fn deletion(address: Address, object: &LiveResource, reason: Reason) -> Change {
    Change {
        kind: address.kind(),
        address,
        cloud: object.cloud,
        action: Action::Delete,
        reasons: vec![reason],
        before: Some(object.clone()),
        after: None,
        files: Vec::new(),
        impact: None,
        gone: Vec::new(),
    }
}

fn holder_of<'a>(
    desired: &Desired,
    want: &DesiredResource,
    holders: &'a [LiveResource],
) -> Option<&'a LiveResource> {
    holders.iter().find(|object| {
        object.cloud == want.cloud
            && object.kind == want.object
            && object.name == want.cloud_name
            && object.label(labels::FLEET) != Some(desired.fleet.as_str())
    })
}

fn blocked_help(desired: &Desired, want: &DesiredResource, holder: &LiveResource) -> String {
    match holder.label(labels::FLEET) {
        Some(other) => format!(
            "{} `{}` ({}) belongs to fleet `{other}`; fleet `{}` will not take it over. Rename this resource, or remove it from fleet `{other}` first",
            kind_word(holder.kind),
            holder.name,
            holder.id,
            desired.fleet
        ),
        None => {
            // Pool members are known by name and pool; everything else by `fleet-resource`.
            let (key, value) = match want.spec.labels.get(labels::POOL) {
                Some(pool) => (labels::POOL, pool.as_str()),
                None => (labels::RESOURCE, want.address.name()),
            };
            format!(
                "{} `{}` ({}) exists and was not made by fleet, so fleet will neither delete nor overwrite it. Rename `{}` in the fleet file, delete or rename the machine by hand, or adopt it by labelling it `{}={}`, `{}={}`, `{key}={value}`",
                kind_word(holder.kind),
                holder.name,
                holder.id,
                want.address,
                labels::FLEET,
                desired.fleet,
                labels::KIND,
                want.kind.as_str(),
            )
        }
    }
}

fn kind_word(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Instance => "an instance named",
        ObjectKind::InstanceTemplate => "a template named",
    }
}

/// Compares one desired resource with its live object.
fn compare(
    fleet: &str,
    want: &DesiredResource,
    live: &LiveResource,
    secret_values: &BTreeMap<String, String>,
) -> Change {
    let mut reasons = Vec::new();
    let have = &live.spec;
    let spec = &want.spec;
    let mut replace = false;
    if want.object == ObjectKind::Instance && !live.status.is_working() {
        reasons.push(Reason::NotWorking {
            status: live.status,
        });
        replace = true;
    }
    let fields: [(&str, String, String); 5] = [
        (
            "machine_type",
            have.machine_type.clone(),
            spec.machine_type.clone(),
        ),
        ("zone", have.zone.clone(), spec.zone.clone()),
        ("image", have.image.clone(), spec.image.clone()),
        ("disk_type", have.disk_type.clone(), spec.disk_type.clone()),
        (
            "disk_size_gb",
            have.disk_size_gb.to_string(),
            spec.disk_size_gb.to_string(),
        ),
    ];
    if live.cloud != want.cloud {
        reasons.push(Reason::FieldChanged {
            field: "cloud".to_string(),
            before: live.cloud.to_string(),
            after: want.cloud.to_string(),
            forces_replacement: true,
        });
        replace = true;
    }
    for (field, before, after) in fields {
        if before != after {
            reasons.push(Reason::FieldChanged {
                field: field.to_string(),
                before,
                after,
                forces_replacement: true,
            });
            replace = true;
        }
    }
    // Networking the fleet file leaves to the cloud's defaults is not compared.
    let want_net = &spec.networking;
    let have_net = seen_networking(&have.networking, want_net);
    // Identity likewise: a different role or account is a new machine (EC2 cannot swap an
    // instance profile into a launch it made, and a GCE VM must be stopped to change its
    // account).
    let want_id = &spec.identity;
    let have_id = seen_identity(&have.identity, want_id);
    for (field, before, after) in [
        ("network", &have_net.network, &want_net.network),
        ("subnet", &have_net.subnet, &want_net.subnet),
        (
            "instance_profile",
            &have_id.instance_profile,
            &want_id.instance_profile,
        ),
        (
            "service_account",
            &have_id.service_account,
            &want_id.service_account,
        ),
    ] {
        if after.is_some() && before != after {
            reasons.push(Reason::FieldChanged {
                field: field.to_string(),
                before: before.clone().unwrap_or_default(),
                after: after.clone().unwrap_or_default(),
                forces_replacement: true,
            });
            replace = true;
        }
    }
    for (field, before, after) in [
        (
            "security_groups",
            &have_net.security_groups,
            &want_net.security_groups,
        ),
        ("scopes", &have_id.scopes, &want_id.scopes),
    ] {
        if before != after {
            reasons.push(Reason::FieldChanged {
                field: field.to_string(),
                before: before.join(","),
                after: after.join(","),
                forces_replacement: true,
            });
            replace = true;
        }
    }
    // Fleet launches every EC2 machine with the hardened metadata options; options found
    // weaker were changed by hand, and a machine whose containers may borrow its role is
    // made again rather than trusted. Launch-template versions cannot be changed, and one
    // replaced under the same versioned name would be found again rather than made anew, so
    // only instances are held to the floor.
    let unhardened = match (want.cloud, want.object, have.identity.metadata_options) {
        (Cloud::Aws, ObjectKind::Instance, Some(options)) => options.unhardened_fields(),
        _ => Vec::new(),
    };
    for (field, before, after) in &unhardened {
        reasons.push(Reason::FieldChanged {
            field: (*field).to_string(),
            before: before.clone(),
            after: after.clone(),
            forces_replacement: true,
        });
        replace = true;
    }
    // A GCE machine made by a release that delivered secret values in its metadata runs a
    // watcher that reads them there, and a running GCE machine never runs a new bootstrap: left
    // in place, the next config it carries out would lose its tokens. Its delivery names
    // digests but no Secret Manager secret; it is made again, once.
    if want.cloud == Cloud::Gcp && want.object == ObjectKind::Instance {
        let delivered = have
            .metadata
            .get(render::SECRETS)
            .and_then(|text| serde_json::from_str::<secrets::Delivery>(text).ok());
        if let Some(delivered) = delivered {
            if !delivered.digests.is_empty() && delivered.names.is_empty() {
                reasons.push(Reason::FieldChanged {
                    field: format!("metadata.{}", render::SECRETS),
                    before: "secret values in metadata (an earlier fleet release)".to_string(),
                    after: "Secret Manager references".to_string(),
                    forces_replacement: true,
                });
                replace = true;
            }
        }
    }
    // An EC2 machine made by a release whose watcher listed its parameters by path: its role's
    // policy now allows only reads by name of parameters tagged with its own ARN, which its
    // watcher does not make and its parameters do not carry. Its parameters have no index;
    // it is made again, once.
    if want.cloud == Cloud::Aws
        && want.object == ObjectKind::Instance
        && have
            .metadata
            .contains_key(render::delivery::BOOTSTRAP_DIGEST_KEY)
        && !have
            .metadata
            .contains_key(render::delivery::PARAMETER_INDEX_KEY)
    {
        reasons.push(Reason::FieldChanged {
            field: format!("parameters.{}", render::delivery::PARAMETER_INDEX),
            before: "parameters listed by path (an earlier fleet release)".to_string(),
            after: "read by name, each tagged for its own instance".to_string(),
            forces_replacement: true,
        });
        replace = true;
    }
    let mut in_place = Vec::new();
    let keys: BTreeSet<&String> = have.labels.keys().chain(spec.labels.keys()).collect();
    for key in keys {
        if key == labels::SPEC_HASH {
            continue;
        }
        let before = have.labels.get(key).cloned().unwrap_or_default();
        let after = spec.labels.get(key).cloned().unwrap_or_default();
        if before != after {
            in_place.push(Reason::FieldChanged {
                field: format!("labels.{key}"),
                before,
                after,
                forces_replacement: false,
            });
        }
    }
    // Metadata content is compared where the cloud returns it (GCE); elsewhere (EC2 user
    // data) the `fleet-config` digest label above stands for it.
    // An EC2 instance's files come back from its parameters, but its bootstrap rides in user
    // data, which EC2 does not return: the `fleet-config` digest tells whether it changed.
    let ec2_instance = want.cloud == Cloud::Aws && want.object == ObjectKind::Instance;
    let bootstrap_hidden = ec2_instance && !have.metadata.contains_key(render::USER_DATA);
    let metadata_observed =
        ec2_instance || !have.metadata.is_empty() || !have.labels.contains_key(labels::CONFIG_HASH);
    let keys: BTreeSet<&String> = if metadata_observed {
        have.metadata
            .keys()
            .chain(spec.metadata.keys())
            // Secret values and the delivered decision ride beside the files: never compared.
            .filter(|key| key.as_str() != render::SECRETS && key.as_str() != impact::ACTION)
            .filter(|key| !(bootstrap_hidden && key.as_str() == render::USER_DATA))
            .filter(|key| !render::delivery::is_discovery_only(key))
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut files = Vec::new();
    let mut metadata_changed =
        have.labels.get(labels::CONFIG_HASH) != spec.labels.get(labels::CONFIG_HASH);
    for key in keys {
        let before = have.metadata.get(key).cloned().unwrap_or_default();
        let after = spec.metadata.get(key).cloned().unwrap_or_default();
        if before != after {
            metadata_changed = true;
            let (before, after) = match render::file_path(key) {
                // Whole files are shown as a diff; the reason names them by size and digest.
                Some(path) if key != render::RUNNER_VERSION => {
                    files.push(file_diff(path, &before, &after));
                    (file_summary(&before), file_summary(&after))
                }
                _ => (before, after),
            };
            in_place.push(Reason::FieldChanged {
                field: format!("metadata.{key}"),
                before,
                after,
                forces_replacement: false,
            });
        }
    }
    // A rotated secret: its digest on the machine differs from the value given now. Where the
    // cloud does not return what it delivered (EC2 user data) there is no digest to compare,
    // and a missing one is not a rotation.
    let have_digests = secrets::live_digests(live);
    let secret_names = match metadata_observed {
        true => secrets::references(spec.metadata.values()),
        false => BTreeSet::new(),
    };
    for name in secret_names {
        if let Some(value) = secret_values.get(&name) {
            if have_digests.get(&name) != Some(&secrets::digest(fleet, &name, value)) {
                in_place.push(Reason::SecretChanged { name });
            }
        }
    }
    // EC2 user data cannot change while an instance runs: a new bootstrap means a new
    // machine; its files and secrets are parameters its watcher applies in place. Where the
    // bootstrap is not returned, the digest parameter beside the files says which it was
    // sent; without one (no parameters at all), the files read back with the bootstrap wanted
    // must match the instance's `fleet-config`, else it is made again.
    let wanted_bootstrap = spec.metadata.get(render::USER_DATA);
    let mut seen = have.metadata.clone();
    let seen_digest = seen.remove(render::delivery::BOOTSTRAP_DIGEST_KEY);
    seen.remove(render::delivery::PARAMETER_INDEX_KEY);
    if let Some(bootstrap) = wanted_bootstrap {
        seen.insert(render::USER_DATA.to_string(), bootstrap.clone());
    }
    let seen_matches = have.labels.get(labels::CONFIG_HASH) == Some(&metadata_hash(&seen));
    let bootstrap_changed = if bootstrap_hidden {
        match &seen_digest {
            Some(digest) => {
                wanted_bootstrap
                    .map(|b| render::delivery::bootstrap_digest(b))
                    .as_ref()
                    != Some(digest)
            }
            None => !seen_matches,
        }
    } else {
        have.metadata.get(render::USER_DATA) != spec.metadata.get(render::USER_DATA)
    };
    if metadata_changed && ec2_instance && bootstrap_changed {
        reasons.push(Reason::FieldChanged {
            field: "metadata".to_string(),
            before: have
                .labels
                .get(labels::CONFIG_HASH)
                .cloned()
                .unwrap_or_default(),
            after: spec
                .labels
                .get(labels::CONFIG_HASH)
                .cloned()
                .unwrap_or_default(),
            forces_replacement: true,
        });
        replace = true;
    }
    let template_renamed =
        want.object == ObjectKind::InstanceTemplate && live.name != want.cloud_name;
    if template_renamed {
        reasons.insert(
            0,
            Reason::NewVersion {
                before: live.name.clone(),
                after: want.cloud_name.clone(),
            },
        );
        replace = true;
    }
    let stamped = live.label(labels::SPEC_HASH);
    // The stamp hashes only the networking and identity the fleet file set, then or now.
    let observed = spec_hash_with(live.cloud, live.kind, &live.spec, &have_net, &have_id);
    let observed_bare = spec_hash_with(
        live.cloud,
        live.kind,
        &live.spec,
        &Networking::default(),
        &Identity::default(),
    );
    // Files edited by hand: for an EC2 instance, those read back with the bootstrap it was
    // sent do not make its `fleet-config`.
    let metadata_edited = if bootstrap_hidden {
        seen_digest.is_some() && !bootstrap_changed && !seen_matches
    } else {
        metadata_observed
            && !have.metadata.is_empty()
            && have.labels.get(labels::CONFIG_HASH).map(String::as_str)
                != Some(metadata_hash(&have.metadata).as_str())
    };
    let drift = stamped.is_some_and(|stamped| stamped != observed && stamped != observed_bare)
        || metadata_edited
        || !unhardened.is_empty();
    let needs_change = replace || !in_place.is_empty();
    if drift && needs_change {
        reasons.push(Reason::Drift);
    }
    reasons.extend(in_place);
    let stamp_stale = stamped != spec.labels.get(labels::SPEC_HASH).map(String::as_str);
    let action = if replace {
        // A template of the same versioned name, or a GCE VM keeping its name in its zone,
        // cannot exist twice: the old one goes first.
        let same_name = live.name == want.cloud_name && live.cloud == want.cloud;
        let must_free_name = same_name
            && want.cloud == Cloud::Gcp
            && (want.object == ObjectKind::InstanceTemplate || have.zone == spec.zone);
        if must_free_name {
            reasons.push(Reason::NameHeld);
            Action::ReplaceDestroyBeforeCreate
        } else {
            Action::ReplaceCreateBeforeDestroy
        }
    } else if needs_change {
        Action::Update
    } else if stamp_stale {
        reasons.push(Reason::FieldChanged {
            field: format!("labels.{}", labels::SPEC_HASH),
            before: stamped.unwrap_or_default().to_string(),
            after: spec
                .labels
                .get(labels::SPEC_HASH)
                .cloned()
                .unwrap_or_default(),
            forces_replacement: false,
        });
        Action::Update
    } else {
        Action::NoOp
    };
    let impact = impact::impact(action, have, spec, &reasons);
    let after = impact::delivered(want, action, impact.as_ref(), Some(have));
    Change {
        address: want.address.clone(),
        kind: want.kind,
        cloud: want.cloud,
        action,
        reasons,
        // An unchanged object is the desired one: a second copy of it would only cost memory
        // (at 10,000 machines, hundreds of megabytes of rendered files).
        before: (action != Action::NoOp).then(|| live.clone()),
        after: Some(after),
        files,
        impact,
        gone: Vec::new(),
    }
}

/// What the cloud reports of the networking parts the fleet file sets; the rest is the cloud's
/// default and left out.
fn seen_networking(have: &Networking, want: &Networking) -> Networking {
    Networking {
        network: want.network.as_ref().and(have.network.clone()),
        subnet: want.subnet.as_ref().and(have.subnet.clone()),
        security_groups: if want.security_groups.is_empty() {
            Vec::new()
        } else {
            have.security_groups.clone()
        },
    }
}

/// What the cloud reports of the identity parts the fleet file sets. An instance profile
/// given by name matches the ARN EC2 reports for an instance when the ARN ends in that name.
fn seen_identity(have: &Identity, want: &Identity) -> Identity {
    let instance_profile = want.instance_profile.as_ref().and_then(|wanted| {
        let reported = have.instance_profile.as_ref()?;
        let by_name = !wanted.starts_with("arn:")
            && reported.starts_with("arn:")
            && reported.rsplit('/').next() == Some(wanted.as_str());
        Some(if by_name {
            wanted.clone()
        } else {
            reported.clone()
        })
    });
    Identity {
        instance_profile,
        service_account: want
            .service_account
            .as_ref()
            .and(have.service_account.clone()),
        scopes: if want.scopes.is_empty() {
            Vec::new()
        } else {
            have.scopes.clone()
        },
        metadata_options: None,
    }
}

fn file_summary(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    format!(
        "{} lines, sha256 {}",
        text.lines().count(),
        &crate::desired::short_hash(&[text])[..12]
    )
}

fn file_diff(path: &str, before: &str, after: &str) -> FileDiff {
    // A reference is shown by its name, so a runner moved to another secret is a visible
    // line of the diff; values never reach here.
    let before = render::mask_secrets_named(before);
    let after = render::mask_secrets_named(after);
    let diff = similar::TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(2)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string();
    FileDiff {
        path: path.to_string(),
        diff,
    }
}

/// Whether a config.toml change needs a restart: `listen_address`, `[session_server]`, or a
/// runner's `[runners.autoscaler]` other than its policies, by [`crate::impact::RULES`].
pub fn needs_restart(old: &str, new: &str) -> bool {
    crate::impact::needs_restart(old, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::MachineSpec;
    use crate::test_support::{desired, desired_set, live, FLEET};

    fn run(want: Vec<DesiredResource>, live_objects: &[LiveResource]) -> Diff {
        diff(
            &desired_set(want),
            live_objects,
            &[],
            None,
            &BTreeMap::new(),
        )
    }

    fn only(diff: &Diff, address: &str) -> Vec<Change> {
        diff.changes
            .iter()
            .filter(|change| change.address.as_str() == address)
            .cloned()
            .collect()
    }

    #[test]
    fn a_missing_resource_is_created() {
        let out = run(vec![desired(ResourceKind::Manager, "m")], &[]);
        let changes = only(&out, "manager.m");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].action, Action::Create);
        assert_eq!(changes[0].reasons, vec![Reason::Missing]);
        assert!(changes[0].gone.is_empty());
    }

    #[test]
    fn a_matching_resource_is_left_alone() {
        let want = desired(ResourceKind::Manager, "m");
        let out = run(vec![want.clone()], &[live(&want, "m1")]);
        assert_eq!(only(&out, "manager.m")[0].action, Action::NoOp);
    }

    #[test]
    fn a_label_change_is_an_update_in_place() {
        let want = desired(ResourceKind::Manager, "m");
        let mut have = live(&want, "m1");
        have.spec
            .labels
            .insert(labels::ROLE.to_string(), "old-role".to_string());
        let out = run(vec![want], &[have]);
        let change = &only(&out, "manager.m")[0];
        assert_eq!(change.action, Action::Update);
        assert!(change.reasons.iter().any(|reason| matches!(
            reason,
            Reason::FieldChanged { field, forces_replacement: false, .. } if field == "labels.fleet-role"
        )));
    }

    #[test]
    fn a_machine_type_change_replaces_freeing_the_gce_name_first() {
        let have = desired(ResourceKind::Manager, "m");
        let mut want = have.clone();
        want.spec.machine_type = "n1-standard-8".to_string();
        let out = run(vec![want], &[live(&have, "m1")]);
        let change = &only(&out, "manager.m")[0];
        assert_eq!(change.action, Action::ReplaceDestroyBeforeCreate);
        assert!(change.reasons.contains(&Reason::NameHeld));
        assert_eq!(change.before.as_ref().map(|b| b.id.as_str()), Some("m1"));
    }

    #[test]
    fn a_zone_change_replaces_creating_first() {
        let have = desired(ResourceKind::Manager, "m");
        let mut want = have.clone();
        want.spec.zone = "us-east1-d".to_string();
        let out = run(vec![want], &[live(&have, "m1")]);
        assert_eq!(
            only(&out, "manager.m")[0].action,
            Action::ReplaceCreateBeforeDestroy
        );
    }

    #[test]
    fn an_object_no_longer_in_the_fleet_file_is_an_orphan_to_delete() {
        let gone = desired(ResourceKind::Manager, "old");
        let out = run(Vec::new(), &[live(&gone, "o1")]);
        let change = &only(&out, "manager.old")[0];
        assert_eq!(change.action, Action::Delete);
        assert_eq!(change.reasons, vec![Reason::Orphan]);
    }

    #[test]
    fn a_second_object_at_one_address_is_a_duplicate_to_delete() {
        let want = desired(ResourceKind::Manager, "m");
        let out = run(vec![want.clone()], &[live(&want, "m1"), live(&want, "m2")]);
        let changes = only(&out, "manager.m");
        assert_eq!(changes.len(), 2, "{changes:#?}");
        let kept = changes.iter().find(|c| c.action == Action::NoOp).unwrap();
        assert_eq!(
            kept.after.as_ref().map(|a| a.cloud_name.as_str()),
            Some("m")
        );
        let extra = changes.iter().find(|c| c.action == Action::Delete).unwrap();
        assert_eq!(extra.before.as_ref().map(|b| b.id.as_str()), Some("m2"));
        assert_eq!(
            extra.reasons,
            vec![Reason::Duplicate {
                of: "m1".to_string()
            }]
        );
    }

    #[test]
    fn a_copy_made_outside_fleet_is_neither_kept_nor_deleted() {
        let want = desired(ResourceKind::Manager, "m");
        let mut copy = live(&want, "hand-1");
        // Launched with a client token that is not one of this fleet's (or none at all).
        copy.creation_token = Some(String::new());
        let out = run(vec![want], &[copy]);
        let changes = only(&out, "manager.m");
        assert!(changes
            .iter()
            .any(|c| c.action == Action::Create && c.reasons == vec![Reason::Missing]));
        let outside = changes
            .iter()
            .find(|c| c.action == Action::NoOp)
            .expect("the copy is shown");
        assert_eq!(
            outside.reasons,
            vec![Reason::MadeOutsideFleet {
                id: "hand-1".to_string()
            }]
        );
        assert!(changes.iter().all(|c| c.action != Action::Delete));
        // A token of this fleet's own is fleet's machine.
        let want = desired(ResourceKind::Manager, "m");
        let mut own = live(&want, "m1");
        own.creation_token = Some(crate::provider::creation_token(FLEET, &["manager.m"]));
        let out = run(vec![want], &[own]);
        assert_eq!(only(&out, "manager.m")[0].action, Action::NoOp);
        assert_eq!(only(&out, "manager.m").len(), 1);
    }

    #[test]
    fn an_object_going_away_is_ignored_and_its_id_changes_the_next_token() {
        let want = desired(ResourceKind::Manager, "m");
        let mut going = live(&want, "m-old");
        going.status = InstanceStatus::Deleting;
        let out = run(vec![want.clone()], &[going.clone()]);
        let changes = only(&out, "manager.m");
        // Not matched, not deleted again: the machine is made anew.
        assert_eq!(changes.len(), 1, "{changes:#?}");
        assert_eq!(changes[0].action, Action::Create);
        assert_eq!(changes[0].gone, vec!["m-old".to_string()]);
        // A re-create after a deletion is a new creation to the cloud.
        let first = run(vec![want.clone()], &[]);
        let token_before =
            crate::apply::creation_token(FLEET, &only(&first, "manager.m")[0], &want);
        let token_after = crate::apply::creation_token(FLEET, &changes[0], &want);
        assert_ne!(token_before, token_after);
        // An orphan going away is not deleted twice.
        let out = run(Vec::new(), &[going]);
        assert!(out.changes.is_empty(), "{:#?}", out.changes);
    }

    /// An EC2 instance `m` wanting `profile`, as the cloud reports it when fleet launched it.
    fn ec2_with_profile(profile: Option<&str>) -> (DesiredResource, LiveResource) {
        let mut want = desired(ResourceKind::Manager, "m");
        want.cloud = Cloud::Aws;
        want.spec.identity.instance_profile = profile.map(str::to_string);
        let hash = crate::desired::spec_hash(Cloud::Aws, want.object, &want.spec);
        want.spec.labels.insert(labels::SPEC_HASH.to_string(), hash);
        let mut have = live(&want, "i-1");
        have.spec.identity.metadata_options = Some(crate::provider::MetadataOptions::HARDENED);
        (want, have)
    }

    fn replaced_for(change: &Change, wanted: &str) -> bool {
        change.action.is_replace()
            && change.reasons.iter().any(|reason| {
                matches!(
                    reason,
                    Reason::FieldChanged { field, forces_replacement: true, .. } if field == wanted
                )
            })
    }

    #[test]
    fn an_instance_profile_named_matches_the_arn_ec2_reports() {
        let (want, mut have) = ec2_with_profile(Some("ci-runner"));
        have.spec.identity.instance_profile =
            Some("arn:aws:iam::123456789012:instance-profile/ci/ci-runner".to_string());
        let out = run(vec![want], &[have]);
        assert_eq!(only(&out, "manager.m")[0].action, Action::NoOp);
    }

    #[test]
    fn a_changed_instance_profile_replaces() {
        let (want, mut have) = ec2_with_profile(Some("ci-runner"));
        have.spec.identity.instance_profile =
            Some("arn:aws:iam::123456789012:instance-profile/other".to_string());
        let out = run(vec![want], &[have]);
        assert!(replaced_for(
            &only(&out, "manager.m")[0],
            "instance_profile"
        ));
    }

    #[test]
    fn an_unset_identity_is_not_compared() {
        let (want, mut have) = ec2_with_profile(None);
        have.spec.identity.instance_profile =
            Some("arn:aws:iam::123456789012:instance-profile/by-hand".to_string());
        let out = run(vec![want], &[have]);
        assert_eq!(only(&out, "manager.m")[0].action, Action::NoOp);
    }

    #[test]
    fn weaker_metadata_options_are_drift_and_replace_naming_the_field() {
        let (want, mut have) = ec2_with_profile(None);
        have.spec.identity.metadata_options = Some(crate::provider::MetadataOptions {
            http_tokens_required: false,
            hop_limit: 2,
            endpoint_enabled: true,
        });
        let out = run(vec![want], &[have]);
        let change = &only(&out, "manager.m")[0];
        assert!(replaced_for(change, "metadata_options.http_tokens"));
        assert!(replaced_for(
            change,
            "metadata_options.http_put_response_hop_limit"
        ));
        assert!(
            change.reasons.contains(&Reason::Drift),
            "{:?}",
            change.reasons
        );
        assert_eq!(
            impact::rule_of("metadata_options.http_tokens"),
            impact::Rule::Replace
        );
    }

    #[test]
    fn a_gce_machine_that_was_sent_its_secret_values_in_metadata_is_made_again_once() {
        let mut want = desired(ResourceKind::Manager, "m");
        want.spec.metadata.insert(
            render::RUNNER_CONFIG.to_string(),
            "token = \"${secret:T}\"\n".to_string(),
        );
        let mut earlier = live(&want, "1");
        // What discovery leaves of an earlier release's delivery: the digests, no names.
        earlier.spec.metadata.insert(
            render::SECRETS.to_string(),
            r#"{"digests":{"T":"0123456789abcdef"}}"#.to_string(),
        );
        let out = run(vec![want.clone()], &[earlier.clone()]);
        let change = &only(&out, "manager.m")[0];
        assert!(
            replaced_for(change, "metadata.fleet-secrets"),
            "{:?}",
            change.reasons
        );
        // Once it names its Secret Manager secrets, the same machine is left in place.
        earlier.spec.metadata.insert(
            render::SECRETS.to_string(),
            r#"{"digests":{"T":"0123456789abcdef"},"names":{"T":"projects/p/secrets/s"}}"#
                .to_string(),
        );
        let out = run(vec![want], &[earlier]);
        let change = &only(&out, "manager.m")[0];
        assert!(
            !replaced_for(change, "metadata.fleet-secrets"),
            "{:?}",
            change.reasons
        );
    }

    #[test]
    fn a_launch_template_version_is_not_held_to_the_metadata_floor() {
        let mut want = desired(ResourceKind::Template, "t");
        want.cloud = Cloud::Aws;
        let hash = crate::desired::spec_hash(Cloud::Aws, want.object, &want.spec);
        want.spec.labels.insert(labels::SPEC_HASH.to_string(), hash);
        let mut have = live(&want, "lt-1:1");
        have.spec.identity.metadata_options = Some(crate::provider::MetadataOptions {
            http_tokens_required: false,
            ..crate::provider::MetadataOptions::HARDENED
        });
        let out = run(vec![want], &[have]);
        assert_eq!(only(&out, "template.t")[0].action, Action::NoOp);
    }

    #[test]
    fn a_service_account_change_replaces_and_a_template_gets_a_new_version() {
        let have = desired(ResourceKind::Manager, "m");
        let mut want = have.clone();
        want.spec.identity.service_account =
            Some("ci-runner@my-project.iam.gserviceaccount.com".to_string());
        want.spec.identity.scopes = vec![crate::spec::identity::DEFAULT_SCOPE.to_string()];
        let out = run(vec![want], &[live(&have, "m1")]);
        assert!(replaced_for(&only(&out, "manager.m")[0], "service_account"));
        // The spec hash, which names a template's versions, includes the account only when
        // set: a spec without one hashes as before identity existed.
        let bare = desired(ResourceKind::Template, "t");
        let mut with_account = bare.spec.clone();
        with_account.identity.service_account = Some("default".to_string());
        let hash = |spec: &MachineSpec| {
            crate::desired::spec_hash(Cloud::Gcp, ObjectKind::InstanceTemplate, spec)
        };
        assert_ne!(hash(&bare.spec), hash(&with_account));
        let mut with_options = bare.spec.clone();
        with_options.identity.metadata_options = Some(crate::provider::MetadataOptions::HARDENED);
        assert_eq!(hash(&bare.spec), hash(&with_options));
    }
}
