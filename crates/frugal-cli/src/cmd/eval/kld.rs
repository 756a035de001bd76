//! `frugal eval --task kld:FILE` (filled in by the KLD work).
use super::Ctx;
use anyhow::{bail, Result};
use frugal_eval::Record;

pub fn run(_ctx: &Ctx) -> Result<Record> {
    bail!("the kld task is not built yet")
}
