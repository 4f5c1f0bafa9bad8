//! AWS EC2: fleet's instances are EC2 instances, its templates are launch-template versions.
//!
//! In: requests from the engine's executor, an [`AwsOptions`] (region, endpoint override,
//! limits, retry policy) and the SDK's standard credential chain. Out: [`LiveResource`]s as EC2 reports
//! them, every request counted by operation ([`Provider::call_counts`]).
//!
//! How fleet's model maps onto EC2:
//!
//! - **Instances** carry every label as a tag plus `Name` (the cloud name). Discovery is
//!   `DescribeInstances` filtered by `tag:fleet` and the `fleet-kind` tag key, in every
//!   state, 1000 a page, plus one `DescribeVolumes` per 200 instances for the root disks'
//!   type and size. The tag key keeps out autoscaled build machines, which carry `fleet=` but
//!   are not fleet's objects. Shutting-down and terminated instances are going away
//!   ([`InstanceStatus::Deleting`]): the engine neither counts nor deletes them again.
//! - **Templates** are launch-template *versions*. One launch template per fleet template,
//!   named by its `fleet-resource` label (`arm64-aws`) and tagged with the fleet labels; each
//!   versioned cloud name (`arm64-aws-cb197c15`) is one version whose `VersionDescription` is
//!   that name. The one label that differs between versions, `fleet-spec`, is kept on the
//!   launch template as `fleet-spec-v<N>`; a version without that stamp is not fleet's.
//!   Discovery: `DescribeLaunchTemplates` by tag (one call per 200 templates) plus one
//!   `DescribeLaunchTemplateVersions` per launch template.
//! - **Idempotency**: `ClientToken` is the executor's creation token (fleet, address, spec
//!   and the address's live state); a batch of pool members uses a fleet token over its
//!   members' tokens, so discovery tells fleet's instances from copies made by hand. A token
//!   whose instances are already going away is spent: the launch is sent again under a token
//!   derived from it and the ids that went away, so every apply that sees them derives the same.
//! - **Retries**: the SDK's retries are off. Every list page and the tagging inside a batch
//!   are retried here under the provider's [`RetryPolicy`] (`--max-attempts`, `--retry-for`)
//!   through [`fleet_engine::retry`]; other calls are retried by the engine's executor under
//!   the same policy, so a throttled call is not retried twice over.
//! - **Lists lag behind writes** (EC2 is eventually consistent): an instance `RunInstances`
//!   returned may be missing from `DescribeInstances` for a while. The provider remembers the
//!   instances it launched in this process, and a discovery that does not list them all is
//!   repeated, under the retry policy, until it does: a verification after an apply never
//!   takes a machine it just made for missing.

mod calls;
mod convert;
mod errors;
mod ssm;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, Instance, InstanceType,
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, LaunchTemplatePlacementRequest,
    LaunchTemplateVersion, Placement, RequestLaunchTemplateData, ResourceType, Tag, VolumeType,
};
use aws_sdk_ec2::Client;
use fleet_engine::provider::{
    batch_calls, labels, Cloud, CreateRequest, DeleteRequest, ErrorKind, InstanceStatus,
    LiveResource, Networking, ObjectKind, Provider, ProviderError, ProviderLimits, UpdateRequest,
};
use fleet_engine::retry::{follow_pages, with_retry, RetryPolicy};

use self::calls::CallCounter;
use self::convert::{Disk, NAME_TAG};
use self::errors::{about, sdk_error, Ec2ErrorCode};

pub use self::errors::ConnectError;

/// `DescribeInstances` page size (the EC2 maximum).
const INSTANCE_PAGE: i32 = 1000;
/// `DescribeLaunchTemplates` / `DescribeLaunchTemplateVersions` page size (the EC2 maximum).
const TEMPLATE_PAGE: i32 = 200;
/// The most values fleet puts in one filter.
const FILTER_VALUES: usize = 200;
/// Instance states fleet lists: every state. Shutting-down and terminated instances are
/// reported as going away, so that a machine being deleted is neither counted nor deleted
/// again, and a member made again after a deletion gets a new token.
const LIVE_STATES: [&str; 6] = [
    "pending",
    "running",
    "stopping",
    "stopped",
    "shutting-down",
    "terminated",
];
/// The root device used when the image's own cannot be looked up.
const DEFAULT_ROOT_DEVICE: &str = "/dev/sda1";

/// How to reach EC2; built by the CLI from the fleet file and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsOptions {
    /// The region every call goes to (`clouds.aws.region`).
    pub region: String,
    /// An endpoint override from the fleet file or the command line; `None` leaves it to the
    /// SDK's configuration (`AWS_ENDPOINT_URL`, the profile's `endpoint_url`, or AWS).
    pub endpoint: Option<String>,
    /// Mutating calls in flight at once in this region.
    pub max_concurrent_mutations: usize,
    /// Client-side ceiling on mutating steps per second; `None` for none.
    pub calls_per_second: Option<f64>,
    /// How list pages, tagging and waits for a lagging list are retried (`--max-attempts`,
    /// `--retry-for`).
    pub retry: RetryPolicy,
}

impl AwsOptions {
    /// Options for one region with the default limits.
    pub fn new(region: impl Into<String>) -> AwsOptions {
        AwsOptions {
            region: region.into(),
            endpoint: None,
            max_concurrent_mutations: 8,
            calls_per_second: Some(20.0),
            retry: RetryPolicy::default(),
        }
    }
}

/// The AWS EC2 provider for one region.
#[derive(Debug)]
pub struct AwsEc2 {
    client: Client,
    /// SSM Parameter Store, where each instance's files, decision and secrets live.
    parameters: ssm::Parameters,
    /// The full parameter names of each instance, by instance id, as the last discovery
    /// found them (secret parameters named from `secret-digests`): what a deletion deletes
    /// and what an update no longer wants.
    parameter_names: Mutex<BTreeMap<String, Vec<String>>>,
    /// The account the fleet's instances belong to, as EC2 last said (a reservation's
    /// `OwnerId`): part of the instance ARN each parameter's `fleet-instance` tag holds.
    account: Mutex<Option<String>>,
    options: AwsOptions,
    /// The endpoint in use, for [`Provider::describe`], when it is not AWS's own.
    endpoint: Option<String>,
    calls: CallCounter,
    /// Root device names of images, looked up once per image per process.
    root_devices: Mutex<BTreeMap<String, String>>,
    /// Instances launched by this process and the name each was given: discovery waits for
    /// them to be listed, and a deletion planned for an instance that a launch has since
    /// handed back under another name (a repeated `ClientToken`) leaves it alone.
    launched: Mutex<BTreeMap<String, String>>,
    /// Unnamed batch members this process is deleting, by their placeholder name. Held while
    /// a batch is launched and named, and while a deletion decides, so that the two never
    /// take the same instance: a launch whose earlier instances are being deleted sends a new
    /// token, and a deletion of instances a launch got back is dropped.
    claims: tokio::sync::Mutex<BTreeMap<String, Vec<String>>>,
}

impl AwsEc2 {
    /// Connects with the SDK's standard configuration chain (environment, shared config and
    /// credentials files, SSO, web identity, container and instance roles) and checks that
    /// credentials can be found, before anything is planned or changed.
    ///
    /// # Errors
    /// [`ConnectError::NoCredentials`] when the credential chain finds nothing, saying where
    /// it looked; [`ConnectError::InvalidEndpoint`] for an endpoint that is not a URL.
    pub async fn connect(options: AwsOptions) -> Result<AwsEc2, ConnectError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(options.region.clone()));
        if let Some(endpoint) = &options.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConnectError::InvalidEndpoint {
                    endpoint: endpoint.clone(),
                });
            }
            loader = loader.endpoint_url(endpoint.clone());
        }
        let shared = loader.load().await;
        let Some(credentials) = shared.credentials_provider() else {
            return Err(ConnectError::NoCredentials {
                region: options.region.clone(),
                detail: "no credential provider is configured".to_string(),
            });
        };
        {
            use aws_sdk_ec2::config::ProvideCredentials;
            if let Err(error) = credentials.provide_credentials().await {
                return Err(ConnectError::NoCredentials {
                    region: options.region.clone(),
                    detail: error.to_string(),
                });
            }
        }
        let endpoint = shared.endpoint_url().map(str::to_string);
        Ok(AwsEc2::from_sdk_config(&shared, options, endpoint))
    }

    /// Builds the provider from an SDK configuration (for callers that load their own).
    pub fn from_sdk_config(
        shared: &aws_config::SdkConfig,
        options: AwsOptions,
        endpoint: Option<String>,
    ) -> AwsEc2 {
        let calls = CallCounter::default();
        let config = aws_sdk_ec2::config::Builder::from(shared)
            // The engine's executor retries throttling and faults with jittered backoff and
            // counts attempts; SDK retries under it would multiply the attempts.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .interceptor(calls.clone())
            .build();
        AwsEc2 {
            client: Client::from_conf(config),
            parameters: ssm::Parameters::new(shared, calls.for_service("ssm"), options.retry),
            parameter_names: Mutex::new(BTreeMap::new()),
            account: Mutex::new(None),
            options,
            endpoint,
            calls,
            root_devices: Mutex::new(BTreeMap::new()),
            launched: Mutex::new(BTreeMap::new()),
            claims: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    // ---- discovery ----

    /// Every instance matching `filters` in any state, one `DescribeInstances` call per page
    /// (each page retried on its own), with root disks from one `DescribeVolumes` call per
    /// 200 instances.
    async fn list_instances(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Vec<LiveResource>, ProviderError> {
        let mut instances: Vec<Instance> = Vec::new();
        follow_pages(
            self.options.retry,
            |token| {
                let request = self
                    .client
                    .describe_instances()
                    .set_filters(Some(filters.clone()))
                    .filters(filter("instance-state-name", LIVE_STATES))
                    .max_results(INSTANCE_PAGE)
                    .set_next_token(token);
                async move {
                    let page = request
                        .send()
                        .await
                        .map_err(|e| sdk_error("ec2:DescribeInstances", e))?;
                    let next = page.next_token().map(str::to_string);
                    Ok((page, next))
                }
            },
            |page| {
                for reservation in page.reservations() {
                    self.note_account(reservation.owner_id());
                }
                instances.extend(
                    page.reservations()
                        .iter()
                        .flat_map(|r| r.instances())
                        .cloned(),
                );
            },
        )
        .await?;
        let listed: Vec<&Instance> = instances.iter().collect();
        let disks = self.root_disks(&listed).await?;
        let mut found: Vec<LiveResource> = listed
            .iter()
            .filter_map(|instance| convert::instance_resource(instance, &disks))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// The fleet's instances, listed again (under the retry policy) while an instance this
    /// process launched is missing from the list: EC2's lists lag behind its writes.
    async fn list_fleet_instances(&self, fleet: &str) -> Result<Vec<LiveResource>, ProviderError> {
        let filters = || {
            vec![
                filter(&format!("tag:{}", labels::FLEET), [fleet]),
                filter("tag-key", [labels::KIND]),
            ]
        };
        with_retry(
            self.options.retry,
            |_| async {
                let found = self.list_instances(filters()).await?;
                let listed: BTreeSet<&str> = found.iter().map(|o| o.id.as_str()).collect();
                let missing: Vec<String> = self
                    .launched
                    .lock()
                    .map(|launched| {
                        launched
                            .keys()
                            .filter(|id| !listed.contains(id.as_str()))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if missing.is_empty() {
                    Ok(found)
                } else {
                    Err(ProviderError::new(
                        ErrorKind::Transient,
                        "ec2:DescribeInstances",
                        "NotYetListed",
                        format!(
                            "instances launched by this apply are not listed yet: {}",
                            missing.join(", ")
                        ),
                    ))
                }
            },
            |_, _, _| {},
        )
        .await
    }

    /// The type and size of the root volumes of some instances, by volume id.
    async fn root_disks(
        &self,
        instances: &[&Instance],
    ) -> Result<BTreeMap<String, Disk>, ProviderError> {
        let ids: Vec<&str> = instances
            .iter()
            .filter(|i| convert::root_volume_id(i).is_some())
            .filter_map(|i| i.instance_id())
            .collect();
        let mut disks = BTreeMap::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            follow_pages(
                self.options.retry,
                |token| {
                    let request = self
                        .client
                        .describe_volumes()
                        .filters(filter("attachment.instance-id", chunk.iter().copied()))
                        .set_next_token(token);
                    async move {
                        let page = request
                            .send()
                            .await
                            .map_err(|e| sdk_error("ec2:DescribeVolumes", e))?;
                        let next = page.next_token().map(str::to_string);
                        Ok((page, next))
                    }
                },
                |page| {
                    for volume in page.volumes() {
                        if let Some(id) = volume.volume_id() {
                            disks.insert(
                                id.to_string(),
                                Disk {
                                    disk_type: volume
                                        .volume_type()
                                        .map(|t| t.as_str().to_string())
                                        .unwrap_or_default(),
                                    size_gb: volume
                                        .size()
                                        .and_then(|s| u32::try_from(s).ok())
                                        .unwrap_or_default(),
                                },
                            );
                        }
                    }
                },
            )
            .await?;
        }
        Ok(disks)
    }

    /// Launch templates matching `filters`: (id, default version, tags), one
    /// `DescribeLaunchTemplates` call per page and one `DescribeTags` per page of those.
    ///
    /// Tags are read with `DescribeTags` rather than taken from `DescribeLaunchTemplates`:
    /// the version stamps change after creation, and moto's `DescribeLaunchTemplates` only
    /// shows the tags a template was created with.
    async fn list_templates(
        &self,
        filters: Vec<Filter>,
        ids: &[&str],
    ) -> Result<Vec<(String, i64, BTreeMap<String, String>)>, ProviderError> {
        let mut templates: Vec<(String, i64)> = Vec::new();
        follow_pages(
            self.options.retry,
            |token| {
                let mut request = self
                    .client
                    .describe_launch_templates()
                    .set_next_token(token);
                // EC2 takes either ids or filters with a page size, not both.
                if ids.is_empty() {
                    request = request
                        .set_filters(Some(filters.clone()))
                        .max_results(TEMPLATE_PAGE);
                } else {
                    request = request.set_launch_template_ids(Some(
                        ids.iter().map(|id| id.to_string()).collect(),
                    ));
                }
                async move {
                    let page = request
                        .send()
                        .await
                        .map_err(|e| sdk_error("ec2:DescribeLaunchTemplates", e))?;
                    let next = page.next_token().map(str::to_string);
                    Ok((page, next))
                }
            },
            |page| {
                templates.extend(page.launch_templates().iter().filter_map(|t| {
                    Some((
                        t.launch_template_id()?.to_string(),
                        t.default_version_number().unwrap_or_default(),
                    ))
                }));
            },
        )
        .await?;
        let mut found = Vec::new();
        for page in templates.chunks(TEMPLATE_PAGE as usize) {
            let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
            let mut tags = self.resource_tags(&ids).await?;
            for (id, default_version) in page {
                let tags = tags.remove(id).unwrap_or_default();
                found.push((id.clone(), *default_version, tags));
            }
        }
        Ok(found)
    }

    /// The tags of some resources by id: one `DescribeTags` call per page (1000 tags).
    async fn resource_tags(
        &self,
        ids: &[&str],
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, ProviderError> {
        let mut tags: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            follow_pages(
                self.options.retry,
                |token| {
                    let request = self
                        .client
                        .describe_tags()
                        .filters(filter("resource-id", chunk.iter().copied()))
                        .max_results(1000)
                        .set_next_token(token);
                    async move {
                        let page = request
                            .send()
                            .await
                            .map_err(|e| sdk_error("ec2:DescribeTags", e))?;
                        let next = page.next_token().map(str::to_string);
                        Ok((page, next))
                    }
                },
                |page| {
                    for tag in page.tags() {
                        if let (Some(id), Some(key)) = (tag.resource_id(), tag.key()) {
                            tags.entry(id.to_string()).or_default().insert(
                                key.to_string(),
                                tag.value().unwrap_or_default().to_string(),
                            );
                        }
                    }
                },
            )
            .await?;
        }
        Ok(tags)
    }

    /// Every version of one launch template, one `DescribeLaunchTemplateVersions` per page.
    async fn versions(
        &self,
        template_id: &str,
    ) -> Result<Vec<LaunchTemplateVersion>, ProviderError> {
        let mut found = Vec::new();
        follow_pages(
            self.options.retry,
            |token| {
                let request = self
                    .client
                    .describe_launch_template_versions()
                    .launch_template_id(template_id)
                    .max_results(TEMPLATE_PAGE)
                    .set_next_token(token);
                async move {
                    let page = request
                        .send()
                        .await
                        .map_err(|e| sdk_error("ec2:DescribeLaunchTemplateVersions", e))?;
                    let next = page.next_token().map(str::to_string);
                    Ok((page, next))
                }
            },
            |page| found.extend(page.launch_template_versions().iter().cloned()),
        )
        .await?;
        Ok(found)
    }

    /// The versions of one launch template fleet has stamped.
    async fn list_versions(
        &self,
        template_id: &str,
        template_tags: &BTreeMap<String, String>,
    ) -> Result<Vec<LiveResource>, ProviderError> {
        match self.versions(template_id).await {
            Ok(versions) => Ok(versions
                .iter()
                .filter_map(|v| convert::version_resource(template_id, template_tags, v))
                .collect()),
            // Deleted between the two list calls.
            Err(error) if error.kind == ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(about(error, template_id)),
        }
    }

    // ---- instances ----

    /// The root device name of an image (`/dev/sda1`, `/dev/xvda`), so the requested disk
    /// resizes the root volume instead of adding a second one. Looked up once per image.
    async fn root_device(&self, image: &str) -> Result<String, ProviderError> {
        if let Some(device) = self
            .root_devices
            .lock()
            .ok()
            .and_then(|m| m.get(image).cloned())
        {
            return Ok(device);
        }
        let result = self.client.describe_images().image_ids(image).send().await;
        let device = match result {
            Ok(output) => output
                .images()
                .first()
                .and_then(|i| i.root_device_name())
                .unwrap_or(DEFAULT_ROOT_DEVICE)
                .to_string(),
            Err(error) => {
                let error = sdk_error("ec2:DescribeImages", error);
                // An unknown image fails RunInstances with its own message; an image this
                // account may not describe still launches with the usual root device.
                if error.kind.is_retryable() || error.kind == ErrorKind::Credentials {
                    return Err(about(error, image));
                }
                DEFAULT_ROOT_DEVICE.to_string()
            }
        };
        if let Ok(mut devices) = self.root_devices.lock() {
            devices.insert(image.to_string(), device.clone());
        }
        Ok(device)
    }

    /// Runs `count` instances of one shape with one `RunInstances` call.
    ///
    /// EC2 answers a repeated `ClientToken` with the instances it made the first time. When
    /// those are already going away (a killed apply's machines, deleted since), the token is
    /// spent: the launch is sent again under a token derived from it and the ids that went
    /// away, which every apply that sees the same cloud derives alike.
    async fn run_instances(
        &self,
        first: &CreateRequest,
        count: i32,
        tags: Vec<Tag>,
        client_token: &str,
    ) -> Result<Vec<Instance>, ProviderError> {
        let spec = &first.spec;
        let root = self.root_device(&spec.image).await?;
        let disk_size = i32::try_from(spec.disk_size_gb).map_err(|_| {
            ProviderError::new(
                ErrorKind::Fatal,
                "ec2:RunInstances",
                "InvalidParameterValue",
                format!(
                    "{}: disk size {} GB is too large",
                    first.name, spec.disk_size_gb
                ),
            )
        })?;
        let request = self
            .client
            .run_instances()
            .image_id(&spec.image)
            .instance_type(InstanceType::from(spec.machine_type.as_str()))
            .min_count(count)
            .max_count(count)
            .placement(Placement::builder().availability_zone(&spec.zone).build())
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(disk_size)
                            .volume_type(VolumeType::from(spec.disk_type.as_str()))
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(convert::tag_spec(ResourceType::Instance, tags))
            .set_user_data(convert::instance_user_data(
                &spec.metadata,
                spec.labels.get(labels::FLEET).map_or("", String::as_str),
            ))
            // Unset: the default VPC's subnet in the zone and its default group.
            .set_subnet_id(spec.networking.subnet.clone())
            .set_security_group_ids(convert::groups(&spec.networking))
            .metadata_options(convert::metadata_options())
            .set_iam_instance_profile(convert::instance_profile(&spec.identity));
        let fleet = spec.labels.get(labels::FLEET).map_or("", String::as_str);
        let mut token = client_token.to_string();
        // Each derived token is new to EC2, so the second launch makes instances; the bound
        // only guards against a cloud that answers every token with gone instances.
        for _ in 0..3 {
            let output = request
                .clone()
                .client_token(&token)
                .send()
                .await
                .map_err(|e| about(sdk_error("ec2:RunInstances", e), &first.name))?;
            self.note_account(output.owner_id());
            let mut instances = output.instances().to_vec();
            instances.sort_by_key(|i| i.ami_launch_index().unwrap_or_default());
            let mut gone: Vec<&str> = instances
                .iter()
                .filter(|i| {
                    convert::status(i.state().and_then(|s| s.name()))
                        == Some(InstanceStatus::Deleting)
                })
                .filter_map(|i| i.instance_id())
                .collect();
            if gone.is_empty() {
                return Ok(instances);
            }
            gone.sort_unstable();
            let mut parts = vec![token.as_str()];
            parts.extend(gone);
            token = fleet_engine::provider::creation_token(fleet, &parts);
        }
        Err(ProviderError::new(
            ErrorKind::Fatal,
            "ec2:RunInstances",
            "TokenSpent",
            format!(
                "{}: EC2 answered every ClientToken with instances that are going away",
                first.name
            ),
        ))
    }

    /// Notes the account EC2 says the fleet's instances belong to.
    fn note_account(&self, owner: Option<&str>) {
        if let (Some(owner), Ok(mut account)) = (owner, self.account.lock()) {
            *account = Some(owner.to_string());
        }
    }

    /// The ARN of instance `id`, as the machines' policy compares it with the caller's.
    fn instance_arn(&self, id: &str, what: &str) -> Result<String, ProviderError> {
        let account = self
            .account
            .lock()
            .ok()
            .and_then(|account| account.clone())
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Fatal,
                    "ssm:AddTagsToResource",
                    "NoOwnerId",
                    format!(
                        "{what}: EC2 did not say which account instance {id} belongs to (no \
                         OwnerId in its reservation), so its parameters cannot be tagged for it"
                    ),
                )
            })?;
        Ok(fleet_engine::render::delivery::ec2_instance_arn(
            &self.options.region,
            &account,
            id,
        ))
    }

    /// Notes an instance this process launched and the name it now has.
    fn remember(&self, id: &str, name: &str) {
        if let Ok(mut launched) = self.launched.lock() {
            launched.insert(id.to_string(), name.to_string());
        }
    }

    /// The name this process gave an instance it launched, if it did.
    fn launched_as(&self, id: &str) -> Option<String> {
        self.launched
            .lock()
            .ok()
            .and_then(|launched| launched.get(id).cloned())
    }

    /// What fleet reports for an instance it just created (EC2 answers `pending` with the
    /// requested shape; the disk is what was asked for).
    fn created(
        request: &CreateRequest,
        instance: &Instance,
    ) -> Result<LiveResource, ProviderError> {
        let id = instance.instance_id().ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Transient,
                "ec2:RunInstances",
                "MissingInstanceId",
                format!("{}: EC2 returned an instance without an id", request.name),
            )
        })?;
        Ok(LiveResource {
            creation_token: instance.client_token().map(str::to_string),
            cloud: Cloud::Aws,
            kind: ObjectKind::Instance,
            id: id.to_string(),
            name: request.name.clone(),
            status: convert::status(instance.state().and_then(|s| s.name()))
                .unwrap_or(InstanceStatus::Provisioning),
            spec: fleet_engine::provider::MachineSpec {
                metadata: BTreeMap::new(),
                ..request.spec.clone()
            },
        })
    }

    async fn create_instance(
        &self,
        request: &CreateRequest,
    ) -> Result<LiveResource, ProviderError> {
        let tags = convert::instance_tags(&request.name, &request.spec.labels);
        let instances = self
            .run_instances(request, 1, tags, &request.idempotency_token)
            .await?;
        let instance = instances.first().ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Transient,
                "ec2:RunInstances",
                "NoInstance",
                format!("{}: EC2 returned no instance", request.name),
            )
        })?;
        let live = AwsEc2::created(request, instance)?;
        self.remember(&live.id, &request.name);
        self.write_parameters(
            &live.id,
            &request.spec.labels,
            &request.spec.metadata,
            &request.name,
        )
        .await?;
        Ok(live)
    }

    /// The parameter prefix of an instance of the fleet its labels name.
    fn parameter_prefix(labels: &BTreeMap<String, String>, id: &str) -> String {
        let fleet = labels.get(labels::FLEET).map_or("", String::as_str);
        format!(
            "{}{id}/",
            fleet_engine::render::delivery::parameter_root(fleet)
        )
    }

    /// Writes an instance's parameters and deletes those it had that are no longer wanted (a
    /// secret no longer referenced).
    async fn write_parameters(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        metadata: &BTreeMap<String, String>,
        what: &str,
    ) -> Result<(), ProviderError> {
        let prefix = AwsEc2::parameter_prefix(labels, id);
        let wanted = fleet_engine::render::delivery::parameters(metadata);
        let existing: BTreeSet<String> = self
            .parameter_names
            .lock()
            .map(|known| known.get(id).cloned().unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .collect();
        // An instance with nothing to watch has no parameters, and no account is needed.
        let reader = if wanted.is_empty() {
            String::new()
        } else {
            self.instance_arn(id, what)?
        };
        self.parameters
            .put(&prefix, &wanted, &reader, &existing, what)
            .await?;
        let names: BTreeSet<String> = wanted
            .iter()
            .map(|p| format!("{prefix}{}", p.name))
            .collect();
        let stale: Vec<String> = existing
            .into_iter()
            .filter(|name| !names.contains(name))
            .collect();
        if !stale.is_empty() {
            self.parameters.delete(&stale, what).await?;
        }
        if let Ok(mut known) = self.parameter_names.lock() {
            known.insert(id.to_string(), names.into_iter().collect());
        }
        Ok(())
    }

    /// The files, decision and secret digests each instance's parameters hold, read back
    /// into its metadata as the engine delivered them (`fleet-secrets` with digests only),
    /// and the names of all its parameters remembered for a deletion.
    async fn read_parameters(
        &self,
        fleet: &str,
        found: &mut [LiveResource],
    ) -> Result<(), ProviderError> {
        use fleet_engine::render::delivery;
        // No instance, no parameters to read for it: an empty fleet costs no SSM call.
        if !found.iter().any(|live| live.kind == ObjectKind::Instance) {
            return Ok(());
        }
        let root = delivery::parameter_root(fleet);
        let strings = self.parameters.strings_under(&root).await?;
        let mut by_instance: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        for (name, value) in &strings {
            let Some((id, rest)) = name
                .strip_prefix(&root)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            by_instance
                .entry(id)
                .or_default()
                .push((rest, value.as_str()));
        }
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for live in found.iter_mut() {
            if live.kind != ObjectKind::Instance {
                continue;
            }
            let Some(items) = by_instance.get(live.id.as_str()) else {
                continue;
            };
            let prefix = format!("{root}{}/", live.id);
            let mut own = Vec::new();
            for (name, value) in items {
                own.push(format!("{prefix}{name}"));
                if let Some(key) = delivery::parameter_key(name) {
                    live.spec
                        .metadata
                        .insert(key.to_string(), (*value).to_string());
                } else if *name == delivery::SECRET_DIGESTS {
                    let digests = serde_json::from_str::<fleet_engine::secrets::Delivery>(value)
                        .map(|d| d.digests)
                        .unwrap_or_default();
                    own.extend(
                        digests.keys().map(|secret| {
                            format!("{prefix}{}{secret}", delivery::SECRET_PARAMETERS)
                        }),
                    );
                    live.spec.metadata.insert(
                        fleet_engine::render::SECRETS.to_string(),
                        (*value).to_string(),
                    );
                }
            }
            names.insert(live.id.clone(), own);
        }
        if let Ok(mut known) = self.parameter_names.lock() {
            known.extend(names);
        }
        Ok(())
    }

    /// One `RunInstances` for members of the same shape and user data, then one `CreateTags`
    /// per member for what differs between them (pool members: only `Name`; others also
    /// `fleet-resource` and `fleet-spec`).
    ///
    /// The shared tags go on at launch, with `Name` (and for machines outside pools
    /// `fleet-resource`) set to a placeholder unique to the batch: if the process dies before
    /// a member is tagged, the machine is still found by discovery, as an orphan that the next
    /// apply deletes, rather than leaked.
    async fn create_group(
        &self,
        requests: &[&CreateRequest],
    ) -> Vec<Result<LiveResource, ProviderError>> {
        let first = requests[0];
        // A fleet token like each member's, so discovery knows the members as fleet's own.
        let member_tokens: Vec<&str> = requests
            .iter()
            .map(|request| request.idempotency_token.as_str())
            .collect();
        let fleet = first
            .spec
            .labels
            .get(labels::FLEET)
            .map_or("", String::as_str);
        let token = fleet_engine::provider::creation_token(fleet, &member_tokens);
        let pool = first
            .spec
            .labels
            .get(labels::POOL)
            .map_or("fleet", String::as_str);
        // Until the batch is named: no deletion of this process decides meanwhile.
        let claims = self.claims.lock().await;
        // Instances an earlier launch of this token made (a killed apply's, or another
        // apply's) that this apply is deleting as orphans: EC2 would hand them back for the
        // same token, so the batch goes out under a token derived from it and them.
        let token = match claims.get(&convert::placeholder(pool, &token)) {
            Some(doomed) => {
                let mut doomed: Vec<&str> = doomed.iter().map(String::as_str).collect();
                doomed.sort_unstable();
                let mut parts = vec![token.as_str()];
                parts.extend(doomed);
                fleet_engine::provider::creation_token(fleet, &parts)
            }
            None => token,
        };
        let mut shared: BTreeMap<String, String> = first.spec.labels.clone();
        shared.retain(|key, value| {
            requests
                .iter()
                .all(|r| r.spec.labels.get(key) == Some(&*value))
        });
        let placeholder = convert::placeholder(pool, &token);
        // Pool members are known by name (the placeholder until tagged); other machines by
        // `fleet-resource`, which then needs the placeholder too.
        if !shared.contains_key(labels::RESOURCE) && !shared.contains_key(labels::POOL) {
            shared.insert(labels::RESOURCE.to_string(), placeholder.clone());
        }
        let launch_tags = convert::instance_tags(&placeholder, &shared);
        let count = i32::try_from(requests.len()).unwrap_or(i32::MAX);
        let instances = match self.run_instances(first, count, launch_tags, &token).await {
            Ok(instances) => instances,
            Err(error) => return requests.iter().map(|_| Err(error.clone())).collect(),
        };
        // Noted before they are named: a deletion of these instances that this apply
        // planned (as the unnamed orphans of an earlier launch) must not take them now.
        for (instance, request) in instances.iter().zip(requests) {
            if let Some(id) = instance.instance_id() {
                self.remember(id, &request.name);
            }
        }
        drop(claims);
        let mut results = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            let Some(instance) = instances.get(index) else {
                results.push(Err(ProviderError::new(
                    ErrorKind::Transient,
                    "ec2:RunInstances",
                    "InsufficientInstances",
                    format!(
                        "{}: EC2 started {} of {} instances",
                        request.name,
                        instances.len(),
                        requests.len()
                    ),
                )));
                continue;
            };
            let live = match AwsEc2::created(request, instance) {
                Ok(live) => live,
                Err(error) => {
                    results.push(Err(error));
                    continue;
                }
            };
            // Only what the launch tags do not already say: the name, and for machines
            // outside pools their own labels.
            let own_labels: BTreeMap<String, String> = request
                .spec
                .labels
                .iter()
                .filter(|(key, value)| shared.get(*key) != Some(*value))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            let own = convert::instance_tags(&request.name, &own_labels);
            let tagged = match self.tag_with_retry(&live.id, own, &request.name).await {
                Ok(()) => {
                    self.write_parameters(
                        &live.id,
                        &request.spec.labels,
                        &request.spec.metadata,
                        &request.name,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match tagged {
                Ok(()) => results.push(Ok(live)),
                Err(error) => {
                    // The machine exists but is not this member yet; give it back so the
                    // executor's own retry of this member does not leave a stray machine.
                    let _ = self.terminate(&live.id).await;
                    results.push(Err(error));
                }
            }
        }
        results
    }

    /// `CreateTags`, retried here under the retry policy (see [`AwsEc2::create_group`]).
    async fn tag_with_retry(
        &self,
        id: &str,
        tags: Vec<Tag>,
        what: &str,
    ) -> Result<(), ProviderError> {
        with_retry(
            self.options.retry,
            |_| self.create_tags(id, tags.clone(), what),
            |_, _, _| {},
        )
        .await
    }

    async fn create_tags(&self, id: &str, tags: Vec<Tag>, what: &str) -> Result<(), ProviderError> {
        if tags.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .resources(id)
            .set_tags(Some(tags))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| about(sdk_error("ec2:CreateTags", e), what))
    }

    async fn delete_tags(
        &self,
        id: &str,
        keys: &[String],
        what: &str,
    ) -> Result<(), ProviderError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.client
            .delete_tags()
            .resources(id)
            .set_tags(Some(
                keys.iter().map(|k| Tag::builder().key(k).build()).collect(),
            ))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| about(sdk_error("ec2:DeleteTags", e), what))
    }

    async fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        match self
            .client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| sdk_error("ec2:TerminateInstances", e))
        {
            Ok(_) => Ok(()),
            Err(error) if error.kind == ErrorKind::NotFound => Ok(()),
            Err(error) => Err(about(error, id)),
        }
    }

    async fn update_instance(
        &self,
        request: &UpdateRequest,
    ) -> Result<LiveResource, ProviderError> {
        let found = self
            .client
            .describe_instances()
            .instance_ids(&request.id)
            .send()
            .await
            .map_err(|e| about(sdk_error("ec2:DescribeInstances", e), &request.id))?;
        for reservation in found.reservations() {
            self.note_account(reservation.owner_id());
        }
        let instances: Vec<&Instance> = found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .collect();
        let disks = self.root_disks(&instances).await?;
        let mut live = instances
            .first()
            .and_then(|i| convert::instance_resource(i, &disks))
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::NotFound,
                    "ec2:DescribeInstances",
                    "InvalidInstanceID.NotFound",
                    format!("instance {} does not exist", request.id),
                )
            })?;
        let what = format!("{} ({})", live.name, live.id);
        let stale: Vec<String> = live
            .spec
            .labels
            .keys()
            .filter(|key| !request.labels.contains_key(*key))
            .cloned()
            .collect();
        let changed: Vec<Tag> = convert::tags(
            request
                .labels
                .iter()
                .filter(|(key, value)| live.spec.labels.get(*key) != Some(value))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        // The files first: the new `fleet-config` tag says they are there.
        self.write_parameters(&request.id, &request.labels, &request.metadata, &what)
            .await?;
        self.create_tags(&request.id, changed, &what).await?;
        self.delete_tags(&request.id, &stale, &what).await?;
        live.spec.labels = request.labels.clone();
        Ok(live)
    }

    // ---- templates ----

    /// The launch template named `name`, if any: (id, tags).
    async fn template_named(
        &self,
        name: &str,
    ) -> Result<Option<(String, BTreeMap<String, String>)>, ProviderError> {
        Ok(self
            .list_templates(vec![filter("launch-template-name", [name])], &[])
            .await?
            .into_iter()
            .next()
            .map(|(id, _, tags)| (id, tags)))
    }

    async fn create_template(
        &self,
        request: &CreateRequest,
    ) -> Result<LiveResource, ProviderError> {
        let spec = &request.spec;
        let base = convert::template_base_name(&request.name, &spec.labels);
        let stamp = spec
            .labels
            .get(labels::SPEC_HASH)
            .cloned()
            .unwrap_or_default();
        let shared: Vec<(&str, &str)> = spec
            .labels
            .iter()
            .filter(|(key, _)| key.as_str() != labels::SPEC_HASH)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let root = self.root_device(&spec.image).await?;
        let mut ebs = LaunchTemplateEbsBlockDeviceRequest::builder()
            .volume_type(VolumeType::from(spec.disk_type.as_str()))
            .delete_on_termination(true);
        if let Ok(size) = i32::try_from(spec.disk_size_gb) {
            ebs = ebs.volume_size(size);
        }
        let data = RequestLaunchTemplateData::builder()
            .image_id(&spec.image)
            .instance_type(InstanceType::from(spec.machine_type.as_str()))
            .placement(
                LaunchTemplatePlacementRequest::builder()
                    .availability_zone(&spec.zone)
                    .build(),
            )
            .block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name(root)
                    .ebs(ebs.build())
                    .build(),
            )
            .set_user_data(convert::user_data(&spec.metadata));
        // A subnet in a launch template goes in its first network interface, and the groups
        // with it (EC2 refuses top-level groups next to an interface).
        let data = data
            .metadata_options(convert::template_metadata_options())
            .set_iam_instance_profile(convert::template_instance_profile(&spec.identity));
        let data = match &spec.networking.subnet {
            Some(subnet) => data.network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .subnet_id(subnet)
                    .set_groups(convert::groups(&spec.networking))
                    .build(),
            ),
            None => data.set_security_group_ids(convert::groups(&spec.networking)),
        }
        .build();
        let what = format!("launch template {base} version {}", request.name);
        let existing = self
            .template_named(&base)
            .await
            .map_err(|e| about(e, &what))?;
        let (template_id, version) = match existing {
            None => {
                let mut tags = shared.clone();
                let first_stamp = convert::version_stamp(1);
                tags.push((&first_stamp, &stamp));
                let output = self
                    .client
                    .create_launch_template()
                    .launch_template_name(&base)
                    .version_description(&request.name)
                    .client_token(&request.idempotency_token)
                    .launch_template_data(data)
                    .tag_specifications(convert::tag_spec(
                        ResourceType::LaunchTemplate,
                        convert::tags(tags),
                    ))
                    .send()
                    .await
                    .map_err(|e| about(sdk_error("ec2:CreateLaunchTemplate", e), &what))?;
                let id = output
                    .launch_template()
                    .and_then(|t| t.launch_template_id())
                    .unwrap_or_default()
                    .to_string();
                (id, 1)
            }
            Some((id, tags)) => {
                let fleet = spec.labels.get(labels::FLEET);
                if tags.get(labels::FLEET) != fleet {
                    return Err(ProviderError::new(
                        ErrorKind::Fatal,
                        "ec2:CreateLaunchTemplateVersion",
                        "NotManaged",
                        format!(
                            "{what}: launch template {base} ({id}) exists and is not fleet {}'s; \
                             rename the template in the fleet file or delete the launch template",
                            fleet.map_or("", String::as_str)
                        ),
                    ));
                }
                // A version of this name may exist already: made by an apply that died
                // before stamping it, or by a retry of this call.
                let existing = self
                    .describe_versions_raw(&id)
                    .await
                    .map_err(|e| about(e, &what))?
                    .into_iter()
                    .find(|(_, description)| description == &request.name)
                    .map(|(number, _)| number);
                let version = match existing {
                    Some(number) => number,
                    None => self
                        .client
                        .create_launch_template_version()
                        .launch_template_id(&id)
                        .version_description(&request.name)
                        .client_token(&request.idempotency_token)
                        .launch_template_data(data)
                        .send()
                        .await
                        .map_err(|e| about(sdk_error("ec2:CreateLaunchTemplateVersion", e), &what))?
                        .launch_template_version()
                        .and_then(|v| v.version_number())
                        .ok_or_else(|| {
                            ProviderError::new(
                                ErrorKind::Transient,
                                "ec2:CreateLaunchTemplateVersion",
                                "NoVersion",
                                format!("{what}: EC2 returned no version number"),
                            )
                        })?,
                };
                let version_stamp = convert::version_stamp(version);
                let mut tags = shared.clone();
                tags.push((&version_stamp, &stamp));
                self.create_tags(&id, convert::tags(tags), &what).await?;
                // New machines launched from the template's default get the new version.
                self.client
                    .modify_launch_template()
                    .launch_template_id(&id)
                    .default_version(version.to_string())
                    .send()
                    .await
                    .map_err(|e| about(sdk_error("ec2:ModifyLaunchTemplate", e), &what))?;
                (id, version)
            }
        };
        Ok(LiveResource {
            creation_token: None,
            cloud: Cloud::Aws,
            kind: ObjectKind::InstanceTemplate,
            id: convert::version_id(&template_id, version),
            name: request.name.clone(),
            status: InstanceStatus::Available,
            spec: fleet_engine::provider::MachineSpec {
                metadata: BTreeMap::new(),
                ..spec.clone()
            },
        })
    }

    /// (version number, description) of every version of a launch template.
    async fn describe_versions_raw(
        &self,
        template_id: &str,
    ) -> Result<Vec<(i64, String)>, ProviderError> {
        Ok(self
            .versions(template_id)
            .await?
            .iter()
            .filter_map(|v| {
                Some((
                    v.version_number()?,
                    v.version_description().unwrap_or_default().to_string(),
                ))
            })
            .collect())
    }

    /// The default version and tags of one launch template by id; `None` when it is gone.
    async fn template_tags(
        &self,
        template_id: &str,
    ) -> Result<Option<(i64, BTreeMap<String, String>)>, ProviderError> {
        match self.list_templates(Vec::new(), &[template_id]).await {
            Ok(found) => Ok(found
                .into_iter()
                .find(|(id, _, _)| id == template_id)
                .map(|(_, default_version, tags)| (default_version, tags))),
            Err(error) if error.kind == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn delete_template(&self, request: &DeleteRequest) -> Result<(), ProviderError> {
        let what = format!("launch template version {} ({})", request.name, request.id);
        let (template_id, version) = convert::split_version_id(&request.id).ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Fatal,
                "ec2:DeleteLaunchTemplateVersions",
                "InvalidLaunchTemplateId.Malformed",
                format!("{what}: not a launch-template version id (lt-…:N)"),
            )
        })?;
        let Some((default_version, tags)) = self
            .template_tags(template_id)
            .await
            .map_err(|e| about(e, &what))?
        else {
            return Ok(());
        };
        let others: BTreeSet<i64> = tags
            .keys()
            .filter_map(|key| convert::stamp_version(key))
            .filter(|v| *v != version)
            .collect();
        let Some(newest_other) = others.last().copied() else {
            // The last version fleet knows: the launch template goes with it.
            return match self
                .client
                .delete_launch_template()
                .launch_template_id(template_id)
                .send()
                .await
                .map_err(|e| sdk_error("ec2:DeleteLaunchTemplate", e))
            {
                Ok(_) => Ok(()),
                Err(error) if error.kind == ErrorKind::NotFound => Ok(()),
                Err(error) => Err(about(error, &what)),
            };
        };
        // EC2 does not delete a template's default version: point the default elsewhere.
        if default_version == version {
            self.client
                .modify_launch_template()
                .launch_template_id(template_id)
                .default_version(newest_other.to_string())
                .send()
                .await
                .map_err(|e| about(sdk_error("ec2:ModifyLaunchTemplate", e), &what))?;
        }
        let deleted = self
            .client
            .delete_launch_template_versions()
            .launch_template_id(template_id)
            .versions(version.to_string())
            .send()
            .await
            .map_err(|e| sdk_error("ec2:DeleteLaunchTemplateVersions", e));
        match deleted {
            Ok(output) => {
                if let Some(failure) = output
                    .unsuccessfully_deleted_launch_template_versions()
                    .first()
                {
                    let code = failure
                        .response_error()
                        .and_then(|e| e.code())
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_default();
                    let kind = Ec2ErrorCode::parse(&code).kind_or_status(None);
                    // Already gone is what a resumed delete finds.
                    if kind != ErrorKind::NotFound {
                        let message = failure
                            .response_error()
                            .and_then(|e| e.message())
                            .unwrap_or_default();
                        return Err(ProviderError::new(
                            kind,
                            "ec2:DeleteLaunchTemplateVersions",
                            code,
                            format!("{what}: {message}"),
                        ));
                    }
                }
            }
            Err(error) if error.kind == ErrorKind::NotFound => {}
            Err(error) => return Err(about(error, &what)),
        }
        self.delete_tags(template_id, &[convert::version_stamp(version)], &what)
            .await
    }

    async fn update_template(
        &self,
        request: &UpdateRequest,
    ) -> Result<LiveResource, ProviderError> {
        let what = format!("launch template version {}", request.id);
        let (template_id, version) = convert::split_version_id(&request.id).ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Fatal,
                "ec2:CreateTags",
                "InvalidLaunchTemplateId.Malformed",
                format!("{what}: not a launch-template version id (lt-…:N)"),
            )
        })?;
        let (_, tags) = self.template_tags(template_id).await?.ok_or_else(|| {
            ProviderError::new(
                ErrorKind::NotFound,
                "ec2:DescribeLaunchTemplates",
                "InvalidLaunchTemplateId.NotFound",
                format!("{what}: the launch template does not exist"),
            )
        })?;
        let stamp = convert::version_stamp(version);
        let mut wanted: BTreeMap<String, String> = request
            .labels
            .iter()
            .filter(|(key, _)| key.as_str() != labels::SPEC_HASH)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(hash) = request.labels.get(labels::SPEC_HASH) {
            wanted.insert(stamp.clone(), hash.clone());
        }
        let stale: Vec<String> = tags
            .keys()
            .filter(|key| convert::stamp_version(key).is_none() && !wanted.contains_key(*key))
            .cloned()
            .collect();
        let changed = convert::tags(
            wanted
                .iter()
                .filter(|(key, value)| tags.get(*key) != Some(value))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        self.create_tags(template_id, changed, &what).await?;
        self.delete_tags(template_id, &stale, &what).await?;
        let mut merged = tags;
        merged.retain(|key, _| !stale.contains(key));
        merged.extend(wanted);
        let versions = self.list_versions(template_id, &merged).await?;
        versions
            .into_iter()
            .find(|v| v.id == request.id)
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::NotFound,
                    "ec2:DescribeLaunchTemplateVersions",
                    "InvalidLaunchTemplateVersion.NotFound",
                    format!("{what} does not exist"),
                )
            })
    }
}

/// One EC2 filter.
fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}

#[async_trait::async_trait]
impl Provider for AwsEc2 {
    fn cloud(&self) -> Cloud {
        Cloud::Aws
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("AWS EC2 {} (endpoint {endpoint})", self.options.region),
            None => format!("AWS EC2 {}", self.options.region),
        }
    }

    fn limits(&self) -> ProviderLimits {
        ProviderLimits {
            max_concurrent_mutations: self.options.max_concurrent_mutations.max(1),
            calls_per_second: self.options.calls_per_second,
        }
    }

    fn call_counts(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }

    /// # Guarantees
    /// `DescribeInstances` by `tag:fleet` and the `fleet-kind` tag key, in every state (1000 a
    /// page), `DescribeVolumes` per 200 instances, `DescribeLaunchTemplates` by the same tags
    /// (200 a page) and one `DescribeLaunchTemplateVersions` per launch template; each page
    /// retried on its own under the retry policy. Shutting-down and terminated instances are
    /// reported as [`InstanceStatus::Deleting`]. While an instance launched by this process is
    /// not listed yet, the instance listing is repeated under the retry policy.
    async fn discover(&self, fleet: &str) -> Result<Vec<LiveResource>, ProviderError> {
        let tag = format!("tag:{}", labels::FLEET);
        let mut found = self.list_fleet_instances(fleet).await?;
        self.read_parameters(fleet, &mut found).await?;
        for (template_id, _, tags) in self
            .list_templates(
                vec![filter(&tag, [fleet]), filter("tag-key", [labels::KIND])],
                &[],
            )
            .await?
        {
            found.extend(self.list_versions(&template_id, &tags).await?);
        }
        Ok(found)
    }

    /// # Guarantees
    /// Instances: `DescribeInstances` by `tag:Name`, 200 names a call; instances going away
    /// are left out. Template versions:
    /// `DescribeLaunchTemplates` by the unversioned names, then one
    /// `DescribeLaunchTemplateVersions` per launch template found.
    async fn find_by_names(&self, names: &[String]) -> Result<Vec<LiveResource>, ProviderError> {
        let mut found = Vec::new();
        let tag = format!("tag:{NAME_TAG}");
        for chunk in names.chunks(FILTER_VALUES) {
            // An instance going away holds no name: EC2 names are tags, not unique keys.
            found.extend(
                self.list_instances(vec![filter(&tag, chunk.iter().map(String::as_str))])
                    .await?
                    .into_iter()
                    .filter(|instance| instance.status != InstanceStatus::Deleting),
            );
        }
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let bases: BTreeSet<&str> = names
            .iter()
            .filter_map(|n| convert::unversioned(n))
            .collect();
        let bases: Vec<&str> = bases.into_iter().collect();
        for chunk in bases.chunks(FILTER_VALUES) {
            let templates = self
                .list_templates(
                    vec![filter("launch-template-name", chunk.iter().copied())],
                    &[],
                )
                .await?;
            for (template_id, _, tags) in templates {
                // Versions fleet did not stamp still hold their name: report them, labelled
                // with the launch template's own tags.
                for (number, description) in self.describe_versions_raw(&template_id).await? {
                    if !wanted.contains(description.as_str()) {
                        continue;
                    }
                    let labels = convert::version_labels(&tags, number).unwrap_or_else(|| {
                        tags.iter()
                            .filter(|(k, _)| convert::stamp_version(k).is_none())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    });
                    found.push(LiveResource {
                        creation_token: None,
                        cloud: Cloud::Aws,
                        kind: ObjectKind::InstanceTemplate,
                        id: convert::version_id(&template_id, number),
                        name: description,
                        status: InstanceStatus::Available,
                        spec: fleet_engine::provider::MachineSpec {
                            machine_type: String::new(),
                            zone: String::new(),
                            image: String::new(),
                            disk_type: String::new(),
                            disk_size_gb: 0,
                            labels,
                            metadata: BTreeMap::new(),
                            networking: Networking::default(),
                            identity: Default::default(),
                        },
                    });
                }
            }
        }
        Ok(found)
    }

    /// # Guarantees
    /// Instances: one `RunInstances` with `ClientToken` = the request's token. Templates:
    /// `CreateLaunchTemplate` for the first version; later ones `CreateLaunchTemplateVersion`
    /// (reusing a version of the same name if one exists), a stamp tag and
    /// `ModifyLaunchTemplate` to make it the default.
    async fn create(&self, request: &CreateRequest) -> Result<LiveResource, ProviderError> {
        match request.kind {
            ObjectKind::Instance => self.create_instance(request).await,
            ObjectKind::InstanceTemplate => self.create_template(request).await,
        }
    }

    /// # Guarantees
    /// Instances of the same type, zone, image, disk and user data go into one `RunInstances`
    /// with `MinCount` = `MaxCount` = their number and a `ClientToken` hashed from their
    /// tokens; each is then tagged with its own name and labels (`CreateTags`, one call per
    /// instance, retried on throttling). Singletons and templates use [`Provider::create`].
    async fn create_batch(
        &self,
        requests: &[CreateRequest],
    ) -> Vec<Result<LiveResource, ProviderError>> {
        let calls = batch_calls(requests, usize::MAX, |request| {
            let spec = &request.spec;
            Some((
                spec.machine_type.as_str(),
                spec.zone.as_str(),
                spec.image.as_str(),
                spec.disk_type.as_str(),
                spec.disk_size_gb,
                convert::instance_user_data(
                    &spec.metadata,
                    spec.labels.get(labels::FLEET).map_or("", String::as_str),
                ),
                &spec.networking,
            ))
        });
        let mut results: Vec<Option<Result<LiveResource, ProviderError>>> =
            (0..requests.len()).map(|_| None).collect();
        for members in calls {
            if let [index] = members[..] {
                results[index] = Some(self.create(&requests[index]).await);
                continue;
            }
            let group: Vec<&CreateRequest> = members.iter().map(|&i| &requests[i]).collect();
            for (index, result) in members.iter().zip(self.create_group(&group).await) {
                results[*index] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ProviderError::new(
                        ErrorKind::Fatal,
                        "ec2:RunInstances",
                        "Internal",
                        "no result for a batch member",
                    ))
                })
            })
            .collect()
    }

    /// # Guarantees
    /// Tags only: `CreateTags` for changed labels and `DeleteTags` for labels no longer
    /// wanted (`Name` is kept). EC2 cannot change user data in place; the engine replaces
    /// the instance instead.
    async fn update(&self, request: &UpdateRequest) -> Result<LiveResource, ProviderError> {
        if convert::split_version_id(&request.id).is_some() && request.id.starts_with("lt-") {
            self.update_template(request).await
        } else {
            self.update_instance(request).await
        }
    }

    /// # Guarantees
    /// `TerminateInstances`, or `DeleteLaunchTemplateVersions` (and `DeleteLaunchTemplate`
    /// with the last version). What is already gone counts as deleted.
    async fn delete(&self, request: &DeleteRequest) -> Result<(), ProviderError> {
        match request.kind {
            ObjectKind::Instance => {
                {
                    let mut claims = self.claims.lock().await;
                    // Planned as an orphan (an earlier launch's unnamed member), but a launch
                    // of this apply has since got it back under its token and named it a
                    // member: it is wanted now.
                    if self
                        .launched_as(&request.id)
                        .is_some_and(|name| name != request.name)
                    {
                        return Ok(());
                    }
                    if convert::is_placeholder(&request.name) {
                        claims
                            .entry(request.name.clone())
                            .or_default()
                            .push(request.id.clone());
                    }
                }
                self.terminate(&request.id)
                    .await
                    .map_err(|e| about(e, &request.name))?;
                // Its parameters go with it; they were found by the discovery this plan
                // was made against.
                let names = self
                    .parameter_names
                    .lock()
                    .map(|known| known.get(&request.id).cloned().unwrap_or_default())
                    .unwrap_or_default();
                if !names.is_empty() {
                    self.parameters.delete(&names, &request.name).await?;
                    if let Ok(mut known) = self.parameter_names.lock() {
                        known.remove(&request.id);
                    }
                }
                Ok(())
            }
            ObjectKind::InstanceTemplate => self.delete_template(request).await,
        }
    }
}
