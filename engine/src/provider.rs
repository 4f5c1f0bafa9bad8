//! The boundary between the engine and the clouds.
//!
//! In: requests built by the executor from a plan. Out: [`LiveResource`]s as the cloud reports
//! them. The engine defines this trait and never talks to a cloud itself; `fleet-providers`
//! implements it for the embedded simulator, AWS EC2 and GCP Compute Engine.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Which cloud a resource lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Google Compute Engine.
    Gcp,
    /// Amazon EC2.
    Aws,
}

impl Cloud {
    /// Every cloud, in display order.
    pub const ALL: [Cloud; 2] = [Cloud::Gcp, Cloud::Aws];

    /// The lowercase name used in fleet files, labels and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Gcp => "gcp",
            Cloud::Aws => "aws",
        }
    }

    /// Parses `gcp` or `aws`.
    pub fn parse(text: &str) -> Option<Cloud> {
        match text {
            "gcp" => Some(Cloud::Gcp),
            "aws" => Some(Cloud::Aws),
            _ => None,
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two kinds of cloud object fleet manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A VM: GCE instance or EC2 instance.
    Instance,
    /// An autoscale template: GCE instance template or EC2 launch template.
    InstanceTemplate,
}

/// The lifecycle state of an instance as the cloud reports it, folded into one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Being created (GCE PROVISIONING/STAGING, EC2 pending).
    Provisioning,
    /// Running.
    Running,
    /// Being stopped (GCE STOPPING, EC2 stopping).
    Stopping,
    /// Stopped; still counts against quotas and caps (EC2 stopped, GCE SUSPENDED).
    Stopped,
    /// GCE TERMINATED (a stopped VM).
    Terminated,
    /// Going away: EC2 `shutting-down` and `terminated` (listed for a while after), a VM
    /// whose deletion has begun. Such an object is no longer a machine of the fleet: it is
    /// never matched to a desired resource, never an orphan to delete, and not part of the
    /// live fingerprint; its id only makes a re-create's idempotency token differ from the
    /// token that made it.
    Deleting,
    /// Templates have no run state.
    Available,
}

impl InstanceStatus {
    /// Whether the machine does useful work.
    pub fn is_working(self) -> bool {
        matches!(
            self,
            InstanceStatus::Running | InstanceStatus::Provisioning | InstanceStatus::Available
        )
    }

    /// The lowercase name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Provisioning => "provisioning",
            InstanceStatus::Running => "running",
            InstanceStatus::Stopping => "stopping",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Terminated => "terminated",
            InstanceStatus::Deleting => "deleting",
            InstanceStatus::Available => "available",
        }
    }
}

/// The fields of a machine or template that fleet sets and compares.
///
/// The same shape describes what a fleet file wants and what the cloud reports, so the
/// diff compares like with like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// `n1-highcpu-32`, `t2a-standard-8`, `m6g.2xlarge`, …
    pub machine_type: String,
    /// `us-east1-c`, `us-east-1a`, … For templates: where their machines are created.
    pub zone: String,
    /// Boot image (GCE image URL or family, EC2 AMI id).
    pub image: String,
    /// Boot disk type: `pd-ssd`, `pd-balanced`, `gp3`, …
    pub disk_type: String,
    /// Boot disk size in GB.
    pub disk_size_gb: u32,
    /// Labels (GCE) or tags (EC2), including fleet's own `fleet-*` labels.
    pub labels: BTreeMap<String, String>,
    /// Files and values delivered with the machine (GCE metadata, EC2 user data), by key.
    pub metadata: BTreeMap<String, String>,
    /// Where the machine is attached. What a fleet file leaves unset is the cloud's default
    /// and is not compared; discovery reports what the cloud has.
    #[serde(default, skip_serializing_if = "Networking::is_unset")]
    pub networking: Networking,
    /// Who the machine acts as, and how it reaches those credentials. Compared like
    /// networking: only what the fleet file sets.
    #[serde(default, skip_serializing_if = "Identity::is_unset")]
    pub identity: Identity,
}

/// The cloud identity of a machine or template.
///
/// EC2: `instance_profile` is an instance profile name or ARN. GCE: `service_account` is an
/// email (`NAME@PROJECT.iam.gserviceaccount.com`) or `default` (the project's Compute Engine
/// default account), with its OAuth `scopes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    /// EC2 instance profile, name or ARN (discovery reports what the cloud returns: an ARN
    /// for an instance, what was sent for a launch template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// GCE service account email, or `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// GCE OAuth scopes of the service account, full URLs, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The instance metadata service options the cloud reports (EC2). Never set in a desired
    /// spec: fleet always asks for [`MetadataOptions::HARDENED`], so the diff compares what
    /// is reported against that, and a cloud that reports nothing is not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<MetadataOptions>,
}

impl Identity {
    /// Whether nothing is set: the cloud's defaults.
    pub fn is_unset(&self) -> bool {
        self == &Identity::default()
    }
}

/// How a machine's instance metadata service answers (EC2 `MetadataOptions`).
///
/// The hardened options make a machine's role unreachable from its containers: IMDSv2
/// session tokens are required (a forged `GET` from a server-side request forgery gets
/// nothing) and a token's response travels one network hop, so it dies at the container
/// bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetadataOptions {
    /// `HttpTokens=required`: IMDSv1 is off.
    pub http_tokens_required: bool,
    /// `HttpPutResponseHopLimit`.
    pub hop_limit: u32,
    /// `HttpEndpoint=enabled`: the machine can reach its role at all.
    pub endpoint_enabled: bool,
}

impl MetadataOptions {
    /// What fleet sends on every EC2 launch and launch template.
    pub const HARDENED: MetadataOptions = MetadataOptions {
        http_tokens_required: true,
        hop_limit: 1,
        endpoint_enabled: true,
    };

    /// The fields in which `self` is not the hardened options, named as the plan names them,
    /// with the value found and the value wanted.
    pub fn unhardened_fields(&self) -> Vec<(&'static str, String, String)> {
        let hardened = MetadataOptions::HARDENED;
        let tokens = |required: bool| if required { "required" } else { "optional" };
        let endpoint = |enabled: bool| if enabled { "enabled" } else { "disabled" };
        let mut out = Vec::new();
        if self.http_tokens_required != hardened.http_tokens_required {
            out.push((
                "metadata_options.http_tokens",
                tokens(self.http_tokens_required).to_string(),
                tokens(hardened.http_tokens_required).to_string(),
            ));
        }
        if self.hop_limit != hardened.hop_limit {
            out.push((
                "metadata_options.http_put_response_hop_limit",
                self.hop_limit.to_string(),
                hardened.hop_limit.to_string(),
            ));
        }
        if self.endpoint_enabled != hardened.endpoint_enabled {
            out.push((
                "metadata_options.http_endpoint",
                endpoint(self.endpoint_enabled).to_string(),
                endpoint(hardened.endpoint_enabled).to_string(),
            ));
        }
        out
    }
}

/// The network placement of a machine or template.
///
/// GCE: `network` and `subnet` are names in the project (`default`, `ci-runners`) or, for a
/// shared VPC, paths in the host project (`projects/HOST/global/networks/NAME`,
/// `projects/HOST/regions/REGION/subnetworks/NAME`). EC2: `subnet` is a subnet id (the
/// subnet decides the VPC) and `security_groups` are group ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Networking {
    /// GCE network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// GCE subnetwork or EC2 subnet id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// EC2 security group ids, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

impl Networking {
    /// Whether nothing is set: the cloud's defaults.
    pub fn is_unset(&self) -> bool {
        self == &Networking::default()
    }
}

/// One object as discovered in the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveResource {
    /// Which cloud.
    pub cloud: Cloud,
    /// Instance or template.
    pub kind: ObjectKind,
    /// The cloud's own id: `zones/us-east1-c/instances/NAME` on GCE, `i-…` / `lt-…` on EC2.
    pub id: String,
    /// The cloud name (GCE name, EC2 `Name` tag).
    pub name: String,
    /// Run state.
    pub status: InstanceStatus,
    /// What the machine or template is.
    pub spec: MachineSpec,
    /// The idempotency token the object was made with, where the cloud reports one (EC2
    /// `ClientToken`; `Some("")` for an instance launched without one), `None` where the cloud
    /// keeps no such record (GCE). An object carrying fleet's labels whose token is not one of
    /// this fleet's ([`is_fleet_token`]) was made outside fleet, e.g. a hand-made copy of a
    /// member with its tags: fleet neither keeps it as the member nor deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_token: Option<String>,
}

/// The idempotency token of a creation: 8 hex digits that stand for the fleet, then 24 that
/// stand for `parts` (what is made and what was there before). Two applies that see the same
/// cloud and want the same thing send the same token, so the cloud makes one object; EC2
/// `ClientToken` takes it as it is (64 characters at most), GCE turns it into a UUID.
pub fn creation_token(fleet: &str, parts: &[&str]) -> String {
    let mut token = fleet_token_prefix(fleet);
    token.push_str(&crate::desired::short_hash(parts)[..24]);
    token
}

/// Whether `token` was made by [`creation_token`] for `fleet`.
pub fn is_fleet_token(fleet: &str, token: &str) -> bool {
    token.len() == 32 && token.starts_with(&fleet_token_prefix(fleet))
}

fn fleet_token_prefix(fleet: &str) -> String {
    crate::desired::short_hash(&["fleet-token", fleet])[..8].to_string()
}

impl LiveResource {
    /// The value of one label, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.spec.labels.get(key).map(String::as_str)
    }
}

/// What discovery could see, and the zones it could not.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// The fleet's objects in the zones that answered.
    pub objects: Vec<LiveResource>,
    /// Zones that did not answer: they may hold objects of the fleet.
    pub unreachable_zones: Vec<String>,
}

/// A request to create an instance or a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Instance or template.
    pub kind: ObjectKind,
    /// The cloud name to give it.
    pub name: String,
    /// Everything about it, labels included.
    pub spec: MachineSpec,
    /// Idempotency token (EC2 `ClientToken`, GCE `requestId`): the same token never creates
    /// twice, so a retried or resumed apply is safe.
    pub idempotency_token: String,
}

/// A request to change labels or metadata of an existing instance in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The cloud id of the instance.
    pub id: String,
    /// The full label set to have afterwards.
    pub labels: BTreeMap<String, String>,
    /// The full metadata to have afterwards.
    pub metadata: BTreeMap<String, String>,
    /// Idempotency token.
    pub idempotency_token: String,
}

/// A request to delete an instance or template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// Instance or template.
    pub kind: ObjectKind,
    /// The cloud id.
    pub id: String,
    /// The cloud name, for messages.
    pub name: String,
    /// Idempotency token.
    pub idempotency_token: String,
}

/// How a provider call failed, which decides whether the executor retries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Over the API rate limit (`RequestLimitExceeded`, GCE 403 `rateLimitExceeded`, 429).
    Throttled,
    /// A passing fault (5xx, timeout, lost response). Safe to retry with the same token.
    Transient,
    /// The object does not exist.
    NotFound,
    /// Missing or rejected credentials.
    Credentials,
    /// Anything else: the request itself is wrong. Not retried.
    Fatal,
}

impl ErrorKind {
    /// Whether retrying the same request may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::Transient)
    }
}

/// An error from a provider call, with the context to act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{operation} failed ({code}): {message}")]
pub struct ProviderError {
    /// Retry class.
    pub kind: ErrorKind,
    /// The API call, e.g. `compute.instances.insert`, `ec2:RunInstances`.
    pub operation: String,
    /// The cloud's error code, e.g. `RequestLimitExceeded`, `rateLimitExceeded`, `notFound`.
    pub code: String,
    /// The cloud's message.
    pub message: String,
}

impl ProviderError {
    /// Builds an error.
    pub fn new(
        kind: ErrorKind,
        operation: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> ProviderError {
        ProviderError {
            kind,
            operation: operation.into(),
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a provider tells the executor about the pace its cloud accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderLimits {
    /// Mutating calls in flight at once.
    pub max_concurrent_mutations: usize,
    /// Calls per second the client should stay under; `None` for no client-side limit.
    pub calls_per_second: Option<f64>,
}

/// A cloud, as the engine sees it.
///
/// Implementations do the I/O; everything else in fleet is pure. One value serves one cloud
/// (its [`Provider::cloud`]); the binary builds one per cloud a fleet uses.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Which cloud this provider serves.
    fn cloud(&self) -> Cloud;

    /// One line that says where this provider points, shown in every plan and apply, e.g.
    /// `simulated cloud (sim-state/)` or `GCP project ci-runners`.
    fn describe(&self) -> String;

    /// The pace this cloud accepts.
    fn limits(&self) -> ProviderLimits;

    /// The API calls this provider made in this process so far, by operation name
    /// (`compute.instances.insert`, `ec2:RunInstances`, …), for `--stats` and tests.
    fn call_counts(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    /// Lists every instance and template whose `fleet` label equals `fleet`.
    ///
    /// # Guarantees
    /// Uses list calls filtered by label, one call per page (500 on GCE, 1000 on EC2), never
    /// one call per resource; each page is retried on its own under the provider's retry
    /// policy ([`crate::retry::follow_pages`]). Only fleet's own objects (with a `fleet-kind`
    /// label) are listed. Objects going away (EC2 `shutting-down`/`terminated`) are included
    /// as [`InstanceStatus::Deleting`]; stopped ones with their status. Instances this process
    /// made that a lagging list does not show yet are listed again, within the policy.
    ///
    /// # Errors
    /// A [`ProviderError`] naming the list call that failed.
    async fn discover(&self, fleet: &str) -> Result<Vec<LiveResource>, ProviderError>;

    /// As [`Provider::discover`], except that zones the cloud reports as unreachable are
    /// returned with what could be seen instead of failing the call, so the plan can leave
    /// those zones alone and go on with the rest. The default has no unreachable zones.
    ///
    /// # Errors
    /// As [`Provider::discover`].
    async fn discover_reachable(&self, fleet: &str) -> Result<Discovery, ProviderError> {
        Ok(Discovery {
            objects: self.discover(fleet).await?,
            unreachable_zones: Vec::new(),
        })
    }

    /// Lists the instances and templates with any of these cloud names, managed or not, so
    /// the plan can refuse to take a name that a machine fleet did not make already has.
    ///
    /// # Guarantees
    /// List calls filtered by name, one per page.
    ///
    /// # Errors
    /// A [`ProviderError`] naming the list call that failed.
    async fn find_by_names(&self, names: &[String]) -> Result<Vec<LiveResource>, ProviderError>;

    /// Creates one instance or template.
    ///
    /// # Guarantees
    /// Idempotent by `request.idempotency_token`: a second call with the same token returns
    /// the object the first made and creates nothing.
    ///
    /// # Errors
    /// [`ErrorKind::Throttled`] and [`ErrorKind::Transient`] may be retried with the same
    /// request; others are final.
    async fn create(&self, request: &CreateRequest) -> Result<LiveResource, ProviderError>;

    /// Creates several identical-but-for-name instances, batched where the cloud allows
    /// (GCE `bulkInsert`, EC2 `RunInstances` with `MinCount`/`MaxCount`). The default makes
    /// one [`Provider::create`] call each.
    ///
    /// # Errors
    /// One result per request, in order.
    async fn create_batch(
        &self,
        requests: &[CreateRequest],
    ) -> Vec<Result<LiveResource, ProviderError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(self.create(request).await);
        }
        results
    }

    /// Replaces the labels and metadata of an instance in place (GCE `setLabels` /
    /// `setMetadata`, EC2 `CreateTags`).
    ///
    /// # Errors
    /// As [`Provider::create`]; [`ErrorKind::NotFound`] when the instance is gone.
    async fn update(&self, request: &UpdateRequest) -> Result<LiveResource, ProviderError>;

    /// Deletes an instance or template.
    ///
    /// # Guarantees
    /// Deleting what is already gone succeeds, so a resumed apply can repeat it.
    ///
    /// # Errors
    /// As [`Provider::create`].
    async fn delete(&self, request: &DeleteRequest) -> Result<(), ProviderError>;
}

/// How a provider splits one [`Provider::create_batch`] into calls: instance requests of the
/// same `shape` go together, at most `max` a call; templates and requests without a shape
/// are calls of one. Calls come in the order of their first request; a call of one index is
/// meant for [`Provider::create`].
pub fn batch_calls<'a, K: Ord>(
    requests: &'a [CreateRequest],
    max: usize,
    shape: impl Fn(&'a CreateRequest) -> Option<K>,
) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    let mut calls: Vec<Vec<usize>> = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        let key = (request.kind == ObjectKind::Instance)
            .then(|| shape(request))
            .flatten();
        match key {
            Some(key) => groups.entry(key).or_default().push(index),
            None => calls.push(vec![index]),
        }
    }
    for members in groups.into_values() {
        calls.extend(members.chunks(max.max(1)).map(<[usize]>::to_vec));
    }
    calls.sort_by_key(|members| members[0]);
    calls
}

/// The labels (GCE) or tags (EC2) fleet puts on everything it creates. Discovery filters on
/// [`labels::FLEET`]; the address of a live object is rebuilt from [`labels::KIND`] and
/// [`labels::RESOURCE`] (pool members: their name), so no state file is needed.
pub mod labels {
    /// The fleet name.
    pub const FLEET: &str = "fleet";
    /// `manager`, `helper`, `pool` or `template`.
    pub const KIND: &str = "fleet-kind";
    /// The resource's name in the fleet file after expansion (the instance's cloud name; a
    /// template's unversioned name). Pool members do not carry it: a member's address is its
    /// name, so the members of one pool have identical labels and are made in one batch call
    /// (GCE `bulkInsert` and EC2 `RunInstances` cannot give each instance its own labels).
    pub const RESOURCE: &str = "fleet-resource";
    /// A hash of the desired spec last applied, to tell drift from a fleet-file change.
    pub const SPEC_HASH: &str = "fleet-spec";
    /// The role: `runner-manager`, `prometheus`, `builder`, `autoscale-template`.
    pub const ROLE: &str = "fleet-role";
    /// For pool members: the pool's name.
    pub const POOL: &str = "fleet-pool";
    /// A hash of the metadata (rendered files) delivered with the machine. Clouds that do not
    /// return metadata in their list calls (EC2 user data) are compared through it.
    pub const CONFIG_HASH: &str = "fleet-config";

    /// Whether a label key is one fleet manages (as opposed to a user label).
    pub fn is_managed(key: &str) -> bool {
        key == FLEET || key.starts_with("fleet-")
    }
}
