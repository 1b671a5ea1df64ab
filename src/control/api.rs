//! The HTTP/JSON control API: health, Prometheus metrics, and runtime
//! backend changes.
//!
//! [`handle`] is the whole contract as a pure function of method, URL and
//! body; [`Server`] is the hyper glue that serves it on its own thread
//! (`rr-api`), never on a worker. The rest of the program is reached only
//! through the [`Control`] trait.
//!
//! | method and path | success |
//! | --- | --- |
//! | `GET /healthz` | 200 `ok` (text) or 503 with the reason |
//! | `GET /metrics` | 200 Prometheus text |
//! | `GET /v1/vips` | 200 JSON from [`Control::vips`] |
//! | `PUT /v1/vips/{vip}/backends/{addr}` | 201 created or 200 changed: `{"generation": G, "backend": ...}` |
//! | `DELETE /v1/vips/{vip}/backends/{addr}` | 200 `{"generation": G}` |
//!
//! Errors are JSON `{"error": "...", "field": "..."}`.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::config::MAX_WEIGHT;

/// The largest request body read, in bytes; larger ones get 413.
pub const MAX_BODY: usize = 4096;

/// How long a client may take to send its request head and body.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a connection stays open, whatever the client does; then it
/// finishes the request in hand and closes.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// Connections served at once; more are closed on arrival, so a flood
/// cannot take the file descriptors the health checks need.
const MAX_CONNECTIONS: usize = 64;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain";
const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// A service name in a URL: `default` (the RR_TARGET_IPS set) or a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    Default,
    Vip(IpAddr),
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceName::Default => f.write_str("default"),
            ServiceName::Vip(addr) => addr.fmt(f),
        }
    }
}

impl FromStr for ServiceName {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s == "default" {
            return Ok(ServiceName::Default);
        }
        s.parse()
            .map(ServiceName::Vip)
            .map_err(|_| ParseError::new(s, "`default` or an IP address"))
    }
}

/// A backend's administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Drain,
}

impl State {
    /// The name used in JSON and URLs: `up`, `down` or `drain`.
    pub fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Drain => "drain",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for State {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "up" => Ok(State::Up),
            "down" => Ok(State::Down),
            "drain" => Ok(State::Drain),
            _ => Err(ParseError::new(s, "up, down or drain")),
        }
    }
}

/// Text that is not a [`ServiceName`] or [`State`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not {expected}", quote(input))]
pub struct ParseError {
    pub input: String,
    pub expected: &'static str,
}

impl ParseError {
    fn new(input: &str, expected: &'static str) -> Self {
        ParseError {
            input: input.to_string(),
            expected,
        }
    }
}

/// What a PUT asks to change; `None` leaves the current value (or the
/// default for a new backend).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub weight: Option<u32>,
    pub state: Option<State>,
}

/// Why [`Control`] refused a change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    /// 404, field `vip`.
    #[error("unknown VIP {0}")]
    UnknownVip(ServiceName),
    /// 404, field `addr`.
    #[error("no backend {addr} in {service}")]
    UnknownBackend { service: ServiceName, addr: IpAddr },
    /// 400 naming `field`, e.g. when the table cannot be built.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// What the API needs from the rest of the program.
pub trait Control: Send + Sync {
    /// GET /v1/vips body.
    fn vips(&self) -> Value;
    /// Adds or changes a backend, swapping in one new table; returns the
    /// new table generation, the backend as JSON, and whether it was created.
    fn put_backend(
        &self,
        service: ServiceName,
        addr: IpAddr,
        change: Change,
    ) -> Result<(u64, Value, bool), ChangeError>;
    /// Removes a backend; returns the new table generation.
    fn delete_backend(&self, service: ServiceName, addr: IpAddr) -> Result<u64, ChangeError>;
    /// Ok when every worker polled within the last second; Err(reason) otherwise.
    fn healthz(&self) -> Result<(), String>;
    /// Prometheus text.
    fn metrics(&self) -> String;
}

/// A request body over [`MAX_BODY`] bytes (not read into memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// An HTTP response, independent of the server library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, content_type: &'static str, body: String) -> Self {
        Response {
            status,
            content_type,
            body,
            allow: None,
        }
    }

    fn json(status: u16, value: &Value) -> Self {
        // Value's Display is compact JSON and cannot fail.
        Response::text(status, JSON, format!("{value}\n"))
    }

    fn error(status: u16, message: &str, field: Option<&str>) -> Self {
        let mut body = Map::new();
        body.insert("error".into(), one_line(message).into());
        if let Some(field) = field {
            body.insert("field".into(), field.into());
        }
        Response::json(status, &Value::Object(body))
    }

    fn bad(message: &str, field: &str) -> Self {
        Response::error(400, message, Some(field))
    }
}

/// The endpoints, with path parameters still percent-encoded.
enum Route<'a> {
    Healthz,
    Metrics,
    Vips,
    Backend { vip: &'a str, addr: &'a str },
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        match segments.as_slice() {
            ["healthz"] => Some(Route::Healthz),
            ["metrics"] => Some(Route::Metrics),
            ["v1", "vips"] => Some(Route::Vips),
            ["v1", "vips", vip, "backends", addr] => Some(Route::Backend { vip, addr }),
            _ => None,
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Route::Backend { .. } => "PUT, DELETE",
            _ => "GET",
        }
    }
}

/// Answers one request. Never panics, whatever the input.
pub fn handle(
    control: &dyn Control,
    method: &str,
    url: &str,
    body: Result<&[u8], TooLarge>,
) -> Response {
    // `split` always yields at least one piece; the query is ignored.
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let Some(route) = Route::parse(path) else {
        return Response::error(404, "no such endpoint", None);
    };
    let allow = route.allow();
    if !allow.split(", ").any(|m| m == method) {
        let mut response =
            Response::error(405, &format!("method {} not allowed", quote(method)), None);
        response.allow = Some(allow);
        return response;
    }
    let Ok(body) = body else {
        return Response::error(
            413,
            &format!("body larger than {MAX_BODY} bytes"),
            Some("body"),
        );
    };
    match route {
        Route::Healthz => match control.healthz() {
            Ok(()) => Response::text(200, TEXT, "ok\n".into()),
            Err(reason) => Response::text(503, TEXT, format!("{}\n", one_line(&reason))),
        },
        Route::Metrics => Response::text(200, PROMETHEUS, control.metrics()),
        Route::Vips => Response::json(200, &control.vips()),
        Route::Backend { vip, addr } => backend(control, method, vip, addr, body),
    }
}

fn backend(control: &dyn Control, method: &str, vip: &str, addr: &str, body: &[u8]) -> Response {
    let vip = percent_decode(vip).unwrap_or_else(|| vip.to_string());
    let Ok(service) = vip.parse::<ServiceName>() else {
        let message = format!("vip {} is not `default` or an IP address", quote(&vip));
        return Response::bad(&message, "vip");
    };
    let addr = percent_decode(addr).unwrap_or_else(|| addr.to_string());
    let Ok(addr) = addr.parse::<IpAddr>() else {
        let message = format!("addr {} is not an IP address", quote(&addr));
        return Response::bad(&message, "addr");
    };
    if method == "DELETE" {
        return match control.delete_backend(service, addr) {
            Ok(generation) => Response::json(200, &json!({ "generation": generation })),
            Err(e) => change_error(&e),
        };
    }
    let change = match parse_change(body) {
        Ok(change) => change,
        Err(response) => return response,
    };
    match control.put_backend(service, addr, change) {
        Ok((generation, backend, created)) => Response::json(
            if created { 201 } else { 200 },
            &json!({ "generation": generation, "backend": backend }),
        ),
        Err(e) => change_error(&e),
    }
}

fn change_error(e: &ChangeError) -> Response {
    let (status, field) = match e {
        ChangeError::UnknownVip(_) => (404, "vip"),
        ChangeError::UnknownBackend { .. } => (404, "addr"),
        ChangeError::Invalid { field, .. } => (400, *field),
    };
    Response::error(status, &e.to_string(), Some(field))
}

/// The PUT body: empty, or a JSON object with only `weight` and `state`.
fn parse_change(body: &[u8]) -> Result<Change, Response> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Response::bad("body is not UTF-8", "body"));
    };
    if text.trim().is_empty() {
        return Ok(Change::default());
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Response::bad(&format!("body is not valid JSON: {e}"), "body"))?;
    let Value::Object(object) = value else {
        return Err(Response::bad("body is not a JSON object", "body"));
    };
    // Unknown keys first, so a typo is reported as such.
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "weight" | "state"))
    {
        let message = format!("unknown field {}: expected weight or state", quote(key));
        return Err(Response::bad(&message, key));
    }
    let weight = object
        .get("weight")
        .map(|w| {
            w.as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .filter(|w| *w <= MAX_WEIGHT)
                .ok_or_else(|| {
                    let message = format!("weight is not an integer from 0 to {MAX_WEIGHT}");
                    Response::bad(&message, "weight")
                })
        })
        .transpose()?;
    let state = object
        .get("state")
        .map(|s| match s.as_str() {
            Some(s) => s
                .parse::<State>()
                .map_err(|e| Response::bad(&format!("state {e}"), "state")),
            None => Err(Response::bad(
                "state is not a string: up, down or drain",
                "state",
            )),
        })
        .transpose()?;
    Ok(Change { weight, state })
}

/// Decodes `%XX` escapes (so IPv6 addresses may come as `2001%3Adb8%3A%3A1`);
/// `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(hex)?;
            let lo = bytes.next().and_then(hex)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Client text in a message: quoted, escaped (so one line) and cut short.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", s.get(..cut).unwrap_or_default()),
        None => format!("{s:?}"),
    }
}

/// Error messages are promised to be one line.
fn one_line(s: &str) -> String {
    s.trim_end()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Why the control API could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on RR_API={addr}: {error}")]
    Listen { addr: SocketAddr, error: io::Error },
    #[error("cannot start the rr-api thread: {0}")]
    Spawn(io::Error),
}

/// The API served on thread `rr-api` until dropped: hyper's HTTP/1 server
/// on a single-threaded tokio runtime, so slow or abusive clients cost a
/// task each, are cut off by timeouts, and never hold up other requests.
pub struct Server {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (an error if it is taken) and starts serving.
    pub fn start(addr: SocketAddr, control: Arc<dyn Control>) -> Result<Server, Error> {
        let listen = |error| Error::Listen { addr, error };
        let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
        let local_addr = listener.local_addr().map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // `handle` may wait for the controller's lock: off the runtime.
            .max_blocking_threads(4)
            .build()
            .map_err(Error::Spawn)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("rr-api".into())
            .spawn(move || runtime.block_on(run(listener, control, stopped)))
            .map_err(Error::Spawn)?;
        Ok(Server {
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Ends the accept loop; open connections go with the runtime.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("control API thread panicked");
        }
    }
}

async fn run(
    listener: std::net::TcpListener,
    control: Arc<dyn Control>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("control API stopped: {e}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off, keep serving.
                    log::warn!("control API: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            log::warn!("control API: {MAX_CONNECTIONS} connections open; closing one from {peer}");
            continue;
        };
        let control = Arc::clone(&control);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let control = Arc::clone(&control);
                async move { Ok::<_, std::convert::Infallible>(serve(control, request, peer).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            // Errors are the client's (it went away, sent garbage).
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(CONNECTION_LIMIT) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(READ_TIMEOUT, connection).await;
                }
            }
        });
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

async fn serve(
    control: Arc<dyn Control>,
    request: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> hyper::Response<Body> {
    use http_body_util::BodyExt;
    let method = request.method().as_str().to_owned();
    let url = request.uri().to_string();
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Checked before reading, so a body we will refuse is never taken.
    let body = if declared.is_some_and(|n| n > MAX_BODY as u64) {
        Ok(Err(TooLarge))
    } else {
        let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
        match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
            Ok(Ok(body)) => Ok(Ok(body.to_bytes())),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Ok(Err(TooLarge)),
            Ok(Err(e)) => Err(Response::bad(&format!("cannot read body: {e}"), "body")),
            Err(_) => Err(Response::error(
                408,
                "timed out reading the body",
                Some("body"),
            )),
        }
    };
    // Never blocks (it reads counters), so it never queues behind changes.
    let healthz = method == "GET" && url.split('?').next() == Some("/healthz");
    let response = match body {
        Err(response) => response,
        Ok(body) if healthz => handle(
            control.as_ref(),
            &method,
            &url,
            body.as_deref().map_err(|_| TooLarge),
        ),
        Ok(body) => {
            let (m, u) = (method.clone(), url.clone());
            // Off the runtime thread: a change waits for the controller.
            let task = tokio::task::spawn_blocking(move || {
                let body = body.as_deref().map_err(|_| TooLarge);
                handle(control.as_ref(), &m, &u, body)
            });
            task.await
                .unwrap_or_else(|e| Response::error(500, &format!("request failed: {e}"), None))
        }
    };
    if !matches!(method.as_str(), "GET" | "HEAD") {
        let path = url.split('?').next().unwrap_or_default();
        log::info!("api {method:?} {path:?} from {peer} -> {}", response.status);
    }
    to_hyper(response)
}

fn to_hyper(r: Response) -> hyper::Response<Body> {
    let mut out = hyper::Response::new(Body::new(r.body.into()));
    *out.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(r.content_type),
    );
    if let Some(allow) = r.allow {
        headers.insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allow),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Put(ServiceName, IpAddr, Change),
        Delete(ServiceName, IpAddr),
    }

    /// Records changes; answers generation 7 to PUT and 8 to DELETE.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<Call>>,
        created: bool,
        refuse: Option<fn() -> ChangeError>,
        unhealthy: Option<&'static str>,
        /// How long a PUT takes, as if waiting for the controller's lock.
        slow: Option<Duration>,
    }

    impl Fake {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Control for Fake {
        fn vips(&self) -> Value {
            json!({ "vips": [{ "vip": "default", "backends": [] }] })
        }

        fn put_backend(
            &self,
            service: ServiceName,
            addr: IpAddr,
            change: Change,
        ) -> Result<(u64, Value, bool), ChangeError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Put(service, addr, change.clone()));
            if let Some(refuse) = self.refuse {
                return Err(refuse());
            }
            if let Some(delay) = self.slow {
                std::thread::sleep(delay);
            }
            let state = change.state.unwrap_or(State::Up).name();
            let backend = json!({ "addr": addr.to_string(), "weight": change.weight.unwrap_or(1), "state": state });
            Ok((7, backend, self.created))
        }

        fn delete_backend(&self, service: ServiceName, addr: IpAddr) -> Result<u64, ChangeError> {
            self.calls.lock().unwrap().push(Call::Delete(service, addr));
            match self.refuse {
                Some(refuse) => Err(refuse()),
                None => Ok(8),
            }
        }

        fn healthz(&self) -> Result<(), String> {
            self.unhealthy
                .map_or(Ok(()), |reason| Err(reason.to_string()))
        }

        fn metrics(&self) -> String {
            "# TYPE rr_table_generation gauge\nrr_table_generation 7\n".to_string()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn json_of(r: &Response) -> Value {
        assert_eq!(r.content_type, JSON, "{r:?}");
        assert!(r.body.ends_with('\n'));
        serde_json::from_str(&r.body).unwrap()
    }

    fn put(control: &dyn Control, url: &str, body: &str) -> Response {
        handle(control, "PUT", url, Ok(body.as_bytes()))
    }

    #[test]
    fn healthz_ok_is_200_text_ok() {
        let r = handle(&Fake::default(), "GET", "/healthz", Ok(b""));
        assert_eq!(
            (r.status, r.content_type, r.body.as_str()),
            (200, "text/plain", "ok\n")
        );
    }

    #[test]
    fn healthz_failure_is_503_with_the_reason_on_one_line() {
        let fake = Fake {
            unhealthy: Some("worker 1 silent\nfor 3 s"),
            ..Fake::default()
        };
        let r = handle(&fake, "GET", "/healthz", Ok(b""));
        assert_eq!(
            (r.status, r.content_type, r.body.as_str()),
            (503, "text/plain", "worker 1 silent for 3 s\n")
        );
    }

    #[test]
    fn metrics_are_prometheus_text_from_control() {
        let r = handle(&Fake::default(), "GET", "/metrics", Ok(b""));
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "text/plain; version=0.0.4");
        assert_eq!(r.body, Fake::default().metrics());
    }

    #[test]
    fn vips_are_the_json_control_builds() {
        let r = handle(&Fake::default(), "GET", "/v1/vips?pretty=1", Ok(b""));
        assert_eq!(r.status, 200);
        assert_eq!(json_of(&r), Fake::default().vips());
    }

    #[test]
    fn put_of_new_backend_is_201_with_generation_and_backend() {
        let fake = Fake {
            created: true,
            ..Fake::default()
        };
        let r = put(
            &fake,
            "/v1/vips/192.0.2.10/backends/10.2.0.1",
            r#"{"weight": 3, "state": "drain"}"#,
        );
        assert_eq!(r.status, 201);
        assert_eq!(
            json_of(&r),
            json!({ "generation": 7, "backend": { "addr": "10.2.0.1", "weight": 3, "state": "drain" } })
        );
        let change = Change {
            weight: Some(3),
            state: Some(State::Drain),
        };
        assert_eq!(
            fake.calls(),
            [Call::Put(
                ServiceName::Vip(ip("192.0.2.10")),
                ip("10.2.0.1"),
                change
            )]
        );
    }

    #[test]
    fn put_of_existing_backend_is_200() {
        let fake = Fake::default();
        let r = put(
            &fake,
            "/v1/vips/default/backends/10.1.0.1",
            r#"{"weight": 0}"#,
        );
        assert_eq!(r.status, 200);
        assert_eq!(json_of(&r)["generation"], 7);
        let change = Change {
            weight: Some(0),
            state: None,
        };
        assert_eq!(
            fake.calls(),
            [Call::Put(ServiceName::Default, ip("10.1.0.1"), change)]
        );
    }

    #[test]
    fn put_with_empty_body_changes_nothing() {
        let fake = Fake::default();
        for body in ["", " \r\n", "{}"] {
            assert_eq!(
                put(&fake, "/v1/vips/default/backends/10.1.0.1", body).status,
                200
            );
        }
        let call = Call::Put(ServiceName::Default, ip("10.1.0.1"), Change::default());
        assert_eq!(fake.calls(), [call.clone(), call.clone(), call]);
    }

    #[test]
    fn ipv6_vip_and_addr_may_be_percent_encoded_or_plain() {
        let fake = Fake::default();
        let urls = [
            "/v1/vips/2001%3Adb8%3A%3A10/backends/2001%3adb8%3a%3a1",
            "/v1/vips/2001:db8::10/backends/2001:db8::1",
        ];
        for url in urls {
            assert_eq!(put(&fake, url, "").status, 200, "{url}");
            assert_eq!(handle(&fake, "DELETE", url, Ok(b"")).status, 200, "{url}");
        }
        let (vip, addr) = (ServiceName::Vip(ip("2001:db8::10")), ip("2001:db8::1"));
        let put_call = Call::Put(vip, addr, Change::default());
        let delete_call = Call::Delete(vip, addr);
        assert_eq!(
            fake.calls(),
            [put_call.clone(), delete_call.clone(), put_call, delete_call]
        );
    }

    #[test]
    fn delete_returns_the_new_generation() {
        let fake = Fake::default();
        let r = handle(
            &fake,
            "DELETE",
            "/v1/vips/default/backends/10.1.0.1",
            Ok(b""),
        );
        assert_eq!(r.status, 200);
        assert_eq!(json_of(&r), json!({ "generation": 8 }));
        assert_eq!(
            fake.calls(),
            [Call::Delete(ServiceName::Default, ip("10.1.0.1"))]
        );
    }

    #[test]
    fn query_string_is_ignored() {
        let fake = Fake::default();
        let r = put(
            &fake,
            "/v1/vips/default/backends/10.1.0.1?dry_run=1&x=%zz",
            r#"{"state":"down"}"#,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            handle(&fake, "GET", "/healthz?verbose", Ok(b"")).status,
            200
        );
    }

    #[test]
    fn bad_requests_get_status_and_field_and_never_reach_control() {
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static [u8],
            u16,
            Option<&'static str>,
        );
        const B: &str = "/v1/vips/default/backends/10.1.0.1";
        // (what, method, url, body, status, field)
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("not JSON",         "PUT", B, b"{weight: 1}",              400, Some("body")),
            ("truncated JSON",   "PUT", B, b"{\"weight\": 1",           400, Some("body")),
            ("array body",       "PUT", B, b"[1]",                      400, Some("body")),
            ("string body",      "PUT", B, b"\"up\"",                   400, Some("body")),
            ("null body",        "PUT", B, b"null",                     400, Some("body")),
            ("not UTF-8",        "PUT", B, b"{\"state\": \"\xff\"}",    400, Some("body")),
            ("unknown key",      "PUT", B, b"{\"wieght\": 1}",          400, Some("wieght")),
            ("unknown key first", "PUT", B, b"{\"weight\": -1, \"zz\": 0}", 400, Some("zz")),
            ("weight string",    "PUT", B, b"{\"weight\": \"1\"}",      400, Some("weight")),
            ("weight null",      "PUT", B, b"{\"weight\": null}",       400, Some("weight")),
            ("weight negative",  "PUT", B, b"{\"weight\": -1}",         400, Some("weight")),
            ("weight fraction",  "PUT", B, b"{\"weight\": 1.5}",        400, Some("weight")),
            ("weight float",     "PUT", B, b"{\"weight\": 1.0}",        400, Some("weight")),
            ("weight too big",   "PUT", B, b"{\"weight\": 65536}",      400, Some("weight")),
            ("weight huge",      "PUT", B, b"{\"weight\": 1e30}",       400, Some("weight")),
            ("weight past u64",  "PUT", B, b"{\"weight\": 18446744073709551616}", 400, Some("weight")),
            ("state number",     "PUT", B, b"{\"state\": 1}",           400, Some("state")),
            ("state unknown",    "PUT", B, b"{\"state\": \"UP\"}",      400, Some("state")),
            ("vip garbage",      "PUT",    "/v1/vips/nope/backends/10.1.0.1",     b"", 400, Some("vip")),
            ("vip bad escape",   "DELETE", "/v1/vips/2001%3/backends/10.1.0.1",   b"", 400, Some("vip")),
            ("vip not UTF-8",    "DELETE", "/v1/vips/%ff/backends/10.1.0.1",      b"", 400, Some("vip")),
            ("vip newline",      "PUT",    "/v1/vips/a%0Ab/backends/10.1.0.1",    b"", 400, Some("vip")),
            ("vip empty",        "PUT",    "/v1/vips//backends/10.1.0.1",         b"", 400, Some("vip")),
            ("vip capitalised",  "PUT",    "/v1/vips/Default/backends/10.1.0.1",  b"", 400, Some("vip")),
            ("addr garbage",     "DELETE", "/v1/vips/default/backends/10.1.0",    b"", 400, Some("addr")),
            ("addr is default",  "PUT",    "/v1/vips/default/backends/default",   b"", 400, Some("addr")),
            ("addr before body", "PUT",    "/v1/vips/default/backends/x",         b"[", 400, Some("addr")),
            ("unknown path",     "GET",    "/v2/vips",                            b"", 404, None),
            ("root",             "GET",    "/",                                   b"", 404, None),
            ("trailing slash",   "GET",    "/healthz/",                           b"", 404, None),
            ("no leading slash", "GET",    "healthz",                             b"", 404, None),
            ("backend list",     "GET",    "/v1/vips/default/backends",           b"", 404, None),
            ("POST healthz",     "POST",   "/healthz",                            b"", 405, None),
            ("lowercase method", "put",    B,                                     b"", 405, None),
            ("GET a backend",    "GET",    B,                                     b"", 405, None),
            ("PUT vips",         "PUT",    "/v1/vips",                            b"{}", 405, None),
            ("too large",        "PUT",    B,                                     b"", 413, Some("body")),
        ];
        for (what, method, url, body, status, field) in cases {
            let fake = Fake::default();
            let body = if *what == "too large" {
                Err(TooLarge)
            } else {
                Ok(*body)
            };
            let r = handle(&fake, method, url, body);
            assert_eq!(r.status, *status, "{what}: {r:?}");
            let v = json_of(&r);
            let error = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {r:?}"));
            assert!(
                !error.is_empty() && !error.contains('\n'),
                "{what}: {error:?}"
            );
            assert_eq!(
                v.get("field").and_then(Value::as_str),
                *field,
                "{what}: {r:?}"
            );
            assert!(fake.calls().is_empty(), "{what} reached control");
        }
    }

    #[test]
    fn unknown_path_is_404_no_such_endpoint() {
        let r = handle(&Fake::default(), "GET", "/nope?x", Ok(b""));
        assert_eq!(r.status, 404);
        assert_eq!(json_of(&r), json!({ "error": "no such endpoint" }));
    }

    #[test]
    fn wrong_method_is_405_with_allow_header() {
        let r = handle(
            &Fake::default(),
            "PATCH",
            "/v1/vips/default/backends/10.1.0.1",
            Ok(b""),
        );
        assert_eq!((r.status, r.allow), (405, Some("PUT, DELETE")));
        let r = handle(&Fake::default(), "DELETE", "/metrics", Ok(b""));
        assert_eq!((r.status, r.allow), (405, Some("GET")));
        let r = handle(&Fake::default(), "GET", "/metrics", Ok(b""));
        assert_eq!(r.allow, None);
    }

    #[test]
    fn body_over_max_is_413_and_never_reaches_control() {
        let fake = Fake::default();
        let r = handle(
            &fake,
            "PUT",
            "/v1/vips/default/backends/10.1.0.1",
            Err(TooLarge),
        );
        assert_eq!(r.status, 413);
        assert_eq!(json_of(&r)["field"], "body");
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn change_errors_map_to_404_and_400() {
        // (what control says, status, field, error text)
        type Case = (fn() -> ChangeError, u16, &'static str, &'static str);
        let cases: [Case; 3] = [
            (
                || ChangeError::UnknownVip(ServiceName::Vip("192.0.2.9".parse().unwrap())),
                404,
                "vip",
                "unknown VIP 192.0.2.9",
            ),
            (
                || ChangeError::UnknownBackend {
                    service: ServiceName::Default,
                    addr: "10.1.0.9".parse().unwrap(),
                },
                404,
                "addr",
                "no backend 10.1.0.9 in default",
            ),
            (
                || ChangeError::Invalid {
                    field: "weight",
                    message: "default has no backend\nwith weight > 0".into(),
                },
                400,
                "weight",
                "default has no backend with weight > 0",
            ),
        ];
        for (refuse, status, field, error) in cases {
            let fake = Fake {
                refuse: Some(refuse),
                ..Fake::default()
            };
            for method in ["PUT", "DELETE"] {
                let r = handle(&fake, method, "/v1/vips/default/backends/10.1.0.9", Ok(b""));
                assert_eq!(r.status, status, "{method} {error}");
                assert_eq!(json_of(&r), json!({ "error": error, "field": field }));
            }
        }
    }

    #[test]
    fn service_names_and_states_parse_and_display() {
        assert_eq!("default".parse(), Ok(ServiceName::Default));
        assert_eq!("::1".parse(), Ok(ServiceName::Vip(ip("::1"))));
        assert_eq!(ServiceName::Vip(ip("192.0.2.1")).to_string(), "192.0.2.1");
        assert_eq!(ServiceName::Default.to_string(), "default");
        let err = "DEFAULT".parse::<ServiceName>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"DEFAULT\" is not `default` or an IP address"
        );
        for state in [State::Up, State::Down, State::Drain] {
            assert_eq!(state.name().parse(), Ok(state));
            assert_eq!(state.to_string(), state.name());
        }
        assert!("Up".parse::<State>().is_err());
    }

    #[test]
    fn messages_quote_client_text_on_one_short_line() {
        assert_eq!(quote("a\"b\nc"), "\"a\\\"b\\nc\"");
        let long = "x".repeat(1000);
        assert_eq!(quote(&long), format!("{:?}...", "x".repeat(64)));
        assert_eq!(
            percent_decode("2001%3adb8%3A%3A1").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%g0"), None);
    }

    /// Sends one raw HTTP/1.1 request; returns status, head and body.
    fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    #[test]
    fn serves_real_http_and_drops_promptly() {
        let fake = Arc::new(Fake {
            created: true,
            ..Fake::default()
        });
        let server = Server::start("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let (status, head, body) = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain\r\n"),
            "{head}"
        );

        let json = r#"{"weight": 2}"#;
        let request = format!(
            "PUT /v1/vips/default/backends/2001%3Adb8%3A%3A1 HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
        let (status, head, body) = exchange(addr, &request);
        assert_eq!(status, 201, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["generation"], 7);
        assert_eq!(v["backend"]["weight"], 2);
        let change = Change {
            weight: Some(2),
            state: None,
        };
        assert_eq!(
            fake.calls(),
            [Call::Put(ServiceName::Default, ip("2001:db8::1"), change)]
        );

        // Only the head is sent: a 413 must come without waiting for the body.
        let (status, _, body) = exchange(
            addr,
            "PUT /v1/vips/default/backends/10.1.0.1 HTTP/1.1\r\nHost: x\r\n\
             Content-Length: 100000\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 413);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["field"],
            "body"
        );

        let (status, _, body) = exchange(
            addr,
            "PUT /v1/vips/default/backends/10.1.0.1 HTTP/1.1\r\nHost: x\r\n\
             Content-Length: ten\r\nConnection: close\r\n\r\n",
        );
        // hyper refuses it before our handler runs.
        assert_eq!(status, 400, "{body}");

        let (status, head, _) = exchange(
            addr,
            "POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 405);
        assert!(
            head.to_ascii_lowercase().contains("\r\nallow: get"),
            "{head}"
        );
        assert_eq!(fake.calls().len(), 1);

        let started = Instant::now();
        drop(server);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let closed = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            TcpStream::connect(addr).is_err()
        });
        assert!(closed, "still listening 1 s after drop");
    }

    #[test]
    fn chunked_bodies_are_read_and_capped_at_max_body_over_http() {
        let fake = Arc::new(Fake::default());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap();
        let head = "PUT /v1/vips/default/backends/10.1.0.1 HTTP/1.1\r\nHost: x\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let json = r#"{"state": "down"}"#;
        let request = format!("{head}{:x}\r\n{json}\r\n0\r\n\r\n", json.len());
        let (status, _, _) = exchange(server.local_addr(), &request);
        assert_eq!(status, 200);
        let change = Change {
            weight: None,
            state: Some(State::Down),
        };
        assert_eq!(
            fake.calls(),
            [Call::Put(ServiceName::Default, ip("10.1.0.1"), change)]
        );

        // A chunk over MAX_BODY, sent only up to the byte that makes it too
        // large: the reply must not wait for the rest (and the server has
        // read all we sent, so its close is not a reset).
        let big = " ".repeat(MAX_BODY + 1);
        let request = format!("{head}{:x}\r\n{big}", MAX_BODY + 100);
        let (status, _, _) = exchange(server.local_addr(), &request);
        assert_eq!(status, 413);
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn huge_declared_body_gets_413_at_once_and_the_server_lives_on() {
        let server =
            Server::start("127.0.0.1:0".parse().unwrap(), Arc::new(Fake::default())).unwrap();
        let addr = server.local_addr();
        let head = |length: &str| {
            format!(
                "PUT /v1/vips/default/backends/10.1.0.1 HTTP/1.1\r\nHost: x\r\n\
                 Content-Length: {length}\r\nConnection: close\r\n\r\n"
            )
        };
        assert_eq!(exchange(addr, &head("1000000000000000")).0, 413);
        // hyper itself refuses a length it cannot represent.
        let (status, _, _) = exchange(addr, &head("18446744073709551615"));
        assert!((400..500).contains(&status), "{status}");
        let (status, _, _) = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
    }

    /// GET /healthz gets 200 within a second.
    fn healthz_answers_at_once(addr: SocketAddr) {
        let started = Instant::now();
        let (status, _, _) = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn slow_changes_beyond_the_blocking_pool_do_not_hold_up_healthz() {
        let fake = Arc::new(Fake {
            slow: Some(Duration::from_secs(2)),
            ..Fake::default()
        });
        let server = Server::start("127.0.0.1:0".parse().unwrap(), fake).unwrap();
        let addr = server.local_addr();
        // More slow changes than the blocking pool has threads.
        let puts: Vec<_> = (0..6)
            .map(|_| {
                std::thread::spawn(move || {
                    exchange(
                        addr,
                        "PUT /v1/vips/default/backends/10.1.0.1 HTTP/1.1\r\nHost: x\r\n\
                         Content-Length: 2\r\nConnection: close\r\n\r\n{}",
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        healthz_answers_at_once(addr);
        for put in puts {
            assert_eq!(put.join().unwrap().0, 200);
        }
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_and_the_rest_served() {
        let server =
            Server::start("127.0.0.1:0".parse().unwrap(), Arc::new(Fake::default())).unwrap();
        let addr = server.local_addr();
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(extra.read(&mut buf).ok(), Some(0), "not closed at once");
        drop(idle);
        let ok = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .is_ok()
                && {
                    let mut reply = String::new();
                    s.read_to_string(&mut reply).is_ok() && reply.starts_with("HTTP/1.1 200")
                }
        });
        assert!(ok, "not served once the idle connections went");
    }

    #[test]
    fn a_client_that_never_finishes_its_body_holds_up_nobody_and_gets_408() {
        let server =
            Server::start("127.0.0.1:0".parse().unwrap(), Arc::new(Fake::default())).unwrap();
        let addr = server.local_addr();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(
            b"PUT /v1/vips/default/backends/10.1.0.1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        )
        .unwrap();
        healthz_answers_at_once(addr);
        // The slow one gets 408 once its body is overdue.
        slow.set_read_timeout(Some(READ_TIMEOUT + Duration::from_secs(2)))
            .unwrap();
        let mut reply = String::new();
        let _ = slow.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap()["field"],
            "body"
        );
    }

    #[test]
    fn start_on_a_taken_address_is_a_one_line_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let Err(e) = Server::start(addr, Arc::new(Fake::default())) else {
            panic!("bound a taken address");
        };
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot listen on RR_API={addr}: ")),
            "{text}"
        );
        assert!(!text.contains('\n'));
        assert!(
            matches!(e, Error::Listen { ref error, .. } if error.kind() == io::ErrorKind::AddrInUse)
        );
    }

    fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            r#"\{("(weight|state|x)": ?(-?[0-9]{1,21}(\.[0-9])?|"[a-z]{0,6}"|null|true|\[\]|\{\}),? ?){0,3}\}"#
                .prop_map(String::into_bytes),
        ]
    }

    fn url_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,40}",
            "/v1/vips/(default|[0-9a-fA-F:.%]{0,24})/backends/[0-9a-fA-F:.%]{0,24}(\\?.{0,8})?",
            "/(healthz|metrics|v1/vips)(/|\\?.{0,8})?",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn handle_never_panics_and_always_answers_sensibly(
            method in prop_oneof![Just("GET".to_string()), Just("PUT".to_string()), Just("DELETE".to_string()), ".{0,8}"],
            url in url_strategy(),
            body in body_strategy(),
            too_large in any::<bool>(),
            created in any::<bool>(),
        ) {
            let fake = Fake { created, ..Fake::default() };
            let body = if too_large { Err(TooLarge) } else { Ok(body.as_slice()) };
            let r = handle(&fake, &method, &url, body);
            prop_assert!([200, 201, 400, 404, 405, 413].contains(&r.status), "{r:?}");
            prop_assert_eq!(r.allow.is_some(), r.status == 405);
            if r.status >= 400 {
                let v: Value = serde_json::from_str(&r.body).unwrap();
                let error = v["error"].as_str().unwrap();
                prop_assert!(!error.contains('\n'));
                prop_assert!(fake.calls().is_empty());
            }
        }
    }
}
