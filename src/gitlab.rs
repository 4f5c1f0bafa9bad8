//! A small client of GitLab's REST API (v4): merge-request notes and the merge requests of
//! a commit, for `fleet ci`.
//!
//! In: the API URL, the project and the token, from the environment GitLab CI sets or from
//! flags (never from a fleet file); a retry policy and the longest wait. Out: notes, merge
//! requests, and [`GitLabError`] naming what GitLab refused and how to fix it.
//!
//! The token is sent only as the `PRIVATE-TOKEN` header to the configured API, marked
//! sensitive, and is never part of a message: errors show the method and the path. A `Link`
//! header's next page is read for its page number only; fleet builds every URL itself, so a
//! header cannot send the token elsewhere. 429 (after its `Retry-After`, in seconds) and 5xx
//! answers are retried under `--max-attempts` and `--retry-for`, each wait at most
//! `--max-wait`.

use std::time::{Duration, Instant};

use fleet_engine::retry::RetryPolicy;
use miette::Diagnostic;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use thiserror::Error;

use crate::output;

/// Notes asked for per page (GitLab's largest).
const PER_PAGE: &str = "100";

/// Pages of notes read at most: 100,000 notes on one merge request is beyond any real one,
/// and a server that always answers with a next page cannot keep fleet listing for ever.
const MAX_PAGES: u32 = 1000;

/// What went wrong talking to GitLab.
#[derive(Debug, Error, Diagnostic)]
pub(crate) enum GitLabError {
    #[error("{what} is not set")]
    #[diagnostic(code(fleet::gitlab::missing_variable), help("{help}"))]
    MissingVariable { what: String, help: String },

    #[error("{value} is not a URL GitLab's API can be reached at")]
    #[diagnostic(
        code(fleet::gitlab::url),
        help("set CI_API_V4_URL (or --api-url) to the API's http(s) URL, e.g. https://gitlab.example.com/api/v4")
    )]
    BadUrl { value: String },

    #[error("no API token in {variable}; CI_JOB_TOKEN is there, but a job token cannot write merge-request notes")]
    #[diagnostic(
        code(fleet::gitlab::job_token),
        help("create a project access token with the `api` scope (the Reporter role is enough to comment) under Settings → Access tokens, and store it as a masked, protected CI/CD variable named {variable}")
    )]
    JobTokenOnly { variable: String },

    #[error("no API token in {variable}")]
    #[diagnostic(
        code(fleet::gitlab::no_token),
        help("create a project access token with the `api` scope (Settings → Access tokens) and store it as a masked CI/CD variable named {variable}, or name another variable with --token-env")
    )]
    NoToken { variable: String },

    #[error(
        "the token in {variable} cannot be sent as a header (it holds characters a header cannot)"
    )]
    #[diagnostic(
        code(fleet::gitlab::token),
        help("copy the token again: it is printable ASCII")
    )]
    BadToken { variable: String },

    #[error("GitLab refused the token in {variable} (401 Unauthorized) for {request}")]
    #[diagnostic(
        code(fleet::gitlab::unauthorized),
        help("the token is unknown, expired or revoked: create a project access token with the `api` scope and store it in {variable}")
    )]
    Unauthorized { variable: String, request: String },

    #[error("GitLab answered 403 Forbidden to {request}: the token in {variable} may not do this")]
    #[diagnostic(
        code(fleet::gitlab::forbidden),
        help("the token needs the `api` scope (not only read_api) and a role on the project that may comment on merge requests (Reporter or above)")
    )]
    Forbidden { variable: String, request: String },

    #[error("GitLab answered 404 Not Found to {request}")]
    #[diagnostic(
        code(fleet::gitlab::not_found),
        help("check the project (CI_PROJECT_ID) and the merge request (CI_MERGE_REQUEST_IID: the job must run in a merge-request pipeline); GitLab also answers 404 when the token cannot see a private project")
    )]
    NotFound { request: String },

    #[error("GitLab kept answering {status} to {request}; gave up after {attempts} attempt(s)")]
    #[diagnostic(
        code(fleet::gitlab::unavailable),
        help("GitLab is overloaded or down: run the job again later (--max-attempts and --retry-for set how long fleet keeps trying)")
    )]
    GaveUp {
        status: String,
        request: String,
        attempts: u32,
    },

    #[error("GitLab answered {status} to {request}: {message}")]
    #[diagnostic(code(fleet::gitlab::refused))]
    Refused {
        status: String,
        request: String,
        message: String,
    },

    #[error("cannot reach GitLab for {request}: {error}")]
    #[diagnostic(
        code(fleet::gitlab::transport),
        help("check CI_API_V4_URL (or --api-url) and the network")
    )]
    Transport { request: String, error: String },

    #[error("GitLab's answer to {request} is not what its API documents: {error}")]
    #[diagnostic(code(fleet::gitlab::answer))]
    BadAnswer { request: String, error: String },
}

/// One note on a merge request.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    /// Its id.
    pub(crate) id: u64,
    /// Its Markdown.
    pub(crate) body: String,
    /// Its author's user id.
    pub(crate) author: Option<u64>,
    /// Whether GitLab wrote it (a system note).
    pub(crate) system: bool,
}

/// One merge request a commit belongs to.
#[derive(Debug, Clone)]
pub(crate) struct MergeRequest {
    /// Its number in the project.
    pub(crate) iid: u64,
    /// `merged`, `opened`, …
    pub(crate) state: String,
    /// The commits that merged it, where GitLab says.
    pub(crate) merged_as: Vec<String>,
}

/// A signed-in client for one project.
pub(crate) struct GitLab {
    http: reqwest::Client,
    base: Url,
    project: String,
    token: HeaderValue,
    token_variable: String,
    policy: RetryPolicy,
    max_wait: Duration,
}

/// What the client needs to know, from the environment or flags.
pub(crate) struct Settings {
    pub(crate) api_url: Option<String>,
    pub(crate) project: Option<String>,
    pub(crate) token_variable: String,
    pub(crate) token: Option<String>,
    pub(crate) job_token_present: bool,
    pub(crate) policy: RetryPolicy,
    pub(crate) max_wait: Duration,
}

/// An answer that succeeded.
struct Answer {
    headers: HeaderMap,
    body: Value,
}

impl GitLab {
    /// A client for the settings.
    ///
    /// # Errors
    /// A missing URL, project or token (saying so when only CI_JOB_TOKEN is there).
    pub(crate) fn new(settings: Settings) -> Result<GitLab, GitLabError> {
        let api_url = settings
            .api_url
            .filter(|url| !url.is_empty())
            .ok_or_else(|| GitLabError::MissingVariable {
                what: "CI_API_V4_URL".to_string(),
                help: "GitLab CI sets it in every job; elsewhere give --api-url https://gitlab.example.com/api/v4".to_string(),
            })?;
        // A URL refused is told without what may stand before an `@`: a user and password.
        let mut base = Url::parse(&api_url).map_err(|_| GitLabError::BadUrl {
            value: without_userinfo(&api_url),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(GitLabError::BadUrl {
                value: without_userinfo(&api_url),
            });
        }
        // Credentials in the URL would be sent to GitLab and shown in messages; the token
        // goes in its header only.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_query(None);
        base.set_fragment(None);
        let project = settings
            .project
            .filter(|project| !project.is_empty())
            .ok_or_else(|| GitLabError::MissingVariable {
                what: "CI_PROJECT_ID".to_string(),
                help: "GitLab CI sets it in every job; elsewhere give --project ID".to_string(),
            })?;
        let variable = settings.token_variable;
        if variable == "CI_JOB_TOKEN" {
            return Err(GitLabError::JobTokenOnly { variable });
        }
        let token = match settings.token.filter(|token| !token.trim().is_empty()) {
            Some(token) => token,
            None if settings.job_token_present => {
                return Err(GitLabError::JobTokenOnly { variable })
            }
            None => return Err(GitLabError::NoToken { variable }),
        };
        let mut token = HeaderValue::from_str(token.trim()).map_err(|_| GitLabError::BadToken {
            variable: variable.clone(),
        })?;
        token.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("fleet/", env!("CARGO_PKG_VERSION")))
            // A redirect could carry the request, and its token, to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| GitLabError::Transport {
                request: "the client".to_string(),
                error: error.to_string(),
            })?;
        Ok(GitLab {
            http,
            base,
            project,
            token,
            token_variable: variable,
            policy: settings.policy,
            max_wait: settings.max_wait,
        })
    }

    /// The id of the token's user (`GET /user`): fleet trusts and edits only its own notes.
    ///
    /// # Errors
    /// What GitLab refused.
    pub(crate) async fn current_user(&self) -> Result<u64, GitLabError> {
        let url = self.url(&["user"], &[]);
        let answer = self.send(Method::GET, url, "GET /user", None).await?;
        answer
            .body
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| GitLabError::BadAnswer {
                request: "GET /user".to_string(),
                error: "no user id".to_string(),
            })
    }

    /// Every note of a merge request, oldest first, page by page.
    ///
    /// # Errors
    /// What GitLab refused.
    pub(crate) async fn notes(&self, merge_request: &str) -> Result<Vec<Note>, GitLabError> {
        let path = [
            "projects",
            &self.project,
            "merge_requests",
            merge_request,
            "notes",
        ];
        let shown = format!(
            "GET /projects/{}/merge_requests/{merge_request}/notes",
            self.project
        );
        let mut notes = Vec::new();
        let mut page: u32 = 1;
        for _ in 0..MAX_PAGES {
            let page_text = page.to_string();
            let url = self.url(
                &path,
                &[
                    ("per_page", PER_PAGE),
                    ("page", &page_text),
                    ("sort", "asc"),
                    ("order_by", "created_at"),
                ],
            );
            let answer = self.send(Method::GET, url, &shown, None).await?;
            let Value::Array(items) = &answer.body else {
                return Err(GitLabError::BadAnswer {
                    request: shown,
                    error: "not a list of notes".to_string(),
                });
            };
            notes.extend(items.iter().filter_map(note_of));
            match next_page(&answer.headers) {
                Some(next) if next > page => page = next,
                _ => return Ok(notes),
            }
        }
        Ok(notes)
    }

    /// Adds a note; its id.
    ///
    /// # Errors
    /// What GitLab refused.
    pub(crate) async fn create_note(
        &self,
        merge_request: &str,
        body: &str,
    ) -> Result<u64, GitLabError> {
        let url = self.url(
            &[
                "projects",
                &self.project,
                "merge_requests",
                merge_request,
                "notes",
            ],
            &[],
        );
        let shown = format!(
            "POST /projects/{}/merge_requests/{merge_request}/notes",
            self.project
        );
        let answer = self
            .send(
                Method::POST,
                url,
                &shown,
                Some(serde_json::json!({ "body": body })),
            )
            .await?;
        answer
            .body
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| GitLabError::BadAnswer {
                request: shown,
                error: "no note id".to_string(),
            })
    }

    /// Replaces a note's body.
    ///
    /// # Errors
    /// What GitLab refused.
    pub(crate) async fn update_note(
        &self,
        merge_request: &str,
        note: u64,
        body: &str,
    ) -> Result<(), GitLabError> {
        let note_text = note.to_string();
        let url = self.url(
            &[
                "projects",
                &self.project,
                "merge_requests",
                merge_request,
                "notes",
                &note_text,
            ],
            &[],
        );
        let shown = format!(
            "PUT /projects/{}/merge_requests/{merge_request}/notes/{note}",
            self.project
        );
        self.send(
            Method::PUT,
            url,
            &shown,
            Some(serde_json::json!({ "body": body })),
        )
        .await?;
        Ok(())
    }

    /// The merge requests a commit belongs to
    /// (`GET /projects/:id/repository/commits/:sha/merge_requests`).
    ///
    /// # Errors
    /// What GitLab refused.
    pub(crate) async fn merge_requests_of(
        &self,
        commit: &str,
    ) -> Result<Vec<MergeRequest>, GitLabError> {
        let url = self.url(
            &[
                "projects",
                &self.project,
                "repository",
                "commits",
                commit,
                "merge_requests",
            ],
            &[],
        );
        let shown = format!(
            "GET /projects/{}/repository/commits/{commit}/merge_requests",
            self.project
        );
        let answer = self.send(Method::GET, url, &shown, None).await?;
        let Value::Array(items) = &answer.body else {
            return Err(GitLabError::BadAnswer {
                request: shown,
                error: "not a list of merge requests".to_string(),
            });
        };
        Ok(items
            .iter()
            .filter_map(|item| {
                Some(MergeRequest {
                    iid: item.get("iid")?.as_u64()?,
                    state: item
                        .get("state")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    merged_as: ["merge_commit_sha", "squash_commit_sha", "sha"]
                        .iter()
                        .filter_map(|key| item.get(*key).and_then(Value::as_str))
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect())
    }

    /// `base/segment/…?query`, each segment percent-encoded (a project path's `/` too).
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends one request, retrying 429 and 5xx answers and failed connections under the
    /// policy; `shown` names the request in messages (method and path, never the token).
    async fn send(
        &self,
        method: Method,
        url: Url,
        shown: &str,
        body: Option<Value>,
    ) -> Result<Answer, GitLabError> {
        let started = Instant::now();
        let mut attempt: u32 = 1;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("PRIVATE-TOKEN", self.token.clone())
                .header("Accept", "application/json");
            if let Some(body) = &body {
                request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
            }
            let (status, wait) = match request.send().await {
                Err(error) => {
                    let error = without_url(error);
                    match self.policy.delay(attempt, started.elapsed()) {
                        Some(delay) => (format!("no answer ({error})"), delay),
                        None => {
                            return Err(GitLabError::Transport {
                                request: shown.to_string(),
                                error,
                            })
                        }
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let text = response.text().await.unwrap_or_default();
                    if status.is_success() {
                        let body = if text.trim().is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_str(&text).map_err(|error| GitLabError::BadAnswer {
                                request: shown.to_string(),
                                error: error.to_string(),
                            })?
                        };
                        return Ok(Answer { headers, body });
                    }
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !retryable {
                        return Err(self.refusal(status, shown, &text));
                    }
                    let asked = retry_after(&headers);
                    let delay = match asked {
                        Some(asked)
                            if attempt < self.policy.max_attempts
                                && started.elapsed() + asked.min(self.max_wait)
                                    <= self.policy.max_elapsed =>
                        {
                            Some(asked)
                        }
                        Some(_) => None,
                        None => self.policy.delay(attempt, started.elapsed()),
                    };
                    let Some(delay) = delay else {
                        return Err(GitLabError::GaveUp {
                            status: status_text(status),
                            request: shown.to_string(),
                            attempts: attempt,
                        });
                    };
                    let status = match asked {
                        Some(asked) => format!(
                            "{} (Retry-After: {} s)",
                            status_text(status),
                            asked.as_secs()
                        ),
                        None => status_text(status),
                    };
                    (status, delay)
                }
            };
            let wait = wait.min(self.max_wait);
            output::warn(&format!(
                "GitLab: {shown} answered {status} (attempt {attempt} of {}); retrying in {} ms",
                self.policy.max_attempts,
                wait.as_millis()
            ));
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn refusal(&self, status: StatusCode, shown: &str, text: &str) -> GitLabError {
        let request = shown.to_string();
        match status {
            StatusCode::UNAUTHORIZED => GitLabError::Unauthorized {
                variable: self.token_variable.clone(),
                request,
            },
            StatusCode::FORBIDDEN => GitLabError::Forbidden {
                variable: self.token_variable.clone(),
                request,
            },
            StatusCode::NOT_FOUND => GitLabError::NotFound { request },
            _ => GitLabError::Refused {
                status: status_text(status),
                request,
                message: gitlab_message(text),
            },
        }
    }
}

/// `429 Too Many Requests`.
fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_string()
}

/// GitLab's `message` or `error` of an error answer, shortened; the token is never in it
/// (GitLab does not echo headers).
fn gitlab_message(text: &str) -> String {
    let value: Option<Value> = serde_json::from_str(text).ok();
    let message = value
        .as_ref()
        .and_then(|value| value.get("message").or_else(|| value.get("error")))
        .map(|message| match message {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| text.to_string());
    let short: String = message.chars().take(300).collect();
    if short.is_empty() {
        "(no message)".to_string()
    } else {
        short
    }
}

/// A transport error without the URL (its host and path are in the request already).
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` in seconds (GitLab's rate limiter sends seconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The next page: `X-Next-Page`, else the `page` of `Link`'s `rel="next"` URL.
fn next_page(headers: &HeaderMap) -> Option<u32> {
    if let Some(next) = headers.get("x-next-page").and_then(|v| v.to_str().ok()) {
        return next.trim().parse().ok();
    }
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.split(';').any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        }) {
            return None;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        let url = Url::parse(target).ok()?;
        let page = url
            .query_pairs()
            .find(|(key, _)| key == "page")
            .and_then(|(_, value)| value.parse().ok());
        page
    })
}

fn note_of(item: &Value) -> Option<Note> {
    Some(Note {
        id: item.get("id")?.as_u64()?,
        body: item.get("body")?.as_str()?.to_string(),
        author: item
            .get("author")
            .and_then(|author| author.get("id"))
            .and_then(Value::as_u64),
        system: item.get("system").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// `url` with any `user:password@` of its authority replaced by `…@`, for messages.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => (&url[..at + 3], &url[at + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}…@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}
