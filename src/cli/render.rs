//! Rendering library events: a progress bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use graft::progress::Progress;

/// Logs go to stderr, filtered by `GRAFT_LOG` (tracing's env-filter syntax), else by
/// `default_filter`; colours only on a terminal.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Renders progress on stderr: an indicatif bar when stderr is a terminal, else a
/// line at the start, every 10%, and at the end.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
}

impl Bar {
    pub fn new() -> Self {
        Bar {
            bar: Mutex::new(None),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(guard) = self.bar.lock() {
            if let Some(bar) = guard.as_ref() {
                f(bar);
            }
        }
    }
}

impl Progress for Bar {
    fn begin(&self, stage: &str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if self.terminal {
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:40.cyan/blue}] {pos}/{len} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
        } else {
            bar.set_draw_target(ProgressDrawTarget::hidden());
            eprintln!("{stage}: 0/{total}");
        }
        bar.set_message(stage.to_string());
        if let Ok(mut guard) = self.bar.lock() {
            *guard = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        let terminal = self.terminal;
        self.with_bar(|bar| {
            let before = bar.position();
            bar.inc(n);
            if !terminal {
                let total = bar.length().unwrap_or(0).max(1);
                let after = bar.position();
                if before * 10 / total != after * 10 / total {
                    eprintln!("{}: {after}/{total}", bar.message());
                }
            }
        });
    }

    fn message(&self, text: &str) {
        let mut printed = false;
        self.with_bar(|bar| {
            bar.suspend(|| eprintln!("{text}"));
            printed = true;
        });
        if !printed {
            eprintln!("{text}");
        }
    }

    fn finish(&self) {
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(bar) = guard.take() {
                bar.finish();
            }
        }
    }
}
