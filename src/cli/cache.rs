//! `graft cache stats|clear`

use std::path::PathBuf;

use graft::features::cache::{self, Inspection};
use graft::retrain::default_bottleneck_dir;

use super::Outcome;

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Number of cached feature vectors and the cache's size on disk.
    Stats {
        /// Feature cache folder (default: <graft home>/bottlenecks).
        #[arg(long)]
        bottleneck_dir: Option<PathBuf>,
    },
    /// Remove every cached feature vector.
    Clear {
        #[arg(long)]
        bottleneck_dir: Option<PathBuf>,
    },
}

pub fn run(cmd: CacheCommand) -> anyhow::Result<Outcome> {
    match cmd {
        CacheCommand::Stats { bottleneck_dir } => {
            let dir = bottleneck_dir.unwrap_or_else(default_bottleneck_dir);
            let path = dir.join(cache::FILE_NAME);
            match cache::inspect(&dir)? {
                Inspection::Absent => {
                    println!("{}: 0 feature vectors (no cache file yet)", path.display())
                }
                Inspection::Healthy(stats) => println!(
                    "{}: {} feature vectors, {:.1} MiB",
                    path.display(),
                    stats.entries,
                    mib(stats.file_bytes)
                ),
                Inspection::Repaired(stats) => println!(
                    "{}: {} feature vectors, {:.1} MiB (repaired: an interrupted run had left \
                     it open)",
                    path.display(),
                    stats.entries,
                    mib(stats.file_bytes)
                ),
                Inspection::Damaged { file_bytes, reason } => println!(
                    "{}: damaged feature cache ({reason}), {:.1} MiB; the next train or \
                     extract moves it aside and starts a new one, `graft cache clear` deletes it",
                    path.display(),
                    mib(file_bytes)
                ),
            }
        }
        CacheCommand::Clear { bottleneck_dir } => {
            let dir = bottleneck_dir.unwrap_or_else(default_bottleneck_dir);
            let cleared = cache::clear_dir(&dir)?;
            println!(
                "{}: removed {} feature vectors",
                dir.join(cache::FILE_NAME).display(),
                cleared.entries
            );
            for (file, reason) in &cleared.removed_files {
                match reason {
                    Some(reason) => println!(
                        "deleted {} (graft's own feature cache, damaged: {reason})",
                        file.display()
                    ),
                    None => println!(
                        "deleted {} (a damaged feature cache graft had moved aside)",
                        file.display()
                    ),
                }
            }
        }
    }
    Ok(Outcome::Done)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
