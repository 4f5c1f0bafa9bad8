//! A stateful Compute Engine REST test server, for the GCP provider's tests.
//!
//! No public Compute Engine emulator exists, so this one speaks the subset of the v1 REST
//! API fleet uses: `instances` insert / aggregatedList / list / get / delete / setMetadata /
//! setLabels / bulkInsert, `instanceTemplates` insert / list / get / delete, and zone and
//! global operations get / wait. Request and response bodies are the client crate's own
//! model types (`google_cloud_compute_v1::model::*`) through serde, so what the server
//! accepts and answers is what the real client sends and parses.
//!
//! In: HTTP on `127.0.0.1:PORT` (see [`GceServer::endpoint`]), and knobs set through the
//! in-process handle (latency, "answer 403 `rateLimitExceeded` to every Nth call", lost
//! answers, failing or endless operations, unreachable zones). Out: answers shaped like GCE's
//! (operations that run until polled, `requestId` replays, fingerprints, 404/409/412 errors
//! in GCE's JSON error format) and counters of every call received, by operation
//! (`compute.instances.insert`, …), from [`GceServer::calls`] or `GET /__stats`.
//!
//! States take time as on GCE, counted in calls rather than seconds: an operation is PENDING
//! when answered, RUNNING while polls are left ([`GceServer::set_operation_polls`]) and DONE
//! at the last; a new VM is PROVISIONING until its insert operation is done, then STAGING for
//! the next GET or list call, then RUNNING; a VM being deleted is STOPPING until its delete
//! operation is done, then gone; a VM stopped from the console ([`GceServer::stop`]) is
//! STOPPING for one GET or list call, then TERMINATED.
//!
//! Like real GCE, an instance in a list response carries its machine type and zone as URLs
//! and its boot disk's size, but not the disk's `initializeParams` (source image, disk type):
//! those live on the disk resource, which this server does not serve.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use google_cloud_compute_v1::model::{
    instance, operation, AttachedDisk, BulkInsertInstanceResource, Instance,
    InstanceAggregatedList, InstanceList, InstanceTemplate, InstanceTemplateList,
    InstancesScopedList, InstancesSetLabelsRequest, Metadata, NetworkInterface, Operation,
};
use serde_json::{json, Value};

use crate::loopback::Loopback;

const BASE: &str = "https://www.googleapis.com/compute/v1";

/// Zones the server reports in aggregated lists even when empty, like GCE does.
const KNOWN_ZONES: [&str; 4] = ["us-east1-b", "us-east1-c", "us-east1-d", "us-central1-a"];

/// Knobs of the server, changed through [`GceServer`].
#[derive(Debug, Clone, Default)]
struct Knobs {
    /// Latency added to every call.
    latency: Duration,
    /// Answer 403 `rateLimitExceeded` to every Nth call (counted over all calls).
    throttle_every: Option<u64>,
    /// Answer 403 `rateLimitExceeded` to the next N calls of these operations.
    throttle_next: BTreeMap<String, u32>,
    /// Perform this many mutations but answer them 503, as if the answer was lost.
    lose_answers: u32,
    /// Polls an operation takes before it is done (0: done at its first poll).
    operation_polls: u32,
    /// Operations never finish.
    operations_hang: bool,
    /// Names whose insert operation ends in an error instead of a machine.
    failing_names: Vec<String>,
    /// The next N `bulkInsert` operations end in `RATE_LIMIT_EXCEEDED`, making nothing.
    rate_limited_bulk_operations: u32,
    /// Zones reported as unreachable by aggregated lists.
    unreachable: Vec<String>,
    /// Largest page served, whatever `maxResults` asks.
    page_cap: Option<usize>,
    /// After this many more aggregated lists, this instance stops (TERMINATED): the cloud
    /// changing between two looks.
    stop_after_lists: Option<(u32, String)>,
}

#[derive(Debug, Clone)]
struct StoredOperation {
    operation: Operation,
    polls_left: u32,
    /// What happens when it finishes: instances (zone, name) that start booting (STAGING).
    starts: Vec<(String, String)>,
    /// Instances (zone, name) that are gone when it finishes.
    removes: Vec<(String, String)>,
}

/// GET or list calls a booting VM is STAGING for, and a VM stopped from the console is
/// STOPPING for. One: the list right after an apply (its verification) sees the machine
/// still starting, the next sees it settled, so a plan saved then does not go stale.
const SETTLING_VIEWS: u32 = 1;

/// The server's state: the project's objects, operations and counters.
#[derive(Debug, Default)]
struct World {
    project: String,
    instances: BTreeMap<(String, String), Instance>,
    templates: BTreeMap<String, InstanceTemplate>,
    operations: BTreeMap<String, StoredOperation>,
    request_ids: HashMap<String, String>,
    next_id: u64,
    call_number: u64,
    calls: BTreeMap<String, u64>,
    throttled: u64,
    /// Mutating calls being answered now (within their latency), and the most at once.
    mutations_in_flight: u32,
    max_mutations_in_flight: u32,
    knobs: Knobs,
    /// Instances in a passing state (STAGING, STOPPING), with the GET or list calls left
    /// before the next (RUNNING, TERMINATED).
    settling: BTreeMap<(String, String), u32>,
}

/// An error answered the way GCE does: `{"error": {"code", "message", "errors": [{reason}]}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    reason: &'static str,
    domain: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason,
            domain: "global",
            message: message.into(),
        }
    }

    fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("The resource '{what}' was not found"),
        )
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": self.status.as_u16(),
                "message": self.message,
                "errors": [{
                    "message": self.message,
                    "domain": self.domain,
                    "reason": self.reason,
                }],
            }
        });
        (self.status, axum::Json(body)).into_response()
    }
}

type Answer = Result<Value, ApiError>;

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("model types serialize")
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid(format!("Invalid JSON payload received. {error}")))
}

/// A running server, with a Secret Manager test server for the same project beside it (where
/// the machines' secrets go). Dropping it stops both.
pub(crate) struct GceServer {
    server: Loopback,
    world: Arc<Mutex<World>>,
    secrets: crate::secret_server::SecretServer,
}

impl GceServer {
    /// Starts a server for `project` on 127.0.0.1 with a free port, on its own thread.
    pub(crate) fn start(project: &str) -> GceServer {
        let world = Arc::new(Mutex::new(World {
            project: project.to_string(),
            next_id: 1_000_000,
            ..World::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(world.clone());
        GceServer {
            server: Loopback::serve(app),
            world,
            secrets: crate::secret_server::SecretServer::start(project),
        }
    }

    /// `http://127.0.0.1:PORT`, for `FLEET_GCP_ENDPOINT`.
    pub(crate) fn endpoint(&self) -> String {
        self.server.url()
    }

    /// The project's Secret Manager.
    pub(crate) fn secrets(&self) -> &crate::secret_server::SecretServer {
        &self.secrets
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("world lock")
    }

    /// Calls received, by operation (throttled ones included), Secret Manager's too.
    pub(crate) fn calls(&self) -> BTreeMap<String, u64> {
        let mut calls = self.world().calls.clone();
        calls.extend(self.secrets.calls());
        calls
    }

    /// Calls of one operation received so far.
    pub(crate) fn count(&self, operation: &str) -> u64 {
        self.world().calls.get(operation).copied().unwrap_or(0)
    }

    /// Calls answered 403 `rateLimitExceeded`.
    pub(crate) fn throttled(&self) -> u64 {
        self.world().throttled
    }

    /// Forgets the counters, e.g. between the steps of a scenario.
    pub(crate) fn reset_calls(&self) {
        self.secrets.reset_calls();
        let mut world = self.world();
        world.calls.clear();
        world.throttled = 0;
    }

    /// Every instance, as the server holds it.
    pub(crate) fn instances(&self) -> Vec<Instance> {
        self.world().instances.values().cloned().collect()
    }

    /// One instance by name.
    pub(crate) fn instance(&self, name: &str) -> Option<Instance> {
        self.world()
            .instances
            .values()
            .find(|instance| instance.name.as_deref() == Some(name))
            .cloned()
    }

    /// Every instance template.
    pub(crate) fn templates(&self) -> Vec<InstanceTemplate> {
        self.world().templates.values().cloned().collect()
    }

    /// Latency of every call.
    pub(crate) fn set_latency(&self, latency: Duration) {
        self.world().knobs.latency = latency;
    }

    /// Answers 403 `rateLimitExceeded` to every `n`th call; `None` stops it.
    pub(crate) fn throttle_every(&self, n: Option<u64>) {
        self.world().knobs.throttle_every = n.filter(|n| *n > 0);
    }

    /// Stops instance `name` once `lists` more aggregated lists have been answered.
    pub(crate) fn stop_after_lists(&self, lists: u32, name: &str) {
        self.world().knobs.stop_after_lists = Some((lists, name.to_string()));
    }

    /// The most mutating calls that were being answered at once.
    pub(crate) fn max_mutations_in_flight(&self) -> u32 {
        self.world().max_mutations_in_flight
    }

    /// Answers 403 `rateLimitExceeded` to the next `n` calls of `operation`
    /// (`compute.instances.bulkInsert`).
    pub(crate) fn throttle_next(&self, operation: &str, n: u32) {
        self.world()
            .knobs
            .throttle_next
            .insert(operation.to_string(), n);
    }

    /// The next `n` mutations are carried out but answered 503.
    pub(crate) fn lose_answers(&self, n: u32) {
        self.world().knobs.lose_answers = n;
    }

    /// Operations take `polls` polls before they are done.
    pub(crate) fn set_operation_polls(&self, polls: u32) {
        self.world().knobs.operation_polls = polls;
    }

    /// Operations never finish.
    pub(crate) fn hang_operations(&self, hang: bool) {
        self.world().knobs.operations_hang = hang;
    }

    /// Inserting an instance with this name ends in a failed operation
    /// (`ZONE_RESOURCE_POOL_EXHAUSTED`).
    pub(crate) fn fail_operations_for(&self, name: &str) {
        self.world().knobs.failing_names.push(name.to_string());
    }

    /// The next `n` `bulkInsert` calls are accepted, but their operations end in
    /// `RATE_LIMIT_EXCEEDED` and make nothing.
    pub(crate) fn rate_limit_bulk_operations(&self, n: u32) {
        self.world().knobs.rate_limited_bulk_operations = n;
    }

    /// Aggregated lists report these zones as unreachable.
    pub(crate) fn set_unreachable(&self, zones: &[&str]) {
        self.world().knobs.unreachable = zones.iter().map(|zone| zone.to_string()).collect();
    }

    /// Serves at most `cap` items a page.
    pub(crate) fn cap_pages(&self, cap: usize) {
        self.world().knobs.page_cap = Some(cap);
    }

    /// Stops an instance from the console: STOPPING for the next GET or list call, then
    /// TERMINATED.
    pub(crate) fn stop(&self, name: &str) {
        let mut world = self.world();
        let key = world
            .instances
            .keys()
            .find(|key| key.1 == name)
            .cloned()
            .unwrap_or_else(|| panic!("no instance {name}"));
        world.instances.get_mut(&key).expect("found").status = Some(instance::Status::Stopping);
        world.settling.insert(key, SETTLING_VIEWS);
    }

    /// Sets an instance's status out of band, at once.
    pub(crate) fn set_status(&self, name: &str, status: instance::Status) {
        let mut world = self.world();
        let instance = world
            .instances
            .values_mut()
            .find(|instance| instance.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no instance {name}"));
        instance.status = Some(status);
    }

    /// Creates an instance out of band (not made by fleet), in `zone`.
    pub(crate) fn add_instance(&self, zone: &str, name: &str, labels: &[(&str, &str)]) {
        let mut world = self.world();
        let mut body = Instance::default();
        body.name = Some(name.to_string());
        body.machine_type = Some(format!("zones/{zone}/machineTypes/n1-standard-2"));
        body.labels = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let stored = world.stored_instance(zone, body, "pd-standard");
        world
            .instances
            .insert((zone.to_string(), name.to_string()), stored);
    }
}

/// Every request: count it, wait the latency, maybe throttle it, then route it.
async fn handle(
    State(world): State<Arc<Mutex<World>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path == "/__stats" {
        let world = world.lock().expect("world lock");
        return axum::Json(json!({ "calls": world.calls, "throttled": world.throttled }))
            .into_response();
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Some(route) = Route::parse(&method, &segments) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("no such method: {method} {path}"),
        )
        .into_response();
    };
    let latency = {
        let mut world = world.lock().expect("world lock");
        *world
            .calls
            .entry(route.operation().to_string())
            .or_default() += 1;
        world.call_number += 1;
        if route.is_mutation() {
            world.mutations_in_flight += 1;
            world.max_mutations_in_flight =
                world.max_mutations_in_flight.max(world.mutations_in_flight);
        }
        world.knobs.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut world = world.lock().expect("world lock");
    if route.is_mutation() {
        world.mutations_in_flight -= 1;
    }
    let named = match world.knobs.throttle_next.get_mut(route.operation()) {
        Some(left) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    };
    let every = world
        .knobs
        .throttle_every
        .is_some_and(|every| world.call_number % every == 0);
    if named || every {
        world.throttled += 1;
        return ApiError {
            status: StatusCode::FORBIDDEN,
            reason: "rateLimitExceeded",
            domain: "usageLimits",
            message: "Rate Limit Exceeded".to_string(),
        }
        .into_response();
    }
    if route.project() != world.project {
        return ApiError::not_found(&format!("projects/{}", route.project())).into_response();
    }
    let mutation = route.is_mutation();
    let answer = world.answer(&route, &query, &body);
    if mutation && answer.is_ok() && world.knobs.lose_answers > 0 {
        world.knobs.lose_answers -= 1;
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backendError",
            "The service is currently unavailable (the request was carried out)",
        )
        .into_response();
    }
    match answer {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The calls the server knows, from method and path.
#[derive(Debug)]
enum Route<'a> {
    AggregatedInstances(&'a str),
    ListInstances(&'a str, &'a str),
    InsertInstance(&'a str, &'a str),
    BulkInsert(&'a str, &'a str),
    GetInstance(&'a str, &'a str, &'a str),
    DeleteInstance(&'a str, &'a str, &'a str),
    SetLabels(&'a str, &'a str, &'a str),
    SetMetadata(&'a str, &'a str, &'a str),
    ListTemplates(&'a str),
    InsertTemplate(&'a str),
    GetTemplate(&'a str, &'a str),
    DeleteTemplate(&'a str, &'a str),
    ZoneOperation(&'a str, &'a str, &'a str, bool),
    GlobalOperation(&'a str, &'a str, bool),
}

impl<'a> Route<'a> {
    fn parse(method: &Method, segments: &[&'a str]) -> Option<Route<'a>> {
        let ["compute", "v1", "projects", project, rest @ ..] = segments else {
            return None;
        };
        let project = *project;
        let get = method == Method::GET;
        let post = method == Method::POST;
        let delete = method == Method::DELETE;
        Some(match rest {
            ["aggregated", "instances"] if get => Route::AggregatedInstances(project),
            ["zones", zone, "instances"] if get => Route::ListInstances(project, zone),
            ["zones", zone, "instances"] if post => Route::InsertInstance(project, zone),
            ["zones", zone, "instances", "bulkInsert"] if post => Route::BulkInsert(project, zone),
            ["zones", zone, "instances", name] if get => Route::GetInstance(project, zone, name),
            ["zones", zone, "instances", name] if delete => {
                Route::DeleteInstance(project, zone, name)
            }
            ["zones", zone, "instances", name, "setLabels"] if post => {
                Route::SetLabels(project, zone, name)
            }
            ["zones", zone, "instances", name, "setMetadata"] if post => {
                Route::SetMetadata(project, zone, name)
            }
            ["global", "instanceTemplates"] if get => Route::ListTemplates(project),
            ["global", "instanceTemplates"] if post => Route::InsertTemplate(project),
            ["global", "instanceTemplates", name] if get => Route::GetTemplate(project, name),
            ["global", "instanceTemplates", name] if delete => Route::DeleteTemplate(project, name),
            ["zones", zone, "operations", name] if get => {
                Route::ZoneOperation(project, zone, name, false)
            }
            ["zones", zone, "operations", name, "wait"] if post => {
                Route::ZoneOperation(project, zone, name, true)
            }
            ["global", "operations", name] if get => Route::GlobalOperation(project, name, false),
            ["global", "operations", name, "wait"] if post => {
                Route::GlobalOperation(project, name, true)
            }
            _ => return None,
        })
    }

    fn project(&self) -> &'a str {
        match *self {
            Route::AggregatedInstances(p)
            | Route::ListInstances(p, _)
            | Route::InsertInstance(p, _)
            | Route::BulkInsert(p, _)
            | Route::GetInstance(p, _, _)
            | Route::DeleteInstance(p, _, _)
            | Route::SetLabels(p, _, _)
            | Route::SetMetadata(p, _, _)
            | Route::ListTemplates(p)
            | Route::InsertTemplate(p)
            | Route::GetTemplate(p, _)
            | Route::DeleteTemplate(p, _)
            | Route::ZoneOperation(p, _, _, _)
            | Route::GlobalOperation(p, _, _) => p,
        }
    }

    /// The name the call is counted under, as the provider names it.
    fn operation(&self) -> &'static str {
        match self {
            Route::AggregatedInstances(..) => "compute.instances.aggregatedList",
            Route::ListInstances(..) => "compute.instances.list",
            Route::InsertInstance(..) => "compute.instances.insert",
            Route::BulkInsert(..) => "compute.instances.bulkInsert",
            Route::GetInstance(..) => "compute.instances.get",
            Route::DeleteInstance(..) => "compute.instances.delete",
            Route::SetLabels(..) => "compute.instances.setLabels",
            Route::SetMetadata(..) => "compute.instances.setMetadata",
            Route::ListTemplates(..) => "compute.instanceTemplates.list",
            Route::InsertTemplate(..) => "compute.instanceTemplates.insert",
            Route::GetTemplate(..) => "compute.instanceTemplates.get",
            Route::DeleteTemplate(..) => "compute.instanceTemplates.delete",
            Route::ZoneOperation(_, _, _, false) => "compute.zoneOperations.get",
            Route::ZoneOperation(_, _, _, true) => "compute.zoneOperations.wait",
            Route::GlobalOperation(_, _, false) => "compute.globalOperations.get",
            Route::GlobalOperation(_, _, true) => "compute.globalOperations.wait",
        }
    }

    fn is_mutation(&self) -> bool {
        matches!(
            self,
            Route::InsertInstance(..)
                | Route::BulkInsert(..)
                | Route::DeleteInstance(..)
                | Route::SetLabels(..)
                | Route::SetMetadata(..)
                | Route::InsertTemplate(..)
                | Route::DeleteTemplate(..)
        )
    }
}

/// A fingerprint of some content, as GCE keeps one per label set and metadata.
fn fingerprint(content: &Value) -> bytes::Bytes {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    content.to_string().hash(&mut hasher);
    bytes::Bytes::copy_from_slice(&hasher.finish().to_be_bytes())
}

fn label_fingerprint(labels: &HashMap<String, String>) -> bytes::Bytes {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    fingerprint(&to_json(&sorted))
}

fn metadata_fingerprint(metadata: &Metadata) -> bytes::Bytes {
    fingerprint(&to_json(&metadata.items))
}

/// GCE's rules for resource names: RFC 1035, at most 63 characters.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"
        )))
    }
}

/// GCE's rules for labels: lowercase keys and values of at most 63 characters.
fn check_labels(labels: &HashMap<String, String>) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key.chars().all(allowed);
        let value_ok = value.len() <= 63 && value.chars().all(allowed);
        if !key_ok || !value_ok {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'resource.labels': '{key}={value}'. Label keys and values may contain only lowercase letters, digits, '-' and '_', at most 63 characters"
            )));
        }
    }
    Ok(())
}

/// GCE's rules for metadata keys and size.
fn check_metadata(metadata: Option<&Metadata>) -> Result<(), ApiError> {
    let mut total = 0;
    for item in metadata.map(|m| m.items.as_slice()).unwrap_or_default() {
        let key = item.key.as_deref().unwrap_or_default();
        let key_ok = !key.is_empty()
            && key.len() <= 128
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !key_ok {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'resource.metadata': metadata key '{key}' is not [a-zA-Z0-9-_]{{1,128}}"
            )));
        }
        total += key.len() + item.value.as_deref().map_or(0, str::len);
    }
    if total > 512 * 1024 {
        return Err(ApiError::invalid("Metadata is larger than 512 KB"));
    }
    Ok(())
}

impl World {
    fn answer(
        &mut self,
        route: &Route<'_>,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> Answer {
        let request_id = query.get("requestId").cloned();
        if route.is_mutation() {
            if let Some(id) = &request_id {
                if uuid_like(id).is_none() {
                    return Err(ApiError::invalid(format!(
                        "Invalid value for field 'requestId': '{id}'. The request id must be a valid UUID"
                    )));
                }
                // A repeated requestId answers the first call's operation and does nothing.
                if let Some(name) = self.request_ids.get(id) {
                    let stored = &self.operations[name];
                    return Ok(to_json(&stored.operation));
                }
            }
        }
        let answer = match *route {
            Route::AggregatedInstances(_) => {
                let answer = self.aggregated_list(query);
                self.settle();
                if let Some((left, name)) = self.knobs.stop_after_lists.take() {
                    if left <= 1 {
                        let instance = self.instances.iter_mut().find(|(key, _)| key.1 == name);
                        if let Some((_, instance)) = instance {
                            instance.status = Some(instance::Status::Terminated);
                        }
                    } else {
                        self.knobs.stop_after_lists = Some((left - 1, name));
                    }
                }
                answer
            }
            Route::ListInstances(_, zone) => {
                let answer = self.list_instances(zone, query);
                self.settle();
                answer
            }
            Route::InsertInstance(_, zone) => self.insert_instance(zone, parse_body(body)?),
            Route::BulkInsert(_, zone) => self.bulk_insert(zone, parse_body(body)?),
            Route::GetInstance(_, zone, name) => {
                let answer = self
                    .instances
                    .get(&(zone.to_string(), name.to_string()))
                    .map(to_json)
                    .ok_or_else(|| ApiError::not_found(&self.instance_path(zone, name)));
                self.settle();
                answer
            }
            Route::DeleteInstance(_, zone, name) => self.delete_instance(zone, name),
            Route::SetLabels(_, zone, name) => self.set_labels(zone, name, parse_body(body)?),
            Route::SetMetadata(_, zone, name) => self.set_metadata(zone, name, parse_body(body)?),
            Route::ListTemplates(_) => self.list_templates(query),
            Route::InsertTemplate(_) => self.insert_template(parse_body(body)?),
            Route::GetTemplate(_, name) => self
                .templates
                .get(name)
                .map(to_json)
                .ok_or_else(|| ApiError::not_found(&self.template_path(name))),
            Route::DeleteTemplate(_, name) => self.delete_template(name),
            Route::ZoneOperation(_, zone, name, _) => self.poll(Some(zone), name),
            Route::GlobalOperation(_, name, _) => self.poll(None, name),
        }?;
        if route.is_mutation() {
            if let (Some(id), Some(name)) = (request_id, answer["name"].as_str()) {
                self.request_ids.insert(id, name.to_string());
            }
        }
        Ok(answer)
    }

    /// One GET or list call has seen the instances in a passing state: those it was the last
    /// for move on (STAGING → RUNNING, STOPPING → TERMINATED).
    fn settle(&mut self) {
        let mut settled = Vec::new();
        for (key, left) in self.settling.iter_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                settled.push(key.clone());
            }
        }
        for key in settled {
            self.settling.remove(&key);
            if let Some(instance) = self.instances.get_mut(&key) {
                instance.status = match instance.status {
                    Some(instance::Status::Staging) => Some(instance::Status::Running),
                    Some(instance::Status::Stopping) => Some(instance::Status::Terminated),
                    ref other => other.clone(),
                };
            }
        }
    }

    fn project_url(&self) -> String {
        format!("{BASE}/projects/{}", self.project)
    }

    fn instance_path(&self, zone: &str, name: &str) -> String {
        format!("projects/{}/zones/{zone}/instances/{name}", self.project)
    }

    fn template_path(&self, name: &str) -> String {
        format!("projects/{}/global/instanceTemplates/{name}", self.project)
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A new operation, RUNNING until polled (see [`Knobs::operation_polls`]).
    fn new_operation(
        &mut self,
        zone: Option<&str>,
        kind: &str,
        target: String,
        error: Option<(&str, String)>,
        starts: Vec<(String, String)>,
    ) -> Value {
        let id = self.new_id();
        let name = format!("operation-{id}-{kind}");
        let mut operation = Operation::default();
        operation.kind = Some("compute#operation".into());
        operation.id = Some(id);
        operation.name = Some(name.clone());
        operation.operation_type = Some(kind.into());
        operation.target_link = Some(format!("{BASE}/{target}"));
        operation.status = Some(operation::Status::Pending);
        operation.progress = Some(0);
        operation.insert_time = Some("2024-01-01T00:00:00.000-07:00".into());
        operation.user = Some("fleet-test@example.iam.gserviceaccount.com".into());
        match zone {
            Some(zone) => {
                operation.zone = Some(format!("{}/zones/{zone}", self.project_url()));
                operation.self_link = Some(format!(
                    "{}/zones/{zone}/operations/{name}",
                    self.project_url()
                ));
            }
            None => {
                operation.self_link =
                    Some(format!("{}/global/operations/{name}", self.project_url()));
            }
        }
        if let Some((code, message)) = error {
            let mut detail = operation::error::Errors::default();
            detail.code = Some(code.to_string());
            detail.message = Some(message);
            let mut failure = operation::Error::default();
            failure.errors = vec![detail];
            operation.error = Some(failure);
            operation.http_error_status_code = Some(503);
            operation.http_error_message = Some("SERVICE UNAVAILABLE".into());
        }
        let polls_left = self.knobs.operation_polls;
        let value = to_json(&operation);
        self.operations.insert(
            name,
            StoredOperation {
                operation,
                polls_left,
                starts,
                removes: Vec::new(),
            },
        );
        value
    }

    /// `operations.get` and `operations.wait`: one step towards done.
    fn poll(&mut self, zone: Option<&str>, name: &str) -> Answer {
        let hang = self.knobs.operations_hang;
        // A zone operation is only found in its zone, a global one only globally.
        let Some(stored) = self.operations.get_mut(name).filter(|stored| {
            stored
                .operation
                .zone
                .as_deref()
                .and_then(|url| url.rsplit('/').next())
                == zone
        }) else {
            let scope = zone.map_or("global".to_string(), |zone| format!("zones/{zone}"));
            return Err(ApiError::not_found(&format!("{scope}/operations/{name}")));
        };
        if hang && stored.operation.status == Some(operation::Status::Pending) {
            stored.operation.status = Some(operation::Status::Running);
        }
        if stored.operation.status != Some(operation::Status::Done) && !hang {
            if stored.polls_left > 0 {
                stored.polls_left -= 1;
                stored.operation.status = Some(operation::Status::Running);
                stored.operation.progress = Some(50);
            } else {
                stored.operation.status = Some(operation::Status::Done);
                stored.operation.progress = Some(100);
                stored.operation.end_time = Some("2024-01-01T00:00:01.000-07:00".into());
                let starts = std::mem::take(&mut stored.starts);
                let removes = std::mem::take(&mut stored.removes);
                let value = to_json(&stored.operation);
                for key in starts {
                    if let Some(instance) = self.instances.get_mut(&key) {
                        if instance.status == Some(instance::Status::Provisioning) {
                            instance.status = Some(instance::Status::Staging);
                            self.settling.insert(key, SETTLING_VIEWS);
                        }
                    }
                }
                for key in removes {
                    self.instances.remove(&key);
                    self.settling.remove(&key);
                }
                return Ok(value);
            }
        }
        Ok(to_json(&stored.operation))
    }

    /// An instance as GCE keeps and lists it, from an insert body.
    fn stored_instance(&mut self, zone: &str, mut body: Instance, default_disk: &str) -> Instance {
        let name = body.name.clone().unwrap_or_default();
        let id = self.new_id();
        let project_url = self.project_url();
        body.kind = Some("compute#instance".into());
        body.id = Some(id);
        resolve_default_account(&mut body.service_accounts);
        body.creation_timestamp = Some("2024-01-01T00:00:00.000-07:00".into());
        body.zone = Some(format!("{project_url}/zones/{zone}"));
        body.self_link = Some(format!("{project_url}/zones/{zone}/instances/{name}"));
        let machine_type = body
            .machine_type
            .as_deref()
            .map(|url| url.rsplit('/').next().unwrap_or(url).to_string())
            .unwrap_or_else(|| "n1-standard-1".into());
        body.machine_type = Some(format!(
            "{project_url}/zones/{zone}/machineTypes/{machine_type}"
        ));
        body.status = Some(instance::Status::Provisioning);
        body.label_fingerprint = Some(label_fingerprint(&body.labels));
        let mut metadata = body.metadata.take().unwrap_or_default();
        metadata.kind = Some("compute#metadata".into());
        metadata.fingerprint = Some(metadata_fingerprint(&metadata));
        body.metadata = Some(metadata);
        // The boot disk becomes a disk resource: the instance keeps its URL and size, not
        // how it was made.
        let disks = std::mem::take(&mut body.disks);
        body.disks = disks
            .into_iter()
            .enumerate()
            .map(|(index, disk)| {
                let params = disk.initialize_params.clone().unwrap_or_default();
                let mut listed = AttachedDisk::default();
                listed.kind = Some("compute#attachedDisk".into());
                listed.index = Some(index as i32);
                listed.boot = disk.boot;
                listed.auto_delete = disk.auto_delete;
                listed.device_name = Some(format!("persistent-disk-{index}"));
                listed.disk_size_gb = params.disk_size_gb.or(Some(10));
                listed.source = Some(format!(
                    "{project_url}/zones/{zone}/disks/{}",
                    params.disk_name.unwrap_or_else(|| name.clone())
                ));
                listed
            })
            .collect();
        if body.disks.is_empty() {
            let mut listed = AttachedDisk::default();
            listed.boot = Some(true);
            listed.disk_size_gb = Some(10);
            listed.source = Some(format!(
                "{project_url}/zones/{zone}/disks/{name}-{default_disk}"
            ));
            body.disks = vec![listed];
        }
        let interfaces = std::mem::take(&mut body.network_interfaces);
        body.network_interfaces = interfaces
            .into_iter()
            .enumerate()
            .map(|(index, interface)| {
                let mut listed = NetworkInterface::default();
                listed.name = Some(format!("nic{index}"));
                // As GCE: references become URLs, and an auto-mode network's machine gets
                // the region's subnetwork of the same name.
                // With only a subnetwork, the network is the subnetwork's (this server has no
                // network model: it names it after the subnetwork, in its project).
                let region = zone.rsplit_once('-').map_or(zone, |(region, _)| region);
                let subnet_url = interface
                    .subnetwork
                    .as_deref()
                    .map(|subnet| resource_url(&project_url, subnet));
                let network_url = match (&interface.network, &subnet_url) {
                    (Some(network), _) => resource_url(&project_url, network),
                    (None, Some(subnet)) => {
                        let (project, name) = subnet
                            .split_once("/regions/")
                            .map(|(project, rest)| (project, rest.rsplit('/').next().unwrap_or("")))
                            .unwrap_or((&project_url, "default"));
                        format!("{project}/global/networks/{name}")
                    }
                    (None, None) => format!("{project_url}/global/networks/default"),
                };
                let subnet_url = subnet_url.unwrap_or_else(|| {
                    let short = network_url.rsplit('/').next().unwrap_or("default");
                    format!("{project_url}/regions/{region}/subnetworks/{short}")
                });
                listed.network = Some(network_url);
                listed.subnetwork = Some(subnet_url);
                listed.network_ip = Some(format!("10.142.{}.{}", (id / 250) % 250, id % 250));
                listed
            })
            .collect();
        body
    }

    /// As GCE: a subnetwork must belong to the network given with it (here: be in the same
    /// project, the one thing a reference tells).
    fn check_interfaces(&self, interfaces: &[NetworkInterface]) -> Result<(), ApiError> {
        let project_of = |reference: &str| -> String {
            reference
                .find("projects/")
                .and_then(|at| reference[at + "projects/".len()..].split('/').next())
                .unwrap_or(&self.project)
                .to_string()
        };
        for interface in interfaces {
            if let (Some(network), Some(subnet)) = (&interface.network, &interface.subnetwork) {
                if project_of(network) != project_of(subnet) {
                    return Err(ApiError::invalid(format!(
                        "Invalid value for field 'resource.networkInterfaces[0].subnetwork': '{subnet}'. Subnetwork should belong to network '{network}'"
                    )));
                }
            }
        }
        Ok(())
    }

    fn insert_instance(&mut self, zone: &str, body: Instance) -> Answer {
        let name = body.name.clone().unwrap_or_default();
        check_name(&name)?;
        self.check_interfaces(&body.network_interfaces)?;
        check_labels(&body.labels)?;
        check_metadata(body.metadata.as_ref())?;
        if let Some(machine_type) = &body.machine_type {
            if machine_type.contains("/zones/") || machine_type.starts_with("zones/") {
                let wanted = format!("zones/{zone}/machineTypes/");
                if !machine_type.contains(&wanted) {
                    return Err(ApiError::invalid(format!(
                        "Invalid value for field 'resource.machineType': '{machine_type}'. Machine type must be in zone {zone}"
                    )));
                }
            }
        }
        let key = (zone.to_string(), name.clone());
        let path = self.instance_path(zone, &name);
        if self.instances.contains_key(&key) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "alreadyExists",
                format!("The resource '{path}' already exists"),
            ));
        }
        if self.knobs.failing_names.contains(&name) {
            let message = format!(
                "The zone 'projects/{}/zones/{zone}' does not have enough resources available to fulfill the request",
                self.project
            );
            return Ok(self.new_operation(
                Some(zone),
                "insert",
                path,
                Some(("ZONE_RESOURCE_POOL_EXHAUSTED", message)),
                Vec::new(),
            ));
        }
        let stored = self.stored_instance(zone, body, "pd-standard");
        self.instances.insert(key.clone(), stored);
        Ok(self.new_operation(Some(zone), "insert", path, None, vec![key]))
    }

    fn bulk_insert(&mut self, zone: &str, body: BulkInsertInstanceResource) -> Answer {
        let properties = body
            .instance_properties
            .clone()
            .ok_or_else(|| ApiError::invalid("instanceProperties is required"))?;
        let names: Vec<String> = {
            let mut names: Vec<String> = body.per_instance_properties.keys().cloned().collect();
            names.sort();
            names
        };
        if names.is_empty() || body.count != Some(names.len() as i64) {
            return Err(ApiError::invalid(
                "count must equal the number of perInstanceProperties",
            ));
        }
        check_labels(&properties.labels)?;
        check_metadata(properties.metadata.as_ref())?;
        self.check_interfaces(&properties.network_interfaces)?;
        let target = format!("projects/{}/zones/{zone}/instances", self.project);
        if self.knobs.rate_limited_bulk_operations > 0 {
            self.knobs.rate_limited_bulk_operations -= 1;
            return Ok(self.new_operation(
                Some(zone),
                "bulkInsert",
                target,
                Some((
                    "RATE_LIMIT_EXCEEDED",
                    "Rate limit exceeded for the zone's instance creations".to_string(),
                )),
                Vec::new(),
            ));
        }
        for name in &names {
            check_name(name)?;
            if self
                .instances
                .contains_key(&(zone.to_string(), name.clone()))
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "alreadyExists",
                    format!(
                        "The resource '{}' already exists",
                        self.instance_path(zone, name)
                    ),
                ));
            }
        }
        let mut starts = Vec::new();
        for name in &names {
            let mut instance = Instance::default();
            instance.name = Some(name.clone());
            instance.description = properties.description.clone();
            instance.machine_type = properties
                .machine_type
                .as_ref()
                .map(|machine_type| format!("zones/{zone}/machineTypes/{machine_type}"));
            instance.labels = properties.labels.clone();
            instance.metadata = properties.metadata.clone();
            instance.disks = properties.disks.clone();
            instance.network_interfaces = properties.network_interfaces.clone();
            instance.service_accounts = properties.service_accounts.clone();
            let stored = self.stored_instance(zone, instance, "pd-standard");
            let key = (zone.to_string(), name.clone());
            self.instances.insert(key.clone(), stored);
            starts.push(key);
        }
        Ok(self.new_operation(Some(zone), "bulkInsert", target, None, starts))
    }

    /// The VM is STOPPING until the operation is done, then gone; its name stays taken
    /// until then.
    fn delete_instance(&mut self, zone: &str, name: &str) -> Answer {
        let path = self.instance_path(zone, name);
        let key = (zone.to_string(), name.to_string());
        let Some(instance) = self.instances.get_mut(&key) else {
            return Err(ApiError::not_found(&path));
        };
        instance.status = Some(instance::Status::Stopping);
        self.settling.remove(&key);
        let answer = self.new_operation(Some(zone), "delete", path, None, Vec::new());
        if let Some(name) = answer["name"].as_str() {
            if let Some(stored) = self.operations.get_mut(name) {
                stored.removes.push(key);
            }
        }
        Ok(answer)
    }

    fn set_labels(&mut self, zone: &str, name: &str, body: InstancesSetLabelsRequest) -> Answer {
        let path = self.instance_path(zone, name);
        check_labels(&body.labels)?;
        let Some(instance) = self
            .instances
            .get_mut(&(zone.to_string(), name.to_string()))
        else {
            return Err(ApiError::not_found(&path));
        };
        if body.label_fingerprint != instance.label_fingerprint {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "conditionNotMet",
                "Labels fingerprint either invalid or resource labels have changed",
            ));
        }
        instance.labels = body.labels;
        instance.label_fingerprint = Some(label_fingerprint(&instance.labels));
        Ok(self.new_operation(Some(zone), "setLabels", path, None, Vec::new()))
    }

    fn set_metadata(&mut self, zone: &str, name: &str, body: Metadata) -> Answer {
        let path = self.instance_path(zone, name);
        check_metadata(Some(&body))?;
        let Some(instance) = self
            .instances
            .get_mut(&(zone.to_string(), name.to_string()))
        else {
            return Err(ApiError::not_found(&path));
        };
        let current = instance.metadata.get_or_insert_with(Metadata::default);
        if body.fingerprint != current.fingerprint {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "conditionNotMet",
                "Supplied fingerprint does not match current metadata fingerprint.",
            ));
        }
        current.items = body.items;
        current.fingerprint = Some(metadata_fingerprint(current));
        Ok(self.new_operation(Some(zone), "setMetadata", path, None, Vec::new()))
    }

    fn insert_template(&mut self, mut body: InstanceTemplate) -> Answer {
        let name = body.name.clone().unwrap_or_default();
        check_name(&name)?;
        let properties = body
            .properties
            .as_ref()
            .ok_or_else(|| ApiError::invalid("properties is required"))?;
        check_labels(&properties.labels)?;
        check_metadata(properties.metadata.as_ref())?;
        self.check_interfaces(&properties.network_interfaces)?;
        let path = self.template_path(&name);
        if self.templates.contains_key(&name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "alreadyExists",
                format!("The resource '{path}' already exists"),
            ));
        }
        let id = self.new_id();
        if let Some(properties) = body.properties.as_mut() {
            resolve_default_account(&mut properties.service_accounts);
        }
        body.kind = Some("compute#instanceTemplate".into());
        body.id = Some(id);
        body.creation_timestamp = Some("2024-01-01T00:00:00.000-07:00".into());
        body.self_link = Some(format!("{BASE}/{path}"));
        self.templates.insert(name, body);
        Ok(self.new_operation(None, "insert", path, None, Vec::new()))
    }

    fn delete_template(&mut self, name: &str) -> Answer {
        let path = self.template_path(name);
        if self.templates.remove(name).is_none() {
            return Err(ApiError::not_found(&path));
        }
        Ok(self.new_operation(None, "delete", path, None, Vec::new()))
    }

    /// The page size and the position a page token stands for.
    fn page(&self, query: &HashMap<String, String>) -> Result<(usize, usize), ApiError> {
        let size = match query.get("maxResults") {
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|size| (1..=500).contains(size))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Invalid value for field 'maxResults': '{text}'. Must be between 0 and 500"
                    ))
                })?,
            None => 500,
        };
        let size = self.knobs.page_cap.map_or(size, |cap| size.min(cap));
        let start = match query.get("pageToken").filter(|token| !token.is_empty()) {
            Some(token) => token
                .strip_prefix("page-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| ApiError::invalid(format!("Invalid page token '{token}'")))?,
            None => 0,
        };
        Ok((size, start))
    }

    fn filtered_instances(
        &self,
        zone: Option<&str>,
        query: &HashMap<String, String>,
    ) -> Result<Vec<(String, Instance)>, ApiError> {
        let filter = match query.get("filter").filter(|f| !f.trim().is_empty()) {
            Some(text) => Some(filter::parse(text).map_err(ApiError::invalid)?),
            None => None,
        };
        Ok(self
            .instances
            .iter()
            .filter(|((instance_zone, _), _)| zone.is_none_or(|zone| zone == instance_zone))
            .filter(|(_, instance)| {
                filter
                    .as_ref()
                    .is_none_or(|filter| filter.matches(&|field| instance_field(instance, field)))
            })
            .map(|((zone, _), instance)| (zone.clone(), instance.clone()))
            .collect())
    }

    fn aggregated_list(&self, query: &HashMap<String, String>) -> Answer {
        let (size, start) = self.page(query)?;
        let all = self.filtered_instances(None, query)?;
        let end = (start + size).min(all.len());
        let mut items: HashMap<String, InstancesScopedList> = KNOWN_ZONES
            .iter()
            .map(|zone| (format!("zones/{zone}"), no_results_scope()))
            .collect();
        for (zone, instance) in &all[start.min(end)..end] {
            let scope = items.entry(format!("zones/{zone}")).or_default();
            scope.warning = None;
            scope.instances.push(instance.clone());
        }
        for zone in &self.knobs.unreachable {
            items.insert(format!("zones/{zone}"), unreachable_scope(zone));
        }
        let mut page = InstanceAggregatedList::default();
        page.kind = Some("compute#instanceAggregatedList".into());
        page.id = Some(format!("projects/{}/aggregated/instances", self.project));
        page.self_link = Some(format!("{}/aggregated/instances", self.project_url()));
        page.items = items;
        page.unreachables = self
            .knobs
            .unreachable
            .iter()
            .map(|zone| format!("zones/{zone}"))
            .collect();
        if end < all.len() {
            page.next_page_token = Some(format!("page-{end}"));
        }
        Ok(to_json(&page))
    }

    fn list_instances(&self, zone: &str, query: &HashMap<String, String>) -> Answer {
        let (size, start) = self.page(query)?;
        let all = self.filtered_instances(Some(zone), query)?;
        let end = (start + size).min(all.len());
        let mut page = InstanceList::default();
        page.kind = Some("compute#instanceList".into());
        page.items = all[start.min(end)..end]
            .iter()
            .map(|(_, instance)| instance.clone())
            .collect();
        if end < all.len() {
            page.next_page_token = Some(format!("page-{end}"));
        }
        Ok(to_json(&page))
    }

    fn list_templates(&self, query: &HashMap<String, String>) -> Answer {
        let (size, start) = self.page(query)?;
        let filter = match query.get("filter").filter(|f| !f.trim().is_empty()) {
            Some(text) => Some(filter::parse(text).map_err(ApiError::invalid)?),
            None => None,
        };
        let all: Vec<&InstanceTemplate> = self
            .templates
            .values()
            .filter(|template| {
                filter
                    .as_ref()
                    .is_none_or(|filter| filter.matches(&|field| template_field(template, field)))
            })
            .collect();
        let end = (start + size).min(all.len());
        let mut page = InstanceTemplateList::default();
        page.kind = Some("compute#instanceTemplateList".into());
        page.items = all[start.min(end)..end]
            .iter()
            .map(|t| (*t).clone())
            .collect();
        if end < all.len() {
            page.next_page_token = Some(format!("page-{end}"));
        }
        Ok(to_json(&page))
    }
}

/// A scope of an aggregated list with nothing in it, as GCE reports every empty zone.
fn no_results_scope() -> InstancesScopedList {
    serde_json::from_value(json!({
        "warning": {
            "code": "NO_RESULTS_ON_PAGE",
            "message": "There are no results for scope on this page.",
            "data": [{"key": "scope", "value": "zones"}],
        }
    }))
    .expect("a scoped list parses")
}

fn unreachable_scope(zone: &str) -> InstancesScopedList {
    serde_json::from_value(json!({
        "warning": {
            "code": "UNREACHABLE",
            "message": format!("The resource 'zones/{zone}' is unreachable right now."),
        }
    }))
    .expect("a scoped list parses")
}

fn uuid_like(id: &str) -> Option<()> {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    (lengths == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|group| group.chars().all(|c| c.is_ascii_hexdigit())))
    .then_some(())
}

fn instance_field(instance: &Instance, field: &str) -> Option<String> {
    match field {
        "name" => instance.name.clone(),
        "status" => instance
            .status
            .as_ref()
            .and_then(|status| status.name())
            .map(str::to_string),
        "zone" => instance.zone.clone(),
        _ => field
            .strip_prefix("labels.")
            .and_then(|key| instance.labels.get(key).cloned()),
    }
}

fn template_field(template: &InstanceTemplate, field: &str) -> Option<String> {
    match field {
        "name" => template.name.clone(),
        _ => field.strip_prefix("properties.labels.").and_then(|key| {
            template
                .properties
                .as_ref()
                .and_then(|properties| properties.labels.get(key).cloned())
        }),
    }
}

/// GCE list filters, the AIP-160 subset fleet sends: comparisons `field = "value"`,
/// `field != "value"`, `field:*`, grouped with parentheses and joined with `AND`, `OR` or
/// juxtaposition (an implicit `AND`).
mod filter {
    #[derive(Debug, Clone, PartialEq)]
    enum Token {
        Open,
        Close,
        And,
        Or,
        Equals,
        NotEquals,
        Has,
        Text(String),
    }

    /// A parsed filter.
    #[derive(Debug)]
    pub(super) enum Filter {
        Compare {
            field: String,
            equal: bool,
            value: String,
        },
        Present(String),
        All(Vec<Filter>),
        Any(Vec<Filter>),
    }

    impl Filter {
        pub(super) fn matches(&self, field: &dyn Fn(&str) -> Option<String>) -> bool {
            match self {
                Filter::Compare {
                    field: name,
                    equal,
                    value,
                } => (field(name).as_deref() == Some(value.as_str())) == *equal,
                Filter::Present(name) => field(name).is_some(),
                Filter::All(parts) => parts.iter().all(|part| part.matches(field)),
                Filter::Any(parts) => parts.iter().any(|part| part.matches(field)),
            }
        }
    }

    fn tokens(text: &str) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                ' ' | '\t' | '\n' => {
                    chars.next();
                }
                '(' => {
                    chars.next();
                    tokens.push(Token::Open);
                }
                ')' => {
                    chars.next();
                    tokens.push(Token::Close);
                }
                '=' => {
                    chars.next();
                    tokens.push(Token::Equals);
                }
                ':' => {
                    chars.next();
                    tokens.push(Token::Has);
                }
                '!' => {
                    chars.next();
                    if chars.next() != Some('=') {
                        return Err("expected `!=`".into());
                    }
                    tokens.push(Token::NotEquals);
                }
                '"' | '\'' => {
                    let quote = c;
                    chars.next();
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            None => return Err("unterminated string".into()),
                            Some('\\') => value.push(chars.next().ok_or("dangling escape")?),
                            Some(c) if c == quote => break,
                            Some(c) => value.push(c),
                        }
                    }
                    tokens.push(Token::Text(value));
                }
                _ => {
                    let mut word = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() || "()=!:\"'".contains(c) {
                            break;
                        }
                        word.push(c);
                        chars.next();
                    }
                    tokens.push(match word.as_str() {
                        "AND" => Token::And,
                        "OR" => Token::Or,
                        _ => Token::Text(word),
                    });
                }
            }
        }
        Ok(tokens)
    }

    struct Parser {
        tokens: Vec<Token>,
        at: usize,
    }

    impl Parser {
        fn peek(&self) -> Option<&Token> {
            self.tokens.get(self.at)
        }

        fn next(&mut self) -> Option<Token> {
            let token = self.tokens.get(self.at).cloned();
            self.at += 1;
            token
        }

        fn any(&mut self) -> Result<Filter, String> {
            let mut parts = vec![self.all()?];
            while self.peek() == Some(&Token::Or) {
                self.next();
                parts.push(self.all()?);
            }
            Ok(if parts.len() == 1 {
                parts.remove(0)
            } else {
                Filter::Any(parts)
            })
        }

        fn all(&mut self) -> Result<Filter, String> {
            let mut parts = vec![self.term()?];
            loop {
                match self.peek() {
                    Some(Token::And) => {
                        self.next();
                        parts.push(self.term()?);
                    }
                    Some(Token::Open) | Some(Token::Text(_)) => parts.push(self.term()?),
                    _ => break,
                }
            }
            Ok(if parts.len() == 1 {
                parts.remove(0)
            } else {
                Filter::All(parts)
            })
        }

        fn term(&mut self) -> Result<Filter, String> {
            match self.next() {
                Some(Token::Open) => {
                    let inner = self.any()?;
                    match self.next() {
                        Some(Token::Close) => Ok(inner),
                        other => Err(format!("expected `)`, found {other:?}")),
                    }
                }
                Some(Token::Text(field)) => match self.next() {
                    Some(Token::Equals) | Some(Token::NotEquals)
                        if matches!(self.peek(), Some(Token::Text(_))) =>
                    {
                        let equal = self.tokens[self.at - 1] == Token::Equals;
                        let Some(Token::Text(value)) = self.next() else {
                            unreachable!("peeked a value")
                        };
                        Ok(Filter::Compare {
                            field,
                            equal,
                            value,
                        })
                    }
                    Some(Token::Has) => match self.next() {
                        Some(Token::Text(star)) if star == "*" => Ok(Filter::Present(field)),
                        other => Err(format!("only `field:*` is supported, found {other:?}")),
                    },
                    other => Err(format!(
                        "expected a comparison after `{field}`, found {other:?}"
                    )),
                },
                other => Err(format!("expected a comparison, found {other:?}")),
            }
        }
    }

    /// Parses a filter expression.
    pub(super) fn parse(text: &str) -> Result<Filter, String> {
        let mut parser = Parser {
            tokens: tokens(text)
                .map_err(|e| format!("Invalid list filter expression '{text}': {e}"))?,
            at: 0,
        };
        let filter = parser
            .any()
            .map_err(|e| format!("Invalid list filter expression '{text}': {e}"))?;
        if parser.at != parser.tokens.len() {
            return Err(format!(
                "Invalid list filter expression '{text}': trailing input"
            ));
        }
        Ok(filter)
    }

    #[test]
    fn filters_fleet_sends() {
        let labels = |field: &str| match field {
            "labels.fleet" => Some("ci".to_string()),
            "name" => Some("b".to_string()),
            _ => None,
        };
        assert!(parse("labels.fleet = \"ci\"").unwrap().matches(&labels));
        assert!(!parse("labels.fleet = \"cd\"").unwrap().matches(&labels));
        assert!(parse("(name = \"a\") OR (name = \"b\")")
            .unwrap()
            .matches(&labels));
        assert!(!parse("(name = \"a\") OR (name = \"c\")")
            .unwrap()
            .matches(&labels));
        assert!(parse("(labels.fleet = \"ci\") (name != \"a\")")
            .unwrap()
            .matches(&labels));
        assert!(parse("labels.fleet:*").unwrap().matches(&labels));
        assert!(parse("name = ").is_err());
    }
}

/// A reference as GCE stores it: a URL; relative paths are in the request's project,
/// `projects/…` paths in the project they name (a shared VPC's host project).
fn resource_url(project_url: &str, reference: &str) -> String {
    if reference.starts_with("https://") {
        reference.to_string()
    } else if reference.starts_with("projects/") {
        format!("{BASE}/{reference}")
    } else {
        format!("{project_url}/{reference}")
    }
}

/// The project number of the server's project, as the default account's email carries it.
pub(crate) const PROJECT_NUMBER: &str = "123456789012";

/// GCE stores the email `default` stands for: the project's Compute Engine default account.
fn resolve_default_account(accounts: &mut [google_cloud_compute_v1::model::ServiceAccount]) {
    for account in accounts {
        if account.email.as_deref() == Some("default") {
            account.email = Some(format!(
                "{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
            ));
        }
    }
}
