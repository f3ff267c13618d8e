//! Line plots as standalone SVG, for the benchmark pages of docs/.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    /// (x, y) points; x > 0 (the x axis is logarithmic).
    pub points: Vec<(f64, f64)>,
}

pub const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// More distinct x values than this are labelled at powers of two.
const MAX_TICKS: usize = 16;

/// A plot with a log2 x axis labelled by `x_label_of` and a linear y axis from 0.
pub fn log_x(
    title: &str,
    x_axis: &str,
    y_axis: &str,
    x_label_of: impl Fn(f64) -> String,
    series: &[Series],
) -> String {
    // The legend's longest names need about 290 px at this font size.
    let (w, h, left, top, right, bottom) = (920.0, 420.0, 70.0, 34.0, 310.0, 52.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let (xmin, xmax) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let ymax = nice_ceiling(ymax.max(1e-9));
    let (l0, l1) = (xmin.max(1e-9).log2(), xmax.max(1e-9).log2());
    let span = (l1 - l0).max(1e-9);
    // A little room either side, so the end labels are not cut.
    let x = |v: f64| left + 12.0 + (pw - 24.0) * (v.max(1e-9).log2() - l0) / span;
    let y = |v: f64| top + ph * (1.0 - (v / ymax).clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    for k in 0..=5 {
        let v = ymax * k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            trim(v),
            yy = y(v)
        );
    }
    // A label at each x the series share (transfer sizes); for many distinct x
    // (a distribution), at each power of two between the ends instead.
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    if ticks.len() > MAX_TICKS {
        ticks = (l0.ceil() as i32..=l1.floor() as i32)
            .map(|e| 2f64.powi(e))
            .collect();
    }
    for t in ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
            top + ph + 18.0,
            escape(&x_label_of(t))
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 12.0,
        escape(x_axis)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_axis)
    );
    for (k, se) in series.iter().enumerate() {
        let dash = if se.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            se.color,
            pts.join(" ")
        );
        let ly = top + 10.0 + 18.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            left + pw + 12.0,
            left + pw + 40.0,
            se.color,
            left + pw + 46.0,
            ly + 4.0,
            escape(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn trim(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The empirical CDF of `samples` as at most `points` (x, fraction) points: the
/// fraction of samples at or below each x, x > 0 (for [`log_x`]).
pub fn cdf(samples: &[f64], points: usize) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 || points == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(points).max(1);
    let mut out: Vec<(f64, f64)> = (step - 1..n)
        .step_by(step)
        .map(|i| (v[i].max(1e-9), (i + 1) as f64 / n as f64))
        .collect();
    if out.last().is_none_or(|p| p.1 < 1.0) {
        out.push((v[n - 1].max(1e-9), 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_has_every_series_and_label() {
        let svg = log_x(
            "t <1>",
            "size",
            "MB/s",
            |v| format!("{v}"),
            &[Series {
                name: "a & b".into(),
                color: COLORS[0],
                dashed: true,
                points: vec![(64.0, 1.0), (1024.0, 30.0)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("a &amp; b"));
        assert!(svg.contains(">64<") && svg.contains(">1024<"));
        assert!(svg.contains("stroke-dasharray"));
        assert_eq!(nice_ceiling(31.0), 50.0);
        assert_eq!(nice_ceiling(224.0), 250.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
    }

    #[test]
    fn a_cdf_rises_to_one_and_labels_powers_of_two() {
        let samples: Vec<f64> = (1..=1000).map(|i| i as f64 / 10.0).collect();
        let c = cdf(&samples, 100);
        assert!(c.len() <= 101, "{}", c.len());
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(c.last().unwrap(), &(100.0, 1.0));
        assert!(
            (c[49].1 - 0.5).abs() < 1e-9 && (c[49].0 - 50.0).abs() < 1e-9,
            "{:?}",
            c[49]
        );
        assert!(cdf(&[], 10).is_empty());
        let svg = log_x(
            "cdf",
            "us",
            "fraction",
            |v| format!("{v}"),
            &[Series {
                name: "x".into(),
                color: COLORS[0],
                dashed: false,
                points: c,
            }],
        );
        // Labels at 1, 2, 4, ... 64 (0.1 to 100 spans them), not at 100 points.
        assert!(
            svg.contains(">64</text>") && svg.contains(">1</text>"),
            "{svg}"
        );
        assert!(!svg.contains(">50</text>"), "{svg}");
    }
}
