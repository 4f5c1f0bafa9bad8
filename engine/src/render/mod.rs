//! Renders the files each machine needs — what Chef used to lay down — from the fleet file,
//! with the handlebars templates in `templates/` (embedded at build time).
//!
//! In: per-machine render inputs built by `fleet` (from `spec::expand`'s machines). Out: file
//! contents by metadata key (`gitlab-runner-config`, `prometheus-config`, `user-data`, …),
//! and for config.toml every problem gitlab-runner would have with it (an unknown key, a
//! value of the wrong type or out of range, two runners of one name), with the fleet-file
//! span it came from. Templates render
//! in strict mode: a missing variable is an error, never an empty string. No value is pasted
//! in raw: the templates quote each one for where it lands (`yaml`, `sh`, `comment` helpers),
//! and `toml_doc` quotes TOML strings. `delivery` turns a machine's files into what its cloud
//! is sent (GCE metadata items, the EC2 user-data document) and checks it fits; `fleet` is
//! the stage that renders a whole expanded fleet into the desired set, and `show` lays out each
//! machine's delivery for `fleet render`.

pub mod delivery;
mod fleet;
mod keys;
pub mod show;
pub mod toml_doc;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use handlebars::Handlebars;
use miette::SourceSpan;
use serde::Serialize;

use crate::provider::{Cloud, Networking};
use crate::spec::diagnostic::{closest, ProblemKind};
pub use fleet::fleet;
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
    /// Where the executor is written (`None`: fleet's default).
    pub executor_span: Option<SourceSpan>,
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

/// A problem gitlab-runner would have with a rendered config.toml: a key it does not know, a
/// value of the wrong type or out of range, two runners of one name.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    /// What kind of problem, for the diagnostic's code.
    pub kind: ProblemKind,
    /// Where the fleet file wrote it (`None`: it came from a template).
    pub span: Option<SourceSpan>,
    /// The summary ("Unknown config.toml key `request_concurency` in [[runners]]").
    pub message: String,
    /// What to say at the span.
    pub label: String,
    /// How to fix it.
    pub help: String,
    /// Another place that matters (the first of two runners of one name).
    pub secondary: Option<(SourceSpan, String)>,
}

/// A rendered config.toml.
#[derive(Debug, Clone)]
pub struct RenderedConfig {
    /// The file.
    pub text: String,
    /// What gitlab-runner would ignore, refuse or stop on.
    pub problems: Vec<ConfigProblem>,
}

fn registry() -> &'static Handlebars<'static> {
    static REGISTRY: OnceLock<Handlebars<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        // Nothing is pasted in as it is: each template quotes every value for the place it lands
        // with these helpers (TOML values are quoted by `toml_doc` before they get here).
        registry.register_escape_fn(handlebars::no_escape);
        registry.register_helper("yaml", Box::new(yaml_helper));
        registry.register_helper("sh", Box::new(sh_helper));
        registry.register_helper("comment", Box::new(comment_helper));
        registry.register_helper("concat", Box::new(concat_helper));
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

/// The text of a template value: strings as they are, anything else as JSON.
fn text_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A YAML double-quoted scalar: the same text back from any YAML parser, whatever it holds.
pub fn yaml_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One POSIX shell word: single-quoted, each `'` written as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A value fit for a `#` comment: one line, whatever it holds.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

handlebars::handlebars_helper!(yaml_helper: |value: Json| match value {
    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => value.to_string(),
    other => yaml_quote(&text_of(other)),
});
handlebars::handlebars_helper!(sh_helper: |value: Json| shell_quote(&text_of(value)));
handlebars::handlebars_helper!(comment_helper: |value: Json| comment_text(&text_of(value)));
handlebars::handlebars_helper!(concat_helper: |*args| args.iter().map(|a| text_of(a)).collect::<String>());

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
            (
                "executor".into(),
                runner.executor_span,
                Value::Str(runner.executor.clone()),
            ),
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
    doc.add_table("", "", None, 0, &root);
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
    let mut problems = Vec::new();
    check_table("", "", &parsed, &doc, &mut problems);
    problems.extend(duplicate_runner_names(&input.runners));
    Ok(RenderedConfig { text, problems })
}

/// Two runners of one name in one config.toml: gitlab-runner logs and reports them under one
/// name, and fleet's watcher tells their restarts apart by name.
fn duplicate_runner_names(runners: &[RunnerInput]) -> Vec<ConfigProblem> {
    let mut seen: BTreeMap<&str, SourceSpan> = BTreeMap::new();
    let mut problems = Vec::new();
    for runner in runners {
        match seen.get(runner.name.as_str()) {
            Some(first) => problems.push(ConfigProblem {
                kind: ProblemKind::DuplicateName,
                span: Some(runner.name_span),
                message: format!("Duplicate runner name `{}`", runner.name),
                label: "a runner of this machine already has this name".to_string(),
                help: "give each runner of a machine its own name, e.g. with a suffix naming \
                       the GitLab instance it serves"
                    .to_string(),
                secondary: Some((*first, "the first runner of this name".to_string())),
            }),
            None => {
                seen.insert(&runner.name, runner.name_span);
            }
        }
    }
    problems
}

/// Checks every key of one table as gitlab-runner reads it: known keys, then value types and
/// ranges. `path` is the section (`runners.docker`), `at` the exact table (`runners[1].docker`).
fn check_table(
    path: &str,
    at: &str,
    table: &toml::Table,
    doc: &toml_doc::Doc,
    out: &mut Vec<ConfigProblem>,
) {
    let keys::Section::Keys(known) = keys::section(path) else {
        return;
    };
    for (key, value) in table {
        let span = doc.origin(at, key);
        if !known.contains(&key.as_str()) {
            let suggestion = closest(key, known.iter().copied());
            let section = keys::header(path);
            out.push(ConfigProblem {
                kind: ProblemKind::UnknownKey,
                span,
                message: format!("Unknown config.toml key `{key}` in {section}"),
                label: match suggestion {
                    Some(s) => format!("not a key of {section}; did you mean `{s}`?"),
                    None => format!("not a key of {section}"),
                },
                help: match suggestion {
                    Some(s) => format!("did you mean `{s}`? gitlab-runner ignores keys it does not know, so this line would do nothing"),
                    None => "gitlab-runner ignores keys it does not know, so this line would do nothing; check the spelling against gitlab-runner's config.toml reference".to_string(),
                },
                secondary: None,
            });
            continue;
        }
        if let Some(kind) = keys::kind(path, key) {
            if let Some(problem) = check_value(path, key, value, kind) {
                out.push(ConfigProblem { span, ..problem });
            }
        }
        let child = join(path, key);
        let child_at = join(at, key);
        match value {
            toml::Value::Table(inner) => check_table(&child, &child_at, inner, doc, out),
            toml::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        check_table(&child, &format!("{child_at}[{index}]"), inner, doc, out);
                    }
                }
            }
            _ => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A value as a message shows it: its type and text.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("the string `{text:?}`"),
        toml::Value::Integer(number) => format!("the number `{number}`"),
        toml::Value::Float(number) => format!("the number `{number}`"),
        toml::Value::Boolean(flag) => format!("the boolean `{flag}`"),
        toml::Value::Datetime(time) => format!("the date `{time}`"),
        toml::Value::Array(_) => "a list".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// Keys gitlab-runner reads as whole seconds.
const SECONDS: &[&str] = &[
    "shutdown_timeout",
    "check_interval",
    "session_timeout",
    "IdleTime",
    "OffPeakIdleTime",
    "wait_for_services_timeout",
];

/// Whether a string holds a secret reference, whose value fleet never sees at plan time.
fn is_secret(text: &str) -> bool {
    text.contains("${secret:")
}

/// Checks one value against the kind gitlab-runner reads it as; the returned problem has no
/// span yet.
fn check_value(
    path: &str,
    key: &str,
    value: &toml::Value,
    kind: keys::Kind,
) -> Option<ConfigProblem> {
    use keys::Kind;
    let section = keys::header(path);
    let wrong_type = |expected: &str, help: String| ConfigProblem {
        kind: ProblemKind::WrongType,
        span: None,
        message: format!("Wrong type for config.toml key `{key}` in {section}"),
        label: format!("{} where gitlab-runner reads {expected}", describe(value)),
        help,
        secondary: None,
    };
    let invalid = |label: String, help: String| ConfigProblem {
        kind: ProblemKind::InvalidValue,
        span: None,
        message: format!("Invalid config.toml value for `{key}` in {section}"),
        label,
        help,
        secondary: None,
    };
    let refuses = "gitlab-runner refuses to load a config.toml with a value of the wrong type";
    match (kind, value) {
        (Kind::Int { min }, toml::Value::Integer(number)) if *number < min => {
            let help = if key == "concurrent" {
                "gitlab-runner exits with a fatal error when `concurrent` is below 1; set it to how many jobs this machine may run at once, e.g. `concurrent: 10`".to_string()
            } else {
                format!("`{key}` is at least {min}")
            };
            Some(invalid(format!("`{number}` is below {min}"), help))
        }
        (Kind::Int { .. }, toml::Value::Integer(_)) => None,
        (Kind::Int { .. }, other) => {
            let unit = if SECONDS.contains(&key) { " of seconds" } else { "" };
            let help = match other {
                toml::Value::String(text) if text.trim().parse::<i64>().is_ok() => {
                    format!("write the number without quotes: `{key}: {}`; {refuses}", text.trim())
                }
                _ => format!("write `{key}` as a whole number{unit}, e.g. `{key}: {}`; {refuses}", if unit.is_empty() { "10" } else { "3600" }),
            };
            Some(wrong_type(&format!("a whole number{unit}"), help))
        }
        (Kind::Float, toml::Value::Float(_) | toml::Value::Integer(_)) => None,
        (Kind::Float, _) => Some(wrong_type(
            "a number",
            format!("write `{key}` as a number without quotes, e.g. `{key}: 0.5`; {refuses}"),
        )),
        (Kind::Bool, toml::Value::Boolean(_)) => None,
        (Kind::Bool, other) => {
            let help = match other {
                toml::Value::String(text) => format!(
                    "write `{key}: true` or `{key}: false` without quotes; YAML 1.2 reads `{text}` as a string, and {refuses}"
                ),
                _ => format!("write `{key}: true` or `{key}: false`; {refuses}"),
            };
            Some(wrong_type("a boolean", help))
        }
        (Kind::MachineName, toml::Value::String(text)) if text.contains("%s") => None,
        (Kind::MachineName, toml::Value::String(text)) => Some(invalid(
            format!("`{text}` has no `%s`"),
            format!("gitlab-runner names each autoscaled machine from `MachineName` with `%s` replaced by its unique part, so every name would be the same; write e.g. `MachineName: \"{text}-%s\"`"),
        )),
        (Kind::MachineName, _) => Some(wrong_type(
            "a string",
            format!("write `MachineName` as a string holding `%s`, e.g. `MachineName: \"runner-%s\"`; {refuses}"),
        )),
        (Kind::Str | Kind::Url | Kind::Duration | Kind::Enum(_), toml::Value::String(text))
            if is_secret(text) =>
        {
            None
        }
        (Kind::Str, toml::Value::String(_)) => None,
        (Kind::Str, _) => Some(wrong_type(
            "a string",
            format!("put the value in quotes so it stays a string; {refuses}"),
        )),
        (Kind::Url, toml::Value::String(text)) if keys::is_url(text) => None,
        (Kind::Url, toml::Value::String(text)) => {
            let host = text.split_once("://").map_or(text.as_str(), |(_, rest)| rest);
            Some(invalid(
                format!("`{text}` is not a URL with a scheme and a host"),
                format!("gitlab-runner needs the whole address: write `{key}: https://{}`", host.trim_start_matches('/')),
            ))
        }
        (Kind::Url, _) => Some(wrong_type(
            "a URL",
            format!("write the GitLab address as a string, e.g. `{key}: https://gitlab.com/`"),
        )),
        (Kind::Duration, toml::Value::String(text)) if keys::is_go_duration(text) => None,
        (Kind::Duration, toml::Value::String(text)) => Some(invalid(
            format!("`{text}` is not a duration"),
            "write a duration as gitlab-runner reads it (Go's time.ParseDuration): numbers with units, e.g. `30m`, `1h30m`, `90s`; the units are h, m, s, ms, us and ns".to_string(),
        )),
        (Kind::Duration, toml::Value::Integer(number)) => Some(wrong_type(
            "a duration string",
            format!("a bare number here is read as nanoseconds; write it with a unit, e.g. `{key}: \"{number}s\"`"),
        )),
        (Kind::Duration, _) => Some(wrong_type(
            "a duration string",
            format!("write a duration such as `{key}: \"30m\"`; {refuses}"),
        )),
        (Kind::Enum(allowed), toml::Value::String(text)) => check_enum(key, text, allowed, &invalid),
        (Kind::Enum(allowed), _) => Some(wrong_type(
            "a string",
            format!("`{key}` is one of {}", allowed.join(", ")),
        )),
        (Kind::StrList, toml::Value::Array(items))
            if items.iter().all(toml::Value::is_str) =>
        {
            None
        }
        (Kind::StrList, _) => Some(wrong_type(
            "a list of strings",
            format!("write `{key}` as a list of strings, e.g. `{key}: [\"...\"]`; {refuses}"),
        )),
        (Kind::EnumOrList(allowed), toml::Value::String(text)) => {
            check_enum(key, text, allowed, &invalid)
        }
        (Kind::EnumOrList(allowed), toml::Value::Array(items)) => items.iter().find_map(|item| match item {
            toml::Value::String(text) => check_enum(key, text, allowed, &invalid),
            other => Some(wrong_type(
                "a list of strings",
                format!("{} in the list is not one of {}", describe(other), allowed.join(", ")),
            )),
        }),
        (Kind::EnumOrList(allowed), _) => Some(wrong_type(
            "a string or a list of strings",
            format!("`{key}` is one of {}, or a list of them", allowed.join(", ")),
        )),
    }
}

fn check_enum(
    key: &str,
    text: &str,
    allowed: &[&'static str],
    invalid: &dyn Fn(String, String) -> ConfigProblem,
) -> Option<ConfigProblem> {
    if allowed.contains(&text) || is_secret(text) {
        return None;
    }
    let listed = allowed.join(", ");
    let help = match closest(text, allowed.iter().copied()) {
        Some(suggestion) => format!("did you mean `{suggestion}`? `{key}` is one of {listed}"),
        None => format!("`{key}` is one of {listed}"),
    };
    Some(invalid(
        format!("`{text}` is not one of gitlab-runner's `{key}` values"),
        help,
    ))
}

/// A machine a Prometheus helper's `scrape:` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScrapeTarget {
    /// Its cloud name (the GCE instance name, the EC2 `Name` tag).
    pub name: String,
    /// Its cloud.
    pub cloud: Cloud,
    /// GCP project.
    pub project: Option<String>,
    /// Zone.
    pub zone: String,
    /// Region.
    pub region: String,
}

/// An autoscale template whose machines a Prometheus helper scrapes: those of a scraped
/// manager's runners, or a template `scrape:` names.
#[derive(Debug, Clone)]
pub struct ScrapedTemplate {
    /// Its fleet-file name (the `fleet-resource` label of the machines its group makes).
    pub name: String,
    /// The template itself.
    pub info: TemplateInfo,
}

/// Everything prometheus.yml is made of.
#[derive(Debug, Clone)]
pub struct PrometheusInput {
    /// The fleet.
    pub fleet: String,
    /// The fleet file.
    pub source: String,
    /// The machine.
    pub machine: String,
    /// Scrape interval, a Prometheus duration (checked by [`check_prometheus_duration`]).
    pub scrape_interval: String,
    /// The runner managers `scrape:` names: their gitlab-runner metrics are scraped.
    pub managers: Vec<ScrapeTarget>,
    /// Every machine `scrape:` names, managers included: their node exporters are scraped.
    pub machines: Vec<ScrapeTarget>,
    /// Templates whose autoscaled machines' node exporters are scraped.
    pub templates: Vec<ScrapedTemplate>,
    /// `/federate` targets.
    pub federate: Vec<String>,
}

/// A GCE zone to discover in, with the label filter of its job.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct GceZone {
    project: String,
    zone: String,
    filter: String,
}

/// One scrape job's discovery and its `keep` rule.
#[derive(Debug, Serialize)]
struct JobView {
    gce: Vec<GceZone>,
    ec2: Vec<String>,
    /// `;`-joined source labels the keep rule reads, and the regex they must match.
    keep_labels: Vec<&'static str>,
    keep: String,
}

#[derive(Serialize)]
struct PrometheusView<'a> {
    fleet: &'a str,
    machine: &'a str,
    scrape_interval: &'a str,
    scrape_timeout: Option<&'a str>,
    managers: JobView,
    node: JobView,
    federate: &'a [String],
}

/// A string literal of a GCE list filter.
fn gce_filter_literal(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An RE2 pattern matching exactly one of `names`, each matched literally.
fn any_of(names: &[String]) -> String {
    let escaped: Vec<String> = names.iter().map(|name| regex_literal(name)).collect();
    format!("({})", escaped.join("|"))
}

fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        if "\\.+*?()|[]{}^$".contains(character) {
            out.push('\\');
        }
        out.push(character);
    }
    out
}

/// Milliseconds of a Prometheus duration (`15s`, `1m30s`, `0`), as Prometheus reads it:
/// units y, w, d, h, m, s, ms, each at most once and in that order.
pub fn prometheus_duration_ms(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = text;
    let mut next_unit = 0;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // `ms` before `m`, so `5ms` is not five minutes and an `s`.
        let (index, (unit, factor)) = UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, (unit, _))| rest.starts_with(unit))
            .max_by_key(|(_, (unit, _))| unit.len())?;
        rest = &rest[unit.len()..];
        next_unit = index + 1;
        total = total.checked_add(number.checked_mul(*factor)?)?;
    }
    Some(total)
}

/// Whether a scrape interval is one Prometheus accepts; the error says how to write one.
///
/// # Errors
/// The value is not a Prometheus duration, or is zero.
pub fn check_prometheus_duration(text: &str) -> Result<(), String> {
    match prometheus_duration_ms(text) {
        Some(0) => Err("a scrape interval of 0 never scrapes; use e.g. `15s` or `1m`".to_string()),
        Some(_) => Ok(()),
        None => Err("write a Prometheus duration: a number and a unit, e.g. `15s`, `1m` or `1m30s`; the units are y, w, d, h, m, s and ms, largest first".to_string()),
    }
}

/// Renders prometheus.yml: the runner-manager job keeps exactly the managers `scrape:` names,
/// the node job exactly the machines it names and the autoscaled machines of their templates.
///
/// # Errors
/// A scrape interval Prometheus does not accept, or a template failure.
pub fn prometheus_yml(input: &PrometheusInput) -> Result<String, RenderError> {
    let interval_ms =
        prometheus_duration_ms(&input.scrape_interval).ok_or_else(|| RenderError {
            file: "prometheus.yml".into(),
            machine: input.machine.clone(),
            message: format!("`{}` is not a Prometheus duration", input.scrape_interval),
        })?;
    let fleet = gce_filter_literal(&input.fleet);
    let gce_zones = |targets: &mut dyn Iterator<Item = (&Option<String>, &String)>,
                     filter: &str| {
        let zones: std::collections::BTreeSet<GceZone> = targets
            .map(|(project, zone)| GceZone {
                project: project.clone().unwrap_or_default(),
                zone: zone.clone(),
                filter: filter.to_string(),
            })
            .collect();
        zones.into_iter().collect::<Vec<_>>()
    };
    let regions = |targets: &mut dyn Iterator<Item = &String>| {
        let regions: std::collections::BTreeSet<String> = targets.cloned().collect();
        regions.into_iter().collect::<Vec<_>>()
    };
    let names = |targets: &[ScrapeTarget]| -> Vec<String> {
        targets.iter().map(|t| t.name.clone()).collect()
    };
    let managers = JobView {
        gce: gce_zones(
            &mut input
                .managers
                .iter()
                .filter(|t| t.cloud == Cloud::Gcp)
                .map(|t| (&t.project, &t.zone)),
            &format!("(labels.fleet = {fleet}) AND (labels.fleet-role = \"runner-manager\")"),
        ),
        ec2: regions(
            &mut input
                .managers
                .iter()
                .filter(|t| t.cloud == Cloud::Aws)
                .map(|t| &t.region),
        ),
        keep_labels: vec!["instance"],
        keep: any_of(&names(&input.managers)),
    };
    let template_gce = input
        .templates
        .iter()
        .filter(|t| t.info.cloud == Cloud::Gcp)
        .map(|t| (&t.info.project, &t.info.zone));
    let template_ec2 = input
        .templates
        .iter()
        .filter(|t| t.info.cloud == Cloud::Aws)
        .map(|t| &t.info.region);
    // A machine is kept if its name is one `scrape:` names, if docker-machine made it from one
    // of the templates (its `fleet-template` label), or if a template's instance group made it
    // (labelled as the template: `fleet-kind` template, `fleet-resource` its name).
    let mut keep = vec![format!("{};.*;.*;.*", any_of(&names(&input.machines)))];
    if !input.templates.is_empty() {
        let versioned: Vec<String> = input
            .templates
            .iter()
            .map(|t| t.info.cloud_name.clone())
            .collect();
        let named: Vec<String> = input.templates.iter().map(|t| t.name.clone()).collect();
        keep.push(format!(".*;{};.*;.*", any_of(&versioned)));
        keep.push(format!(".*;.*;template;{}", any_of(&named)));
    }
    let node = JobView {
        gce: gce_zones(
            &mut input
                .machines
                .iter()
                .filter(|t| t.cloud == Cloud::Gcp)
                .map(|t| (&t.project, &t.zone))
                .chain(template_gce),
            &format!("labels.fleet = {fleet}"),
        ),
        ec2: regions(
            &mut input
                .machines
                .iter()
                .filter(|t| t.cloud == Cloud::Aws)
                .map(|t| &t.region)
                .chain(template_ec2),
        ),
        keep_labels: vec![
            "instance",
            "__tmp_fleet_template",
            "__tmp_fleet_kind",
            "__tmp_fleet_resource",
        ],
        keep: keep.join("|"),
    };
    // Prometheus refuses a scrape timeout (10s unless set) longer than the interval.
    let scrape_timeout = (interval_ms < 10_000).then_some(input.scrape_interval.as_str());
    render(
        "prometheus.yml",
        &input.machine,
        &PrometheusView {
            fleet: &input.fleet,
            machine: &input.machine,
            scrape_interval: &input.scrape_interval,
            scrape_timeout,
            managers,
            node,
            federate: &input.federate,
        },
    )
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

/// Replaces every `${secret:NAME}` reference with `(secret NAME)`, for the diffs a reviewer
/// reads: the name is no value, and a reference changed to another secret must show.
pub fn mask_secrets_named(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${secret:") {
        out.push_str(&rest[..start]);
        let name_from = start + "${secret:".len();
        match rest[name_from..].find('}') {
            Some(end) => {
                out.push_str(&format!("(secret {})", &rest[name_from..name_from + end]));
                rest = &rest[name_from + end + 1..];
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
        assert!(error.message.contains("line 5"), "{}", error.message);
    }

    fn yaml(text: &str) -> yaml_rust2::Yaml {
        let mut docs = yaml_rust2::YamlLoader::load_from_str(text)
            .unwrap_or_else(|error| panic!("not YAML: {error}\n{text}"));
        docs.remove(0)
    }

    fn prometheus_input(federate: &[&str]) -> PrometheusInput {
        let manager = |name: &str| ScrapeTarget {
            name: name.into(),
            cloud: Cloud::Gcp,
            project: Some("p".into()),
            zone: "us-east1-c".into(),
            region: "us-east1".into(),
        };
        PrometheusInput {
            fleet: "f".into(),
            source: "f.yaml".into(),
            machine: "prometheus-1".into(),
            scrape_interval: "5s".into(),
            managers: vec![manager("manager-1"), manager("manager.2")],
            machines: vec![manager("manager-1"), manager("manager.2")],
            templates: Vec::new(),
            federate: federate.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn a_value_with_a_quote_lands_escaped_in_prometheus_yml() {
        let text = prometheus_yml(&prometheus_input(&["a\"b:9090", "it's:9090"])).unwrap();
        let doc = yaml(&text);
        let federate = doc["scrape_configs"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|job| job["job_name"].as_str() == Some("federate"))
            .unwrap();
        let targets: Vec<&str> = federate["static_configs"][0]["targets"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        assert_eq!(targets, ["a\"b:9090", "it's:9090"]);
        // A regex character in a name is matched literally, and an interval under Prometheus's
        // default scrape timeout brings its own.
        let managers = &doc["scrape_configs"][1]["relabel_configs"][2];
        assert_eq!(managers["regex"].as_str(), Some("(manager-1|manager\\.2)"));
        assert_eq!(doc["global"]["scrape_timeout"].as_str(), Some("5s"));
    }

    #[test]
    fn a_version_with_quotes_lands_as_one_shell_word_in_the_bootstrap() {
        let version = "16.11.1'; touch /tmp/owned; echo \"";
        let text = bootstrap(&BootstrapInput {
            fleet: "f".into(),
            source: "f.yaml".into(),
            machine: "every runner-manager machine\n- evil".into(),
            role: "runner-manager".into(),
            cloud: "gcp".into(),
            runs_runner: true,
            runs_prometheus: false,
            runner_version: version.into(),
            shutdown_timeout: 60,
            watch_metadata: true,
        })
        .unwrap();
        let doc = yaml(&text);
        let install = doc["runcmd"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str())
            .find(|c| c.starts_with("apt-get install -y "))
            .unwrap()
            .to_string();
        // The shell reads the version back as one word, quotes and all.
        let word = install.trim_start_matches("apt-get install -y ");
        let echoed = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {word}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&echoed.stdout),
            format!("gitlab-runner={version}-1")
        );
        assert!(
            text.starts_with("#cloud-config\n# Bootstrap of every runner-manager machine - evil ")
        );
    }

    #[test]
    fn a_value_with_a_quote_lands_escaped_in_config_toml() {
        let name = "odd \"runner\"\n[[runners]]";
        let input = ManagerInput {
            fleet: "f".into(),
            source: "f.yaml".into(),
            machine: "m\nconcurrent = 0".into(),
            global: vec![("concurrent".into(), None, Value::Int(2))],
            runners: vec![RunnerInput {
                name: name.into(),
                name_span: SourceSpan::from(0..1),
                executor: "shell".into(),
                executor_span: None,
                template: None,
                config: vec![(
                    "environment".into(),
                    None,
                    Value::Array(vec![Value::Str("A='b c'\\".into())]),
                )],
            }],
        };
        let rendered = config_toml(&input).unwrap();
        assert_eq!(rendered.problems, []);
        let parsed: toml::Table = toml::from_str(&rendered.text).unwrap();
        assert_eq!(parsed["concurrent"].as_integer(), Some(2));
        let runners = parsed["runners"].as_array().unwrap();
        assert_eq!(runners.len(), 1);
        assert_eq!(runners[0]["name"].as_str(), Some(name));
        assert_eq!(runners[0]["environment"][0].as_str(), Some("A='b c'\\"));
    }

    #[test]
    fn prometheus_durations_are_read_as_prometheus_reads_them() {
        assert_eq!(prometheus_duration_ms("15s"), Some(15_000));
        assert_eq!(prometheus_duration_ms("1m30s"), Some(90_000));
        assert_eq!(prometheus_duration_ms("250ms"), Some(250));
        assert_eq!(prometheus_duration_ms("0"), Some(0));
        for bad in ["", "15", "every 15 seconds", "30s1m", "1.5s", "15 s", "5S"] {
            assert_eq!(prometheus_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_are_masked_and_named() {
        let text = "token = \"${secret:A_1}\"\nother = \"${secret:B}\"\n";
        assert_eq!(
            mask_secrets(text),
            "token = \"(sensitive)\"\nother = \"(sensitive)\"\n"
        );
        assert_eq!(secret_names(text), ["A_1", "B"]);
        assert_eq!(
            mask_secrets_named(text),
            "token = \"(secret A_1)\"\nother = \"(secret B)\"\n"
        );
        assert_eq!(mask_secrets_named("x ${secret:open"), "x ${secret:open");
    }
}
