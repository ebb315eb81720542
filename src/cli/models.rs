//! `graft models list|fetch` (to be written).

use super::Outcome;

#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Show each backbone and whether its weights are present.
    List,
}

pub fn run(_cmd: ModelsCommand) -> anyhow::Result<Outcome> {
    anyhow::bail!("graft models is not implemented yet")
}
