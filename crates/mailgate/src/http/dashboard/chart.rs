//! Charts as inline SVG, drawn on the server: a line chart (rates over
//! days) and a stacked bar chart (message counts over days). Labels are
//! text nodes, escaped like everything else maud writes.
//!
//! May import: maud.

use maud::{Markup, html};

pub const PALETTE: [&str; 8] = ["#2557d6", "#1b7f3b", "#a86400", "#b3261e", "#6f42c1", "#00838f", "#5d6677", "#c2185b"];

const W: f64 = 760.0;
const H: f64 = 230.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 28.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 34.0;

/// One line: a value (or a gap) per x slot.
pub struct Series {
    pub name: String,
    pub points: Vec<Option<f64>>,
    /// Drawn dashed (a second source of the same quantity).
    pub dashed: bool,
    /// Index into [`PALETTE`]: a domain's two series share a colour.
    pub color: usize,
}

/// One layer of stacked bars: a count per x slot.
pub struct Stack<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub values: Vec<u64>,
}

fn x_of(i: usize, n: usize) -> f64 {
    let span = W - LEFT - RIGHT;
    if n <= 1 { LEFT + span / 2.0 } else { LEFT + span * i as f64 / (n - 1) as f64 }
}

fn y_of(v: f64, max: f64) -> f64 {
    let span = H - TOP - BOTTOM;
    TOP + span * (1.0 - (v / max).clamp(0.0, 1.0))
}

/// Every `step`-th label, so they do not overlap.
fn label_step(n: usize) -> usize {
    n.div_ceil(10).max(1)
}

fn legend<'a>(items: impl Iterator<Item = (&'a str, &'a str, bool)>) -> Markup {
    // Swatches as SVG: the page's CSP allows no inline styles. Hollow for
    // a dashed series, as its points are.
    html! { div.legend { @for (name, color, hollow) in items { span { svg width="12" height="12" {
        rect x="1" y="1" width="10" height="10" rx="2" fill=(if hollow { "#ffffff" } else { color }) stroke=(color) stroke-width="2" {}
    } " " (name) } } } }
}

/// A line chart of percentages (0–100) over `x_labels`.
pub fn percent_lines(title: &str, x_labels: &[String], series: &[Series]) -> Markup {
    let n = x_labels.len();
    let step = label_step(n);
    html! {
        figure.panel {
            svg.chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(title) {
                title { (title) }
                @for pct in [0u32, 25, 50, 75, 100] {
                    @let y = y_of(pct as f64, 100.0);
                    line.grid x1=(LEFT) x2=(W - RIGHT) y1=(y) y2=(y) {}
                    text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (pct) "%" }
                }
                @for (i, label) in x_labels.iter().enumerate() {
                    @if i % step == 0 || i + 1 == n {
                        text x=(x_of(i, n)) y=(H - BOTTOM + 16.0) text-anchor="middle" { (label) }
                    }
                }
                @for s in series {
                    @let color = PALETTE[s.color % PALETTE.len()];
                    @for run in runs(&s.points) {
                        @if run.len() > 1 {
                            polyline fill="none" stroke=(color) stroke-width="2" stroke-dasharray=[s.dashed.then_some("6 4")] points=(polyline(&run, n)) {}
                        }
                    }
                    @for (i, v) in s.points.iter().enumerate() {
                        @if let Some(v) = v {
                            // Hollow for the second source, so single days tell apart too.
                            circle cx=(x_of(i, n)) cy=(y_of(*v, 100.0)) r="3.5" fill=(if s.dashed { "#ffffff" } else { color }) stroke=(color) stroke-width="2" {
                                title { (s.name) " " (x_labels.get(i).map(String::as_str).unwrap_or("")) ": " (format!("{v:.1}")) "%" }
                            }
                        }
                    }
                }
            }
            figcaption { (legend(series.iter().map(|s| (s.name.as_str(), PALETTE[s.color % PALETTE.len()], s.dashed)))) }
        }
    }
}

/// The unbroken stretches of a series, as (slot, value).
fn runs(points: &[Option<f64>]) -> Vec<Vec<(usize, f64)>> {
    let mut out = vec![Vec::new()];
    for (i, p) in points.iter().enumerate() {
        match p {
            Some(v) => {
                if let Some(r) = out.last_mut() {
                    r.push((i, *v));
                }
            }
            None if out.last().is_some_and(|r| !r.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out
}

fn polyline(run: &[(usize, f64)], n: usize) -> String {
    run.iter().map(|(i, v)| format!("{:.1},{:.1}", x_of(*i, n), y_of(*v, 100.0))).collect::<Vec<_>>().join(" ")
}

/// Stacked bars of counts over `x_labels`.
pub fn stacked_bars(title: &str, x_labels: &[String], stacks: &[Stack<'_>]) -> Markup {
    let n = x_labels.len().max(1);
    let totals: Vec<u64> = (0..n).map(|i| stacks.iter().map(|s| s.values.get(i).copied().unwrap_or(0)).sum()).collect();
    let max = nice_max(totals.iter().copied().max().unwrap_or(0));
    let slot = (W - LEFT - RIGHT) / n as f64;
    let bar = (slot * 0.7).max(1.0);
    let step = label_step(n);
    html! {
        figure.panel {
            svg.chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(title) {
                title { (title) }
                @for k in 0..=4u64 {
                    @let v = max * k / 4;
                    @let y = y_of(v as f64, max as f64);
                    line.grid x1=(LEFT) x2=(W - RIGHT) y1=(y) y2=(y) {}
                    text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (v) }
                }
                @for i in 0..n {
                    @let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
                    @for (s, v, top, height) in segments(stacks, i, max) {
                        rect x=(format!("{x:.1}")) y=(format!("{top:.1}")) width=(format!("{bar:.1}")) height=(format!("{height:.1}")) fill=(s.color) {
                            title { (s.name) " " (x_labels.get(i).map(String::as_str).unwrap_or("")) ": " (v) }
                        }
                    }
                    @if i % step == 0 || i + 1 == n {
                        text x=(format!("{:.1}", x + bar / 2.0)) y=(H - BOTTOM + 16.0) text-anchor="middle" { (x_labels.get(i).map(String::as_str).unwrap_or("")) }
                    }
                }
            }
            figcaption { (legend(stacks.iter().map(|s| (s.name, s.color, false)))) }
        }
    }
}

/// The non-empty segments of bar `i`, bottom up: layer, count, top and height.
fn segments<'s, 'a>(stacks: &'s [Stack<'a>], i: usize, max: u64) -> Vec<(&'s Stack<'a>, u64, f64, f64)> {
    let mut base = 0;
    let mut out = Vec::new();
    for s in stacks {
        let v = s.values.get(i).copied().unwrap_or(0);
        if v > 0 {
            let top = y_of((base + v) as f64, max as f64);
            out.push((s, v, top, y_of(base as f64, max as f64) - top));
        }
        base += v;
    }
    out
}

/// 1, 2, 5 × 10^k at or above `v` (at least 4, so the grid has integer steps).
fn nice_max(v: u64) -> u64 {
    let mut m = 4;
    loop {
        for f in [1, 2, 5] {
            if m * f >= v && (m * f) % 4 == 0 {
                return m * f;
            }
        }
        m *= 10;
    }
}
