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
}

impl ResourceKind {
    /// Every kind, in creation order.
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::Template,
        ResourceKind::Manager,
        ResourceKind::Pool,
        ResourceKind::Helper,
    ];

    /// The address prefix and `fleet-kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Template => "template",
            ResourceKind::Manager => "manager",
            ResourceKind::Pool => "pool",
            ResourceKind::Helper => "helper",
        }
    }

    /// The fleet-file section.
    pub fn section(self) -> &'static str {
        match self {
            ResourceKind::Template => "templates",
            ResourceKind::Manager => "managers",
            ResourceKind::Pool => "pools",
            ResourceKind::Helper => "helpers",
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
        }
    }

    /// Order of creation: templates first, helpers last; deletion runs the other way.
    pub fn rank(self) -> u8 {
        match self {
            ResourceKind::Template => 0,
            ResourceKind::Manager => 1,
            ResourceKind::Pool => 1,
            ResourceKind::Helper => 2,
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
    /// `runners:` (managers)
    pub runners: Vec<RunnerDecl>,
}

/// One runner of a manager.
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
    /// The whole entry.
    pub span: SourceSpan,
}
