//! Client connections: the accept loop, the bound on open connections and the
//! header-read timeout.
//!
//! axum's own `serve` has neither: a client that sends its headers one byte a second keeps
//! its connection (and a file descriptor) forever, and enough of them exhaust the process's
//! descriptors so that nobody else gets in. Here hyper's HTTP/1 server reads each request
//! with its header timer (`header_read_timeout`: the whole header, from the moment the
//! server waits for it, including idle keep-alive time between requests), and a semaphore
//! bounds the open connections. At the bound the loop stops accepting: further clients
//! wait in the kernel's listen backlog, costing no descriptor, until a connection closes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::metrics::Metrics;

/// File descriptors kept for the process itself (listener, epoll, standard streams, the
/// model's libraries, logs) when `--max-connections` is fitted under the open-file limit.
const RESERVED_FDS: u64 = 64;

/// How long the loop pauses after a failed `accept` that is not one client's fault (out of
/// descriptors, say), instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open client connections, at most.
    pub max_connections: usize,
    /// Time a client has to send a request's complete header.
    pub header_timeout: Duration,
}

/// `requested` connections, or fewer where the open-file limit (`RLIMIT_NOFILE`, soft)
/// would not leave room for them and [`RESERVED_FDS`]; the second value is that limit when
/// it cut the number.
pub fn fit_to_fd_limit(requested: usize) -> (usize, Option<u64>) {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _hard)) => {
            let room = soft.saturating_sub(RESERVED_FDS).max(1);
            if (requested as u64) > room {
                (usize::try_from(room).unwrap_or(usize::MAX), Some(soft))
            } else {
                (requested, None)
            }
        }
        Err(_) => (requested, None),
    }
}

/// Accepts connections and serves `app` on each until `shutdown` resolves; then stops
/// accepting and returns a handle that resolves once the open connections have finished.
pub async fn accept_until(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        // The semaphore is never closed; treat it as the end all the same.
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_client_error(&err) => continue,
                Err(err) => {
                    tracing::warn!(target: "graft::serve", "cannot accept a connection: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let service = hyper::service::service_fn({
            let app = app.clone();
            move |request: hyper::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let metrics = metrics.clone();
        metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(target: "graft::serve", %peer, "connection ended: {err}");
            }
            metrics.connection_closed();
            drop(slot);
        });
    }
    graceful
}

/// Failures of one incoming connection (it was reset before we took it): the next
/// `accept` can go on at once.
fn is_client_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
