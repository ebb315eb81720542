//! `graft serve`: a trained model behind HTTP.
//!
//! Requests are answered by tokio + axum; images are decoded and preprocessed on tokio's
//! blocking pool; one dedicated thread owns the network and runs it over dynamic batches
//! ([`batcher`]). Routes ([`routes`]):
//!
//! - `POST /v1/classify[?top_k=N]`: one image as the raw body, or several as
//!   `multipart/form-data`; top-k labels, the model id and timings per image.
//! - `GET /v1/model`: labels, backbone, checksums, training metrics.
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text format).
//! - `GET /`: a page to drop photos on and see their labels.
//!
//! Connections are accepted by [`conn`] (a bound on open connections, a header-read
//! timeout); decoding draws on a pixel budget shared by all requests ([`budget`]).
//!
//! On SIGTERM or Ctrl-C the server stops accepting connections, finishes the requests
//! in flight, and returns.

pub mod batcher;
pub mod budget;
pub mod conn;
pub mod metrics;
pub mod routes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use batcher::BatchOptions;
pub use conn::ConnectionLimits;
pub use routes::{Limits, ModelInfo};

use crate::error::{Error, Result};
use crate::predict::Predictor;
use batcher::Batcher;
use budget::DecodeBudget;
use metrics::Metrics;
use routes::AppState;

/// Everything `graft serve` is told on its command line, past the bundle.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` to listen on; port 0 picks a free one.
    pub addr: String,
    pub batch: BatchOptions,
    pub limits: Limits,
    pub connections: ConnectionLimits,
}

/// How long in-flight requests get to finish after a shutdown signal, past their own
/// timeout: time to write the answers out.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The application: routes, limits and shared state, without a listener (tests and
/// embedders can drive it with any transport).
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(routes::page))
        .route("/v1/classify", post(routes::classify))
        .route("/v1/model", get(routes::model))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // The classify handler enforces the body limit itself (as JSON); this only lifts
        // axum's 2 MB default for the multipart parser that reads the already-limited body.
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::observe,
        ))
        .with_state(state)
}

/// Serves `predictor` until SIGTERM or Ctrl-C. `on_listening` is called with the bound
/// address once the socket listens (before the network is warm: `/readyz` says when).
pub fn serve(
    predictor: Predictor,
    options: Options,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let model = ModelInfo::of(&predictor);
    let preprocess = predictor.bundle.manifest.preprocess;
    let metrics = Arc::new(Metrics::default());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("graft-http")
        // Decoding is CPU work: more decoder threads than cores only adds memory.
        .max_blocking_threads(cores.max(2))
        .build()
        .map_err(|e| Error::Engine(format!("cannot start the async runtime: {e}")))?;
    metrics.set_max_batch(options.batch.max_batch);
    let decode_budget = DecodeBudget::new(options.limits.decode_budget_pixels, metrics.clone());
    if decode_budget.large_share_pixels() < options.limits.decode.max_pixels {
        tracing::warn!(
            target: "graft::serve",
            "images above {} pixels will be refused: large images may use three quarters of \
             the decode budget; raise --decode-budget-mpx to at least {} to decode everything \
             up to --max-pixels",
            decode_budget.large_share_pixels(),
            options.limits.decode.max_pixels.div_ceil(750_000)
        );
    }
    let (batcher, inference) = Batcher::start(predictor, options.batch, metrics.clone())?;
    let state = Arc::new(AppState {
        batcher,
        model,
        preprocess,
        metrics,
        limits: options.limits,
        decode_budget,
        draining: AtomicBool::new(false),
    });

    let served = runtime.block_on(run(state, &options, on_listening));
    // Drops any connection task still holding the state (only after a drain timeout),
    // which closes the inference queue and lets the inference thread end.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if inference.join().is_err() {
        tracing::error!(target: "graft::serve", "the inference thread panicked");
    }
    served
}

async fn run(
    state: Arc<AppState>,
    options: &Options,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&options.addr)
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot listen on {}: {e}; pick another --addr (port 0 picks a free one)",
                options.addr
            ))
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("cannot read the bound address: {e}")))?;
    // Installed before the address is announced, so an early SIGTERM is already graceful.
    let terminate = terminate_signal();
    let (max_connections, fd_limit) = conn::fit_to_fd_limit(options.connections.max_connections);
    if let Some(fd_limit) = fd_limit {
        tracing::warn!(
            target: "graft::serve",
            "--max-connections {} does not fit under the open-file limit ({fd_limit}, see \
             `ulimit -n`); serving at most {max_connections} connections at once",
            options.connections.max_connections
        );
    }
    on_listening(local);
    tracing::info!(
        target: "graft::serve",
        addr = %local,
        model = %state.model.id,
        max_batch = options.batch.max_batch,
        max_connections,
        header_timeout_s = options.connections.header_timeout.as_secs_f64(),
        decode_budget_pixels = options.limits.decode_budget_pixels,
        "listening"
    );

    let shutdown = {
        let state = state.clone();
        async move {
            tokio::select! {
                _ = ctrl_c() => {}
                _ = terminate => {}
            }
            tracing::info!(target: "graft::serve", "shutdown signal: finishing the requests in flight");
            state.draining.store(true, Ordering::Release);
        }
    };
    let limits = ConnectionLimits {
        max_connections,
        ..options.connections
    };
    let open = conn::accept_until(
        listener,
        router(state.clone()),
        limits,
        state.metrics.clone(),
        shutdown,
    )
    .await;
    let drain_limit = options.limits.request_timeout + DRAIN_GRACE;
    if tokio::time::timeout(drain_limit, open.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            target: "graft::serve",
            "requests still in flight {} s after the shutdown signal; stopping anyway",
            drain_limit.as_secs()
        );
    }
    tracing::info!(target: "graft::serve", "stopped");
    Ok(())
}

/// Resolves on Ctrl-C; never, where that signal cannot be watched.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on SIGTERM (what `kill` and service managers send); never elsewhere.
fn terminate_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        async move {
            match signal {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::warn!(target: "graft::serve", "cannot watch SIGTERM: {err}");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        std::future::pending::<()>()
    }
}
