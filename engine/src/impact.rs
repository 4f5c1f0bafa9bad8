//! The impact rule table: how a change reaches the gitlab-runner of a machine, and the decision
//! the machine is told to carry out.
//!
//! In: a change's action and reasons, and the machine's metadata before and after (the plan's
//! own field names: `machine_type`, `metadata.gitlab-runner-version`, and config.toml keys
//! such as `config.toml:listen_address`). Out: the [`Impact`] shown in the plan and, for
//! machines whose watcher applies later configuration, the [`Decision`] delivered beside the
//! config (GCE: the `fleet-action` metadata item; EC2: the `action` parameter). The watcher carries that decision out as
//! told and needs no rules of its own, so plan and machine cannot disagree.
//!
//! [`RULES`] is the only place the rules live: gitlab-runner re-reads config.toml within seconds
//! (`concurrent`, `log_level`, `[[runners]]` added, removed or changed: reload), but reads
//! `listen_address`, `[session_server]` and `[runners.autoscaler]` (other than its policies)
//! only when it starts (graceful restart); a version change is an upgrade or a downgrade; what
//! the cloud cannot change on a running machine makes a new one.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::{glob_match, DesiredResource};
use crate::diff::{Action, Reason};
use crate::provider::{MachineSpec, ObjectKind};
use crate::render;

/// Metadata key of the delivered [`Decision`].
pub const ACTION: &str = "fleet-action";

/// How a change reaches the running gitlab-runner, from gitlab-runner's reload rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImpactClass {
    /// Files that only matter at the next boot.
    None,
    /// config.toml is re-read within seconds.
    Reload,
    /// SIGQUIT, running jobs finish, start again.
    GracefulRestart,
    /// A newer gitlab-runner version: stop gracefully, install, start.
    Upgrade,
    /// An older gitlab-runner version: stop gracefully, install it, start.
    Downgrade,
    /// A new machine.
    Replace,
}

impl ImpactClass {
    /// Words for output.
    pub fn as_str(self) -> &'static str {
        match self {
            ImpactClass::None => "none until the next boot",
            ImpactClass::Reload => "reload",
            ImpactClass::GracefulRestart => "graceful restart",
            ImpactClass::Upgrade => "upgrade",
            ImpactClass::Downgrade => "downgrade",
            ImpactClass::Replace => "replace",
        }
    }
}

/// The impact of a change on a runner manager, and how apply carries it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    /// The class.
    pub class: ImpactClass,
    /// What happens, step by step.
    pub procedure: String,
}

/// What one changed key does to the runner process; ordered from mild to severe, so the
/// impact of a change is the most severe of its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// Nothing on the machine notices (fleet's own labels).
    Unaffected,
    /// Read once, when the machine is made (the bootstrap).
    NextBoot,
    /// gitlab-runner re-reads config.toml within seconds.
    Reload,
    /// Read only when gitlab-runner starts.
    GracefulRestart,
    /// The gitlab-runner package: an upgrade or a downgrade, by comparing the versions.
    Version,
    /// The cloud cannot change it on a running machine.
    Replace,
}

/// The rule table: the first row whose pattern (`*` stands for any run of characters) matches
/// a changed key decides what that key does.
///
/// Keys are the plan's field names; a changed config.toml is broken down into the keys that
/// differ, `config.toml:` followed by their dotted path, with each `[[runners]]` entry named by
/// its `name` (`config.toml:runners.NAME.limit`), a runner added or removed as a whole being
/// `config.toml:runners.NAME`. A rotated secret is `secret:NAME`.
pub const RULES: &[(&str, Rule)] = &[
    ("cloud", Rule::Replace),
    ("machine_type", Rule::Replace),
    ("zone", Rule::Replace),
    ("image", Rule::Replace),
    ("disk_type", Rule::Replace),
    ("disk_size_gb", Rule::Replace),
    ("network", Rule::Replace),
    ("subnet", Rule::Replace),
    ("security_groups", Rule::Replace),
    ("instance_profile", Rule::Replace),
    ("service_account", Rule::Replace),
    ("scopes", Rule::Replace),
    // Metadata options found weaker than fleet's: the machine is made again.
    ("metadata_options.*", Rule::Replace),
    // A stopped machine does no work and is made again.
    ("status", Rule::Replace),
    // EC2 user data is fixed while the instance runs.
    ("metadata", Rule::Replace),
    ("metadata.gitlab-runner-version", Rule::Version),
    ("metadata.user-data", Rule::NextBoot),
    ("config.toml:listen_address", Rule::GracefulRestart),
    ("config.toml:session_server", Rule::GracefulRestart),
    ("config.toml:session_server.*", Rule::GracefulRestart),
    // The autoscaler's policies are re-read; the rest of it is set up when the runner starts.
    ("config.toml:runners.*.autoscaler.policy", Rule::Reload),
    ("config.toml:runners.*.autoscaler", Rule::GracefulRestart),
    ("config.toml:runners.*.autoscaler.*", Rule::GracefulRestart),
    // Everything else in config.toml, `[[runners]]` added or removed included.
    ("config.toml:*", Rule::Reload),
    // A config.toml that cannot be read: only a restart is sure to pick it up.
    ("config.toml", Rule::GracefulRestart),
    // The watcher writes the new value into config.toml, which gitlab-runner re-reads.
    ("secret:*", Rule::Reload),
    ("labels.*", Rule::Unaffected),
    // A key this table does not know: a restart is safe for anything gitlab-runner reads.
    ("*", Rule::GracefulRestart),
];

/// What a changed key does, by the first matching row of [`RULES`].
pub fn rule_of(key: &str) -> Rule {
    RULES
        .iter()
        .find(|(pattern, _)| glob_match(pattern, key))
        .map_or(Rule::GracefulRestart, |(_, rule)| *rule)
}

/// The config.toml keys that differ between two files, named as [`RULES`] names them.
pub fn config_keys(old: &str, new: &str) -> Vec<String> {
    let (Ok(old), Ok(new)) = (
        toml::from_str::<toml::Table>(old),
        toml::from_str::<toml::Table>(new),
    ) else {
        return vec!["config.toml".to_string()];
    };
    let mut out = Vec::new();
    changed_in_tables("config.toml:", &old, &new, &mut out);
    out
}

fn changed_in_tables(prefix: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let path = format!("{prefix}{key}");
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                changed_in_tables(&format!("{path}."), a, b, out);
            }
            (Some(toml::Value::Array(a)), Some(toml::Value::Array(b)))
                if prefix == "config.toml:" && key == "runners" =>
            {
                // Runners are matched by name, not position: adding one in the middle changes
                // no other.
                let (a, b) = (runners_by_name(a), runners_by_name(b));
                let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for name in names {
                    match (a.get(name), b.get(name)) {
                        (Some(x), Some(y)) => {
                            changed_in_tables(&format!("{path}.{name}."), x, y, out);
                        }
                        _ => out.push(format!("{path}.{name}")),
                    }
                }
            }
            (a, b) if a != b => out.push(path),
            _ => {}
        }
    }
}

fn runners_by_name(runners: &[toml::Value]) -> BTreeMap<String, toml::Table> {
    runners
        .iter()
        .enumerate()
        .filter_map(|(index, runner)| {
            let table = runner.as_table()?;
            let name = table
                .get("name")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{index}"), str::to_string);
            Some((name, table.clone()))
        })
        .collect()
}

/// Compares two gitlab-runner versions part by part, numbers as numbers: 16.11.1 < 17.0.0 and
/// 16.9.2 < 16.11.1.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<String> {
        v.split(['.', '-', '~', '+'])
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (a, b) = (parts(a), parts(b));
    for index in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(index).map_or("0", String::as_str),
            b.get(index).map_or("0", String::as_str),
        );
        let order = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

/// The keys a change touches, named as [`RULES`] names them.
fn changed_keys(have: &MachineSpec, want: &MachineSpec, reasons: &[Reason]) -> Vec<String> {
    let mut keys = Vec::new();
    for reason in reasons {
        match reason {
            Reason::FieldChanged { field, .. }
                if field == &format!("metadata.{}", render::RUNNER_CONFIG) =>
            {
                keys.extend(config_keys(
                    have.metadata
                        .get(render::RUNNER_CONFIG)
                        .map_or("", String::as_str),
                    want.metadata
                        .get(render::RUNNER_CONFIG)
                        .map_or("", String::as_str),
                ));
            }
            Reason::FieldChanged { field, .. } => keys.push(field.clone()),
            Reason::NotWorking { .. } => keys.push("status".to_string()),
            Reason::SecretChanged { name } => keys.push(format!("secret:{name}")),
            _ => {}
        }
    }
    keys
}

/// What a change does to a machine's gitlab-runner; `None` for machines without one, for
/// no-ops, and for changes nothing on the machine notices.
pub fn impact(
    action: Action,
    have: &MachineSpec,
    want: &MachineSpec,
    reasons: &[Reason],
) -> Option<Impact> {
    if !want.metadata.contains_key(render::RUNNER_CONFIG) || action == Action::NoOp {
        return None;
    }
    let keys = changed_keys(have, want, reasons);
    let mut rule = keys
        .iter()
        .map(|key| rule_of(key))
        .max()
        .unwrap_or(Rule::Unaffected);
    if action.is_replace() {
        rule = Rule::Replace;
    }
    let timeout = toml::from_str::<toml::Table>(
        want.metadata
            .get(render::RUNNER_CONFIG)
            .map_or("", String::as_str),
    )
    .ok()
    .and_then(|t| t.get("shutdown_timeout").and_then(toml::Value::as_integer))
    .unwrap_or(render::DEFAULT_SHUTDOWN_TIMEOUT);
    let wait = format!("running jobs finish, up to shutdown_timeout = {timeout} s");
    let because: Vec<&str> = keys
        .iter()
        .filter(|key| rule_of(key) == rule)
        .map(|key| key.strip_prefix("config.toml:").unwrap_or(key))
        .collect();
    let (class, procedure) = match rule {
        Rule::Unaffected => return None,
        Rule::NextBoot => (
            ImpactClass::None,
            "only the bootstrap changed: it takes effect when the machine is next made".to_string(),
        ),
        Rule::Reload if keys.iter().all(|key| key.starts_with("secret:")) => (
            ImpactClass::Reload,
            "the new secret is delivered in place and written into config.toml; gitlab-runner re-reads it within seconds".to_string(),
        ),
        Rule::Reload => (
            ImpactClass::Reload,
            "config.toml is delivered in place; gitlab-runner re-reads it within seconds; running jobs are not touched".to_string(),
        ),
        Rule::GracefulRestart => (
            ImpactClass::GracefulRestart,
            format!(
                "config.toml is delivered in place, then gitlab-runner restarts gracefully (SIGQUIT, {wait}) because {} changed",
                because.join(", ")
            ),
        ),
        Rule::Version => {
            let old = have
                .metadata
                .get(render::RUNNER_VERSION)
                .map_or("?", String::as_str);
            let new = want
                .metadata
                .get(render::RUNNER_VERSION)
                .map_or("?", String::as_str);
            let class = if compare_versions(new, old) == Ordering::Less {
                ImpactClass::Downgrade
            } else {
                ImpactClass::Upgrade
            };
            (
                class,
                format!(
                    "{}, as runner_upgrade.sh did: gitlab-runner stops gracefully (SIGQUIT, {wait}), version {new} replaces {old}, config.toml is delivered, it starts again",
                    class.as_str()
                ),
            )
        }
        Rule::Replace => (
            ImpactClass::Replace,
            format!("a new machine is made from the fleet file; the old one stops gracefully (SIGQUIT, {wait}) and is removed"),
        ),
    };
    Some(Impact { class, procedure })
}

/// Whether a config.toml change needs gitlab-runner to restart, by [`RULES`].
pub fn needs_restart(old: &str, new: &str) -> bool {
    config_keys(old, new)
        .iter()
        .any(|key| rule_of(key) >= Rule::GracefulRestart)
}

/// What a machine's watcher is told to do with the configuration delivered beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// How: `reload` writes config.toml only; `graceful_restart` writes it and restarts
    /// gitlab-runner; `upgrade` and `downgrade` stop it, install `version`, write, start;
    /// `replace` (a new machine, whose bootstrap installs the version) writes only; `none`
    /// does nothing.
    pub class: ImpactClass,
    /// The gitlab-runner version the config goes with.
    pub version: String,
    /// The SHA-256 (hex) of the `gitlab-runner-config` item this decision goes with, as
    /// delivered (secret references unresolved). A watcher that fetched any other config
    /// (an update half-delivered) does nothing.
    pub config_sha256: String,
}

/// Whether a machine has a watcher that applies configuration delivered later (GCE metadata,
/// EC2 parameters; a launch template's user data is fixed at boot).
pub fn is_watched(resource: &DesiredResource) -> bool {
    resource.object == ObjectKind::Instance
        && resource.spec.metadata.contains_key(render::RUNNER_CONFIG)
}

/// The desired object as apply delivers it: with the decision the machine's watcher carries
/// out, written into its metadata beside the config it goes with.
///
/// A new machine is told `replace`. A change nothing on the machine acts on (labels, the
/// bootstrap) keeps the decision the machine already has, so a decision not yet carried out is
/// not overwritten. The item is excluded from the comparison and from the `fleet-config`
/// digest, so delivering it never makes the fleet look drifted.
pub fn delivered(
    want: &DesiredResource,
    action: Action,
    impact: Option<&Impact>,
    have: Option<&MachineSpec>,
) -> DesiredResource {
    let mut out = want.clone();
    if action == Action::NoOp || action == Action::Delete || !is_watched(want) {
        return out;
    }
    let class = match (action, impact.map(|impact| impact.class)) {
        (Action::Create, _) => Some(ImpactClass::Replace),
        (_, Some(ImpactClass::None) | None) => None,
        (_, class) => class,
    };
    let text = match class {
        Some(class) => decision(class, &want.spec),
        None => match have.and_then(|have| have.metadata.get(ACTION)) {
            Some(kept) => kept.clone(),
            None => return out,
        },
    };
    out.spec.metadata.insert(ACTION.to_string(), text);
    out
}

/// The `fleet-action` item of a decision of `class` for a machine with metadata `spec`.
pub fn decision(class: ImpactClass, spec: &MachineSpec) -> String {
    let config = spec
        .metadata
        .get(render::RUNNER_CONFIG)
        .map_or("", String::as_str);
    let decision = Decision {
        class,
        version: spec
            .metadata
            .get(render::RUNNER_VERSION)
            .cloned()
            .unwrap_or_default(),
        config_sha256: Sha256::digest(config.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    };
    serde_json::to_string(&decision).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(version: &str, config: &str) -> MachineSpec {
        MachineSpec {
            metadata: BTreeMap::from([
                (render::RUNNER_CONFIG.to_string(), config.to_string()),
                (render::RUNNER_VERSION.to_string(), version.to_string()),
            ]),
            machine_type: "n1-standard-4".to_string(),
            zone: "us-east1-c".to_string(),
            image: "ubuntu-2204-lts".to_string(),
            disk_type: "pd-ssd".to_string(),
            disk_size_gb: 50,
            labels: BTreeMap::new(),
            networking: Default::default(),
            identity: Default::default(),
        }
    }

    fn changed(field: &str) -> Reason {
        Reason::FieldChanged {
            field: field.to_string(),
            before: String::new(),
            after: String::new(),
            forces_replacement: false,
        }
    }

    fn class_of(have: &MachineSpec, want: &MachineSpec) -> Option<ImpactClass> {
        let mut reasons = Vec::new();
        for key in [render::RUNNER_CONFIG, render::RUNNER_VERSION] {
            if have.metadata.get(key) != want.metadata.get(key) {
                reasons.push(changed(&format!("metadata.{key}")));
            }
        }
        impact(Action::Update, have, want, &reasons).map(|impact| impact.class)
    }

    const BASE: &str = "concurrent = 30\nlisten_address = \":9252\"\n\n[[runners]]\n  name = \"a\"\n  executor = \"docker-autoscaler\"\n  [runners.autoscaler]\n    plugin = \"googlecompute\"\n    [[runners.autoscaler.policy]]\n      idle_count = 1\n";

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(compare_versions("16.11.1", "17.0.0"), Ordering::Less);
        assert_eq!(compare_versions("16.9.2", "16.11.1"), Ordering::Less);
        assert_eq!(compare_versions("17.0.0", "17.0"), Ordering::Equal);
        assert_eq!(compare_versions("17.1.0", "17.0.9"), Ordering::Greater);
    }

    #[test]
    fn a_downgrade_is_not_labelled_an_upgrade() {
        assert_eq!(
            class_of(&spec("17.0.0", BASE), &spec("16.11.1", BASE)),
            Some(ImpactClass::Downgrade)
        );
        assert_eq!(
            class_of(&spec("16.11.1", BASE), &spec("17.0.0", BASE)),
            Some(ImpactClass::Upgrade)
        );
    }

    #[test]
    fn config_keys_follow_gitlab_runners_reload_rules() {
        let cases = [
            (BASE.replace("30", "40"), ImpactClass::Reload),
            (
                format!("{BASE}\n[[runners]]\n  name = \"b\"\n  executor = \"shell\"\n  [runners.autoscaler]\n    plugin = \"aws\"\n"),
                ImpactClass::Reload,
            ),
            (BASE.replace("idle_count = 1", "idle_count = 3"), ImpactClass::Reload),
            (BASE.replace(":9252", ":9253"), ImpactClass::GracefulRestart),
            (
                BASE.replace("googlecompute", "aws"),
                ImpactClass::GracefulRestart,
            ),
            (
                format!("{BASE}\n[session_server]\n  listen_address = \"[::]:8093\"\n"),
                ImpactClass::GracefulRestart,
            ),
        ];
        for (new, class) in cases {
            assert_eq!(
                class_of(&spec("17.0.0", BASE), &spec("17.0.0", &new)),
                Some(class),
                "{new}"
            );
        }
        assert_eq!(
            config_keys(BASE, &BASE.replace("googlecompute", "aws")),
            ["config.toml:runners.a.autoscaler.plugin"]
        );
    }

    #[test]
    fn the_most_severe_key_decides() {
        let have = spec("16.11.1", BASE);
        let want = spec("17.0.0", &BASE.replace(":9252", ":9253"));
        assert_eq!(class_of(&have, &want), Some(ImpactClass::Upgrade));
        let mut reasons = vec![changed("labels.color")];
        assert_eq!(impact(Action::Update, &have, &have, &reasons), None);
        reasons.push(changed("metadata.user-data"));
        assert_eq!(
            impact(Action::Update, &have, &have, &reasons).map(|i| i.class),
            Some(ImpactClass::None)
        );
    }

    #[test]
    fn the_decision_names_the_config_it_goes_with() {
        let text = decision(ImpactClass::Reload, &spec("17.0.0", "concurrent = 1\n"));
        let decision: Decision = serde_json::from_str(&text).unwrap();
        assert_eq!(decision.class, ImpactClass::Reload);
        assert_eq!(decision.version, "17.0.0");
        // What `sha256sum` says of the file as delivered.
        assert_eq!(
            decision.config_sha256,
            "fcc3c302401c17409627e1d96e3b2e55caaa4d12e218d351a48d74e03705a5e9"
        );
    }
}
