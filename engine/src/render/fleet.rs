//! The rendering stage: from the expanded fleet to the desired set.
//!
//! In: a [`spec::expand::Fleet`] (machines with their inputs, addresses, labels and the
//! spans they came from; nothing rendered). Out: the [`Desired`] set, each machine with its
//! files by metadata key and its `fleet-config` and `fleet-spec` hashes, templates named by
//! version, and the static hosts' files; or every problem rendering found, at the place in
//! the fleet file it came from: what gitlab-runner would refuse in a config.toml, a missing
//! `runner.version`, a delivery over its channel's limit (`delivery::oversize`), the
//! fleet-wide budget of rendered bytes, duplicate hosts.

use std::collections::{BTreeMap, BTreeSet};

use miette::SourceSpan;

use super::{
    bootstrap, config_toml, delivery, prometheus_yml, BootstrapInput, Files, ManagerInput,
    PrometheusInput, RenderedConfig, RunnerInput, ScrapeTarget, ScrapedTemplate, TemplateInfo,
    Value, DEFAULT_SHUTDOWN_TIMEOUT, PROMETHEUS_CONFIG, RUNNER_CONFIG, RUNNER_VERSION, USER_DATA,
};
use crate::catalog;
use crate::desired::{metadata_hash, spec_hash, Address, CloudTarget, Desired};
use crate::provider::{labels, Cloud, ObjectKind};
use crate::spec::diagnostic::{Problem, ProblemKind, SourceFile};
use crate::spec::expand::{Fleet, Host, Machine, Runner, RunnerSettings};
use crate::spec::model::ResourceKind;

/// The most bytes of config.toml and prometheus.yml one fleet renders, all machines together
/// (bootstraps are shared and not counted). Real fleets render a few kilobytes per manager.
const RENDERED_BYTES: usize = 256 << 20;

/// Renders every machine and host of an expanded fleet.
///
/// # Errors
/// Every problem rendering found, not the first.
pub fn fleet(expanded: Fleet) -> Result<Desired, Vec<Problem>> {
    let Fleet {
        fleet,
        source,
        clouds,
        mut machines,
        hosts,
    } = expanded;
    let mut renderer = Renderer {
        fleet: &fleet,
        source: &source,
        problems: Vec::new(),
        bootstraps: BTreeMap::new(),
    };
    renderer.machines(&clouds, &mut machines);
    let hosts = renderer.hosts(hosts);
    if !renderer.problems.is_empty() {
        return Err(renderer.problems);
    }
    Ok(Desired {
        hosts,
        fleet,
        source: source.name.clone(),
        clouds,
        resources: machines
            .into_iter()
            .map(|m| (m.resource.address.clone(), m.resource))
            .collect(),
    })
}

/// What rendering needs of a runner, with its template (if any) resolved.
fn runner_input(runner: &Runner, template: Option<TemplateInfo>) -> RunnerInput {
    RunnerInput {
        name: runner.name.clone(),
        name_span: runner.name_span,
        executor: runner.executor.clone(),
        executor_span: runner.executor_span,
        template,
        config: runner.config.clone(),
    }
}

/// One fleet's rendering under way: the problems found so far and the bootstraps made.
struct Renderer<'a> {
    fleet: &'a str,
    source: &'a SourceFile,
    problems: Vec<Problem>,
    /// Bootstraps rendered so far, by their input: most machines share one.
    bootstraps: BTreeMap<String, String>,
}

impl Renderer<'_> {
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

    /// Reports what gitlab-runner would make of a rendered config.toml where the fleet file
    /// wrote it.
    fn report_config_problems(&mut self, rendered: &RenderedConfig, fallback: SourceSpan) {
        for found in &rendered.problems {
            // A value shared through a YAML alias or a matrix is one line of the fleet file:
            // one problem there, not one per runner or machine that uses it.
            let span = found.span.unwrap_or(fallback);
            if (self.problems.iter()).any(|p| p.span == span && p.message == found.message) {
                continue;
            }
            let mut problem = self
                .new_problem(found.kind, span, found.message.clone(), found.label.clone())
                .with_help(found.help.clone());
            if let Some((span, label)) = &found.secondary {
                problem = problem.with_secondary(*span, label.clone());
            }
            self.problem(problem);
        }
    }

    /// Renders one manager's or host's config.toml; problems are reported, not returned.
    fn render_config(
        &mut self,
        machine: &str,
        fallback: SourceSpan,
        settings: Option<&RunnerSettings>,
        runners: Vec<RunnerInput>,
        unresolved: bool,
    ) -> Option<String> {
        let input = ManagerInput {
            fleet: self.fleet.to_string(),
            source: self.source.name.clone(),
            machine: machine.to_string(),
            global: settings.map(|s| s.global.clone()).unwrap_or_default(),
            runners,
        };
        match config_toml(&input) {
            Ok(rendered) => {
                if !unresolved {
                    self.report_config_problems(&rendered, fallback);
                }
                Some(rendered.text)
            }
            Err(error) => {
                let problem = self
                    .new_problem(
                        ProblemKind::InvalidValue,
                        fallback,
                        format!("Cannot render config.toml of {machine}"),
                        error.message.clone(),
                    )
                    .with_help("check the values of this machine's `runner:` and `runners:`");
                self.problem(problem);
                None
            }
        }
    }

    fn require_version(
        &mut self,
        settings: Option<&RunnerSettings>,
        name_span: SourceSpan,
    ) -> String {
        match settings.and_then(|s| s.version.clone()) {
            Some(version) => version,
            None => {
                let span = settings.map_or(name_span, |s| s.span);
                let problem = self
                    .new_problem(ProblemKind::MissingField, span, "Missing required field `runner.version`", "which gitlab-runner version?")
                    .with_help("pin the gitlab-runner version, e.g. `runner: {version: \"16.11.1\"}`; fleet installs exactly it and upgrades with a graceful stop");
                self.problem(problem);
                String::new()
            }
        }
    }

    fn bootstrap(&mut self, input: &BootstrapInput, span: SourceSpan) -> Option<String> {
        let key = serde_json::to_string(input).unwrap_or_default();
        if let Some(text) = self.bootstraps.get(&key) {
            return Some(text.clone());
        }
        match bootstrap(input) {
            Ok(text) => {
                self.bootstraps.insert(key, text.clone());
                Some(text)
            }
            Err(error) => {
                let problem = self.new_problem(
                    ProblemKind::InvalidValue,
                    span,
                    format!("Cannot render the bootstrap of {}", input.machine),
                    error.message.clone(),
                );
                self.problem(problem);
                None
            }
        }
    }

    /// Names templates by version, renders every machine's files into its metadata, checks
    /// that they fit their channel, and stamps every resource with its config and spec
    /// hashes, templates first.
    fn machines(&mut self, clouds: &BTreeMap<Cloud, CloudTarget>, expanded: &mut [Machine]) {
        let fleet = self.fleet.to_string();
        let source = self.source.name.clone();
        let mut templates: BTreeMap<String, TemplateInfo> = BTreeMap::new();
        for e in expanded
            .iter_mut()
            .filter(|e| e.resource.kind == ResourceKind::Template)
        {
            let hash = spec_hash(e.resource.cloud, e.resource.object, &e.resource.spec);
            let name = e.resource.address.name().to_string();
            e.resource.cloud_name = format!("{}-{}", e.resource.cloud_name, &hash[..8]);
            e.resource
                .spec
                .labels
                .insert(labels::SPEC_HASH.to_string(), hash);
            let target = clouds.get(&e.resource.cloud);
            let spec = &e.resource.spec;
            templates.insert(
                name,
                TemplateInfo {
                    cloud: e.resource.cloud,
                    cloud_name: e.resource.cloud_name.clone(),
                    project: target.and_then(|t| t.project.clone()),
                    region: catalog::zone(&spec.zone).map_or_else(
                        || target.map(|t| t.region.clone()).unwrap_or_default(),
                        |(_, r)| r.to_string(),
                    ),
                    zone: spec.zone.clone(),
                    machine_type: spec.machine_type.clone(),
                    image: spec.image.clone(),
                    disk_type: spec.disk_type.clone(),
                    disk_size_gb: spec.disk_size_gb,
                    networking: spec.networking.clone(),
                },
            );
        }
        // Every machine and the templates its runners use, for the Prometheus helpers that
        // scrape them.
        let locations: BTreeMap<Address, (ScrapeTarget, Vec<String>)> = expanded
            .iter()
            .map(|e| {
                let target = clouds.get(&e.resource.cloud);
                let location = ScrapeTarget {
                    name: e.resource.cloud_name.clone(),
                    cloud: e.resource.cloud,
                    project: target.and_then(|t| t.project.clone()),
                    zone: e.resource.spec.zone.clone(),
                    region: target.map(|t| t.region.clone()).unwrap_or_default(),
                };
                let used = (e.runners.iter())
                    .filter_map(|r| r.template.as_ref().map(|t| t.value.clone()))
                    .collect();
                (e.resource.address.clone(), (location, used))
            })
            .collect();
        let mut rendered_bytes = 0usize;
        let mut over_budget = false;
        for e in expanded.iter_mut() {
            if e.resource.kind == ResourceKind::Template || over_budget {
                continue;
            }
            if rendered_bytes > RENDERED_BYTES {
                // A long value in a matrix of many machines renders once per machine: the
                // size of the file says nothing of what it expands to.
                over_budget = true;
                let problem = self
                    .new_problem(
                        ProblemKind::Limit,
                        e.name_span,
                        format!(
                            "The machines' rendered files pass {} MiB",
                            RENDERED_BYTES >> 20
                        ),
                        "rendering stopped at this machine",
                    )
                    .with_help("a value repeated in many machines' config.toml (a long `environment`, say) is rendered once per machine: shorten it, or split the fleet into several files");
                self.problem(problem);
                continue;
            }
            let machine = e.resource.cloud_name.clone();
            let role = e
                .resource
                .spec
                .labels
                .get(labels::ROLE)
                .cloned()
                .unwrap_or_default();
            let cloud = e.resource.cloud;
            let mut metadata = BTreeMap::new();
            let mut version = String::new();
            let settings = e.runner.clone();
            let runs_runner = e.resource.kind == ResourceKind::Manager || !e.runners.is_empty();
            if runs_runner {
                let runners = e
                    .runners
                    .iter()
                    .map(|runner| {
                        runner_input(
                            runner,
                            runner
                                .template
                                .as_ref()
                                .and_then(|t| templates.get(&t.value).cloned()),
                        )
                    })
                    .collect::<Vec<_>>();
                let name_span = e.name_span;
                let has_runners = !runners.is_empty();
                if let Some(text) = self.render_config(
                    &machine,
                    name_span,
                    settings.as_ref(),
                    runners,
                    e.unresolved,
                ) {
                    rendered_bytes = rendered_bytes.saturating_add(text.len());
                    metadata.insert(RUNNER_CONFIG.to_string(), text);
                }
                if has_runners || settings.is_some() {
                    version = self.require_version(settings.as_ref(), name_span);
                    metadata.insert(RUNNER_VERSION.to_string(), version.clone());
                }
            }
            let runs_prometheus = role == "prometheus" || e.prometheus.is_some();
            if runs_prometheus {
                let (scrape_interval, federate) = e.prometheus.clone().map_or_else(
                    || ("30s".to_string(), Vec::new()),
                    |p| (p.scrape_interval, p.federate),
                );
                // Exactly what the helper's `scrape:` patterns name, not everything near it.
                let mut managers = BTreeSet::new();
                let mut machines = BTreeSet::new();
                let mut scraped_templates = BTreeSet::new();
                for (address, (location, used)) in &locations {
                    let named = *address != e.resource.address
                        && e.scrape.iter().any(|p| address.matches(&p.value));
                    if !named {
                        continue;
                    }
                    match address.kind() {
                        ResourceKind::Template => {
                            scraped_templates.insert(address.name().to_string());
                        }
                        ResourceKind::Manager => {
                            managers.insert(location.clone());
                            machines.insert(location.clone());
                            scraped_templates.extend(used.iter().cloned());
                        }
                        _ => {
                            machines.insert(location.clone());
                        }
                    }
                }
                let input = PrometheusInput {
                    fleet: fleet.clone(),
                    source: source.clone(),
                    machine: machine.clone(),
                    scrape_interval,
                    managers: managers.into_iter().collect(),
                    machines: machines.into_iter().collect(),
                    templates: (scraped_templates.into_iter())
                        .filter_map(|name| {
                            let info = templates.get(&name)?.clone();
                            Some(ScrapedTemplate { name, info })
                        })
                        .collect(),
                    federate,
                };
                match prometheus_yml(&input) {
                    Ok(text) => {
                        rendered_bytes = rendered_bytes.saturating_add(text.len());
                        metadata.insert(PROMETHEUS_CONFIG.to_string(), text);
                    }
                    Err(error) => {
                        let problem = self.new_problem(
                            ProblemKind::InvalidValue,
                            e.name_span,
                            format!("Cannot render prometheus.yml of {machine}"),
                            error.message,
                        );
                        self.problem(problem);
                    }
                }
            }
            let shutdown_timeout = settings
                .as_ref()
                .and_then(|s| s.global.iter().find(|(k, _, _)| k == "shutdown_timeout"))
                .and_then(|(_, _, v)| match v {
                    Value::Int(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
            // Machines of one role are set up alike, so the bootstrap names the pool or the
            // role, not the machine: pool members can then be made in one batch call, and one
            // rendering serves every machine that shares it.
            let bootstrap_name = e
                .resource
                .spec
                .labels
                .get(labels::POOL)
                .cloned()
                .unwrap_or_else(|| format!("every {role} machine"));
            let input = BootstrapInput {
                fleet: fleet.clone(),
                source: source.clone(),
                machine: bootstrap_name,
                role,
                cloud: cloud.to_string(),
                runs_runner,
                runs_prometheus,
                runner_version: version,
                shutdown_timeout,
                // GCE machines read their metadata; EC2 instances their parameters. Machines made
                // from an EC2 launch template keep the files their user data laid down, and
                // an EC2 instance with neither runner nor Prometheus has nothing to watch.
                watch_metadata: cloud == Cloud::Gcp
                    || (cloud == Cloud::Aws
                        && e.resource.object == ObjectKind::Instance
                        && (runs_runner || runs_prometheus)),
            };
            let span = e.name_span;
            if let Some(text) = self.bootstrap(&input, span) {
                metadata.insert(USER_DATA.to_string(), text);
            }
            // What the machine is sent must fit its channel; said at the machine, not at apply.
            for over in delivery::oversize(cloud, e.resource.object, &metadata) {
                let problem = self
                    .new_problem(
                        ProblemKind::Limit,
                        e.name_span,
                        over.message(&machine),
                        over.label(),
                    )
                    .with_help(over.help());
                self.problem(problem);
            }
            // A GCE machine reads its secrets from Secret Manager with its own service
            // account's token: without an account, or without the scope Secret Manager takes,
            // its runners would never get their tokens.
            if cloud == Cloud::Gcp
                && e.resource.object == ObjectKind::Instance
                && !e.identity_refused
            {
                // Names the loader refused already (`${secret:}`) are told there, not again.
                let mut names = crate::secrets::references(metadata.values());
                names.retain(|name| crate::secrets::is_valid_name(name));
                if !names.is_empty() {
                    if let Some((summary, label, help)) =
                        secret_reader_missing(&machine, &e.resource.spec.identity, &names)
                    {
                        let problem = self
                            .new_problem(ProblemKind::InvalidValue, e.name_span, summary, label)
                            .with_help(help);
                        self.problem(problem);
                    }
                }
            }
            e.resource.spec.metadata = metadata;
            let digest = metadata_hash(&e.resource.spec.metadata);
            e.resource
                .spec
                .labels
                .insert(labels::CONFIG_HASH.to_string(), digest);
            let hash = spec_hash(e.resource.cloud, e.resource.object, &e.resource.spec);
            e.resource
                .spec
                .labels
                .insert(labels::SPEC_HASH.to_string(), hash);
        }
    }

    /// Renders the static hosts' files: config.toml, the version and the bootstrap, by
    /// metadata key and host name.
    fn hosts(&mut self, expanded: Vec<Host>) -> BTreeMap<String, Files> {
        let fleet = self.fleet.to_string();
        let source = self.source.name.clone();
        let mut hosts = BTreeMap::new();
        for host in expanded {
            let runners = host
                .runners
                .iter()
                .map(|runner| runner_input(runner, None))
                .collect();
            let mut files = Files::new();
            if let Some(text) = self.render_config(
                &host.name,
                host.name_span,
                host.runner.as_ref(),
                runners,
                false,
            ) {
                files.insert(RUNNER_CONFIG.to_string(), text);
            }
            let version = self.require_version(host.runner.as_ref(), host.name_span);
            files.insert(RUNNER_VERSION.to_string(), version.clone());
            let input = BootstrapInput {
                fleet: fleet.clone(),
                source: source.clone(),
                machine: host.name.clone(),
                role: host.role.clone(),
                cloud: "none".to_string(),
                runs_runner: true,
                runs_prometheus: false,
                runner_version: version,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                watch_metadata: false,
            };
            if let Some(text) = self.bootstrap(&input, host.name_span) {
                files.insert(USER_DATA.to_string(), text);
            }
            if hosts.insert(host.name.clone(), files).is_some() {
                let problem = self.new_problem(
                    ProblemKind::DuplicateName,
                    host.name_span,
                    format!("Duplicate host `{}`", host.name),
                    "expands to a name already taken",
                );
                self.problem(problem);
            }
        }
        hosts
    }
}

/// Why a GCE machine that references `names` could not read them, if it could not: it runs
/// as no service account, or its scopes leave out `cloud-platform` (Secret Manager takes no
/// narrower scope). (summary, label, help)
fn secret_reader_missing(
    machine: &str,
    identity: &crate::provider::Identity,
    names: &BTreeSet<String>,
) -> Option<(String, String, String)> {
    let listed = names.iter().cloned().collect::<Vec<_>>().join(", ");
    if identity.service_account.is_none() {
        return Some((
            format!("`{machine}` uses {listed} but runs as no service account"),
            "its watcher reads secrets from Secret Manager as its service account".to_string(),
            "add `service_account: NAME@PROJECT.iam.gserviceaccount.com`, an account of the managers' own (the project's `default` account is shared by every VM that runs as it, autoscaled job machines too), and grant it what `fleet permissions FILE --for manager` prints".to_string(),
        ));
    }
    if !identity
        .scopes
        .iter()
        .any(|scope| scope == crate::spec::identity::DEFAULT_SCOPE)
    {
        return Some((
            format!("`{machine}` uses {listed} but its scopes leave out `cloud-platform`"),
            "Secret Manager takes only the cloud-platform scope".to_string(),
            "add `cloud-platform` to `scopes` (its IAM roles then decide what it may do), or remove `scopes` for the default".to_string(),
        ));
    }
    None
}
