//! `frugal report`: merge the result records of `frugal eval` and `frugal bench`
//! into one row per model, written as a Markdown table and as one
//! self-contained HTML page (inline CSS and hand-written SVG, nothing fetched)
//! whose plots mark the Pareto front of quality against size and speed.
//!
//! - [`load`]: read one record file, with errors that name it.
//! - [`merge`]: group records by model (sha256), keep the newest per task,
//!   collect notes and provenance.
//! - [`table`]: the columns every output shares; [`markdown`] and [`html`]
//!   render them.
//! - [`plot`]: which models each plot shows and its SVG; [`pareto`]: the front.

mod fmt;
pub mod html;
pub mod load;
pub mod markdown;
pub mod merge;
pub mod pareto;
pub mod plot;
pub mod table;

pub use html::html;
pub use load::{read_record, Loaded};
pub use markdown::markdown;
pub use merge::{ModelEntry, Report};
pub use pareto::pareto_front;

use std::path::PathBuf;

/// Why a result file could not be used; every variant names the file. The
/// cause is part of the message (not a `source`), so `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not valid JSON: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error(
        "{}: not a frugal result record ({reason}); expected a file written by \
         `frugal eval --out` or `frugal bench --out`",
        path.display()
    )]
    NotRecord { path: PathBuf, reason: String },
    #[error(
        "{}: record schema {found} is not supported (this frugal reads schema {supported}); \
         use the frugal version that wrote it",
        path.display()
    )]
    Schema {
        path: PathBuf,
        found: u64,
        supported: u32,
    },
}
