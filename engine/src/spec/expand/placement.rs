//! Where a machine runs, checked against the catalog.
//!
//! In: a machine's cloud, zone, machine type and declared architecture, and the clouds the
//! file configures. Out: problems: unknown zones (with the closest), zones of the other cloud
//! or outside the AWS region, unknown machine types (or the other cloud's), machine types not
//! offered in the zone's region (with where they are), architectures unknown or not run by
//! the machine type.

use std::collections::BTreeMap;

use miette::SourceSpan;

use super::Expander;
use crate::catalog::{self, Arch};
use crate::desired::CloudTarget;
use crate::provider::Cloud;
use crate::spec::diagnostic::{closest, quoted, ProblemKind};
use crate::spec::model::ResourceDecl;

impl Expander<'_> {
    /// Checks a machine's zone, machine type and architecture against the catalog: the zone
    /// is the cloud's (and, on AWS, in the configured region), the machine type exists there
    /// and is offered in the zone's region, and a declared architecture runs on it.
    pub(super) fn check_placement(
        &mut self,
        decl: &ResourceDecl,
        cloud: Cloud,
        clouds: &BTreeMap<Cloud, CloudTarget>,
        zone: &Option<(String, SourceSpan)>,
        machine_type: &Option<(String, SourceSpan)>,
    ) {
        // Catalog facts.
        let mut region = None;
        if let Some((zone, zone_span)) = &zone {
            match catalog::zone(zone) {
                Some((zone_cloud, zone_region)) if zone_cloud == cloud => {
                    region = Some(zone_region);
                    if cloud == Cloud::Aws {
                        if let Some(aws) = clouds.get(&Cloud::Aws) {
                            if aws.region != zone_region {
                                let problem = self
                                    .new_problem(
                                        ProblemKind::UnknownZone,
                                        *zone_span,
                                        format!("Zone `{zone}` is outside the AWS region"),
                                        format!(
                                            "in {zone_region}, but `clouds.aws.region` is {}",
                                            aws.region
                                        ),
                                    )
                                    .with_help(format!(
                                        "use a zone of {} ({}) or change `clouds.aws.region`",
                                        aws.region,
                                        zones_of_region(&aws.region).join(", ")
                                    ));
                                self.problem(problem);
                            }
                        }
                    }
                }
                Some((zone_cloud, _)) => {
                    let problem = self
                        .new_problem(
                            ProblemKind::UnknownZone,
                            *zone_span,
                            format!("Zone `{zone}` belongs to {zone_cloud}"),
                            format!("this resource is on {cloud}"),
                        )
                        .with_help(format!(
                            "use a {cloud} zone ({}) or set `cloud: {zone_cloud}`",
                            catalog::zones(cloud).take(4).collect::<Vec<_>>().join(", ")
                        ));
                    self.problem(problem);
                }
                None => {
                    let zones: Vec<&str> = catalog::zones(cloud).collect();
                    let help = match closest(zone, zones.iter().copied()) {
                        Some(s) => {
                            format!("did you mean `{s}`? {cloud} zones: {}", zones.join(", "))
                        }
                        None => format!("{cloud} zones: {}", zones.join(", ")),
                    };
                    let problem = self
                        .new_problem(
                            ProblemKind::UnknownZone,
                            *zone_span,
                            format!("Unknown zone `{}`", quoted(zone)),
                            format!("not a {cloud} zone fleet knows"),
                        )
                        .with_help(help);
                    self.problem(problem);
                }
            }
        }
        let mut machine = None;
        if let Some((machine_type, machine_span)) = &machine_type {
            match catalog::machine_type(cloud, machine_type) {
                Some(found) => {
                    machine = Some(found);
                    if let (Some(region), Some((zone, _))) = (region, &zone) {
                        if !found.offered_in(region) {
                            let offered = catalog::offered_regions(found);
                            let problem = self
                                .new_problem(ProblemKind::MachineTypeNotOffered, *machine_span, format!("Machine type `{machine_type}` is not offered in `{zone}`"), format!("not offered in {region}"))
                                .with_help(format!("{machine_type} is offered in {}; move this resource to a zone there, or pick a machine type offered in {region}", offered.join(", ")));
                            self.problem(problem);
                        }
                    }
                }
                None => {
                    let other = Cloud::ALL
                        .into_iter()
                        .find(|c| *c != cloud && catalog::machine_type(*c, machine_type).is_some());
                    let names: Vec<&str> = catalog::machine_types(cloud).map(|m| m.name).collect();
                    let help = match (other, closest(machine_type, names.iter().copied())) {
                        (Some(other), _) => format!("`{machine_type}` is an {other} machine type; this resource is on {cloud}"),
                        (None, Some(s)) => format!("did you mean `{s}`?"),
                        (None, None) => format!("{cloud} machine types fleet knows: {}", names.join(", ")),
                    };
                    let problem = self
                        .new_problem(
                            ProblemKind::UnknownMachineType,
                            *machine_span,
                            format!("Unknown machine type `{}`", quoted(machine_type)),
                            format!("not a {cloud} machine type"),
                        )
                        .with_help(help);
                    self.problem(problem);
                }
            }
        }

        // Architecture: a template's declared one must run on its machine type.
        if let Some(text) = &decl.arch {
            match Arch::parse(&text.value) {
                Some(parsed) => {
                    if let Some(machine) = machine {
                        if !machine.runs(parsed) {
                            let mut problem = self.new_problem(
                                ProblemKind::ArchitectureMismatch,
                                text.span,
                                format!("`{}` cannot run {}", machine.name, parsed.as_str()),
                                format!("{} runs {}", machine.name, arch_list(machine.runs)),
                            );
                            problem.help = Some(machine.arch_note.map_or_else(
                                || format!("pick a machine type that runs {}", parsed.as_str()),
                                str::to_string,
                            ));
                            self.problem(problem);
                        }
                    }
                }
                None => {
                    let problem = self
                        .new_problem(
                            ProblemKind::InvalidValue,
                            text.span,
                            format!("Unknown architecture `{}`", quoted(&text.value)),
                            "not an architecture",
                        )
                        .with_help("`arch` is amd64, arm64 or armv7");
                    self.problem(problem);
                }
            }
        }
    }
}

pub(super) fn arch_list(arches: &[Arch]) -> String {
    arches
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

pub(super) fn zones_of_region(region: &str) -> Vec<&'static str> {
    catalog::ZONES
        .iter()
        .filter(|(_, r, _)| *r == region)
        .flat_map(|(_, _, zones)| zones.iter().copied())
        .collect()
}
