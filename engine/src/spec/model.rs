//! The typed contents of a fleet file, every value with the span it came from.
//!
//! In: nothing (plain data). Out: what `spec::load` fills and `spec::expand` reads.

use miette::SourceSpan;

use super::diagnostic::SourceFile;

/// A value and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Its bytes in the file.
    pub span: SourceSpan,
}

impl<T> Spanned<T> {
    /// Wraps a value.
    pub fn new(value: T, span: SourceSpan) -> Spanned<T> {
        Spanned { value, span }
    }
}

/// One fleet file.
#[derive(Debug, Clone)]
pub struct FleetFile {
    /// Its text, for diagnostics.
    pub source: SourceFile,
    /// `fleet:` — the fleet's name, put on every object as the `fleet` label.
    pub fleet: Spanned<String>,
    /// `clouds.gcp`.
    pub gcp: Option<GcpSettings>,
    /// `clouds.aws`.
    pub aws: Option<AwsSettings>,
    /// `defaults.gcp`.
    pub gcp_defaults: MachineDefaults,
    /// `defaults.aws`.
    pub aws_defaults: MachineDefaults,
    /// `environments:` — values per environment, used as `{env.KEY}`.
    pub environments: Vec<Environment>,
    /// Templates, managers, helpers and pools in file order.
    pub resources: Vec<ResourceDecl>,
}

/// `clouds.gcp`.
#[derive(Debug, Clone)]
pub struct GcpSettings {
    /// The GCP project.
    pub project: Spanned<String>,
    /// The default region.
    pub region: Spanned<String>,
    /// An API endpoint override, for test servers.
    pub endpoint: Option<Spanned<String>>,
    /// The `gcp:` key.
    pub span: SourceSpan,
}

/// `clouds.aws`.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The region every EC2 call goes to.
    pub region: Spanned<String>,
    /// An API endpoint override, for emulators.
    pub endpoint: Option<Spanned<String>>,
    /// The `aws:` key.
    pub span: SourceSpan,
}

/// `defaults.<cloud>`: values for resources that do not set them.
#[derive(Debug, Clone, Default)]
pub struct MachineDefaults {
    /// Default zone.
    pub zone: Option<Spanned<String>>,
    /// Default machine type.
    pub machine_type: Option<Spanned<String>>,
    /// Default boot image.
    pub image: Option<Spanned<String>>,
    /// Default disk type.
    pub disk_type: Option<Spanned<String>>,
    /// Default disk size.
    pub disk_size_gb: Option<Spanned<u32>>,
    /// Default network (GCE).
    pub network: Option<Spanned<String>>,
    /// Default subnet (GCE subnetwork, EC2 subnet id).
    pub subnet: Option<Spanned<String>>,
    /// Default security groups (EC2).
    pub security_groups: Option<Vec<Spanned<String>>>,
    /// Default instance profile (EC2).
    pub instance_profile: Option<Spanned<String>>,
    /// Default service account (GCE).
    pub service_account: Option<Spanned<String>>,
    /// Default service account scopes (GCE).
    pub scopes: Option<Vec<Spanned<String>>>,
}

/// One entry of `environments:`.
#[derive(Debug, Clone)]
pub struct Environment {
    /// `com`, `dev`, …
    pub name: Spanned<String>,
    /// Its values.
    pub values: Vec<(Spanned<String>, Spanned<String>)>,
}

/// The section a resource is declared in, which is the first part of its address.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// `templates:` — autoscale instance templates.
    Template,
    /// `managers:` — runner managers.
    Manager,
    /// `pools:` — fixed-size pools of identical machines.
    Pool,
    /// `helpers:` — Prometheus and other helpers.
    Helper,
    /// `hosts:` — machines no cloud manages (fleet renders their files only).
    Host,
}

impl ResourceKind {
    /// Every kind, in creation order.
    pub const ALL: [ResourceKind; 5] = [
        ResourceKind::Template,
        ResourceKind::Manager,
        ResourceKind::Pool,
        ResourceKind::Helper,
        ResourceKind::Host,
    ];

    /// The address prefix and `fleet-kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Template => "template",
            ResourceKind::Manager => "manager",
            ResourceKind::Pool => "pool",
            ResourceKind::Helper => "helper",
            ResourceKind::Host => "host",
        }
    }

    /// The fleet-file section.
    pub fn section(self) -> &'static str {
        match self {
            ResourceKind::Template => "templates",
            ResourceKind::Manager => "managers",
            ResourceKind::Pool => "pools",
            ResourceKind::Helper => "helpers",
            ResourceKind::Host => "hosts",
        }
    }

    /// Parses an address prefix.
    pub fn parse(text: &str) -> Option<ResourceKind> {
        ResourceKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// The default `fleet-role` label.
    pub fn default_role(self) -> &'static str {
        match self {
            ResourceKind::Template => "autoscale-template",
            ResourceKind::Manager => "runner-manager",
            ResourceKind::Pool => "builder",
            ResourceKind::Helper => "helper",
            ResourceKind::Host => "host",
        }
    }

    /// Order of creation: templates first, helpers last; deletion runs the other way.
    pub fn rank(self) -> u8 {
        match self {
            ResourceKind::Template => 0,
            ResourceKind::Manager => 1,
            ResourceKind::Pool => 1,
            ResourceKind::Helper | ResourceKind::Host => 2,
        }
    }
}

/// One matrix axis: `env: [com, dev]`.
#[derive(Debug, Clone)]
pub struct Axis {
    /// The variable name.
    pub name: Spanned<String>,
    /// Its values.
    pub values: Vec<Spanned<String>>,
}

/// One resource declaration, before expansion.
#[derive(Debug, Clone)]
pub struct ResourceDecl {
    /// Its section.
    pub kind: ResourceKind,
    /// Keys that misspelt keys of this resource were taken for: a missing one of them is
    /// reported once, as the misspelling.
    pub misspelt: Vec<String>,
    /// The name pattern, e.g. `runners-manager-distribution-{env}-{color}-{n}`.
    pub name: Spanned<String>,
    /// `matrix:` axes, expanded as a cross product in the order written.
    pub matrix: Vec<Axis>,
    /// `matrix.count` (managers, helpers) or `size` (pools): members per combination, `{n}`.
    pub count: Option<Spanned<u32>>,
    /// `cloud:`
    pub cloud: Option<Spanned<String>>,
    /// `zone:`
    pub zone: Option<Spanned<String>>,
    /// `machine_type:`
    pub machine_type: Option<Spanned<String>>,
    /// `image:`
    pub image: Option<Spanned<String>>,
    /// `disk.type`
    pub disk_type: Option<Spanned<String>>,
    /// `disk.size_gb`
    pub disk_size_gb: Option<Spanned<u32>>,
    /// `network:` (GCE)
    pub network: Option<Spanned<String>>,
    /// `subnet:` (GCE subnetwork, EC2 subnet id)
    pub subnet: Option<Spanned<String>>,
    /// `security_groups:` (EC2 group ids)
    pub security_groups: Option<Vec<Spanned<String>>>,
    /// `instance_profile:` (EC2: a name or ARN)
    pub instance_profile: Option<Spanned<String>>,
    /// `service_account:` (GCE: an email or `default`)
    pub service_account: Option<Spanned<String>>,
    /// `scopes:` (GCE: the service account's OAuth scopes)
    pub scopes: Option<Vec<Spanned<String>>>,
    /// `arch:` (templates)
    pub arch: Option<Spanned<String>>,
    /// `role:` (the `fleet-role` label)
    pub role: Option<Spanned<String>>,
    /// `labels:`
    pub labels: Vec<(Spanned<String>, Spanned<String>)>,
    /// `depends_on:` — addresses.
    pub depends_on: Vec<Spanned<String>>,
    /// `scrape:` (helpers) — address patterns of what the helper monitors.
    pub scrape: Vec<Spanned<String>>,
    /// `runners:` (managers, hosts)
    pub runners: Vec<RunnerDecl>,
    /// `runner:` (managers, hosts): the pinned gitlab-runner `version` and config.toml's
    /// global section (`concurrent`, `listen_address`, `session_server`, …).
    pub runner: Option<RunnerGlobal>,
    /// `prometheus:` (Prometheus helpers).
    pub prometheus: Option<PrometheusDecl>,
    /// `address:` (hosts): the host's DNS name.
    pub address: Option<Spanned<String>>,
}

/// A config.toml value as written in the fleet file, with its span, so a key gitlab-runner
/// does not know can be reported at the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// A string (quoted, or plain text that is not a number or boolean).
    String(Spanned<String>),
    /// A whole number.
    Integer(Spanned<i64>),
    /// A number with a fraction.
    Float(Spanned<f64>),
    /// `true` or `false`.
    Bool(Spanned<bool>),
    /// A list.
    Array(Vec<ConfigValue>, SourceSpan),
    /// A mapping: a TOML table.
    Table(ConfigTable, SourceSpan),
}

/// A TOML table as written: keys in file order.
pub type ConfigTable = Vec<(Spanned<String>, ConfigValue)>;

impl ConfigValue {
    /// Where the value is written.
    pub fn span(&self) -> SourceSpan {
        match self {
            ConfigValue::String(v) => v.span,
            ConfigValue::Integer(v) => v.span,
            ConfigValue::Float(v) => v.span,
            ConfigValue::Bool(v) => v.span,
            ConfigValue::Array(_, span) | ConfigValue::Table(_, span) => *span,
        }
    }
}

/// `runner:` of a manager or host.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerGlobal {
    /// `version:` — the gitlab-runner version to install and keep.
    pub version: Option<Spanned<String>>,
    /// Every other key: config.toml's global section.
    pub config: ConfigTable,
    /// The `runner:` key.
    pub span: SourceSpan,
}

/// `prometheus:` of a Prometheus helper.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusDecl {
    /// `scrape_interval:`, e.g. `15s`.
    pub scrape_interval: Option<Spanned<String>>,
    /// `federate:` — extra `/federate` targets (`host:port`) this Prometheus pulls from.
    pub federate: Vec<Spanned<String>>,
    /// The `prometheus:` key.
    pub span: SourceSpan,
}

/// One runner of a manager or host.
#[derive(Debug, Clone)]
pub struct RunnerDecl {
    /// `name:`
    pub name: Spanned<String>,
    /// `template:` — the autoscale template its machines are made from.
    pub template: Option<Spanned<String>>,
    /// `arch:` — what its jobs build for.
    pub arch: Option<Spanned<String>>,
    /// `executor:`
    pub executor: Option<Spanned<String>>,
    /// Every other key: the runner's `[[runners]]` entry in config.toml (`url`, `token`,
    /// `limit`, `docker: {…}`, `machine: {…}`, `autoscaler: {…}`, …).
    pub config: ConfigTable,
    /// The whole entry.
    pub span: SourceSpan,
}
