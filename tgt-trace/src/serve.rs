//! `tgt-trace serve`'s HTTP side: `GET /metrics` and `GET /healthz` from
//! the metrics sink's [`Exposition`], on a thread and a runtime of its own,
//! so that a scrape, or a client that never finishes its request, cannot
//! hold up the loop that drains the probes.
//!
//! hyper's HTTP/1 server alone does it: two fixed paths need no router.

use std::{
    convert::Infallible, io, net::SocketAddr, sync::Arc, thread::JoinHandle, time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, oneshot};

use crate::sink::metrics::Exposition;

/// OpenMetrics, for a scraper that asks for it (Prometheus does).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format, for everyone else (`curl`, `promtool`).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once; more wait to be accepted. A scraper needs
/// one.
const CONNECTIONS: usize = 16;
/// A client has this long to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: {cause}; pick a free port with --listen \
         (e.g. --listen 127.0.0.1:9465)"
    )]
    Bind { addr: SocketAddr, cause: io::Error },
    #[error("cannot start the HTTP server's thread: {0}")]
    Thread(#[source] io::Error),
}

/// What the endpoints serve.
pub struct Endpoint {
    pub exposition: Exposition,
    /// `/healthz` fails once the drain loop has not ended a batch for this
    /// long.
    pub stale_after: Duration,
}

/// The HTTP server, running until stopped or dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` now, so that a port in use fails before anything is
    /// attached, and serves from a thread of its own.
    pub fn start(addr: SocketAddr, endpoint: Endpoint) -> Result<Server, ServeError> {
        let bind = |cause| ServeError::Bind { addr, cause };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Thread)?;
        let thread = std::thread::Builder::new()
            .name("tgt-trace-http".to_owned())
            .spawn(move || runtime.block_on(accept(listener, Arc::new(endpoint), stopped)))
            .map_err(ServeError::Thread)?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens (the port chosen, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the connections open, and waits for the thread.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut();
    }
}

async fn accept(
    listener: std::net::TcpListener,
    endpoint: Arc<Endpoint>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("tgt-trace: the metrics endpoint cannot listen: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            _ = &mut stopped => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // A connection reset before it was accepted, or out of
                // descriptors for a moment: the next accept may succeed.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(respond(&endpoint, &request)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

fn respond(endpoint: &Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            match endpoint.exposition.encode(openmetrics) {
                Ok(body) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(if openmetrics {
                            OPENMETRICS
                        } else {
                            PROMETHEUS_TEXT
                        }),
                    );
                    response
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the metrics could not be encoded\n".to_owned(),
                ),
            }
        }
        "/healthz" => match endpoint.exposition.health(endpoint.stale_after) {
            Ok(()) => text(StatusCode::OK, "ok\n".to_owned()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/" => text(
            StatusCode::OK,
            "tgt-trace: /metrics (Prometheus), /healthz\n".to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
