//! `graft serve BUNDLE --addr HOST:PORT`: classify images over HTTP.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use graft::image::DecodeLimits;
use graft::predict::Predictor;
use graft::serve::{BatchOptions, ConnectionLimits, Limits, Options};

use super::precision::PrecisionArgs;
use super::render::Bar;
use super::values;
use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder written by `graft train --output`.
    bundle: PathBuf,
    /// Address to listen on; port 0 picks a free port (the first line printed names it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Images per backbone run; 1 turns batching off (default: the fastest measured for the
    /// backbone on its engine, as for `extract --batch-size`: 1 on the CPU engines today).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_batch: Option<u32>,
    /// How long the first image of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000), allow_hyphen_values = true)]
    max_wait_ms: u64,
    /// Images waiting for the network, at most; past it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_queue: u32,
    /// Largest request body, in megabytes.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_body_mb: u32,
    /// Largest image, in pixels (width x height): guards against decompression bombs.
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels, value_parser = values::count_u64())]
    max_pixels: u64,
    /// Seconds a request may take, upload included.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_timeout_s: u64,
    /// Seconds a client has to send a request's complete header (also how long an idle
    /// keep-alive connection stays open); slower clients are disconnected.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout_s: u64,
    /// Client connections open at once, at most; further clients wait to be accepted.
    /// Lowered to fit under the open-file limit (`ulimit -n`) less 64.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Megapixels all requests together may be decoding at once. Images of up to a quarter
    /// of it may use all of it; larger ones share the other three quarters, and an image
    /// above those is refused (413).
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    decode_budget_mpx: u32,
    /// Answer `unknown` when the calibrated top score is below P (between 0 and 1;
    /// default: the model's stored default, else always answer).
    #[arg(long, value_name = "P", value_parser = values::probability_open, allow_hyphen_values = true)]
    unknown_below: Option<f32>,
    #[command(flatten)]
    precision: PrecisionArgs,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let backbone = args.precision.options(graft::engine::EngineChoice::Auto);
    let mut predictor = Predictor::load_with(&args.bundle, &backbone, &Bar::new())
        .with_context(|| format!("loading the model {}", args.bundle.display()))?;
    // The flag overrides the default stored at training; the served model says which.
    if let Some(p) = args.unknown_below {
        predictor.bundle.manifest.unknown_below = Some(p);
    }
    let options = Options {
        addr: args.addr,
        batch: BatchOptions {
            max_batch: args
                .max_batch
                .map(|n| n as usize)
                .unwrap_or_else(|| predictor.backbone.preferred_batch_size()),
            max_wait: Duration::from_millis(args.max_wait_ms),
            max_queue: args.max_queue as usize,
        },
        limits: Limits {
            max_body_bytes: (args.max_body_mb as usize) << 20,
            request_timeout: Duration::from_secs(args.request_timeout_s),
            decode: DecodeLimits {
                max_pixels: args.max_pixels,
            },
            decode_budget_pixels: u64::from(args.decode_budget_mpx) * 1_000_000,
        },
        connections: ConnectionLimits {
            max_connections: args.max_connections as usize,
            header_timeout: Duration::from_secs(args.header_timeout_s),
        },
    };
    graft::serve::serve(predictor, options, |addr| {
        // The first line on stdout, so scripts and tests can read the port back.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on http://{addr}");
        let _ = stdout.flush();
    })?;
    Ok(Outcome::Done)
}
