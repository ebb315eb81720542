//! Progress events. The library reports what it is doing; the binary decides how to
//! render it (a progress bar on a terminal, plain lines otherwise).

/// Receives progress of a long-running stage. Implementations must be cheap to call
/// from many threads.
pub trait Progress: Sync {
    /// A stage with `total` units of work starts.
    fn begin(&self, stage: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// A message that should not be lost under a progress bar (a skipped file, say).
    fn message(&self, text: &str);
    /// The stage is over.
    fn finish(&self);
}

/// Ignores every event: for tests and library callers that do not care.
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _stage: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn message(&self, _text: &str) {}
    fn finish(&self) {}
}
