//! A loopback test server that plays the part of GitLab's REST API (v4) that `fleet ci`
//! uses, from GitLab's documentation: `GET /user`, merge-request notes (`GET` paginated with
//! `page`/`per_page` and `X-Next-Page` or only `Link`, `POST`, `PUT .../notes/:note_id`) and
//! `GET /projects/:id/repository/commits/:sha/merge_requests`.
//!
//! In: HTTP on `127.0.0.1:PORT/api/v4` ([`GitLabServer::api_url`]) and knobs through the
//! handle: the accepted token, a read-only token (403 on writes), answers to give the next
//! requests (429 with `Retry-After`, 5xx), a page size, Link-only pagination. Out: notes kept
//! per merge request, JSON shaped like GitLab's, and every request recorded (method, path,
//! query, `PRIVATE-TOKEN`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::loopback::Loopback;

/// The project the server knows.
pub(crate) const PROJECT: &str = "42";
/// The merge request the server knows (more with [`GitLabServer::add_merge_request`]).
pub(crate) const MERGE_REQUEST: u64 = 7;
/// The id of the user the accepted token belongs to.
pub(crate) const FLEET_USER: u64 = 1001;

/// One request the server received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: BTreeMap<String, String>,
    pub(crate) token: Option<String>,
}

impl Recorded {
    /// `GET /api/v4/user`, without the query.
    pub(crate) fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A note as the server keeps it.
#[derive(Debug, Clone)]
pub(crate) struct StoredNote {
    pub(crate) id: u64,
    pub(crate) body: String,
    pub(crate) author: u64,
}

#[derive(Debug, Default)]
struct Server {
    token: String,
    read_only_token: Option<String>,
    /// Notes by merge request, oldest first.
    notes: BTreeMap<u64, Vec<StoredNote>>,
    next_note: u64,
    /// Merge requests by commit SHA: (iid, state).
    commits: BTreeMap<String, Vec<(u64, String)>>,
    /// Answers for the next requests, whatever they ask: status and `Retry-After`.
    next_answers: VecDeque<(u16, Option<u64>)>,
    /// Answer every request with this status.
    always: Option<u16>,
    /// Largest page served, whatever `per_page` asks.
    page_cap: Option<usize>,
    /// Paginate with `Link` only, without `X-Next-Page`.
    link_only: bool,
    requests: Vec<Recorded>,
}

/// A running server; stops when dropped.
pub(crate) struct GitLabServer {
    state: Arc<Mutex<Server>>,
    loopback: Loopback,
}

impl GitLabServer {
    /// Starts a server that accepts `token` and knows project [`PROJECT`] with merge request
    /// [`MERGE_REQUEST`].
    pub(crate) fn start(token: &str) -> GitLabServer {
        let mut server = Server {
            token: token.to_string(),
            next_note: 500,
            ..Server::default()
        };
        server.notes.insert(MERGE_REQUEST, Vec::new());
        let state = Arc::new(Mutex::new(server));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        GitLabServer {
            state,
            loopback: Loopback::serve(app),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Server> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `http://127.0.0.1:PORT/api/v4`.
    pub(crate) fn api_url(&self) -> String {
        format!("{}/api/v4", self.loopback.url())
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Forgets the requests so far.
    pub(crate) fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The notes of a merge request, oldest first.
    pub(crate) fn notes(&self, iid: u64) -> Vec<StoredNote> {
        self.lock().notes.get(&iid).cloned().unwrap_or_default()
    }

    /// Adds a note written by `author`; its id.
    pub(crate) fn add_note(&self, iid: u64, author: u64, body: &str) -> u64 {
        let mut server = self.lock();
        server.next_note += 1;
        let id = server.next_note;
        server.notes.entry(iid).or_default().push(StoredNote {
            id,
            body: body.to_string(),
            author,
        });
        id
    }

    /// Adds a merge request that `commit` belongs to.
    pub(crate) fn add_merge_request(&self, commit: &str, iid: u64, state: &str) {
        let mut server = self.lock();
        server.notes.entry(iid).or_default();
        server
            .commits
            .entry(commit.to_string())
            .or_default()
            .push((iid, state.to_string()));
    }

    /// A second token of the same user that may read but not write (403 on POST and PUT).
    pub(crate) fn set_read_only_token(&self, token: &str) {
        self.lock().read_only_token = Some(token.to_string());
    }

    /// Answers the next request with `status` (and `Retry-After: seconds`).
    pub(crate) fn answer_next(&self, status: u16, retry_after: Option<u64>) {
        self.lock().next_answers.push_back((status, retry_after));
    }

    /// Answers every request with `status`.
    pub(crate) fn answer_always(&self, status: u16) {
        self.lock().always = Some(status);
    }

    /// Serves at most `size` notes a page.
    pub(crate) fn set_page_cap(&self, size: usize) {
        self.lock().page_cap = Some(size);
    }

    /// Paginates with the `Link` header only.
    pub(crate) fn set_link_only(&self, on: bool) {
        self.lock().link_only = on;
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

async fn handle(
    State(state): State<Arc<Mutex<Server>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut server = state.lock().unwrap_or_else(|p| p.into_inner());
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let token = headers
        .get("private-token")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    server.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: query.clone(),
        token: token.clone(),
    });
    if let Some(status) = server.always {
        return error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "answer chosen by the test",
        );
    }
    if let Some((status, retry_after)) = server.next_answers.pop_front() {
        let mut response = error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "answer chosen by the test",
        );
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                "retry-after",
                seconds.to_string().parse().expect("header value"),
            );
        }
        return response;
    }
    let read_only = token.is_some() && token == server.read_only_token;
    if token.as_deref() != Some(server.token.as_str()) && !read_only {
        return error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    }
    let path = uri.path().to_string();
    let Some(rest) = path.strip_prefix("/api/v4/") else {
        return error(StatusCode::NOT_FOUND, "404 Not Found");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["user"]) => {
            axum::Json(json!({ "id": FLEET_USER, "username": "project_42_bot" })).into_response()
        }
        (_, ["projects", project, ..]) if *project != PROJECT => {
            error(StatusCode::NOT_FOUND, "404 Project Not Found")
        }
        (Method::GET, ["projects", _, "repository", "commits", sha, "merge_requests"]) => {
            let list: Vec<Value> = server
                .commits
                .get(*sha)
                .into_iter()
                .flatten()
                .map(|(iid, state)| {
                    json!({
                        "id": 90000 + iid,
                        "iid": iid,
                        "project_id": 42,
                        "state": state,
                        "sha": format!("{sha}-head"),
                        "merge_commit_sha": if state == "merged" { Value::from(*sha) } else { Value::Null },
                        "squash_commit_sha": Value::Null,
                    })
                })
                .collect();
            axum::Json(Value::Array(list)).into_response()
        }
        (method, ["projects", _, "merge_requests", iid, "notes", rest @ ..]) => {
            let Some(iid) = iid
                .parse::<u64>()
                .ok()
                .filter(|iid| server.notes.contains_key(iid))
            else {
                return error(StatusCode::NOT_FOUND, "404 Not found");
            };
            if method != Method::GET && read_only {
                return error(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            notes(&mut server, iid, &method, rest, &query, &body, &uri)
        }
        _ => error(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}

fn note_json(note: &StoredNote) -> Value {
    json!({
        "id": note.id,
        "type": Value::Null,
        "body": note.body,
        "author": { "id": note.author, "username": format!("user{}", note.author) },
        "system": false,
        "noteable_type": "MergeRequest",
    })
}

fn notes(
    server: &mut Server,
    iid: u64,
    method: &Method,
    rest: &[&str],
    query: &BTreeMap<String, String>,
    body: &Bytes,
    uri: &Uri,
) -> Response {
    let text_of = |body: &Bytes| -> Option<String> {
        let value: Value = serde_json::from_slice(body).ok()?;
        Some(value.get("body")?.as_str()?.to_string())
    };
    match (method, rest) {
        (&Method::GET, []) => {
            let per_page: usize = query
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20)
                .clamp(1, 100);
            let per_page = server.page_cap.map_or(per_page, |cap| per_page.min(cap));
            let page: usize = query
                .get("page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1);
            let all = &server.notes[&iid];
            let items: Vec<Value> = all
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(note_json)
                .collect();
            let more = all.len() > page * per_page;
            let mut response = axum::Json(Value::Array(items)).into_response();
            let headers = response.headers_mut();
            headers.insert("x-page", page.to_string().parse().expect("header"));
            headers.insert("x-per-page", per_page.to_string().parse().expect("header"));
            if !server.link_only {
                let next = if more {
                    (page + 1).to_string()
                } else {
                    String::new()
                };
                headers.insert("x-next-page", next.parse().expect("header"));
            }
            if more {
                let link = format!(
                    "<http://gitlab.invalid{}?page={}&per_page={per_page}>; rel=\"next\"",
                    uri.path(),
                    page + 1
                );
                headers.insert("link", link.parse().expect("header"));
            }
            response
        }
        (&Method::POST, []) => {
            let Some(text) = text_of(body) else {
                return error(StatusCode::BAD_REQUEST, "400 body is missing");
            };
            server.next_note += 1;
            let note = StoredNote {
                id: server.next_note,
                body: text,
                author: FLEET_USER,
            };
            let answer = note_json(&note);
            server.notes.entry(iid).or_default().push(note);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        (&Method::PUT, [id]) => {
            let Some(text) = text_of(body) else {
                return error(StatusCode::BAD_REQUEST, "400 body is missing");
            };
            let id: u64 = id.parse().unwrap_or_default();
            let Some(note) = server
                .notes
                .get_mut(&iid)
                .and_then(|notes| notes.iter_mut().find(|note| note.id == id))
            else {
                return error(StatusCode::NOT_FOUND, "404 Not found");
            };
            if note.author != FLEET_USER {
                return error(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            note.body = text;
            axum::Json(note_json(note)).into_response()
        }
        _ => error(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}
