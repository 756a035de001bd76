//! The two plots: quality loss against file size and against decode speed,
//! each with its Pareto front, drawn as hand-written SVG (no script, no
//! external resource) so the page works offline and from a file.

use crate::fmt::{esc, short};
use crate::merge::{ModelEntry, Report};
use crate::pareto::pareto_front;
use std::collections::BTreeSet;
use std::fmt::Write;

/// Colour of the Pareto front: its line and its points.
pub const PARETO_COLOUR: &str = "#e8590c";
/// Colour of dominated points.
pub const DOMINATED_COLOUR: &str = "#8d99ae";

/// One model in a plot.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotPoint {
    pub label: String,
    pub x: f64,
    pub y: f64,
    pub pareto: bool,
}

/// The quality measure on the y axis (lower is better for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quality {
    Kld,
    Ppl,
}

/// Everything one plot shows, decided before any drawing.
#[derive(Clone, Debug)]
pub struct PlotData {
    /// "size" or "speed": the front's name in the table's Pareto column.
    pub short: &'static str,
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    /// Second line under the y title: scale and direction.
    pub y_note: String,
    pub quality: Quality,
    /// Speed: higher is better, so the front maximizes x.
    pub x_higher_better: bool,
    pub x_log: bool,
    pub y_log: bool,
    pub points: Vec<PlotPoint>,
    /// Models not shown, with why ("Q4_K (no KLD)").
    pub left_out: Vec<String>,
}

/// The plots that have at least one point, and a line for each that has none.
pub fn plots(report: &Report) -> (Vec<PlotData>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let size = |m: &ModelEntry| (m.info.file_bytes > 0).then(|| m.size_mib());
    let speed = |m: &ModelEntry| m.metric("bench", "decode_tps").filter(|v| *v > 0.0);
    for (short, x_name, higher) in [
        ("size", "file size", false),
        ("speed", "decode speed", true),
    ] {
        let x_of: &dyn Fn(&ModelEntry) -> Option<f64> = if higher { &speed } else { &size };
        match plot(report, short, x_name, higher, x_of) {
            Some(p) => out.push(p),
            None => missing.push(format!(
                "No quality-against-{x_name} plot: no model has both {} and a quality measure (KLD or perplexity).",
                if higher { "a decode speed (frugal bench)" } else { "a file size" }
            )),
        }
    }
    (out, missing)
}

fn plot(
    report: &Report,
    short: &'static str,
    x_name: &str,
    x_higher_better: bool,
    x_of: &dyn Fn(&ModelEntry) -> Option<f64>,
) -> Option<PlotData> {
    let with_x: Vec<&ModelEntry> = report.models.iter().filter(|m| x_of(m).is_some()).collect();
    // KLD is never negative; a rounding-level negative mean is 0.
    let kld = |m: &ModelEntry| {
        m.metric("kld", "kld_mean")
            .filter(|v| *v >= -1e-6)
            .map(|v| v.max(0.0))
    };
    let ppl = |m: &ModelEntry| m.metric("perplexity", "ppl").filter(|v| *v > 0.0);
    let n_kld = if report.kld_comparable {
        with_x.iter().filter(|m| kld(m).is_some()).count()
    } else {
        0
    };
    let n_ppl = with_x.iter().filter(|m| ppl(m).is_some()).count();
    let quality = if n_kld > 0 && n_kld >= n_ppl {
        Quality::Kld
    } else if n_ppl > 0 {
        Quality::Ppl
    } else {
        return None;
    };
    let q_of = |m: &ModelEntry| match quality {
        Quality::Kld => kld(m),
        Quality::Ppl => ppl(m),
    };
    let mut points = Vec::new();
    let mut left_out = Vec::new();
    for m in &report.models {
        match (x_of(m), q_of(m)) {
            (Some(x), Some(y)) => points.push(PlotPoint {
                label: m.label.clone(),
                x,
                y,
                pareto: false,
            }),
            (None, _) => left_out.push(format!(
                "{} (no {})",
                m.label,
                if x_higher_better {
                    "decode speed"
                } else {
                    "file size"
                }
            )),
            (_, None) => left_out.push(format!(
                "{} (no {})",
                m.label,
                match quality {
                    Quality::Kld => "KLD",
                    Quality::Ppl => "perplexity",
                }
            )),
        }
    }
    let sign = if x_higher_better { -1.0 } else { 1.0 };
    let keys: Vec<(f64, f64)> = points.iter().map(|p| (sign * p.x, p.y)).collect();
    for (p, on) in points.iter_mut().zip(pareto_front(&keys)) {
        p.pareto = on;
    }
    let x_log = wants_log(points.iter().map(|p| p.x));
    let y_log = wants_log(points.iter().map(|p| p.y));
    let q_name = match quality {
        Quality::Kld => "KLD",
        Quality::Ppl => "Perplexity",
    };
    let y_title = match quality {
        // The rotated title has the plot's height; a long name would not fit.
        Quality::Kld => match report.kld_base.as_deref() {
            Some(b) if b.chars().count() <= 26 => format!("KL divergence from {b} (nats)"),
            _ => "KL divergence from the base (nats)".into(),
        },
        Quality::Ppl => {
            let files: BTreeSet<String> = report
                .models
                .iter()
                .filter(|m| points.iter().any(|p| p.label == m.label))
                .filter_map(|m| m.tasks.get("perplexity")?.record.data.as_ref())
                .map(|d| {
                    d.path
                        .file_name()
                        .unwrap_or(d.path.as_os_str())
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            match files.iter().next() {
                Some(f) if files.len() == 1 && f.chars().count() <= 36 => {
                    format!("Perplexity on {f}")
                }
                _ => "Perplexity".into(),
            }
        }
    };
    let y_note = format!("{}lower is better", if y_log { "log scale, " } else { "" });
    let log = |on: bool| if on { "log scale, " } else { "" };
    let x_title = if x_higher_better {
        format!("Decode speed (tokens/s, {}higher is better)", log(x_log))
    } else {
        format!("File size (MiB, {}smaller is better)", log(x_log))
    };
    Some(PlotData {
        short,
        title: format!("{q_name} against {x_name}"),
        x_title,
        y_title,
        y_note,
        quality,
        x_higher_better,
        x_log,
        y_log,
        points,
        left_out,
    })
}

/// A log axis when the positive values span more than 10× and none is
/// negative. Zeros (the KLD base) then sit in a slot below the log range.
fn wants_log(values: impl Iterator<Item = f64>) -> bool {
    let (mut lo, mut hi, mut n) = (f64::INFINITY, 0.0f64, 0);
    for v in values {
        if v < 0.0 {
            return false;
        }
        if v > 0.0 {
            lo = lo.min(v);
            hi = hi.max(v);
            n += 1;
        }
    }
    n >= 2 && hi / lo > 10.0
}

// Layout of the SVG, in px of its viewBox (shown 1:1 on a wide page).
const W: f64 = 880.0;
const H: f64 = 500.0;
const LEFT: f64 = 104.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 58.0;
const BOTTOM: f64 = 66.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif";
const LABEL_PX: f64 = 13.0;
/// Width of one label character, a little generous so boxes do not touch.
const CHAR_W: f64 = LABEL_PX * 0.64;
const R_PARETO: f64 = 7.0;
const R_DOMINATED: f64 = 6.0;

/// A mapping from data to pixels, with a margin around the data.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    p0: f64,
    p1: f64,
    /// Data never below zero: no negative ticks.
    nonneg: bool,
    /// A log axis with zeros in the data: they get a slot of their own
    /// between the axis line and the log range, marked by a break.
    zero: bool,
}

/// Pixels from the axis line to a zero on a log axis, and to the log range.
const ZERO_AT: f64 = 12.0;
const ZERO_GAP: f64 = 36.0;

impl Axis {
    fn new(values: &[f64], log: bool, p0: f64, p1: f64) -> Axis {
        let vmin = values.iter().copied().fold(f64::INFINITY, f64::min);
        let vmax = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let nonneg = vmin >= 0.0;
        let zero = log && vmin <= 0.0;
        let (lo, hi) = if log {
            let pmin = values
                .iter()
                .copied()
                .filter(|v| *v > 0.0)
                .fold(f64::INFINITY, f64::min);
            let (l, h) = (pmin.log10(), vmax.log10());
            let pad = ((h - l) * 0.07).max(0.05);
            // Stay inside normal f64 range: a zero or infinite end breaks log10.
            (
                10f64.powf((l - pad).max(-300.0)),
                10f64.powf((h + pad).min(300.0)),
            )
        } else {
            let span = vmax - vmin;
            if span > 0.0 {
                (vmin - 0.08 * span, vmax + 0.08 * span)
            } else {
                let half = if vmin == 0.0 { 0.5 } else { vmin.abs() * 0.1 };
                (vmin - half, vmax + half)
            }
        };
        Axis {
            lo,
            hi,
            log,
            p0,
            p1,
            nonneg,
            zero,
        }
    }

    /// Unit step from the axis line into the plot.
    fn dir(&self) -> f64 {
        (self.p1 - self.p0).signum()
    }

    fn px(&self, v: f64) -> f64 {
        if self.log && v <= 0.0 {
            return self.p0 + self.dir() * ZERO_AT;
        }
        let start = if self.zero {
            self.p0 + self.dir() * ZERO_GAP
        } else {
            self.p0
        };
        let t = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        start + t * (self.p1 - start)
    }

    /// Where the axis line is broken between the zero slot and the log range.
    fn break_at(&self) -> Option<f64> {
        self.zero
            .then(|| self.p0 + self.dir() * (ZERO_AT + ZERO_GAP) / 2.0)
    }

    /// Tick values with their labels: 1-2-5 steps, or 1-2-5 per decade on a
    /// log axis (decades only over more than 3 decades, every n-th over 8).
    fn ticks(&self) -> Vec<(f64, String)> {
        let mut out = Vec::new();
        if self.zero {
            out.push((0.0, "0".to_string()));
        }
        if self.log {
            let (l, h) = (self.lo.log10(), self.hi.log10());
            if !(l.is_finite() && h.is_finite()) {
                return out;
            }
            let mults: &[f64] = if h - l > 3.0 {
                &[1.0]
            } else {
                &[1.0, 2.0, 5.0]
            };
            // At most about 8 decade ticks.
            let every = ((h - l) / 8.0).ceil().max(1.0) as i32;
            for e in (l.floor() as i32)..=(h.ceil() as i32) {
                if e.rem_euclid(every) != 0 {
                    continue;
                }
                for m in mults {
                    let v = m * 10f64.powi(e);
                    if v >= self.lo && v <= self.hi {
                        out.push((v, short(v)));
                    }
                }
            }
            return out;
        }
        let raw = (self.hi - self.lo) / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let norm = raw / mag;
        let step = mag
            * if norm < 1.5 {
                1.0
            } else if norm < 3.0 {
                2.0
            } else if norm < 7.0 {
                5.0
            } else {
                10.0
            };
        let dec = (-step.log10().floor()).max(0.0) as usize;
        let k0 = (self.lo / step).ceil();
        // Bounded: with absurd magnitudes k + 1 == k, and the loop must end.
        for i in 0..20 {
            let v = (k0 + f64::from(i)) * step;
            if v.is_nan() || v > self.hi + step * 1e-9 {
                break;
            }
            let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
            if !(self.nonneg && v < 0.0) {
                out.push((v, format!("{v:.dec$}")));
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn overlap(&self, o: &Rect) -> f64 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0.0);
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0.0);
        w * h
    }

    fn area(&self) -> f64 {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn name(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// Label positions tried in order, relative to the point: beside, above,
/// below, diagonal, then farther out with a leader line.
const CANDIDATES: &[(f64, f64, Anchor, bool)] = &[
    (11.0, 4.5, Anchor::Start, false),
    (-11.0, 4.5, Anchor::End, false),
    (0.0, -13.0, Anchor::Middle, false),
    (0.0, 23.0, Anchor::Middle, false),
    (9.0, -10.0, Anchor::Start, false),
    (9.0, 19.0, Anchor::Start, false),
    (-9.0, -10.0, Anchor::End, false),
    (-9.0, 19.0, Anchor::End, false),
    (16.0, -24.0, Anchor::Start, true),
    (16.0, 32.0, Anchor::Start, true),
    (-16.0, -24.0, Anchor::End, true),
    (-16.0, 32.0, Anchor::End, true),
    (0.0, -32.0, Anchor::Middle, true),
    (0.0, 42.0, Anchor::Middle, true),
    (20.0, -40.0, Anchor::Start, true),
    (20.0, 48.0, Anchor::Start, true),
    (-20.0, -40.0, Anchor::End, true),
    (-20.0, 48.0, Anchor::End, true),
];

/// Where one label goes.
#[derive(Clone, Copy, Debug)]
struct Placement {
    x: f64,
    y: f64,
    anchor: Anchor,
    leader: bool,
    rect: Rect,
}

fn text_rect(x: f64, y: f64, anchor: Anchor, chars: usize, bold: bool) -> Rect {
    let w = chars as f64 * CHAR_W * if bold { 1.06 } else { 1.0 };
    let x0 = match anchor {
        Anchor::Start => x,
        Anchor::Middle => x - w / 2.0,
        Anchor::End => x - w,
    };
    Rect {
        x0,
        y0: y - LABEL_PX * 0.8,
        x1: x0 + w,
        y1: y + LABEL_PX * 0.25,
    }
}

/// Length of the part of segment a-b inside `r` (Liang-Barsky clipping).
fn clip_len(a: (f64, f64), b: (f64, f64), r: &Rect) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - r.x0),
        (dx, r.x1 - a.0),
        (-dy, a.1 - r.y0),
        (dy, r.y1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return 0.0;
            }
            continue;
        }
        let t = q / p;
        if p < 0.0 {
            t0 = t0.max(t);
        } else {
            t1 = t1.min(t);
        }
        if t0 > t1 {
            return 0.0;
        }
    }
    (t1 - t0) * dx.hypot(dy)
}

type Segment = ((f64, f64), (f64, f64));

/// Greedy placement: each label takes the first candidate with the least
/// overlap with labels already placed, with points, with the front line and
/// with the outside of the plot area.
fn place_labels(pts: &[(f64, f64, usize, bool)], lines: &[Segment], area: Rect) -> Vec<Placement> {
    let point_rects: Vec<Rect> = pts
        .iter()
        .map(|&(x, y, _, pareto)| {
            let r = if pareto { R_PARETO } else { R_DOMINATED } + 2.0;
            Rect {
                x0: x - r,
                y0: y - r,
                x1: x + r,
                y1: y + r,
            }
        })
        .collect();
    // Front points first (they matter most), each group left to right.
    let mut order: Vec<usize> = (0..pts.len()).collect();
    order.sort_by(|&a, &b| pts[b].3.cmp(&pts[a].3).then(pts[a].0.total_cmp(&pts[b].0)));
    let mut placed: Vec<Option<Placement>> = vec![None; pts.len()];
    for i in order {
        let (x, y, chars, bold) = pts[i];
        let mut best: Option<(f64, Placement)> = None;
        for (k, &(dx, dy, anchor, leader)) in CANDIDATES.iter().enumerate() {
            let rect = text_rect(x + dx, y + dy, anchor, chars, bold);
            let mut cost = k as f64 * 0.5 + if leader { 40.0 } else { 0.0 };
            cost += 2.0 * (rect.area() - rect.overlap(&area));
            for p in placed.iter().flatten() {
                cost += 4.0 * rect.overlap(&p.rect);
            }
            for &(a, b) in lines {
                cost += 8.0 * clip_len(a, b, &rect);
            }
            for (j, pr) in point_rects.iter().enumerate() {
                if j != i {
                    cost += 4.0 * rect.overlap(pr);
                }
            }
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((
                    cost,
                    Placement {
                        x: x + dx,
                        y: y + dy,
                        anchor,
                        leader,
                        rect,
                    },
                ));
            }
        }
        placed[i] = best.map(|(_, p)| p);
    }
    placed
        .into_iter()
        .zip(pts)
        .map(|(p, &(x, y, chars, bold))| {
            p.unwrap_or(Placement {
                x,
                y,
                anchor: Anchor::Start,
                leader: false,
                rect: text_rect(x, y, Anchor::Start, chars, bold),
            })
        })
        .collect()
}

/// The plot as one `<svg>` element (inline in HTML: no xmlns needed).
pub fn svg(p: &PlotData) -> String {
    let mut s = String::new();
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let xs: Vec<f64> = p.points.iter().map(|q| q.x).collect();
    let ys: Vec<f64> = p.points.iter().map(|q| q.y).collect();
    let xa = Axis::new(&xs, p.x_log, x0, x1);
    let ya = Axis::new(&ys, p.y_log, y1, y0);
    let _ = write!(
        s,
        r#"<svg class="plot" data-plot="{short}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{title}" font-family="{FONT}">"#,
        short = p.short,
        title = esc(&p.title)
    );
    let _ = write!(s, "<title>{}</title>", esc(&p.title));
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>"##
    );

    // Legend, in the top margin.
    let ly = 26.0;
    let mut lx = x0;
    let _ = write!(
        s,
        r##"<g class="legend" font-size="13" fill="#343a40"><line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{PARETO_COLOUR}" stroke-width="2.5"/><circle cx="{}" cy="{ly}" r="{R_PARETO}" fill="{PARETO_COLOUR}" stroke="#ffffff" stroke-width="1.5"/><text x="{}" y="{}">Pareto-optimal (on the front line)</text>"##,
        lx + 30.0,
        lx + 15.0,
        lx + 38.0,
        ly + 4.5
    );
    lx += 38.0 + 34.0 * 13.0 * 0.58 + 28.0;
    let _ = write!(
        s,
        r##"<circle cx="{}" cy="{ly}" r="{R_DOMINATED}" fill="{DOMINATED_COLOUR}" stroke="#ffffff" stroke-width="1.5"/><text x="{}" y="{}">dominated (another model is better on both axes)</text></g>"##,
        lx + 7.0,
        lx + 20.0,
        ly + 4.5
    );

    // Grid, ticks and tick labels.
    s.push_str(r##"<g class="grid" stroke="#e9ecef" stroke-width="1">"##);
    let xt = xa.ticks();
    let yt = ya.ticks();
    for (v, _) in &xt {
        let x = xa.px(*v);
        let _ = write!(s, r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}"/>"#);
    }
    for (v, _) in &yt {
        let y = ya.px(*v);
        let _ = write!(s, r#"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}"/>"#);
    }
    s.push_str("</g>");
    let _ = write!(
        s,
        r##"<g class="axes" stroke="#495057" stroke-width="1.2"><line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/></g>"##
    );
    if let Some(x) = xa.break_at() {
        let _ = write!(
            s,
            r##"<g class="axis-break" stroke="#495057" stroke-width="1.2"><rect x="{:.1}" y="{:.1}" width="6" height="10" fill="#ffffff" stroke="none"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/></g>"##,
            x - 3.0,
            y1 - 5.0,
            x - 6.0,
            y1 + 5.0,
            x,
            y1 - 5.0,
            x,
            y1 + 5.0,
            x + 6.0,
            y1 - 5.0
        );
    }
    if let Some(y) = ya.break_at() {
        let _ = write!(
            s,
            r##"<g class="axis-break" stroke="#495057" stroke-width="1.2"><rect x="{:.1}" y="{:.1}" width="10" height="6" fill="#ffffff" stroke="none"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/></g>"##,
            x0 - 5.0,
            y - 3.0,
            x0 - 5.0,
            y + 3.0,
            x0 + 5.0,
            y - 3.0,
            x0 - 5.0,
            y + 6.0,
            x0 + 5.0,
            y
        );
    }
    s.push_str(r##"<g class="ticks" font-size="12.5" fill="#495057">"##);
    for (v, t) in &xt {
        let x = xa.px(*v);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{}" stroke="#495057"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y1 + 5.0,
            y1 + 20.0,
            esc(t)
        );
    }
    for (v, t) in &yt {
        let y = ya.px(*v);
        let _ = write!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{x0}" y2="{y:.1}" stroke="#495057"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 5.0,
            x0 - 9.0,
            y + 4.0,
            esc(t)
        );
    }
    s.push_str("</g>");

    // Axis titles.
    let _ = write!(
        s,
        r##"<text class="axis-title x" x="{:.1}" y="{}" text-anchor="middle" font-size="14" font-weight="600" fill="#212529">{}</text>"##,
        (x0 + x1) / 2.0,
        H - 16.0,
        esc(&p.x_title)
    );
    let ymid = (y0 + y1) / 2.0;
    let _ = write!(
        s,
        r##"<text class="axis-title y" x="20" y="{ymid:.1}" transform="rotate(-90 20 {ymid:.1})" text-anchor="middle" font-size="14" font-weight="600" fill="#212529">{}</text>"##,
        esc(&p.y_title)
    );
    let _ = write!(
        s,
        r##"<text class="axis-note y" x="37" y="{ymid:.1}" transform="rotate(-90 37 {ymid:.1})" text-anchor="middle" font-size="12.5" fill="#5b6475">{}</text>"##,
        esc(&p.y_note)
    );

    // Points in pixels; the front line joins front points left to right.
    let px: Vec<(f64, f64)> = p.points.iter().map(|q| (xa.px(q.x), ya.px(q.y))).collect();
    let mut front: Vec<(f64, f64)> = px
        .iter()
        .zip(&p.points)
        .filter(|(_, q)| q.pareto)
        .map(|(&xy, _)| xy)
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    if front.len() > 1 {
        let pts: Vec<String> = front
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="front" points="{}" fill="none" stroke="{PARETO_COLOUR}" stroke-width="2.5" stroke-linejoin="round" stroke-opacity="0.85"/>"#,
            pts.join(" ")
        );
    }

    let area = Rect {
        x0: x0 + 2.0,
        y0: y0 + 2.0,
        x1: x1 - 2.0,
        y1: y1 - 2.0,
    };
    let label_in: Vec<(f64, f64, usize, bool)> = px
        .iter()
        .zip(&p.points)
        .map(|(&(x, y), q)| (x, y, q.label.chars().count(), q.pareto))
        .collect();
    let lines: Vec<Segment> = front.windows(2).map(|w| (w[0], w[1])).collect();
    let labels = place_labels(&label_in, &lines, area);

    for (l, &(x, y)) in labels.iter().zip(&px) {
        if l.leader {
            let _ = write!(
                s,
                r##"<line class="leader" x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{:.1}" stroke="#adb5bd" stroke-width="1"/>"##,
                l.x,
                l.y - 4.0
            );
        }
    }
    // Dominated points under front points.
    for pass in [false, true] {
        for (q, &(x, y)) in p.points.iter().zip(&px) {
            if q.pareto != pass {
                continue;
            }
            let (class, colour, r) = if q.pareto {
                ("point pareto", PARETO_COLOUR, R_PARETO)
            } else {
                ("point dominated", DOMINATED_COLOUR, R_DOMINATED)
            };
            let _ = write!(
                s,
                r##"<circle class="{class}" data-label="{}" cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{colour}" stroke="#ffffff" stroke-width="1.5"><title>{} ({}, {})</title></circle>"##,
                esc(&q.label),
                esc(&q.label),
                short(q.x),
                short(q.y)
            );
        }
    }
    for (l, q) in labels.iter().zip(&p.points) {
        let (weight, fill) = if q.pareto {
            ("600", "#212529")
        } else {
            ("400", "#495057")
        };
        let _ = write!(
            s,
            r##"<text class="label" x="{:.1}" y="{:.1}" text-anchor="{}" font-size="{LABEL_PX}" font-weight="{weight}" fill="{fill}" stroke="#ffffff" stroke-width="3.5" stroke-linejoin="round" paint-order="stroke">{}</text>"##,
            l.x,
            l.y,
            l.anchor.name(),
            esc(&q.label)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ticks_are_round_and_skip_negatives_for_nonnegative_data() {
        let a = Axis::new(&[0.0, 0.07], false, 0.0, 100.0);
        let t: Vec<String> = a.ticks().into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            t,
            ["0.00", "0.01", "0.02", "0.03", "0.04", "0.05", "0.06", "0.07"]
        );
    }

    #[test]
    fn log_ticks_use_1_2_5() {
        let a = Axis::new(&[60.0, 520.0], true, 0.0, 100.0);
        let t: Vec<String> = a.ticks().into_iter().map(|(_, s)| s).collect();
        assert_eq!(t, ["100", "200", "500"]);
        assert!(a.px(100.0) < a.px(200.0));
    }

    #[test]
    fn zeros_on_a_log_axis_get_their_own_slot() {
        let v = [0.0, 0.0009, 0.05, 0.45];
        assert!(wants_log(v.iter().copied()));
        assert!(!wants_log([0.0, 0.05, 0.07].into_iter()));
        assert!(!wants_log([-1.0, 0.05, 7.0].into_iter()));
        // y axis: p0 (the axis line) at the bottom, 400 px.
        let a = Axis::new(&v, true, 400.0, 0.0);
        assert_eq!(a.px(0.0), 400.0 - ZERO_AT);
        assert!(a.px(0.0009) < 400.0 - ZERO_GAP && a.px(0.45) > 0.0);
        let b = a.break_at().unwrap();
        assert!(b < a.px(0.0) && b > a.px(0.0009));
        let t = a.ticks();
        assert_eq!(t[0], (0.0, "0".to_string()));
        assert!(t.iter().any(|(_, s)| s == "0.001") && t.iter().any(|(_, s)| s == "0.1"));
    }

    #[test]
    fn absurd_values_still_give_an_axis() {
        for v in [[1e25, 1e25 + 1e10], [0.0, 1e300], [1e-300, 2e-300]] {
            let a = Axis::new(&v, false, 0.0, 100.0);
            assert!(a.ticks().len() <= 20);
        }
        let a = Axis::new(&[1e-300, 1e300], true, 0.0, 100.0);
        let t = a.ticks();
        assert!(!t.is_empty() && t.len() <= 10, "{t:?}");
    }

    #[test]
    fn single_value_axis_has_a_range() {
        let a = Axis::new(&[5.0], false, 0.0, 100.0);
        assert!((a.px(5.0) - 50.0).abs() < 1e-9);
        assert!(!a.ticks().is_empty());
    }

    #[test]
    fn labels_of_close_points_do_not_overlap() {
        let area = Rect {
            x0: 0.0,
            y0: 0.0,
            x1: 800.0,
            y1: 400.0,
        };
        let pts = [
            (400.0, 200.0, 6, true),
            (402.0, 204.0, 6, true),
            (398.0, 198.0, 6, false),
        ];
        let l = place_labels(&pts, &[], area);
        for i in 0..l.len() {
            for j in i + 1..l.len() {
                assert_eq!(l[i].rect.overlap(&l[j].rect), 0.0, "{i} {j}");
            }
        }
    }

    #[test]
    fn labels_avoid_the_front_line() {
        let area = Rect {
            x0: 0.0,
            y0: 0.0,
            x1: 800.0,
            y1: 400.0,
        };
        // A horizontal front line running right from the point.
        let line = ((400.0, 200.0), (700.0, 200.0));
        let l = place_labels(&[(400.0, 200.0, 8, true)], &[line], area);
        assert_eq!(clip_len(line.0, line.1, &l[0].rect), 0.0);
        assert!(
            clip_len(
                (0.0, 5.0),
                (10.0, 5.0),
                &Rect {
                    x0: 2.0,
                    y0: 0.0,
                    x1: 6.0,
                    y1: 10.0
                }
            ) > 3.9
        );
    }

    #[test]
    fn label_near_the_right_edge_goes_left() {
        let area = Rect {
            x0: 0.0,
            y0: 0.0,
            x1: 800.0,
            y1: 400.0,
        };
        let l = place_labels(&[(790.0, 200.0, 10, true)], &[], area);
        assert_eq!(l[0].anchor, Anchor::End);
    }
}
