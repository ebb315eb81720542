//! The `graft` binary: parse the command line, call the library, render, exit.

mod cli;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    cli::main()
}

/// Tells glibc's allocator to serve large blocks from its heap and to keep what is
/// freed, instead of mapping every block above its (adaptive, at most 32 MiB) threshold
/// afresh and returning it on free. A training step allocates and frees tensors of tens
/// of megabytes hundreds of times; each fresh mapping is zeroed page by page by the
/// kernel. One epoch of `--fine-tune 6` on a quarter of the grocery photos: 34.2 s ->
/// 29.8 s, 1.76 M -> 0.28 M page faults, peak RSS 0.91 -> 0.94 GB (docs/fine-tuning.md).
/// Other C libraries keep their own defaults.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two thresholds of the allocator; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
