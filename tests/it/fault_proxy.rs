//! A loopback proxy in front of `moto_server` that makes it behave like real EC2 where moto
//! does not: errors under load or refusal, `ClientToken` deduplication, lists that lag
//! behind writes, instances that take a while to shut down, and the one call moto lacks.
//!
//! In: the SDK's EC2 query-API requests (the call is named in the form body,
//! `Action=RunInstances&…`). Out: moto's answers, relayed or rewritten, or the proxy's own.
//! What it does, each set per test:
//!
//! - **Faults** per action: the next N `RunInstances` are answered 503
//!   `RequestLimitExceeded`, and so on; or only pages after the first (requests that carry a
//!   `NextToken`); or [`Fault::AnswerLost`]: the call reaches moto, the answer does not reach
//!   fleet.
//! - **`ClientToken`** (always on; moto ignores it): a `RunInstances` with a token seen
//!   before launches nothing and is answered with the original reservation, or with
//!   `IdempotentParameterMismatch` when its parameters differ. Calls with one token are
//!   served one at a time, so two applies that send it at once get one reservation.
//! - **Shutting down** ([`FaultProxy::shut_down_slowly`]): an instance terminated through the
//!   proxy is reported as `shutting-down` by the next K `DescribeInstances` calls, as EC2 does
//!   for a while (moto terminates at once).
//! - **Lagging lists** ([`FaultProxy::hide_new_instances`]): an instance `RunInstances` made is
//!   left out of the next K `DescribeInstances` answers (EC2 is eventually consistent).
//! - **`DeleteLaunchTemplateVersions`**, which moto does not implement (it answers an HTML
//!   500): the proxy answers it and leaves the deleted versions out of
//!   `DescribeLaunchTemplateVersions` from then on.
//!
//! Every call is counted by action, faulted or not, and so is every call that reached moto;
//! every request is also recorded whole (service, operation, parameters) for
//! [`FaultProxy::take_requests`], which `permissions.rs` holds the printed policies to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::loopback::Loopback;

/// An error EC2 answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 503 `RequestLimitExceeded`: the account's API rate is exceeded.
    Throttle,
    /// 500 `InternalError`.
    ServerError,
    /// 403 `UnauthorizedOperation`: a final refusal.
    Unauthorized,
    /// The call is carried out, then answered 500 `InternalError`: the answer was lost.
    AnswerLost,
}

impl Fault {
    fn answer(self) -> Response {
        match self {
            Fault::Throttle => error_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "Request limit exceeded.",
            ),
            Fault::ServerError | Fault::AnswerLost => error_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "An internal error has occurred.",
            ),
            Fault::Unauthorized => error_answer(
                StatusCode::FORBIDDEN,
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
            ),
        }
    }
}

/// An EC2 error document.
fn error_answer(status: StatusCode, code: &str, message: &str) -> Response {
    xml_answer(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>00000000-0000-4000-8000-000000000000</RequestID></Response>"
        ),
    )
}

fn xml_answer(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/xml"));
    response
}

/// A `RunInstances` that moto answered: what was asked and what came back.
#[derive(Debug, Clone)]
struct Launch {
    request: Bytes,
    answer: Bytes,
}

/// The launch of one `ClientToken`, once there is one; locked while it is under way.
type TokenSlot = Arc<tokio::sync::Mutex<Option<Launch>>>;

#[derive(Debug, Default)]
struct Rules {
    upstream: String,
    /// Faults still to give, by action, in order.
    pending: BTreeMap<String, Vec<Fault>>,
    /// Faults still to give to pages after the first (requests with a `NextToken`), by action.
    pending_pages: BTreeMap<String, Vec<Fault>>,
    /// Calls seen, by action.
    calls: BTreeMap<String, u64>,
    /// Calls answered with a fault, by action.
    faulted: BTreeMap<String, u64>,
    /// Calls that reached moto, by action.
    forwarded: BTreeMap<String, u64>,
    /// Added to every mutating call (any action but `Describe*`), so overlaps show.
    mutation_latency: std::time::Duration,
    /// Mutating calls in flight now, and the most there ever were.
    in_flight: u32,
    max_in_flight: u32,
    /// Launches by `ClientToken`.
    tokens: BTreeMap<String, TokenSlot>,
    /// For how many `DescribeInstances` calls a terminated instance still shuts down.
    shutting_down_calls: u32,
    /// Terminated instances still reported as shutting down, with the calls left.
    shutting_down: BTreeMap<String, u32>,
    /// Instances reported as `shutting-down` so far (one per instance per answer).
    reported_shutting_down: u64,
    /// For how many `DescribeInstances` calls a new instance is left out.
    hidden_calls: u32,
    /// New instances still left out of lists, with the calls left.
    hidden: BTreeMap<String, u32>,
    /// Instances left out of a list so far (one per instance per answer).
    reported_hidden: u64,
    /// Instances terminated through the proxy: a repeated launch reports them so.
    terminated: BTreeSet<String>,
    /// Launch-template versions deleted through the proxy: (template id, version).
    deleted_versions: BTreeSet<(String, String)>,
    /// Every request received, in order, as [`FaultProxy::take_requests`] gives them.
    log: Vec<Received>,
}

/// One request the proxy received: the service its signature names (`ec2`, `ssm`), the
/// operation (the query API's `Action`, the JSON API's `X-Amz-Target` after the dot) and its
/// parameters (form pairs, or the JSON body).
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) service: String,
    pub(crate) operation: String,
    pub(crate) form: Vec<(String, String)>,
    pub(crate) json: serde_json::Value,
}

impl Received {
    fn read(
        parts: &axum::http::request::Parts,
        body: &[u8],
        pairs: &[(String, String)],
    ) -> Received {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        // `Credential=KEY/DAY/REGION/SERVICE/aws4_request`.
        let service = header("authorization")
            .split_once("Credential=")
            .and_then(|(_, rest)| rest.split('/').nth(3).map(str::to_string))
            .unwrap_or_default();
        let target = header("x-amz-target");
        match target.split_once('.') {
            Some((_, operation)) => Received {
                service,
                operation: operation.to_string(),
                form: Vec::new(),
                json: serde_json::from_slice(body).unwrap_or_default(),
            },
            None => Received {
                service,
                operation: param(pairs, "Action").unwrap_or("unknown").to_string(),
                form: pairs.to_vec(),
                json: serde_json::Value::Null,
            },
        }
    }
}

/// The proxy, serving on its own thread until dropped.
pub(crate) struct FaultProxy {
    server: Loopback,
    rules: Arc<Mutex<Rules>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`http://127.0.0.1:P`).
    pub(crate) fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("a plain-HTTP loopback upstream")
            .trim_end_matches('/')
            .to_string();
        let rules = Arc::new(Mutex::new(Rules {
            upstream,
            ..Rules::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(rules.clone());
        FaultProxy {
            server: Loopback::serve(app),
            rules,
        }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub(crate) fn url(&self) -> String {
        self.server.url()
    }

    /// Every request received since the last call, in order, faulted or not.
    pub(crate) fn take_requests(&self) -> Vec<Received> {
        std::mem::take(&mut self.rules().log)
    }

    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().expect("proxy rules")
    }

    /// Answers the next `times` calls of `action` with `fault`.
    pub(crate) fn fail_next(&self, action: &str, fault: Fault, times: usize) {
        self.rules()
            .pending
            .entry(action.to_string())
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Answers the next `times` calls of `action` for a page after the first (a request with
    /// a `NextToken`) with `fault`.
    pub(crate) fn fail_next_page(&self, action: &str, fault: Fault, times: usize) {
        self.rules()
            .pending_pages
            .entry(action.to_string())
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Reports each instance terminated from now on as `shutting-down` to the next `calls`
    /// `DescribeInstances` calls.
    pub(crate) fn shut_down_slowly(&self, calls: u32) {
        self.rules().shutting_down_calls = calls;
    }

    /// Leaves each instance launched from now on out of the next `calls` `DescribeInstances`
    /// answers.
    pub(crate) fn hide_new_instances(&self, calls: u32) {
        self.rules().hidden_calls = calls;
    }

    /// Calls of `action` seen, faulted ones included.
    pub(crate) fn calls(&self, action: &str) -> u64 {
        self.rules().calls.get(action).copied().unwrap_or_default()
    }

    /// Calls of `action` answered with a fault.
    pub(crate) fn faulted(&self, action: &str) -> u64 {
        self.rules()
            .faulted
            .get(action)
            .copied()
            .unwrap_or_default()
    }

    /// Calls of `action` that reached moto (for `RunInstances`: launches, repeats of a token
    /// not counted).
    pub(crate) fn forwarded(&self, action: &str) -> u64 {
        self.rules()
            .forwarded
            .get(action)
            .copied()
            .unwrap_or_default()
    }

    /// How often an instance was reported as `shutting-down`.
    pub(crate) fn reported_shutting_down(&self) -> u64 {
        self.rules().reported_shutting_down
    }

    /// How often a new instance was left out of a list.
    pub(crate) fn reported_hidden(&self) -> u64 {
        self.rules().reported_hidden
    }

    /// Holds every mutating call this long before answering it.
    pub(crate) fn set_mutation_latency(&self, latency: std::time::Duration) {
        self.rules().mutation_latency = latency;
    }

    /// The most mutating calls that were in flight at once.
    pub(crate) fn max_in_flight(&self) -> u32 {
        self.rules().max_in_flight
    }
}

/// The pairs of an EC2 query-API form body, percent-decoded.
fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (decode(key), decode(value)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                match u8::from_str_radix(text.get(index + 1..index + 3).unwrap_or(""), 16) {
                    Ok(byte) => {
                        out.push(byte);
                        index += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Values of keys `prefix.1`, `prefix.2`, …
fn params_with_prefix<'a>(pairs: &'a [(String, String)], prefix: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(key, _)| {
            key.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|(_, value)| value.as_str())
        .collect()
}

/// Applies `edit` to each direct `<item>` of every `<{set}>` element of an EC2 answer: `None`
/// drops the item, `Some` replaces it.
fn rewrite_items(xml: &str, set: &str, mut edit: impl FnMut(&str) -> Option<String>) -> String {
    let open = format!("<{set}>");
    let close = format!("</{set}>");
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        out.push_str(&rest[..start + open.len()]);
        rest = &rest[start + open.len()..];
        loop {
            let trimmed = rest.trim_start();
            out.push_str(&rest[..rest.len() - trimmed.len()]);
            rest = trimmed;
            if !rest.starts_with("<item>") {
                break;
            }
            let end = item_end(rest);
            if let Some(item) = edit(&rest[..end]) {
                out.push_str(&item);
            }
            rest = &rest[end..];
        }
        if !rest.starts_with(&close) {
            // Not a set of items after all; leave the rest as it is.
            continue;
        }
    }
    out.push_str(rest);
    out
}

/// The length of the `<item>…</item>` at the start of `xml`, nested items included.
fn item_end(xml: &str) -> usize {
    let mut depth = 0usize;
    let mut at = 0usize;
    loop {
        let open = xml[at..].find("<item>").map(|i| i + at);
        let close = xml[at..].find("</item>").map(|i| i + at);
        match (open, close) {
            (Some(open), Some(close)) if open < close => {
                depth += 1;
                at = open + "<item>".len();
            }
            (_, Some(close)) => {
                depth -= 1;
                at = close + "</item>".len();
                if depth == 0 {
                    return at;
                }
            }
            _ => return xml.len(),
        }
    }
}

/// The text of the first `<tag>` in `xml`.
fn field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

const TERMINATED: &str = "<instanceState><code>48</code><name>terminated</name></instanceState>";
const SHUTTING_DOWN: &str =
    "<instanceState><code>32</code><name>shutting-down</name></instanceState>";

async fn handle(State(rules): State<Arc<Mutex<Rules>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let pairs = form(&body);
    let action = param(&pairs, "Action").unwrap_or("unknown").to_string();
    let paged = param(&pairs, "NextToken").is_some_and(|token| !token.is_empty());
    let mutating = !action.starts_with("Describe");
    let (fault, upstream, latency) = {
        let mut rules = rules.lock().expect("proxy rules");
        rules.log.push(Received::read(&parts, &body, &pairs));
        *rules.calls.entry(action.clone()).or_default() += 1;
        if mutating {
            rules.in_flight += 1;
            rules.max_in_flight = rules.max_in_flight.max(rules.in_flight);
        }
        let mut fault = rules
            .pending
            .get_mut(&action)
            .filter(|pending| !pending.is_empty())
            .map(|pending| pending.remove(0));
        if fault.is_none() && paged {
            fault = rules
                .pending_pages
                .get_mut(&action)
                .filter(|pending| !pending.is_empty())
                .map(|pending| pending.remove(0));
        }
        if fault.is_some() {
            *rules.faulted.entry(action.clone()).or_default() += 1;
        }
        let latency = if mutating {
            rules.mutation_latency
        } else {
            std::time::Duration::ZERO
        };
        (fault, rules.upstream.clone(), latency)
    };
    tokio::time::sleep(latency).await;
    let response = match fault {
        Some(fault) if fault != Fault::AnswerLost => fault.answer(),
        _ => {
            let answer = serve(&rules, &upstream, &action, &pairs, parts, body).await;
            match fault {
                Some(lost) => lost.answer(),
                None => answer,
            }
        }
    };
    if mutating {
        rules.lock().expect("proxy rules").in_flight -= 1;
    }
    response
}

/// Carries a call out: by moto, through the proxy's models of what moto lacks.
async fn serve(
    rules: &Arc<Mutex<Rules>>,
    upstream: &str,
    action: &str,
    pairs: &[(String, String)],
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Response {
    match action {
        "RunInstances" => match param(pairs, "ClientToken").filter(|t| !t.is_empty()) {
            Some(token) => run_once(rules, upstream, token, parts, body).await,
            None => launch(rules, upstream, parts, body).await.0,
        },
        "DeleteLaunchTemplateVersions" => {
            let template = param(pairs, "LaunchTemplateId").unwrap_or_default();
            let versions = params_with_prefix(pairs, "LaunchTemplateVersion");
            let mut items = String::new();
            {
                let mut rules = rules.lock().expect("proxy rules");
                for version in &versions {
                    rules
                        .deleted_versions
                        .insert((template.to_string(), version.to_string()));
                    items.push_str(&format!(
                        "<item><launchTemplateId>{template}</launchTemplateId><versionNumber>{version}</versionNumber></item>"
                    ));
                }
            }
            xml_answer(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteLaunchTemplateVersionsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>00000000-0000-4000-8000-000000000000</requestId><successfullyDeletedLaunchTemplateVersionSet>{items}</successfullyDeletedLaunchTemplateVersionSet><unsuccessfullyDeletedLaunchTemplateVersionSet/></DeleteLaunchTemplateVersionsResponse>"
                ),
            )
        }
        "DescribeInstances" => describe_instances(rules, upstream, pairs, parts, body).await,
        "DescribeLaunchTemplateVersions" => {
            let answer = relay(rules, upstream, action, parts, body).await;
            rewrite(answer, |xml| {
                let rules = rules.lock().expect("proxy rules");
                rewrite_items(xml, "launchTemplateVersionSet", |item| {
                    let key = (
                        field(item, "launchTemplateId")
                            .unwrap_or_default()
                            .to_string(),
                        field(item, "versionNumber").unwrap_or_default().to_string(),
                    );
                    (!rules.deleted_versions.contains(&key)).then(|| item.to_string())
                })
            })
            .await
        }
        "TerminateInstances" => {
            let answer = relay(rules, upstream, action, parts, body).await;
            if answer.status().is_success() {
                let mut rules = rules.lock().expect("proxy rules");
                let calls = rules.shutting_down_calls;
                for id in params_with_prefix(pairs, "InstanceId") {
                    rules.terminated.insert(id.to_string());
                    if calls > 0 {
                        rules.shutting_down.insert(id.to_string(), calls);
                    }
                }
            }
            answer
        }
        _ => relay(rules, upstream, action, parts, body).await,
    }
}

/// A `RunInstances` with a `ClientToken`: launched once, its answer repeated after that.
async fn run_once(
    rules: &Arc<Mutex<Rules>>,
    upstream: &str,
    token: &str,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Response {
    let slot = rules
        .lock()
        .expect("proxy rules")
        .tokens
        .entry(token.to_string())
        .or_default()
        .clone();
    let mut slot = slot.lock().await;
    if let Some(launch) = slot.as_ref() {
        if launch.request != body {
            return error_answer(
                StatusCode::BAD_REQUEST,
                "IdempotentParameterMismatch",
                "The client token you have provided is associated with a resource that is already deleted or has different parameters.",
            );
        }
        // The original reservation, with the instances' states as they are now: EC2 answers
        // a repeated token with instances that may have been terminated since.
        let terminated = rules.lock().expect("proxy rules").terminated.clone();
        let xml = rewrite_items(
            &String::from_utf8_lossy(&launch.answer),
            "instancesSet",
            |item| {
                let id = field(item, "instanceId").unwrap_or_default();
                match field(item, "instanceState") {
                    Some(state) if terminated.contains(id) => Some(item.replace(
                        &format!("<instanceState>{state}</instanceState>"),
                        TERMINATED,
                    )),
                    _ => Some(item.to_string()),
                }
            },
        );
        return xml_answer(StatusCode::OK, xml);
    }
    let (answer, launched) = launch(rules, upstream, parts, body.clone()).await;
    if let Some(launched) = launched {
        *slot = Some(Launch {
            request: body,
            answer: launched,
        });
    }
    answer
}

/// Forwards a `RunInstances` and notes the instances it made (to hide them, if asked to):
/// the answer, and its body when moto launched something.
async fn launch(
    rules: &Arc<Mutex<Rules>>,
    upstream: &str,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> (Response, Option<Bytes>) {
    *rules
        .lock()
        .expect("proxy rules")
        .forwarded
        .entry("RunInstances".to_string())
        .or_default() += 1;
    match forward(upstream, parts, body).await {
        Ok((parts, answer)) if parts.status.is_success() => {
            let xml = String::from_utf8_lossy(&answer).into_owned();
            let mut rules = rules.lock().expect("proxy rules");
            let calls = rules.hidden_calls;
            if calls > 0 {
                rewrite_items(&xml, "instancesSet", |item| {
                    if let Some(id) = field(item, "instanceId") {
                        rules.hidden.insert(id.to_string(), calls);
                    }
                    Some(item.to_string())
                });
            }
            (
                Response::from_parts(parts, Body::from(answer.clone())),
                Some(answer),
            )
        }
        Ok((parts, answer)) => (Response::from_parts(parts, Body::from(answer)), None),
        Err(error) => (
            (StatusCode::BAD_GATEWAY, format!("proxy: {error}")).into_response(),
            None,
        ),
    }
}

/// `DescribeInstances`, with terminated instances still shutting down and new ones not
/// listed yet, as EC2 shows them.
async fn describe_instances(
    rules: &Arc<Mutex<Rules>>,
    upstream: &str,
    pairs: &[(String, String)],
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Response {
    // A filter on `shutting-down` must find the instances moto already calls terminated:
    // ask moto for those too, and leave out the ones that are terminated here as well.
    let mut body = body;
    let mut drop_terminated = false;
    if !rules.lock().expect("proxy rules").shutting_down.is_empty() {
        if let Some((number, values)) = state_filter(pairs) {
            if values.contains(&"shutting-down") && !values.contains(&"terminated") {
                drop_terminated = true;
                let mut text = String::from_utf8_lossy(&body).into_owned();
                text.push_str(&format!(
                    "&Filter.{number}.Value.{}=terminated",
                    values.len() + 1
                ));
                body = Bytes::from(text);
            }
        }
    }
    let answer = relay(rules, upstream, "DescribeInstances", parts, body).await;
    rewrite(answer, |xml| {
        let mut rules = rules.lock().expect("proxy rules");
        let rules = &mut *rules;
        let out = rewrite_items(xml, "instancesSet", |item| {
            let id = field(item, "instanceId").unwrap_or_default();
            if rules.hidden.get(id).is_some_and(|left| *left > 0) {
                rules.reported_hidden += 1;
                return None;
            }
            if rules.shutting_down.get(id).is_some_and(|left| *left > 0)
                && item.contains(TERMINATED)
            {
                rules.reported_shutting_down += 1;
                return Some(item.replace(TERMINATED, SHUTTING_DOWN));
            }
            (!(drop_terminated && item.contains(TERMINATED))).then(|| item.to_string())
        });
        for left in rules
            .hidden
            .values_mut()
            .chain(rules.shutting_down.values_mut())
        {
            *left = left.saturating_sub(1);
        }
        rules.hidden.retain(|_, left| *left > 0);
        rules.shutting_down.retain(|_, left| *left > 0);
        out
    })
    .await
}

/// The number and values of an `instance-state-name` filter of a request.
fn state_filter(pairs: &[(String, String)]) -> Option<(String, Vec<&str>)> {
    let (key, _) = pairs.iter().find(|(key, value)| {
        key.starts_with("Filter.") && key.ends_with(".Name") && value == "instance-state-name"
    })?;
    let number = key
        .strip_prefix("Filter.")?
        .strip_suffix(".Name")?
        .to_string();
    let values = params_with_prefix(pairs, &format!("Filter.{number}.Value"));
    Some((number, values))
}

/// Rewrites the body of a successful answer.
async fn rewrite(answer: Response, edit: impl FnOnce(&str) -> String) -> Response {
    if !answer.status().is_success() {
        return answer;
    }
    let (mut parts, body) = answer.into_parts();
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return (StatusCode::BAD_GATEWAY, "proxy: unreadable answer").into_response();
    };
    let xml = edit(&String::from_utf8_lossy(&bytes));
    parts.headers.remove("content-length");
    Response::from_parts(parts, Body::from(xml))
}

/// Forwards a call to moto and counts it.
async fn relay(
    rules: &Arc<Mutex<Rules>>,
    upstream: &str,
    action: &str,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Response {
    *rules
        .lock()
        .expect("proxy rules")
        .forwarded
        .entry(action.to_string())
        .or_default() += 1;
    match forward(upstream, parts, body).await {
        Ok((parts, body)) => Response::from_parts(parts, Body::from(body)),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("proxy: {error}")).into_response(),
    }
}

/// Sends the request on to the upstream over a fresh connection and reads its answer.
async fn forward(
    upstream: &str,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Result<(axum::http::response::Parts, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        // The body may be rewritten: its length is the client's to set anew.
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let request = request.header("host", upstream).body(Full::new(body))?;
    let answer = sender.send_request(request).await?;
    let (mut parts, body) = answer.into_parts();
    let body = body.collect().await?.to_bytes();
    // The body is relayed whole: its framing is this server's to choose.
    parts.headers.remove("transfer-encoding");
    parts.headers.remove("connection");
    parts.headers.remove("content-length");
    Ok((parts, body))
}
