//! What the simulated clouds refuse, decided from the engine's catalog.
//!
//! In: a cloud, a zone, a machine type, a name. Out: the region, or a [`SpecProblem`] that
//! becomes a cloud-shaped `ProviderError` for API calls or a [`SimError`] for admin commands,
//! so both surfaces refuse exactly the same things.

use fleet_engine::catalog;
use fleet_engine::provider::{Cloud, ErrorKind, ProviderError};

use super::error::SimError;

/// Why a zone, machine type or name would be refused by the real cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpecProblem {
    /// The catalog knows no such zone.
    UnknownZone { zone: String },
    /// The zone exists, in the other cloud.
    ZoneOfOtherCloud { zone: String, owner: Cloud },
    /// The cloud does not sell this machine type.
    UnknownMachineType { machine_type: String },
    /// The machine type exists but not in the zone's region.
    NotOffered {
        machine_type: String,
        zone: String,
        offered: Vec<&'static str>,
    },
    /// A name GCE would refuse.
    InvalidName { name: String, reason: String },
}

/// Checks that `machine_type` can be placed in `zone` on `cloud`; returns the zone's region.
pub(crate) fn check_placement(
    cloud: Cloud,
    zone: &str,
    machine_type: &str,
) -> Result<&'static str, SpecProblem> {
    let region = match catalog::zone(zone) {
        None => {
            return Err(SpecProblem::UnknownZone {
                zone: zone.to_owned(),
            })
        }
        Some((owner, _)) if owner != cloud => {
            return Err(SpecProblem::ZoneOfOtherCloud {
                zone: zone.to_owned(),
                owner,
            })
        }
        Some((_, region)) => region,
    };
    let Some(machine) = catalog::machine_type(cloud, machine_type) else {
        return Err(SpecProblem::UnknownMachineType {
            machine_type: machine_type.to_owned(),
        });
    };
    if !machine.offered_in(region) {
        return Err(SpecProblem::NotOffered {
            machine_type: machine_type.to_owned(),
            zone: zone.to_owned(),
            offered: catalog::offered_regions(machine),
        });
    }
    Ok(region)
}

/// Checks a GCE resource name: RFC 1035, `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
/// EC2 names are tags and accept anything.
pub(crate) fn check_name(cloud: Cloud, name: &str) -> Result<(), SpecProblem> {
    if cloud == Cloud::Aws {
        return Ok(());
    }
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > 63 {
        Some("the name is longer than 63 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("the name must start with a lowercase letter")
    } else if name.ends_with('-') {
        Some("the name must not end with a hyphen")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("the name may hold only lowercase letters, digits and hyphens")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(SpecProblem::InvalidName {
            name: name.to_owned(),
            reason: format!(
                "{reason}; GCE names match `[a-z]([-a-z0-9]*[a-z0-9])?` and have at most 63 characters"
            ),
        }),
    }
}

/// The known zones of every cloud, for help text.
pub(crate) fn known_zones() -> String {
    Cloud::ALL
        .iter()
        .map(|cloud| {
            format!(
                "{} zones: {}",
                cloud,
                catalog::zones(*cloud).collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn known_machine_types(cloud: Cloud) -> String {
    catalog::machine_types(cloud)
        .map(|machine| machine.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl SpecProblem {
    /// The error the real cloud's API returns for this problem.
    pub(crate) fn to_provider_error(&self, cloud: Cloud, operation: &str) -> ProviderError {
        let code = match cloud {
            Cloud::Gcp => "invalid",
            Cloud::Aws => "InvalidParameterValue",
        };
        let message = match (cloud, self) {
            (Cloud::Gcp, SpecProblem::UnknownZone { zone }) => format!(
                "Invalid value for field 'zone': '{zone}'. Unknown zone. (simulated GCP zones: {})",
                catalog::zones(Cloud::Gcp).collect::<Vec<_>>().join(", ")
            ),
            (Cloud::Gcp, SpecProblem::ZoneOfOtherCloud { zone, owner }) => format!(
                "Invalid value for field 'zone': '{zone}'. Unknown zone. ({zone} is a zone of {owner}, not GCP)"
            ),
            (Cloud::Aws, SpecProblem::UnknownZone { zone }) => format!(
                "Invalid availability zone: [{zone}] (simulated AWS zones: {})",
                catalog::zones(Cloud::Aws).collect::<Vec<_>>().join(", ")
            ),
            (Cloud::Aws, SpecProblem::ZoneOfOtherCloud { zone, owner }) => format!(
                "Invalid availability zone: [{zone}] ({zone} is a zone of {owner}, not AWS)"
            ),
            (Cloud::Gcp, SpecProblem::UnknownMachineType { machine_type }) => format!(
                "Invalid value for field 'resource.machineType': '{machine_type}'. Machine type with name '{machine_type}' does not exist. (simulated GCP machine types: {})",
                known_machine_types(Cloud::Gcp)
            ),
            (Cloud::Aws, SpecProblem::UnknownMachineType { machine_type }) => format!(
                "Invalid value '{machine_type}' for InstanceType. (simulated AWS instance types: {})",
                known_machine_types(Cloud::Aws)
            ),
            (
                Cloud::Gcp,
                SpecProblem::NotOffered {
                    machine_type,
                    zone,
                    offered,
                },
            ) => format!(
                "Invalid value for field 'resource.machineType': 'zones/{zone}/machineTypes/{machine_type}'. Machine type with name '{machine_type}' does not exist in zone '{zone}'. (it is offered in {})",
                offered.join(", ")
            ),
            (
                Cloud::Aws,
                SpecProblem::NotOffered {
                    machine_type,
                    zone,
                    offered,
                },
            ) => format!(
                "Your requested instance type ({machine_type}) is not supported in your requested Availability Zone ({zone}). (it is offered in {})",
                offered.join(", ")
            ),
            (_, SpecProblem::InvalidName { name, reason }) => {
                format!("Invalid value for field 'resource.name': '{name}'. {reason}")
            }
        };
        ProviderError::new(ErrorKind::Fatal, operation, code, message)
    }

    /// The admin-command error for this problem; `name` is the object being made or changed.
    pub(crate) fn to_sim_error(&self, cloud: Cloud, name: &str) -> SimError {
        match self {
            SpecProblem::UnknownZone { zone } => SimError::UnknownZone {
                zone: zone.clone(),
                known: format!("known zones are {}", known_zones()),
            },
            SpecProblem::ZoneOfOtherCloud { zone, owner } => SimError::InvalidValue {
                name: name.to_owned(),
                field: "zone".to_owned(),
                value: zone.clone(),
                help: format!(
                    "{zone} is a zone of {owner} and `{name}` is a {cloud} object; {cloud} zones are: {}",
                    catalog::zones(cloud).collect::<Vec<_>>().join(", ")
                ),
            },
            SpecProblem::UnknownMachineType { machine_type } => SimError::UnknownMachineType {
                cloud: cloud.to_string(),
                machine_type: machine_type.clone(),
                known: known_machine_types(cloud),
            },
            SpecProblem::NotOffered {
                machine_type,
                zone,
                offered,
            } => SimError::MachineTypeNotOffered {
                machine_type: machine_type.clone(),
                zone: zone.clone(),
                offered: offered.join(", "),
            },
            SpecProblem::InvalidName { name, reason } => SimError::InvalidName {
                name: name.clone(),
                reason: reason.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t2a_is_refused_outside_its_regions_with_the_regions_named() {
        let problem = check_placement(Cloud::Gcp, "us-east1-c", "t2a-standard-8").unwrap_err();
        let error = problem.to_provider_error(Cloud::Gcp, "compute.instances.insert");
        assert_eq!(error.kind, ErrorKind::Fatal);
        assert_eq!(error.code, "invalid");
        assert!(error.message.contains("us-central1"), "{}", error.message);
        assert_eq!(
            check_placement(Cloud::Gcp, "us-central1-a", "t2a-standard-8"),
            Ok("us-central1")
        );
    }

    #[test]
    fn gce_names_follow_rfc_1035() {
        assert!(check_name(Cloud::Gcp, "runners-manager-distribution-com-blue-1").is_ok());
        for bad in ["", "Upper", "1abc", "abc-", "a_b", &"a".repeat(64)] {
            assert!(check_name(Cloud::Gcp, bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_name(Cloud::Aws, "Any Name_At all").is_ok());
    }
}
