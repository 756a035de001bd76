//! The report as one self-contained HTML file: inline CSS, inline SVG plots,
//! no script and nothing fetched, so it opens the same offline, attached to
//! an e-mail or as a CI artifact.

use crate::fmt::{count, esc, plural, sha_short, utc};
use crate::markdown::items;
use crate::merge::Report;
use crate::plot::{plots, svg};
use crate::table;
use std::fmt::Write;

/// Page styles. The plot colours are kept out of them (the badges have
/// their own), so the plots are the only place they appear.
const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1f2430;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 26px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 0 0 12px; }
.sub { color: #5b6475; margin: 0 0 20px; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 10px;
  padding: 18px 22px; margin: 0 0 20px; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 8px; border-bottom: 1px solid #eceef2; text-align: right; white-space: nowrap; }
th { background: #f1f3f6; font-weight: 600; border-bottom: 1px solid #d9dde4;
  white-space: normal; vertical-align: bottom; line-height: 1.25; }
td { vertical-align: top; }
th.text, td.text { text-align: left; }
tbody tr:hover { background: #fafbfc; }
td.model { font-weight: 600; }
.err, .remark { display: block; color: #7a8395; font-size: 12px; line-height: 1.2; }
.na { color: #c0c5ce; }
.badge { display: inline-block; padding: 0 7px; margin-right: 4px; border-radius: 9px;
  font-size: 12px; color: #a63c06; background: #fde8da; border: 1px solid #f6c3a3; }
.legendnote { color: #5b6475; font-size: 13px; margin: 10px 0 0; }
figure { margin: 0 auto 8px; max-width: 960px; }
figure + figure { margin-top: 26px; }
figcaption { font-weight: 600; font-size: 16px; margin: 0 0 6px; }
svg.plot { display: block; width: 100%; max-width: 960px; height: auto; }
.leftout { color: #5b6475; font-size: 13px; margin: 4px 0 0; }
ul { margin: 4px 0 12px; padding-left: 22px; }
li { margin: 2px 0; }
h3 { font-size: 15px; margin: 12px 0 4px; }
code { font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  background: #f1f3f6; padding: 1px 4px; border-radius: 4px; }
.notes li { color: #4a5161; }
"#;

/// The whole page.
pub fn html(report: &Report, title: &str) -> String {
    let (plots, missing) = plots(report);
    let t = table::build(report, &plots);
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{}</style>\n</head>\n<body>\n<main>\n",
        esc(title),
        CSS
    );
    let _ = writeln!(s, "<h1>{}</h1>", esc(title));
    let _ = writeln!(
        s,
        "<p class=\"sub\">{} from {}</p>",
        plural(report.models.len(), "model"),
        plural(report.files.len(), "result file")
    );

    // Table.
    s.push_str("<section>\n<h2>Results</h2>\n<div class=\"tablewrap\"><table>\n<thead><tr>");
    for (i, h) in t.headers.iter().enumerate() {
        let numeric = t.rows.first().is_some_and(|r| r[i].numeric);
        let _ = write!(
            s,
            "<th class=\"{}\">{}</th>",
            if numeric { "num" } else { "text" },
            esc(h)
        );
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        s.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            let is_pareto_col = t.headers[i] == "Pareto";
            let class = match (i, c.numeric) {
                (0, _) => "text model",
                (_, true) => "num",
                _ => "text",
            };
            let _ = write!(s, "<td class=\"{class}\">");
            if is_pareto_col {
                for part in c.value.split(", ").filter(|p| !p.is_empty()) {
                    let _ = write!(s, "<span class=\"badge\">{}</span>", esc(part));
                }
            } else if c.value.is_empty() {
                s.push_str("<span class=\"na\">—</span>");
            } else {
                s.push_str(&esc(&c.value));
                if let Some(e) = &c.err {
                    let _ = write!(s, "<span class=\"err\">±&#8239;{}</span>", esc(e));
                }
                if let Some(r) = c.remark {
                    let _ = write!(s, "<span class=\"remark\">({})</span>", esc(r));
                }
            }
            s.push_str("</td>");
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table></div>\n");
    let mut legend = Vec::new();
    if t.headers.iter().any(|h| h == "Pareto") {
        legend.push(
            "Pareto: the plots on whose front the model lies (no other model is at least as good on both axes and better on one)."
                .to_string(),
        );
    }
    if report
        .models
        .iter()
        .any(|m| m.is_implied("kld", "kld_mean"))
    {
        legend.push(
            "KLD 0 (base): the reference model of the KLD measurements diverges from itself by 0."
                .into(),
        );
    }
    legend.push(
        "± is the standard error (the standard deviation over runs for decode speed).".into(),
    );
    let _ = writeln!(s, "<p class=\"legendnote\">{}</p>", esc(&legend.join(" ")));
    s.push_str("</section>\n");

    // Plots.
    if !plots.is_empty() || !missing.is_empty() {
        s.push_str("<section>\n<h2>Plots</h2>\n");
        for p in &plots {
            let _ = writeln!(s, "<figure>\n<figcaption>{}</figcaption>", esc(&p.title));
            s.push_str(&svg(p));
            s.push('\n');
            if !p.left_out.is_empty() {
                let _ = writeln!(
                    s,
                    "<p class=\"leftout\">Not plotted: {}.</p>",
                    esc(&p.left_out.join(", "))
                );
            }
            s.push_str("</figure>\n");
        }
        for m in &missing {
            let _ = writeln!(s, "<p class=\"leftout\">{}</p>", esc(m));
        }
        s.push_str("</section>\n");
    }

    // Provenance.
    let prov = report.provenance();
    s.push_str("<section>\n<h2>Provenance</h2>\n<h3>Models</h3>\n<ul>\n");
    for m in &report.models {
        let _ = writeln!(
            s,
            "<li><b>{}</b>: sha256 <code>{}</code>, {} {}, {} parameters, {:.2} bpw, <code>{}</code></li>",
            esc(&m.label),
            esc(sha_short(&m.info.sha256)),
            esc(&m.info.arch),
            esc(&m.info.format),
            count(m.info.params),
            m.info.bpw,
            esc(&m.info.path.display().to_string())
        );
    }
    s.push_str("</ul>\n");
    if !prov.data.is_empty() {
        s.push_str("<h3>Data</h3>\n<ul>\n");
        for d in &prov.data {
            let _ = writeln!(
                s,
                "<li>{}: <code>{}</code> (sha256 <code>{}</code>), {}{}, {}</li>",
                esc(&d.task),
                esc(&d.path.display().to_string()),
                esc(sha_short(&d.sha256)),
                items(&d.items),
                if d.skipped_lines > 0 {
                    format!(", {} bad lines skipped", d.skipped_lines)
                } else {
                    String::new()
                },
                plural(d.models.len(), "model")
            );
        }
        s.push_str("</ul>\n");
    }
    s.push_str("<h3>frugal versions</h3>\n<ul>\n");
    for (v, n) in &prov.versions {
        let _ = writeln!(s, "<li>{} ({})</li>", esc(v), plural(*n, "record"));
    }
    s.push_str("</ul>\n<h3>Machines</h3>\n<ul>\n");
    for m in &prov.machines {
        let tasks: Vec<&str> = m.tasks.iter().map(String::as_str).collect();
        let _ = writeln!(
            s,
            "<li>{}: {} ({})</li>",
            esc(&m.description),
            esc(&tasks.join(", ")),
            plural(m.records, "record")
        );
    }
    s.push_str("</ul>\n");
    if let Some((a, b)) = prov.created {
        let _ = writeln!(s, "<p>Records made {} to {}.</p>", utc(a), utc(b));
    }
    s.push_str("</section>\n");

    if !report.notes.is_empty() {
        s.push_str("<section class=\"notes\">\n<h2>Notes</h2>\n<ul>\n");
        for n in &report.notes {
            let _ = writeln!(s, "<li>{}</li>", esc(n));
        }
        s.push_str("</ul>\n</section>\n");
    }
    s.push_str("</main>\n</body>\n</html>\n");
    s
}
