//! Renders the files each machine needs — what Chef used to lay down — from the fleet file,
//! with the handlebars templates in `templates/` (embedded at build time).
//!
//! In: per-machine render inputs built by `spec::expand`. Out: file contents by metadata key
//! (`gitlab-runner-config`, `prometheus-config`, `user-data`, …), and for config.toml every
//! key gitlab-runner does not know, with the fleet-file span it came from. Templates render
//! in strict mode: a missing variable is an error, never an empty string.

mod keys;
pub mod toml_doc;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use handlebars::Handlebars;
use miette::SourceSpan;
use serde::Serialize;

use crate::provider::{Cloud, Networking};
pub use toml_doc::{Table, Value};

/// Metadata key of `/etc/gitlab-runner/config.toml`.
pub const RUNNER_CONFIG: &str = "gitlab-runner-config";
/// Metadata key of the pinned gitlab-runner version.
pub const RUNNER_VERSION: &str = "gitlab-runner-version";
/// Metadata key of `/etc/prometheus/prometheus.yml`.
pub const PROMETHEUS_CONFIG: &str = "prometheus-config";
/// Metadata key of the cloud-init bootstrap.
pub const USER_DATA: &str = "user-data";
/// Metadata key carrying secret values to the machine, set at apply time only.
pub const SECRETS: &str = "fleet-secrets";

/// Where each delivered file lands on the machine.
pub const FILES: &[(&str, &str)] = &[
    (RUNNER_CONFIG, "etc/gitlab-runner/config.toml"),
    (RUNNER_VERSION, "etc/gitlab-runner/version"),
    (PROMETHEUS_CONFIG, "etc/prometheus/prometheus.yml"),
    (USER_DATA, "var/lib/cloud/user-data.yaml"),
];

/// The path on the machine of a metadata key.
pub fn file_path(key: &str) -> Option<&'static str> {
    FILES.iter().find(|(k, _)| *k == key).map(|(_, path)| *path)
}

/// The default graceful-shutdown wait: the seeds' `runner_upgrade.sh` waits 7200 minutes.
pub const DEFAULT_SHUTDOWN_TIMEOUT: i64 = 7200 * 60;

/// A rendering failure: a template bug or a value the template cannot take.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rendering {file} for {machine}: {message}")]
pub struct RenderError {
    /// The file.
    pub file: String,
    /// The machine.
    pub machine: String,
    /// What went wrong.
    pub message: String,
}

/// An autoscale template as a runner sees it.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    /// Cloud.
    pub cloud: Cloud,
    /// The versioned cloud name.
    pub cloud_name: String,
    /// GCP project.
    pub project: Option<String>,
    /// Region.
    pub region: String,
    /// Zone where its machines are made.
    pub zone: String,
    /// Machine type.
    pub machine_type: String,
    /// Image.
    pub image: String,
    /// Disk type.
    pub disk_type: String,
    /// Disk size in GB.
    pub disk_size_gb: u32,
    /// Network, subnet, security groups.
    pub networking: Networking,
}

/// One runner of a manager or host.
#[derive(Debug, Clone)]
pub struct RunnerInput {
    /// Its name.
    pub name: String,
    /// Where the name is written.
    pub name_span: SourceSpan,
    /// Executor.
    pub executor: String,
    /// The template its machines come from, for autoscaling executors.
    pub template: Option<TemplateInfo>,
    /// The `[[runners]]` keys from the fleet file.
    pub config: Table,
}

/// Everything config.toml is made of.
#[derive(Debug, Clone)]
pub struct ManagerInput {
    /// The fleet.
    pub fleet: String,
    /// The fleet file.
    pub source: String,
    /// The machine's name.
    pub machine: String,
    /// The global section from the fleet file (`runner:` without `version`).
    pub global: Table,
    /// The runners.
    pub runners: Vec<RunnerInput>,
}

/// A key in config.toml that gitlab-runner does not know.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownKey {
    /// The section as written in config.toml (`[[runners]]`, `[runners.docker]`).
    pub section: String,
    /// The key.
    pub key: String,
    /// Where the fleet file wrote it (`None`: it came from a template).
    pub span: Option<SourceSpan>,
    /// The closest key gitlab-runner knows there.
    pub suggestion: Option<&'static str>,
}

/// A rendered config.toml.
#[derive(Debug, Clone)]
pub struct RenderedConfig {
    /// The file.
    pub text: String,
    /// Keys gitlab-runner would ignore.
    pub unknown_keys: Vec<UnknownKey>,
}

fn registry() -> &'static Handlebars<'static> {
    static REGISTRY: OnceLock<Handlebars<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        for (name, text) in [
            (
                "config.toml",
                include_str!("../../../templates/config.toml.hbs"),
            ),
            (
                "prometheus.yml",
                include_str!("../../../templates/prometheus.yml.hbs"),
            ),
            (
                "bootstrap",
                include_str!("../../../templates/bootstrap.yaml.hbs"),
            ),
        ] {
            // The templates are part of the build: a broken one fails every test at once.
            if let Err(error) = registry.register_template_string(name, text) {
                panic!("template {name} does not parse: {error}");
            }
        }
        registry
    })
}

fn render(template: &str, machine: &str, data: &impl Serialize) -> Result<String, RenderError> {
    registry()
        .render(template, data)
        .map_err(|error| RenderError {
            file: template.to_string(),
            machine: machine.to_string(),
            message: error.to_string(),
        })
}

/// The machine options, name and driver the autoscaling sections get from a template, so one
/// source feeds both the cloud template and the runner config.
fn autoscaling_from_template(
    runner: &RunnerInput,
    template: &TemplateInfo,
    fleet: &str,
) -> (String, Table) {
    let labels = format!(
        "fleet:{fleet},fleet-role:autoscaled,fleet-template:{}",
        template.cloud_name
    );
    if runner.executor == "docker-autoscaler" {
        let mut plugin_config: Table =
            vec![("name".into(), None, Value::Str(template.cloud_name.clone()))];
        let plugin = match template.cloud {
            Cloud::Gcp => {
                plugin_config.push((
                    "project".into(),
                    None,
                    Value::Str(template.project.clone().unwrap_or_default()),
                ));
                plugin_config.push(("zone".into(), None, Value::Str(template.zone.clone())));
                "googlecompute"
            }
            Cloud::Aws => {
                plugin_config.push(("region".into(), None, Value::Str(template.region.clone())));
                "aws"
            }
        };
        let table = vec![
            ("plugin".into(), None, Value::Str(plugin.into())),
            ("plugin_config".into(), None, Value::Table(plugin_config)),
        ];
        return ("autoscaler".to_string(), table);
    }
    let (driver, options): (&str, Vec<String>) = match template.cloud {
        Cloud::Gcp => (
            "google",
            vec![
                format!(
                    "google-project={}",
                    template.project.clone().unwrap_or_default()
                ),
                format!("google-zone={}", template.zone),
                format!("google-machine-type={}", template.machine_type),
                format!("google-machine-image={}", template.image),
                format!("google-disk-type={}", template.disk_type),
                format!("google-disk-size={}", template.disk_size_gb),
                format!("google-labels={labels}"),
            ]
            .into_iter()
            .chain(
                (template.networking.network.as_ref())
                    .map(|network| format!("google-network={network}")),
            )
            .chain(
                (template.networking.subnet.as_ref())
                    .map(|subnet| format!("google-subnetwork={subnet}")),
            )
            .collect(),
        ),
        Cloud::Aws => (
            "amazonec2",
            vec![
                format!("amazonec2-region={}", template.region),
                format!(
                    "amazonec2-zone={}",
                    template.zone.trim_start_matches(&template.region)
                ),
                format!("amazonec2-instance-type={}", template.machine_type),
                format!("amazonec2-ami={}", template.image),
                format!("amazonec2-volume-type={}", template.disk_type),
                format!("amazonec2-root-size={}", template.disk_size_gb),
                format!(
                    "amazonec2-tags=fleet,{fleet},fleet-role,autoscaled,fleet-template,{}",
                    template.cloud_name
                ),
            ]
            .into_iter()
            .chain(
                template
                    .networking
                    .subnet
                    .as_ref()
                    .map(|subnet| format!("amazonec2-subnet-id={subnet}")),
            )
            .collect(),
        ),
    };
    let machine_name: String = runner
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let table = vec![
        ("MachineDriver".into(), None, Value::Str(driver.into())),
        (
            "MachineName".into(),
            None,
            Value::Str(format!("{machine_name}-%s")),
        ),
        (
            "MachineOptions".into(),
            None,
            Value::Array(options.into_iter().map(Value::Str).collect()),
        ),
    ];
    ("machine".to_string(), table)
}

/// Merges fleet-made entries under the user's: the user's scalars win; `MachineOptions`
/// lists are joined (fleet's first).
fn merge(made: Table, user: &Table) -> Table {
    let mut out = made;
    for (key, span, value) in user {
        match out.iter_mut().find(|(k, _, _)| k == key) {
            Some(existing) => match (&mut existing.2, value) {
                (Value::Array(mine), Value::Array(theirs)) if key == "MachineOptions" => {
                    mine.extend(theirs.iter().cloned());
                    existing.1 = *span;
                }
                (Value::Table(mine), Value::Table(theirs)) => {
                    *mine = merge(std::mem::take(mine), theirs);
                    existing.1 = *span;
                }
                (slot, value) => {
                    *slot = value.clone();
                    existing.1 = *span;
                }
            },
            None => out.push((key.clone(), *span, value.clone())),
        }
    }
    out
}

#[derive(Serialize)]
struct ConfigData<'a> {
    fleet: &'a str,
    source: &'a str,
    machine: &'a str,
    blocks: Vec<toml_doc::Block>,
}

/// Renders config.toml and checks every key against gitlab-runner's.
///
/// # Errors
/// A template failure, or output that is not valid TOML.
pub fn config_toml(input: &ManagerInput) -> Result<RenderedConfig, RenderError> {
    // The Prometheus helpers scrape runner metrics on :9252 unless the fleet file says otherwise.
    let defaults: Table = vec![("listen_address".into(), None, Value::Str(":9252".into()))];
    let mut root = merge(defaults, &input.global);
    let mut runners = Vec::new();
    for runner in &input.runners {
        let mut table: Table = vec![
            (
                "name".into(),
                Some(runner.name_span),
                Value::Str(runner.name.clone()),
            ),
            ("executor".into(), None, Value::Str(runner.executor.clone())),
        ];
        if let Some(template) = &runner.template {
            let (section, made) = autoscaling_from_template(runner, template, &input.fleet);
            let user_section = runner.config.iter().find(|(k, _, _)| *k == section);
            let merged = match user_section {
                Some((_, _, Value::Table(user))) => merge(made, user),
                _ => made,
            };
            let rest: Table = runner
                .config
                .iter()
                .filter(|(k, _, _)| *k != section)
                .cloned()
                .collect();
            table = merge(table, &rest);
            table.push((section, None, Value::Table(merged)));
        } else {
            table = merge(table, &runner.config);
        }
        runners.push(Value::Table(table));
    }
    if !runners.is_empty() {
        root.push(("runners".into(), None, Value::Array(runners)));
    }
    let mut doc = toml_doc::Doc::default();
    doc.add_table("", None, 0, &root);
    let text = render(
        "config.toml",
        &input.machine,
        &ConfigData {
            fleet: &input.fleet,
            source: &input.source,
            machine: &input.machine,
            blocks: doc.blocks.clone(),
        },
    )?;
    let parsed: toml::Table = toml::from_str(&text).map_err(|error| RenderError {
        file: "config.toml".into(),
        machine: input.machine.clone(),
        message: format!("the rendered file is not valid TOML: {error}"),
    })?;
    let mut unknown_keys = Vec::new();
    check_keys("", &parsed, &doc, &mut unknown_keys);
    Ok(RenderedConfig { text, unknown_keys })
}

fn check_keys(path: &str, table: &toml::Table, doc: &toml_doc::Doc, out: &mut Vec<UnknownKey>) {
    let section = keys::section(path);
    for (key, value) in table {
        if let keys::Section::Keys(known) = section {
            if !known.contains(&key.as_str()) {
                out.push(UnknownKey {
                    section: keys::header(path),
                    key: key.clone(),
                    span: doc.origin(path, key),
                    suggestion: crate::spec::diagnostic::closest(key, known.iter().copied()),
                });
                continue;
            }
        } else {
            continue;
        }
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match value {
            toml::Value::Table(inner) => check_keys(&child, inner, doc, out),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        check_keys(&child, inner, doc, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A group of machines a Prometheus helper discovers on GCE.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct GceTarget {
    /// Project.
    pub project: String,
    /// Zone.
    pub zone: String,
}

/// Everything prometheus.yml is made of.
#[derive(Debug, Clone, Serialize)]
pub struct PrometheusInput {
    /// The fleet.
    pub fleet: String,
    /// The fleet file.
    pub source: String,
    /// The machine.
    pub machine: String,
    /// Scrape interval.
    pub scrape_interval: String,
    /// GCE zones with managers to scrape.
    pub gce: Vec<GceTarget>,
    /// AWS regions with managers to scrape.
    pub ec2: Vec<String>,
    /// `/federate` targets.
    pub federate: Vec<String>,
}

/// Renders prometheus.yml.
///
/// # Errors
/// A template failure.
pub fn prometheus_yml(input: &PrometheusInput) -> Result<String, RenderError> {
    render("prometheus.yml", &input.machine, input)
}

/// Everything the bootstrap is made of.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapInput {
    /// The fleet.
    pub fleet: String,
    /// The fleet file.
    pub source: String,
    /// The machine.
    pub machine: String,
    /// `runner-manager`, `prometheus`, `builder`, …
    pub role: String,
    /// `gcp`, `aws` or `none` (a static host).
    pub cloud: String,
    /// Whether the machine runs gitlab-runner.
    pub runs_runner: bool,
    /// Whether the machine runs Prometheus.
    pub runs_prometheus: bool,
    /// The pinned gitlab-runner version.
    pub runner_version: String,
    /// Seconds gitlab-runner may take to stop gracefully.
    pub shutdown_timeout: i64,
    /// Whether a watcher applies config delivered later through metadata (GCE); otherwise the
    /// files are fixed at boot (EC2 user data, static hosts).
    pub watch_metadata: bool,
}

/// Renders the cloud-init bootstrap.
///
/// # Errors
/// A template failure.
pub fn bootstrap(input: &BootstrapInput) -> Result<String, RenderError> {
    render("bootstrap", &input.machine, input)
}

/// Replaces every `${secret:NAME}` reference with `(sensitive)`, for display.
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${secret:") {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => {
                out.push_str("(sensitive)");
                rest = &rest[start + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The names of every `${secret:NAME}` reference in a text.
pub fn secret_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${secret:") {
        let after = &rest[start + "${secret:".len()..];
        match after.find('}') {
            Some(end) => {
                names.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    names
}

/// Files of one machine by metadata key.
pub type Files = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_in_strict_mode() {
        let error = render(
            "prometheus.yml",
            "m",
            &serde_json::json!({ "fleet": "f", "machine": "m" }),
        )
        .expect_err("a missing variable rendered as nothing");
        assert!(
            error.message.contains("scrape_interval"),
            "{}",
            error.message
        );
    }

    #[test]
    fn secrets_are_masked_and_named() {
        let text = "token = \"${secret:A_1}\"\nother = \"${secret:B}\"\n";
        assert_eq!(
            mask_secrets(text),
            "token = \"(sensitive)\"\nother = \"(sensitive)\"\n"
        );
        assert_eq!(secret_names(text), ["A_1", "B"]);
    }
}
