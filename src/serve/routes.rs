//! The HTTP routes: classification, model facts, health, metrics and the upload page.
//! Every error answer is JSON `{"error": "..."}` with a 4xx status for what the client
//! sent and a 5xx for what went wrong here.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use serde::Serialize;
use serde_json::json;

use super::batcher::{Batcher, Reservation};
use super::budget::{DecodeBudget, Refused};
use super::metrics::Metrics;
use crate::backbone::{BackboneId, Preprocess};
use crate::bundle::SplitSizes;
use crate::error::Error;
use crate::image::preprocess::preprocess;
use crate::image::{decode_rgb8_bytes, DecodeLimits};
use crate::predict::{top_k, Predictor};

/// The upload page, embedded so the binary serves it without files beside it.
const PAGE: &str = include_str!("page.html");
/// Labels per image when the request does not say.
const DEFAULT_TOP_K: usize = 5;
/// Seconds a client is told to wait when the queue is full or a request timed out.
const RETRY_AFTER_S: &str = "1";

/// What `/v1/model` answers, computed once at start.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// `backbone-<first 12 hex digits of head_sha256>`: changes whenever the head does.
    pub id: String,
    pub backbone: BackboneId,
    /// SHA-256 of the published backbone checkpoint.
    pub weights_sha256: String,
    /// SHA-256 of the head's weight then bias values as little-endian f32.
    pub head_sha256: String,
    pub input_size: u32,
    pub feature_dim: usize,
    pub labels: Vec<String>,
    /// The training metrics recorded in the bundle's manifest.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub training: serde_json::Value,
    pub split_sizes: SplitSizes,
    pub graft_version: String,
}

impl ModelInfo {
    pub fn of(predictor: &Predictor) -> ModelInfo {
        let manifest = &predictor.bundle.manifest;
        ModelInfo {
            id: predictor.bundle.model_id(),
            head_sha256: predictor.bundle.head_sha256(),
            backbone: manifest.backbone,
            weights_sha256: manifest.weights_sha256.clone(),
            input_size: manifest.preprocess.size,
            feature_dim: manifest.feature_dim,
            labels: manifest.labels.clone(),
            metrics: manifest.metrics.clone(),
            training: manifest.training.clone(),
            split_sizes: manifest.split_sizes.clone(),
            graft_version: manifest.graft_version.clone(),
        }
    }
}

/// Request limits, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// From the first byte of a request to its answer, body upload included.
    pub request_timeout: Duration,
    pub decode: DecodeLimits,
    /// Pixels all requests together may be decoding at once (see [`super::budget`]).
    pub decode_budget_pixels: u64,
}

pub struct AppState {
    pub batcher: Batcher,
    pub model: ModelInfo,
    pub preprocess: Preprocess,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Pixels decoding at once, for all requests together.
    pub decode_budget: DecodeBudget,
    /// Set once a shutdown signal arrived: `/readyz` turns 503 so balancers stop sending.
    pub draining: AtomicBool,
}

/// An error answer: a status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: false,
        }
    }

    /// A 503 the client should retry after [`RETRY_AFTER_S`].
    fn busy(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: true,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        response
    }
}

/// Counts a request in `/metrics` and logs it. The in-flight gauge is released by a
/// guard, so a request whose client left (its future dropped) is not counted forever.
pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    struct InFlight<'a>(&'a Metrics);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.request_left();
        }
    }

    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let uri = request.uri().clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    state.metrics.request_started();
    let _in_flight = InFlight(&state.metrics);
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.request_finished(&route, status, elapsed);
    tracing::info!(
        target: "graft::serve",
        %method,
        %uri,
        status,
        ms = (elapsed.as_secs_f64() * 1e4).round() / 10.0,
        peer,
        "request"
    );
    response
}

pub async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

pub async fn model(State(state): State<Arc<AppState>>) -> Response {
    Json(&state.model).into_response()
}

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Acquire) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting down" })),
        )
            .into_response()
    } else if !state.batcher.ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading" })),
        )
            .into_response()
    } else {
        Json(json!({ "status": "ready" })).into_response()
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see GET /, POST /v1/classify, GET /v1/model, /healthz, /readyz, /metrics",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route (classification is POST /v1/classify)",
    )
}

/// `top_k` from the query string; other parameters are ignored.
pub fn parse_top_k(query: Option<&str>, labels: usize) -> Result<usize, ApiError> {
    let Some(query) = query else {
        return Ok(DEFAULT_TOP_K.min(labels));
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "top_k" {
            return match value.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(k.min(labels)),
                _ => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("top_k must be a whole number of at least 1, got {value:?}"),
                )),
            };
        }
    }
    Ok(DEFAULT_TOP_K.min(labels))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than the limit of {} MB; send smaller images or start the server with a larger --max-body-mb",
            limit / (1 << 20)
        ),
    )
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        })
        .unwrap_or(false)
}

/// One uploaded image, by the name the answer gives it.
pub struct Upload {
    pub name: String,
    pub bytes: Bytes,
}

/// Reads the body (within the size limit and the deadline) and splits it into images:
/// the whole body, or one per multipart part.
async fn read_uploads(
    state: &AppState,
    request: Request,
    deadline: tokio::time::Instant,
) -> Result<Vec<Upload>, ApiError> {
    let max = state.limits.max_body_bytes;
    let (parts, body) = request.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let bytes = match tokio::time::timeout_at(deadline, to_bytes(body, max)).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    state.limits.request_timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(err)) => {
            let over_limit = std::error::Error::source(&err)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            return Err(if over_limit {
                too_large(max)
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {err}"),
                )
            });
        }
        Ok(Ok(bytes)) => bytes,
    };

    split_uploads(parts, bytes).await
}

/// Splits a request body that has fully arrived into images: the whole body, or one per
/// multipart part. It needs no server state, so the fuzzer drives it (fuzz/).
pub async fn split_uploads(
    parts: axum::http::request::Parts,
    bytes: Bytes,
) -> Result<Vec<Upload>, ApiError> {
    if !is_multipart(&parts.headers) {
        return Ok(vec![Upload {
            name: "body".into(),
            bytes,
        }]);
    }
    let request = Request::from_parts(parts, Body::from(bytes));
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed multipart/form-data body: {}", e.body_text()),
        )
    };
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed multipart/form-data body: {}", e.body_text()),
        )
    })?;
    let mut uploads = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field
            .file_name()
            .or_else(|| field.name())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("part {}", uploads.len() + 1));
        let bytes = field.bytes().await.map_err(bad)?;
        uploads.push(Upload { name, bytes });
    }
    if uploads.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the multipart/form-data body has no parts; add one file part per image",
        ));
    }
    Ok(uploads)
}

/// Refuses what is not worth decoding: empty uploads and formats graft does not read.
pub fn check_format(upload: &Upload) -> Result<(), ApiError> {
    const SUPPORTED: &str = "JPEG, PNG, BMP, GIF, WebP or TIFF";
    if upload.bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "image {:?} is empty; send the image file's bytes ({SUPPORTED})",
                upload.name
            ),
        ));
    }
    match ::image::guess_format(&upload.bytes) {
        Ok(format) if format.reading_enabled() => Ok(()),
        Ok(format) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "image {:?} is {format:?}, which graft does not read; send {SUPPORTED}",
                upload.name
            ),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{:?} is not an image in a supported format; send {SUPPORTED}",
                upload.name
            ),
        )),
    }
}

type Prepared = (Result<Vec<f32>, Error>, Duration);

/// Width and height from the image's header, without decoding it; `None` when the header
/// cannot be read (the decoder then says why, at once).
fn header_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Decodes and preprocesses `upload` on the blocking pool, off the async workers and off
/// the inference thread, once its pixels fit in the decode budget. The budget is held by
/// the blocking task itself, so a decode whose request is gone still counts until it ends.
async fn prepare(state: Arc<AppState>, upload: Upload) -> Result<(Vec<f32>, Duration), ApiError> {
    let limits = state.limits.decode;
    let spec = state.preprocess;
    let name = upload.name.clone();
    // Images over --max-pixels or with an unreadable header fail in the decoder before any
    // pixel is allocated: they take the smallest share.
    let dimensions = header_dimensions(&upload.bytes);
    let pixels = match dimensions {
        Some((w, h)) if u64::from(w) * u64::from(h) <= limits.max_pixels => {
            u64::from(w) * u64::from(h)
        }
        _ => 1,
    };
    let permit = match state.decode_budget.acquire(pixels).await {
        Ok(permit) => permit,
        Err(Refused::TooLarge { share_pixels }) => {
            let (width, height) = dimensions.unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "image {name:?} is {width}x{height} pixels, more than the {share_pixels} pixels \
                     one large image may decode at once (three quarters of the decode budget); \
                     downscale it or start the server with a larger --decode-budget-mpx"
                ),
            ));
        }
        Err(Refused::Closed) => return Err(ApiError::busy("the server is shutting down")),
    };
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let started = Instant::now();
        let pixels = decode_rgb8_bytes(&upload.bytes, Path::new(&upload.name), limits)
            .and_then(|rgb| preprocess(&rgb, &spec));
        (pixels, started.elapsed())
    });
    finish_prepare(&name, task).await
}

/// The pixels of a decode started by [`prepare`], or the error answer for its image.
async fn finish_prepare(
    name: &str,
    task: tokio::task::JoinHandle<Prepared>,
) -> Result<(Vec<f32>, Duration), ApiError> {
    match task.await {
        Ok((Ok(pixels), took)) => Ok((pixels, took)),
        Ok((
            Err(Error::ImageTooLarge {
                width,
                height,
                limit,
                ..
            }),
            _,
        )) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "image {name:?} is {width}x{height} pixels, more than the limit of {limit} pixels; \
                 downscale it or start the server with a larger --max-pixels"
            ),
        )),
        Ok((Err(Error::Decode { reason, .. }), _)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cannot decode image {name:?}: {reason}"),
        )),
        Ok((Err(other), _)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot prepare image {name:?}: {other}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the decoder failed on image {name:?}; it is probably corrupt"),
        )),
    }
}

#[derive(Serialize)]
struct LabelScore<'a> {
    label: &'a str,
    score: f32,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `POST /v1/classify[?top_k=N]`: one image as the raw body, or several as
/// `multipart/form-data`.
pub async fn classify(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + state.limits.request_timeout;
    match classify_within(&state, request, deadline, started).await {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => {
            tracing::debug!(target: "graft::serve", status = err.status.as_u16(), error = %err.message, "refused");
            err.into_response()
        }
    }
}

async fn classify_within(
    state: &Arc<AppState>,
    request: Request,
    deadline: tokio::time::Instant,
    started: Instant,
) -> Result<serde_json::Value, ApiError> {
    let labels = &state.model.labels;
    let k = parse_top_k(request.uri().query(), labels.len())?;
    let uploads = read_uploads(state, request, deadline).await?;
    if uploads.len() > state.batcher.max_queue() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} images in one request, more than the queue holds ({}); split the request or raise --max-queue",
                uploads.len(),
                state.batcher.max_queue()
            ),
        ));
    }
    for upload in &uploads {
        check_format(upload)?;
    }
    let mut reservation: Reservation = state.batcher.reserve(uploads.len()).ok_or_else(|| {
        ApiError::busy(format!(
            "the server is busy: its queue of {} images is full; retry after {RETRY_AFTER_S} s",
            state.batcher.max_queue()
        ))
    })?;

    let timed_out = || {
        ApiError::busy(format!(
            "not classified within {} s; the server is busy, retry later",
            state.limits.request_timeout.as_secs_f64()
        ))
    };
    let names: Vec<String> = uploads.iter().map(|u| u.name.clone()).collect();
    let count = uploads.len();
    let prepared = tokio::time::timeout_at(deadline, async {
        // All images of the request wait for budget and decode concurrently; the set
        // aborts the waiting ones when the request is dropped.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, upload) in uploads.into_iter().enumerate() {
            let state = state.clone();
            tasks.spawn(async move { (i, prepare(state, upload).await) });
        }
        let mut done: Vec<Option<Result<(Vec<f32>, Duration), ApiError>>> =
            (0..count).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, result)) => done[i] = Some(result),
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "an image's decoding task failed",
                    ))
                }
            }
        }
        // The first error in upload order answers for the request.
        let mut prepared = Vec::with_capacity(count);
        for result in done {
            match result {
                Some(result) => prepared.push(result?),
                None => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "an image's decoding task did not report",
                    ))
                }
            }
        }
        Ok::<_, ApiError>(prepared)
    })
    .await
    .map_err(|_| timed_out())??;

    let mut answers = Vec::with_capacity(prepared.len());
    let mut decode_times = Vec::with_capacity(prepared.len());
    for (pixels, took) in prepared {
        let answer = state
            .batcher
            .submit(&mut reservation, pixels)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        answers.push(answer);
        decode_times.push(took);
    }

    let mut images = Vec::with_capacity(answers.len());
    for ((answer, name), decode) in answers.into_iter().zip(&names).zip(decode_times) {
        let scored = match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the inference thread has stopped",
                ))
            }
            Ok(Ok(Err(message))) => {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message))
            }
            Ok(Ok(Ok(scored))) => scored,
        };
        let top: Vec<LabelScore> = top_k(&scored.probabilities, k)
            .into_iter()
            .map(|(i, score)| LabelScore {
                label: &labels[i],
                score,
            })
            .collect();
        images.push(json!({
            "name": name,
            "top": top,
            "batch_size": scored.batch_size,
            "timings_ms": {
                "decode": ms(decode),
                "queue": ms(scored.queue),
                "inference": ms(scored.inference),
            },
        }));
    }
    Ok(json!({
        "model": state.model.id,
        "images": images,
        "timings_ms": { "total": ms(started.elapsed()) },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_defaults_clamps_and_refuses_nonsense() {
        assert_eq!(parse_top_k(None, 3).unwrap(), 3);
        assert_eq!(parse_top_k(None, 80).unwrap(), DEFAULT_TOP_K);
        assert_eq!(parse_top_k(Some("top_k=2"), 80).unwrap(), 2);
        assert_eq!(parse_top_k(Some("x=1&top_k=100"), 80).unwrap(), 80);
        assert_eq!(parse_top_k(Some("x=1"), 80).unwrap(), DEFAULT_TOP_K);
        for bad in ["top_k=0", "top_k=-1", "top_k=two", "top_k="] {
            let err = parse_top_k(Some(bad), 80).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn unsupported_and_empty_uploads_are_refused_before_decoding() {
        let upload = |bytes: &'static [u8]| Upload {
            name: "x".into(),
            bytes: Bytes::from_static(bytes),
        };
        assert_eq!(
            check_format(&upload(b"")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            check_format(&upload(b"hello, not an image"))
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        // An ICO header: a format `image` knows but graft does not build in.
        let err = check_format(&upload(&[0, 0, 1, 0, 1, 0, 16, 16])).unwrap_err();
        assert_eq!(
            err.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{}",
            err.message
        );
        assert!(check_format(&upload(b"\x89PNG\r\n\x1a\n....")).is_ok());
    }
}
