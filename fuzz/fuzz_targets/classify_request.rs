//! `POST /v1/classify` up to the network: the query (`top_k`), the body split into
//! uploads (raw or multipart), the format check, then decoding and preprocessing each
//! upload as the server's blocking pool does. The router itself needs a loaded
//! backbone behind its batcher, so it is not driven here.
//!
//! Input: byte 0 picks the Content-Type (raw, multipart with boundary `X`, or the
//! text up to the first newline), byte 1 the length of the query string that follows,
//! the rest is the body.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{header, Request};
use graft::backbone::BackboneId;
use graft::image::preprocess::preprocess;
use graft::image::{decode_rgb8_bytes, DecodeLimits};
use graft::serve::routes::{check_format, parse_top_k, split_uploads};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((&qlen, rest)) = rest.split_first() else {
        return;
    };
    let (query, mut body) = rest.split_at(usize::from(qlen).min(rest.len()));
    let content_type = match kind % 4 {
        0 => None,
        1 => Some(b"multipart/form-data; boundary=X".to_vec()),
        2 => Some(b"image/jpeg".to_vec()),
        _ => {
            let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
            let text = body[..end].to_vec();
            body = &body[(end + 1).min(body.len())..];
            Some(text)
        }
    };
    let query = String::from_utf8_lossy(query);
    let _ = parse_top_k(Some(&query), 3);

    let mut request = Request::post("/v1/classify");
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let Ok(request) = request.body(()) else {
        return; // not a header value a client could send
    };
    let (parts, ()) = request.into_parts();
    let body = Bytes::copy_from_slice(body);
    let Ok(uploads) = runtime().block_on(split_uploads(parts, body)) else {
        return;
    };
    let spec = BackboneId::EfficientNetLite0.spec().preprocess;
    let limits = DecodeLimits {
        max_pixels: 1 << 16,
    };
    for upload in uploads {
        if check_format(&upload).is_err() {
            continue;
        }
        if let Ok(rgb) = decode_rgb8_bytes(&upload.bytes, Path::new(&upload.name), limits) {
            let _ = preprocess(&rgb, &spec);
        }
    }
});
