//! `--metrics-addr`: plain HTTP for monitoring (issue 16; docs/design/metrics.md). `/metrics`
//! in Prometheus's text format, `/livez` (the process serves and its node task goes round its
//! loop), `/readyz` (a member that knows a leader and has applied close to the commit index;
//! the reason in the body when not), 404 otherwise. hyper serves HTTP/1.1; each connection is
//! a task of its own, so a slow scraper holds up nothing.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use raft_kv_runtime::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The node task goes round its loop every tick (10 ms by default): one that has not for this
/// long is stuck, and `/livez` says so.
const STALL_MAX: Duration = Duration::from_secs(5);

/// OpenMetrics' content type: what prometheus-client writes, and Prometheus reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` (so a port in use stops the start with a clear error) and serves it.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics (--metrics-addr) on {addr}: {e}"))
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, metrics.encode()),
        "/livez" => match metrics.since_beat() {
            d if d <= STALL_MAX => reply(StatusCode::OK, TEXT, "ok\n".into()),
            d => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!(
                    "not live: the node task has not gone round its loop for {} ms\n",
                    d.as_millis()
                ),
            ),
        },
        "/readyz" => match metrics.health() {
            None => reply(StatusCode::OK, TEXT, "ok\n".into()),
            Some(why) => {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {why}\n"))
            }
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /livez or /readyz\n".into(),
        ),
    }
}
