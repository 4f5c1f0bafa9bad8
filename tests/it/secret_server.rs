//! A stateful Secret Manager REST test server, for the GCP provider's and the GCE watcher's
//! tests.
//!
//! No public Secret Manager emulator exists, so this one speaks the subset of the v1 REST API
//! fleet and the watcher use: `secrets` create / get / patch (labels) / delete, `addVersion`,
//! and `versions/{version}:access` (a number or `latest`). Request and response bodies are the
//! client crate's own model types (`google_cloud_secretmanager_v1::model::*`) through serde, so
//! what the server accepts and answers is what the real client sends and parses.
//!
//! In: HTTP on `127.0.0.1:PORT` ([`SecretServer::endpoint`]), and knobs set through the
//! in-process handle: errors on demand for the next calls of an operation (404, 429 with or
//! without `Retry-After`), and the bearer token `access` requires (as a machine's service
//! account sends it). Out: answers shaped like Secret Manager's (409 for a secret that exists,
//! 404 for one that does not, errors as `google.rpc.Status` JSON), the project's secrets with
//! their labels and versions, and counters of every call received, by operation
//! (`secretmanager.secrets.create`, …).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use google_cloud_secretmanager_v1::model::{
    secret_version, AccessSecretVersionResponse, Secret, SecretPayload, SecretVersion,
};
use serde_json::{json, Value};

use crate::loopback::Loopback;

/// One secret as the server holds it.
#[derive(Debug, Clone)]
pub(crate) struct StoredSecret {
    pub(crate) secret: Secret,
    /// Every version's value, the first at index 0 (version 1).
    pub(crate) versions: Vec<String>,
}

/// An error to answer instead of carrying a call out.
#[derive(Debug, Clone)]
struct Injected {
    status: StatusCode,
    retry_after: Option<u32>,
}

#[derive(Debug, Default)]
struct World {
    project: String,
    secrets: BTreeMap<String, StoredSecret>,
    calls: BTreeMap<String, u64>,
    /// Errors answered to the next calls of an operation, in order.
    inject: BTreeMap<String, Vec<Injected>>,
    /// The bearer token `access` requires, when set.
    token: Option<String>,
}

/// A running server. Dropping it stops it.
pub(crate) struct SecretServer {
    server: Loopback,
    world: Arc<Mutex<World>>,
}

impl SecretServer {
    /// Starts a server for `project` on 127.0.0.1 with a free port.
    pub(crate) fn start(project: &str) -> SecretServer {
        let world = Arc::new(Mutex::new(World {
            project: project.to_string(),
            ..World::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(world.clone());
        SecretServer {
            server: Loopback::serve(app),
            world,
        }
    }

    /// `http://127.0.0.1:PORT`, for `FLEET_GCP_SECRETS_ENDPOINT`.
    pub(crate) fn endpoint(&self) -> String {
        self.server.url()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("world lock")
    }

    /// Calls received, by operation (failed ones included).
    pub(crate) fn calls(&self) -> BTreeMap<String, u64> {
        self.world().calls.clone()
    }

    /// Forgets the counters.
    pub(crate) fn reset_calls(&self) {
        self.world().calls.clear();
    }

    /// Every secret, by its resource name.
    pub(crate) fn secrets(&self) -> BTreeMap<String, StoredSecret> {
        self.world().secrets.clone()
    }

    /// Answers the next call of `operation` with `status` (and a `Retry-After` header of that
    /// many seconds, if given) instead of carrying it out.
    pub(crate) fn fail_next(&self, operation: &str, status: u16, retry_after: Option<u32>) {
        self.world()
            .inject
            .entry(operation.to_string())
            .or_default()
            .push(Injected {
                status: StatusCode::from_u16(status).expect("an HTTP status"),
                retry_after,
            });
    }

    /// `access` answers only requests carrying `Authorization: Bearer TOKEN` from now on.
    pub(crate) fn require_token(&self, token: &str) {
        self.world().token = Some(token.to_string());
    }

    /// Sets a secret's value out of band: a new version of it, made if missing.
    pub(crate) fn put(&self, resource: &str, value: &str) {
        let mut world = self.world();
        let stored = world
            .secrets
            .entry(resource.to_string())
            .or_insert_with(|| StoredSecret {
                secret: Secret::new().set_name(resource),
                versions: Vec::new(),
            });
        stored.versions.push(value.to_string());
    }

    /// Deletes a secret out of band.
    pub(crate) fn remove(&self, resource: &str) {
        self.world().secrets.remove(resource);
    }
}

/// An error in `google.rpc.Status` JSON, as Secret Manager answers.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        _ => "INTERNAL",
    };
    let body =
        json!({"error": {"code": status.as_u16(), "message": message.into(), "status": name}});
    (status, axum::Json(body)).into_response()
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("model types serialize")
}

/// Secret Manager's rule for a secret id.
fn valid_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Label keys and values as Secret Manager takes them: lowercase, digits, `_` and `-`, at
/// most 63 characters, keys starting with a letter.
fn valid_labels(labels: &HashMap<String, String>) -> bool {
    let ok = |text: &str| {
        text.len() <= 63
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    labels.iter().all(|(key, value)| {
        key.starts_with(|c: char| c.is_ascii_lowercase()) && ok(key) && ok(value)
    })
}

async fn handle(
    State(world): State<Arc<Mutex<World>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let Some(rest) = path.strip_prefix("/v1/") else {
        return error(StatusCode::NOT_FOUND, format!("no such method: {path}"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    // projects/P/secrets[/ID[:addVersion]][/versions/V:access]
    let (project, id, tail) = match segments[..] {
        ["projects", project, "secrets"] => (project, None, None),
        ["projects", project, "secrets", id] => (project, Some(id), None),
        ["projects", project, "secrets", id, "versions", version] => {
            (project, Some(id), Some(version))
        }
        _ => return error(StatusCode::NOT_FOUND, format!("no such method: {path}")),
    };
    let operation = match (&method, id, tail) {
        (&Method::POST, None, None) => "secretmanager.secrets.create",
        (&Method::POST, Some(id), None) if id.ends_with(":addVersion") => {
            "secretmanager.secrets.addVersion"
        }
        (&Method::GET, Some(_), None) => "secretmanager.secrets.get",
        (&Method::PATCH, Some(_), None) => "secretmanager.secrets.patch",
        (&Method::DELETE, Some(_), None) => "secretmanager.secrets.delete",
        (&Method::GET, Some(_), Some(version)) if version.ends_with(":access") => {
            "secretmanager.versions.access"
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no such method: {method} {path}"),
            )
        }
    };
    let mut world = world.lock().expect("world lock");
    *world.calls.entry(operation.to_string()).or_default() += 1;
    if let Some(queue) = world.inject.get_mut(operation) {
        if !queue.is_empty() {
            let injected = queue.remove(0);
            let mut response = error(injected.status, "injected by the test");
            if let Some(seconds) = injected.retry_after {
                response.headers_mut().insert(
                    "retry-after",
                    seconds.to_string().parse().expect("a header value"),
                );
            }
            return response;
        }
    }
    if project != world.project {
        return error(
            StatusCode::NOT_FOUND,
            format!("project {project} not found"),
        );
    }
    let parent = format!("projects/{project}/secrets");
    match operation {
        "secretmanager.secrets.create" => {
            let Some(id) = query.get("secretId") else {
                return error(StatusCode::BAD_REQUEST, "secretId is required");
            };
            if !valid_id(id) {
                return error(StatusCode::BAD_REQUEST, format!("invalid secret id {id}"));
            }
            let Ok(mut secret) = serde_json::from_slice::<Secret>(&body) else {
                return error(StatusCode::BAD_REQUEST, "invalid Secret");
            };
            if secret.replication.is_none() {
                return error(StatusCode::BAD_REQUEST, "replication is required");
            }
            if !valid_labels(&secret.labels) {
                return error(StatusCode::BAD_REQUEST, "invalid labels");
            }
            let name = format!("{parent}/{id}");
            if world.secrets.contains_key(&name) {
                return error(
                    StatusCode::CONFLICT,
                    format!("Secret [{name}] already exists."),
                );
            }
            secret.name = name.clone();
            world.secrets.insert(
                name,
                StoredSecret {
                    secret: secret.clone(),
                    versions: Vec::new(),
                },
            );
            axum::Json(to_json(&secret)).into_response()
        }
        "secretmanager.secrets.addVersion" => {
            let id = id.unwrap_or_default().trim_end_matches(":addVersion");
            let name = format!("{parent}/{id}");
            let payload = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|body| {
                    serde_json::from_value::<SecretPayload>(body["payload"].clone()).ok()
                });
            let Some(payload) = payload else {
                return error(StatusCode::BAD_REQUEST, "payload is required");
            };
            let Some(stored) = world.secrets.get_mut(&name) else {
                return error(StatusCode::NOT_FOUND, format!("Secret [{name}] not found."));
            };
            let Ok(value) = String::from_utf8(payload.data.to_vec()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the test server keeps UTF-8 values",
                );
            };
            stored.versions.push(value);
            let version = SecretVersion::new()
                .set_name(format!("{name}/versions/{}", stored.versions.len()))
                .set_state(secret_version::State::Enabled);
            axum::Json(to_json(&version)).into_response()
        }
        "secretmanager.secrets.get" => {
            let name = format!("{parent}/{}", id.unwrap_or_default());
            match world.secrets.get(&name) {
                Some(stored) => axum::Json(to_json(&stored.secret)).into_response(),
                None => error(StatusCode::NOT_FOUND, format!("Secret [{name}] not found.")),
            }
        }
        "secretmanager.secrets.patch" => {
            let name = format!("{parent}/{}", id.unwrap_or_default());
            if query.get("updateMask").map(String::as_str) != Some("labels") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the test server patches labels only",
                );
            }
            let Ok(patch) = serde_json::from_slice::<Secret>(&body) else {
                return error(StatusCode::BAD_REQUEST, "invalid Secret");
            };
            if !valid_labels(&patch.labels) {
                return error(StatusCode::BAD_REQUEST, "invalid labels");
            }
            let Some(stored) = world.secrets.get_mut(&name) else {
                return error(StatusCode::NOT_FOUND, format!("Secret [{name}] not found."));
            };
            stored.secret.labels = patch.labels;
            axum::Json(to_json(&stored.secret)).into_response()
        }
        "secretmanager.secrets.delete" => {
            let name = format!("{parent}/{}", id.unwrap_or_default());
            match world.secrets.remove(&name) {
                Some(_) => axum::Json(json!({})).into_response(),
                None => error(StatusCode::NOT_FOUND, format!("Secret [{name}] not found.")),
            }
        }
        _ => {
            if let Some(token) = &world.token {
                let sent = headers
                    .get("authorization")
                    .and_then(|value| value.to_str().ok());
                if sent != Some(format!("Bearer {token}").as_str()) {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "Request had invalid authentication credentials.",
                    );
                }
            }
            let name = format!("{parent}/{}", id.unwrap_or_default());
            let version = tail.unwrap_or_default().trim_end_matches(":access");
            let Some(stored) = world.secrets.get(&name) else {
                return error(StatusCode::NOT_FOUND, format!("Secret [{name}] not found."));
            };
            let number = match version {
                "latest" => stored.versions.len(),
                number => number.parse().unwrap_or(0),
            };
            let Some(value) = number.checked_sub(1).and_then(|at| stored.versions.get(at)) else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("Secret Version [{name}/versions/{version}] not found."),
                );
            };
            let answer = AccessSecretVersionResponse::new()
                .set_name(format!("{name}/versions/{number}"))
                .set_payload(SecretPayload::new().set_data(value.clone().into_bytes()));
            axum::Json(to_json(&answer)).into_response()
        }
    }
}
