//! Translation between fleet's view of a machine and Compute Engine's REST resources.
//!
//! In: [`CreateRequest`]s and specs from the engine, or `Instance` / `InstanceTemplate`
//! resources from list calls. Out: request bodies for `instances.insert`,
//! `instances.bulkInsert` and `instanceTemplates.insert`, or [`LiveResource`]s. Everything here
//! is pure, so the round trip "spec → body → what GCE lists → spec" is unit-tested.
//!
//! Compute Engine does not return everything fleet sets. An instance in a list response has
//! its machine type, zone, labels, metadata and the boot disk's size, but not the image the
//! boot disk was made from nor the disk's type (both live on the disk resource, one GET per
//! disk away); a template has no zone at all. fleet therefore writes one reserved metadata
//! item, [`MACHINE_KEY`], holding what GCE would not give back (`image`, `disk_type`, and for
//! templates `zone`) as compact JSON, and strips it again when reading. Fields GCE does
//! return (machine type, zone, disk size) are read from GCE itself, so hand edits there show
//! as drift.

use std::collections::{BTreeMap, HashMap};

use fleet_engine::provider::{
    Cloud, CreateRequest, Identity, InstanceStatus, LiveResource, MachineSpec, Networking,
    ObjectKind,
};
use google_cloud_compute_v1::model::{
    instance, metadata, AttachedDisk, AttachedDiskInitializeParams, BulkInsertInstanceResource,
    BulkInsertInstanceResourcePerInstanceProperties, Instance, InstanceProperties,
    InstanceTemplate, Metadata, NetworkInterface, ServiceAccount,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The metadata key under which fleet keeps what Compute Engine does not list back.
pub const MACHINE_KEY: &str = "fleet-machine";

/// The network every machine is attached to.
pub(crate) const DEFAULT_NETWORK: &str = "global/networks/default";

/// What fleet stores in [`MACHINE_KEY`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MachineRecord {
    image: String,
    disk_type: String,
    disk_size_gb: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    zone: String,
}

impl MachineRecord {
    fn of(spec: &MachineSpec, with_zone: bool) -> MachineRecord {
        MachineRecord {
            image: spec.image.clone(),
            disk_type: spec.disk_type.clone(),
            disk_size_gb: spec.disk_size_gb,
            zone: if with_zone {
                spec.zone.clone()
            } else {
                String::new()
            },
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record of strings and a number serializes")
    }
}

/// The last path segment of a GCE URL (`…/zones/us-east1-c` → `us-east1-c`); short names
/// are returned unchanged.
pub(crate) fn short_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// A GCE `requestId` (a UUID) derived from an idempotency token and the call it is for, so
/// the same step of the same plan always sends the same id and a retried call never acts
/// twice, while the different calls of one step (`setLabels`, `setMetadata`) do not share one.
pub fn request_id(token: &str, call: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(token.as_bytes());
    hasher.update([0]);
    hasher.update(call.as_bytes());
    let mut bytes: [u8; 16] = hasher.finalize()[..16]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes");
    // Version 8 (custom) and the RFC 4122 variant, so GCE's UUID check accepts it.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The id fleet gives a GCE instance: `zones/ZONE/instances/NAME`.
pub(crate) fn instance_id(zone: &str, name: &str) -> String {
    format!("zones/{zone}/instances/{name}")
}

/// The id fleet gives a GCE instance template: `global/instanceTemplates/NAME`.
pub(crate) fn template_id(name: &str) -> String {
    format!("global/instanceTemplates/{name}")
}

/// What an id names: an instance `(Some(zone), name)` or a template `(None, name)`.
pub(crate) fn parse_id(id: &str) -> Option<(Option<&str>, &str)> {
    let parts: Vec<&str> = id.split('/').collect();
    match parts[..] {
        ["zones", zone, "instances", name] if !zone.is_empty() && !name.is_empty() => {
            Some((Some(zone), name))
        }
        ["global", "instanceTemplates", name] if !name.is_empty() => Some((None, name)),
        _ => None,
    }
}

/// Folds a GCE instance status into fleet's vocabulary.
pub(crate) fn status_of(status: Option<&instance::Status>) -> InstanceStatus {
    match status.and_then(|status| status.name()) {
        Some("PROVISIONING" | "STAGING" | "PENDING") => InstanceStatus::Provisioning,
        Some("RUNNING" | "REPAIRING") => InstanceStatus::Running,
        Some("STOPPING" | "SUSPENDING" | "PENDING_STOP" | "DEPROVISIONING") => {
            InstanceStatus::Stopping
        }
        Some("SUSPENDED" | "STOPPED") => InstanceStatus::Stopped,
        Some("TERMINATED") => InstanceStatus::Terminated,
        // A status newer than this client: report it as not yet settled rather than guess.
        _ => InstanceStatus::Provisioning,
    }
}

/// Metadata items for a spec, with fleet's reserved record added.
fn metadata_of(spec: &MachineSpec, record: &MachineRecord) -> Metadata {
    let mut items: Vec<metadata::Items> = spec
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() != MACHINE_KEY)
        .map(|(key, value)| metadata_item(key, value))
        .collect();
    items.push(metadata_item(MACHINE_KEY, &record.to_json()));
    let mut metadata = Metadata::default();
    metadata.items = items;
    metadata
}

fn metadata_item(key: &str, value: &str) -> metadata::Items {
    let mut item = metadata::Items::default();
    item.key = Some(key.to_string());
    item.value = Some(value.to_string());
    item
}

/// The metadata to send in `setMetadata`: the desired items plus the reserved record the
/// instance already carries (so an update never loses it), with the current metadata's
/// fingerprint (GCE refuses a change made against a stale one).
pub(crate) fn metadata_for_update(
    desired: &BTreeMap<String, String>,
    current: Option<&Metadata>,
) -> Metadata {
    let mut items: Vec<metadata::Items> = desired
        .iter()
        .filter(|(key, _)| key.as_str() != MACHINE_KEY)
        .map(|(key, value)| metadata_item(key, value))
        .collect();
    if let Some(record) = current.and_then(|metadata| {
        metadata
            .items
            .iter()
            .find(|item| item.key.as_deref() == Some(MACHINE_KEY))
    }) {
        items.push(record.clone());
    }
    let mut metadata = Metadata::default();
    metadata.items = items;
    metadata.fingerprint = current.and_then(|metadata| metadata.fingerprint.clone());
    metadata
}

/// Splits GCE metadata into fleet's items and the reserved record.
fn read_metadata(metadata: Option<&Metadata>) -> (BTreeMap<String, String>, MachineRecord) {
    let mut items = BTreeMap::new();
    let mut record = MachineRecord::default();
    for item in metadata.map(|m| m.items.as_slice()).unwrap_or_default() {
        let Some(key) = item.key.as_deref() else {
            continue;
        };
        let value = item.value.clone().unwrap_or_default();
        if key == MACHINE_KEY {
            record = serde_json::from_str(&value).unwrap_or_default();
        } else {
            items.insert(key.to_string(), value);
        }
    }
    (items, record)
}

fn labels_of(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn boot_disk(spec: &MachineSpec, disk_type: String) -> AttachedDisk {
    let mut params = AttachedDiskInitializeParams::default();
    params.source_image = Some(spec.image.clone());
    params.disk_size_gb = Some(i64::from(spec.disk_size_gb));
    params.disk_type = Some(disk_type);
    let mut disk = AttachedDisk::default();
    disk.boot = Some(true);
    disk.auto_delete = Some(true);
    disk.initialize_params = Some(params);
    disk
}

/// The machine's one interface: the spec's network and subnetwork. Without either,
/// `default_network`; with only a subnetwork, no network (GCE takes the subnetwork's, which
/// for a shared VPC is the host project's).
fn network_interface(spec: &MachineSpec, default_network: &str) -> NetworkInterface {
    let networking = &spec.networking;
    let mut interface = NetworkInterface::default();
    interface.network = match (&networking.network, &networking.subnet) {
        (Some(network), _) => Some(reference(network, "global/networks")),
        (None, Some(_)) => None,
        (None, None) => Some(default_network.to_string()),
    };
    interface.subnetwork = networking.subnet.as_ref().map(|subnet| {
        let region = spec.zone.rsplit_once('-').map_or("", |(region, _)| region);
        reference(subnet, &format!("regions/{region}/subnetworks"))
    });
    interface
}

/// A fleet-file network or subnetwork as a GCE reference: a name is in the project
/// (`global/networks/NAME`), a `projects/…` path (shared VPC) is taken as it is.
fn reference(value: &str, collection: &str) -> String {
    if value.starts_with("projects/") {
        value.to_string()
    } else {
        format!("{collection}/{value}")
    }
}

/// A network or subnetwork as GCE lists it (a URL) in fleet-file terms: its name when it is
/// in `project`, else its `projects/…` path.
fn fleet_reference(url: &str, project: &str) -> String {
    let path = url.find("projects/").map_or(url, |at| &url[at..]);
    match path.strip_prefix("projects/") {
        Some(rest) if !rest.starts_with(&format!("{project}/")) => path.to_string(),
        _ => short_name(path).to_string(),
    }
}

/// The networking of a machine or template's first interface.
fn networking_of(interfaces: &[NetworkInterface], project: &str) -> Networking {
    let first = interfaces.first();
    Networking {
        network: first
            .and_then(|i| i.network.as_deref())
            .map(|url| fleet_reference(url, project)),
        subnet: first
            .and_then(|i| i.subnetwork.as_deref())
            .map(|url| fleet_reference(url, project)),
        security_groups: Vec::new(),
    }
}

/// The project's Compute Engine default account, as GCE reports it:
/// `PROJECT_NUMBER-compute@developer.gserviceaccount.com`. A fleet file names it `default`.
const DEFAULT_ACCOUNT_SUFFIX: &str = "-compute@developer.gserviceaccount.com";

/// The service account a machine runs as, with its scopes; none when the fleet file sets none
/// (GCE then gives the machine no account). GCE takes `default` as the email of the project's
/// default account.
fn service_accounts(spec: &MachineSpec) -> Vec<ServiceAccount> {
    let Some(email) = &spec.identity.service_account else {
        return Vec::new();
    };
    let mut account = ServiceAccount::default();
    account.email = Some(email.clone());
    account.scopes = spec.identity.scopes.clone();
    vec![account]
}

/// The account GCE reports, in the fleet file's terms: the default account as `default`,
/// scopes sorted.
fn identity_of(accounts: &[ServiceAccount]) -> Identity {
    let Some(first) = accounts.first() else {
        return Identity::default();
    };
    let mut scopes = first.scopes.clone();
    scopes.sort();
    scopes.dedup();
    Identity {
        service_account: first.email.as_ref().map(|email| {
            if email.ends_with(DEFAULT_ACCOUNT_SUFFIX) {
                "default".to_string()
            } else {
                email.clone()
            }
        }),
        scopes,
        ..Identity::default()
    }
}

/// The body of `instances.insert` for one instance request.
pub(crate) fn instance_body(request: &CreateRequest, network: &str) -> Instance {
    let spec = &request.spec;
    let mut body = Instance::default();
    body.name = Some(request.name.clone());
    body.description = Some("managed by fleet".to_string());
    body.machine_type = Some(format!(
        "zones/{}/machineTypes/{}",
        spec.zone, spec.machine_type
    ));
    body.labels = spec.labels.clone().into_iter().collect();
    body.metadata = Some(metadata_of(spec, &MachineRecord::of(spec, false)));
    body.disks = vec![boot_disk(
        spec,
        format!("zones/{}/diskTypes/{}", spec.zone, spec.disk_type),
    )];
    body.network_interfaces = vec![network_interface(spec, network)];
    body.service_accounts = service_accounts(spec);
    body
}

/// The body of `instances.bulkInsert` for requests that differ only in their names.
pub(crate) fn bulk_body(requests: &[&CreateRequest], network: &str) -> BulkInsertInstanceResource {
    let spec = &requests[0].spec;
    let mut properties = InstanceProperties::default();
    properties.description = Some("managed by fleet".to_string());
    // In bulkInsert the machine type is a bare name: the zone is the request's.
    properties.machine_type = Some(spec.machine_type.clone());
    properties.labels = spec.labels.clone().into_iter().collect();
    properties.metadata = Some(metadata_of(spec, &MachineRecord::of(spec, false)));
    properties.disks = vec![boot_disk(spec, spec.disk_type.clone())];
    properties.network_interfaces = vec![network_interface(spec, network)];
    properties.service_accounts = service_accounts(spec);
    let count = i64::try_from(requests.len()).unwrap_or(i64::MAX);
    let mut body = BulkInsertInstanceResource::default();
    body.count = Some(count);
    body.min_count = Some(count);
    body.instance_properties = Some(properties);
    body.per_instance_properties = requests
        .iter()
        .map(|request| {
            let mut member = BulkInsertInstanceResourcePerInstanceProperties::default();
            member.name = Some(request.name.clone());
            (request.name.clone(), member)
        })
        .collect();
    body
}

/// The body of `instanceTemplates.insert`. The zone the template's machines go to is kept in
/// the reserved metadata record (templates are global and have no zone of their own).
pub(crate) fn template_body(request: &CreateRequest, network: &str) -> InstanceTemplate {
    let spec = &request.spec;
    let mut properties = InstanceProperties::default();
    properties.machine_type = Some(spec.machine_type.clone());
    properties.labels = spec.labels.clone().into_iter().collect();
    properties.metadata = Some(metadata_of(spec, &MachineRecord::of(spec, true)));
    properties.disks = vec![boot_disk(spec, spec.disk_type.clone())];
    properties.network_interfaces = vec![network_interface(spec, network)];
    properties.service_accounts = service_accounts(spec);
    let mut body = InstanceTemplate::default();
    body.name = Some(request.name.clone());
    body.description = Some(format!("managed by fleet; machines go to {}", spec.zone));
    body.properties = Some(properties);
    body
}

/// An instance as listed by GCE, in fleet's terms. `scope_zone` is the zone of the
/// aggregated-list scope it came in (`zones/us-east1-c`), used when the instance's own
/// `zone` field is missing.
pub(crate) fn live_instance(
    instance: &Instance,
    scope_zone: Option<&str>,
    project: &str,
) -> Option<LiveResource> {
    let name = instance.name.clone()?;
    let zone = instance
        .zone
        .as_deref()
        .or(scope_zone)
        .map(short_name)?
        .to_string();
    let (metadata, record) = read_metadata(instance.metadata.as_ref());
    let boot = instance
        .disks
        .iter()
        .find(|disk| disk.boot == Some(true))
        .or(instance.disks.first());
    let params = boot.and_then(|disk| disk.initialize_params.as_ref());
    let image = params
        .and_then(|params| params.source_image.clone())
        .unwrap_or(record.image);
    let disk_type = params
        .and_then(|params| params.disk_type.as_deref())
        .map(|disk_type| short_name(disk_type).to_string())
        .unwrap_or(record.disk_type);
    let disk_size_gb = boot
        .and_then(|disk| disk.disk_size_gb)
        .and_then(|size| u32::try_from(size).ok())
        .unwrap_or(record.disk_size_gb);
    Some(LiveResource {
        creation_token: None,
        cloud: Cloud::Gcp,
        kind: ObjectKind::Instance,
        id: instance_id(&zone, &name),
        name,
        status: status_of(instance.status.as_ref()),
        spec: MachineSpec {
            machine_type: instance
                .machine_type
                .as_deref()
                .map(short_name)
                .unwrap_or_default()
                .to_string(),
            zone,
            image,
            disk_type,
            disk_size_gb,
            labels: labels_of(&instance.labels),
            metadata,
            networking: networking_of(&instance.network_interfaces, project),
            identity: identity_of(&instance.service_accounts),
        },
    })
}

/// An instance template as listed by GCE, in fleet's terms.
pub(crate) fn live_template(template: &InstanceTemplate, project: &str) -> Option<LiveResource> {
    let name = template.name.clone()?;
    let properties = template.properties.clone().unwrap_or_default();
    let (metadata, record) = read_metadata(properties.metadata.as_ref());
    let boot = properties
        .disks
        .iter()
        .find(|disk| disk.boot == Some(true))
        .or(properties.disks.first());
    let params = boot.and_then(|disk| disk.initialize_params.as_ref());
    Some(LiveResource {
        creation_token: None,
        cloud: Cloud::Gcp,
        kind: ObjectKind::InstanceTemplate,
        id: template_id(&name),
        name,
        status: InstanceStatus::Available,
        spec: MachineSpec {
            machine_type: properties
                .machine_type
                .as_deref()
                .map(short_name)
                .unwrap_or_default()
                .to_string(),
            zone: record.zone,
            image: params
                .and_then(|params| params.source_image.clone())
                .unwrap_or(record.image),
            disk_type: params
                .and_then(|params| params.disk_type.as_deref())
                .map(|disk_type| short_name(disk_type).to_string())
                .unwrap_or(record.disk_type),
            disk_size_gb: params
                .and_then(|params| params.disk_size_gb)
                .and_then(|size| u32::try_from(size).ok())
                .unwrap_or(record.disk_size_gb),
            labels: labels_of(&properties.labels),
            metadata,
            networking: networking_of(&properties.network_interfaces, project),
            identity: identity_of(&properties.service_accounts),
        },
    })
}

/// A GCE list filter matching one label of instances (`labels.KEY = "VALUE"`) or of
/// templates (`properties.labels.KEY = "VALUE"`).
pub(crate) fn label_filter(field_prefix: &str, key: &str, value: &str) -> String {
    format!("{field_prefix}labels.{key} = \"{}\"", escape(value))
}

/// The GCE list filter of a fleet's own objects: `fleet=FLEET` and a `fleet-kind` label,
/// `(labels.fleet = "FLEET") (labels.fleet-kind:*)` (for templates under `properties.`).
/// Expressions in parentheses side by side are ANDed, and `:*` tests that a label key is
/// set, in Compute Engine's filter syntax. Autoscaled build machines carry `fleet=` but no
/// `fleet-kind`: they are not listed, so they cost no pages.
pub(crate) fn fleet_filter(field_prefix: &str, fleet: &str) -> String {
    format!(
        "({}) ({field_prefix}labels.{}:*)",
        label_filter(field_prefix, fleet_engine::provider::labels::FLEET, fleet),
        fleet_engine::provider::labels::KIND
    )
}

/// A GCE list filter matching any of `names`: `(name = "a") OR (name = "b")`.
pub(crate) fn names_filter(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("(name = \"{}\")", escape(name)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MachineSpec {
        MachineSpec {
            machine_type: "n1-standard-4".into(),
            zone: "us-east1-c".into(),
            image: "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts".into(),
            disk_type: "pd-ssd".into(),
            disk_size_gb: 100,
            labels: [("fleet".to_string(), "ci".to_string())].into(),
            metadata: [("fleet-runners".to_string(), "a\nb".to_string())].into(),
            networking: Networking::default(),
            identity: Default::default(),
        }
    }

    fn request(name: &str) -> CreateRequest {
        CreateRequest {
            kind: ObjectKind::Instance,
            name: name.into(),
            spec: spec(),
            idempotency_token: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    #[test]
    fn request_ids_are_stable_uuids_per_call() {
        let id = request_id("0123456789abcdef0123456789abcdef", "insert");
        assert_eq!(id, request_id("0123456789abcdef0123456789abcdef", "insert"));
        assert_ne!(
            id,
            request_id("0123456789abcdef0123456789abcdef", "setLabels")
        );
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "8");
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(
            parse_id(&instance_id("us-east1-c", "a")),
            Some((Some("us-east1-c"), "a"))
        );
        assert_eq!(parse_id(&template_id("t-1")), Some((None, "t-1")));
        assert_eq!(parse_id("i-0123"), None);
    }

    /// What GCE lists after an insert: machine type and zone as URLs, the boot disk's size
    /// but neither its image nor its type, the metadata as sent.
    #[test]
    fn an_inserted_instance_lists_as_its_spec() {
        let body = instance_body(&request("srm-1"), DEFAULT_NETWORK);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json["machineType"],
            "zones/us-east1-c/machineTypes/n1-standard-4"
        );
        assert_eq!(json["disks"][0]["initializeParams"]["diskSizeGb"], "100");
        let mut listed = body.clone();
        listed.machine_type = Some(
            "https://www.googleapis.com/compute/v1/projects/p/zones/us-east1-c/machineTypes/n1-standard-4".into(),
        );
        listed.zone =
            Some("https://www.googleapis.com/compute/v1/projects/p/zones/us-east1-c".into());
        listed.status = Some(instance::Status::Running);
        let mut disk = AttachedDisk::default();
        disk.boot = Some(true);
        disk.disk_size_gb = Some(100);
        listed.disks = vec![disk];
        let live = live_instance(&listed, None, "p").unwrap();
        let mut expected = spec();
        expected.networking.network = Some("default".into());
        assert_eq!(live.spec, expected);
        assert_eq!(live.id, "zones/us-east1-c/instances/srm-1");
        assert_eq!(live.status, InstanceStatus::Running);
    }

    #[test]
    fn a_service_account_round_trips_and_the_default_one_reads_back_as_default() {
        let mut request = request("srm-1");
        request.spec.identity.service_account =
            Some("ci-runner@my-project.iam.gserviceaccount.com".into());
        request.spec.identity.scopes =
            vec!["https://www.googleapis.com/auth/cloud-platform".into()];
        let body = instance_body(&request, DEFAULT_NETWORK);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json["serviceAccounts"][0]["email"],
            "ci-runner@my-project.iam.gserviceaccount.com"
        );
        let template = template_body(&request, DEFAULT_NETWORK);
        let live = live_template(&template, "p").unwrap();
        assert_eq!(live.spec.identity, request.spec.identity);
        let mut listed = body.clone();
        listed.service_accounts[0].email =
            Some("123456789-compute@developer.gserviceaccount.com".into());
        let live = live_instance(&listed, Some("zones/us-east1-c"), "p").unwrap();
        assert_eq!(
            live.spec.identity.service_account.as_deref(),
            Some("default")
        );
        // No account set: none is sent.
        let plain = instance_body(&self::request("srm-2"), DEFAULT_NETWORK);
        assert!(plain.service_accounts.is_empty());
    }

    #[test]
    fn a_template_keeps_its_zone() {
        let mut request = request("autoscaled-us-east1-c-1a2b3c4d");
        request.kind = ObjectKind::InstanceTemplate;
        request.spec.metadata.clear();
        let body = template_body(&request, DEFAULT_NETWORK);
        let live = live_template(&body, "p").unwrap();
        // Unset networking is the project's default network, and discovery says so.
        let mut expected = request.spec.clone();
        expected.networking.network = Some("default".into());
        assert_eq!(live.spec, expected);
        assert_eq!(live.status, InstanceStatus::Available);
    }

    #[test]
    fn networks_are_names_in_the_project_and_paths_in_a_host_project() {
        let mut request = request("srm-1");
        request.spec.networking.network = Some("ci".into());
        request.spec.networking.subnet =
            Some("projects/host/regions/us-east1/subnetworks/runners".into());
        let interface = &instance_body(&request, DEFAULT_NETWORK).network_interfaces[0];
        assert_eq!(interface.network.as_deref(), Some("global/networks/ci"));
        assert_eq!(
            interface.subnetwork.as_deref(),
            Some("projects/host/regions/us-east1/subnetworks/runners")
        );
        let base = "https://www.googleapis.com/compute/v1";
        let mut listed = NetworkInterface::default();
        listed.network = Some(format!("{base}/projects/p/global/networks/ci"));
        listed.subnetwork = Some(format!(
            "{base}/projects/host/regions/us-east1/subnetworks/runners"
        ));
        assert_eq!(networking_of(&[listed], "p"), request.spec.networking);
        let mut named = request.clone();
        named.spec.networking.subnet = Some("runners".into());
        let interface = &instance_body(&named, DEFAULT_NETWORK).network_interfaces[0];
        assert_eq!(
            interface.subnetwork.as_deref(),
            Some("regions/us-east1/subnetworks/runners")
        );
    }

    #[test]
    fn updates_keep_the_reserved_record() {
        let body = instance_body(&request("srm-1"), DEFAULT_NETWORK);
        let desired = [("fleet-runners".to_string(), "c".to_string())].into();
        let update = metadata_for_update(&desired, body.metadata.as_ref());
        let keys: Vec<_> = update.items.iter().filter_map(|i| i.key.clone()).collect();
        assert_eq!(keys, ["fleet-runners", MACHINE_KEY]);
    }

    #[test]
    fn statuses_fold() {
        use instance::Status;
        assert_eq!(
            status_of(Some(&Status::Staging)),
            InstanceStatus::Provisioning
        );
        assert_eq!(status_of(Some(&Status::Stopping)), InstanceStatus::Stopping);
        assert_eq!(status_of(Some(&Status::Suspended)), InstanceStatus::Stopped);
        assert_eq!(
            status_of(Some(&Status::Terminated)),
            InstanceStatus::Terminated
        );
    }

    #[test]
    fn filters_quote_values() {
        assert_eq!(label_filter("", "fleet", "ci"), "labels.fleet = \"ci\"");
        assert_eq!(
            names_filter(&["a".into(), "b".into()]),
            "(name = \"a\") OR (name = \"b\")"
        );
    }
}
