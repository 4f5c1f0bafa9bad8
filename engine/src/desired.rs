//! The desired set: every object the fleet files ask for, fully expanded.
//!
//! In: nothing (plain data built by `render::fleet` from `spec::expand`'s machines). Out: what `diff` compares with the live
//! set, and what a saved plan carries so `apply` needs no fleet file.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::provider::{labels, Cloud, Identity, MachineSpec, Networking, ObjectKind};
use crate::spec::model::ResourceKind;

/// A stable resource address: `manager.runners-manager-distribution-com-blue-1`,
/// `template.amd64-gcp`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    /// The address of a resource of `kind` named `name`.
    pub fn new(kind: ResourceKind, name: &str) -> Address {
        Address(format!("{}.{name}", kind.as_str()))
    }

    /// Parses `kind.name`.
    pub fn parse(text: &str) -> Option<Address> {
        let (kind, name) = text.split_once('.')?;
        ResourceKind::parse(kind)?;
        (!name.is_empty()).then(|| Address(text.to_string()))
    }

    /// The kind part.
    pub fn kind(&self) -> ResourceKind {
        self.0
            .split_once('.')
            .and_then(|(kind, _)| ResourceKind::parse(kind))
            .unwrap_or(ResourceKind::Manager)
    }

    /// The name part.
    pub fn name(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(_, name)| name)
    }

    /// The whole address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the address matches a pattern where `*` stands for any run of characters.
    pub fn matches(&self, pattern: &str) -> bool {
        glob_match(pattern, &self.0)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Where a cloud is reached, from the fleet file's `clouds:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudTarget {
    /// GCP project; none for AWS.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub project: Option<String>,
    /// Region (AWS: the one region every call goes to; GCP: the default region).
    pub region: String,
}

/// One object the fleet wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredResource {
    /// Its address.
    pub address: Address,
    /// Its section.
    pub kind: ResourceKind,
    /// Its cloud.
    pub cloud: Cloud,
    /// Instance or template.
    pub object: ObjectKind,
    /// The name in the cloud. Instances: the expanded name. Templates, which are immutable:
    /// the name plus a hash of their spec, so a change makes a new version.
    pub cloud_name: String,
    /// Everything about it, with fleet's labels, the spec hash included.
    pub spec: MachineSpec,
    /// Addresses that must exist before this one (templates before the managers whose
    /// runners use them, managers before the helpers that scrape them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
}

/// Every object the fleet wants, by address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The fleet name.
    pub fleet: String,
    /// The fleet file it came from.
    pub source: String,
    /// Where each cloud it uses is reached.
    pub clouds: BTreeMap<Cloud, CloudTarget>,
    /// The objects.
    pub resources: BTreeMap<Address, DesiredResource>,
    /// Machines no cloud manages (`hosts:`): their rendered files by metadata key, for
    /// `fleet render`. Never planned or applied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, BTreeMap<String, String>>,
}

/// A hash of what an object is, ignoring its own spec-hash label, so the same spec always
/// hashes the same whether it comes from a fleet file or from the cloud.
pub fn spec_hash(cloud: Cloud, object: ObjectKind, spec: &MachineSpec) -> String {
    spec_hash_with(cloud, object, spec, &spec.networking, &spec.identity)
}

/// [`spec_hash`] of `spec` as if its networking were `networking` and its identity
/// `identity` (no copy of the spec).
pub fn spec_hash_with(
    cloud: Cloud,
    object: ObjectKind,
    spec: &MachineSpec,
    networking: &Networking,
    identity: &Identity,
) -> String {
    let mut hasher = Sha256::new();
    let mut feed = |part: &str| {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    };
    feed(cloud.as_str());
    feed(match object {
        ObjectKind::Instance => "instance",
        ObjectKind::InstanceTemplate => "template",
    });
    feed(&spec.machine_type);
    feed(&spec.zone);
    feed(&spec.image);
    feed(&spec.disk_type);
    feed(&spec.disk_size_gb.to_string());
    for (key, value) in &spec.labels {
        if key != labels::SPEC_HASH {
            feed(key);
            feed(value);
        }
    }
    // Only what is set, so a spec without networking hashes as it did before it existed.
    for (part, value) in [
        ("network", networking.network.as_deref()),
        ("subnet", networking.subnet.as_deref()),
    ] {
        if let Some(value) = value {
            feed(part);
            feed(value);
        }
    }
    for group in &networking.security_groups {
        feed("security_group");
        feed(group);
    }
    // Likewise the identity; the metadata options are never part of it (fleet always sends
    // the hardened ones, and the diff compares what the cloud reports against them).
    for (part, value) in [
        ("instance_profile", identity.instance_profile.as_deref()),
        ("service_account", identity.service_account.as_deref()),
    ] {
        if let Some(value) = value {
            feed(part);
            feed(value);
        }
    }
    for scope in &identity.scopes {
        feed("scope");
        feed(scope);
    }
    // Metadata enters through its digest label (`fleet-config`), so a cloud that does not
    // return metadata in list calls hashes the same as one that does.
    hex(&hasher.finalize())[..16].to_string()
}

/// The digest of a machine's metadata, put in the `fleet-config` label.
pub fn metadata_hash(metadata: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    // Secret values and the impact decision are delivered at apply time and never part of
    // what is compared.
    for (key, value) in metadata.iter().filter(|(key, _)| {
        key.as_str() != crate::render::SECRETS && key.as_str() != crate::impact::ACTION
    }) {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex(&hasher.finalize())[..16].to_string()
}

/// A short hash of arbitrary text, for fingerprints and idempotency tokens.
pub fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex(&hasher.finalize())[..32].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match("manager.*", "manager.a-1"));
        assert!(glob_match(
            "manager.*-com-*",
            "manager.runners-manager-distribution-com-blue-1"
        ));
        assert!(!glob_match(
            "manager.*-dev-*",
            "manager.runners-manager-distribution-com-blue-1"
        ));
        assert!(glob_match("template.amd64-gcp", "template.amd64-gcp"));
        assert!(!glob_match("template.amd64", "template.amd64-gcp"));
    }
}
