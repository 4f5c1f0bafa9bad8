//! What `fleet render` shows: each machine's delivery as its cloud receives it.
//!
//! In: the [`Desired`] set. Out: per machine (by cloud name, sorted) a text of exactly what
//! is sent: on GCE each metadata item as it is; on EC2 the user-data document (decompressed
//! when it is sent gzipped, with a note saying so and both sizes) and, for an instance, its
//! SSM parameters by name with type and tier; for a static host its files. What only apply
//! adds is named, never shown: secret values are `(sensitive)` (files keep their
//! `${secret:NAME}` references, as delivered), and the runner's decision is the plan's.

use std::collections::BTreeMap;

use super::delivery::{self, Tier};
use super::{file_path, SECRETS};
use crate::desired::{Desired, DesiredResource};
use crate::impact;
use crate::provider::{Cloud, ObjectKind};
use crate::secrets;

/// One machine's delivery, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The machine's cloud name, or a static host's name.
    pub machine: String,
    /// Other names `--machine` accepts for it: its address (`manager.NAME`,
    /// `template.NAME`) and a template's unversioned name.
    pub aliases: Vec<String>,
    /// The delivery as text, ending with a newline.
    pub text: String,
}

impl Shown {
    /// Whether `name` names this machine.
    pub fn is_named(&self, name: &str) -> bool {
        self.machine == name || self.aliases.iter().any(|alias| alias == name)
    }
}

/// Every machine's delivery that sends anything, and every static host's files, sorted by
/// machine name.
pub fn deliveries(desired: &Desired) -> Vec<Shown> {
    let mut out: Vec<Shown> = desired
        .resources
        .values()
        .filter(|resource| !resource.spec.metadata.is_empty())
        .map(|resource| Shown {
            machine: resource.cloud_name.clone(),
            aliases: vec![
                resource.address.to_string(),
                resource.address.name().to_string(),
            ],
            text: machine(&desired.fleet, resource),
        })
        .collect();
    out.extend(desired.hosts.iter().map(|(name, files)| Shown {
        machine: name.clone(),
        aliases: Vec::new(),
        text: host(name, files),
    }));
    out.sort_by(|a, b| a.machine.cmp(&b.machine));
    out
}

fn object_name(cloud: Cloud, object: ObjectKind) -> &'static str {
    match (cloud, object) {
        (Cloud::Gcp, ObjectKind::Instance) => "GCE instance",
        (Cloud::Gcp, ObjectKind::InstanceTemplate) => "GCE instance template",
        (Cloud::Aws, ObjectKind::Instance) => "EC2 instance",
        (Cloud::Aws, ObjectKind::InstanceTemplate) => "EC2 launch template",
    }
}

/// A text ending with a newline, as a delivered value is printed.
fn push_value(out: &mut String, value: &str) {
    out.push_str(value);
    if !value.ends_with('\n') {
        out.push('\n');
    }
}

fn machine(fleet: &str, resource: &DesiredResource) -> String {
    let metadata = &resource.spec.metadata;
    let mut out = format!(
        "==> {} ({}, {}) <==\n",
        resource.cloud_name,
        resource.address,
        object_name(resource.cloud, resource.object)
    );
    let names: Vec<String> = secrets::references(metadata.values()).into_iter().collect();
    match resource.cloud {
        Cloud::Gcp => gce(&mut out, metadata, &names),
        Cloud::Aws => ec2(&mut out, fleet, resource, &names),
    }
    if impact::is_watched(resource) {
        let what = match resource.cloud {
            Cloud::Gcp => format!("metadata item `{}`", impact::ACTION),
            Cloud::Aws => "parameter `action`".to_string(),
        };
        out.push_str(&format!(
            "==> {what}: written by each apply that changes the machine, the decision its plan shows\n"
        ));
    }
    out
}

/// GCE: every metadata item as it is sent.
fn gce(out: &mut String, metadata: &BTreeMap<String, String>, secrets: &[String]) {
    for (key, value) in metadata {
        out.push_str(&format!(
            "==> metadata item `{key}` ({} bytes)\n",
            value.len()
        ));
        push_value(out, value);
    }
    if !secrets.is_empty() {
        out.push_str(&format!(
            "==> metadata item `{SECRETS}`: written by apply, the digests of {} and the names of the Secret Manager secrets holding their values (no value)\n",
            secrets.join(", ")
        ));
    }
}

/// EC2: the user-data document and, for an instance, its parameters.
fn ec2(out: &mut String, fleet: &str, resource: &DesiredResource, secrets: &[String]) {
    let metadata = &resource.spec.metadata;
    let root = delivery::parameter_root(fleet);
    let (document, sent) = match resource.object {
        ObjectKind::Instance => (
            delivery::ec2_instance_document(metadata, &root),
            delivery::ec2_instance_user_data(metadata, &root),
        ),
        ObjectKind::InstanceTemplate => (
            delivery::ec2_document(metadata),
            delivery::ec2_user_data(metadata),
        ),
    };
    if let (Some(document), Some(sent)) = (document, sent) {
        if sent.len() == document.len() {
            out.push_str(&format!(
                "==> user data ({} bytes, sent as it is)\n",
                document.len()
            ));
        } else {
            out.push_str(&format!(
                "==> user data (sent gzip-compressed: {} bytes; shown decompressed: {} bytes)\n",
                sent.len(),
                document.len()
            ));
        }
        push_value(out, &document);
    }
    // A launch template's machines are given no secret (templates render no file that
    // could reference one) and have no parameters.
    if resource.object == ObjectKind::InstanceTemplate {
        return;
    }
    // The secret parameters as apply writes them, with placeholders where values and their
    // digests go: names, types and order are what matter here, and no value is at hand.
    let mut with_secrets = metadata.clone();
    if !secrets.is_empty() {
        let placeholder = crate::secrets::Delivery {
            digests: secrets
                .iter()
                .map(|name| (name.clone(), String::new()))
                .collect(),
            values: secrets
                .iter()
                .map(|name| (name.clone(), String::new()))
                .collect(),
            ..Default::default()
        };
        with_secrets.insert(
            SECRETS.to_string(),
            serde_json::to_string(&placeholder).unwrap_or_default(),
        );
    }
    let parameters = delivery::parameters(&with_secrets);
    if parameters.is_empty() {
        return;
    }
    out.push_str(&format!(
        "==> SSM parameters under {root}<instance id>/ ({})\n",
        parameters.len()
    ));
    for parameter in parameters {
        let name = &parameter.name;
        if parameter.secure {
            out.push_str(&format!(
                "==> parameter `{name}` (SecureString, tier by its value's size): (sensitive), written by apply\n"
            ));
        } else if name == delivery::PARAMETER_INDEX {
            out.push_str(&format!(
                "==> parameter `{name}` (String): the names the watcher reads (and `action` where apply writes one), written last by apply\n"
            ));
            push_value(out, &parameter.value);
        } else if name == delivery::SECRET_DIGESTS {
            out.push_str(&format!(
                "==> parameter `{name}` (String): the secrets' salted digests, written by apply\n"
            ));
        } else {
            let tier = match Tier::for_size(parameter.value.len()) {
                Some(Tier::Standard) => "Standard",
                Some(Tier::Advanced) => "Advanced",
                None => "too large for any tier",
            };
            out.push_str(&format!(
                "==> parameter `{name}` (String, {tier}, {} bytes)\n",
                parameter.value.len()
            ));
            push_value(out, &parameter.value);
        }
    }
}

/// A static host: the files laid down on it by hand, by path.
fn host(name: &str, files: &BTreeMap<String, String>) -> String {
    let mut out = format!("==> {name} (static host: its files, laid down by hand) <==\n");
    for (key, text) in files {
        let Some(path) = file_path(key) else {
            continue;
        };
        out.push_str(&format!("==> file /{path} ({} bytes)\n", text.len()));
        push_value(&mut out, text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = "fleet: show
clouds:
  aws: { region: us-east-1 }
defaults:
  aws:
    zone: us-east-1a
    image: ami-0c9f35b1b63e7d2a4
    disk: { type: gp3, size_gb: 100 }
managers:
  show-manager-{n}:
    matrix: { count: 1 }
    cloud: aws
    machine_type: m6g.large
    runner: { version: \"16.11.1\" }
    runners:
      - name: show-shell
        executor: shell
        url: https://gitlab.example.com
        token: \"${secret:SHOW_TOKEN}\"
";

    #[test]
    fn an_ec2_instance_shows_its_document_and_parameters_with_secrets_by_name_only() {
        let desired = crate::spec::compile("show.yaml", FLEET).unwrap();
        let shown = deliveries(&desired);
        assert_eq!(shown.len(), 1);
        let text = &shown[0].text;
        assert!(shown[0].is_named("manager.show-manager-1"));
        assert!(text.starts_with("==> show-manager-1 (manager.show-manager-1, EC2 instance) <==\n"));
        assert!(
            text.contains("sent as it is)\nContent-Type: multipart/mixed"),
            "{text}"
        );
        assert!(
            text.contains("==> SSM parameters under /fleet/show/<instance id>/ (6)\n"),
            "{text}"
        );
        assert!(
            text.contains("==> parameter `config.toml` (String, Standard, "),
            "{text}"
        );
        assert!(text.contains("token = \"${secret:SHOW_TOKEN}\""), "{text}");
        assert!(text.contains("==> parameter `secrets/SHOW_TOKEN` (SecureString, tier by its value's size): (sensitive), written by apply\n"), "{text}");
        assert!(
            text.contains("==> parameter `action`: written by each apply"),
            "{text}"
        );
        assert!(text.contains("==> parameter `index` (String): the names the watcher reads (and `action` where apply writes one), written last by apply\n[\"config.toml\",\"secret-digests\",\"secrets/SHOW_TOKEN\",\"version\"]"), "{text}");
    }

    #[test]
    fn a_document_sent_gzipped_is_shown_decompressed_with_both_sizes() {
        let mut desired = crate::spec::compile("show.yaml", FLEET).unwrap();
        let manager = desired.resources.values_mut().next().unwrap();
        // A bootstrap over EC2's 16 KB: the document is sent gzip-compressed.
        let long = format!("#cloud-config\n# {}\n", "x".repeat(20 * 1024));
        manager
            .spec
            .metadata
            .insert(super::super::USER_DATA.to_string(), long.clone());
        let root = delivery::parameter_root("show");
        let metadata = &manager.spec.metadata;
        let document = delivery::ec2_instance_document(metadata, &root).unwrap();
        let sent = delivery::ec2_instance_user_data(metadata, &root).unwrap();
        assert!(sent.len() < document.len());
        let text = &deliveries(&desired)[0].text;
        let note = format!(
            "==> user data (sent gzip-compressed: {} bytes; shown decompressed: {} bytes)\n",
            sent.len(),
            document.len()
        );
        assert!(text.contains(&format!("{note}{document}")), "{text}");
        assert!(text.contains(&long));
    }
}
