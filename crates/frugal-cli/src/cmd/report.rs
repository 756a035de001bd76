//! `frugal report` (filled in by the report work).
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Result files written by `frugal eval --out` or `frugal bench --out`.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
}

pub fn run(_a: Args) -> Result<()> {
    bail!("report is not built yet")
}
