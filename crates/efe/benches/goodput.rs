//! Goodput against loss in the deterministic simulator, for several send windows, with
//! and without the NAK fast path. Prints a Markdown table, and with `--write-docs`
//! rewrites the results section of docs/transport.md and docs/transport-goodput.svg.
//!
//!     cargo bench -p efe --bench goodput [-- --write-docs]
//!
//! Every run is simulated time, so the numbers do not depend on the machine: the same
//! seeds give the same table anywhere.

use std::fmt::Write as _;
use std::path::Path;

use efe::sim::{LinkConfig, Sim};
use efe::{Config, Session};

const LOSSES: [f64; 5] = [0.0, 0.0001, 0.001, 0.01, 0.05];
const WINDOWS: [u32; 3] = [16, 64, 256];
const SEEDS: [u64; 3] = [1, 2, 3];
const TLPS: u64 = 60_000;
const PAYLOAD: usize = 256;

fn link(loss: f64) -> LinkConfig {
    LinkConfig {
        bandwidth_bps: 10e9,
        delay_us: 5,
        loss,
        ..LinkConfig::default()
    }
}

/// Goodput in Gbit/s of TLP payload for one run.
fn run(loss: f64, window: u32, nak: bool, seed: u64) -> f64 {
    let cfg = Config {
        window,
        nak,
        retry_limit: 30,
        ..Config::default()
    };
    let mut sim = Sim::new(seed);
    let f = sim.add_link(link(loss));
    let r = sim.add_link(link(loss));
    let a = sim.add_node(Session::new(cfg, 1).unwrap(), f);
    let b = sim.add_node(Session::new(cfg, 2).unwrap(), r);
    sim.connect(a, b);
    sim.add_flow(a, b, TLPS, PAYLOAD);
    assert!(
        sim.run(60_000_000),
        "loss {loss} window {window} nak {nak}: not done"
    );
    let fl = &sim.flows[0];
    assert!(fl.errors.is_empty(), "{:?}", fl.errors);
    fl.bytes_delivered as f64 * 8.0 / sim.now as f64 / 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    window: u32,
    nak: bool,
    gbps: Vec<f64>,
}

fn main() {
    let write_docs = std::env::args().any(|a| a == "--write-docs");
    let mut rows = Vec::new();
    for &window in &WINDOWS {
        for nak in [true, false] {
            let gbps = LOSSES
                .iter()
                .map(|&loss| median(SEEDS.iter().map(|&s| run(loss, window, nak, s)).collect()))
                .collect();
            rows.push(Row { window, nak, gbps });
        }
    }
    let table = table(&rows);
    print!("{table}");
    if write_docs {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let svg = svg(&rows);
        std::fs::write(root.join("docs/transport-goodput.svg"), svg).expect("writing the SVG");
        let doc_path = root.join("docs/transport.md");
        let doc = std::fs::read_to_string(&doc_path).expect("reading docs/transport.md");
        let (begin, end) = ("<!-- goodput:begin -->", "<!-- goodput:end -->");
        let (Some(b), Some(e)) = (doc.find(begin), doc.find(end)) else {
            panic!("docs/transport.md lacks the {begin} / {end} markers")
        };
        let new = format!("{}{begin}\n{table}{}", &doc[..b], &doc[e..]);
        std::fs::write(&doc_path, new).expect("writing docs/transport.md");
        eprintln!("wrote docs/transport.md and docs/transport-goodput.svg");
    }
}

fn loss_label(l: f64) -> String {
    if l == 0.0 {
        "0".into()
    } else {
        format!("{}%", l * 100.0)
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Goodput of {TLPS} MWr TLPs of {PAYLOAD} B over 10 Gbit/s, 5 us each way, the same loss rate on \
         data and acknowledgements; median of seeds {SEEDS:?}. Gbit/s of TLP payload, and in \
         parentheses the share of the same configuration's lossless goodput.\n"
    );
    let _ = write!(s, "| window | NAK |");
    for l in LOSSES {
        let _ = write!(s, " loss {} |", loss_label(l));
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(LOSSES.len()));
    for r in rows {
        let _ = write!(s, "| {} | {} |", r.window, if r.nak { "on" } else { "off" });
        for g in &r.gbps {
            let _ = write!(s, " {:.2} ({:.0}%) |", g, 100.0 * g / r.gbps[0]);
        }
        let _ = writeln!(s);
    }
    s
}

fn svg(rows: &[Row]) -> String {
    let (w, h, left, top, right, bottom) = (640.0, 400.0, 60.0, 30.0, 170.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let x = |i: usize| left + pw * i as f64 / (LOSSES.len() - 1) as f64;
    let y = |frac: f64| top + ph * (1.0 - frac.clamp(0.0, 1.0));
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">EFE goodput vs loss (share of lossless)</text>"#,
        left + pw / 2.0
    );
    for k in 0..=5 {
        let frac = k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}%</text>"##,
            left + pw,
            left - 6.0,
            y(frac) + 4.0,
            (frac * 100.0) as u32,
            yy = y(frac)
        );
    }
    for (i, l) in LOSSES.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(i),
            top + ph + 18.0,
            loss_label(*l)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">frame loss rate (each direction)</text>"#,
        left + pw / 2.0,
        h - 10.0
    );
    for (k, r) in rows.iter().enumerate() {
        let color = colors[WINDOWS.iter().position(|&w| w == r.window).unwrap_or(0) % colors.len()];
        let dash = if r.nak {
            ""
        } else {
            r#" stroke-dasharray="5,4""#
        };
        let points: Vec<String> = r
            .gbps
            .iter()
            .enumerate()
            .map(|(i, g)| format!("{:.1},{:.1}", x(i), y(g / r.gbps[0])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 16.0 * k as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">window {}, NAK {}</text>"#,
            left + pw + 10.0,
            left + pw + 34.0,
            left + pw + 40.0,
            ly + 4.0,
            r.window,
            if r.nak { "on" } else { "off" }
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}
