//! The simulated clouds' APIs: `engine::provider::Provider` for GCP and for AWS over one
//! sim dir.
//!
//! In: the engine's create, update, delete and list requests. Out: `LiveResource`s, or the
//! `ProviderError`s the real APIs return, with the real operation names and error codes.
//! Each API call passes the [`Gate`](super::calls::Gate) (count, rate limit, latency,
//! faults) and then changes the state in one store transaction.
//!
//! States take time, counted in instance list calls (the store's clock): an EC2 instance is
//! `pending` for [`EC2_PENDING_LISTS`] list calls after its launch, then running; a
//! terminated one is `shutting-down` for [`EC2_SHUTTING_DOWN_LISTS`] and `terminated` for
//! [`EC2_TERMINATED_LISTS`] more (both [`InstanceStatus::Deleting`]), then gone, and its
//! token with it. A GCE mutation answers with an operation that is done after
//! [`GCE_OPERATION_POLLS`] `wait` calls. With a list lag K (`SimConfig::list_lag`) a new
//! instance is missing from list calls for its first K.
//!
//! List calls follow their pages with `retry::follow_pages`: a fault on a page costs one more
//! call for that page. A provider remembers the instances it made in this process until a
//! list call shows them; a discovery that misses one lists again, under the retry policy, so
//! the verification after an apply does not mistake a lagging list for a missing machine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use fleet_engine::provider::{
    batch_calls, labels, Cloud, CreateRequest, DeleteRequest, ErrorKind, InstanceStatus,
    LiveResource, ObjectKind, Provider, ProviderError, ProviderLimits, UpdateRequest,
};
use fleet_engine::retry::{follow_pages, with_retry, RetryPolicy};

use super::calls::{transient, Outcome};
use super::error::SimError;
use super::store::{kind_of_id, sha256_hex, SimSecret, StoredObject, TokenRecord, Txn};
use super::validate::{check_name, check_placement};
use super::Inner;

/// Instances per list page on GCE (`maxResults` 500).
pub(crate) const GCP_PAGE: usize = 500;
/// Instances per list page on EC2 (`MaxResults` 1000).
pub(crate) const AWS_PAGE: usize = 1000;

/// Mutating calls the executor may have in flight against the simulator.
const MAX_CONCURRENT_MUTATIONS: usize = 16;

/// Instance list calls that show a new EC2 instance as `pending` (fleet's
/// [`InstanceStatus::Provisioning`]). One: the list call right after an apply (its
/// verification) sees it pending, the next one running, so a plan saved after an apply does
/// not go stale only because its machines finished booting.
pub(crate) const EC2_PENDING_LISTS: u64 = 1;
/// Instance list calls that show a terminated EC2 instance as `shutting-down`.
pub(crate) const EC2_SHUTTING_DOWN_LISTS: u64 = 2;
/// Instance list calls that show it `terminated` after that; then it is gone.
pub(crate) const EC2_TERMINATED_LISTS: u64 = 2;
/// `wait` calls a GCE operation takes before it is DONE: it answers PENDING, is RUNNING,
/// and is DONE at its first wait.
pub(crate) const GCE_OPERATION_POLLS: u32 = 1;

/// What one list call shows of a stored object.
#[derive(Debug)]
pub(crate) enum View {
    /// Listed, as it looks now (boxed: a resource is large, the other answers are not).
    Listed(Box<LiveResource>),
    /// Made so recently that list calls do not show it yet (the list lag).
    Hidden,
    /// Gone for good: its deletion finished.
    Vanished,
}

/// What an instance list call answered when the clock showed `now` shows of `object`, with
/// a list lag of `lag` calls. Templates are always as stored.
pub(crate) fn view(object: &StoredObject, now: u64, lag: u64) -> View {
    let resource = &object.resource;
    if resource.kind != ObjectKind::Instance {
        return View::Listed(Box::new(resource.clone()));
    }
    let mut listed = Box::new(resource.clone());
    if resource.cloud == Cloud::Aws {
        // EC2 reports the ClientToken an instance was launched with, "" when none.
        listed.creation_token = Some(object.token.clone().unwrap_or_default());
    }
    if let Some(deleted_at) = object.deleted_at {
        if now.saturating_sub(deleted_at) >= EC2_SHUTTING_DOWN_LISTS + EC2_TERMINATED_LISTS {
            return View::Vanished;
        }
        listed.status = InstanceStatus::Deleting;
        return View::Listed(listed);
    }
    let age = now.saturating_sub(object.born);
    if age < lag {
        return View::Hidden;
    }
    if resource.cloud == Cloud::Aws {
        match resource.status {
            // Set by hand (`sim set … status terminated`): listed, going away.
            InstanceStatus::Terminated => listed.status = InstanceStatus::Deleting,
            InstanceStatus::Running if age < EC2_PENDING_LISTS => {
                listed.status = InstanceStatus::Provisioning;
            }
            _ => {}
        }
    }
    View::Listed(listed)
}

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

/// The project simulated GCE machines' secrets are named under.
pub(crate) const SIM_PROJECT: &str = "simulated";

/// What a simulated GCE machine `id` keeps in its metadata: references only. The values of
/// its delivery go to the simulated Secret Manager in the same transaction, a new version
/// only where the digest changed, as the live provider does; secrets `before` named and the
/// new metadata does not are deleted. On EC2 the metadata is kept as it is.
fn keep_secrets(
    txn: &mut Txn<'_>,
    cloud: Cloud,
    id: &str,
    labels: &BTreeMap<String, String>,
    before: Option<&BTreeMap<String, String>>,
    metadata: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SimError> {
    use fleet_engine::render::delivery;
    if cloud != Cloud::Gcp {
        return Ok(metadata.clone());
    }
    let fleet = labels.get(labels::FLEET).map_or("", String::as_str);
    let (sent, secrets) = delivery::gce_secrets(fleet, id, SIM_PROJECT, metadata);
    for secret in secrets {
        let existing = txn.secret(cloud, &secret.resource)?;
        let same = existing.as_ref().is_some_and(|kept| {
            kept.labels.get(delivery::SECRET_DIGEST_LABEL) == Some(&secret.digest)
        });
        if !same {
            txn.put_secret(
                cloud,
                &SimSecret {
                    resource: secret.resource.clone(),
                    labels: secret.labels.clone(),
                    versions: existing.map_or(0, |kept| kept.versions) + 1,
                    value: secret.value.clone(),
                },
            )?;
        }
    }
    if let Some(before) = before {
        let kept = delivery::gce_secret_names(&sent);
        for resource in delivery::gce_fleet_secret_names(fleet, SIM_PROJECT, before).into_values() {
            if !kept.values().any(|name| *name == resource) {
                txn.remove_secret(cloud, &resource)?;
            }
        }
    }
    Ok(sent)
}

/// Creates one object inside a transaction, honouring its idempotency token. Answers the
/// object and whether this call made it (`false`: a replayed token).
fn commit_create(
    txn: &mut Txn<'_>,
    inner: &Inner,
    cloud: Cloud,
    operation: &str,
    request: &CreateRequest,
) -> Result<(LiveResource, bool), CallError> {
    let mut replay_id = None;
    if let Some(record) = txn.token(cloud, &request.idempotency_token)? {
        if let Some(object) = txn.get(cloud, &record.id)? {
            return Ok((object.resource, false));
        }
        // The token was written and the object was not: a crash in between. The create
        // never finished, so finish it now under the same id. (A record marked deleted is
        // from an older sim dir and has expired: the create is new.)
        if !record.deleted {
            replay_id = Some(record.id);
        }
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
    let metadata = keep_secrets(txn, cloud, &id, &spec.labels, None, &spec.metadata)?;
    let spec = &fleet_engine::provider::MachineSpec {
        metadata,
        ..spec.clone()
    };
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
    let born = txn.clock(cloud)?;
    txn.put(&StoredObject::new(
        resource.clone(),
        Some(request.idempotency_token.clone()),
        born,
    ))?;
    Ok((resource, true))
}

/// The error of a discovery that listed again and again and still missed instances this
/// process made: only seen inside the provider, which then answers what the cloud lists.
fn not_yet_listed(operation: &str, missing: usize) -> ProviderError {
    ProviderError::new(
        ErrorKind::Transient,
        operation,
        "notYetListed",
        format!("{missing} instance(s) made by this process are not listed yet"),
    )
}

/// What the first page of an instance or template list call sees, in a transaction: the
/// instance list ticks the clock and removes the instances whose deletion has finished.
fn listing(
    txn: &mut Txn<'_>,
    cloud: Cloud,
    kind: ObjectKind,
    lag: u64,
    keep: &dyn Fn(&LiveResource) -> bool,
) -> Result<Vec<LiveResource>, SimError> {
    let now = match kind {
        ObjectKind::Instance => txn.tick(cloud)?,
        ObjectKind::InstanceTemplate => txn.clock(cloud)?,
    };
    let mut listed = Vec::new();
    let mut vanished = Vec::new();
    for object in txn.snapshot()?.objects() {
        if object.resource.cloud != cloud || object.resource.kind != kind {
            continue;
        }
        match view(object, now, lag) {
            View::Listed(resource) if keep(&resource) => listed.push(*resource),
            View::Listed(_) | View::Hidden => {}
            View::Vanished => vanished.push(object.clone()),
        }
    }
    for object in &vanished {
        txn.remove(object)?;
    }
    Ok(listed)
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
    /// How list pages and operation polls are retried (`--max-attempts`, `--retry-for`).
    retry: RetryPolicy,
}

impl SimProvider {
    pub(crate) fn new(cloud: Cloud, inner: Arc<Inner>, retry: RetryPolicy) -> SimProvider {
        SimProvider {
            cloud,
            inner,
            retry,
        }
    }

    /// Instances of this cloud made in this process that no list call has shown yet: id →
    /// fleet label. Kept in the simulator this process opened, shared by its providers.
    fn awaited(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.inner.awaited[match self.cloud {
            Cloud::Gcp => 0,
            Cloud::Aws => 1,
        }]
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Notes an instance this provider made, to be waited for by the next discovery.
    fn await_listing(&self, made: &LiveResource) {
        // Only what a discovery lists: fleet's own instances.
        if made.kind == ObjectKind::Instance && made.label(labels::KIND).is_some() {
            let fleet = made.label(labels::FLEET).unwrap_or_default().to_owned();
            self.awaited().insert(made.id.clone(), fleet);
        }
    }

    /// Waits for a GCE operation: [`GCE_OPERATION_POLLS`] `wait` calls, each retried under
    /// the policy when it faults (the operation is under way; a failed poll changes nothing).
    /// EC2 answers its calls at once.
    async fn wait_operation(&self, kind: ObjectKind, key: &str) -> Result<(), ProviderError> {
        if self.cloud != Cloud::Gcp {
            return Ok(());
        }
        let poll = match kind {
            ObjectKind::Instance => "compute.zoneOperations.wait",
            ObjectKind::InstanceTemplate => "compute.globalOperations.wait",
        };
        for number in 0..GCE_OPERATION_POLLS {
            let fault_key = format!("{key}#{number}");
            with_retry(
                self.retry,
                |_| self.inner.gate.call(self.cloud, poll, &fault_key, false),
                |_, _, _| {},
            )
            .await?;
        }
        Ok(())
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

    /// Lists the objects that `keep` selects: instances, then templates, each one counted
    /// call per page, each page retried under the policy.
    async fn list_paged(
        &self,
        fault_key: &str,
        keep: impl Fn(&LiveResource) -> bool + Send + Sync + 'static,
    ) -> Result<Vec<LiveResource>, ProviderError> {
        let keep: Arc<dyn Fn(&LiveResource) -> bool + Send + Sync> = Arc::new(keep);
        let mut instances = self
            .list_kind(ObjectKind::Instance, fault_key, Arc::clone(&keep))
            .await?;
        let mut templates = self
            .list_kind(ObjectKind::InstanceTemplate, fault_key, keep)
            .await?;
        let order = |a: &LiveResource, b: &LiveResource| (&a.name, &a.id).cmp(&(&b.name, &b.id));
        instances.sort_by(order);
        templates.sort_by(order);
        instances.append(&mut templates);
        Ok(instances)
    }

    /// One paginated list call of one kind of object. The first page takes a snapshot (and,
    /// for instances, ticks the cloud's list clock and removes what has vanished); the
    /// later pages are served from it, like a page token pinned to a consistent listing.
    async fn list_kind(
        &self,
        kind: ObjectKind,
        fault_key: &str,
        keep: Arc<dyn Fn(&LiveResource) -> bool + Send + Sync>,
    ) -> Result<Vec<LiveResource>, ProviderError> {
        let cloud = self.cloud;
        let operation = match kind {
            ObjectKind::Instance => operations(cloud).list_instances,
            ObjectKind::InstanceTemplate => operations(cloud).list_templates,
        };
        let page_size = match cloud {
            Cloud::Gcp => GCP_PAGE,
            Cloud::Aws => AWS_PAGE,
        };
        let lag = self.inner.list_lag;
        let snapshot: Mutex<Arc<Vec<LiveResource>>> = Mutex::new(Arc::new(Vec::new()));
        let snapshot = &snapshot;
        let mut found = Vec::new();
        let fetch = |token: Option<String>| {
            let keep = Arc::clone(&keep);
            async move {
                let page: usize = token.and_then(|token| token.parse().ok()).unwrap_or(0);
                self.inner
                    .gate
                    .call(cloud, operation, &format!("{fault_key}#{page}"), false)
                    .await?;
                if page == 0 {
                    let listing = self
                        .blocking(operation, move |inner| {
                            Ok(inner
                                .store
                                .write(|txn| listing(txn, cloud, kind, lag, &*keep))?)
                        })
                        .await?;
                    *snapshot.lock().unwrap_or_else(|poison| poison.into_inner()) =
                        Arc::new(listing);
                }
                let all = Arc::clone(&snapshot.lock().unwrap_or_else(|poison| poison.into_inner()));
                let start = (page * page_size).min(all.len());
                let end = (start + page_size).min(all.len());
                let next = (end < all.len()).then(|| (page + 1).to_string());
                Ok((all[start..end].to_vec(), next))
            }
        };
        follow_pages(self.retry, fetch, |page: Vec<LiveResource>| {
            found.extend(page)
        })
        .await?;
        Ok(found)
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
        let results = match committed {
            Err(error) => return vec![Err(error); count],
            Ok(results) => results,
        };
        // What this call made is awaited by the next discovery even if the answer is lost:
        // the executor's retry replays the token and is answered without making anything.
        let results: Vec<Result<LiveResource, ProviderError>> = results
            .into_iter()
            .map(|result| {
                result.map(|(made, fresh)| {
                    if fresh {
                        self.await_listing(&made);
                    }
                    made
                })
            })
            .collect();
        if outcome == Outcome::LoseResponse {
            return vec![Err(transient(cloud, operation, false, true)); count];
        }
        if let Err(error) = self
            .wait_operation(ObjectKind::Instance, &format!("bulk:{fault_key}"))
            .await
        {
            return vec![Err(error); count];
        }
        results
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
                    let Some(mut object) = txn
                        .get(cloud, &id)?
                        .filter(|object| object.deleted_at.is_none())
                    else {
                        return Err(not_found(cloud, operation, &id).into());
                    };
                    match part {
                        UpdatePart::Labels => object.resource.spec.labels = values,
                        UpdatePart::Metadata => {
                            let spec = &object.resource.spec;
                            object.resource.spec.metadata = keep_secrets(
                                txn,
                                cloud,
                                &id,
                                &spec.labels,
                                Some(&spec.metadata),
                                &values,
                            )?;
                        }
                    }
                    txn.put(&object)?;
                    Ok(object.resource)
                })
            })
            .await?;
        match outcome {
            Outcome::Answer => {
                self.wait_operation(ObjectKind::Instance, &format!("{operation}:{}", request.id))
                    .await?;
                Ok(updated)
            }
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

    fn call_counts(&self) -> BTreeMap<String, u64> {
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

    /// # Guarantees
    /// Lists what carries `fleet=FLEET` and a `fleet-kind` label, as the real list filters
    /// do: autoscaled build machines carry `fleet=` but no `fleet-kind`, and never cost a
    /// page. When an instance this provider made is missing (a list that lags behind its
    /// writes), lists again under the retry policy; once the policy gives up, answers what
    /// the cloud lists.
    async fn discover(&self, fleet: &str) -> Result<Vec<LiveResource>, ProviderError> {
        let operation = operations(self.cloud).list_instances;
        let last: Mutex<Option<Vec<LiveResource>>> = Mutex::new(None);
        let last = &last;
        let listed = with_retry(
            self.retry,
            |_| async move {
                let wanted = fleet.to_owned();
                let found = match self
                    .list_paged(&format!("discover:{fleet}"), move |resource| {
                        resource.label(labels::FLEET) == Some(wanted.as_str())
                            && resource.label(labels::KIND).is_some()
                    })
                    .await
                {
                    Ok(found) => found,
                    // Each page has had its retries already: not retried again here.
                    Err(error) => return Ok(Err(error)),
                };
                let ids: BTreeSet<&str> = found.iter().map(|object| object.id.as_str()).collect();
                let missing = {
                    let mut awaited = self.awaited();
                    awaited.retain(|id, _| !ids.contains(id.as_str()));
                    awaited.values().filter(|owner| *owner == fleet).count()
                };
                if missing == 0 {
                    return Ok(Ok(found));
                }
                *last.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(found);
                Err(not_yet_listed(operation, missing))
            },
            |_, _, _| {},
        )
        .await;
        match listed {
            Ok(result) => result,
            Err(_) => {
                // The policy gave up waiting: what the cloud lists is the answer, and the
                // instances it misses are awaited no longer.
                self.awaited().retain(|_, owner| owner != fleet);
                let found = last
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .take();
                Ok(found.unwrap_or_default())
            }
        }
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
        let owned = request.clone();
        let created = self
            .blocking(operation, move |inner| {
                inner
                    .store
                    .write(|txn| commit_create(txn, inner, cloud, operation, &owned))
            })
            .await?;
        let (created, fresh) = created;
        if fresh {
            self.await_listing(&created);
        }
        match outcome {
            Outcome::Answer => {
                self.wait_operation(
                    request.kind,
                    &format!("{operation}:{}", request.idempotency_token),
                )
                .await?;
                Ok(created)
            }
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
        // An EC2 instance shutting down cannot be changed any more: as good as gone.
        let Some(current) = current.filter(|object| object.deleted_at.is_none()) else {
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
        // A GCE machine holds references to its secrets, not their values: what it would hold
        // is what is compared.
        let wanted = match cloud {
            Cloud::Gcp => {
                let fleet = request.labels.get(labels::FLEET).map_or("", String::as_str);
                fleet_engine::render::delivery::gce_secrets(
                    fleet,
                    &request.id,
                    SIM_PROJECT,
                    &request.metadata,
                )
                .0
            }
            Cloud::Aws => request.metadata.clone(),
        };
        if resource.spec.metadata != wanted {
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
                // Deleting what is gone (or going) succeeds: a resumed apply repeats deletes.
                let Some(mut object) = txn.get(cloud, &id)? else {
                    return Ok::<_, SimError>(());
                };
                // Its secrets go with it.
                let fleet = object
                    .resource
                    .spec
                    .labels
                    .get(labels::FLEET)
                    .cloned()
                    .unwrap_or_default();
                for resource in fleet_engine::render::delivery::gce_fleet_secret_names(
                    &fleet,
                    SIM_PROJECT,
                    &object.resource.spec.metadata,
                )
                .into_values()
                {
                    txn.remove_secret(cloud, &resource)?;
                }
                if cloud == Cloud::Aws && object.resource.kind == ObjectKind::Instance {
                    // EC2 keeps listing it, shutting down and then terminated, for a while.
                    if object.deleted_at.is_none() {
                        object.deleted_at = Some(txn.clock(cloud)?);
                        txn.put(&object)?;
                    }
                } else {
                    txn.remove(&object)?;
                }
                Ok(())
            })?)
        })
        .await?;
        self.awaited().remove(&request.id);
        match outcome {
            Outcome::Answer => {
                self.wait_operation(request.kind, &format!("{operation}:{}", request.id))
                    .await
            }
            Outcome::LoseResponse => Err(transient(cloud, operation, false, true)),
        }
    }
}
