//! Secrets by reference: `${secret:NAME}` in a fleet file.
//!
//! In: rendered files holding references, and a [`SecretSource`] (the CLI's: environment
//! variables `FLEET_SECRET_<NAME>` and `--secrets-file`). Out: the values a machine needs,
//! handed to its provider at apply time in the `fleet-secrets` item, and per-name digests that
//! tell a rotated secret without revealing it. No machine is sent a value in its metadata:
//! `render::delivery` turns the item into SSM parameters (EC2) or Secret Manager secrets and
//! their resource names (GCE). Plans, renders, logs and the state store only ever
//! hold references or `(sensitive)`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::desired::short_hash;
use crate::provider::LiveResource;
use crate::render;

/// Where secret values come from.
pub trait SecretSource: Send + Sync {
    /// The value of a secret, if this source has it.
    fn get(&self, name: &str) -> Option<String>;
    /// Where a secret of this name was looked for, for the error when it is missing.
    fn looked_for(&self, name: &str) -> String;
}

/// A source with no secrets, for plans made without them.
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
    fn looked_for(&self, _: &str) -> String {
        "nowhere".to_string()
    }
}

/// Secrets that are referenced but nowhere to be found.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
#[error("missing secret(s): {}", names.join(", "))]
#[diagnostic(
    code(fleet::secrets::missing),
    help("{looked_for}; nothing was changed")
)]
pub struct MissingSecrets {
    /// The names.
    pub names: Vec<String>,
    /// Where they were looked for.
    pub looked_for: String,
}

/// What goes to the machine in `fleet-secrets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Per-name digests (salted with the fleet name), safe to show and compare.
    pub digests: BTreeMap<String, String>,
    /// The values; removed from everything fleet reads back. Only the apply process holds
    /// them: a GCE machine is sent [`Delivery::names`] instead.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// Where a GCE machine reads each value: the Secret Manager resource name of its secret
    /// (`projects/P/secrets/ID`), by secret name. References, safe to show.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, String>,
}

/// What follows `${` in a secret reference `${secret:NAME}`.
pub const REFERENCE_KEYWORD: &str = "secret:";

/// Whether `name` can name a secret: one or more ASCII letters, digits, `_`, `-` and `.`.
/// Apply looks a name up as `FLEET_SECRET_<NAME>` or in `--secrets-file`, so an empty name or
/// one with spaces, braces or non-ASCII characters could only ever be missing.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Every secret referenced by some metadata.
pub fn references<'a>(metadata: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    metadata
        .into_iter()
        .flat_map(|text| render::secret_names(text))
        .collect()
}

/// Looks every name up; all or nothing.
///
/// # Errors
/// [`MissingSecrets`] naming every missing one.
pub fn resolve(
    names: &BTreeSet<String>,
    source: &dyn SecretSource,
) -> Result<BTreeMap<String, String>, MissingSecrets> {
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for name in names {
        match source.get(name) {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() {
        Ok(values)
    } else {
        let looked_for = missing
            .iter()
            .map(|name| source.looked_for(name))
            .collect::<Vec<_>>()
            .join("; ");
        Err(MissingSecrets {
            names: missing,
            looked_for,
        })
    }
}

/// The digest of one secret value, salted with the fleet and the name.
pub fn digest(fleet: &str, name: &str, value: &str) -> String {
    short_hash(&["fleet-secret", fleet, name, value])[..16].to_string()
}

/// The delivery for one machine: the secrets its metadata references.
pub fn delivery(
    fleet: &str,
    metadata: &BTreeMap<String, String>,
    values: &BTreeMap<String, String>,
) -> Option<Delivery> {
    let names = references(metadata.values());
    if names.is_empty() {
        return None;
    }
    let mut out = Delivery::default();
    for name in names {
        if let Some(value) = values.get(&name) {
            out.digests
                .insert(name.clone(), digest(fleet, &name, value));
            out.values.insert(name, value.clone());
        }
    }
    Some(out)
}

/// Drops secret values from a discovered object, keeping their digests, so nothing fleet
/// prints or stores ever holds them.
pub fn mask_live(object: &mut LiveResource) {
    if let Some(text) = object.spec.metadata.get_mut(render::SECRETS) {
        let delivered = serde_json::from_str::<Delivery>(text).unwrap_or_default();
        *text = serde_json::to_string(&Delivery {
            values: BTreeMap::new(),
            ..delivered
        })
        .unwrap_or_default();
    }
}

/// The digests a live object carries.
pub fn live_digests(object: &LiveResource) -> BTreeMap<String, String> {
    object
        .spec
        .metadata
        .get(render::SECRETS)
        .and_then(|text| serde_json::from_str::<Delivery>(text).ok())
        .map(|d| d.digests)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::ResourceKind;
    use crate::test_support::{desired, live};

    #[test]
    fn masking_drops_the_values_and_keeps_the_digests_and_names() {
        let mut object = live(&desired(ResourceKind::Manager, "m"), "zones/z/instances/m");
        object.spec.metadata.insert(
            render::SECRETS.to_string(),
            "{\"digests\":{\"T\":\"d\"},\"values\":{\"T\":\"glrt-v\"},\"names\":{\"T\":\"projects/p/secrets/s\"}}"
                .to_string(),
        );
        mask_live(&mut object);
        assert_eq!(
            object.spec.metadata[render::SECRETS],
            "{\"digests\":{\"T\":\"d\"},\"names\":{\"T\":\"projects/p/secrets/s\"}}"
        );
        assert_eq!(live_digests(&object)["T"], "d");
    }
}
