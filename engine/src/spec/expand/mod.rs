//! Expands fleet files into machines and checks what they mean.
//!
//! In: a loaded [`FleetFile`]. Out: the expanded [`Fleet`] (every machine with its address,
//! cloud name, labels, dependencies and the inputs its files are rendered from, with the
//! spans they came from; nothing rendered, no hashes), and every problem found: unknown
//! `{variables}`, clouds the file does not configure, zones and machine types the catalog
//! does not know or does not offer there, runners whose architecture their machines cannot
//! run, duplicate names after expansion, dangling references and dependency cycles.
//! `render::fleet` renders the files from it.
//!
//! This module holds the expanded fleet's types, the limits checked before anything is
//! expanded (fleet size, pool size, matrix combinations) and the clouds; each concern of
//! expansion has its own module: `matrix` (declarations into members), `variables`
//! (`{variables}` and secret references), `machine` (one member into a machine), `placement`
//! (zones, machine types, architectures), `access` (networking, identity), `names` (name
//! and label rules) and `references` (duplicates, dependencies, cycles).

mod access;
mod machine;
mod matrix;
mod names;
mod placement;
mod references;
mod variables;

use std::collections::BTreeMap;

use miette::SourceSpan;

use super::diagnostic::{quoted, Problem, ProblemKind, SourceFile};
use super::limits::Limits;
use super::model::{FleetFile, ResourceDecl, ResourceKind, Spanned};
use crate::catalog;
use crate::desired::{Address, CloudTarget, DesiredResource};
use crate::provider::Cloud;
use crate::render;

/// A fleet file after expansion: what rendering needs, nothing rendered yet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The fleet's name.
    pub fleet: String,
    /// The fleet file, for the problems rendering finds in it.
    pub source: SourceFile,
    /// The clouds the file configures.
    pub clouds: BTreeMap<Cloud, CloudTarget>,
    /// Every machine and template, in the file's order.
    pub machines: Vec<Machine>,
    /// The static hosts.
    pub hosts: Vec<Host>,
}

/// A runner after expansion, with the places its values came from.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Its name.
    pub name: String,
    /// Where the name is written.
    pub name_span: SourceSpan,
    /// The template its machines come from, as written (`None` on a host).
    pub template: Option<Spanned<String>>,
    /// The architecture it builds, as written.
    pub arch: Option<Spanned<String>>,
    /// Executor (fleet's default when not written).
    pub executor: String,
    /// Where the executor is written (`None`: fleet's default).
    pub executor_span: Option<SourceSpan>,
    /// The `[[runners]]` keys, `{variables}` substituted.
    pub config: render::Table,
}

/// A manager's or host's `runner:` block after expansion.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The pinned gitlab-runner version.
    pub version: Option<String>,
    /// The global section of config.toml.
    pub global: render::Table,
    /// Where the block is written.
    pub span: SourceSpan,
}

/// A helper's `prometheus:` block after expansion.
#[derive(Debug, Clone)]
pub struct Prometheus {
    /// The scrape interval (`30s` when not written).
    pub scrape_interval: String,
    /// Prometheus servers this one federates from.
    pub federate: Vec<String>,
}

/// A static host: rendered, never created.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its host name.
    pub name: String,
    /// Where the name is written.
    pub name_span: SourceSpan,
    /// Its role.
    pub role: String,
    /// Its `runner:` block.
    pub runner: Option<RunnerSettings>,
    /// Its runners.
    pub runners: Vec<Runner>,
}

/// A machine or template after expansion, with the spans needed to report problems found
/// across resources (duplicates, references, cycles) and in its rendered files.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The resource with its address, cloud name, spec and labels; no metadata yet, no
    /// `fleet-config` or `fleet-spec` label, a template's cloud name not yet versioned.
    pub resource: DesiredResource,
    /// Whether a `{variable}` of this resource was not set (and reported): the files it
    /// renders are not checked again, as their empty values are that one problem.
    pub unresolved: bool,
    /// Whether its `instance_profile`, `service_account` or `scopes` was refused (and
    /// reported): what it runs as is not checked again, as its absence is that one problem.
    pub identity_refused: bool,
    /// Where its name is written.
    pub name_span: SourceSpan,
    /// Its `depends_on` addresses, where each is written.
    pub references: Vec<(Address, SourceSpan)>,
    /// Its `scrape:` patterns.
    pub scrape: Vec<Spanned<String>>,
    /// Its runners.
    pub runners: Vec<Runner>,
    /// Its `runner:` block.
    pub runner: Option<RunnerSettings>,
    /// Its `prometheus:` block.
    pub prometheus: Option<Prometheus>,
}

/// Expands one fleet file and checks it. The fleet comes back whatever was found, so that
/// rendering can report its own problems beside these.
pub fn expand(file: &FleetFile, limits: &Limits) -> (Fleet, Vec<Problem>) {
    let mut expander = Expander {
        file,
        source: &file.source,
        limits: *limits,
        missing_env: BTreeMap::new(),
        unresolved_uses: 0,
        expanded_bytes: 0,
        over_budget: None,
        missing_env_lines: BTreeMap::new(),
        problems: Vec::new(),
        hosts: Vec::new(),
    };
    let fleet = expander.run();
    (fleet, expander.problems)
}

struct Expander<'f> {
    file: &'f FleetFile,
    source: &'f SourceFile,
    limits: Limits,
    /// `{env.KEY}` missing in an environment, by (environment, key): the index of its problem,
    /// so every later use adds a place to it instead of another problem.
    missing_env: BTreeMap<(String, String), usize>,
    /// The other lines where such a key is used, by the index of its problem.
    missing_env_lines: BTreeMap<usize, Vec<usize>>,
    /// `{variable}` uses not set so far, reported or not.
    unresolved_uses: usize,
    /// Bytes of values expanded so far, all resources together.
    expanded_bytes: usize,
    /// Where the expanded values first passed [`EXPANDED_BYTES`].
    over_budget: Option<SourceSpan>,
    problems: Vec<Problem>,
    hosts: Vec<Host>,
}

impl Expander<'_> {
    /// A fleet file comes from a merge request as often as not: if it could name the API
    /// endpoint, the pipeline's `fleet plan` would send its bearer token or signed requests
    /// wherever the request's author liked. Endpoints come from flags and the environment only.
    fn refuse_endpoint(&mut self, span: SourceSpan, instead: &str) {
        let problem = self
            .new_problem(
                ProblemKind::InvalidValue,
                span,
                "An API endpoint cannot be set in a fleet file".to_string(),
                "fleet files may not choose where the cloud's credentials are sent",
            )
            .with_help(format!(
                "remove this key and give the endpoint as {instead} when you run fleet"
            ));
        self.problem(problem);
    }

    fn problem(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    fn new_problem(
        &self,
        kind: ProblemKind,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        Problem::new(kind, self.source, span, message, label)
    }

    fn run(&mut self) -> Fleet {
        let file = self.file;
        self.check_label_value(&file.fleet, "fleet name");
        let mut clouds = BTreeMap::new();
        if let Some(gcp) = &file.gcp {
            if !catalog::regions(Cloud::Gcp).any(|region| region == gcp.region.value) {
                let known: Vec<_> = catalog::regions(Cloud::Gcp).collect();
                let problem = self
                    .new_problem(
                        ProblemKind::UnknownZone,
                        gcp.region.span,
                        format!("Unknown GCP region `{}`", quoted(&gcp.region.value)),
                        "not a GCP region fleet knows",
                    )
                    .with_help(format!("known GCP regions: {}", known.join(", ")));
                self.problem(problem);
            }
            if let Some(endpoint) = &gcp.endpoint {
                self.refuse_endpoint(endpoint.span, "--gcp-endpoint URL or FLEET_GCP_ENDPOINT");
            }
            clouds.insert(
                Cloud::Gcp,
                CloudTarget {
                    project: Some(gcp.project.value.clone()),
                    region: gcp.region.value.clone(),
                },
            );
        }
        if let Some(aws) = &file.aws {
            if !catalog::regions(Cloud::Aws).any(|region| region == aws.region.value) {
                let known: Vec<_> = catalog::regions(Cloud::Aws).collect();
                let problem = self
                    .new_problem(
                        ProblemKind::UnknownZone,
                        aws.region.span,
                        format!("Unknown AWS region `{}`", quoted(&aws.region.value)),
                        "not an AWS region fleet knows",
                    )
                    .with_help(format!("known AWS regions: {}", known.join(", ")));
                self.problem(problem);
            }
            if let Some(endpoint) = &aws.endpoint {
                self.refuse_endpoint(endpoint.span, "--aws-endpoint URL or AWS_ENDPOINT_URL");
            }
            clouds.insert(
                Cloud::Aws,
                CloudTarget {
                    project: None,
                    region: aws.region.value.clone(),
                },
            );
        }

        // Sizes are checked before anything is expanded: a `size: 2147483648` must be refused,
        // not allocated.
        let mut total: usize = 0;
        let mut within = Vec::new();
        for decl in &file.resources {
            let Some(members) = self.members(decl) else {
                continue;
            };
            total = total.saturating_add(members);
            if total > self.limits.resources {
                let problem = self
                    .new_problem(
                        ProblemKind::Limit,
                        decl.name.span,
                        format!(
                            "The fleet expands to more than {} resources",
                            self.limits.resources
                        ),
                        format!("{total} resources with this one"),
                    )
                    .with_help(format!(
                        "split the fleet into several fleet files, or allow a larger fleet with `--max-resources N` (default {})",
                        Limits::DEFAULT_RESOURCES
                    ));
                self.problem(problem);
                return Fleet {
                    fleet: file.fleet.value.clone(),
                    source: file.source.clone(),
                    clouds,
                    machines: Vec::new(),
                    hosts: Vec::new(),
                };
            }
            within.push(decl);
        }
        let mut expanded: Vec<Machine> = Vec::new();
        for decl in within {
            self.expand_decl(decl, &clouds, &mut expanded);
        }
        self.check_duplicates(&expanded);
        let addresses: BTreeMap<Address, usize> = expanded
            .iter()
            .enumerate()
            .map(|(index, e)| (e.resource.address.clone(), index))
            .collect();
        self.resolve_references(&mut expanded, &addresses);
        self.check_cycles(&expanded, &addresses);
        if let Some(span) = self.over_budget {
            let problem = self
                .new_problem(
                    ProblemKind::Limit,
                    span,
                    format!(
                        "The fleet's values expand to more than {} MiB",
                        EXPANDED_BYTES >> 20
                    ),
                    "expansion stopped here",
                )
                .with_help("a long value in a matrix of many machines is copied once per machine: shorten it, or split the fleet into several files");
            self.problem(problem);
            // Nothing is rendered from a fleet that did not expand whole.
            expanded.clear();
        }
        Fleet {
            fleet: file.fleet.value.clone(),
            source: file.source.clone(),
            clouds,
            machines: expanded,
            hosts: std::mem::take(&mut self.hosts),
        }
    }

    /// How many resources a declaration expands to, or `None` (with the problem reported) if
    /// its count or its matrix is over the limits. Nothing is allocated in proportion to either.
    fn members(&mut self, decl: &ResourceDecl) -> Option<usize> {
        let count = decl.count.as_ref().map_or(1, |count| count.value);
        if let Some(written) = &decl.count {
            if count > self.limits.pool_size {
                let key = if decl.kind == ResourceKind::Pool {
                    "size"
                } else {
                    "matrix.count"
                };
                let problem = self
                    .new_problem(
                        ProblemKind::Limit,
                        written.span,
                        format!(
                            "`{key}` of {count} is more than the limit of {} members",
                            self.limits.pool_size
                        ),
                        format!("at most {}", self.limits.pool_size),
                    )
                    .with_help(format!(
                        "split it into several {}, or allow more members with `--max-pool-size N` (default {})",
                        if decl.kind == ResourceKind::Pool { "pools" } else { "declarations" },
                        Limits::DEFAULT_POOL_SIZE
                    ));
                self.problem(problem);
                return None;
            }
        }
        let mut combinations: usize = 1;
        for axis in &decl.matrix {
            combinations = combinations.saturating_mul(axis.values.len());
            if combinations > self.limits.matrix_combinations {
                let problem = self
                    .new_problem(
                        ProblemKind::Limit,
                        axis.name.span,
                        format!(
                            "The matrix makes more than {} combinations",
                            self.limits.matrix_combinations
                        ),
                        format!("{combinations} combinations up to this axis"),
                    )
                    .with_help(format!(
                        "use fewer axis values, or allow a larger matrix with `--max-matrix N` (default {})",
                        Limits::DEFAULT_MATRIX_COMBINATIONS
                    ));
                self.problem(problem);
                return None;
            }
        }
        // Both factors are within their limits, so the product fits in a usize.
        Some(combinations.saturating_mul(count as usize))
    }
}

/// The most bytes of values one fleet expands to, all resources together. A fleet of 100,000
/// resources expands to some tens of megabytes.
const EXPANDED_BYTES: usize = 128 << 20;
