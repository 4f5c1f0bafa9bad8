//! Delivery: the exact bytes each machine is given, per channel.
//!
//! In: a machine's rendered files by metadata key (and, at apply time, the `fleet-secrets`
//! item). Out: on GCE the metadata items, `fleet-secrets` holding digests and the names of
//! the Secret Manager secrets its values go to ([`gce_secrets`]); on EC2 one user-data
//! document, a cloud-init MIME multi-part: a `text/cloud-config` part with the bootstrap and,
//! for an instance, a second writing the root of its SSM parameters, which hold its files,
//! decision and secrets ([`parameters`]); for a launch template a second with `write_files`
//! putting each file where its consumer reads it. The later parts carry a `Merge-Type` header
//! that appends lists, so cloud-init runs one config with the bootstrap's `write_files` and
//! the files together.
//! The document is gzip-compressed when it is over EC2's limit (cloud-init decompresses gzip
//! user data), and [`oversize`] tells, at validate time, every channel a machine's delivery
//! does not fit. On GCE, the values of `fleet-secrets` go to Secret Manager instead
//! ([`gce_secrets`]: one secret per fleet, machine and name) and the machine's metadata names
//! them. Providers only transport these bytes. Pure functions, no I/O.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::desired::short_hash;
use crate::provider::{Cloud, ObjectKind};
use crate::render::{
    yaml_quote, PROMETHEUS_CONFIG, RUNNER_CONFIG, RUNNER_VERSION, SECRETS, USER_DATA,
};

/// EC2 takes at most 16 KB of user data, counted before base64.
pub const EC2_USER_DATA_LIMIT: usize = 16 * 1024;
/// GCE takes at most 256 KB in one metadata value.
pub const GCE_METADATA_VALUE_LIMIT: usize = 256 * 1024;
/// Where an EC2 instance finds the root of its parameters (written from its user data).
pub const EC2_PARAMETER_ROOT_PATH: &str = "/etc/fleet/parameters";
/// SSM Parameter Store holds at most 4 KB in a Standard parameter...
pub const SSM_STANDARD_LIMIT: usize = 4 * 1024;
/// ...and 8 KB in an Advanced one.
pub const SSM_ADVANCED_LIMIT: usize = 8 * 1024;
/// The longest parameter root a fleet can have (`/fleet/`, a 63-character label, `/`), which
/// the validate-time size check assumes, since it runs before the fleet's name is final.
const LONGEST_ROOT: usize = 7 + 63 + 1;
/// The parameter names of an EC2 instance's delivered items, below its prefix.
pub const EC2_PARAMETERS: &[(&str, &str)] = &[
    (RUNNER_CONFIG, "config.toml"),
    (RUNNER_VERSION, "version"),
    (PROMETHEUS_CONFIG, "prometheus.yml"),
    (crate::impact::ACTION, "action"),
];
/// Secret values are `SecureString` parameters below this name.
pub const SECRET_PARAMETERS: &str = "secrets/";
/// The digests of the secrets, without values, as one `String` parameter.
pub const SECRET_DIGESTS: &str = "secret-digests";
/// The SHA-256 of the bootstrap an instance was sent, as a `String` parameter: EC2 does not
/// return user data, so this is how a plan tells a new bootstrap (a new machine) from files
/// edited by hand (put back in place).
pub const BOOTSTRAP_DIGEST: &str = "bootstrap.sha256";
/// The metadata key discovery reports [`BOOTSTRAP_DIGEST`] under; never delivered, never a file.
pub const BOOTSTRAP_DIGEST_KEY: &str = "user-data-sha256";
/// The names of an instance's other parameters its watcher reads, as a `String` parameter
/// written last. The watcher reads it first and then asks for exactly those: IAM refuses a
/// whole `GetParameters` when one name is not the caller's to read, and a name with no
/// parameter has no tag, so asking for an item a machine does not have would fail them all.
pub const PARAMETER_INDEX: &str = "index";
/// The metadata key discovery reports [`PARAMETER_INDEX`] under; never delivered, never
/// compared. An instance with parameters but no index was made by an earlier release.
pub const PARAMETER_INDEX_KEY: &str = "parameter-index";

/// Whether a metadata key is one discovery reports beside the delivered items (what the
/// parameters say of themselves), never delivered and never compared as a file.
pub fn is_discovery_only(key: &str) -> bool {
    key == BOOTSTRAP_DIGEST_KEY || key == PARAMETER_INDEX_KEY
}

/// The SHA-256 (hex) of a bootstrap.
pub fn bootstrap_digest(bootstrap: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bootstrap.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
/// How a later part merges into the config before it: lists (`write_files`, `runcmd`) are
/// appended, keys already set are kept.
pub const MERGE_TYPE: &str = "list(append)+dict(no_replace,recurse_list)+str()";

/// Where an EC2 launch template's machines get each delivered file, with its mode. Keys not
/// named here are not files: `fleet-action` and `fleet-secrets` go to an instance's
/// parameters, and templates render neither.
const EC2_FILES: &[(&str, &str, &str)] = &[
    (RUNNER_CONFIG, "/etc/gitlab-runner/config.toml", "0600"),
    (RUNNER_VERSION, "/etc/gitlab-runner/version", "0644"),
    (PROMETHEUS_CONFIG, "/etc/prometheus/prometheus.yml", "0644"),
];

/// A channel a delivery travels through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// EC2 user data: one document per machine.
    Ec2UserData,
    /// One GCE metadata value.
    GceMetadataValue,
    /// One SSM parameter of an EC2 instance.
    SsmParameter,
}

/// A delivery that does not fit its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversize {
    /// The channel.
    pub channel: Channel,
    /// The metadata key, for a GCE value.
    pub key: Option<String>,
    /// Its size as sent, in bytes (compressed, for EC2 user data over the limit).
    pub bytes: usize,
    /// Its size before compression.
    pub uncompressed: usize,
    /// The channel's limit in bytes.
    pub limit: usize,
}

impl Oversize {
    /// The summary of the diagnostic.
    pub fn message(&self, machine: &str) -> String {
        match self.channel {
            Channel::Ec2UserData => format!("The EC2 user data of {machine} is too large"),
            Channel::GceMetadataValue => format!(
                "The GCE metadata item `{}` of {machine} is too large",
                self.key.as_deref().unwrap_or_default()
            ),
            Channel::SsmParameter => format!(
                "The SSM parameter `{}` of {machine} is too large",
                self.key.as_deref().unwrap_or_default()
            ),
        }
    }

    /// What the diagnostic says at the machine.
    pub fn label(&self) -> String {
        match self.channel {
            Channel::Ec2UserData => format!(
                "its user data is {} bytes gzip-compressed ({} uncompressed); EC2 takes at most {} bytes",
                self.bytes, self.uncompressed, self.limit
            ),
            Channel::GceMetadataValue => format!(
                "it is {} bytes; GCE takes at most {} bytes in one metadata value",
                self.bytes, self.limit
            ),
            Channel::SsmParameter => format!(
                "it is {} bytes; an Advanced SSM parameter holds at most {} bytes",
                self.bytes, self.limit
            ),
        }
    }

    /// How to fix it.
    pub fn help(&self) -> String {
        "make the machine's configuration smaller (fewer runners or scrape targets on one machine), or split it over more machines".to_string()
    }
}

/// Every channel a machine's delivery does not fit: on EC2 the user data and, for an
/// instance, each parameter its files become (secret values are known only at apply time).
pub fn oversize(
    cloud: Cloud,
    object: ObjectKind,
    metadata: &BTreeMap<String, String>,
) -> Vec<Oversize> {
    match cloud {
        Cloud::Aws => {
            let mut out = Vec::new();
            let placeholder = "r".repeat(LONGEST_ROOT);
            let document = match object {
                ObjectKind::Instance => ec2_instance_document(metadata, &placeholder),
                ObjectKind::InstanceTemplate => ec2_document(metadata),
            };
            if let Some(document) = document.filter(|d| d.len() > EC2_USER_DATA_LIMIT) {
                let sent = gzip(document.as_bytes()).len();
                if sent > EC2_USER_DATA_LIMIT {
                    out.push(Oversize {
                        channel: Channel::Ec2UserData,
                        key: None,
                        bytes: sent,
                        uncompressed: document.len(),
                        limit: EC2_USER_DATA_LIMIT,
                    });
                }
            }
            if object == ObjectKind::Instance {
                for parameter in parameters(metadata) {
                    if Tier::for_size(parameter.value.len()).is_none() {
                        out.push(Oversize {
                            channel: Channel::SsmParameter,
                            key: Some(parameter.name),
                            bytes: parameter.value.len(),
                            uncompressed: parameter.value.len(),
                            limit: SSM_ADVANCED_LIMIT,
                        });
                    }
                }
            }
            out
        }
        Cloud::Gcp => metadata
            .iter()
            .filter(|(_, value)| value.len() > GCE_METADATA_VALUE_LIMIT)
            .map(|(key, value)| Oversize {
                channel: Channel::GceMetadataValue,
                key: Some(key.clone()),
                bytes: value.len(),
                uncompressed: value.len(),
                limit: GCE_METADATA_VALUE_LIMIT,
            })
            .collect(),
    }
}

/// The EC2 user data of a machine, as sent (before base64): the [`ec2_document`], gzip-
/// compressed when it is over [`EC2_USER_DATA_LIMIT`]. `None` when there is nothing to deliver.
pub fn ec2_user_data(metadata: &BTreeMap<String, String>) -> Option<Vec<u8>> {
    let document = ec2_document(metadata)?;
    Some(compress_over_limit(document))
}

/// A document as sent: gzip-compressed when it is over [`EC2_USER_DATA_LIMIT`].
fn compress_over_limit(document: String) -> Vec<u8> {
    if document.len() <= EC2_USER_DATA_LIMIT {
        document.into_bytes()
    } else {
        gzip(document.as_bytes())
    }
}

/// One MIME part (`text/cloud-config`): its file name, whether it merges into the parts before it,
/// and its body.
struct Part {
    filename: &'static str,
    merges: bool,
    body: String,
}

/// The user-data document of an EC2 launch-template version, uncompressed: a cloud-init MIME
/// multi-part with the bootstrap and the files. Machines made from a template come and go
/// with the autoscaler and have no parameters of their own, so their files ride in user data.
/// `None` when there is no bootstrap and no files.
pub fn ec2_document(metadata: &BTreeMap<String, String>) -> Option<String> {
    document(metadata, None)
}

/// The user-data document of an EC2 instance, uncompressed: the bootstrap and the parameter
/// root its watcher reads from (see [`parameters`]); references only, no file and no value.
pub fn ec2_instance_document(metadata: &BTreeMap<String, String>, root: &str) -> Option<String> {
    document(metadata, Some(root))
}

/// The EC2 user data of an instance, as sent (before base64): [`ec2_instance_document`],
/// gzip-compressed when it is over [`EC2_USER_DATA_LIMIT`].
pub fn ec2_instance_user_data(metadata: &BTreeMap<String, String>, root: &str) -> Option<Vec<u8>> {
    let document = ec2_instance_document(metadata, root)?;
    Some(compress_over_limit(document))
}

/// The parameter root of a fleet: every instance's parameters are under `<root><instance id>/`.
pub fn parameter_root(fleet: &str) -> String {
    format!("/fleet/{fleet}/")
}

/// The tag on each of an instance's parameters that names the one instance allowed to read
/// it: the machines' policy allows `ssm:GetParameters` only where this tag equals
/// `${ec2:SourceInstanceARN}`, the instance whose role signed the request (IAM cannot put an
/// instance id into a parameter ARN). An untagged parameter is readable by no machine.
pub const INSTANCE_TAG: &str = "fleet-instance";

/// The ARN of an EC2 instance, as `ec2:SourceInstanceARN` gives it for requests signed with
/// the instance's role: `arn:<partition>:ec2:<region>:<account>:instance/<id>`.
pub fn ec2_instance_arn(region: &str, account: &str, id: &str) -> String {
    format!(
        "arn:{}:ec2:{region}:{account}:instance/{id}",
        aws_partition(region)
    )
}

/// The AWS partition a region is in, as its ARNs name it.
pub fn aws_partition(region: &str) -> &'static str {
    const PARTITIONS: &[(&str, &str)] = &[
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("us-isof-", "aws-iso-f"),
        ("us-iso-", "aws-iso"),
        ("eu-isoe-", "aws-iso-e"),
        ("eusc-", "aws-eusc"),
    ];
    PARTITIONS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, partition)| partition)
}

/// The SSM Parameter Store tier a value needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Up to 4 KB, free.
    Standard,
    /// Up to 8 KB, charged per parameter.
    Advanced,
}

impl Tier {
    /// The smallest tier that holds `bytes`, or `None` when no tier does.
    pub fn for_size(bytes: usize) -> Option<Tier> {
        if bytes <= SSM_STANDARD_LIMIT {
            Some(Tier::Standard)
        } else if bytes <= SSM_ADVANCED_LIMIT {
            Some(Tier::Advanced)
        } else {
            None
        }
    }
}

/// One SSM parameter of an EC2 instance, its name relative to the instance's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// `config.toml`, `version`, `action`, `secret-digests`, `secrets/<NAME>`, ...
    pub name: String,
    /// The value as stored.
    pub value: String,
    /// Stored as a `SecureString` (a secret value), else as a `String`.
    pub secure: bool,
    /// For a secret, its salted digest (the tag beside it); never the value.
    pub digest: Option<String>,
}

/// The metadata key a parameter name stands for, for discovery to read a `String` parameter
/// back as the metadata it delivered; `None` for a name that is no file.
pub fn parameter_key(name: &str) -> Option<&'static str> {
    if name == BOOTSTRAP_DIGEST {
        return Some(BOOTSTRAP_DIGEST_KEY);
    }
    if name == PARAMETER_INDEX {
        return Some(PARAMETER_INDEX_KEY);
    }
    EC2_PARAMETERS
        .iter()
        .find(|(_, known)| *known == name)
        .map(|(key, _)| *key)
}

/// What an EC2 instance's watcher reads from Parameter Store: each file and the decision as a
/// `String`, each secret value as a `SecureString` under `secrets/` with its digest, and the
/// digests together as `secret-digests` (what a plan reads to see a rotation). The bootstrap is
/// not among them: it rides in user data.
pub fn parameters(metadata: &BTreeMap<String, String>) -> Vec<Parameter> {
    let mut out: Vec<Parameter> = EC2_PARAMETERS
        .iter()
        .filter_map(|(key, name)| {
            Some(Parameter {
                name: (*name).to_string(),
                value: metadata.get(*key)?.clone(),
                secure: false,
                digest: None,
            })
        })
        .collect();
    if let Some(delivery) = metadata
        .get(SECRETS)
        .and_then(|text| serde_json::from_str::<crate::secrets::Delivery>(text).ok())
    {
        for (name, value) in &delivery.values {
            out.push(Parameter {
                name: format!("{SECRET_PARAMETERS}{name}"),
                value: value.clone(),
                secure: true,
                digest: delivery.digests.get(name).cloned(),
            });
        }
        let digests = crate::secrets::Delivery {
            digests: delivery.digests,
            ..crate::secrets::Delivery::default()
        };
        out.push(Parameter {
            name: SECRET_DIGESTS.to_string(),
            value: serde_json::to_string(&digests).unwrap_or_default(),
            secure: false,
            digest: None,
        });
    }
    // Only beside something to watch: an instance with no parameters has none of its own.
    if let (false, Some(bootstrap)) = (out.is_empty(), metadata.get(USER_DATA)) {
        out.push(Parameter {
            name: BOOTSTRAP_DIGEST.to_string(),
            value: bootstrap_digest(bootstrap),
            secure: false,
            digest: None,
        });
    }
    // Last, what the watcher reads first: the names of the others it reads.
    if !out.is_empty() {
        let mut names: Vec<&str> = out
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| *name != BOOTSTRAP_DIGEST)
            .collect();
        names.sort_unstable();
        let index = serde_json::to_string(&names).unwrap_or_default();
        out.push(Parameter {
            name: PARAMETER_INDEX.to_string(),
            value: index,
            secure: false,
            digest: None,
        });
    }
    out
}

/// A document of the bootstrap and either the files (`root` `None`) or the parameter root.
fn document(metadata: &BTreeMap<String, String>, root: Option<&str>) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(bootstrap) = metadata.get(USER_DATA) {
        parts.push(Part {
            filename: "bootstrap.yaml",
            merges: false,
            body: bootstrap.clone(),
        });
    }
    if let Some(root) = root {
        // An instance with no parameters (a builder: only its bootstrap) is told no root.
        if parameters(metadata).is_empty() {
            return mime(parts);
        }
        let mut body = String::from(
            "#cloud-config\n# Where this machine's watcher reads its files and secrets: SSM parameters under this root and its instance id.\nwrite_files:\n",
        );
        body.push_str(&write_file(EC2_PARAMETER_ROOT_PATH, "0644", root));
        parts.push(Part {
            filename: "parameters.yaml",
            merges: true,
            body,
        });
        return mime(parts);
    }
    let mut files: Vec<(String, &str, &str)> = EC2_FILES
        .iter()
        .filter_map(|(key, path, mode)| {
            Some((path.to_string(), *mode, metadata.get(*key)?.as_str()))
        })
        .collect();
    // A key fleet has no place for yet still lands where a reader can find it.
    files.extend(
        metadata
            .iter()
            .filter(|(key, _)| {
                !EC2_FILES.iter().any(|(known, _, _)| known == key)
                    && ![USER_DATA, SECRETS, crate::impact::ACTION].contains(&key.as_str())
            })
            .map(|(key, value)| (format!("/etc/fleet/{key}"), "0644", value.as_str())),
    );
    if !files.is_empty() {
        let mut body = String::from(
            "#cloud-config\n# The files of this machine, each where its consumer reads it.\nwrite_files:\n",
        );
        for (path, mode, content) in files {
            body.push_str(&write_file(&path, mode, content));
        }
        parts.push(Part {
            filename: "files.yaml",
            merges: true,
            body,
        });
    }
    mime(parts)
}

/// The MIME multi-part of some parts; `None` for none.
fn mime(parts: Vec<Part>) -> Option<String> {
    if parts.is_empty() {
        return None;
    }
    let bodies: Vec<&str> = parts.iter().map(|part| part.body.as_str()).collect();
    // The boundary is a digest of the parts, so it is the same for the same content and
    // cannot occur in it by accident.
    let boundary = format!("fleet-{}", &short_hash(&bodies)[..24]);
    let mut out =
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    for part in parts {
        out.push_str(&format!("--{boundary}\n"));
        out.push_str("Content-Type: text/cloud-config; charset=\"utf-8\"\n");
        out.push_str("MIME-Version: 1.0\n");
        out.push_str(&format!(
            "Content-Disposition: attachment; filename=\"{}\"\n",
            part.filename
        ));
        if part.merges {
            out.push_str(&format!("Merge-Type: {MERGE_TYPE}\n"));
        }
        // Plain ASCII goes as it is, so the document reads in a review; anything else as
        // base64, which cloud-init decodes without guessing at a charset.
        if part.body.is_ascii() && !part.body.contains('\r') {
            out.push_str("Content-Transfer-Encoding: 7bit\n\n");
            out.push_str(&part.body);
            if !part.body.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str("Content-Transfer-Encoding: base64\n\n");
            let encoded = BASE64.encode(part.body.as_bytes());
            for line in encoded.as_bytes().chunks(76) {
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
        }
    }
    out.push_str(&format!("--{boundary}--\n"));
    Some(out)
}

/// One `write_files` entry; the content is a YAML double-quoted scalar, exact whatever it holds.
fn write_file(path: &str, mode: &str, content: &str) -> String {
    format!(
        "  - path: {}\n    owner: root:root\n    permissions: \"{mode}\"\n    content: {}\n",
        yaml_quote(path),
        yaml_quote(content)
    )
}

/// A gzip member (RFC 1952) of `data`: no file name and no time, so the same input gives the
/// same bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 9));
    out.extend(crc32(data).to_le_bytes());
    // ISIZE is the length modulo 2^32, by definition.
    out.extend(((data.len() & 0xffff_ffff) as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected), as gzip checks it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The `fleet-kind` label value of a GCE machine's secret in Secret Manager. Discovery lists
/// machines and templates by `fleet-kind`, and Secret Manager is another API, so a secret is
/// never taken for a machine.
pub const GCE_SECRET_KIND: &str = "secret";
/// The label beside each Secret Manager secret holding its salted digest (never the value).
pub const SECRET_DIGEST_LABEL: &str = "fleet-digest";
/// The longest Secret Manager secret id.
const SECRET_ID_LIMIT: usize = 255;

/// One secret of a GCE machine as Secret Manager keeps it: one secret per fleet, machine and
/// name, its value the latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceSecret {
    /// The name in `${secret:NAME}`.
    pub name: String,
    /// The secret id, unique per fleet, machine and name ([`gce_secret_id`]).
    pub id: String,
    /// Its full resource name, `projects/P/secrets/ID`, which the machine is told.
    pub resource: String,
    /// The value, for its latest version.
    pub value: String,
    /// Its salted digest, the [`SECRET_DIGEST_LABEL`] label.
    pub digest: String,
    /// Its labels: `fleet`, `fleet-kind` [`GCE_SECRET_KIND`] and the digest.
    pub labels: BTreeMap<String, String>,
}

/// The start of every Secret Manager id of `fleet`'s secrets: `fleet-`, a digest of the fleet
/// name, `-`. Unique per fleet, so an IAM condition `resource.name.startsWith(...)` on it
/// grants one fleet's secrets and no other's (a readable fleet name alone would not: the
/// secrets of fleet `ci-shared` start like those of fleet `ci`).
pub fn gce_secret_prefix(fleet: &str) -> String {
    format!(
        "fleet-{}-",
        &short_hash(&["fleet-secret-prefix", fleet])[..16]
    )
}

/// The Secret Manager id of secret `name` of the machine `machine` (its GCE id,
/// `zones/Z/instances/N`, so a machine replaced into another zone under the same name does
/// not share its secrets with the one it replaces) in `fleet`.
///
/// The fleet's [`gce_secret_prefix`], then readable parts (`<fleet>-<machine name>-<NAME>`,
/// `.` written `_`), then a digest of the exact parts, so ids that would read alike (`A.B` and
/// `A_B`, a machine in two zones) differ, within Secret Manager's rule
/// `[A-Za-z0-9_-]{1,255}` however long the parts.
pub fn gce_secret_id(fleet: &str, machine: &str, name: &str) -> String {
    let short_machine = machine.rsplit('/').next().unwrap_or(machine);
    let digest = &short_hash(&["fleet-secret-id", fleet, machine, name])[..12];
    let prefix = gce_secret_prefix(fleet);
    let readable: String = format!("{fleet}-{short_machine}-{name}")
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    let room = SECRET_ID_LIMIT - prefix.len() - digest.len() - 1;
    // Every character is ASCII here, so any byte index is a character boundary.
    format!("{prefix}{}-{digest}", &readable[..readable.len().min(room)])
}

/// The labels of a GCE machine's secret.
pub fn gce_secret_labels(fleet: &str, digest: &str) -> BTreeMap<String, String> {
    [
        (crate::provider::labels::FLEET, fleet),
        (crate::provider::labels::KIND, GCE_SECRET_KIND),
        (SECRET_DIGEST_LABEL, digest),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect()
}

/// What a GCE machine is sent, and the secrets stored for it. In: the metadata apply hands
/// over (`fleet-secrets` holding digests and values), the fleet, the machine's GCE id and the
/// project. Out: the metadata with `fleet-secrets` holding the digests and each secret's
/// resource name, no value; and one [`GceSecret`] per value, for Secret Manager.
pub fn gce_secrets(
    fleet: &str,
    machine: &str,
    project: &str,
    metadata: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<GceSecret>) {
    let mut sent = metadata.clone();
    let Some(delivery) = metadata
        .get(SECRETS)
        .and_then(|text| serde_json::from_str::<crate::secrets::Delivery>(text).ok())
    else {
        return (sent, Vec::new());
    };
    let mut secrets = Vec::new();
    let mut names = delivery.names.clone();
    for (name, value) in &delivery.values {
        let id = gce_secret_id(fleet, machine, name);
        let resource = format!("projects/{project}/secrets/{id}");
        let digest = delivery.digests.get(name).cloned().unwrap_or_default();
        names.insert(name.clone(), resource.clone());
        secrets.push(GceSecret {
            name: name.clone(),
            labels: gce_secret_labels(fleet, &digest),
            id,
            resource,
            value: value.clone(),
            digest,
        });
    }
    let references = crate::secrets::Delivery {
        digests: delivery.digests,
        values: BTreeMap::new(),
        names,
    };
    sent.insert(
        SECRETS.to_string(),
        serde_json::to_string(&references).unwrap_or_default(),
    );
    (sent, secrets)
}

/// The Secret Manager resource names a GCE machine's delivered metadata refers to, by
/// secret name: what a deletion of the machine deletes.
pub fn gce_secret_names(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    metadata
        .get(SECRETS)
        .and_then(|text| serde_json::from_str::<crate::secrets::Delivery>(text).ok())
        .map(|delivery| delivery.names)
        .unwrap_or_default()
}

/// Whether `resource` names a secret of `fleet` in `project`: `projects/<project>/secrets/`
/// then an id under the fleet's [`gce_secret_prefix`]. A machine's metadata is what anyone
/// allowed to set metadata wrote; only names of this shape are ever deleted or written.
pub fn is_fleet_secret(fleet: &str, project: &str, resource: &str) -> bool {
    resource
        .strip_prefix(&format!("projects/{project}/secrets/"))
        .is_some_and(|id| {
            id.starts_with(&gce_secret_prefix(fleet))
                && id.len() <= SECRET_ID_LIMIT
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// The secrets of `fleet` in `project` that a machine's metadata names, by secret name;
/// names of any other shape (another fleet's, another project's, anything else) left out.
pub fn gce_fleet_secret_names(
    fleet: &str,
    project: &str,
    metadata: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    gce_secret_names(metadata)
        .into_iter()
        .filter(|(_, resource)| is_fleet_secret(fleet, project, resource))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part of a document: its headers and its decoded body.
    struct ParsedPart {
        headers: Vec<(String, String)>,
        body: String,
    }

    impl ParsedPart {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }
    }

    /// Splits a document as a MIME reader does: the boundary from the top header, then each
    /// part's headers and body, base64 decoded where it says so.
    fn parse(document: &str) -> (String, Vec<ParsedPart>) {
        let (head, rest) = document.split_once("\n\n").unwrap();
        let boundary = head
            .split("boundary=\"")
            .nth(1)
            .and_then(|b| b.split('"').next())
            .unwrap()
            .to_string();
        let end = format!("\n--{boundary}--\n");
        assert!(rest.ends_with(&end), "no closing boundary:\n{document}");
        let inner = &rest[..rest.len() - end.len() + 1];
        let parts = inner
            .split(&format!("--{boundary}\n"))
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (headers, body) = part.split_once("\n\n").unwrap();
                let headers: Vec<(String, String)> = headers
                    .lines()
                    .map(|line| {
                        let (key, value) = line.split_once(": ").unwrap();
                        (key.to_string(), value.to_string())
                    })
                    .collect();
                let mut parsed = ParsedPart {
                    headers,
                    body: body.to_string(),
                };
                if parsed.header("Content-Transfer-Encoding") == Some("base64") {
                    let encoded: String = parsed.body.split_ascii_whitespace().collect();
                    parsed.body = String::from_utf8(BASE64.decode(encoded).unwrap()).unwrap();
                }
                parsed
            })
            .collect();
        (boundary, parts)
    }

    fn yaml(text: &str) -> yaml_rust2::Yaml {
        yaml_rust2::YamlLoader::load_from_str(text)
            .unwrap_or_else(|error| panic!("not YAML: {error}\n{text}"))
            .remove(0)
    }

    /// The `write_files` entries of a cloud-config part as (path, permissions, content).
    fn written(part: &ParsedPart) -> Vec<(String, String, String)> {
        let doc = yaml(&part.body);
        doc["write_files"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|entry| {
                (
                    entry["path"].as_str().unwrap().to_string(),
                    entry["permissions"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    entry["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn manager(config: &str) -> BTreeMap<String, String> {
        [
            (USER_DATA, "#cloud-config\nruncmd:\n  - echo hi\n"),
            (RUNNER_CONFIG, config),
            (RUNNER_VERSION, "16.11.1"),
            (crate::impact::ACTION, "{\"class\":\"replace\"}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Text that gzip cannot make much smaller: hex digits of a hash chain.
    fn incompressible(bytes: usize) -> String {
        let mut out = String::new();
        let mut seed = String::from("seed");
        while out.len() < bytes {
            seed = short_hash(&[&seed]);
            out.push_str(&seed);
        }
        out.truncate(bytes);
        out
    }

    #[test]
    fn a_manager_gets_its_bootstrap_then_its_files_where_their_consumers_read_them() {
        let config =
            "concurrent = 2\n[[runners]]\n  name = \"a \\\"b\\\"\"\n  token = \"${secret:T}\"\n";
        let document = ec2_document(&manager(config)).unwrap();
        assert!(
            document.starts_with("Content-Type: multipart/mixed; boundary=\"fleet-"),
            "{document}"
        );
        let (boundary, parts) = parse(&document);
        assert!(parts.iter().all(|p| !p.body.contains(&boundary)));
        assert_eq!(parts.len(), 2);
        for part in &parts {
            assert_eq!(
                part.header("Content-Type"),
                Some("text/cloud-config; charset=\"utf-8\"")
            );
            assert!(part.body.starts_with("#cloud-config\n"));
        }
        // The bootstrap is the first part, as rendered, and merges into nothing.
        assert_eq!(parts[0].body, "#cloud-config\nruncmd:\n  - echo hi\n");
        assert_eq!(parts[0].header("Merge-Type"), None);
        // The files append to its lists.
        assert_eq!(parts[1].header("Merge-Type"), Some(MERGE_TYPE));
        assert_eq!(
            written(&parts[1]),
            [
                (
                    "/etc/gitlab-runner/config.toml".to_string(),
                    "0600".to_string(),
                    config.to_string()
                ),
                (
                    "/etc/gitlab-runner/version".to_string(),
                    "0644".to_string(),
                    "16.11.1".to_string()
                ),
            ]
        );
        // GCE's decision item is no file on EC2, and the same files give the same bytes.
        assert!(!document.contains("class"), "{document}");
        assert_eq!(ec2_document(&manager(config)).unwrap(), document);
        assert_eq!(
            ec2_user_data(&manager(config)).unwrap(),
            document.as_bytes()
        );
    }

    #[test]
    fn an_instance_is_sent_its_bootstrap_and_parameter_root_and_its_values_go_to_parameters() {
        let mut metadata = manager("token = \"${secret:T}\"\n");
        metadata.insert(
            SECRETS.to_string(),
            "{\"digests\":{\"T\":\"d\"},\"values\":{\"T\":\"glrt-value\"}}".to_string(),
        );
        let document = ec2_instance_document(&metadata, "/fleet/f/").unwrap();
        assert!(!document.contains("glrt-value"), "{document}");
        assert!(!document.contains("token"), "{document}");
        let (_, parts) = parse(&document);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].header("Merge-Type"), Some(MERGE_TYPE));
        assert_eq!(
            written(&parts[1]),
            [(
                EC2_PARAMETER_ROOT_PATH.to_string(),
                "0644".to_string(),
                "/fleet/f/".to_string()
            )]
        );
        let parameters = parameters(&metadata);
        let names: Vec<(&str, bool)> = parameters
            .iter()
            .map(|p| (p.name.as_str(), p.secure))
            .collect();
        assert_eq!(
            names,
            [
                ("config.toml", false),
                ("version", false),
                ("action", false),
                ("secrets/T", true),
                ("secret-digests", false),
                ("bootstrap.sha256", false),
                ("index", false)
            ]
        );
        // The index names what the watcher reads, not the bootstrap's digest, nor itself.
        assert_eq!(
            parameters[6].value,
            "[\"action\",\"config.toml\",\"secret-digests\",\"secrets/T\",\"version\"]"
        );
        assert_eq!(parameter_key("index"), Some(PARAMETER_INDEX_KEY));
        assert_eq!(
            ec2_instance_arn("us-gov-west-1", "123456789012", "i-1"),
            "arn:aws-us-gov:ec2:us-gov-west-1:123456789012:instance/i-1"
        );
        assert_eq!(aws_partition("us-isob-east-1"), "aws-iso-b");
        assert_eq!(aws_partition("eu-central-1"), "aws");
        assert_eq!(parameters[3].value, "glrt-value");
        assert_eq!(parameters[3].digest.as_deref(), Some("d"));
        assert_eq!(parameters[4].value, "{\"digests\":{\"T\":\"d\"}}");
        assert!(parameters
            .iter()
            .filter(|p| !p.secure)
            .all(|p| !p.value.contains("glrt-value")));
        // Discovery reads the files back under their metadata keys.
        assert_eq!(parameter_key("config.toml"), Some(RUNNER_CONFIG));
        assert_eq!(parameter_key("secrets/T"), None);
        assert_eq!(
            parameter_key("bootstrap.sha256"),
            Some(BOOTSTRAP_DIGEST_KEY)
        );
        assert_eq!(
            parameters[5].value,
            bootstrap_digest("#cloud-config\nruncmd:\n  - echo hi\n")
        );
    }

    #[test]
    fn a_parameter_over_the_advanced_tier_is_too_large_and_one_over_standard_is_advanced() {
        assert_eq!(Tier::for_size(4096), Some(Tier::Standard));
        assert_eq!(Tier::for_size(4097), Some(Tier::Advanced));
        assert_eq!(Tier::for_size(8193), None);
        let metadata = manager(&incompressible(8193));
        let over = oversize(Cloud::Aws, ObjectKind::Instance, &metadata);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].channel, Channel::SsmParameter);
        assert_eq!(over[0].key.as_deref(), Some("config.toml"));
        assert_eq!(
            over[0].label(),
            "it is 8193 bytes; an Advanced SSM parameter holds at most 8192 bytes"
        );
        assert_eq!(
            oversize(
                Cloud::Aws,
                ObjectKind::Instance,
                &manager(&incompressible(8000))
            ),
            []
        );
    }

    #[test]
    fn a_part_that_is_not_ascii_goes_as_base64_and_reads_back_the_same() {
        let config = "[[runners]]\n  name = \"bücher-ünd-ßtraße\"\n";
        let document = ec2_document(&manager(config)).unwrap();
        assert!(document.is_ascii());
        let (_, parts) = parse(&document);
        assert_eq!(parts[1].header("Content-Transfer-Encoding"), Some("base64"));
        assert_eq!(written(&parts[1])[0].2, config);
    }

    #[test]
    fn user_data_over_the_ec2_limit_is_gzipped_and_python_reads_it_back() {
        // Repetitive, so it is over the limit as text and far under it compressed.
        let config = "[[runners]]\n  name = \"r\"\n  url = \"https://gitlab.com\"\n".repeat(600);
        let metadata = manager(&config);
        let document = ec2_document(&metadata).unwrap();
        assert!(document.len() > EC2_USER_DATA_LIMIT);
        let sent = ec2_user_data(&metadata).unwrap();
        assert_eq!(&sent[..2], &[0x1f, 0x8b]);
        assert!(sent.len() < EC2_USER_DATA_LIMIT);
        assert_eq!(
            oversize(Cloud::Aws, ObjectKind::InstanceTemplate, &metadata),
            []
        );
        // cloud-init decompresses with Python's gzip module.
        let mut python = std::process::Command::new("python3")
            .args([
                "-c",
                "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        python.stdin.take().unwrap().write_all(&sent).unwrap();
        let output = python.wait_with_output().unwrap();
        assert!(output.status.success());
        assert_eq!(String::from_utf8(output.stdout).unwrap(), document);
        // Under the limit nothing is compressed.
        assert_eq!(
            ec2_user_data(&manager("concurrent = 1\n")).unwrap()[0],
            b'C'
        );
    }

    #[test]
    fn a_delivery_that_does_not_fit_says_how_large_it_is_and_the_limit() {
        let metadata = manager(&incompressible(40_000));
        let over = oversize(Cloud::Aws, ObjectKind::InstanceTemplate, &metadata);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].channel, Channel::Ec2UserData);
        assert!(over[0].bytes > EC2_USER_DATA_LIMIT);
        assert_eq!(over[0].uncompressed, ec2_document(&metadata).unwrap().len());
        assert_eq!(
            over[0].label(),
            format!(
                "its user data is {} bytes gzip-compressed ({} uncompressed); EC2 takes at most 16384 bytes",
                over[0].bytes, over[0].uncompressed
            )
        );
        // The same files fit one GCE metadata value each; a larger one does not.
        assert_eq!(oversize(Cloud::Gcp, ObjectKind::Instance, &metadata), []);
        let large = manager(&incompressible(GCE_METADATA_VALUE_LIMIT + 1));
        let over = oversize(Cloud::Gcp, ObjectKind::Instance, &large);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].key.as_deref(), Some(RUNNER_CONFIG));
        assert_eq!(
            over[0].label(),
            "it is 262145 bytes; GCE takes at most 262144 bytes in one metadata value"
        );
        assert_eq!(
            over[0].message("m-1"),
            "The GCE metadata item `gitlab-runner-config` of m-1 is too large"
        );
    }

    #[test]
    fn a_gce_machine_is_sent_references_and_its_values_go_to_secret_manager() {
        let mut metadata = manager("token = \"${secret:T}\"\n");
        metadata.insert(
            SECRETS.to_string(),
            "{\"digests\":{\"T\":\"d\"},\"values\":{\"T\":\"glrt-value\"}}".to_string(),
        );
        let machine = "zones/us-east1-d/instances/m-1";
        let (sent, secrets) = gce_secrets("f", machine, "p", &metadata);
        assert!(sent.values().all(|v| !v.contains("glrt-value")), "{sent:?}");
        let id = gce_secret_id("f", machine, "T");
        assert_eq!(
            sent[SECRETS],
            format!(
                "{{\"digests\":{{\"T\":\"d\"}},\"names\":{{\"T\":\"projects/p/secrets/{id}\"}}}}"
            )
        );
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].value, "glrt-value");
        assert_eq!(secrets[0].resource, format!("projects/p/secrets/{id}"));
        assert_eq!(secrets[0].labels["fleet-digest"], "d");
        assert_eq!(secrets[0].labels["fleet-kind"], "secret");
        assert_eq!(gce_secret_names(&sent)["T"], secrets[0].resource);
        // Everything else goes as it is, and metadata without secrets is unchanged.
        assert_eq!(sent[RUNNER_CONFIG], metadata[RUNNER_CONFIG]);
        let plain = manager("concurrent = 1\n");
        assert_eq!(gce_secrets("f", machine, "p", &plain), (plain, Vec::new()));
    }

    #[test]
    fn only_a_fleets_own_secrets_are_taken_from_metadata() {
        let ours = format!(
            "projects/p/secrets/{}",
            gce_secret_id("ci", "zones/z/instances/m", "T")
        );
        let theirs = format!(
            "projects/p/secrets/{}",
            gce_secret_id("ci-shared", "zones/z/instances/m", "T")
        );
        let mut metadata = BTreeMap::new();
        metadata.insert(
            SECRETS.to_string(),
            serde_json::json!({"digests": {}, "names": {
                "T": ours,
                "DB": "projects/p/secrets/prod-db-password",
                "OTHER": theirs,
                "ELSEWHERE": ours.replace("projects/p/", "projects/q/"),
            }})
            .to_string(),
        );
        let kept = gce_fleet_secret_names("ci", "p", &metadata);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["T"]);
    }

    #[test]
    fn secret_ids_follow_secret_managers_rule_and_never_collide() {
        let valid = |id: &str| {
            (1..=255).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let machine = "zones/us-east1-d/instances/shared-runners-manager-1";
        let id = gce_secret_id("ci", machine, "RUNNER_TOKEN");
        let prefix = gce_secret_prefix("ci");
        assert!(
            id.starts_with(&format!(
                "{prefix}ci-shared-runners-manager-1-RUNNER_TOKEN-"
            )),
            "{id}"
        );
        // Fleet `ci-shared`'s secrets do not start like fleet `ci`'s: a condition on one
        // fleet's prefix grants no other fleet's secrets.
        let other = gce_secret_id(
            "ci-shared",
            "zones/us-east1-d/instances/runners-manager-1",
            "RUNNER_TOKEN",
        );
        assert!(!other.starts_with(&prefix), "{other}");
        let long = "N".repeat(400);
        let ids = [
            id.clone(),
            gce_secret_id("ci", machine, "A.B"),
            gce_secret_id("ci", machine, "A_B"),
            gce_secret_id("ci", machine, "A-B"),
            gce_secret_id(
                "ci",
                "zones/us-east1-c/instances/shared-runners-manager-1",
                "RUNNER_TOKEN",
            ),
            gce_secret_id(
                "ci-shared",
                "zones/us-east1-d/instances/runners-manager-1",
                "RUNNER_TOKEN",
            ),
            gce_secret_id("ci", machine, &long),
            gce_secret_id("ci", machine, &format!("{long}x")),
        ];
        for id in &ids {
            assert!(valid(id), "{id}");
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:#?}");
        assert_eq!(ids[6].len(), 255);
        // The same parts give the same id on every apply.
        assert_eq!(gce_secret_id("ci", machine, "RUNNER_TOKEN"), id);
    }

    #[test]
    fn nothing_to_deliver_is_no_user_data() {
        assert_eq!(ec2_document(&BTreeMap::new()), None);
        assert_eq!(ec2_user_data(&BTreeMap::new()), None);
    }
}
