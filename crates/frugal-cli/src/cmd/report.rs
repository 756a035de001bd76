//! `frugal report`: merge result records into a Markdown table and an HTML
//! page with Pareto plots. The work is in `frugal-report`; this is the CLI.

use crate::common::write_atomic;
use anyhow::Result;
use frugal_report::Report;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_long_help = "\
Inputs: JSON records written by `frugal eval --out R.json` (perplexity, kld, lambada, \
hellaswag, mc) and `frugal bench --out R.json`. Records of the same model file (same sha256) \
merge into one row; of several records of one task for a model the newest counts (a note says so).

Outputs: a Markdown table, one row per model (size, bpw and every measure some model has), \
then the Pareto fronts, provenance (models, data files with sha256 and item counts, frugal \
versions, machines) and notes. It goes to stdout unless --md is given. --html writes one \
self-contained page (inline CSS and SVG, nothing fetched) with the table and two plots: \
quality loss (KLD, or perplexity when fewer models have KLD) against file size and against \
decode speed, each marking its Pareto front. Files are written atomically.

Example:
  frugal report results/*.json --md report.md --html report.html --title \"SmolLM2 quants\"")]
pub struct Args {
    /// Result files (JSON) written by `frugal eval --out` or `frugal bench --out`.
    #[arg(required = true, value_name = "RESULTS")]
    pub results: Vec<PathBuf>,
    /// Write the Markdown report here instead of printing it.
    #[arg(long, value_name = "OUT.md")]
    pub md: Option<PathBuf>,
    /// Write a self-contained HTML page with the table and Pareto plots here.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Title of the report.
    #[arg(long, value_name = "T", default_value = "frugal report")]
    pub title: String,
}

pub fn run(a: Args) -> Result<()> {
    let report = Report::load(&a.results)?;
    let md = frugal_report::markdown(&report, &a.title);
    if let Some(path) = &a.html {
        write_atomic(path, frugal_report::html(&report, &a.title).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    match &a.md {
        Some(path) => {
            write_atomic(path, md.as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{md}"),
    }
    Ok(())
}
