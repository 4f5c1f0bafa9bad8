//! Reads a fleet file's YAML into the typed model, collecting every problem.
//!
//! In: a file's path and text. Out: a [`FleetFile`] and the problems found, all of them:
//! syntax, unknown or misspelt keys (with the closest valid key), duplicate keys, missing
//! required fields and values of the wrong type. Meaning (clouds, zones, references) is
//! checked later, in `spec::expand`.

use miette::SourceSpan;

use super::diagnostic::{closest, quoted, Problem, ProblemKind, SourceFile};
use super::limits::Limits;
use super::model::{
    AwsSettings, Axis, ConfigTable, ConfigValue, Environment, FleetFile, GcpSettings,
    MachineDefaults, PrometheusDecl, ResourceDecl, ResourceKind, RunnerDecl, RunnerGlobal, Spanned,
};
use super::yaml::{self, Node};

const TOP_KEYS: &[&str] = &[
    "fleet",
    "description",
    "clouds",
    "defaults",
    "environments",
    "templates",
    "managers",
    "pools",
    "helpers",
    "hosts",
];
const CLOUD_KEYS: &[&str] = &["gcp", "aws"];
const GCP_KEYS: &[&str] = &["project", "region", "endpoint"];
const AWS_KEYS: &[&str] = &["region", "endpoint"];
const DEFAULT_KEYS: &[&str] = &[
    "zone",
    "machine_type",
    "image",
    "disk",
    "network",
    "subnet",
    "security_groups",
    "instance_profile",
    "service_account",
    "scopes",
];
const DISK_KEYS: &[&str] = &["type", "size_gb"];
const COMMON_KEYS: &[&str] = &[
    "description",
    "cloud",
    "zone",
    "machine_type",
    "image",
    "disk",
    "network",
    "subnet",
    "security_groups",
    "instance_profile",
    "service_account",
    "scopes",
    "labels",
    "depends_on",
    "matrix",
    "role",
];
const HOST_KEYS: &[&str] = &[
    "description",
    "address",
    "role",
    "labels",
    "runner",
    "runners",
    "matrix",
];
const PROMETHEUS_KEYS: &[&str] = &["scrape_interval", "federate"];

fn keys_for(kind: ResourceKind) -> Vec<&'static str> {
    let extra: &[&str] = match kind {
        ResourceKind::Template => &["arch"],
        ResourceKind::Manager => &["runners", "runner"],
        ResourceKind::Pool => &["size"],
        ResourceKind::Helper => &["scrape", "prometheus"],
        ResourceKind::Host => return HOST_KEYS.to_vec(),
    };
    COMMON_KEYS.iter().chain(extra).copied().collect()
}

/// Parses and reads one fleet file. Returns the model (as far as it could be read) and
/// every problem found; the model is only meaningful when there are none. Text the parser
/// must not see (NUL bytes, a byte-order mark past the start) and a file over the size limit
/// stop here, before parsing.
pub fn load(name: &str, text: &str, limits: &Limits) -> (Option<FleetFile>, Vec<Problem>) {
    let source = SourceFile::new(name, text);
    let problems = super::text::check(&source, limits);
    if !problems.is_empty() {
        return (None, problems);
    }
    let mut reader = Reader {
        source: &source,
        problems: Vec::new(),
    };
    let root = match yaml::parse(text, limits) {
        Ok(root) => root,
        Err(error) => {
            let span = SourceSpan::from((error.offset, 0));
            let problem = Problem::new(error.kind, &source, span, error.message, error.label)
                .with_help(error.help);
            return (None, vec![problem]);
        }
    };
    let file = reader.fleet_file(&root);
    (file, reader.problems)
}

struct Reader<'s> {
    source: &'s SourceFile,
    problems: Vec<Problem>,
}

/// The entries of one mapping, keys checked.
struct Fields<'n> {
    entries: Vec<(&'n str, SourceSpan, &'n Node)>,
    /// The keys that unknown keys here were taken for (`machine_typ` → `machine_type`).
    suggested: Vec<String>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(name, _, _)| *name == key)
            .map(|(_, _, node)| *node)
    }
}

impl<'s> Reader<'s> {
    fn problem(
        &mut self,
        kind: ProblemKind,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let mut problem = Problem::new(kind, self.source, span, message, label);
        problem.help = help;
        self.problems.push(problem);
    }

    fn duplicate_key(
        &mut self,
        span: SourceSpan,
        name: &str,
        first: SourceSpan,
        within: Option<&str>,
    ) {
        let help = match within {
            Some(section) => format!("keep one `{name}` in `{section}`"),
            None => format!("keep one `{name}`"),
        };
        let problem = Problem::new(
            ProblemKind::DuplicateKey,
            self.source,
            span,
            format!("Duplicate key `{name}`"),
            "given again here",
        )
        .with_secondary(first, "first given here")
        .with_help(help);
        self.problems.push(problem);
    }

    fn wrong_type(&mut self, node: &Node, expected: &str) {
        self.problem(
            ProblemKind::WrongType,
            node.span(),
            format!("Expected {expected}"),
            format!("this is {}", node.type_name()),
            Some(format!("write {expected} here")),
        );
    }

    /// Reads a mapping whose keys must be among `allowed`, and reports missing `required`
    /// keys at `owner` (the key that names this mapping).
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        section: &str,
        allowed: &[&str],
        required: &[&str],
        owner: SourceSpan,
    ) -> Option<Fields<'n>> {
        let Node::Map { entries, .. } = node else {
            if node.is_null() {
                self.missing(section, required, owner);
                return None;
            }
            self.wrong_type(node, &format!("a mapping for `{section}`"));
            return None;
        };
        let mut fields = Fields {
            entries: Vec::new(),
            suggested: Vec::new(),
        };
        for (key, value) in entries {
            let Node::Scalar {
                value: name,
                span: key_span,
                ..
            } = key
            else {
                self.wrong_type(key, "a plain key");
                continue;
            };
            if let Some((_, first, _)) = fields.entries.iter().find(|(seen, _, _)| seen == name) {
                let first = *first;
                self.duplicate_key(*key_span, name, first, Some(section));
                continue;
            }
            if !allowed.contains(&name.as_str()) {
                let suggestion = closest(name, allowed.iter().copied());
                fields.suggested.extend(suggestion.map(str::to_string));
                let help = match suggestion {
                    Some(suggestion) => format!(
                        "did you mean `{suggestion}`? Keys allowed in `{section}`: {}",
                        allowed.join(", ")
                    ),
                    None => format!("keys allowed in `{section}`: {}", allowed.join(", ")),
                };
                let label = match suggestion {
                    Some(suggestion) => {
                        format!("not a key of `{section}`; did you mean `{suggestion}`?")
                    }
                    None => format!("not a key of `{section}`"),
                };
                self.problem(
                    ProblemKind::UnknownKey,
                    *key_span,
                    format!("Unknown key `{}`", quoted(name)),
                    label,
                    Some(help),
                );
                continue;
            }
            fields.entries.push((name.as_str(), *key_span, value));
        }
        // A key misspelt is said once, as the unknown key with its "did you mean".
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|key| fields.get(key).is_none() && !fields.suggested.iter().any(|s| s == key))
            .collect();
        self.missing(section, &missing, owner);
        Some(fields)
    }

    fn missing(&mut self, section: &str, missing: &[&str], owner: SourceSpan) {
        for key in missing {
            self.problem(
                ProblemKind::MissingField,
                owner,
                format!("Missing required field `{key}`"),
                format!("`{section}` needs `{key}`"),
                Some(format!("add `{key}: …` to `{section}`")),
            );
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        match node {
            Node::Scalar { value, span, .. } if !node.is_null() => {
                Some(Spanned::new(value.clone(), *span))
            }
            _ => {
                self.wrong_type(node, &format!("a string for `{what}`"));
                None
            }
        }
    }

    fn field_string(&mut self, fields: &Fields<'_>, key: &str) -> Option<Spanned<String>> {
        let node = fields.get(key)?;
        self.string(node, key)
    }

    fn number(&mut self, node: &Node, what: &str) -> Option<Spanned<u32>> {
        match node {
            Node::Scalar {
                value,
                quoted: false,
                span,
            } => match value.parse::<u32>() {
                Ok(number) => Some(Spanned::new(number, *span)),
                Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    self.problem(
                        ProblemKind::Limit,
                        *span,
                        format!("`{what}` is too large"),
                        format!("{} is more than {}", quoted(value), u32::MAX),
                        Some(format!("write `{what}` as a number up to {}", u32::MAX)),
                    );
                    None
                }
                Err(_) => {
                    self.problem(
                        ProblemKind::WrongType,
                        *span,
                        format!("Expected a whole number for `{what}`"),
                        format!("`{}` is not a whole number", quoted(value)),
                        Some(format!("write `{what}` as a number such as 100")),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(node, &format!("a whole number for `{what}`"));
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Vec<Spanned<String>> {
        match node {
            Node::Seq { items, .. } => items
                .iter()
                .filter_map(|item| self.string(item, what))
                .collect(),
            Node::Scalar { .. } if !node.is_null() => self.string(node, what).into_iter().collect(),
            _ => {
                self.wrong_type(node, &format!("a list of strings for `{what}`"));
                Vec::new()
            }
        }
    }

    fn string_map(&mut self, node: &Node, what: &str) -> Vec<(Spanned<String>, Spanned<String>)> {
        let Node::Map { entries, .. } = node else {
            if !node.is_null() {
                self.wrong_type(node, &format!("a mapping of strings for `{what}`"));
            }
            return Vec::new();
        };
        let mut out: Vec<(Spanned<String>, Spanned<String>)> = Vec::new();
        for (key, value) in entries {
            let (Some(key), Some(value)) = (self.string(key, what), self.string(value, what))
            else {
                continue;
            };
            if let Some((first, _)) = out.iter().find(|(seen, _)| seen.value == key.value) {
                self.duplicate_key(key.span, &key.value, first.span, Some(what));
                continue;
            }
            out.push((key, value));
        }
        out
    }

    fn fleet_file(&mut self, root: &Node) -> Option<FleetFile> {
        let start = SourceSpan::from((0, 0));
        let top = self.fields(root, "the fleet file", TOP_KEYS, &["fleet"], start)?;
        let fleet = self.field_string(&top, "fleet");
        let mut gcp = None;
        let mut aws = None;
        if let Some(node) = top.get("clouds") {
            if let Some(clouds) = self.fields(node, "clouds", CLOUD_KEYS, &[], node.span()) {
                for (key, key_span, value) in &clouds.entries {
                    match *key {
                        "gcp" => {
                            if let Some(f) = self.fields(
                                value,
                                "clouds.gcp",
                                GCP_KEYS,
                                &["project", "region"],
                                *key_span,
                            ) {
                                let project = self.field_string(&f, "project");
                                let region = self.field_string(&f, "region");
                                let endpoint = self.field_string(&f, "endpoint");
                                if let (Some(project), Some(region)) = (project, region) {
                                    gcp = Some(GcpSettings {
                                        project,
                                        region,
                                        endpoint,
                                        span: *key_span,
                                    });
                                }
                            }
                        }
                        _ => {
                            if let Some(f) =
                                self.fields(value, "clouds.aws", AWS_KEYS, &["region"], *key_span)
                            {
                                let region = self.field_string(&f, "region");
                                let endpoint = self.field_string(&f, "endpoint");
                                if let Some(region) = region {
                                    aws = Some(AwsSettings {
                                        region,
                                        endpoint,
                                        span: *key_span,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut gcp_defaults = MachineDefaults::default();
        let mut aws_defaults = MachineDefaults::default();
        if let Some(node) = top.get("defaults") {
            if let Some(defaults) = self.fields(node, "defaults", CLOUD_KEYS, &[], node.span()) {
                for (key, key_span, value) in &defaults.entries {
                    let section = format!("defaults.{key}");
                    let Some(f) = self.fields(value, &section, DEFAULT_KEYS, &[], *key_span) else {
                        continue;
                    };
                    let (disk_type, disk_size_gb) = self.disk(&f, &section);
                    let values = MachineDefaults {
                        zone: self.field_string(&f, "zone"),
                        machine_type: self.field_string(&f, "machine_type"),
                        image: self.field_string(&f, "image"),
                        disk_type,
                        disk_size_gb,
                        network: self.field_string(&f, "network"),
                        subnet: self.field_string(&f, "subnet"),
                        security_groups: f
                            .get("security_groups")
                            .map(|n| self.string_list(n, "security_groups")),
                        instance_profile: self.field_string(&f, "instance_profile"),
                        service_account: self.field_string(&f, "service_account"),
                        scopes: f.get("scopes").map(|n| self.string_list(n, "scopes")),
                    };
                    if *key == "gcp" {
                        gcp_defaults = values;
                    } else {
                        aws_defaults = values;
                    }
                }
            }
        }
        let mut environments = Vec::new();
        if let Some(node) = top.get("environments") {
            match node {
                Node::Map { entries, .. } => {
                    for (key, value) in entries {
                        let Some(name) = self.string(key, "environments") else {
                            continue;
                        };
                        let values =
                            self.string_map(value, &format!("environments.{}", name.value));
                        environments.push(Environment { name, values });
                    }
                }
                _ => self.wrong_type(node, "a mapping of environments, e.g. `com: {url: …}`"),
            }
        }
        let mut resources = Vec::new();
        for kind in ResourceKind::ALL {
            let Some(node) = top.get(kind.section()) else {
                continue;
            };
            match node {
                Node::Map { entries, .. } => {
                    for (key, value) in entries {
                        let Some(name) = self.string(key, kind.section()) else {
                            continue;
                        };
                        if let Some(decl) = self.resource(kind, name, value) {
                            resources.push(decl);
                        }
                    }
                }
                _ if node.is_null() => {}
                _ => self.wrong_type(
                    node,
                    &format!("a mapping of {} by name pattern", kind.section()),
                ),
            }
        }
        resources.sort_by_key(|decl| decl.name.span.offset());
        Some(FleetFile {
            source: self.source.clone(),
            // A missing name was reported; reading goes on so every other problem is found too.
            fleet: fleet.unwrap_or_else(|| Spanned::new(String::new(), start)),
            gcp,
            aws,
            gcp_defaults,
            aws_defaults,
            environments,
            resources,
        })
    }

    fn disk(
        &mut self,
        fields: &Fields<'_>,
        section: &str,
    ) -> (Option<Spanned<String>>, Option<Spanned<u32>>) {
        let Some((_, key_span, node)) = fields.entries.iter().find(|(key, _, _)| *key == "disk")
        else {
            return (None, None);
        };
        let section = format!("{section}.disk");
        let Some(disk) = self.fields(node, &section, DISK_KEYS, &[], *key_span) else {
            return (None, None);
        };
        let disk_type = self.field_string(&disk, "type");
        let size = disk
            .get("size_gb")
            .and_then(|node| self.number(node, "disk.size_gb"));
        (disk_type, size)
    }

    fn resource(
        &mut self,
        kind: ResourceKind,
        name: Spanned<String>,
        node: &Node,
    ) -> Option<ResourceDecl> {
        let section = format!("{}.{}", kind.section(), name.value);
        let allowed = keys_for(kind);
        let required: &[&str] = if kind == ResourceKind::Pool {
            &["size"]
        } else {
            &[]
        };
        let fields = if node.is_null() {
            Fields {
                entries: Vec::new(),
                suggested: Vec::new(),
            }
        } else {
            self.fields(node, &section, &allowed, required, name.span)?
        };
        let (disk_type, disk_size_gb) = self.disk(&fields, &section);
        let mut decl = ResourceDecl {
            misspelt: fields.suggested.clone(),
            kind,
            matrix: Vec::new(),
            count: None,
            cloud: self.field_string(&fields, "cloud"),
            zone: self.field_string(&fields, "zone"),
            machine_type: self.field_string(&fields, "machine_type"),
            image: self.field_string(&fields, "image"),
            disk_type,
            disk_size_gb,
            network: self.field_string(&fields, "network"),
            subnet: self.field_string(&fields, "subnet"),
            security_groups: fields
                .get("security_groups")
                .map(|n| self.string_list(n, "security_groups")),
            instance_profile: self.field_string(&fields, "instance_profile"),
            service_account: self.field_string(&fields, "service_account"),
            scopes: fields.get("scopes").map(|n| self.string_list(n, "scopes")),
            arch: self.field_string(&fields, "arch"),
            role: self.field_string(&fields, "role"),
            labels: fields
                .get("labels")
                .map(|n| self.string_map(n, "labels"))
                .unwrap_or_default(),
            depends_on: fields
                .get("depends_on")
                .map(|n| self.string_list(n, "depends_on"))
                .unwrap_or_default(),
            scrape: fields
                .get("scrape")
                .map(|n| self.string_list(n, "scrape"))
                .unwrap_or_default(),
            runners: Vec::new(),
            runner: None,
            prometheus: None,
            address: self.field_string(&fields, "address"),
            name,
        };
        if let Some((_, key_span, node)) =
            fields.entries.iter().find(|(key, _, _)| *key == "runner")
        {
            decl.runner = self.runner_global(node, *key_span, &section);
        }
        if let Some((_, key_span, node)) = fields
            .entries
            .iter()
            .find(|(key, _, _)| *key == "prometheus")
        {
            decl.prometheus = self.prometheus(node, *key_span, &section);
        }
        if let Some(size) = fields.get("size") {
            decl.count = self.number(size, "size");
        }
        if let Some(matrix) = fields.get("matrix") {
            self.matrix(&mut decl, matrix, &section);
        }
        if let Some(runners) = fields.get("runners") {
            match runners {
                Node::Seq { items, .. } => {
                    for item in items {
                        if let Some(runner) = self.runner(item, &section) {
                            decl.runners.push(runner);
                        }
                    }
                }
                _ => self.wrong_type(runners, "a list of runners"),
            }
        }
        Some(decl)
    }

    fn matrix(&mut self, decl: &mut ResourceDecl, node: &Node, section: &str) {
        let Node::Map { entries, .. } = node else {
            self.wrong_type(
                node,
                "a mapping of axes, e.g. `env: [com, dev]` and `count: 2`",
            );
            return;
        };
        for (key, value) in entries {
            let Some(axis) = self.string(key, "matrix") else {
                continue;
            };
            if decl.matrix.iter().any(|seen| seen.name.value == axis.value) {
                self.problem(
                    ProblemKind::DuplicateKey,
                    axis.span,
                    format!("Duplicate key `{}`", axis.value),
                    "given again here",
                    Some(format!("keep one `{}` in `{section}.matrix`", axis.value)),
                );
                continue;
            }
            if axis.value == "count" {
                if decl.kind == ResourceKind::Pool {
                    self.problem(
                        ProblemKind::InvalidValue,
                        axis.span,
                        "`matrix.count` in a pool",
                        "a pool's members are counted by `size`",
                        Some("remove `count` and set the pool's `size`".to_string()),
                    );
                }
                decl.count = self.number(value, "matrix.count");
                continue;
            }
            if matches!(axis.value.as_str(), "n" | "index" | "fleet") {
                self.problem(
                    ProblemKind::InvalidValue,
                    axis.span,
                    format!("`{}` is a reserved variable", axis.value),
                    "fleet sets this variable itself",
                    Some("`{n}` counts members (`count`/`size`), `{index}` numbers the whole expansion and `{fleet}` is the fleet name; name the axis otherwise".to_string()),
                );
                continue;
            }
            let values = self.string_list(value, &format!("matrix.{}", axis.value));
            if values.is_empty() {
                self.problem(
                    ProblemKind::InvalidValue,
                    value.span(),
                    format!("Matrix axis `{}` has no values", axis.value),
                    "empty",
                    Some("give at least one value, e.g. `[com, dev]`".to_string()),
                );
                continue;
            }
            decl.matrix.push(Axis { name: axis, values });
        }
    }

    fn runner(&mut self, node: &Node, section: &str) -> Option<RunnerDecl> {
        let section = format!("{section}.runners[]");
        let Node::Map { entries, span } = node else {
            self.wrong_type(node, "a runner: a mapping with at least `name`");
            return None;
        };
        let mut name = None;
        let mut template = None;
        let mut arch = None;
        let mut executor = None;
        let mut config = Vec::new();
        let mut seen: Vec<(String, SourceSpan)> = Vec::new();
        for (key, value) in entries {
            let Some(key) = self.string(key, &section) else {
                continue;
            };
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key.value) {
                self.duplicate_key(key.span, &key.value, *first, Some("the runner"));
                continue;
            }
            seen.push((key.value.clone(), key.span));
            match key.value.as_str() {
                "name" => name = self.string(value, "name"),
                "template" => template = self.string(value, "template"),
                "arch" => arch = self.string(value, "arch"),
                "executor" => executor = self.string(value, "executor"),
                "description" => {}
                _ => {
                    if let Some(value) = self.config_value(value) {
                        config.push((key, value));
                    }
                }
            }
        }
        if name.is_none() {
            self.missing(&section, &["name"], *span);
        }
        Some(RunnerDecl {
            name: name?,
            template,
            arch,
            executor,
            config,
            span: *span,
        })
    }

    /// Reads a config.toml value: plain numbers and booleans keep their type, quoted text is
    /// always a string.
    fn config_value(&mut self, node: &Node) -> Option<ConfigValue> {
        match node {
            Node::Scalar {
                value,
                quoted,
                span,
            } => {
                if node.is_null() {
                    self.wrong_type(node, "a value");
                    return None;
                }
                if !quoted {
                    if let Ok(number) = value.parse::<i64>() {
                        return Some(ConfigValue::Integer(Spanned::new(number, *span)));
                    }
                    if let Ok(number) = value.parse::<f64>() {
                        return Some(ConfigValue::Float(Spanned::new(number, *span)));
                    }
                    if value == "true" || value == "false" {
                        return Some(ConfigValue::Bool(Spanned::new(value == "true", *span)));
                    }
                }
                Some(ConfigValue::String(Spanned::new(value.clone(), *span)))
            }
            Node::Seq { items, span } => Some(ConfigValue::Array(
                items
                    .iter()
                    .filter_map(|item| self.config_value(item))
                    .collect(),
                *span,
            )),
            Node::Map { entries, span } => {
                let mut table: ConfigTable = Vec::new();
                for (key, value) in entries {
                    let Some(key) = self.string(key, "a config key") else {
                        continue;
                    };
                    if let Some((first, _)) = table.iter().find(|(k, _)| k.value == key.value) {
                        self.duplicate_key(key.span, &key.value, first.span, None);
                        continue;
                    }
                    if let Some(value) = self.config_value(value) {
                        table.push((key, value));
                    }
                }
                Some(ConfigValue::Table(table, *span))
            }
        }
    }

    fn runner_global(
        &mut self,
        node: &Node,
        key_span: SourceSpan,
        section: &str,
    ) -> Option<RunnerGlobal> {
        let ConfigValue::Table(table, _) = self.config_value(node)? else {
            self.wrong_type(node, &format!("a mapping for `{section}.runner`"));
            return None;
        };
        let mut version = None;
        let mut config = Vec::new();
        for (key, value) in table {
            if key.value == "version" {
                match value {
                    ConfigValue::String(text) => version = Some(text),
                    other => {
                        let span = other.span();
                        self.problem(
                            ProblemKind::WrongType,
                            span,
                            "Expected a version string",
                            "write the version in quotes",
                            Some("e.g. `version: \"16.11.1\"`".to_string()),
                        );
                    }
                }
            } else {
                config.push((key, value));
            }
        }
        Some(RunnerGlobal {
            version,
            config,
            span: key_span,
        })
    }

    fn prometheus(
        &mut self,
        node: &Node,
        key_span: SourceSpan,
        section: &str,
    ) -> Option<PrometheusDecl> {
        let fields = self.fields(
            node,
            &format!("{section}.prometheus"),
            PROMETHEUS_KEYS,
            &[],
            key_span,
        )?;
        Some(PrometheusDecl {
            scrape_interval: self.field_string(&fields, "scrape_interval"),
            federate: fields
                .get("federate")
                .map(|n| self.string_list(n, "federate"))
                .unwrap_or_default(),
            span: key_span,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_suggests_the_right_one() {
        let text = "fleet: f\nmanagers:\n  m-1:\n    machine_tyep: n1-standard-2\n";
        let (_, problems) = load("f.yaml", text, &Limits::default());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind, ProblemKind::UnknownKey);
        assert!(problems[0]
            .help
            .as_deref()
            .unwrap()
            .contains("did you mean `machine_type`"));
        assert_eq!(problems[0].location(), "f.yaml:4:5");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "fleet: f\nbogus: 1\nmanagers:\n  m-1:\n    zone: [a]\n    disk: {size_gb: big}\npools:\n  p-{n}:\n    zone: x\n";
        let (_, problems) = load("f.yaml", text, &Limits::default());
        let kinds: Vec<_> = problems.iter().map(|p| p.kind).collect();
        assert!(kinds.contains(&ProblemKind::UnknownKey), "{kinds:?}");
        assert!(kinds.contains(&ProblemKind::WrongType), "{kinds:?}");
        assert!(kinds.contains(&ProblemKind::MissingField), "{kinds:?}");
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
