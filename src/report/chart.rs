//! The sweep's chart: quality lost (mean KL divergence to the reference, log scale) against
//! file size, one labelled point per variant, the point's area proportional to generation
//! speed. Written as SVG by hand and rasterized to PNG with resvg.

use anyhow::{Context, Result};
use std::fmt::Write;

/// One variant on the chart.
#[derive(Clone, Debug)]
pub struct Point {
    pub label: String,
    pub size_mib: f64,
    pub bits_per_weight: f64,
    /// Mean KLD; None when unknown (failed variant) and 0 for the reference.
    pub kld: Option<f64>,
    /// Generation tokens per second; None when unknown.
    pub tg_ts: Option<f64>,
    pub is_reference: bool,
}

const W: f64 = 900.0;
const H: f64 = 560.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 70.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round tick step (1, 2 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let m = if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    };
    m * p
}

/// Whether a variant is one of kiln's budget mixes (`kiln sweep --target-bpw`), by its label.
pub fn is_budget(label: &str) -> bool {
    label.starts_with("kiln budget")
}

/// The chart as an SVG document.
pub fn svg(title: &str, points: &[Point]) -> String {
    let known: Vec<&Point> = points.iter().filter(|p| p.kld.is_some()).collect();
    let floor = known
        .iter()
        .filter_map(|p| p.kld)
        .filter(|&k| k > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(1e-3)
        / 3.0;
    let floor = if floor.is_finite() && floor > 0.0 {
        floor
    } else {
        1e-4
    };
    let kmax = known
        .iter()
        .filter_map(|p| p.kld)
        .fold(floor * 10.0, f64::max);
    let (ylo, yhi) = (
        floor.log10().floor(),
        kmax.log10().ceil().max(floor.log10().floor() + 1.0),
    );
    let smax = points
        .iter()
        .map(|p| p.size_mib)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.08;
    let tmax = points.iter().filter_map(|p| p.tg_ts).fold(0.0, f64::max);
    let x = |s: f64| LEFT + (W - LEFT - RIGHT) * (s / smax);
    let y = |k: f64| {
        let l = k.max(floor).log10();
        TOP + (H - TOP - BOTTOM) * (1.0 - (l - ylo) / (yhi - ylo))
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Arial, sans-serif">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="30" font-size="18" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    // Grid and axes.
    let mut e = ylo as i32;
    while e as f64 <= yhi {
        let yy = y(10f64.powi(e));
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">1e{e}</text>"##,
            W - RIGHT,
            LEFT - 8.0,
            yy + 4.0
        );
        e += 1;
    }
    let step = nice_step(smax / 5.0);
    let mut i = 0;
    while step * i as f64 <= smax {
        let s = step * i as f64;
        i += 1;
        let xx = x(s);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{s:.0}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    let _ = writeln!(
        o,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">file size (MiB)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 25.0
    );
    let _ = writeln!(
        o,
        r#"<text x="22" y="{:.1}" font-size="14" text-anchor="middle" transform="rotate(-90 22 {:.1})">mean KL divergence to the reference (log, lower is better)</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">point area: generation speed (tg t/s)</text>"#,
        W - RIGHT,
        TOP - 10.0
    );
    // kiln's budget mixes and llama.cpp's fixed mixes as two curves (each in size order), so
    // that which is better at each size shows at a glance.
    for (budget, color, dash) in [
        (false, "#36c", " stroke-dasharray=\"5 4\""),
        (true, "#d62", ""),
    ] {
        let mut curve: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| !p.is_reference && is_budget(&p.label) == budget)
            .filter_map(|p| Some((x(p.size_mib), y(p.kld.filter(|&k| k > 0.0)?))))
            .collect();
        curve.sort_by(|a, b| a.0.total_cmp(&b.0));
        if curve.len() >= 2 {
            let pts: Vec<String> = curve
                .iter()
                .map(|(a, b)| format!("{a:.1},{b:.1}"))
                .collect();
            let _ = writeln!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>"#,
                pts.join(" ")
            );
        }
    }
    if points.iter().any(|p| is_budget(&p.label)) {
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" font-size="12"><tspan fill="#d62">&#9679; kiln budget mixes (--target-bpw)</tspan>  <tspan fill="#36c">&#9679; fixed mixes</tspan></text>"##,
            LEFT + 10.0,
            TOP - 10.0
        );
    }
    // Points first, then labels, moved apart vertically where they would overlap.
    let mut placed: Vec<(f64, f64, f64, String, &str)> = Vec::new();
    for p in points {
        let Some(k) = p.kld else { continue };
        let (cx, cy) = (x(p.size_mib), y(k));
        let r = match (p.tg_ts, tmax > 0.0) {
            (Some(t), true) => 4.0 + 14.0 * (t / tmax).sqrt(),
            _ => 6.0,
        };
        let color = if p.is_reference {
            "#2a7"
        } else if is_budget(&p.label) {
            "#d62"
        } else {
            "#36c"
        };
        let _ = writeln!(
            o,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r:.1}" fill="{color}" fill-opacity="0.55" stroke="{color}"/>"#
        );
        let speed = p
            .tg_ts
            .map(|t| format!(", tg {t:.1} t/s"))
            .unwrap_or_default();
        let kl = if p.is_reference {
            "reference".to_string()
        } else {
            format!("KLD {k:.4}")
        };
        let text = format!("{} ({:.2} bpw, {kl}{speed})", p.label, p.bits_per_weight);
        placed.push((cx, cy, r, text, color));
    }
    placed.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut last_y = f64::NEG_INFINITY;
    for (cx, cy, r, text, color) in placed {
        let ly = (cy + 4.0).max(last_y + 15.0);
        last_y = ly;
        let width = text.chars().count() as f64 * 6.6;
        let (tx, anchor) = if cx + r + 4.0 + width > W - 4.0 {
            (cx - r - 4.0, "end")
        } else {
            (cx + r + 4.0, "start")
        };
        if (ly - cy - 4.0).abs() > 1.0 {
            let _ = writeln!(
                o,
                r#"<line x1="{cx:.1}" y1="{cy:.1}" x2="{tx:.1}" y2="{:.1}" stroke="{color}" stroke-width="0.8"/>"#,
                ly - 4.0
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{tx:.1}" y="{ly:.1}" font-size="12" text-anchor="{anchor}">{}</text>"#,
            esc(&text)
        );
    }
    let failed: Vec<&str> = points
        .iter()
        .filter(|p| p.kld.is_none())
        .map(|p| p.label.as_str())
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            o,
            r##"<text x="{LEFT}" y="{:.1}" font-size="12" fill="#c33">not measured: {}</text>"##,
            H - 5.0,
            esc(&failed.join(", "))
        );
    }
    o.push_str("</svg>\n");
    o
}

/// Rasterizes an SVG document to PNG bytes (system fonts for the text).
pub fn png(svg: &str) -> Result<Vec<u8>> {
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg, &opt).context("chart SVG does not parse")?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("chart size")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("PNG encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_point_per_measured_variant_and_renders() {
        let pts = vec![
            Point {
                label: "F16".into(),
                size_mib: 100.0,
                bits_per_weight: 16.0,
                kld: Some(0.0),
                tg_ts: Some(10.0),
                is_reference: true,
            },
            Point {
                label: "Q4_K_M".into(),
                size_mib: 30.0,
                bits_per_weight: 4.9,
                kld: Some(0.02),
                tg_ts: Some(30.0),
                is_reference: false,
            },
            Point {
                label: "Q2_K".into(),
                size_mib: 20.0,
                bits_per_weight: 3.1,
                kld: None,
                tg_ts: None,
                is_reference: false,
            },
        ];
        let s = svg("test <model>", &pts);
        assert_eq!(s.matches("<circle").count(), 2);
        assert!(!s.contains("kiln budget mixes"));
        let mut with_budget = pts.clone();
        for (size, kld) in [(22.0, 0.01), (35.0, 0.004)] {
            with_budget.push(Point {
                label: format!("kiln budget {size} bpw"),
                size_mib: size,
                bits_per_weight: 3.0,
                kld: Some(kld),
                tg_ts: None,
                is_reference: false,
            });
        }
        let b = svg("budget", &with_budget);
        assert!(b.contains("kiln budget mixes"));
        assert_eq!(b.matches("<polyline").count(), 1, "the budget curve");
        assert_eq!(b.matches(r##"fill="#d62" fill-opacity"##).count(), 2);
        assert!(s.contains("not measured: Q2_K"));
        assert!(s.contains("test &lt;model&gt;"));
        let p = png(&s).unwrap();
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
    }
}
