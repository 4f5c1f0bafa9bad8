//! What spans machines: duplicate names, references and cycles.
//!
//! In: every expanded machine of the fleet, by address. Out: each machine's `depends_on`
//! (its references, the templates its runners use, what its `scrape:` patterns match);
//! problems: duplicate addresses, cloud names and pool names, unknown resources and templates (with the
//! closest), runners whose architecture their template's machine type cannot run, scrape
//! patterns that match nothing, dependency cycles (every member named).

use std::collections::{BTreeMap, BTreeSet};

use petgraph::graphmap::DiGraphMap;

use super::placement::arch_list;
use super::{Expander, Machine};
use crate::catalog::{self, Arch};
use crate::desired::Address;
use crate::provider::{Cloud, ObjectKind};
use crate::spec::diagnostic::{closest, quoted, Problem, ProblemKind};
use crate::spec::model::ResourceKind;

impl Expander<'_> {
    pub(super) fn check_duplicates(&mut self, expanded: &[Machine]) {
        let mut by_address: BTreeMap<&Address, &Machine> = BTreeMap::new();
        let mut by_cloud_name: BTreeMap<(Cloud, ObjectKind, &str), &Machine> = BTreeMap::new();
        let mut by_pool: BTreeMap<(Cloud, &str), &Machine> = BTreeMap::new();
        for e in expanded {
            let r = &e.resource;
            if let Some(first) = by_address.insert(&r.address, e) {
                let problem = self
                    .new_problem(ProblemKind::DuplicateName, e.name_span, format!("Duplicate resource `{}`", r.address), "expands to a name already taken")
                    .with_secondary(first.name_span, "first made here")
                    .with_help("make the names differ, e.g. with `{n}`, `{index}` or a matrix variable in the name pattern");
                self.problem(problem);
                continue;
            }
            // Pool members are grouped by their pool label in plans and review comments (one
            // row, one member standing for all): two declarations that give one label would
            // show one pool and hide the other's members.
            if let Some(pool) = r.spec.labels.get(crate::provider::labels::POOL) {
                if let Some(first) = by_pool.insert((r.cloud, pool.as_str()), e) {
                    if first.name_span != e.name_span {
                        let problem = self
                            .new_problem(
                                ProblemKind::DuplicateName,
                                e.name_span,
                                format!("Two pools named `{pool}`"),
                                format!("also pool `{pool}`: its pattern without `{{n}}` is the same"),
                            )
                            .with_secondary(first.name_span, "first made here")
                            .with_help("give each pool its own name pattern, e.g. `arm-builder-{n}` and `arm-tester-{n}`");
                        self.problem(problem);
                    } else {
                        by_pool.insert((r.cloud, pool.as_str()), first);
                    }
                }
            }
            if let Some(first) = by_cloud_name.insert((r.cloud, r.object, &r.cloud_name), e) {
                let problem = self
                    .new_problem(
                        ProblemKind::DuplicateName,
                        e.name_span,
                        format!("Two machines named `{}` in {}", r.cloud_name, r.cloud),
                        format!("{} takes the name of {}", r.address, first.resource.address),
                    )
                    .with_secondary(first.name_span, "first made here")
                    .with_help("every machine of a cloud needs its own name: rename one of them");
                self.problem(problem);
            }
        }
    }

    pub(super) fn resolve_references(
        &mut self,
        expanded: &mut [Machine],
        addresses: &BTreeMap<Address, usize>,
    ) {
        let all: Vec<&str> = addresses.keys().map(Address::as_str).collect();
        let mut problems = Vec::new();
        // The machine type of each resource, read before the loop below borrows them mutably.
        let machines: Vec<Option<&'static catalog::MachineType>> = expanded
            .iter()
            .map(|e| catalog::machine_type(e.resource.cloud, &e.resource.spec.machine_type))
            .collect();
        for e in expanded.iter_mut() {
            let mut deps = BTreeSet::new();
            for (reference, span) in &e.references {
                if addresses.contains_key(reference) {
                    deps.insert(reference.clone());
                } else {
                    let help = match closest(reference.as_str(), all.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "run `fleet plan` to see every address this fleet file makes"
                            .to_string(),
                    };
                    problems.push(
                        Problem::new(
                            ProblemKind::DanglingReference,
                            self.source,
                            *span,
                            format!("Unknown resource `{}`", quoted(reference.as_str())),
                            "nothing in this fleet file has this address",
                        )
                        .with_help(help),
                    );
                }
            }
            for runner in &e.runners {
                let Some(template) = &runner.template else {
                    continue;
                };
                let address = Address::new(ResourceKind::Template, &template.value);
                let Some(&index) = addresses.get(&address) else {
                    let templates: Vec<&str> = all
                        .iter()
                        .filter_map(|a| a.strip_prefix("template."))
                        .collect();
                    let help = match closest(&template.value, templates.iter().copied()) {
                        Some(s) => {
                            format!("did you mean `{s}`? Templates: {}", templates.join(", "))
                        }
                        None if templates.is_empty() => "declare it under `templates:`".to_string(),
                        None => format!("templates in this file: {}", templates.join(", ")),
                    };
                    problems.push(
                        Problem::new(
                            ProblemKind::DanglingReference,
                            self.source,
                            template.span,
                            format!("Unknown template `{}`", quoted(&template.value)),
                            "no template has this name",
                        )
                        .with_help(help),
                    );
                    continue;
                };
                deps.insert(address);
                let machine = machines[index];
                if let Some(arch_text) = &runner.arch {
                    match Arch::parse(&arch_text.value) {
                        None => problems.push(
                            Problem::new(
                                ProblemKind::InvalidValue,
                                self.source,
                                arch_text.span,
                                format!("Unknown architecture `{}`", quoted(&arch_text.value)),
                                "not an architecture",
                            )
                            .with_help("`arch` is amd64, arm64 or armv7"),
                        ),
                        Some(arch) => {
                            if let Some(machine) = machine {
                                if !machine.runs(arch) {
                                    let help = machine.arch_note.map_or_else(|| format!("point the runner at a template whose machine type runs {}", arch.as_str()), str::to_string);
                                    problems.push(
                                        Problem::new(
                                            ProblemKind::ArchitectureMismatch,
                                            self.source,
                                            arch_text.span,
                                            format!(
                                                "Runner builds {} on `{}`, which cannot run it",
                                                arch.as_str(),
                                                machine.name
                                            ),
                                            format!(
                                                "template `{}` uses {}, which runs {}",
                                                template.value,
                                                machine.name,
                                                arch_list(machine.runs)
                                            ),
                                        )
                                        .with_secondary(template.span, "this template")
                                        .with_help(help),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            for pattern in &e.scrape {
                let matched: Vec<&Address> = addresses
                    .keys()
                    .filter(|address| {
                        address.matches(&pattern.value) && **address != e.resource.address
                    })
                    .collect();
                if matched.is_empty() {
                    problems.push(
                        Problem::new(
                            ProblemKind::DanglingReference,
                            self.source,
                            pattern.span,
                            format!("`{}` matches no resource", quoted(&pattern.value)),
                            "scrapes nothing",
                        )
                        .with_help(
                            "use an address pattern such as `manager.shared-runners-manager-*`",
                        ),
                    );
                }
                deps.extend(matched.into_iter().cloned());
            }
            e.resource.depends_on = deps.into_iter().collect();
        }
        self.problems.extend(problems);
    }

    pub(super) fn check_cycles(
        &mut self,
        expanded: &[Machine],
        addresses: &BTreeMap<Address, usize>,
    ) {
        let mut graph: DiGraphMap<usize, ()> = DiGraphMap::new();
        for (index, e) in expanded.iter().enumerate() {
            graph.add_node(index);
            for dep in &e.resource.depends_on {
                if let Some(&to) = addresses.get(dep) {
                    graph.add_edge(to, index, ());
                }
            }
        }
        for component in petgraph::algo::tarjan_scc(&graph) {
            let looped = component.len() > 1 || graph.contains_edge(component[0], component[0]);
            if !looped {
                continue;
            }
            let mut members: Vec<usize> = component.clone();
            members.sort_unstable();
            let names: Vec<&str> = members
                .iter()
                .map(|&i| expanded[i].resource.address.as_str())
                .collect();
            let first = &expanded[members[0]];
            let span = first
                .references
                .iter()
                .find(|(reference, _)| {
                    members
                        .iter()
                        .any(|&m| expanded[m].resource.address == *reference)
                })
                .map_or(first.name_span, |(_, span)| *span);
            let mut problem = self
                .new_problem(ProblemKind::DependencyCycle, span, "Dependency cycle", format!("{} depend on each other", names.join(" → ")))
                .with_help("fleet creates dependencies first, so a loop has no order: remove one `depends_on` (or `scrape`) edge of the loop");
            for &member in members.iter().skip(1) {
                problem = problem.with_secondary(
                    expanded[member].name_span,
                    format!("{} is part of the loop", expanded[member].resource.address),
                );
            }
            self.problem(problem);
        }
    }
}
