//! A loopback proxy in front of `moto_server` that answers chosen EC2 calls with the errors
//! real EC2 gives under load or refusal (moto itself never throttles or fails), and
//! forwards everything else.
//!
//! EC2's query API names the call in the form body (`Action=RunInstances&…`), so faults
//! are set per action: the next N `RunInstances` are answered 503 `RequestLimitExceeded`,
//! and so on. Every call is counted by action, faulted or not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
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
}

impl Fault {
    fn answer(self) -> Response {
        let (status, code, message) = match self {
            Fault::Throttle => (
                StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "Request limit exceeded.",
            ),
            Fault::ServerError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "An internal error has occurred.",
            ),
            Fault::Unauthorized => (
                StatusCode::FORBIDDEN,
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
            ),
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>00000000-0000-4000-8000-000000000000</RequestID></Response>"
        );
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("text/xml"));
        response
    }
}

#[derive(Debug, Default)]
struct Rules {
    upstream: String,
    /// Faults still to give, by action, in order.
    pending: BTreeMap<String, Vec<Fault>>,
    /// Calls seen, by action.
    calls: BTreeMap<String, u64>,
    /// Calls answered with a fault, by action.
    faulted: BTreeMap<String, u64>,
    /// Added to every mutating call (any action but `Describe*`), so overlaps show.
    mutation_latency: std::time::Duration,
    /// Mutating calls in flight now, and the most there ever were.
    in_flight: u32,
    max_in_flight: u32,
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

    /// Holds every mutating call this long before answering it.
    pub(crate) fn set_mutation_latency(&self, latency: std::time::Duration) {
        self.rules().mutation_latency = latency;
    }

    /// The most mutating calls that were in flight at once.
    pub(crate) fn max_in_flight(&self) -> u32 {
        self.rules().max_in_flight
    }
}

/// The `Action` of an EC2 query-API form body.
fn action_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_string()
}

async fn handle(State(rules): State<Arc<Mutex<Rules>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let action = action_of(&body);
    let mutating = !action.starts_with("Describe");
    let (fault, upstream, latency) = {
        let mut rules = rules.lock().expect("proxy rules");
        *rules.calls.entry(action.clone()).or_default() += 1;
        if mutating {
            rules.in_flight += 1;
            rules.max_in_flight = rules.max_in_flight.max(rules.in_flight);
        }
        let fault = rules
            .pending
            .get_mut(&action)
            .filter(|pending| !pending.is_empty())
            .map(|pending| pending.remove(0));
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
        Some(fault) => fault.answer(),
        None => match forward(&upstream, parts, body).await {
            Ok(response) => response,
            Err(error) => (StatusCode::BAD_GATEWAY, format!("proxy: {error}")).into_response(),
        },
    };
    if mutating {
        rules.lock().expect("proxy rules").in_flight -= 1;
    }
    response
}

/// Sends the request on to the upstream over a fresh connection and relays its answer.
async fn forward(
    upstream: &str,
    parts: axum::http::request::Parts,
    body: bytes::Bytes,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        if name != "host" {
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
    Ok(Response::from_parts(parts, Body::from(body)))
}
