//! `http-server` (the backends) and `http-load` (the clients).

use crate::{Result, handle_signals, help, print_final, value};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// http-server

const SERVER_HELP: &str = "\
usage: rr-testbed http-server --name NAME --listen ADDR:PORT [--listen ...]
                              [--health ADDR:PORT] [--sink ADDR:PORT]

  --name NAME          this server's name, the body of every answer
  --listen ADDR:PORT   any GET answers 200 with `NAME\\n`; repeat for more addresses
  --health ADDR:PORT   GET /healthz answers 200 `ok` while healthy, 503 while not;
                       SIGUSR1 makes it unhealthy, SIGUSR2 healthy again
  --sink ADDR:PORT     plain TCP: writes `NAME\\n` at once, reads to EOF, then writes
                       the number of bytes read and a newline, and closes; repeat for more addresses

Prints `ready` on stderr once serving and one JSON line of counters on
stdout at SIGTERM or SIGINT.";

/// What the server shares between its tasks and the signal thread.
pub struct ServerState {
    name: String,
    healthy: AtomicBool,
    /// Per --listen address, in the order given.
    requests: Vec<(String, AtomicU64)>,
    health_requests: AtomicU64,
    sink_connections: AtomicU64,
    sink_bytes: AtomicU64,
}

/// Listeners bound before `ready`, so a bind failure is a startup error.
pub struct Listeners {
    listen: Vec<TcpListener>,
    health: Option<TcpListener>,
    sink: Vec<TcpListener>,
}

impl ServerState {
    pub fn new(name: &str, listen: &[TcpListener]) -> io::Result<ServerState> {
        let requests = listen
            .iter()
            .map(|l| Ok((l.local_addr()?.to_string(), AtomicU64::new(0))))
            .collect::<io::Result<_>>()?;
        Ok(ServerState {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            requests,
            health_requests: AtomicU64::new(0),
            sink_connections: AtomicU64::new(0),
            sink_bytes: AtomicU64::new(0),
        })
    }

    pub fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::SeqCst) != healthy {
            eprintln!("{}", if healthy { "healthy" } else { "unhealthy" });
        }
    }

    pub fn report(&self) -> Value {
        let requests: serde_json::Map<String, Value> = self
            .requests
            .iter()
            .map(|(addr, n)| (addr.clone(), n.load(Ordering::Relaxed).into()))
            .collect();
        json!({
            "name": self.name,
            "requests": requests,
            "health_requests": self.health_requests.load(Ordering::Relaxed),
            "healthy": self.healthy.load(Ordering::Relaxed),
            "sink_connections": self.sink_connections.load(Ordering::Relaxed),
            "sink_bytes": self.sink_bytes.load(Ordering::Relaxed),
        })
    }
}

/// The health endpoint's answer for a request, given the health state.
pub fn health_answer(healthy: bool, method: &Method, path: &str) -> (StatusCode, &'static str) {
    match (method, path) {
        (&Method::GET, "/healthz") if healthy => (StatusCode::OK, "ok"),
        (&Method::GET, "/healthz") => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found"),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("listen on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub fn server_main(args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let (mut name, mut listen, mut health, mut sink) = (None, Vec::new(), None, Vec::new());
    while let Some(arg) = parser.next()? {
        match arg {
            Long("name") => name = Some(value::<String>(&mut parser, "--name")?),
            Long("listen") => listen.push(bind(value(&mut parser, "--listen")?)?),
            Long("health") => health = Some(bind(value(&mut parser, "--health")?)?),
            Long("sink") => sink.push(bind(value(&mut parser, "--sink")?)?),
            Short('h') | Long("help") => help(SERVER_HELP),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let name = name.ok_or("--name is needed")?;
    if listen.is_empty() && health.is_none() && sink.is_empty() {
        return Err("nothing to serve: give --listen, --health or --sink".into());
    }
    let state = Arc::new(ServerState::new(&name, &listen)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    {
        use signal_hook::consts::{SIGUSR1, SIGUSR2};
        let (report, toggle) = (state.clone(), state.clone());
        handle_signals(
            &[SIGUSR1, SIGUSR2],
            move || report.report(),
            move |signal| toggle.set_healthy(signal == SIGUSR2),
        )?;
    }
    let listeners = Listeners {
        listen,
        health,
        sink,
    };
    runtime.block_on(async move {
        let serving = serve(listeners, state)?;
        eprintln!("ready");
        serving.await;
        Ok(())
    })
}

/// Starts every listener's accept loop (needs a runtime) and returns a
/// future that never completes.
pub fn serve(
    listeners: Listeners,
    state: Arc<ServerState>,
) -> io::Result<impl Future<Output = ()>> {
    for (index, listener) in listeners.listen.into_iter().enumerate() {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let state = state.clone();
        tokio::spawn(accept_http(listener, state, Some(index)));
    }
    if let Some(listener) = listeners.health {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(accept_http(listener, state.clone(), None));
    }
    for listener in listeners.sink {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(accept_sink(listener, state.clone()));
    }
    Ok(std::future::pending())
}

/// Serves HTTP on one listener: the named answer for `Some(listen index)`,
/// the health endpoint for None.
async fn accept_http(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    listen: Option<usize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&state, listen, &request)) }
                },
            );
            // A client that goes away mid-request is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(
    state: &ServerState,
    listen: Option<usize>,
    request: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let (status, body) = match listen {
        Some(index) if request.method() == Method::GET => {
            if let Some((_, n)) = state.requests.get(index) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            (StatusCode::OK, format!("{}\n", state.name))
        }
        Some(_) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        None => {
            state.health_requests.fetch_add(1, Ordering::Relaxed);
            let healthy = state.healthy.load(Ordering::SeqCst);
            let (status, body) = health_answer(healthy, request.method(), request.uri().path());
            (status, body.to_string())
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn accept_sink(listener: tokio::net::TcpListener, state: Arc<ServerState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.sink_connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = sink(stream, &state).await;
        });
    }
}

/// Name, then count bytes to EOF, then the count. Written with
/// readable/try_read because tokio's io-util feature is not enabled.
async fn sink(stream: tokio::net::TcpStream, state: &ServerState) -> io::Result<()> {
    write_all(&stream, format!("{}\n", state.name).as_bytes()).await?;
    let mut count: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                count += n as u64;
                state.sink_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    write_all(&stream, format!("{count}\n").as_bytes()).await
}

async fn write_all(stream: &tokio::net::TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// http-load

const LOAD_HELP: &str = "\
usage: rr-testbed http-load --target ADDR:PORT --requests N [--concurrency C]
                            [--timeout-ms T] [--source ADDR] [--raw]

Sends N HTTP/1.0 `GET /` requests, each on a new TCP connection, C at a time,
and prints one JSON line: requests, ok, errors by kind (connect, timeout,
reset, status, other), ok answers by server name (the body), latency of ok
requests in microseconds (connect start to full response), elapsed_s, and
rps (ok requests per second). Exits 0 whatever the errors.

  --target ADDR:PORT   where to connect
  --requests N         how many requests
  --concurrency C      requests in flight at once (default 16)
  --timeout-ms T       per request, for connect and for the response (default 2000)
  --source ADDR        local address to bind each connection to
  --raw                add every ok latency, sorted, as latencies_us (so that
                       several clients' percentiles can be merged)";

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: SocketAddr,
    pub requests: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub source: Option<std::net::IpAddr>,
    /// Report every latency too.
    pub raw: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connect refused, unreachable, or another connect error.
    Connect,
    /// Connect or response not done within the timeout.
    Timeout,
    /// Reset, aborted or broken pipe after connecting.
    Reset,
    /// A response that is not `200`.
    Status,
    /// Anything else, such as a close without any response.
    Other,
}

#[derive(Debug, Default)]
pub struct LoadStats {
    ok: u64,
    errors: [u64; 5],
    by_server: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl LoadStats {
    fn record(&mut self, result: std::result::Result<(String, Duration), Failure>) {
        match result {
            Ok((server, latency)) => {
                self.ok += 1;
                *self.by_server.entry(server).or_default() += 1;
                self.latencies_us
                    .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            Err(failure) => self.errors[failure as usize] += 1,
        }
    }

    pub fn report(&self, requests: usize, elapsed: Duration, raw: bool) -> Value {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let percentile = |p: usize| {
            if sorted.is_empty() {
                0
            } else {
                sorted[((sorted.len() - 1) * p).div_ceil(100)]
            }
        };
        let seconds = elapsed.as_secs_f64();
        let rps = if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        };
        let mut report = json!({
            "requests": requests,
            "ok": self.ok,
            "errors": {
                "connect": self.errors[Failure::Connect as usize],
                "timeout": self.errors[Failure::Timeout as usize],
                "reset": self.errors[Failure::Reset as usize],
                "status": self.errors[Failure::Status as usize],
                "other": self.errors[Failure::Other as usize],
            },
            "by_server": self.by_server,
            "latency_us": {
                "p50": percentile(50),
                "p90": percentile(90),
                "p99": percentile(99),
                "max": sorted.last().copied().unwrap_or(0),
            },
            "elapsed_s": (seconds * 1000.0).round() / 1000.0,
            "rps": rps.round(),
        });
        if raw {
            report["latencies_us"] = json!(sorted);
        }
        report
    }
}

pub fn load_main(args: Vec<OsString>) -> Result<()> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let (mut target, mut requests, mut concurrency, mut timeout_ms, mut source) =
        (None, None, 16usize, 2000u64, None);
    let mut raw = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("target") => target = Some(value(&mut parser, "--target")?),
            Long("requests") => requests = Some(value(&mut parser, "--requests")?),
            Long("concurrency") => concurrency = value(&mut parser, "--concurrency")?,
            Long("timeout-ms") => timeout_ms = value(&mut parser, "--timeout-ms")?,
            Long("source") => source = Some(value(&mut parser, "--source")?),
            Long("raw") => raw = true,
            Short('h') | Long("help") => help(LOAD_HELP),
            _ => return Err(arg.unexpected().into()),
        }
    }
    // Bounded load: threads and remembered latencies.
    if !(1..=1024).contains(&concurrency) {
        return Err(format!("--concurrency {concurrency}: expected 1-1024").into());
    }
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(format!("--timeout-ms {timeout_ms}: expected 1-60000").into());
    }
    if requests.is_some_and(|n: usize| !(1..=10_000_000).contains(&n)) {
        return Err("--requests: expected 1-10000000".into());
    }
    let options = LoadOptions {
        target: target.ok_or("--target is needed")?,
        requests: requests.ok_or("--requests is needed")?,
        concurrency,
        timeout: Duration::from_millis(timeout_ms),
        source,
        raw,
    };
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let started = Instant::now();
    {
        let (stats, requests, raw) = (stats.clone(), options.requests, options.raw);
        handle_signals(
            &[],
            move || {
                let stats = stats.lock().unwrap_or_else(|e| e.into_inner());
                stats.report(requests, started.elapsed(), raw)
            },
            |_| {},
        )?;
    }
    eprintln!("ready");
    let report = run_load(&options, &stats, started);
    print_final(&report);
    Ok(())
}

/// Runs the load on `concurrency` threads and returns the summary.
pub fn run_load(options: &LoadOptions, stats: &Mutex<LoadStats>, started: Instant) -> Value {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..options.concurrency.min(options.requests.max(1)) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < options.requests {
                    let result = request(options);
                    stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(result);
                }
            });
        }
    });
    let stats = stats.lock().unwrap_or_else(|e| e.into_inner());
    stats.report(options.requests, started.elapsed(), options.raw)
}

/// One request on a new connection: the server's name and the latency.
fn request(options: &LoadOptions) -> std::result::Result<(String, Duration), Failure> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let target = options.target;
    let socket =
        Socket::new(Domain::for_address(target), Type::STREAM, None).map_err(|_| Failure::Other)?;
    if let Some(source) = options.source {
        socket
            .bind(&SockAddr::from(SocketAddr::new(source, 0)))
            .map_err(|_| Failure::Connect)?;
    }
    socket
        .connect_timeout(&target.into(), options.timeout)
        .map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
            _ => Failure::Connect,
        })?;
    let mut stream = TcpStream::from(socket);
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(Failure::Timeout)
    };
    let after_connect = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Failure::Reset,
        _ => Failure::Other,
    };
    stream
        .set_write_timeout(Some(left()?))
        .map_err(after_connect)?;
    stream
        .write_all(
            format!("GET / HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(after_connect)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(after_connect)?;
        match stream.read(&mut chunk).map_err(after_connect)? {
            0 => break,
            n => response.extend_from_slice(&chunk[..n]),
        }
        if response_complete(&response) || response.len() > 64 * 1024 {
            break;
        }
    }
    let latency = started.elapsed();
    if response.is_empty() {
        return Err(Failure::Other);
    }
    let body = parse_response(&response)?;
    Ok((body, latency))
}

/// True once the headers and a Content-Length's worth of body are in, so
/// a server that keeps the connection open costs no timeout.
fn response_complete(response: &[u8]) -> bool {
    let Some(end) = find(response, b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&response[..end]);
    headers
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .is_some_and(|length| response.len() >= end + 4 + length)
}

/// The body of a 200 response without its trailing newline: the name.
pub fn parse_response(response: &[u8]) -> std::result::Result<String, Failure> {
    if !crate::gre::status_is_200(response) {
        return Err(Failure::Status);
    }
    let end = find(response, b"\r\n\r\n").ok_or(Failure::Status)?;
    let body = String::from_utf8_lossy(&response[end + 4..]);
    Ok(body.trim_end().to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: &str = "127.0.0.1:0";

    fn listener() -> TcpListener {
        bind(LOOPBACK.parse().unwrap()).unwrap()
    }

    /// Serves on a thread with its own runtime; it ends with the test process.
    fn start(
        name: &str,
        listen: usize,
    ) -> (Arc<ServerState>, Vec<SocketAddr>, SocketAddr, SocketAddr) {
        let listen: Vec<TcpListener> = (0..listen).map(|_| listener()).collect();
        let addrs = listen.iter().map(|l| l.local_addr().unwrap()).collect();
        let (health, sink) = (listener(), listener());
        let (health_addr, sink_addr) = (health.local_addr().unwrap(), sink.local_addr().unwrap());
        let state = Arc::new(ServerState::new(name, &listen).unwrap());
        let listeners = Listeners {
            listen,
            health: Some(health),
            sink: vec![sink],
        };
        let serving = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move { serve(listeners, serving).unwrap().await });
        });
        (state, addrs, health_addr, sink_addr)
    }

    fn load(target: SocketAddr, requests: usize) -> Value {
        let options = LoadOptions {
            target,
            requests,
            concurrency: 16,
            timeout: Duration::from_secs(2),
            source: Some("127.0.0.1".parse().unwrap()),
            raw: true,
        };
        run_load(&options, &Mutex::new(LoadStats::default()), Instant::now())
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn two_hundred_requests_all_answer_with_the_server_name() {
        let (state, addrs, _, _) = start("server1", 2);
        let report = load(addrs[1], 200);
        assert_eq!(report["requests"], 200);
        assert_eq!(report["ok"], 200, "{report}");
        assert_eq!(report["by_server"], json!({"server1": 200}));
        assert_eq!(report["errors"]["connect"], 0);
        assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0);
        assert!(report["latency_us"]["max"].as_u64() >= report["latency_us"]["p99"].as_u64());
        let raw = report["latencies_us"].as_array().unwrap();
        assert_eq!(raw.len(), 200, "--raw lists every ok latency");
        assert!(raw.windows(2).all(|w| w[0].as_u64() <= w[1].as_u64()));
        let counters = state.report();
        assert_eq!(counters["requests"][addrs[1].to_string()], 200);
        assert_eq!(counters["requests"][addrs[0].to_string()], 0);
    }

    #[test]
    fn load_counts_refused_connections_as_connect_errors() {
        // Bound but never listening: connects are refused.
        let closed = {
            let l = TcpListener::bind(LOOPBACK).unwrap();
            l.local_addr().unwrap()
        };
        let report = load(closed, 5);
        assert_eq!(report["ok"], 0);
        assert_eq!(report["errors"]["connect"], 5, "{report}");
    }

    #[test]
    fn healthz_follows_the_health_state() {
        let (state, _, health, _) = start("server2", 1);
        assert!(get(health, "/healthz").starts_with("HTTP/1.0 200"));
        state.set_healthy(false);
        let response = get(health, "/healthz");
        assert!(response.starts_with("HTTP/1.0 503"), "{response}");
        state.set_healthy(true);
        assert!(get(health, "/healthz").ends_with("\r\n\r\nok"));
        assert!(get(health, "/other").starts_with("HTTP/1.0 404"));
    }

    #[test]
    fn health_answer_is_200_ok_or_503() {
        assert_eq!(
            health_answer(true, &Method::GET, "/healthz"),
            (StatusCode::OK, "ok")
        );
        assert_eq!(
            health_answer(false, &Method::GET, "/healthz").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            health_answer(true, &Method::POST, "/healthz").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn sink_answers_its_name_then_the_byte_count() {
        let (state, _, _, sink) = start("server3", 0);
        let mut streams: Vec<TcpStream> =
            (0..50).map(|_| TcpStream::connect(sink).unwrap()).collect();
        for (i, stream) in streams.iter_mut().enumerate() {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            stream.write_all(&vec![7u8; 1000 * i]).unwrap();
        }
        for (i, mut stream) in streams.into_iter().enumerate() {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            assert_eq!(answer, format!("server3\n{}\n", 1000 * i));
        }
        assert_eq!(state.report()["sink_connections"], 50);
    }

    #[test]
    fn responses_parse_to_the_name_or_a_status_error() {
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nab\n"),
            Ok("ab".to_string())
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 500 no\r\n\r\n"),
            Err(Failure::Status)
        );
        assert_eq!(parse_response(b"garbage"), Err(Failure::Status));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"
        ));
    }

    #[test]
    fn percentiles_come_from_ok_latencies() {
        let mut stats = LoadStats::default();
        for us in 1..=100u64 {
            stats.record(Ok(("a".into(), Duration::from_micros(us))));
        }
        stats.record(Err(Failure::Timeout));
        let report = stats.report(101, Duration::from_secs(1), false);
        assert_eq!(
            report["latency_us"],
            json!({"p50": 51, "p90": 91, "p99": 100, "max": 100})
        );
        assert_eq!(report["errors"]["timeout"], 1);
        assert_eq!(report["rps"], 100.0);
    }
}
