//! One member of a declaration into a machine.
//!
//! In: a declaration and the variables of one member. Out: a [`Machine`]: its address and
//! cloud name, cloud, spec (zone, machine type, image, disk, networking, identity; from the
//! resource or the cloud's `defaults`), fleet's labels and the file's, the addresses it
//! depends on, its runners, `runner:` and `prometheus:` blocks; problems: invalid names,
//! clouds not configured, missing fields, unknown disk types, reserved or invalid labels and
//! roles, depends_on entries that are no address, scrape intervals Prometheus refuses.

use std::collections::BTreeMap;

use miette::SourceSpan;

use super::names::{valid_cloud_name, valid_label};
use super::{Expander, Machine, Prometheus, Runner};
use crate::catalog;
use crate::desired::{Address, CloudTarget, DesiredResource};
use crate::provider::{labels, Cloud, MachineSpec, ObjectKind};
use crate::render;
use crate::spec::diagnostic::{closest, quoted, ProblemKind};
use crate::spec::model::{MachineDefaults, ResourceDecl, ResourceKind, Spanned};

const GCP_DISK_TYPES: &[&str] = &[
    "pd-standard",
    "pd-balanced",
    "pd-ssd",
    "pd-extreme",
    "hyperdisk-balanced",
];
const AWS_DISK_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

impl Expander<'_> {
    pub(super) fn expand_one(
        &mut self,
        decl: &ResourceDecl,
        vars: &BTreeMap<String, String>,
        clouds: &BTreeMap<Cloud, CloudTarget>,
    ) -> Option<Machine> {
        let unresolved_before = self.unresolved_uses;
        let file = self.file;
        let name = self.interpolate(&decl.name, vars);
        let max_len = if decl.kind == ResourceKind::Template {
            54
        } else {
            63
        };
        if !valid_cloud_name(&name, max_len) {
            let problem = self
                .new_problem(ProblemKind::InvalidValue, decl.name.span, format!("Invalid name `{}`", quoted(&name)), "not a valid machine name")
                .with_help(format!("names are lowercase letters, digits and `-`, start with a letter, end with a letter or digit, at most {max_len} characters (GCE's rule, applied on both clouds so names carry over)"));
            self.problem(problem);
        }
        let address = Address::new(decl.kind, &name);

        // The cloud: as written, or the only one configured.
        let cloud = match &decl.cloud {
            Some(cloud) => {
                let text = self.interpolate(cloud, vars);
                match Cloud::parse(&text) {
                    Some(parsed) if clouds.contains_key(&parsed) => parsed,
                    Some(parsed) => {
                        let problem = self
                            .new_problem(
                                ProblemKind::UnknownCloud,
                                cloud.span,
                                format!("Cloud `{parsed}` is not configured"),
                                format!("`clouds.{parsed}` is missing"),
                            )
                            .with_help(match parsed {
                                Cloud::Gcp => {
                                    "add `clouds: {gcp: {project: …, region: …}}` to the fleet file"
                                }
                                Cloud::Aws => "add `clouds: {aws: {region: …}}` to the fleet file",
                            });
                        self.problem(problem);
                        return None;
                    }
                    None => {
                        let problem = self
                            .new_problem(
                                ProblemKind::InvalidValue,
                                cloud.span,
                                format!("Unknown cloud `{}`", quoted(&text)),
                                "not a cloud fleet supports",
                            )
                            .with_help("`cloud` is `gcp` or `aws`");
                        self.problem(problem);
                        return None;
                    }
                }
            }
            None => match clouds.keys().collect::<Vec<_>>()[..] {
                [only] => *only,
                [] => {
                    let problem = self
                        .new_problem(ProblemKind::UnknownCloud, decl.name.span, "No cloud configured", "this resource needs a cloud")
                        .with_help("add `clouds: {gcp: {project: …, region: …}}` or `clouds: {aws: {region: …}}` to the fleet file");
                    self.problem(problem);
                    return None;
                }
                _ => {
                    let problem = self
                        .new_problem(ProblemKind::MissingField, decl.name.span, "Missing required field `cloud`", "which cloud is this on?")
                        .with_help("this fleet configures both gcp and aws: add `cloud: gcp` or `cloud: aws`");
                    self.problem(problem);
                    return None;
                }
            },
        };
        let defaults: &MachineDefaults = match cloud {
            Cloud::Gcp => &file.gcp_defaults,
            Cloud::Aws => &file.aws_defaults,
        };

        let zone = self.required(&decl.zone, &defaults.zone, "zone", decl, cloud, vars);
        let machine_type = self.required(
            &decl.machine_type,
            &defaults.machine_type,
            "machine_type",
            decl,
            cloud,
            vars,
        );
        let image = self.required(&decl.image, &defaults.image, "image", decl, cloud, vars);
        let disk_type = match decl.disk_type.as_ref().or(defaults.disk_type.as_ref()) {
            Some(disk_type) => {
                let value = self.interpolate(disk_type, vars);
                let known = match cloud {
                    Cloud::Gcp => GCP_DISK_TYPES,
                    Cloud::Aws => AWS_DISK_TYPES,
                };
                if !known.contains(&value.as_str()) {
                    let mut help = format!("{cloud} disk types: {}", known.join(", "));
                    if let Some(s) = closest(&value, known.iter().copied()) {
                        help = format!("did you mean `{s}`? {help}");
                    }
                    let problem = self
                        .new_problem(
                            ProblemKind::InvalidValue,
                            disk_type.span,
                            format!("Unknown disk type `{}`", quoted(&value)),
                            format!("not a {cloud} disk type"),
                        )
                        .with_help(help);
                    self.problem(problem);
                }
                value
            }
            None => match cloud {
                Cloud::Gcp => "pd-balanced".to_string(),
                Cloud::Aws => "gp3".to_string(),
            },
        };
        let disk_size_gb = decl
            .disk_size_gb
            .as_ref()
            .or(defaults.disk_size_gb.as_ref())
            .map_or(20, |size| size.value);
        let project = clouds.get(&Cloud::Gcp).and_then(|t| t.project.as_deref());
        let zone_region = zone
            .as_ref()
            .and_then(|(zone, _)| catalog::zone(zone))
            .map(|(_, region)| region);
        let networking = self.networking(decl, defaults, (cloud, project, zone_region), vars);
        let identity_problems_before = self.problems.len();
        let identity = self.identity(decl, defaults, cloud, vars);
        let identity_refused = self.problems.len() != identity_problems_before;

        self.check_placement(decl, cloud, clouds, &zone, &machine_type);

        // Labels.
        let mut labels_map = BTreeMap::new();
        for (key, value) in &decl.labels {
            let value_text = self.interpolate(value, vars);
            if labels::is_managed(&key.value) {
                let problem = self
                    .new_problem(
                        ProblemKind::InvalidValue,
                        key.span,
                        format!("Label `{}` is reserved", key.value),
                        "fleet sets labels starting with `fleet`",
                    )
                    .with_help("rename the label");
                self.problem(problem);
                continue;
            }
            if !valid_label(&key.value, true) {
                let problem = self.new_problem(ProblemKind::InvalidValue, key.span, format!("Invalid label key `{}`", quoted(&key.value)), "not a valid label key").with_help("label keys are lowercase letters (international ones too), digits, `-` and `_`, start with a letter, at most 63 characters");
                self.problem(problem);
            }
            if !valid_label(&value_text, false) {
                let problem = self.new_problem(ProblemKind::InvalidValue, value.span, format!("Invalid label value `{}`", quoted(&value_text)), "not a valid label value").with_help("label values are lowercase letters (international ones too), digits, `-` and `_`, at most 63 characters");
                self.problem(problem);
            }
            labels_map.insert(key.value.clone(), value_text);
        }
        let role = match &decl.role {
            Some(role) => {
                let value = self.interpolate(role, vars);
                if !valid_label(&value, false) || value.is_empty() {
                    let problem = self
                        .new_problem(
                            ProblemKind::InvalidValue,
                            role.span,
                            format!("Invalid role `{}`", quoted(&value)),
                            "not a valid label value",
                        )
                        .with_help(
                            "a role is lowercase letters, digits, `-` and `_`, e.g. `prometheus`",
                        );
                    self.problem(problem);
                }
                value
            }
            None => decl.kind.default_role().to_string(),
        };
        labels_map.insert(labels::FLEET.to_string(), file.fleet.value.clone());
        labels_map.insert(labels::KIND.to_string(), decl.kind.as_str().to_string());
        labels_map.insert(labels::ROLE.to_string(), role);
        if decl.kind == ResourceKind::Pool {
            // A member's address is its name (see `labels::RESOURCE`): members of one pool then
            // carry identical labels and can be made in one batch call.
            // The pool's name is its pattern without the member number: `arm-builder-{n}` is
            // pool `arm-builder`.
            let pool = self.interpolate(
                &Spanned::new(decl.name.value.replace("{n}", ""), decl.name.span),
                vars,
            );
            let pool = pool
                .split('-')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join("-");
            labels_map.insert(labels::POOL.to_string(), pool);
        } else {
            labels_map.insert(labels::RESOURCE.to_string(), name.clone());
        }

        let mut references = Vec::new();
        for dependency in &decl.depends_on {
            let text = self.interpolate(dependency, vars);
            match Address::parse(&text) {
                Some(address) => references.push((address, dependency.span)),
                None => {
                    let problem = self.new_problem(ProblemKind::InvalidValue, dependency.span, format!("`{}` is not an address", quoted(&text)), "expected `kind.name`").with_help("addresses are `template.NAME`, `manager.NAME`, `pool.NAME` or `helper.NAME`");
                    self.problem(problem);
                }
            }
        }
        let scrape = decl
            .scrape
            .iter()
            .map(|pattern| Spanned::new(self.interpolate(pattern, vars), pattern.span))
            .collect();
        let runners = decl
            .runners
            .iter()
            .map(|runner| Runner {
                name_span: runner.name.span,
                config: self.config_table(&runner.config, vars),
                name: self.interpolate(&runner.name, vars),
                template: runner
                    .template
                    .as_ref()
                    .map(|t| Spanned::new(self.interpolate(t, vars), t.span)),
                arch: runner.arch.clone(),
                executor_span: runner.executor.as_ref().map(|e| e.span),
                executor: runner.executor.as_ref().map_or_else(
                    || {
                        if runner.template.is_some() {
                            "docker+machine".to_string()
                        } else {
                            "docker".to_string()
                        }
                    },
                    |e| e.value.clone(),
                ),
            })
            .collect();

        // A missing field was reported above; go on with an empty value so the checks that
        // span resources (references, architectures, duplicates) still run.
        let zone = zone.map(|z| z.0).unwrap_or_default();
        let machine_type = machine_type.map(|m| m.0).unwrap_or_default();
        let image = image.map(|i| i.0).unwrap_or_default();
        Some(Machine {
            unresolved: self.unresolved_uses != unresolved_before,
            identity_refused,
            resource: DesiredResource {
                address,
                kind: decl.kind,
                cloud,
                object: if decl.kind == ResourceKind::Template {
                    ObjectKind::InstanceTemplate
                } else {
                    ObjectKind::Instance
                },
                cloud_name: name,
                spec: MachineSpec {
                    machine_type,
                    zone,
                    image,
                    disk_type,
                    disk_size_gb,
                    labels: labels_map,
                    metadata: BTreeMap::new(),
                    networking,
                    identity,
                },
                depends_on: Vec::new(),
            },
            name_span: decl.name.span,
            references,
            scrape,
            runners,
            runner: decl.runner.as_ref().map(|r| self.runner_settings(r, vars)),
            prometheus: decl.prometheus.as_ref().map(|p| {
                if let Some(interval) = &p.scrape_interval {
                    self.check_scrape_interval(interval);
                }
                Prometheus {
                    scrape_interval: p
                        .scrape_interval
                        .as_ref()
                        .map_or_else(|| "30s".to_string(), |i| i.value.clone()),
                    federate: p
                        .federate
                        .iter()
                        .map(|f| self.interpolate(f, vars))
                        .collect(),
                }
            }),
        })
    }

    /// A scrape interval Prometheus would refuse is a problem at its line.
    pub(super) fn check_scrape_interval(&mut self, interval: &Spanned<String>) {
        if let Err(help) = render::check_prometheus_duration(&interval.value) {
            let problem = self
                .new_problem(
                    ProblemKind::InvalidValue,
                    interval.span,
                    format!("Invalid scrape interval `{}`", interval.value),
                    "not a Prometheus duration",
                )
                .with_help(help);
            self.problem(problem);
        }
    }

    /// A field from the resource or the cloud's defaults, interpolated; missing is a problem.
    pub(super) fn required(
        &mut self,
        own: &Option<Spanned<String>>,
        default: &Option<Spanned<String>>,
        field: &str,
        decl: &ResourceDecl,
        cloud: Cloud,
        vars: &BTreeMap<String, String>,
    ) -> Option<(String, SourceSpan)> {
        match own.as_ref().or(default.as_ref()) {
            Some(value) => Some((self.interpolate(value, vars), value.span)),
            None if decl.misspelt.iter().any(|key| key == field) => None,
            None => {
                let problem = self
                    .new_problem(ProblemKind::MissingField, decl.name.span, format!("Missing required field `{field}`"), format!("no `{field}` here or in `defaults.{cloud}`"))
                    .with_help(format!("add `{field}: …` to this resource, or to `defaults.{cloud}` for every {cloud} resource"));
                self.problem(problem);
                None
            }
        }
    }
}
