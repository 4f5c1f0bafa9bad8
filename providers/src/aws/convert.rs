//! Translations between fleet's data and EC2's: tags, user data, states, instances and
//! launch-template versions.
//!
//! In: fleet [`MachineSpec`]s or EC2 response shapes. Out: EC2 request shapes or
//! [`LiveResource`]s. Pure functions, no I/O.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    HttpTokensState, IamInstanceProfileSpecification, Instance, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceStateName, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateVersion, ResourceType, ResponseLaunchTemplateData, Tag, TagSpecification,
};
use fleet_engine::provider::{
    labels, Cloud, Identity, InstanceStatus, LiveResource, MachineSpec, MetadataOptions,
    Networking, ObjectKind,
};

/// The tag that holds an instance's cloud name. Never part of the labels fleet compares.
pub(crate) const NAME_TAG: &str = "Name";

/// Launch templates carry one of these per live version, e.g. `fleet-spec-v3`: the spec hash
/// of that version. Launch-template tags are shared by all versions, so the one label that
/// differs between versions is stored per version number; a version without its stamp is
/// not (or no longer) fleet's.
pub(crate) const VERSION_STAMP_PREFIX: &str = "fleet-spec-v";

/// The key of the stamp tag of one launch-template version.
pub(crate) fn version_stamp(version: i64) -> String {
    format!("{VERSION_STAMP_PREFIX}{version}")
}

/// The version number a stamp tag key is for.
pub(crate) fn stamp_version(key: &str) -> Option<i64> {
    key.strip_prefix(VERSION_STAMP_PREFIX)?.parse().ok()
}

/// The `Name` of a batch's instances until each is named: the pool (or `fleet`) and the
/// first 12 characters of the batch's `ClientToken`.
pub(crate) fn placeholder(pool: &str, token: &str) -> String {
    format!("{pool}-unassigned-{}", token.get(..12).unwrap_or(token))
}

/// Whether a name is a batch's placeholder ([`placeholder`]).
pub(crate) fn is_placeholder(name: &str) -> bool {
    name.rsplit_once("-unassigned-")
        .is_some_and(|(pool, token)| !pool.is_empty() && token.len() == 12)
}

/// EC2 tags from key/value pairs.
pub(crate) fn tags<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Tag> {
    pairs
        .into_iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect()
}

/// A tag specification for one resource type.
pub(crate) fn tag_spec(resource: ResourceType, tags: Vec<Tag>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(tags))
        .build()
}

/// The tags of an instance: every label plus `Name`.
pub(crate) fn instance_tags(name: &str, spec_labels: &BTreeMap<String, String>) -> Vec<Tag> {
    tags(
        std::iter::once((NAME_TAG, name))
            .chain(spec_labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    )
}

/// Tags as a map.
pub(crate) fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|tag| {
            Some((
                tag.key()?.to_string(),
                tag.value().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// The user data (base64, as EC2 wants it) of a machine: the document the engine made for
/// it (`render::delivery::ec2_user_data`), encoded and nothing else. `None` when there is
/// nothing to deliver.
pub(crate) fn user_data(metadata: &BTreeMap<String, String>) -> Option<String> {
    fleet_engine::render::delivery::ec2_user_data(metadata).map(aws_smithy_types::base64::encode)
}

/// The user data of an instance: the engine's instance document (its bootstrap and the
/// parameter root of `fleet`) in base64.
pub(crate) fn instance_user_data(
    metadata: &BTreeMap<String, String>,
    fleet: &str,
) -> Option<String> {
    let root = fleet_engine::render::delivery::parameter_root(fleet);
    fleet_engine::render::delivery::ec2_instance_user_data(metadata, &root)
        .map(aws_smithy_types::base64::encode)
}

/// fleet's status for an EC2 state; `None` for terminated instances, which are gone.
pub(crate) fn status(state: Option<&InstanceStateName>) -> Option<InstanceStatus> {
    match state? {
        InstanceStateName::Pending => Some(InstanceStatus::Provisioning),
        InstanceStateName::Running => Some(InstanceStatus::Running),
        InstanceStateName::Stopping => Some(InstanceStatus::Stopping),
        InstanceStateName::Stopped => Some(InstanceStatus::Stopped),
        // Going away: never matched to a member, never deleted again; only its id counts, so
        // that a member made again after a deletion gets a new ClientToken.
        InstanceStateName::ShuttingDown | InstanceStateName::Terminated => {
            Some(InstanceStatus::Deleting)
        }
        _ => None,
    }
}

/// The volume id of an instance's root device.
pub(crate) fn root_volume_id(instance: &Instance) -> Option<&str> {
    let root = instance.root_device_name();
    let mappings = instance.block_device_mappings();
    mappings
        .iter()
        .find(|m| root.is_some() && m.device_name() == root)
        .or_else(|| mappings.first())
        .and_then(|m| m.ebs())
        .and_then(|ebs| ebs.volume_id())
}

/// A root disk as EC2 reports it: type and size in GB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Disk {
    pub(crate) disk_type: String,
    pub(crate) size_gb: u32,
}

/// The security groups to send: `None` for the default group.
pub(crate) fn groups(networking: &Networking) -> Option<Vec<String>> {
    (!networking.security_groups.is_empty()).then(|| networking.security_groups.clone())
}

/// The hardened metadata options every `RunInstances` sends: IMDSv2 only, and a hop limit of 1
/// so a container behind a bridge cannot reach the instance's role.
pub(crate) fn metadata_options() -> InstanceMetadataOptionsRequest {
    let hardened = MetadataOptions::HARDENED;
    InstanceMetadataOptionsRequest::builder()
        .http_tokens(HttpTokensState::Required)
        .http_put_response_hop_limit(i32::try_from(hardened.hop_limit).unwrap_or(1))
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .build()
}

/// The same options in a launch template's data.
pub(crate) fn template_metadata_options() -> LaunchTemplateInstanceMetadataOptionsRequest {
    let hardened = MetadataOptions::HARDENED;
    LaunchTemplateInstanceMetadataOptionsRequest::builder()
        .http_tokens(LaunchTemplateHttpTokensState::Required)
        .http_put_response_hop_limit(i32::try_from(hardened.hop_limit).unwrap_or(1))
        .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
        .build()
}

/// Whether a profile is given by ARN rather than by name: EC2 takes either, in its own field.
fn is_arn(profile: &str) -> bool {
    profile.starts_with("arn:")
}

/// The instance profile to launch with; `None` for none.
pub(crate) fn instance_profile(identity: &Identity) -> Option<IamInstanceProfileSpecification> {
    let profile = identity.instance_profile.as_deref()?;
    let builder = IamInstanceProfileSpecification::builder();
    Some(if is_arn(profile) {
        builder.arn(profile).build()
    } else {
        builder.name(profile).build()
    })
}

/// The instance profile of a launch template's data; `None` for none.
pub(crate) fn template_instance_profile(
    identity: &Identity,
) -> Option<LaunchTemplateIamInstanceProfileSpecificationRequest> {
    let profile = identity.instance_profile.as_deref()?;
    let builder = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
    Some(if is_arn(profile) {
        builder.arn(profile).build()
    } else {
        builder.name(profile).build()
    })
}

/// EC2's defaults where a response leaves a part out: IMDSv1 allowed, one hop, endpoint on.
fn reported_options(
    tokens_required: Option<bool>,
    hop_limit: Option<i32>,
    endpoint_enabled: Option<bool>,
) -> MetadataOptions {
    MetadataOptions {
        http_tokens_required: tokens_required.unwrap_or(false),
        hop_limit: hop_limit.and_then(|h| u32::try_from(h).ok()).unwrap_or(1),
        endpoint_enabled: endpoint_enabled.unwrap_or(true),
    }
}

/// What an instance reports of its role and metadata options. An instance that reports no
/// metadata options at all (an emulator that keeps none) leaves them uncompared.
fn instance_identity(instance: &Instance) -> Identity {
    Identity {
        instance_profile: instance
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .map(str::to_string),
        metadata_options: instance.metadata_options().map(|options| {
            reported_options(
                options
                    .http_tokens()
                    .map(|t| *t == HttpTokensState::Required),
                options.http_put_response_hop_limit(),
                options
                    .http_endpoint()
                    .map(|e| *e == InstanceMetadataEndpointState::Enabled),
            )
        }),
        ..Identity::default()
    }
}

/// What a launch-template version's data holds of the role and metadata options, as sent
/// (a version made before fleet sent metadata options reports none).
fn template_identity(data: Option<&ResponseLaunchTemplateData>) -> Identity {
    let Some(data) = data else {
        return Identity::default();
    };
    Identity {
        instance_profile: data
            .iam_instance_profile()
            .and_then(|p| p.arn().or(p.name()))
            .map(str::to_string),
        metadata_options: data.metadata_options().map(|options| {
            reported_options(
                options
                    .http_tokens()
                    .map(|t| *t == LaunchTemplateHttpTokensState::Required),
                options.http_put_response_hop_limit(),
                options
                    .http_endpoint()
                    .map(|e| *e == LaunchTemplateInstanceMetadataEndpointState::Enabled),
            )
        }),
        ..Identity::default()
    }
}

/// Sorted, without repeats, as the engine compares them.
fn sorted(mut groups: Vec<String>) -> Vec<String> {
    groups.sort();
    groups.dedup();
    groups
}

/// An instance as fleet sees it; `None` when it is terminated or has no id.
pub(crate) fn instance_resource(
    instance: &Instance,
    disks: &BTreeMap<String, Disk>,
) -> Option<LiveResource> {
    let status = status(instance.state().and_then(|s| s.name()))?;
    let id = instance.instance_id()?.to_string();
    let mut labels = tag_map(instance.tags());
    let name = labels.remove(NAME_TAG).unwrap_or_else(|| id.clone());
    let disk = root_volume_id(instance)
        .and_then(|volume| disks.get(volume))
        .cloned()
        .unwrap_or_default();
    Some(LiveResource {
        creation_token: Some(instance.client_token().unwrap_or_default().to_string()),
        cloud: Cloud::Aws,
        kind: ObjectKind::Instance,
        id,
        name,
        status,
        spec: MachineSpec {
            machine_type: instance
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_string(),
            image: instance.image_id().unwrap_or_default().to_string(),
            disk_type: disk.disk_type,
            disk_size_gb: disk.size_gb,
            labels,
            // EC2 does not return user data in DescribeInstances; the engine compares it
            // through the `fleet-config` label instead.
            metadata: BTreeMap::new(),
            networking: Networking {
                network: None,
                subnet: instance.subnet_id().map(str::to_string),
                security_groups: sorted(
                    instance
                        .security_groups()
                        .iter()
                        .filter_map(|group| group.group_id().map(str::to_string))
                        .collect(),
                ),
            },
            identity: instance_identity(instance),
        },
    })
}

/// The id fleet gives one launch-template version: `lt-0abc…:3`.
pub(crate) fn version_id(template_id: &str, version: i64) -> String {
    format!("{template_id}:{version}")
}

/// Splits a version id back into the launch-template id and the version number.
pub(crate) fn split_version_id(id: &str) -> Option<(&str, i64)> {
    let (template, version) = id.rsplit_once(':')?;
    Some((template, version.parse().ok()?))
}

/// The labels of one version: the launch template's tags without the per-version stamps,
/// plus `fleet-spec` from this version's stamp.
pub(crate) fn version_labels(
    template_tags: &BTreeMap<String, String>,
    version: i64,
) -> Option<BTreeMap<String, String>> {
    let stamp = template_tags.get(&version_stamp(version))?;
    let mut labels: BTreeMap<String, String> = template_tags
        .iter()
        .filter(|(key, _)| stamp_version(key).is_none() && key.as_str() != NAME_TAG)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(labels::SPEC_HASH.to_string(), stamp.clone());
    Some(labels)
}

/// One launch-template version as fleet sees it; `None` when it carries no fleet stamp.
pub(crate) fn version_resource(
    template_id: &str,
    template_tags: &BTreeMap<String, String>,
    version: &LaunchTemplateVersion,
) -> Option<LiveResource> {
    let number = version.version_number()?;
    let labels = version_labels(template_tags, number)?;
    let data = version.launch_template_data();
    let ebs = data
        .and_then(|d| d.block_device_mappings().first())
        .and_then(|m| m.ebs());
    Some(LiveResource {
        creation_token: None,
        cloud: Cloud::Aws,
        kind: ObjectKind::InstanceTemplate,
        id: version_id(template_id, number),
        name: version
            .version_description()
            .unwrap_or_default()
            .to_string(),
        status: InstanceStatus::Available,
        spec: MachineSpec {
            machine_type: data
                .and_then(|d| d.instance_type())
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            zone: data
                .and_then(|d| d.placement())
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_string(),
            image: data
                .and_then(|d| d.image_id())
                .unwrap_or_default()
                .to_string(),
            disk_type: ebs
                .and_then(|e| e.volume_type())
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            disk_size_gb: ebs
                .and_then(|e| e.volume_size())
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or_default(),
            labels,
            metadata: BTreeMap::new(),
            networking: template_networking(data),
            identity: template_identity(data),
        },
    })
}

/// A launch-template version's subnet and groups, top-level or in its first interface.
fn template_networking(data: Option<&ResponseLaunchTemplateData>) -> Networking {
    let interface = data.and_then(|d| d.network_interfaces().first());
    let mut groups: Vec<String> = data
        .map(|d| d.security_group_ids().to_vec())
        .unwrap_or_default();
    groups.extend(interface.map(|i| i.groups().to_vec()).unwrap_or_default());
    Networking {
        network: None,
        subnet: interface.and_then(|i| i.subnet_id()).map(str::to_string),
        security_groups: sorted(groups),
    }
}

/// The launch-template name for a template's versioned cloud name: its `fleet-resource`
/// label, or the name without its `-<8 hex>` version suffix.
pub(crate) fn template_base_name(name: &str, spec_labels: &BTreeMap<String, String>) -> String {
    spec_labels
        .get(labels::RESOURCE)
        .cloned()
        .or_else(|| unversioned(name).map(str::to_string))
        .unwrap_or_else(|| name.to_string())
}

/// `arm64-aws` for `arm64-aws-cb197c15`; `None` when the name has no version suffix.
pub(crate) fn unversioned(name: &str) -> Option<&str> {
    let (base, suffix) = name.rsplit_once('-')?;
    (suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()) && !base.is_empty())
        .then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_known_by_their_shape() {
        let name = placeholder("arm-builder", "0123456789abcdef0123456789abcdef");
        assert_eq!(name, "arm-builder-unassigned-0123456789ab");
        assert!(is_placeholder(&name));
        assert!(!is_placeholder("arm-builder-1"));
    }

    #[test]
    fn version_names_and_ids_round_trip() {
        assert_eq!(unversioned("arm64-aws-cb197c15"), Some("arm64-aws"));
        assert_eq!(unversioned("arm-builder-1"), None);
        assert_eq!(
            split_version_id(&version_id("lt-0abc", 3)),
            Some(("lt-0abc", 3))
        );
        assert_eq!(stamp_version(&version_stamp(12)), Some(12));
    }

    #[test]
    fn version_labels_take_their_own_stamp_only() {
        let tags: BTreeMap<String, String> = [
            ("fleet", "f"),
            ("fleet-resource", "arm64-aws"),
            ("fleet-spec-v1", "aaaa"),
            ("fleet-spec-v2", "bbbb"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let labels = version_labels(&tags, 2).expect("stamped");
        assert_eq!(labels.get("fleet-spec").map(String::as_str), Some("bbbb"));
        assert_eq!(labels.len(), 3);
        assert!(version_labels(&tags, 3).is_none());
    }

    #[test]
    fn user_data_is_the_engines_document_in_base64() {
        let mut metadata = BTreeMap::new();
        assert_eq!(user_data(&metadata), None);
        metadata.insert("user-data".to_string(), "#cloud-config\n".to_string());
        metadata.insert(
            "gitlab-runner-config".to_string(),
            "concurrent = 1\n".to_string(),
        );
        let sent = aws_smithy_types::base64::decode(user_data(&metadata).unwrap()).unwrap();
        let made = fleet_engine::render::delivery::ec2_user_data(&metadata).unwrap();
        assert_eq!(sent, made);
    }
}
