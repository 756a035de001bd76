//! The table both outputs show: one row per model, one column per measure
//! that at least one model has. Cells are text already; renderers only lay
//! them out.

use crate::fmt::{sig_decimals, trim};
use crate::merge::{ModelEntry, Report};
use crate::plot::PlotData;

/// How a column's numbers are written.
#[derive(Clone, Copy, Debug)]
pub enum Digits {
    /// Fixed decimals (speeds, sizes, percentages).
    Fixed(usize),
    /// Significant digits (values spanning orders of magnitude, like KLD).
    Sig(usize),
}

/// One measure: where it is in the records and how to print it.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub header: &'static str,
    pub task: &'static str,
    pub key: &'static str,
    /// Metric key of its standard error (or deviation), shown as "± x".
    pub err: Option<&'static str>,
    /// Multiplier from the record's unit to the column's.
    pub scale: f64,
    pub digits: Digits,
}

const fn col(
    header: &'static str,
    task: &'static str,
    key: &'static str,
    err: Option<&'static str>,
    scale: f64,
    digits: Digits,
) -> Column {
    Column {
        header,
        task,
        key,
        err,
        scale,
        digits,
    }
}

const MIB: f64 = 1.0 / (1024.0 * 1024.0);

/// Every measure the report knows, in table order (keys from
/// `frugal_eval::record`).
pub const COLUMNS: &[Column] = &[
    col(
        "PPL",
        "perplexity",
        "ppl",
        Some("ppl_stderr"),
        1.0,
        Digits::Sig(4),
    ),
    col(
        "KLD",
        "kld",
        "kld_mean",
        Some("kld_stderr"),
        1.0,
        Digits::Sig(3),
    ),
    col(
        "same top %",
        "kld",
        "same_top_pct",
        Some("same_top_stderr_pct"),
        1.0,
        Digits::Fixed(2),
    ),
    col(
        "LAMBADA %",
        "lambada",
        "acc_pct",
        Some("acc_stderr_pct"),
        1.0,
        Digits::Fixed(1),
    ),
    col(
        "HellaSwag %",
        "hellaswag",
        "acc_pct",
        Some("acc_stderr_pct"),
        1.0,
        Digits::Fixed(1),
    ),
    col(
        "MC %",
        "mc",
        "acc_pct",
        Some("acc_stderr_pct"),
        1.0,
        Digits::Fixed(1),
    ),
    col(
        "decode t/s",
        "bench",
        "decode_tps",
        Some("decode_tps_sd"),
        1.0,
        Digits::Fixed(1),
    ),
    col(
        "prefill t/s",
        "bench",
        "prefill_tps",
        None,
        1.0,
        Digits::Fixed(1),
    ),
    col("TTFT ms", "bench", "ttft_ms", None, 1.0, Digits::Fixed(1)),
    col(
        "peak RSS MiB",
        "bench",
        "peak_rss_bytes",
        None,
        MIB,
        Digits::Fixed(0),
    ),
    col(
        "J/token",
        "bench",
        "energy_j_per_token",
        None,
        1.0,
        Digits::Sig(3),
    ),
    col("$/Mtok", "bench", "usd_per_mtok", None, 1.0, Digits::Sig(3)),
];

/// One table cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cell {
    /// Empty when the model has no such measure.
    pub value: String,
    /// The standard error, in the value's decimals.
    pub err: Option<String>,
    /// A remark after the value, like "base".
    pub remark: Option<&'static str>,
    /// Numbers align right; names left.
    pub numeric: bool,
}

impl Cell {
    fn text(s: String) -> Cell {
        Cell {
            value: s,
            ..Cell::default()
        }
    }

    fn num(s: String) -> Cell {
        Cell {
            value: s,
            numeric: true,
            ..Cell::default()
        }
    }

    /// The cell as one line of plain text ("21.36 ± 3.14", "0 (base)").
    pub fn plain(&self) -> String {
        let mut s = self.value.clone();
        if let Some(e) = &self.err {
            s.push_str(" ± ");
            s.push_str(e);
        }
        if let Some(r) = self.remark {
            s.push_str(&format!(" ({r})"));
        }
        s
    }
}

/// Headers and rows, columns without data already left out.
#[derive(Clone, Debug)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// Build the table; `plots` adds a "Pareto" column naming the fronts a model is on.
pub fn build(report: &Report, plots: &[PlotData]) -> Table {
    let used: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| {
            report
                .models
                .iter()
                .any(|m| m.metric(c.task, c.key).is_some())
        })
        .collect();
    let mut headers: Vec<String> = ["model", "size MiB", "bpw"].map(String::from).to_vec();
    headers.extend(used.iter().map(|c| c.header.to_string()));
    let pareto = !plots.is_empty();
    if pareto {
        headers.push("Pareto".into());
    }
    let rows = report
        .models
        .iter()
        .map(|m| {
            let mut row = vec![
                Cell::text(m.label.clone()),
                Cell::num(format!("{:.1}", m.size_mib())),
                Cell::num(format!("{:.2}", m.info.bpw)),
            ];
            row.extend(used.iter().map(|c| cell(m, c)));
            if pareto {
                let on: Vec<&str> = plots
                    .iter()
                    .filter(|p| p.points.iter().any(|q| q.pareto && q.label == m.label))
                    .map(|p| p.short)
                    .collect();
                row.push(Cell::text(on.join(", ")));
            }
            row
        })
        .collect();
    Table { headers, rows }
}

fn cell(m: &ModelEntry, c: &Column) -> Cell {
    let Some(v) = m.metric(c.task, c.key) else {
        return Cell {
            numeric: true,
            ..Cell::default()
        };
    };
    let v = v * c.scale;
    let dec = match c.digits {
        Digits::Fixed(d) => d,
        Digits::Sig(s) => sig_decimals(v, s),
    };
    let base = m.is_implied(c.task, c.key);
    let value = if base {
        trim(&format!("{v:.dec$}"))
    } else {
        format!("{v:.dec$}")
    };
    let err = if base {
        None
    } else {
        c.err
            .and_then(|k| m.metric(c.task, k))
            .map(|e| format!("{:.dec$}", e * c.scale))
    };
    Cell {
        value,
        err,
        remark: base.then_some("base"),
        numeric: true,
    }
}
