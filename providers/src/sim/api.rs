//! The simulated clouds' APIs: `engine::provider::Provider` for GCP and for AWS over one
//! sim dir.
//!
//! In: the engine's create, update, delete and list requests. Out: `LiveResource`s, or the
//! `ProviderError`s the real APIs return, with the real operation names and error codes.
//! Each API call passes the [`Gate`](super::calls::Gate) (count, rate limit, latency,
//! faults) and then changes the state in one store transaction.

use std::collections::BTreeSet;
use std::sync::Arc;

use fleet_engine::provider::{
    batch_calls, Cloud, CreateRequest, DeleteRequest, ErrorKind, InstanceStatus, LiveResource,
    ObjectKind, Provider, ProviderError, ProviderLimits, UpdateRequest,
};

use super::calls::{transient, Outcome};
use super::error::SimError;
use super::store::{kind_of_id, sha256_hex, StoredObject, TokenRecord, Txn};
use super::validate::{check_name, check_placement};
use super::Inner;

/// Instances per list page on GCE (`maxResults` 500).
pub(crate) const GCP_PAGE: usize = 500;
/// Instances per list page on EC2 (`MaxResults` 1000).
pub(crate) const AWS_PAGE: usize = 1000;

/// Mutating calls the executor may have in flight against the simulator.
const MAX_CONCURRENT_MUTATIONS: usize = 16;

/// The real API operation names of one cloud.
pub(crate) struct Operations {
    pub(crate) insert_instance: &'static str,
    pub(crate) bulk_insert_instances: &'static str,
    pub(crate) list_instances: &'static str,
    pub(crate) set_labels: &'static str,
    pub(crate) set_metadata: &'static str,
    pub(crate) delete_instance: &'static str,
    pub(crate) insert_template: &'static str,
    pub(crate) list_templates: &'static str,
    pub(crate) delete_template: &'static str,
}

const GCP_OPERATIONS: Operations = Operations {
    insert_instance: "compute.instances.insert",
    bulk_insert_instances: "compute.instances.bulkInsert",
    list_instances: "compute.instances.aggregatedList",
    set_labels: "compute.instances.setLabels",
    set_metadata: "compute.instances.setMetadata",
    delete_instance: "compute.instances.delete",
    insert_template: "compute.instanceTemplates.insert",
    list_templates: "compute.instanceTemplates.list",
    delete_template: "compute.instanceTemplates.delete",
};

const AWS_OPERATIONS: Operations = Operations {
    insert_instance: "ec2:RunInstances",
    bulk_insert_instances: "ec2:RunInstances",
    list_instances: "ec2:DescribeInstances",
    set_labels: "ec2:CreateTags",
    set_metadata: "ec2:ModifyInstanceAttribute",
    delete_instance: "ec2:TerminateInstances",
    insert_template: "ec2:CreateLaunchTemplate",
    list_templates: "ec2:DescribeLaunchTemplates",
    delete_template: "ec2:DeleteLaunchTemplate",
};

/// The operation names of `cloud`.
pub(crate) fn operations(cloud: Cloud) -> &'static Operations {
    match cloud {
        Cloud::Gcp => &GCP_OPERATIONS,
        Cloud::Aws => &AWS_OPERATIONS,
    }
}

/// A failure inside a transaction: the store's own, or the API's answer.
enum CallError {
    Store(SimError),
    Api(ProviderError),
}

impl From<SimError> for CallError {
    fn from(error: SimError) -> CallError {
        CallError::Store(error)
    }
}

impl From<ProviderError> for CallError {
    fn from(error: ProviderError) -> CallError {
        CallError::Api(error)
    }
}

impl CallError {
    fn into_provider_error(self, operation: &str) -> ProviderError {
        match self {
            CallError::Api(error) => error,
            CallError::Store(error) => store_failure(operation, &error),
        }
    }
}

/// A failure of the simulator's own files, reported through the API: not retried, and
/// saying which file.
fn store_failure(operation: &str, error: &SimError) -> ProviderError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ProviderError::new(ErrorKind::Fatal, operation, "simulatorStateError", message)
}

/// The resource path GCE uses in messages.
fn gcp_resource_path(id: &str) -> String {
    format!("projects/simulated/{id}")
}

fn not_found(cloud: Cloud, operation: &str, id: &str) -> ProviderError {
    match cloud {
        Cloud::Gcp => ProviderError::new(
            ErrorKind::NotFound,
            operation,
            "notFound",
            format!("The resource '{}' was not found", gcp_resource_path(id)),
        ),
        Cloud::Aws if id.starts_with("lt-") => ProviderError::new(
            ErrorKind::NotFound,
            operation,
            "InvalidLaunchTemplateId.NotFound",
            format!("The specified launch template, with template ID {id}, does not exist."),
        ),
        Cloud::Aws => ProviderError::new(
            ErrorKind::NotFound,
            operation,
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        ),
    }
}

fn invalid(cloud: Cloud, operation: &str, message: String) -> ProviderError {
    let code = match cloud {
        Cloud::Gcp => "invalid",
        Cloud::Aws => "InvalidParameterValue",
    };
    ProviderError::new(ErrorKind::Fatal, operation, code, message)
}

/// The id of a new object. GCE ids are its path, so a name clash is an id clash; EC2 ids
/// are drawn from a hash of the token, so the same inputs give the same ids.
pub(crate) fn new_id(
    txn: &Txn<'_>,
    cloud: Cloud,
    kind: ObjectKind,
    name: &str,
    zone: &str,
    seed: &str,
) -> Result<String, SimError> {
    match (cloud, kind) {
        (Cloud::Gcp, ObjectKind::Instance) => Ok(format!("zones/{zone}/instances/{name}")),
        (Cloud::Gcp, ObjectKind::InstanceTemplate) => {
            Ok(format!("global/instanceTemplates/{name}"))
        }
        (Cloud::Aws, kind) => {
            let prefix = match kind {
                ObjectKind::Instance => "i-",
                ObjectKind::InstanceTemplate => "lt-",
            };
            for counter in 0u64.. {
                let hash = sha256_hex(&[prefix, seed, &counter.to_string()]);
                let id = format!("{prefix}{}", &hash[..17]);
                if txn.get(cloud, &id)?.is_none() {
                    return Ok(id);
                }
            }
            unreachable!("a free id is found long before the counter wraps")
        }
    }
}

/// Checks that the name is free where the cloud wants names unique: GCE instances per zone,
/// GCE templates globally, EC2 launch templates per region. EC2 `Name` tags may repeat.
pub(crate) fn name_clash(
    txn: &mut Txn<'_>,
    cloud: Cloud,
    kind: ObjectKind,
    id: &str,
    name: &str,
    region: &str,
) -> Result<Option<LiveResource>, SimError> {
    match (cloud, kind) {
        (Cloud::Gcp, _) => Ok(txn.get(cloud, id)?.map(|object| object.resource)),
        (Cloud::Aws, ObjectKind::InstanceTemplate) => {
            let snapshot = txn.snapshot()?;
            Ok(snapshot
                .objects()
                .find(|object| {
                    let resource = &object.resource;
                    resource.cloud == Cloud::Aws
                        && resource.kind == ObjectKind::InstanceTemplate
                        && resource.name == name
                        && fleet_engine::catalog::zone(&resource.spec.zone)
                            .is_some_and(|(_, other)| other == region)
                })
                .map(|object| object.resource.clone()))
        }
        (Cloud::Aws, ObjectKind::Instance) => Ok(None),
    }
}

fn already_exists(cloud: Cloud, operation: &str, existing: &LiveResource) -> ProviderError {
    match cloud {
        Cloud::Gcp => ProviderError::new(
            ErrorKind::Fatal,
            operation,
            "alreadyExists",
            format!(
                "The resource '{}' already exists",
                gcp_resource_path(&existing.id)
            ),
        ),
        Cloud::Aws => ProviderError::new(
            ErrorKind::Fatal,
            operation,
            "InvalidLaunchTemplateName.AlreadyExistsException",
            format!(
                "Launch template name already in use: {} is {} in {}.",
                existing.name, existing.id, existing.spec.zone
            ),
        ),
    }
}

/// Creates one object inside a transaction, honouring its idempotency token.
fn commit_create(
    txn: &mut Txn<'_>,
    inner: &Inner,
    cloud: Cloud,
    operation: &str,
    request: &CreateRequest,
) -> Result<LiveResource, CallError> {
    let mut replay_id = None;
    if let Some(record) = txn.token(cloud, &request.idempotency_token)? {
        if let Some(object) = txn.get(cloud, &record.id)? {
            return Ok(object.resource);
        }
        if record.deleted {
            return Ok(record.record);
        }
        // The token was written and the object was not: a crash in between. The create
        // never finished, so finish it now under the same id.
        replay_id = Some(record.id);
    }
    if let Some(pattern) = inner.failing_create_pattern(&request.name) {
        return Err(ProviderError::new(
            ErrorKind::Fatal,
            operation,
            "simulatedFailure",
            format!(
                "creating '{}' fails on purpose: the name matches the simulator's failing-create pattern '{pattern}'",
                request.name
            ),
        )
        .into());
    }
    let spec = &request.spec;
    let region = check_placement(cloud, &spec.zone, &spec.machine_type)
        .map_err(|problem| problem.to_provider_error(cloud, operation))?;
    check_name(cloud, &request.name)
        .map_err(|problem| problem.to_provider_error(cloud, operation))?;
    let id = match replay_id {
        Some(id) => id,
        None => new_id(
            txn,
            cloud,
            request.kind,
            &request.name,
            &spec.zone,
            &request.idempotency_token,
        )?,
    };
    if let Some(existing) = name_clash(txn, cloud, request.kind, &id, &request.name, region)? {
        return Err(already_exists(cloud, operation, &existing).into());
    }
    let resource = LiveResource {
        creation_token: None,
        cloud,
        kind: request.kind,
        id: id.clone(),
        name: request.name.clone(),
        status: match request.kind {
            ObjectKind::Instance => InstanceStatus::Running,
            ObjectKind::InstanceTemplate => InstanceStatus::Available,
        },
        spec: spec.clone(),
    };
    // The token first: a crash after it and before the object is repaired above.
    txn.put_token(
        cloud,
        &TokenRecord {
            token: request.idempotency_token.clone(),
            id,
            record: resource.clone(),
            deleted: false,
        },
    )?;
    txn.put(&StoredObject {
        resource: resource.clone(),
        token: Some(request.idempotency_token.clone()),
    })?;
    Ok(resource)
}

/// Which half of an in-place update one API call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdatePart {
    Labels,
    Metadata,
}

/// One simulated cloud's API.
pub(crate) struct SimProvider {
    cloud: Cloud,
    inner: Arc<Inner>,
}

impl SimProvider {
    pub(crate) fn new(cloud: Cloud, inner: Arc<Inner>) -> SimProvider {
        SimProvider { cloud, inner }
    }

    /// Runs store work off the async runtime: the file lock may wait for another process.
    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Inner) -> Result<T, CallError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || work(&inner)).await {
            Ok(result) => result.map_err(|error| error.into_provider_error(operation)),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(ProviderError::new(
                ErrorKind::Transient,
                operation,
                "simulatorCancelled",
                format!("the simulated call was cancelled: {error}"),
            )),
        }
    }

    /// Lists the objects that `keep` selects, one counted call per page: instances, then
    /// templates. All pages are served from one snapshot taken at the first page, like a
    /// page token pinned to a consistent listing.
    async fn list_paged(
        &self,
        fault_key: &str,
        keep: impl Fn(&LiveResource) -> bool + Send + 'static,
    ) -> Result<Vec<LiveResource>, ProviderError> {
        let cloud = self.cloud;
        let operations = operations(cloud);
        let page_size = match cloud {
            Cloud::Gcp => GCP_PAGE,
            Cloud::Aws => AWS_PAGE,
        };
        let pages = |count: usize| count.div_ceil(page_size).max(1);
        let gate = &self.inner.gate;
        gate.call(
            cloud,
            operations.list_instances,
            &format!("{fault_key}#0"),
            false,
        )
        .await?;
        let (mut instances, mut templates) = self
            .blocking(operations.list_instances, move |inner| {
                let listing = inner.store.read(|snapshot| {
                    let mut instances = Vec::new();
                    let mut templates = Vec::new();
                    for object in snapshot.objects() {
                        let resource = &object.resource;
                        if resource.cloud != cloud || !keep(resource) {
                            continue;
                        }
                        match resource.kind {
                            // EC2 keeps terminated instances listed for a while; they are
                            // gone for every purpose of fleet.
                            ObjectKind::Instance
                                if cloud == Cloud::Aws
                                    && resource.status == InstanceStatus::Terminated => {}
                            ObjectKind::Instance => instances.push(resource.clone()),
                            ObjectKind::InstanceTemplate => templates.push(resource.clone()),
                        }
                    }
                    (instances, templates)
                })?;
                Ok(listing)
            })
            .await?;
        for page in 1..pages(instances.len()) {
            gate.call(
                cloud,
                operations.list_instances,
                &format!("{fault_key}#{page}"),
                false,
            )
            .await?;
        }
        for page in 0..pages(templates.len()) {
            gate.call(
                cloud,
                operations.list_templates,
                &format!("{fault_key}#{page}"),
                false,
            )
            .await?;
        }
        let order = |a: &LiveResource, b: &LiveResource| (&a.name, &a.id).cmp(&(&b.name, &b.id));
        instances.sort_by(order);
        templates.sort_by(order);
        instances.append(&mut templates);
        Ok(instances)
    }

    /// One bulk call creating every request in `group` (same shape, at least two).
    async fn create_bulk(
        &self,
        group: Vec<CreateRequest>,
    ) -> Vec<Result<LiveResource, ProviderError>> {
        let cloud = self.cloud;
        let operation = operations(cloud).bulk_insert_instances;
        let tokens: Vec<&str> = group
            .iter()
            .map(|request| request.idempotency_token.as_str())
            .collect();
        let fault_key = sha256_hex(&tokens);
        let count = group.len();
        let outcome = match self
            .inner
            .gate
            .call(cloud, operation, &fault_key, true)
            .await
        {
            Ok(outcome) => outcome,
            Err(error) => return vec![Err(error); count],
        };
        let committed = self
            .blocking(operation, move |inner| {
                Ok(inner.store.write(|txn| {
                    Ok::<_, SimError>(
                        group
                            .iter()
                            .map(|request| {
                                commit_create(txn, inner, cloud, operation, request)
                                    .map_err(|error| error.into_provider_error(operation))
                            })
                            .collect::<Vec<_>>(),
                    )
                })?)
            })
            .await;
        match (committed, outcome) {
            (Err(error), _) => vec![Err(error); count],
            (Ok(_), Outcome::LoseResponse) => {
                vec![Err(transient(cloud, operation, false, true)); count]
            }
            (Ok(results), Outcome::Answer) => results,
        }
    }

    /// One `setLabels`/`setMetadata` (`CreateTags`/`ModifyInstanceAttribute`) call.
    async fn update_part(
        &self,
        part: UpdatePart,
        request: &UpdateRequest,
    ) -> Result<LiveResource, ProviderError> {
        let cloud = self.cloud;
        let operations = operations(cloud);
        let operation = match part {
            UpdatePart::Labels => operations.set_labels,
            UpdatePart::Metadata => operations.set_metadata,
        };
        let outcome = self
            .inner
            .gate
            .call(cloud, operation, &request.id, true)
            .await?;
        let id = request.id.clone();
        let values = match part {
            UpdatePart::Labels => request.labels.clone(),
            UpdatePart::Metadata => request.metadata.clone(),
        };
        let updated = self
            .blocking(operation, move |inner| {
                inner.store.write(|txn| {
                    let Some(mut object) = txn.get(cloud, &id)? else {
                        return Err(not_found(cloud, operation, &id).into());
                    };
                    match part {
                        UpdatePart::Labels => object.resource.spec.labels = values,
                        UpdatePart::Metadata => object.resource.spec.metadata = values,
                    }
                    txn.put(&object)?;
                    Ok(object.resource)
                })
            })
            .await?;
        match outcome {
            Outcome::Answer => Ok(updated),
            Outcome::LoseResponse => Err(transient(cloud, operation, false, true)),
        }
    }
}

#[async_trait::async_trait]
impl Provider for SimProvider {
    fn cloud(&self) -> Cloud {
        self.cloud
    }

    fn describe(&self) -> String {
        let cloud = match self.cloud {
            Cloud::Gcp => "GCP",
            Cloud::Aws => "AWS",
        };
        format!(
            "simulated {cloud} (sim dir: {})",
            self.inner.store.dir_display()
        )
    }

    fn call_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let prefix = match self.cloud {
            Cloud::Gcp => "compute.",
            Cloud::Aws => "ec2:",
        };
        self.inner
            .gate
            .session()
            .into_iter()
            .filter(|(operation, _)| operation.starts_with(prefix))
            .collect()
    }

    fn limits(&self) -> ProviderLimits {
        ProviderLimits {
            max_concurrent_mutations: MAX_CONCURRENT_MUTATIONS,
            calls_per_second: self.inner.gate.rate_limit(),
        }
    }

    async fn discover(&self, fleet: &str) -> Result<Vec<LiveResource>, ProviderError> {
        let wanted = fleet.to_owned();
        self.list_paged(&format!("discover:{fleet}"), move |resource| {
            resource.label(fleet_engine::provider::labels::FLEET) == Some(wanted.as_str())
        })
        .await
    }

    async fn find_by_names(&self, names: &[String]) -> Result<Vec<LiveResource>, ProviderError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: BTreeSet<String> = names.iter().cloned().collect();
        let key_parts: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let fault_key = format!("names:{}", &sha256_hex(&key_parts)[..16]);
        self.list_paged(&fault_key, move |resource| wanted.contains(&resource.name))
            .await
    }

    async fn create(&self, request: &CreateRequest) -> Result<LiveResource, ProviderError> {
        let cloud = self.cloud;
        let operations = operations(cloud);
        let operation = match request.kind {
            ObjectKind::Instance => operations.insert_instance,
            ObjectKind::InstanceTemplate => operations.insert_template,
        };
        let outcome = self
            .inner
            .gate
            .call(cloud, operation, &request.idempotency_token, true)
            .await?;
        let request = request.clone();
        let created = self
            .blocking(operation, move |inner| {
                inner
                    .store
                    .write(|txn| commit_create(txn, inner, cloud, operation, &request))
            })
            .await?;
        match outcome {
            Outcome::Answer => Ok(created),
            Outcome::LoseResponse => Err(transient(cloud, operation, false, true)),
        }
    }

    /// Groups instance requests of the same machine type, zone, image and disk into one
    /// bulk call each (GCE `bulkInsert`, EC2 `RunInstances` with a count); templates and
    /// requests of a shape of their own go one `create` each. Results keep request order.
    async fn create_batch(
        &self,
        requests: &[CreateRequest],
    ) -> Vec<Result<LiveResource, ProviderError>> {
        let calls = batch_calls(requests, usize::MAX, |request| {
            let spec = &request.spec;
            Some((
                &spec.machine_type,
                &spec.zone,
                &spec.image,
                &spec.disk_type,
                spec.disk_size_gb,
            ))
        });
        let mut results: Vec<Option<Result<LiveResource, ProviderError>>> =
            (0..requests.len()).map(|_| None).collect();
        for members in calls {
            if let [index] = members[..] {
                results[index] = Some(self.create(&requests[index]).await);
                continue;
            }
            let group = members
                .iter()
                .map(|index| requests[*index].clone())
                .collect();
            for (index, result) in members.iter().zip(self.create_bulk(group).await) {
                results[*index] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every request belongs to exactly one call"))
            .collect()
    }

    async fn update(&self, request: &UpdateRequest) -> Result<LiveResource, ProviderError> {
        let cloud = self.cloud;
        let operations = operations(cloud);
        let id = request.id.clone();
        let current = self
            .blocking(operations.set_labels, move |inner| {
                Ok(inner.store.get(cloud, &id)?)
            })
            .await?;
        let Some(current) = current else {
            // The client sends the call and the cloud answers 404.
            self.inner
                .gate
                .call(cloud, operations.set_labels, &request.id, true)
                .await?;
            return Err(not_found(cloud, operations.set_labels, &request.id));
        };
        if current.resource.kind != ObjectKind::Instance {
            self.inner
                .gate
                .call(cloud, operations.set_labels, &request.id, true)
                .await?;
            return Err(invalid(
                cloud,
                operations.set_labels,
                format!(
                    "'{}' is an instance template; templates cannot be changed in place, create a new one",
                    request.id
                ),
            ));
        }
        let mut resource = current.resource;
        // Only what changed is sent, one call per half, as a real client does.
        if resource.spec.labels != request.labels {
            resource = self.update_part(UpdatePart::Labels, request).await?;
        }
        if resource.spec.metadata != request.metadata {
            resource = self.update_part(UpdatePart::Metadata, request).await?;
        }
        Ok(resource)
    }

    async fn delete(&self, request: &DeleteRequest) -> Result<(), ProviderError> {
        let cloud = self.cloud;
        let operations = operations(cloud);
        let operation = match request.kind {
            ObjectKind::Instance => operations.delete_instance,
            ObjectKind::InstanceTemplate => operations.delete_template,
        };
        if kind_of_id(cloud, &request.id) != Some(request.kind) {
            self.inner
                .gate
                .call(cloud, operation, &request.id, true)
                .await?;
            let what = match request.kind {
                ObjectKind::Instance => "an instance",
                ObjectKind::InstanceTemplate => "an instance template",
            };
            return Err(invalid(
                cloud,
                operation,
                format!(
                    "'{}' (for '{}') is not the id of {what} on simulated {cloud}",
                    request.id, request.name
                ),
            ));
        }
        let outcome = self
            .inner
            .gate
            .call(cloud, operation, &request.id, true)
            .await?;
        let id = request.id.clone();
        self.blocking(operation, move |inner| {
            Ok(inner.store.write(|txn| {
                // Deleting what is gone succeeds: a resumed apply repeats deletes.
                if let Some(object) = txn.get(cloud, &id)? {
                    txn.remove(&object)?;
                }
                Ok::<_, SimError>(())
            })?)
        })
        .await?;
        match outcome {
            Outcome::Answer => Ok(()),
            Outcome::LoseResponse => Err(transient(cloud, operation, false, true)),
        }
    }
}
