//! The changes digest: what a plan would do, as one hash, so that what was reviewed in a
//! merge request can be checked against what the default-branch pipeline is about to apply.
//!
//! In: a [`Plan`]. Out: [`changes_digest`], 64 hex digits of SHA-256; [`differences`], the
//! changes of two plans that are not the same, by address; [`fleet_file_digest`], the hash of
//! a fleet file's bytes that a saved plan records.
//!
//! The digest covers the fleet name, the project and region of each cloud the plan covers,
//! and, for every change that does something (create, update, replace, delete), in address
//! order: the address, the cloud, the action, the
//! reasons, the desired object (its cloud name and its whole spec: machine type, zone, image,
//! disk, labels, delivered files with secrets as references, networking, identity), the
//! diffs of the delivered files and the runner impact.
//!
//! It ignores what comes and goes without changing what apply does: unchanged resources, the
//! live objects' cloud ids (the `before` side of a change, machines going away, the id a
//! duplicate is kept under or a copy made outside fleet carries), the live fingerprint and the
//! plan id (autoscaled machines, ids and labels fleet does not compare move them), where the
//! clouds were reached (sim dir, endpoints) and the fleet file's path.
//!
//! It is stable across runs and machines: it hashes a canonical JSON document of sorted maps
//! and no timestamps, made from the plan alone, so the same changes give the same digest
//! wherever and whenever they are planned (with the same fleet release: a release that adds
//! a field to the spec may give other digests).

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Plan;
use crate::desired::Address;
use crate::diff::{Action, Change};

/// The digest of what `plan` would change: 64 lowercase hex digits.
pub fn changes_digest(plan: &Plan) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"fleet changes v1\0");
    hasher.update(plan.fleet.as_bytes());
    hasher.update([0]);
    // Where the changes land: the same creates in another project or region are other
    // changes (a reviewed plan must not be applied to a project the review never named).
    for cloud in &plan.scope_clouds {
        let target = plan
            .clouds
            .get(cloud)
            .map(|target| serde_json::to_string(target).unwrap_or_default())
            .unwrap_or_default();
        hasher.update(format!("{cloud}={target}").as_bytes());
        hasher.update([0]);
    }
    let mut changes: Vec<&Change> = plan.actionable().collect();
    changes.sort_by(|a, b| a.address.cmp(&b.address));
    for change in changes {
        hasher.update(canonical(change).as_bytes());
        hasher.update([0]);
    }
    hex(&hasher.finalize())
}

/// The SHA-256 of a fleet file's bytes, 64 lowercase hex digits.
pub fn fleet_file_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Whether `text` has the form of a changes digest (64 hex digits).
pub fn is_changes_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How one address differs between a reviewed plan and a plan made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Changed in the reviewed plan, not now.
    OnlyReviewed {
        /// The address.
        address: Address,
        /// The reviewed action.
        action: Action,
    },
    /// Changed now, not in the reviewed plan.
    OnlyNow {
        /// The address.
        address: Address,
        /// The action now.
        action: Action,
    },
    /// Changed in both, but not the same way.
    Differs {
        /// The address.
        address: Address,
        /// The reviewed action.
        reviewed: Action,
        /// The action now.
        now: Action,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::OnlyReviewed { address, action } => write!(
                f,
                "{} {address} ({}) was reviewed but is not planned now",
                action.symbol(),
                action.verb()
            ),
            Difference::OnlyNow { address, action } => write!(
                f,
                "{} {address} ({}) is planned now but was not reviewed",
                action.symbol(),
                action.verb()
            ),
            Difference::Differs {
                address,
                reviewed,
                now,
            } if reviewed == now => write!(
                f,
                "{} {address} ({}) is planned with other content than was reviewed",
                now.symbol(),
                now.verb()
            ),
            Difference::Differs {
                address,
                reviewed,
                now,
            } => write!(
                f,
                "{} {address} was reviewed as {} and is planned now as {}",
                now.symbol(),
                reviewed.verb(),
                now.verb()
            ),
        }
    }
}

/// The addresses whose changes are not the same in `reviewed` and `now`, in address order;
/// empty exactly when the two plans have the same [`changes_digest`] (for one fleet).
pub fn differences(reviewed: &Plan, now: &Plan) -> Vec<Difference> {
    use std::collections::BTreeMap;
    let index = |plan: &Plan| -> BTreeMap<Address, (Action, String)> {
        plan.actionable()
            .map(|change| (change.address.clone(), (change.action, canonical(change))))
            .collect()
    };
    let (before, after) = (index(reviewed), index(now));
    let mut addresses: Vec<&Address> = before.keys().chain(after.keys()).collect();
    addresses.sort();
    addresses.dedup();
    addresses
        .into_iter()
        .filter_map(|address| match (before.get(address), after.get(address)) {
            (Some((action, _)), None) => Some(Difference::OnlyReviewed {
                address: address.clone(),
                action: *action,
            }),
            (None, Some((action, _))) => Some(Difference::OnlyNow {
                address: address.clone(),
                action: *action,
            }),
            (Some((reviewed, a)), Some((now, b))) if a != b => Some(Difference::Differs {
                address: address.clone(),
                reviewed: *reviewed,
                now: *now,
            }),
            _ => None,
        })
        .collect()
}

/// One change as canonical JSON without what the digest ignores (see the module header).
fn canonical(change: &Change) -> String {
    let mut value = serde_json::to_value(change).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("before");
        map.remove("gone");
        if let Some(Value::Array(reasons)) = map.get_mut("reasons") {
            for reason in reasons {
                if let Value::Object(reason) = reason {
                    // The id a duplicate is kept under and the id of a copy made outside fleet
                    // are the cloud's, and change when a machine is made again.
                    reason.remove("of");
                    reason.remove("id");
                }
            }
        }
    }
    sort_keys(&mut value);
    serde_json::to_string(&value).unwrap_or_default()
}

/// Sorts every object's keys, so the digest does not depend on field order or on
/// `serde_json`'s `preserve_order`.
fn sort_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, mut inner) in entries {
                sort_keys(&mut inner);
                map.insert(key, inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::ResourceKind;
    use crate::test_support::{desired, desired_set, live, plan_of};

    #[test]
    fn the_digest_ignores_ids_and_the_live_fingerprint_but_not_the_changes() {
        let orphan = desired(ResourceKind::Manager, "a");
        let mut b = desired(ResourceKind::Manager, "b");
        let want = desired_set(vec![b.clone()]);
        // Both plans create `b` and delete the orphan `a`, found under one id, then another.
        let one = plan_of(&want, &[live(&orphan, "id-1")]);
        let two = plan_of(&want, &[live(&orphan, "id-2")]);
        assert_ne!(one.plan_id, two.plan_id);
        assert_eq!(changes_digest(&one), changes_digest(&two));
        assert!(differences(&one, &two).is_empty());
        assert!(is_changes_digest(&changes_digest(&one)));

        b.spec.machine_type = "n1-standard-8".to_string();
        let other = plan_of(&desired_set(vec![b]), &[live(&orphan, "id-1")]);
        assert_ne!(changes_digest(&one), changes_digest(&other));
        let shown = |plan: &Plan| -> Vec<String> {
            differences(&one, plan)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            shown(&other),
            ["+ manager.b (create) is planned with other content than was reviewed"]
        );

        let kept = plan_of(&desired_set(vec![orphan.clone()]), &[live(&orphan, "id-1")]);
        assert_eq!(
            shown(&kept),
            [
                "- manager.a (delete) was reviewed but is not planned now",
                "+ manager.b (create) was reviewed but is not planned now"
            ]
        );
        assert_eq!(
            changes_digest(&kept),
            changes_digest(&plan_of(&desired_set(vec![]), &[]))
        );
    }

    #[test]
    fn the_same_changes_in_another_project_have_another_digest() {
        let want = desired_set(vec![desired(ResourceKind::Manager, "b")]);
        let here = plan_of(&want, &[]);
        let mut elsewhere_set = want.clone();
        if let Some(target) = elsewhere_set.clouds.get_mut(&crate::provider::Cloud::Gcp) {
            target.project = Some("someone-elses-project".to_string());
        }
        let elsewhere = plan_of(&elsewhere_set, &[]);
        assert!(differences(&here, &elsewhere).is_empty());
        assert_ne!(changes_digest(&here), changes_digest(&elsewhere));
    }

    #[test]
    fn the_fleet_file_digest_is_sha256() {
        assert_eq!(
            fleet_file_digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
