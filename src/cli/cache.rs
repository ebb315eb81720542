//! `graft cache stats|clear`

use std::path::PathBuf;

use graft::features::cache::FeatureCache;
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
            let cache = FeatureCache::open(&bottleneck_dir.unwrap_or_else(default_bottleneck_dir))?;
            let stats = cache.stats()?;
            println!(
                "{}: {} feature vectors, {:.1} MiB",
                cache.path().display(),
                stats.entries,
                stats.file_bytes as f64 / (1024.0 * 1024.0)
            );
        }
        CacheCommand::Clear { bottleneck_dir } => {
            let cache = FeatureCache::open(&bottleneck_dir.unwrap_or_else(default_bottleneck_dir))?;
            let removed = cache.clear()?;
            println!(
                "{}: removed {removed} feature vectors",
                cache.path().display()
            );
        }
    }
    Ok(Outcome::Done)
}
