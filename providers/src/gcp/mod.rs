//! The live GCP provider: fleet's [`Provider`] on Compute Engine through
//! `google-cloud-compute-v1`, the official google-cloud-rust client.
//!
//! In: a [`GcpConfig`] (project, region, endpoint, credentials choice, limits) built by the
//! binary, then the executor's requests. Out: [`LiveResource`]s discovered with
//! `instances.aggregatedList` / `instanceTemplates.list` filtered by the fleet label, and
//! mutations (`instances.insert`, `bulkInsert`, `setLabels`, `setMetadata`, `delete`,
//! `instanceTemplates.insert`/`delete`), each followed until its zone or global operation is
//! done, and the machines' secrets in Secret Manager (`gcp::secrets`).
//!
//! Decisions, so that the engine's guarantees hold on GCE:
//! - **One retry loop.** The client library's own retries are switched off
//!   (`NeverRetry`); throttling (403 `rateLimitExceeded`, 429) and 5xx come back as
//!   [`ErrorKind::Throttled`] / [`ErrorKind::Transient`] and the engine's executor retries
//!   mutations with jittered backoff, bounded. Two layers would multiply each other's
//!   attempts. List calls follow their pages with `retry::follow_pages` under the run's
//!   policy (`GcpConfig::retry`): a failed page is asked for again with its own token. Polling
//!   an operation that is already under way is retried here under a short policy of its own
//!   (`retry::with_retry`), because giving up would make the executor re-send the mutation
//!   (harmless thanks to `requestId`, but slower).
//! - **Errors are data.** GCE's error reasons become a [`error::GceReason`] at this edge
//!   (from the structured `errors[].reason` / `ErrorInfo`, an operation's `errors[].code`,
//!   or the HTTP status) and are mapped to an [`ErrorKind`] once; the provider decides on
//!   reasons (`AlreadyExists`, `ConditionNotMet`, `NotFound`) and on where a failure came
//!   from (a failed operation spends its `requestId`), never on message text.
//! - **Idempotency.** Every mutation carries a `requestId`, a UUID derived from the step's
//!   idempotency token and the call ([`request_id`]): GCE answers a repeat with the
//!   operation of the first, so a retried insert never makes a second VM. An insert that
//!   meets `alreadyExists` for an object carrying exactly the requested labels (the spec
//!   hash included) reports that object: it is the one this request made, e.g. through a
//!   `bulkInsert` whose answer was lost.
//! - **What GCE does not list back** (boot image and disk type of instances, the zone of
//!   templates) is kept in the reserved metadata item [`MACHINE_KEY`] as compact JSON, and
//!   stripped again when reading; what GCE does return (machine type, zone, boot disk
//!   size) is read from GCE itself, so a hand edit there shows as drift.
//! - **Discovery is O(pages).** `maxResults=500`, page tokens followed; the filter asks for
//!   `fleet=FLEET` *and* a `fleet-kind` label (`labels.fleet-kind:*`), so the autoscaled
//!   build machines, which carry `fleet=` for Prometheus but are not fleet's, cost no pages. The client does not
//!   expose `returnPartialSuccess`, but GCE's aggregated list names the zones it could not
//!   reach anyway (in `unreachables` or as an `UNREACHABLE` scope warning).
//!   [`Provider::discover_reachable`] returns them with what the other zones hold, and the
//!   plan leaves those zones alone: a zone fleet cannot see may hold its machines, so
//!   creating there could duplicate and deleting there is blind.
//! - **In-place updates** send only the half that changed, with the fingerprint GCE
//!   requires; fingerprints seen by discovery are reused (no GET per update), and a stale
//!   one (412 `conditionNotMet`) is refreshed with one `instances.get` and retried once.
//! - **Secrets are Secret Manager's.** A machine's secret values never go into its metadata:
//!   `render::delivery::gce_secrets` makes one secret per fleet, machine and name, which
//!   `secrets::SecretStore` writes before the insert or `setMetadata` that names it (a new
//!   version only where the digest the machine was told differs), and deletes with the
//!   machine. What each machine was told comes from discovery, so this costs no read; a plan
//!   makes no Secret Manager call at all.
//! - **Batches.** `instances.bulkInsert` can only give members their own names
//!   (`perInstanceProperties`), not their own labels, so requests are batched only when
//!   they are identical but for the name. Pool members are: their address is their name
//!   (no `fleet-resource` label), so a pool of one shape is one `bulkInsert` per 100
//!   members.

mod convert;
mod error;
mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_engine::provider::{
    batch_calls, Cloud, CreateRequest, DeleteRequest, Discovery, ErrorKind, LiveResource,
    ObjectKind, Provider, ProviderError, ProviderLimits, UpdateRequest,
};
use fleet_engine::retry::{follow_pages, with_retry, RetryPolicy};
use google_cloud_auth::credentials::Credentials;
use google_cloud_compute_v1::client::{
    GlobalOperations, InstanceTemplates, Instances, ZoneOperations,
};
use google_cloud_compute_v1::model::{
    operation, Instance, InstanceAggregatedList, InstanceTemplateList, InstancesSetLabelsRequest,
    Operation,
};
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::client::SecretManagerService;

use self::error::{GceError, GceReason, Origin};

pub use convert::{request_id, MACHINE_KEY};
pub use error::ConnectError;

/// The Compute Engine endpoint when none is configured.
pub const DEFAULT_ENDPOINT: &str = "https://compute.googleapis.com";

/// The Secret Manager endpoint when none is configured.
pub const DEFAULT_SECRETS_ENDPOINT: &str = "https://secretmanager.googleapis.com";

/// Page size of list calls: the most GCE returns in one page.
const PAGE_SIZE: u32 = 500;

/// Names per `find_by_names` filter, to keep filter expressions short.
const NAMES_PER_FILTER: usize = 50;

/// Attempts of one operation poll that is throttled or fails, the first included.
const POLL_ATTEMPTS: u32 = 7;

/// How the provider authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcpAuth {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
    /// `application_default_credentials.json`, or the metadata server.
    ApplicationDefault,
    /// No credentials at all, for a local test server.
    Anonymous,
}

/// Everything the GCP provider needs, passed in by the binary (which alone reads the
/// environment).
#[derive(Debug, Clone)]
pub struct GcpConfig {
    /// The project every call goes to.
    pub project: String,
    /// The fleet file's default region (shown in `describe`).
    pub region: String,
    /// API endpoint override (`http://127.0.0.1:PORT` for a test server); `None` for
    /// [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
    /// Secret Manager endpoint override (`http://127.0.0.1:PORT` for a test server); `None`
    /// for [`DEFAULT_SECRETS_ENDPOINT`].
    pub secrets_endpoint: Option<String>,
    /// How to authenticate.
    pub auth: GcpAuth,
    /// Mutations in flight at once in this project.
    pub max_concurrent_mutations: usize,
    /// Client-side pace, calls per second; `None` to rely on GCE's own throttling.
    pub calls_per_second: Option<f64>,
    /// How long to wait for one operation before reporting a timeout.
    pub operation_timeout: Duration,
    /// How long one HTTP attempt may take (an operation `wait` returns within about 2 min).
    pub attempt_timeout: Duration,
    /// How long obtaining the first access token may take before credentials count as
    /// missing.
    pub credentials_timeout: Duration,
    /// The network new machines are attached to.
    pub network: String,
    /// How each list page is retried (`--max-attempts`, `--retry-for`).
    pub retry: RetryPolicy,
}

impl GcpConfig {
    /// A configuration with fleet's defaults for `project`.
    pub fn new(project: impl Into<String>, region: impl Into<String>) -> GcpConfig {
        GcpConfig {
            project: project.into(),
            region: region.into(),
            endpoint: None,
            secrets_endpoint: None,
            auth: GcpAuth::ApplicationDefault,
            max_concurrent_mutations: 8,
            calls_per_second: None,
            operation_timeout: Duration::from_secs(600),
            attempt_timeout: Duration::from_secs(180),
            credentials_timeout: Duration::from_secs(20),
            network: convert::DEFAULT_NETWORK.to_string(),
            retry: RetryPolicy::default(),
        }
    }
}

/// Where an operation lives.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Zone(&'a str),
    Global,
}

/// fleet's provider for one GCP project.
pub struct GcpProvider {
    config: GcpConfig,
    instances: Instances,
    templates: InstanceTemplates,
    zone_operations: ZoneOperations,
    global_operations: GlobalOperations,
    /// Secret Manager, where each machine's secret values live.
    secrets: secrets::SecretStore,
    /// What each machine (instance or template, by id) was told about its secrets, as
    /// discovery saw it in its `fleet-secrets` metadata: digests and resource names. An update
    /// writes only what changed from it, a deletion deletes what it names.
    delivered: Mutex<HashMap<String, fleet_engine::secrets::Delivery>>,
    /// API calls made, by operation name.
    calls: Mutex<BTreeMap<String, u64>>,
    /// Labels, metadata and their fingerprints as last seen, by instance id, so an update
    /// needs no GET.
    seen: Mutex<HashMap<String, Instance>>,
    /// Creations whose operation finished with an error, by requestId key, with how many
    /// times. GCE answers a repeated `requestId` with the same operation, failed included; a
    /// failed operation made nothing, so the next attempt gets a new one.
    failed_creations: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for GcpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GcpProvider {
    /// Builds the clients, checking credentials first so a run without them fails before it
    /// changes anything.
    ///
    /// # Errors
    /// [`ConnectError::NoCredentials`] when Application Default Credentials are missing or
    /// yield no token in time; [`ConnectError::Client`] when the endpoint is unusable.
    pub async fn connect(config: GcpConfig) -> Result<GcpProvider, ConnectError> {
        let credentials = match config.auth {
            GcpAuth::Anonymous => google_cloud_auth::credentials::anonymous::Builder::new().build(),
            GcpAuth::ApplicationDefault => application_default(&config).await?,
        };
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let client_error = |error: google_cloud_gax::client_builder::Error| ConnectError::Client {
            endpoint: endpoint.clone(),
            detail: error.to_string(),
        };
        macro_rules! client {
            ($client:ty) => {
                <$client>::builder()
                    .with_endpoint(endpoint.clone())
                    .with_credentials(credentials.clone())
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(config.attempt_timeout)
                    .build()
                    .await
                    .map_err(client_error)?
            };
        }
        let instances = client!(Instances);
        let templates = client!(InstanceTemplates);
        let zone_operations = client!(ZoneOperations);
        let global_operations = client!(GlobalOperations);
        // The same credentials, retry choice and timeouts as Compute Engine's clients.
        let secrets_endpoint = config
            .secrets_endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_SECRETS_ENDPOINT.to_string());
        let secret_manager = SecretManagerService::builder()
            .with_endpoint(secrets_endpoint.clone())
            .with_credentials(credentials.clone())
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(config.attempt_timeout)
            .build()
            .await
            .map_err(|error| ConnectError::Client {
                endpoint: secrets_endpoint.clone(),
                detail: error.to_string(),
            })?;
        Ok(GcpProvider {
            secrets: secrets::SecretStore {
                client: secret_manager,
                project: config.project.clone(),
            },
            delivered: Mutex::new(HashMap::new()),
            config,
            instances,
            templates,
            zone_operations,
            global_operations,
            calls: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(HashMap::new()),
            failed_creations: Mutex::new(HashMap::new()),
        })
    }

    fn count(&self, operation: &str) {
        let mut calls = self.calls.lock().expect("call counts lock");
        *calls.entry(operation.to_string()).or_default() += 1;
    }

    fn remember(&self, id: &str, instance: &Instance) {
        let mut slim = Instance::default();
        slim.labels = instance.labels.clone();
        slim.label_fingerprint = instance.label_fingerprint.clone();
        slim.metadata = instance.metadata.clone();
        slim.machine_type = instance.machine_type.clone();
        slim.zone = instance.zone.clone();
        slim.name = instance.name.clone();
        slim.status = instance.status.clone();
        slim.disks = instance.disks.clone();
        self.seen
            .lock()
            .expect("seen lock")
            .insert(id.to_string(), slim);
    }

    fn forget(&self, id: &str) {
        self.seen.lock().expect("seen lock").remove(id);
    }

    /// Keeps what a discovered machine was told about its secrets (digests and names).
    fn remember_delivered(&self, live: &LiveResource) {
        let Some(mut delivery) = live
            .spec
            .metadata
            .get(fleet_engine::render::SECRETS)
            .and_then(|text| serde_json::from_str::<fleet_engine::secrets::Delivery>(text).ok())
        else {
            return;
        };
        // Metadata is written by whoever may set it: only names of this fleet's secrets in
        // this project are ever rewritten or deleted.
        let fleet = live
            .spec
            .labels
            .get(fleet_engine::provider::labels::FLEET)
            .map_or("", String::as_str);
        delivery.names.retain(|_, resource| {
            fleet_engine::render::delivery::is_fleet_secret(fleet, &self.config.project, resource)
        });
        self.delivered
            .lock()
            .expect("delivered lock")
            .insert(live.id.clone(), delivery);
    }

    /// What machine `id` was told about its secrets, by secret name.
    fn told(&self, id: &str) -> BTreeMap<String, secrets::Told> {
        let delivered = self.delivered.lock().expect("delivered lock");
        let Some(delivery) = delivered.get(id) else {
            return BTreeMap::new();
        };
        delivery
            .names
            .iter()
            .map(|(name, resource)| {
                (
                    name.clone(),
                    secrets::Told {
                        digest: delivery.digests.get(name).cloned(),
                        resource: resource.clone(),
                    },
                )
            })
            .collect()
    }

    /// The metadata machine `id` is sent (secret values replaced by their Secret Manager
    /// names, `render::delivery::gce_secrets`), after writing the secrets that changed from
    /// what it was told; secrets it no longer references are deleted by the caller once it
    /// is told.
    async fn store_secrets(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        metadata: &BTreeMap<String, String>,
        what: &str,
    ) -> Result<BTreeMap<String, String>, ProviderError> {
        let fleet = labels
            .get(fleet_engine::provider::labels::FLEET)
            .map_or("", String::as_str);
        let (sent, wanted) =
            fleet_engine::render::delivery::gce_secrets(fleet, id, &self.config.project, metadata);
        if !wanted.is_empty() {
            let count = |operation: &str| self.count(operation);
            self.secrets
                .write(&wanted, &self.told(id), &count, what)
                .await?;
        }
        Ok(sent)
    }

    /// A creation as it goes to Compute Engine: its secrets written first, so the machine
    /// finds them when it boots, and its metadata naming them.
    async fn prepared(&self, request: &CreateRequest) -> Result<CreateRequest, ProviderError> {
        let id = match request.kind {
            ObjectKind::Instance => convert::instance_id(&request.spec.zone, &request.name),
            ObjectKind::InstanceTemplate => convert::template_id(&request.name),
        };
        let metadata = self
            .store_secrets(
                &id,
                &request.spec.labels,
                &request.spec.metadata,
                &request.name,
            )
            .await?;
        Ok(CreateRequest {
            spec: fleet_engine::provider::MachineSpec {
                metadata,
                ..request.spec.clone()
            },
            ..request.clone()
        })
    }

    /// Deletes the secrets machine `id` was told about and does not keep.
    async fn delete_secrets(
        &self,
        id: &str,
        keep: &BTreeMap<String, String>,
        what: &str,
    ) -> Result<(), ProviderError> {
        let told = self.told(id);
        let kept = fleet_engine::render::delivery::gce_secret_names(keep);
        let stale: Vec<String> = told
            .into_values()
            .map(|told| told.resource)
            .filter(|resource| !kept.values().any(|kept| kept == resource))
            .collect();
        if !stale.is_empty() {
            let count = |operation: &str| self.count(operation);
            self.secrets.delete(&stale, &count, what).await?;
        }
        let mut delivered = self.delivered.lock().expect("delivered lock");
        match keep
            .get(fleet_engine::render::SECRETS)
            .and_then(|text| serde_json::from_str::<fleet_engine::secrets::Delivery>(text).ok())
        {
            Some(delivery) => delivered.insert(id.to_string(), delivery),
            None => delivered.remove(id),
        };
        Ok(())
    }

    /// Follows a list call's pages with `retry::follow_pages`, under the run's policy: a page
    /// that fails in a retryable way is asked for again with its own token. `fetch` is given
    /// the page token and answers the page and the next token; `each` takes every page. One
    /// call counted per attempt.
    async fn every_page<P, F, Fut>(
        &self,
        operation: &str,
        mut fetch: F,
        each: impl FnMut(P),
    ) -> Result<(), ProviderError>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: std::future::Future<
            Output = Result<(P, Option<String>), google_cloud_gax::error::Error>,
        >,
    {
        let fetch = |token: Option<String>| {
            self.count(operation);
            let page = fetch(token);
            async move {
                page.await
                    .map_err(|error| ProviderError::from(error::from_gax(operation, "", &error)))
            }
        };
        follow_pages(self.config.retry, fetch, each).await
    }

    /// Lists instances, all pages, with `filter`: what the zones that answered hold, and the
    /// zones GCE reported as unreachable (in `unreachables` or as an `UNREACHABLE` scope
    /// warning), sorted.
    async fn list_instances(
        &self,
        filter: &str,
    ) -> Result<(Vec<LiveResource>, Vec<String>), ProviderError> {
        let mut found = Vec::new();
        let mut unreachable: Vec<String> = Vec::new();
        let fetch = |token: Option<String>| async move {
            let page = self
                .instances
                .aggregated_list()
                .set_project(&self.config.project)
                .set_filter(filter)
                .set_max_results(PAGE_SIZE)
                .set_or_clear_page_token(token)
                .send()
                .await?;
            let next = page.next_page_token.clone();
            Ok((page, next))
        };
        let each = |page: InstanceAggregatedList| {
            unreachable.extend(page.unreachables.iter().map(|scope| short_scope(scope)));
            for (scope, list) in &page.items {
                if warning_code(&list.warning).as_deref() == Some("UNREACHABLE") {
                    unreachable.push(short_scope(scope));
                }
                for instance in &list.instances {
                    if let Some(live) =
                        convert::live_instance(instance, Some(scope), &self.config.project)
                    {
                        self.remember(&live.id, instance);
                        self.remember_delivered(&live);
                        found.push(live);
                    }
                }
            }
        };
        self.every_page("compute.instances.aggregatedList", fetch, each)
            .await?;
        unreachable.sort();
        unreachable.dedup();
        Ok((found, unreachable))
    }

    /// Lists instance templates, all pages, with `filter`.
    async fn list_templates(&self, filter: &str) -> Result<Vec<LiveResource>, ProviderError> {
        let mut found = Vec::new();
        let fetch = |token: Option<String>| async move {
            let page = self
                .templates
                .list()
                .set_project(&self.config.project)
                .set_filter(filter)
                .set_max_results(PAGE_SIZE)
                .set_or_clear_page_token(token)
                .send()
                .await?;
            let next = page.next_page_token.clone();
            Ok((page, next))
        };
        let each = |page: InstanceTemplateList| {
            let live = page
                .items
                .iter()
                .filter_map(|template| convert::live_template(template, &self.config.project));
            for template in live {
                self.remember_delivered(&template);
                found.push(template);
            }
        };
        self.every_page("compute.instanceTemplates.list", fetch, each)
            .await?;
        Ok(found)
    }

    /// The `requestId` of a creation keyed `key` (a token, or a batch's tokens): derived from
    /// the key, and from how often an operation under it failed.
    fn creation_request_id(&self, key: &str, call: &str) -> String {
        let failures = self
            .failed_creations
            .lock()
            .expect("failed creations lock")
            .get(key)
            .copied()
            .unwrap_or(0);
        if failures == 0 {
            convert::request_id(key, call)
        } else {
            convert::request_id(&format!("{key}#{failures}"), call)
        }
    }

    /// [`GcpProvider::wait`] for a creation: an operation that finished with an error moves
    /// the key on to a new `requestId` (a timeout or a lost poll does not: that operation may
    /// still succeed, and its requestId finds it).
    async fn wait_creation(
        &self,
        key: &str,
        scope: Scope<'_>,
        current: Operation,
        operation: &str,
        resource: &str,
    ) -> Result<Operation, GceError> {
        let result = self.wait(scope, current, operation, resource).await;
        if let Err(error) = &result {
            if error.origin == Origin::Operation {
                self.spend_request_id(key);
            }
        }
        result
    }

    /// Follows an operation until it is done; its error, if any, becomes the result. A poll
    /// that is throttled or fails is repeated under a short policy of its own (the operation
    /// is under way either way).
    async fn wait(
        &self,
        scope: Scope<'_>,
        mut current: Operation,
        operation: &str,
        resource: &str,
    ) -> Result<Operation, GceError> {
        let started = Instant::now();
        let deadline = started + self.config.operation_timeout;
        let poll_policy = RetryPolicy {
            max_attempts: POLL_ATTEMPTS,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(6),
            max_elapsed: self.config.operation_timeout,
        };
        loop {
            if current.status == Some(operation::Status::Done) {
                return match error::from_operation(operation, resource, &current) {
                    Some(error) => Err(error),
                    None => Ok(current),
                };
            }
            let Some(name) = current.name.clone() else {
                return Err(GceError::new(
                    GceReason::Invalid,
                    Origin::Call,
                    operation,
                    Some("invalidOperation"),
                    format!("{resource}: GCE answered with an operation that has no name"),
                ));
            };
            if Instant::now() >= deadline {
                return Err(operation_timeout(
                    operation,
                    resource,
                    &current,
                    self.config.operation_timeout,
                ));
            }
            let poll = match scope {
                Scope::Zone(_) => "compute.zoneOperations.wait",
                Scope::Global => "compute.globalOperations.wait",
            };
            let name = name.as_str();
            // The last retryable failure, kept whole for when the policy gives up.
            let last_failure: std::sync::Mutex<Option<GceError>> = std::sync::Mutex::new(None);
            let last_failure = &last_failure;
            // `Ok(Ok(None))`: the deadline passed while waiting; `Ok(Err(_))`: a failure
            // that is not retried.
            let polled = with_retry(
                poll_policy,
                |_| async move {
                    self.count(poll);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let answer = match scope {
                        Scope::Zone(zone) => {
                            let call = self
                                .zone_operations
                                .wait()
                                .set_project(&self.config.project)
                                .set_zone(zone)
                                .set_operation(name)
                                .send();
                            tokio::time::timeout(left, call).await
                        }
                        Scope::Global => {
                            let call = self
                                .global_operations
                                .wait()
                                .set_project(&self.config.project)
                                .set_operation(name)
                                .send();
                            tokio::time::timeout(left, call).await
                        }
                    };
                    match answer {
                        Err(_) => Ok(Ok(None)),
                        Ok(Ok(next)) => Ok(Ok(Some(next))),
                        Ok(Err(failure)) => {
                            let failure = error::from_gax(poll, resource, &failure);
                            if failure.error.kind.is_retryable() {
                                let retried = failure.error.clone();
                                *last_failure.lock().expect("poll failure lock") = Some(failure);
                                Err(retried)
                            } else {
                                Ok(Err(failure))
                            }
                        }
                    }
                },
                |_, _, _| {},
            )
            .await;
            let failure = match polled {
                Ok(Ok(Some(next))) => {
                    current = next;
                    continue;
                }
                Ok(Ok(None)) => {
                    return Err(operation_timeout(
                        operation,
                        resource,
                        &current,
                        self.config.operation_timeout,
                    ))
                }
                Ok(Err(failure)) => failure,
                Err(_) => last_failure
                    .lock()
                    .expect("poll failure lock")
                    .take()
                    .expect("a retried poll failure was kept"),
            };
            return Err(GceError {
                origin: Origin::Poll,
                error: ProviderError {
                    operation: operation.to_string(),
                    message: format!(
                        "{} (while waiting for operation {name} with {poll})",
                        failure.error.message
                    ),
                    ..failure.error
                },
                ..failure
            });
        }
    }

    /// After `alreadyExists`: the object under that name, if it is exactly what the request
    /// asked for (so this request, or a batch carrying it, made it).
    async fn existing_match(
        &self,
        request: &CreateRequest,
    ) -> Result<Option<LiveResource>, ProviderError> {
        let filter = convert::names_filter(std::slice::from_ref(&request.name));
        let found = match request.kind {
            ObjectKind::Instance => self.list_instances(&filter).await?.0,
            ObjectKind::InstanceTemplate => self.list_templates(&filter).await?,
        };
        Ok(found.into_iter().find(|live| {
            live.name == request.name
                && live.spec.zone == request.spec.zone
                && live.spec.labels == request.spec.labels
        }))
    }

    /// Creates one instance with `instances.insert`.
    ///
    /// An insert answered at once with a finished operation is a replay: GCE knew the
    /// `requestId`. The machine that operation made may since have been deleted (a machine
    /// made again after a deletion can carry the same creation token: GCE's id of a VM is its
    /// zone and name), so one GET looks; if it is gone, the insert is sent again under a new
    /// `requestId`.
    async fn insert_instance(
        &self,
        request: &CreateRequest,
    ) -> Result<LiveResource, ProviderError> {
        const OPERATION: &str = "compute.instances.insert";
        let zone = request.spec.zone.as_str();
        let id = convert::instance_id(zone, &request.name);
        let key = &request.idempotency_token;
        for last_try in [false, true] {
            self.count(OPERATION);
            let sent = self
                .instances
                .insert()
                .set_project(&self.config.project)
                .set_zone(zone)
                .set_request_id(self.creation_request_id(key, "insert"))
                .set_body(convert::instance_body(request, &self.config.network))
                .send()
                .await;
            let operation = match sent {
                Ok(operation) => operation,
                Err(failure) => {
                    let failure = error::from_gax(OPERATION, &id, &failure);
                    return self.created_already(request, failure).await;
                }
            };
            let replayed = operation.status == Some(operation::Status::Done);
            self.wait_creation(key, Scope::Zone(zone), operation, OPERATION, &id)
                .await
                .map_err(ProviderError::from)?;
            if !replayed || last_try {
                break;
            }
            match self.current_instance(&id, zone, &request.name, true).await {
                Ok(_) => break,
                Err(gone) if gone.kind == ErrorKind::NotFound => self.spend_request_id(key),
                Err(failure) => return Err(failure),
            }
        }
        Ok(created(request, id))
    }

    /// Moves the creations keyed `key` on to a new `requestId`: the current one is spent.
    fn spend_request_id(&self, key: &str) {
        *self
            .failed_creations
            .lock()
            .expect("failed creations lock")
            .entry(key.to_string())
            .or_default() += 1;
    }

    /// Creates one template with `instanceTemplates.insert`.
    async fn insert_template(
        &self,
        request: &CreateRequest,
    ) -> Result<LiveResource, ProviderError> {
        const OPERATION: &str = "compute.instanceTemplates.insert";
        let id = convert::template_id(&request.name);
        self.count(OPERATION);
        let sent = self
            .templates
            .insert()
            .set_project(&self.config.project)
            .set_request_id(self.creation_request_id(&request.idempotency_token, "insert"))
            .set_body(convert::template_body(request, &self.config.network))
            .send()
            .await;
        let operation = match sent {
            Ok(operation) => operation,
            Err(failure) => {
                let failure = error::from_gax(OPERATION, &id, &failure);
                return self.created_already(request, failure).await;
            }
        };
        self.wait_creation(
            &request.idempotency_token,
            Scope::Global,
            operation,
            OPERATION,
            &id,
        )
        .await
        .map_err(ProviderError::from)?;
        Ok(created(request, id))
    }

    /// Turns `alreadyExists` into success when the existing object is the requested one.
    async fn created_already(
        &self,
        request: &CreateRequest,
        failure: GceError,
    ) -> Result<LiveResource, ProviderError> {
        if failure.reason != GceReason::AlreadyExists {
            return Err(failure.into());
        }
        match self.existing_match(request).await? {
            Some(live) => Ok(live),
            None => Err(failure.into()),
        }
    }

    /// Creates instances identical but for their names with one `instances.bulkInsert`.
    async fn bulk_insert(&self, group: &[&CreateRequest]) -> Result<(), GceError> {
        const OPERATION: &str = "compute.instances.bulkInsert";
        let zone = group[0].spec.zone.as_str();
        let names: Vec<&str> = group.iter().map(|request| request.name.as_str()).collect();
        let resource = format!("zones/{zone}/instances/{{{}}}", names.join(","));
        let tokens: Vec<&str> = group
            .iter()
            .map(|request| request.idempotency_token.as_str())
            .collect();
        let key = tokens.join(",");
        self.count(OPERATION);
        let operation = self
            .instances
            .bulk_insert()
            .set_project(&self.config.project)
            .set_zone(zone)
            .set_request_id(self.creation_request_id(&key, "bulkInsert"))
            .set_body(convert::bulk_body(group, &self.config.network))
            .send()
            .await
            .map_err(|failure| error::from_gax(OPERATION, &resource, &failure))?;
        self.wait_creation(&key, Scope::Zone(zone), operation, OPERATION, &resource)
            .await
            .map(|_| ())
    }

    /// The instance behind `id` with current fingerprints: as last seen, or one GET.
    async fn current_instance(
        &self,
        id: &str,
        zone: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Instance, ProviderError> {
        if !fresh {
            if let Some(seen) = self.seen.lock().expect("seen lock").get(id) {
                return Ok(seen.clone());
            }
        }
        const OPERATION: &str = "compute.instances.get";
        self.count(OPERATION);
        let instance = self
            .instances
            .get()
            .set_project(&self.config.project)
            .set_zone(zone)
            .set_instance(name)
            .send()
            .await
            .map_err(|failure| ProviderError::from(error::from_gax(OPERATION, id, &failure)))?;
        self.remember(id, &instance);
        Ok(instance)
    }

    /// One `setLabels` or `setMetadata` call and its operation, refreshing the fingerprint
    /// once if GCE says it is stale.
    async fn set_part(
        &self,
        part: Part,
        request: &UpdateRequest,
        zone: &str,
        name: &str,
        mut current: Instance,
    ) -> Result<Instance, ProviderError> {
        let operation = part.operation();
        for attempt in 0..2 {
            self.count(operation);
            let request_id = convert::request_id(
                &request.idempotency_token,
                &format!("{operation}#{attempt}"),
            );
            let sent = match part {
                Part::Labels => {
                    let mut body = InstancesSetLabelsRequest::default();
                    body.labels = request.labels.clone().into_iter().collect();
                    body.label_fingerprint = current.label_fingerprint.clone();
                    self.instances
                        .set_labels()
                        .set_project(&self.config.project)
                        .set_zone(zone)
                        .set_instance(name)
                        .set_request_id(request_id)
                        .set_body(body)
                        .send()
                        .await
                }
                Part::Metadata => {
                    let body =
                        convert::metadata_for_update(&request.metadata, current.metadata.as_ref());
                    self.instances
                        .set_metadata()
                        .set_project(&self.config.project)
                        .set_zone(zone)
                        .set_instance(name)
                        .set_request_id(request_id)
                        .set_body(body)
                        .send()
                        .await
                }
            };
            match sent {
                Ok(done) => {
                    self.wait(Scope::Zone(zone), done, operation, &request.id)
                        .await
                        .map_err(ProviderError::from)?;
                    self.forget(&request.id);
                    return Ok(current);
                }
                Err(failure) => {
                    let failure = error::from_gax(operation, &request.id, &failure);
                    if failure.reason != GceReason::ConditionNotMet || attempt == 1 {
                        self.forget(&request.id);
                        return Err(failure.into());
                    }
                    current = self.current_instance(&request.id, zone, name, true).await?;
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// The two halves of an in-place update.
#[derive(Debug, Clone, Copy)]
enum Part {
    Labels,
    Metadata,
}

impl Part {
    fn operation(self) -> &'static str {
        match self {
            Part::Labels => "compute.instances.setLabels",
            Part::Metadata => "compute.instances.setMetadata",
        }
    }
}

/// What a successful create reports: the request as the cloud now holds it.
fn created(request: &CreateRequest, id: String) -> LiveResource {
    LiveResource {
        creation_token: None,
        cloud: Cloud::Gcp,
        kind: request.kind,
        id,
        name: request.name.clone(),
        status: match request.kind {
            ObjectKind::Instance => fleet_engine::provider::InstanceStatus::Running,
            ObjectKind::InstanceTemplate => fleet_engine::provider::InstanceStatus::Available,
        },
        spec: request.spec.clone(),
    }
}

fn operation_timeout(
    operation: &str,
    resource: &str,
    current: &Operation,
    limit: Duration,
) -> GceError {
    GceError::new(
        GceReason::Timeout,
        Origin::Poll,
        operation,
        Some("operationTimeout"),
        format!(
            "{resource}: operation {} was still {} after {} s; it may yet finish (a retry with \
             the same requestId picks it up again, and the next plan shows its outcome)",
            current.name.as_deref().unwrap_or("?"),
            current
                .status
                .as_ref()
                .and_then(|status| status.name())
                .unwrap_or("not done"),
            limit.as_secs()
        ),
    )
}

/// The `code` of a list warning, read through its JSON form so every warning type of the
/// client reads the same way.
fn warning_code<T: serde::Serialize>(warning: &Option<T>) -> Option<String> {
    let value = serde_json::to_value(warning.as_ref()?).ok()?;
    value.get("code")?.as_str().map(str::to_string)
}

/// Application Default Credentials, with a token fetched up front so a run without
/// credentials fails before it changes anything.
async fn application_default(config: &GcpConfig) -> Result<Credentials, ConnectError> {
    let missing = |detail: String| ConnectError::NoCredentials {
        project: config.project.clone(),
        detail,
    };
    let credentials = google_cloud_auth::credentials::Builder::default()
        .build_access_token_credentials()
        .map_err(|error| missing(error.to_string()))?;
    match tokio::time::timeout(config.credentials_timeout, credentials.access_token()).await {
        Ok(Ok(_token)) => Ok(Credentials::from(credentials)),
        Ok(Err(error)) => Err(missing(error.to_string())),
        Err(_) => Err(missing(format!(
            "no access token within {} s (no credentials file, and the metadata server did not answer)",
            config.credentials_timeout.as_secs()
        ))),
    }
}

/// `us-east1-d` for the aggregated-list scope `zones/us-east1-d` (or its URL).
fn short_scope(scope: &str) -> String {
    scope.rsplit('/').next().unwrap_or(scope).to_string()
}

/// A shape of instance request that `bulkInsert` can create together: everything but the
/// name.
fn bulk_key(request: &CreateRequest) -> String {
    serde_json::to_string(&request.spec).expect("a spec serializes")
}

#[async_trait::async_trait]
impl Provider for GcpProvider {
    fn cloud(&self) -> Cloud {
        Cloud::Gcp
    }

    fn describe(&self) -> String {
        match &self.config.endpoint {
            Some(endpoint) => format!("GCP project {} (endpoint {endpoint})", self.config.project),
            None => format!("GCP project {}", self.config.project),
        }
    }

    fn limits(&self) -> ProviderLimits {
        ProviderLimits {
            max_concurrent_mutations: self.config.max_concurrent_mutations.max(1),
            calls_per_second: self.config.calls_per_second,
        }
    }

    fn call_counts(&self) -> BTreeMap<String, u64> {
        self.calls.lock().expect("call counts lock").clone()
    }

    /// # Guarantees
    /// One `instances.aggregatedList` per page of 500 instances with the filter
    /// `labels.fleet = "FLEET"`, and one `instanceTemplates.list` per page with
    /// `properties.labels.fleet = "FLEET"`. Stopped (TERMINATED, STOPPING, SUSPENDED)
    /// instances are included with their status.
    ///
    /// # Errors
    /// The failed list call; [`ErrorKind::Transient`] `unreachable` when GCE could not list
    /// some zones.
    ///
    /// A zone GCE reports as unreachable fails the call ([`ErrorKind::Transient`]): a zone
    /// fleet cannot see may hold its machines. [`Provider::discover_reachable`] reports such
    /// zones instead.
    async fn discover(&self, fleet: &str) -> Result<Vec<LiveResource>, ProviderError> {
        let found = self.discover_reachable(fleet).await?;
        if found.unreachable_zones.is_empty() {
            return Ok(found.objects);
        }
        Err(ProviderError::new(
            ErrorKind::Transient,
            "compute.instances.aggregatedList",
            "unreachable",
            format!(
                "Compute Engine could not list {} right now; fleet does not plan against a \
                 partial view of the project",
                found.unreachable_zones.join(", ")
            ),
        ))
    }

    /// # Guarantees
    /// As [`Provider::discover`]; zones GCE reports as unreachable are returned by name
    /// (`us-east1-d`) with what the other zones hold.
    async fn discover_reachable(&self, fleet: &str) -> Result<Discovery, ProviderError> {
        let (mut objects, unreachable_zones) = self
            .list_instances(&convert::fleet_filter("", fleet))
            .await?;
        objects.extend(
            self.list_templates(&convert::fleet_filter("properties.", fleet))
                .await?,
        );
        objects.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(Discovery {
            objects,
            unreachable_zones,
        })
    }

    /// # Guarantees
    /// Per 50 names: one `instances.aggregatedList` and one `instanceTemplates.list` per page,
    /// filtered `(name = "a") OR (name = "b") …`.
    ///
    /// # Errors
    /// The failed list call.
    async fn find_by_names(&self, names: &[String]) -> Result<Vec<LiveResource>, ProviderError> {
        let mut found = Vec::new();
        for chunk in names.chunks(NAMES_PER_FILTER) {
            let filter = convert::names_filter(chunk);
            // A name in a zone that does not answer cannot be checked; the plan leaves the
            // resources of such zones out.
            found.extend(self.list_instances(&filter).await?.0);
            found.extend(self.list_templates(&filter).await?);
        }
        found.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        found.dedup_by(|a, b| a.kind == b.kind && a.id == b.id);
        Ok(found)
    }

    /// # Guarantees
    /// The `requestId` is derived from the idempotency token: a repeat returns the first
    /// call's operation and creates nothing. Returns once the operation is done.
    ///
    /// # Errors
    /// The call's or the operation's error, naming the object.
    async fn create(&self, request: &CreateRequest) -> Result<LiveResource, ProviderError> {
        let request = self.prepared(request).await?;
        match request.kind {
            ObjectKind::Instance => self.insert_instance(&request).await,
            ObjectKind::InstanceTemplate => self.insert_template(&request).await,
        }
    }

    /// Requests identical but for their names (zone, machine, disk, labels, metadata) go in
    /// one `instances.bulkInsert` each; the rest one [`Provider::create`] each. Members that
    /// reference secrets name secrets of their own, so their metadata differs and each goes
    /// alone.
    ///
    /// # Errors
    /// One result per request, in order; a failed bulk call fails each of its members.
    async fn create_batch(
        &self,
        requests: &[CreateRequest],
    ) -> Vec<Result<LiveResource, ProviderError>> {
        let mut results: Vec<Option<Result<LiveResource, ProviderError>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut prepared = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            match self.prepared(request).await {
                Ok(request) => prepared.push(request),
                Err(error) => {
                    results[index] = Some(Err(error));
                    prepared.push(request.clone());
                }
            }
        }
        let requests = &prepared[..];
        let ready: Vec<bool> = results.iter().map(Option::is_none).collect();
        let calls = batch_calls(requests, 100, |request| Some(bulk_key(request)));
        for members in calls {
            let members: Vec<usize> = members.into_iter().filter(|index| ready[*index]).collect();
            if members.is_empty() {
                continue;
            }
            if let [index] = members[..] {
                results[index] = Some(self.create(&requests[index]).await);
                continue;
            }
            let group: Vec<&CreateRequest> =
                members.iter().map(|index| &requests[*index]).collect();
            let outcome = self.bulk_insert(&group).await;
            if outcome
                .as_ref()
                .is_err_and(|error| error.reason == GceReason::AlreadyExists)
            {
                // Some member exists already (made by an earlier, interrupted apply): one
                // insert each, which tells the requested object from a stranger.
                for index in members {
                    results[index] = Some(self.create(&requests[index]).await);
                }
                continue;
            }
            for index in members {
                let request = &requests[index];
                results[index] = Some(match &outcome {
                    Ok(()) => Ok(created(
                        request,
                        convert::instance_id(&request.spec.zone, &request.name),
                    )),
                    Err(error) => Err(error.error.clone()),
                });
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every request belongs to exactly one call"))
            .collect()
    }

    /// # Guarantees
    /// Sends `setLabels` only if the labels differ and `setMetadata` only if the metadata
    /// differs, each with the fingerprint GCE requires; the VM is not recreated.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the instance is gone; the call's or operation's error.
    async fn update(&self, request: &UpdateRequest) -> Result<LiveResource, ProviderError> {
        let Some((Some(zone), name)) = convert::parse_id(&request.id) else {
            return Err(ProviderError::new(
                ErrorKind::Fatal,
                "compute.instances.setLabels",
                "invalid",
                format!(
                    "'{}' is not a GCE instance id; templates cannot be changed in place",
                    request.id
                ),
            ));
        };
        // The secrets first: the machine acts on its metadata, which then names them.
        let metadata = self
            .store_secrets(&request.id, &request.labels, &request.metadata, name)
            .await?;
        let request = &UpdateRequest {
            metadata,
            ..request.clone()
        };
        let mut current = self
            .current_instance(&request.id, zone, name, false)
            .await?;
        let live_labels: BTreeMap<String, String> = current.labels.clone().into_iter().collect();
        if live_labels != request.labels {
            current = self
                .set_part(Part::Labels, request, zone, name, current)
                .await?;
        }
        let live = convert::live_instance(&current, Some(zone), &self.config.project);
        let live_metadata = live.as_ref().map(|live| &live.spec.metadata);
        if live_metadata != Some(&request.metadata) {
            self.set_part(Part::Metadata, request, zone, name, current.clone())
                .await?;
        }
        // Told no more about a secret it no longer references: it goes.
        self.delete_secrets(&request.id, &request.metadata, name)
            .await?;
        let mut live = live.ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Fatal,
                "compute.instances.get",
                "invalid",
                format!("{}: GCE returned the instance without a name", request.id),
            )
        })?;
        live.spec.labels = request.labels.clone();
        live.spec.metadata = request.metadata.clone();
        Ok(live)
    }

    /// # Guarantees
    /// Deleting what is already gone succeeds.
    ///
    /// # Errors
    /// The call's or the operation's error.
    async fn delete(&self, request: &DeleteRequest) -> Result<(), ProviderError> {
        let request_id = convert::request_id(&request.idempotency_token, "delete");
        let (operation, sent, scope) = match (request.kind, convert::parse_id(&request.id)) {
            (ObjectKind::Instance, Some((Some(zone), name))) => {
                const OPERATION: &str = "compute.instances.delete";
                self.count(OPERATION);
                let sent = self
                    .instances
                    .delete()
                    .set_project(&self.config.project)
                    .set_zone(zone)
                    .set_instance(name)
                    .set_request_id(request_id)
                    .send()
                    .await;
                (OPERATION, sent, Scope::Zone(zone))
            }
            (ObjectKind::InstanceTemplate, Some((None, name))) => {
                const OPERATION: &str = "compute.instanceTemplates.delete";
                self.count(OPERATION);
                let sent = self
                    .templates
                    .delete()
                    .set_project(&self.config.project)
                    .set_instance_template(name)
                    .set_request_id(request_id)
                    .send()
                    .await;
                (OPERATION, sent, Scope::Global)
            }
            (kind, _) => {
                return Err(ProviderError::new(
                    ErrorKind::Fatal,
                    match kind {
                        ObjectKind::Instance => "compute.instances.delete",
                        ObjectKind::InstanceTemplate => "compute.instanceTemplates.delete",
                    },
                    "invalid",
                    format!(
                        "'{}' (for '{}') is not the id of a GCE {}",
                        request.id,
                        request.name,
                        match kind {
                            ObjectKind::Instance => "instance",
                            ObjectKind::InstanceTemplate => "instance template",
                        }
                    ),
                ))
            }
        };
        self.forget(&request.id);
        let done = match sent {
            Ok(done) => done,
            Err(failure) => {
                let failure = error::from_gax(operation, &request.id, &failure);
                return match failure.reason {
                    GceReason::NotFound => {
                        self.delete_secrets(&request.id, &BTreeMap::new(), &request.name)
                            .await
                    }
                    _ => Err(failure.into()),
                };
            }
        };
        match self.wait(scope, done, operation, &request.id).await {
            Ok(_) => {}
            // Someone else deleted it meanwhile: what was asked for is done.
            Err(failure) if failure.reason == GceReason::NotFound => {}
            Err(failure) => return Err(failure.into()),
        }
        // Its secrets go with it, once nothing can read them any more.
        self.delete_secrets(&request.id, &BTreeMap::new(), &request.name)
            .await
    }
}
