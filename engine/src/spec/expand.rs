//! Expands fleet files into machines and checks what they mean.
//!
//! In: a loaded [`FleetFile`]. Out: the expanded [`Fleet`] (every machine with its address,
//! cloud name, labels, dependencies and the inputs its files are rendered from, with the
//! spans they came from; nothing rendered, no hashes), and every problem found: unknown
//! `{variables}`, clouds the file does not configure, zones and machine types the catalog
//! does not know or does not offer there, runners whose architecture their machines cannot
//! run, duplicate names after expansion, dangling references and dependency cycles.
//! `render::fleet` renders the files from it.

use std::collections::{BTreeMap, BTreeSet};

use miette::SourceSpan;
use petgraph::graphmap::DiGraphMap;

use super::diagnostic::{closest, quoted, Problem, ProblemKind, SourceFile};
use super::identity;
use super::limits::Limits;
use super::model::{
    ConfigTable, ConfigValue, Environment, FleetFile, MachineDefaults, ResourceDecl, ResourceKind,
    RunnerGlobal, Spanned,
};
use crate::catalog::{self, Arch};
use crate::desired::{Address, CloudTarget, DesiredResource};
use crate::provider::{labels, Cloud, Identity, MachineSpec, Networking, ObjectKind};
use crate::render;
use crate::secrets;

const GCP_DISK_TYPES: &[&str] = &[
    "pd-standard",
    "pd-balanced",
    "pd-ssd",
    "pd-extreme",
    "hyperdisk-balanced",
];
const AWS_DISK_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

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

    /// Substitutes `{variable}`s; reports unknown ones at their place in the file, and checks
    /// `${secret:NAME}` references (whose names may hold variables).
    fn interpolate(&mut self, text: &Spanned<String>, vars: &BTreeMap<String, String>) -> String {
        // Every value of every expanded resource passes here: a long value in a matrix of many
        // machines is copied once per machine, so the total is bounded, not the file alone.
        if self.expanded_bytes > EXPANDED_BYTES {
            self.over_budget.get_or_insert(text.span);
            return String::new();
        }
        let out = self.interpolate_unbounded(text, vars);
        self.expanded_bytes = self.expanded_bytes.saturating_add(out.len());
        out
    }

    fn interpolate_unbounded(
        &mut self,
        text: &Spanned<String>,
        vars: &BTreeMap<String, String>,
    ) -> String {
        let value = text.value.as_str();
        let mut out = String::with_capacity(value.len());
        let raw = &self.source.text[self.source.clamp(text.span).offset()..];
        let quote_shift = usize::from(raw.starts_with('"') || raw.starts_with('\''));
        let base = text.span.offset() + quote_shift;
        let span_of = |from: usize, to: usize| SourceSpan::from((base + from, to - from));
        // Where the open `${secret:` started in `value`, and where its name starts in `out`.
        let mut secret: Option<(usize, usize)> = None;
        let mut at = 0;
        while at < value.len() {
            let rest = &value[at..];
            let next = rest.find(|c| c == '{' || (secret.is_some() && c == '}'));
            let Some(found) = next else {
                out.push_str(rest);
                break;
            };
            out.push_str(&rest[..found]);
            let open = at + found;
            if value.as_bytes()[open] == b'}' {
                if let Some((start, name_from)) = secret.take() {
                    let name = out[name_from..].to_string();
                    self.check_secret_name(&name, span_of(start, open + 1));
                }
                out.push('}');
                at = open + 1;
                continue;
            }
            // `${…}` is not a variable: `${secret:NAME}` is a secret reference, and anything
            // else (a shell's `${HOME}` in a script) passes through as written.
            if secret.is_none() && value[..open].ends_with('$') {
                if value[open + 1..].starts_with(secrets::REFERENCE_KEYWORD) {
                    out.push('{');
                    out.push_str(secrets::REFERENCE_KEYWORD);
                    secret = Some((open - 1, out.len()));
                    at = open + 1 + secrets::REFERENCE_KEYWORD.len();
                } else {
                    out.push('{');
                    at = open + 1;
                }
                continue;
            }
            let Some(close) = value[open..].find('}') else {
                out.push_str(&value[open..]);
                break;
            };
            let name = &value[open + 1..open + close];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    let span = span_of(open, open + close + 1);
                    self.unknown_variable(name, span, vars);
                }
            }
            at = open + close + 1;
        }
        if let Some((start, _)) = secret {
            let problem = self
                .new_problem(
                    ProblemKind::InvalidValue,
                    span_of(start, value.len()),
                    "Unclosed secret reference",
                    "no `}` ends this `${secret:`",
                )
                .with_help("end the reference with `}`, e.g. `${secret:RUNNER_TOKEN}`");
            self.problem(problem);
        }
        out
    }

    fn check_secret_name(&mut self, name: &str, span: SourceSpan) {
        if name.is_empty() {
            let problem = self
                .new_problem(ProblemKind::InvalidValue, span, "Empty secret name", "`${secret:}` names no secret")
                .with_help("name the secret, e.g. `${secret:RUNNER_TOKEN}`; apply reads it from `FLEET_SECRET_RUNNER_TOKEN` or `--secrets-file`");
            self.problem(problem);
        } else if !secrets::is_valid_name(name) {
            let problem = self
                .new_problem(
                    ProblemKind::InvalidValue,
                    span,
                    format!("Invalid secret name `{}`", quoted(name)),
                    "not a secret name",
                )
                .with_help("secret names are ASCII letters, digits, `_`, `-` and `.`, e.g. `${secret:RUNNER_TOKEN}`");
            self.problem(problem);
        }
    }

    /// `{env.KEY}` where environment `environment` (declared as `env`) has no `KEY`.
    fn missing_env_value(
        &mut self,
        key: &str,
        environment: &str,
        env: &Environment,
        span: SourceSpan,
    ) {
        self.unresolved_uses += 1;
        let id = (environment.to_string(), key.to_string());
        if let Some(&index) = self.missing_env.get(&id) {
            // Named by line in the label rather than drawn: the uses of one key are often
            // far apart, and a snippet spanning them all would bury the message.
            let (line, _) = self.source.line_col(span.offset());
            let problem = &mut self.problems[index];
            let (first_line, _) = self.source.line_col(problem.span.offset());
            let lines = self.missing_env_lines.entry(index).or_default();
            if line != first_line && !lines.contains(&line) {
                lines.push(line);
                let shown: Vec<String> = lines.iter().map(usize::to_string).collect();
                problem.label = format!(
                    "environment `{environment}` has no `{}`; also used on line {}",
                    quoted(key),
                    shown.join(", ")
                );
            }
            return;
        }
        let file = self.file;
        let others: Vec<&str> = file
            .environments
            .iter()
            .filter(|other| other.values.iter().any(|(k, _)| k.value == key))
            .map(|other| other.name.value.as_str())
            .collect();
        let key_shown = quoted(key);
        let help = if others.is_empty() {
            format!("add `{key_shown}: …` to `environments.{environment}`")
        } else {
            format!(
                "add `{key_shown}: …` to `environments.{environment}`, as {} set it",
                others.join(", ")
            )
        };
        let problem = self
            .new_problem(
                ProblemKind::UnknownVariable,
                span,
                format!(
                    "`{{env.{}}}` is not set for environment `{environment}`",
                    quoted(key)
                ),
                format!("environment `{environment}` has no `{}`", quoted(key)),
            )
            .with_secondary(env.name.span, format!("environment `{environment}`"))
            .with_help(help);
        self.missing_env.insert(id, self.problems.len());
        self.problem(problem);
    }

    fn unknown_variable(&mut self, name: &str, span: SourceSpan, vars: &BTreeMap<String, String>) {
        self.unresolved_uses += 1;
        // `{env.KEY}` with an `env` axis: the key is missing in this one environment. It is
        // reported once per environment and key, at its first use, with the lines of the
        // other uses named in its label.
        if let (Some(key), Some(environment)) = (name.strip_prefix("env."), vars.get("env")) {
            let file = self.file;
            let found = file
                .environments
                .iter()
                .find(|env| env.name.value == *environment);
            match found {
                Some(env) => {
                    self.missing_env_value(key, environment, env, span);
                    return;
                }
                // An environment that `environments:` does not define is reported as such.
                None if !file.environments.is_empty() => return,
                None => {}
            }
        }

        let known: Vec<&str> = vars.keys().map(String::as_str).collect();
        let help = match closest(name, known.iter().copied()) {
            Some(suggestion) => format!(
                "did you mean `{{{suggestion}}}`? Variables here: {}",
                braces(&known)
            ),
            None if name.starts_with("env.") => {
                "`{env.KEY}` needs a matrix axis `env` whose values are keys of `environments:`"
                    .to_string()
            }
            None => format!("variables here: {}", braces(&known)),
        };
        let problem = self
            .new_problem(
                ProblemKind::UnknownVariable,
                span,
                format!("Unknown variable `{{{}}}`", quoted(name)),
                "nothing defines this variable",
            )
            .with_help(help);
        self.problem(problem);
    }

    fn expand_decl(
        &mut self,
        decl: &ResourceDecl,
        clouds: &BTreeMap<Cloud, CloudTarget>,
        out: &mut Vec<Machine>,
    ) {
        let file = self.file;
        let count = decl.count.as_ref().map_or(1, |count| count.value);
        if count == 0 {
            if let Some(count) = &decl.count {
                let problem = self
                    .new_problem(
                        ProblemKind::InvalidValue,
                        count.span,
                        "A count of zero",
                        "expands to nothing",
                    )
                    .with_help("remove the resource to have none, or set a count of 1 or more");
                self.problem(problem);
            }
        }
        let mut combinations: Vec<Vec<(String, Spanned<String>)>> = vec![Vec::new()];
        for axis in &decl.matrix {
            combinations = combinations
                .into_iter()
                .flat_map(|combination| {
                    axis.values.iter().map(move |value| {
                        let mut next = combination.clone();
                        next.push((axis.name.value.clone(), value.clone()));
                        next
                    })
                })
                .collect();
        }
        let mut index = 0;
        for combination in &combinations {
            for n in 1..=count {
                index += 1;
                let mut vars = BTreeMap::new();
                vars.insert("fleet".to_string(), file.fleet.value.clone());
                vars.insert("n".to_string(), n.to_string());
                vars.insert("index".to_string(), index.to_string());
                for (axis, value) in combination {
                    vars.insert(axis.clone(), value.value.clone());
                    if axis == "env" {
                        match file
                            .environments
                            .iter()
                            .find(|env| env.name.value == value.value)
                        {
                            Some(env) => {
                                for (key, val) in &env.values {
                                    vars.insert(format!("env.{}", key.value), val.value.clone());
                                }
                            }
                            None if !file.environments.is_empty() => {
                                let names: Vec<&str> = file
                                    .environments
                                    .iter()
                                    .map(|e| e.name.value.as_str())
                                    .collect();
                                let problem = self
                                    .new_problem(
                                        ProblemKind::DanglingReference,
                                        value.span,
                                        format!("Unknown environment `{}`", quoted(&value.value)),
                                        "not a key of `environments:`",
                                    )
                                    .with_help(format!(
                                        "environments defined: {}",
                                        names.join(", ")
                                    ));
                                self.problem(problem);
                            }
                            None => {}
                        }
                    }
                }
                if self.over_budget.is_some() {
                    // The one problem is said at the end; what a half-expanded resource would
                    // add (empty names, zones) is noise.
                    return;
                }
                if decl.kind == ResourceKind::Host {
                    let host = self.expand_host(decl, &vars);
                    self.hosts.push(host);
                } else if let Some(expanded) = self.expand_one(decl, &vars, clouds) {
                    if self.over_budget.is_some() {
                        return;
                    }
                    out.push(expanded);
                }
            }
        }
    }

    fn expand_one(
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
        let identity = self.identity(decl, defaults, cloud, vars);

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
    fn check_scrape_interval(&mut self, interval: &Spanned<String>) {
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

    /// Converts fleet-file config values to render values, substituting `{variables}`.
    fn config_table(
        &mut self,
        table: &ConfigTable,
        vars: &BTreeMap<String, String>,
    ) -> render::Table {
        table
            .iter()
            .map(|(key, value)| {
                (
                    key.value.clone(),
                    Some(key.span),
                    self.config_value(value, vars),
                )
            })
            .collect()
    }

    fn config_value(
        &mut self,
        value: &ConfigValue,
        vars: &BTreeMap<String, String>,
    ) -> render::Value {
        match value {
            ConfigValue::String(text) => render::Value::Str(self.interpolate(text, vars)),
            ConfigValue::Integer(number) => render::Value::Int(number.value),
            ConfigValue::Float(number) => render::Value::Float(number.value),
            ConfigValue::Bool(flag) => render::Value::Bool(flag.value),
            ConfigValue::Array(items, _) => render::Value::Array(
                items
                    .iter()
                    .map(|item| self.config_value(item, vars))
                    .collect(),
            ),
            ConfigValue::Table(table, _) => render::Value::Table(self.config_table(table, vars)),
        }
    }

    fn runner_settings(
        &mut self,
        runner: &RunnerGlobal,
        vars: &BTreeMap<String, String>,
    ) -> RunnerSettings {
        RunnerSettings {
            version: runner.version.as_ref().map(|v| self.interpolate(v, vars)),
            global: self.config_table(&runner.config, vars),
            span: runner.span,
        }
    }

    fn expand_host(&mut self, decl: &ResourceDecl, vars: &BTreeMap<String, String>) -> Host {
        let name = self.interpolate(&decl.name, vars);
        // A host's name becomes a directory of `fleet render -o`: it must be a host name, not
        // a path (`../..`, `/etc`) that would write outside the output directory.
        if !valid_host_name(&name) {
            let problem = self
                .new_problem(
                    ProblemKind::InvalidValue,
                    decl.name.span,
                    format!("Invalid host name `{}`", quoted(&name)),
                    "not a host name",
                )
                .with_help("host names are dot-separated labels of lowercase letters, digits and `-` (e.g. `wb31` or `wb31.example.org`), at most 253 characters");
            self.problem(problem);
        }
        let runners = decl
            .runners
            .iter()
            .map(|runner| {
                if let Some(template) = &runner.template {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, template.span, "A static host cannot autoscale from a template", "fleet makes no machines for a host")
                        .with_help("remove `template`; a host's runners use executors such as docker or shell");
                    self.problem(problem);
                }
                Runner {
                    name_span: runner.name.span,
                    config: self.config_table(&runner.config, vars),
                    name: self.interpolate(&runner.name, vars),
                    template: None,
                    arch: runner.arch.clone(),
                    executor_span: runner.executor.as_ref().map(|e| e.span),
                    executor: runner.executor.as_ref().map_or_else(|| "docker".to_string(), |e| e.value.clone()),
                }
            })
            .collect();
        Host {
            name,
            name_span: decl.name.span,
            role: decl
                .role
                .as_ref()
                .map_or_else(|| "runner-host".to_string(), |r| r.value.clone()),
            runner: decl.runner.as_ref().map(|r| self.runner_settings(r, vars)),
            runners,
        }
    }

    /// A field from the resource or the cloud's defaults, interpolated; missing is a problem.
    fn required(
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

    /// `network`, `subnet` and `security_groups`, from the resource or the cloud's defaults,
    /// checked against what the cloud has.
    fn networking(
        &mut self,
        decl: &ResourceDecl,
        defaults: &MachineDefaults,
        (cloud, project, region): (Cloud, Option<&str>, Option<&str>),
        vars: &BTreeMap<String, String>,
    ) -> Networking {
        let network = decl.network.as_ref().or(defaults.network.as_ref());
        let subnet = decl.subnet.as_ref().or(defaults.subnet.as_ref());
        let groups = decl
            .security_groups
            .as_ref()
            .or(defaults.security_groups.as_ref());
        let mut out = Networking::default();
        if let Some(network) = network {
            let value = self.interpolate(network, vars);
            match cloud {
                Cloud::Aws => {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, network.span, "EC2 has no `network`", "not an aws key")
                        .with_help("on EC2 the subnet decides the VPC: remove `network` and set `subnet: subnet-…`");
                    self.problem(problem);
                }
                Cloud::Gcp => {
                    let place = GcePlace {
                        what: "network",
                        collection: &["global", "networks"],
                        project,
                        region,
                    };
                    out.network = Some(self.gce_reference(&value, network.span, &place));
                }
            }
        }
        if let Some(subnet) = subnet {
            let value = self.interpolate(subnet, vars);
            match cloud {
                Cloud::Aws => {
                    if !is_aws_id(&value, "subnet-") {
                        let problem = self
                            .new_problem(ProblemKind::InvalidValue, subnet.span, format!("`{}` is not a subnet id", quoted(&value)), "expected `subnet-` and lowercase hex digits")
                            .with_help("use the subnet's id, e.g. `subnet-0a1b2c3d4e5f60718` (`aws ec2 describe-subnets`)");
                        self.problem(problem);
                    }
                    out.subnet = Some(value);
                }
                Cloud::Gcp => {
                    let place = GcePlace {
                        what: "subnetwork",
                        collection: &["regions", "*", "subnetworks"],
                        project,
                        region,
                    };
                    out.subnet = Some(self.gce_reference(&value, subnet.span, &place));
                }
            }
        }
        if let Some(groups) = groups {
            if cloud == Cloud::Gcp {
                if let Some(first) = groups.first() {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, first.span, "GCE has no security groups", "not a gcp key")
                        .with_help("GCE applies firewall rules by network and network tag: remove `security_groups`, and choose the `network`/`subnet` whose firewall rules fit");
                    self.problem(problem);
                }
            } else {
                for group in groups {
                    let value = self.interpolate(group, vars);
                    if !is_aws_id(&value, "sg-") {
                        let problem = self
                            .new_problem(ProblemKind::InvalidValue, group.span, format!("`{}` is not a security group id", quoted(&value)), "expected `sg-` and lowercase hex digits")
                            .with_help("use the group's id, e.g. `sg-0123456789abcdef0` (`aws ec2 describe-security-groups`); names are not accepted because they are ambiguous outside the default VPC");
                        self.problem(problem);
                    }
                    out.security_groups.push(value);
                }
                out.security_groups.sort();
                out.security_groups.dedup();
            }
        }
        out
    }

    /// `instance_profile` (EC2), `service_account` and `scopes` (GCE), from the resource or
    /// the cloud's defaults, in the shapes `spec::identity` accepts; each refused on the other
    /// cloud with the key that cloud uses.
    fn identity(
        &mut self,
        decl: &ResourceDecl,
        defaults: &MachineDefaults,
        cloud: Cloud,
        vars: &BTreeMap<String, String>,
    ) -> Identity {
        let profile = decl
            .instance_profile
            .as_ref()
            .or(defaults.instance_profile.as_ref());
        let account = decl
            .service_account
            .as_ref()
            .or(defaults.service_account.as_ref());
        let scopes = decl.scopes.as_ref().or(defaults.scopes.as_ref());
        let mut out = Identity::default();
        let check = |this: &mut Self,
                     value: &Spanned<String>,
                     shape: fn(&str) -> Result<String, identity::Refusal>| {
            let text = this.interpolate(value, vars);
            match shape(&text) {
                Ok(accepted) => Some(accepted),
                Err(refusal) => {
                    let problem = this
                        .new_problem(
                            ProblemKind::InvalidValue,
                            value.span,
                            refusal.message,
                            refusal.label,
                        )
                        .with_help(refusal.help);
                    this.problem(problem);
                    None
                }
            }
        };
        match cloud {
            Cloud::Aws => {
                if let Some(profile) = profile {
                    out.instance_profile = check(self, profile, identity::instance_profile);
                }
                if let Some(account) = account {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, account.span, "EC2 has no `service_account`", "not an aws key")
                        .with_help("an EC2 machine acts as the role of its instance profile: remove `service_account` and set `instance_profile: NAME` (or its ARN)");
                    self.problem(problem);
                }
                if let Some(first) = scopes.and_then(|s| s.first()) {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, first.span, "EC2 has no `scopes`", "not an aws key")
                        .with_help("what an EC2 machine may do is decided by the policies of its instance profile's role: remove `scopes`");
                    self.problem(problem);
                }
            }
            Cloud::Gcp => {
                if let Some(profile) = profile {
                    let problem = self
                        .new_problem(ProblemKind::InvalidValue, profile.span, "GCE has no `instance_profile`", "not a gcp key")
                        .with_help("a GCE machine acts as its service account: remove `instance_profile` and set `service_account: NAME@PROJECT.iam.gserviceaccount.com` (or `default`)");
                    self.problem(problem);
                }
                if let Some(account) = account {
                    out.service_account = check(self, account, identity::service_account);
                }
                match (scopes, &out.service_account) {
                    (Some(scopes), _) if account.is_none() => {
                        if let Some(first) = scopes.first() {
                            let problem = self
                                .new_problem(ProblemKind::InvalidValue, first.span, "`scopes` without a `service_account`", "scopes belong to a service account")
                                .with_help("add `service_account: default` (the project's Compute Engine default account) or the account's email, here or in `defaults.gcp`");
                            self.problem(problem);
                        }
                    }
                    (Some(scopes), Some(_)) => {
                        for scope in scopes {
                            if let Some(url) = check(self, scope, identity::scope) {
                                out.scopes.push(url);
                            }
                        }
                        out.scopes.sort();
                        out.scopes.dedup();
                    }
                    (None, Some(_)) => out.scopes = vec![identity::DEFAULT_SCOPE.to_string()],
                    _ => {}
                }
            }
        }
        out
    }

    /// A GCE network or subnetwork: a name in the project, or a shared-VPC path
    /// `projects/HOST/<collection>/NAME`. A path into the fleet's own project becomes the
    /// bare name, as discovery reports it; a subnetwork's region must be the machine's.
    fn gce_reference(&mut self, value: &str, span: SourceSpan, place: &GcePlace<'_>) -> String {
        let what = place.what;
        let parts: Vec<&str> = value.split('/').collect();
        let example = format!(
            "projects/HOST/{}/NAME",
            place.collection.join("/").replace('*', "REGION")
        );
        let path = match parts.as_slice() {
            [name] if valid_gce_name(name) => return value.to_string(),
            ["projects", project, rest @ ..]
                if !project.is_empty()
                    && rest.len() == place.collection.len() + 1
                    && rest
                        .iter()
                        .zip(place.collection)
                        .all(|(part, want)| (*want == "*" && !part.is_empty()) || part == want)
                    && valid_gce_name(rest[rest.len() - 1]) =>
            {
                (*project, rest.to_vec())
            }
            _ => {
                let problem = self
                    .new_problem(ProblemKind::InvalidValue, span, format!("`{}` is not a {what}", quoted(value)), format!("expected a {what} name or `{example}`"))
                    .with_help(format!("name a {what} of the fleet's project (lowercase letters, digits and `-`), or one of a shared VPC's host project as `{example}`"));
                self.problem(problem);
                return value.to_string();
            }
        };
        let (project, rest) = path;
        if let (["regions", subnet_region, ..], Some(region)) = (rest.as_slice(), place.region) {
            if *subnet_region != region {
                let problem = self
                    .new_problem(ProblemKind::InvalidValue, span, format!("`{value}` is in region {subnet_region}, not the machine's region {region}"), "a machine can only use a subnetwork of its own region")
                    .with_help(format!("use a subnetwork of {region}, or move the machine to a zone of {subnet_region}"));
                self.problem(problem);
            }
        }
        if Some(project) == place.project {
            rest[rest.len() - 1].to_string()
        } else {
            value.to_string()
        }
    }

    fn check_label_value(&mut self, value: &Spanned<String>, what: &str) {
        if !value.value.is_empty() && !valid_label(&value.value, true) {
            let problem = self
                .new_problem(ProblemKind::InvalidValue, value.span, format!("Invalid {what} `{}`", quoted(&value.value)), "fleet puts this in a label on every machine")
                .with_help("use lowercase letters, digits, `-` and `_`, starting with a letter, at most 63 characters");
            self.problem(problem);
        }
    }

    fn check_duplicates(&mut self, expanded: &[Machine]) {
        let mut by_address: BTreeMap<&Address, &Machine> = BTreeMap::new();
        let mut by_cloud_name: BTreeMap<(Cloud, ObjectKind, &str), &Machine> = BTreeMap::new();
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

    fn resolve_references(
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

    fn check_cycles(&mut self, expanded: &[Machine], addresses: &BTreeMap<Address, usize>) {
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

fn braces(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn arch_list(arches: &[Arch]) -> String {
    arches
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

fn zones_of_region(region: &str) -> Vec<&'static str> {
    catalog::ZONES
        .iter()
        .filter(|(_, r, _)| *r == region)
        .flat_map(|(_, _, zones)| zones.iter().copied())
        .collect()
}

/// The most bytes of values one fleet expands to, all resources together. A fleet of 100,000
/// resources expands to some tens of megabytes.
const EXPANDED_BYTES: usize = 128 << 20;

/// A host name (RFC 1123, lowercase): dot-separated labels of `[a-z0-9-]`, 1 to 63 each, not
/// starting or ending with `-`; never a path.
fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// GCE's resource-name rule.
fn valid_cloud_name(name: &str, max_len: usize) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max_len
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-')
}

/// GCE's label rule, which EC2 tags accept too: keys `[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}`,
/// values `[\p{Ll}\p{Lo}\p{N}_-]{0,63}`, counted in characters. International characters
/// are allowed as long as they are lowercase (`café`, `straße`) or of a script without case
/// (`東京`); `Café` is refused, as Google refuses it.
fn valid_label(text: &str, is_key: bool) -> bool {
    text.chars().count() <= 63
        && (!is_key || text.chars().next().is_some_and(is_label_letter))
        && text
            .chars()
            .all(|c| is_label_letter(c) || c.is_numeric() || c == '-' || c == '_')
}

/// `\p{Ll}` or `\p{Lo}`: a lowercase letter, or a letter of a script without case (one that
/// has neither an upper nor a lower case form).
fn is_label_letter(c: char) -> bool {
    c.is_lowercase()
        || (c.is_alphabetic()
            && !c.is_uppercase()
            && c.to_uppercase().eq(std::iter::once(c))
            && c.to_lowercase().eq(std::iter::once(c)))
}

/// A GCE network or subnetwork name.
fn valid_gce_name(name: &str) -> bool {
    valid_cloud_name(name, 63)
}

/// An EC2 id: `prefix` then 8 or 17 lowercase hex digits, as EC2 writes them.
fn is_aws_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|hex| {
        matches!(hex.len(), 8 | 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Where a GCE network reference points, for [`Expander::gce_reference`].
struct GcePlace<'a> {
    /// `network` or `subnetwork`, for messages.
    what: &'a str,
    /// The path between the project and the name (`*` for any one part).
    collection: &'a [&'a str],
    /// The fleet's GCP project.
    project: Option<&'a str>,
    /// The machine's region.
    region: Option<&'a str>,
}
