//! The capacity plan as one self-contained HTML page (`lifeboat
//! plan-capacity --html FILE`): the table, the problems, and three SVG
//! charts drawn here (no script, no external file, no web font): churn over
//! time, the RPO a link holds against its bandwidth, and the vault's
//! storage over days.

use std::fmt::Write as _;

use crate::plan::{DiskPlan, Plan};

/// One disk's churn over time: (Unix seconds, changed bytes in the 30 s
/// window) per interval.
#[derive(Debug, Clone)]
pub struct ChurnSeries {
    /// The disk.
    pub name: String,
    /// The points, oldest first.
    pub points: Vec<(i64, f64)>,
}

const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 20.0;
const RIGHT: f64 = 20.0;
const COLOURS: [&str; 6] = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A line chart: each series a polyline, linear axes (x optionally log10),
/// five ticks on each axis labelled by `xl` and `yl`.
#[allow(clippy::too_many_arguments, clippy::cast_precision_loss)]
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    xl: &dyn Fn(f64) -> String,
    yl: &dyn Fn(f64) -> String,
) -> String {
    let tx = |x: f64| if log_x { x.max(1e-12).log10() } else { x };
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().map(|&(x, y)| (tx(x), y))).collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<figure><figcaption>{}</figcaption><svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"##,
        esc(title),
        esc(title)
    );
    if pts.is_empty() {
        let _ =
            write!(svg, r#"<text x="{}" y="{}" text-anchor="middle">no data</text></svg></figure>"#, W / 2.0, H / 2.0);
        return svg;
    }
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1)).max(1e-9) * 1.1;
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let px = |x: f64| LEFT + (tx(x) - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y1 * (H - BOTTOM - TOP);
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="#333"/>"##,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let xv = x0 + f * (x1 - x0);
        let x = if log_x { 10f64.powf(xv) } else { xv };
        let y = f * y1;
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            px(x),
            H - BOTTOM + 16.0,
            esc(&xl(x)),
            LEFT - 6.0,
            py(y) + 4.0,
            esc(&yl(y)),
            py(y),
            W - RIGHT,
            py(y)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text><text x="14" y="{:.1}" text-anchor="middle" font-size="12" transform="rotate(-90 14 {:.1})">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        esc(x_label),
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        esc(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = p.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            path.join(" "),
            esc(name)
        );
        for &(x, y) in p.iter().take(64) {
            let _ = write!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{colour}"/>"#, px(x), py(y));
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{colour}">{}</text>"#,
            LEFT + 8.0 + 110.0 * (i as f64),
            TOP + 4.0,
            esc(name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// At most `n` points: the largest of each of `n` equal runs (so bursts
/// stay visible).
#[allow(clippy::cast_precision_loss)]
fn thin(points: &[(i64, f64)], n: usize) -> Vec<(f64, f64)> {
    points
        .chunks(points.len().div_ceil(n.max(1)).max(1))
        .map(|c| (c[0].0 as f64, c.iter().map(|p| p.1).fold(0.0, f64::max)))
        .collect()
}

fn row(d: &DiskPlan) -> String {
    let mbit = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.1}", b * 8.0 / 1e6));
    let gb = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}", b / 1e9));
    let s = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.0}"));
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&d.name),
        mbit(d.bandwidth_p95),
        mbit(d.bandwidth_p99),
        s(d.achievable_rpo),
        d.cycle_seconds.map_or("-".into(), |c| format!("{:.1}", c[1])),
        s(d.max_rpo_seconds),
        s(d.initial_sync_seconds),
        gb(d.storage_bytes),
        d.cores.map_or("-".into(), |c| format!("{c:.2}")),
        gb(d.copy_memory_bytes)
    )
}

/// The page.
pub fn html(plan: &Plan, churn: &[ChurnSeries]) -> String {
    let t = &plan.targets;
    let mut page = String::from(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Lifeboat capacity plan</title><style>
body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.problem{color:#b00}figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:4px}
</style></head><body><h1>Lifeboat capacity plan</h1>"#,
    );
    let _ = write!(
        page,
        "<p>RPO {:.0} s; link {}; growth headroom {:.0}%; retention: every point of {:.0} s, {} hourly, {} daily.</p>",
        t.rpo,
        t.link.map_or("not given".into(), |l| format!("{:.1} Mbit/s", l * 8.0 / 1e6)),
        t.growth * 100.0,
        t.ladder.recent,
        t.ladder.hourly,
        t.ladder.daily
    );
    page.push_str("<table><tr><th>disk</th><th>bandwidth p95 (Mbit/s)</th><th>p99 (Mbit/s)</th><th>RPO on link (s)</th><th>cycle p95 (s)</th><th>max RPO (s)</th><th>initial sync (s)</th><th>vault (GB)</th><th>cores</th><th>copy memory (GB)</th></tr>");
    for d in plan.disks.iter().chain(std::iter::once(&plan.host)) {
        page.push_str(&row(d));
    }
    page.push_str("</table>");
    let problems: Vec<&String> =
        plan.disks.iter().chain(std::iter::once(&plan.host)).flat_map(|d| &d.problems).collect();
    if problems.is_empty() {
        page.push_str("<p>Every disk can be protected at this target.</p>");
    } else {
        page.push_str("<h2>Cannot be protected at this target</h2><ul>");
        for p in problems {
            let _ = write!(page, r#"<li class="problem">{}</li>"#, esc(p));
        }
        page.push_str("</ul>");
    }
    let notes: Vec<&String> = plan.disks.iter().flat_map(|d| &d.notes).collect();
    for n in notes {
        let _ = write!(page, "<p>Note: {}</p>", esc(n));
    }
    let clock = |t: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ns = (t.max(0.0) as u64).saturating_mul(1_000_000_000);
        disk_format::time::rfc3339(ns, 0).get(5..16).unwrap_or_default().replace('T', " ")
    };
    let mb = |v: f64| format!("{:.0}", v / 1e6);
    let churn_series: Vec<(String, Vec<(f64, f64)>)> =
        churn.iter().map(|c| (c.name.clone(), thin(&c.points, 600))).collect();
    page.push_str(&chart(
        "Churn over time: changed data per 30 s window",
        "time (UTC)",
        "MB",
        &churn_series,
        false,
        &clock,
        &mb,
    ));
    let curve: Vec<(f64, f64)> =
        plan.host_curve.iter().filter_map(|c| Some((c.bandwidth_p95? * 8.0 / 1e6, c.rpo))).collect();
    page.push_str(&chart(
        "RPO achievable against bandwidth (host, p95 windows, with headroom)",
        "link (Mbit/s, log scale)",
        "RPO (s)",
        &[("host".to_string(), curve)],
        true,
        &|x| format!("{x:.2}"),
        &|y| format!("{y:.0}"),
    ));
    #[allow(clippy::cast_precision_loss)]
    let storage: Vec<(String, Vec<(f64, f64)>)> = plan
        .disks
        .iter()
        .chain(std::iter::once(&plan.host))
        .map(|d| (d.name.clone(), d.storage_by_day.iter().enumerate().map(|(i, &b)| ((i + 1) as f64, b)).collect()))
        .collect();
    page.push_str(&chart(
        "Vault storage over days (retention ladder filling)",
        "day",
        "GB",
        &storage,
        false,
        &|x| format!("{x:.0}"),
        &|y| format!("{:.1}", y / 1e9),
    ));
    // Records, once the page is laid out, how many chart lines the browser
    // drew with a size (`data-rendered` on the body): what a headless
    // browser's test reads back.
    page.push_str(
        "<script>addEventListener('load',()=>{const n=[...document.querySelectorAll('svg.chart polyline')]\
         .filter(p=>{const b=p.getBBox();return b.width>0||b.height>0}).length;\
         document.body.setAttribute('data-rendered',String(n));});</script>",
    );
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_survive_thinning_and_names_are_escaped() {
        let points: Vec<(i64, f64)> = (0..1000).map(|i| (i * 30, if i == 517 { 9.0 } else { 1.0 })).collect();
        let t = thin(&points, 100);
        assert_eq!(t.len(), 100);
        assert_eq!(t.iter().filter(|p| p.1 == 9.0).count(), 1, "the burst is kept");
        assert!(thin(&[], 10).is_empty());
        let svg =
            chart("a<b", "x", "y", &[("d&d".into(), vec![(1.0, 2.0), (2.0, 3.0)])], false, &|x| format!("{x}"), &|y| {
                format!("{y}")
            });
        assert!(svg.contains("a&lt;b") && svg.contains("d&amp;d") && svg.contains("<polyline"));
    }
}
