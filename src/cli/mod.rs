//! Command-line glue: each subcommand parses its flags, calls the library and renders
//! the result. No logic of its own lives here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod augment;
mod cache;
mod evaluate;
mod export;
mod export_onnx;
mod extract;
mod imagenet;
mod models;
mod organize;
mod precision;
mod predict;
mod render;
mod serve;
mod source;
mod stats;
mod train;
mod values;

#[derive(Parser)]
#[command(
    name = "graft",
    version,
    about = "Turn a pretrained ImageNet network into your own image classifier"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the backbones, or fetch their weights.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Print the top-5 ImageNet classes of each image (checks a backbone sees correctly).
    Imagenet(imagenet::Args),
    /// Compute backbone features for every image under a folder.
    Extract(extract::Args),
    /// Write a trained model as one ONNX file (pixels in, probabilities out), or as an
    /// offline web classifier (`--format web`).
    Export(export::Args),
    /// Write a backbone as an ONNX model (the graph graft runs, batch norm folded).
    ExportOnnx(export_onnx::Args),
    /// Turn a CSV of image_id,label and a folder of images into one folder per class.
    Organize(organize::Args),
    /// Show the class distribution of a class-folder tree or a labels CSV.
    Stats(stats::Args),
    /// Balance classes up to a target size with random affine augmentation.
    Augment(augment::Args),
    /// Train a classifier on top of a frozen backbone (retrain.py's job).
    Train(train::Args),
    /// Classify images with a trained model; `--format csv` writes a submission file.
    Predict(predict::Args),
    /// Measure a trained model on a labelled image set.
    Evaluate(evaluate::Args),
    /// Classify images over HTTP: JSON API, metrics and an upload page.
    Serve(serve::Args),
    /// Inspect or clear the feature cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

/// How a command that ran to its end went.
pub enum Outcome {
    /// Everything was processed.
    Done,
    /// The run finished, but this many inputs were skipped (each reported).
    Skipped(u64),
}

/// Exit code when a run finished but skipped some inputs.
const EXIT_SKIPPED: u8 = 3;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        die_quietly_on_closed_pipe();
    }
    // A service logs each request; the batch commands only say what went wrong.
    let default_log = match cli.command {
        Command::Serve(_) => "warn,graft::serve=info",
        _ => "warn",
    };
    render::init_logging(default_log);
    let result = match cli.command {
        Command::Models(cmd) => models::run(cmd),
        Command::Imagenet(args) => imagenet::run(args),
        Command::Extract(args) => extract::run(args),
        Command::Export(args) => export::run(args),
        Command::ExportOnnx(args) => export_onnx::run(args),
        Command::Organize(args) => organize::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Augment(args) => augment::run(args),
        Command::Train(args) => train::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Cache(cmd) => cache::run(cmd),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Skipped(n)) => {
            eprintln!("warning: {n} input(s) were skipped; see the messages above");
            ExitCode::from(EXIT_SKIPPED)
        }
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// `graft evaluate ... | head` closes graft's standard output early. Rust ignores SIGPIPE,
/// so the next `println!` would panic ("failed printing to stdout"); the batch commands
/// instead end the way Unix tools do when their reader has gone: killed by SIGPIPE, without
/// a word. `serve` keeps SIGPIPE ignored, so a client that hangs up is an error on that
/// connection, not the end of the server. No crate does this (it is one libc call).
fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at start-up, before any thread is
    // spawned; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message
/// already holds (library errors name their cause in their own message).
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text.trim_end().to_string()
}
