//! The report as Markdown: the table, the Pareto fronts in words, provenance
//! and notes (what a reader needs to trust or doubt the numbers).

use crate::fmt::{count, md, plural, sha_short, utc};
use crate::merge::Report;
use crate::plot::plots;
use crate::table;
use std::fmt::Write;

/// The whole Markdown document.
pub fn markdown(report: &Report, title: &str) -> String {
    let (plots, missing) = plots(report);
    let t = table::build(report, &plots);
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", md(title));
    let _ = writeln!(
        s,
        "{} from {}.\n",
        plural(report.models.len(), "model"),
        plural(report.files.len(), "result file")
    );
    let _ = writeln!(
        s,
        "| {} |",
        t.headers
            .iter()
            .map(|h| md(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let align: Vec<&str> = t
        .headers
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let numeric = t.rows.first().is_some_and(|r| r[i].numeric);
            if numeric {
                "--:"
            } else {
                ":--"
            }
        })
        .collect();
    let _ = writeln!(s, "| {} |", align.join(" | "));
    for row in &t.rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| {
                let p = c.plain();
                if p.is_empty() {
                    "—".into()
                } else {
                    md(&p)
                }
            })
            .collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s.push('\n');
    if report
        .models
        .iter()
        .any(|m| m.is_implied("kld", "kld_mean"))
    {
        let _ = writeln!(
            s,
            "KLD \"0 (base)\": the reference model of the KLD measurements diverges from itself by 0.\n"
        );
    }

    if !plots.is_empty() {
        let _ = writeln!(s, "## Pareto fronts\n");
        for p in &plots {
            let front: Vec<String> = p
                .points
                .iter()
                .filter(|q| q.pareto)
                .map(|q| md(&q.label))
                .collect();
            let _ = write!(s, "- {}: {}", md(&p.title), front.join(", "));
            if !p.left_out.is_empty() {
                let lo: Vec<String> = p.left_out.iter().map(|l| md(l)).collect();
                let _ = write!(s, " (left out: {})", lo.join(", "));
            }
            s.push('\n');
        }
        s.push('\n');
    }

    let prov = report.provenance();
    let _ = writeln!(s, "## Provenance\n");
    let _ = writeln!(s, "Models:\n");
    for m in &report.models {
        let _ = writeln!(
            s,
            "- {}: sha256 `{}`, {} {}, {} parameters, {:.2} bpw, {}",
            md(&m.label),
            sha_short(&m.info.sha256),
            md(&m.info.arch),
            md(&m.info.format),
            count(m.info.params),
            m.info.bpw,
            md(&m.info.path.display().to_string())
        );
    }
    if !prov.data.is_empty() {
        let _ = writeln!(s, "\nData:\n");
        for d in &prov.data {
            let _ = writeln!(
                s,
                "- {}: {} (sha256 `{}`), {}{}, {}",
                d.task,
                md(&d.path.display().to_string()),
                sha_short(&d.sha256),
                items(&d.items),
                if d.skipped_lines > 0 {
                    format!(", {} bad lines skipped", d.skipped_lines)
                } else {
                    String::new()
                },
                plural(d.models.len(), "model")
            );
        }
    }
    let _ = writeln!(s, "\nfrugal versions:\n");
    for (v, n) in &prov.versions {
        let _ = writeln!(s, "- {} ({})", md(v), plural(*n, "record"));
    }
    let _ = writeln!(s, "\nMachines:\n");
    for m in &prov.machines {
        let tasks: Vec<&str> = m.tasks.iter().map(String::as_str).collect();
        let _ = writeln!(
            s,
            "- {}: {} ({})",
            md(&m.description),
            tasks.join(", "),
            plural(m.records, "record")
        );
    }
    if let Some((a, b)) = prov.created {
        let _ = writeln!(s, "\nRecords made {} to {}.", utc(a), utc(b));
    }

    let notes: Vec<&String> = report.notes.iter().chain(&missing).collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(s, "- {}", md(n));
        }
    }
    s
}

/// "100 items" or "2 to 100 items".
pub fn items(set: &std::collections::BTreeSet<usize>) -> String {
    match (set.first(), set.last()) {
        (Some(a), Some(b)) if a != b => format!("{a} to {b} items"),
        (Some(&a), _) => plural(a, "item"),
        _ => "0 items".into(),
    }
}
