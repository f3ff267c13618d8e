//! Goodput against loss and against reordering in the deterministic simulator, for
//! several send windows, with and without the NAK fast path, and for the default
//! window without the reorder buffer (plain Go-Back-N). Prints a Markdown table,
//! and with `--write-docs` rewrites the results section of docs/transport.md and
//! docs/transport-goodput.svg.
//!
//!     cargo bench -p efe --bench goodput [-- --write-docs]
//!
//! Every run is simulated time, so the numbers do not depend on the machine: the same
//! seeds give the same table anywhere.

use std::fmt::Write as _;
use std::path::Path;

use efe::sim::{LinkConfig, Sim};
use efe::{Config, Session};

/// One column: the same impairment on data and acknowledgements.
#[derive(Clone, Copy)]
struct Impairment {
    loss: f64,
    /// Share of frames held back by `REORDER_US` (netem's `reorder`).
    reorder: f64,
}

const fn loss(loss: f64) -> Impairment {
    Impairment { loss, reorder: 0.0 }
}

const fn reorder(reorder: f64) -> Impairment {
    Impairment { loss: 0.0, reorder }
}

/// The first column is the lossless baseline the others are shares of.
const COLUMNS: [Impairment; 8] = [
    loss(0.0),
    loss(0.0001),
    loss(0.001),
    loss(0.01),
    loss(0.05),
    reorder(0.01),
    reorder(0.05),
    reorder(0.2),
];
/// How long a reordered frame is held back: at 10 Gbit/s about 17 full frames pass it.
const REORDER_US: u64 = 20;
const WINDOWS: [u32; 4] = [16, 64, 128, 256];
const SEEDS: [u64; 3] = [1, 2, 3];
const TLPS: u64 = 60_000;
const PAYLOAD: usize = 256;

fn link(imp: Impairment) -> LinkConfig {
    LinkConfig {
        bandwidth_bps: 10e9,
        delay_us: 5,
        loss: imp.loss,
        reorder: imp.reorder,
        reorder_us: REORDER_US,
        ..LinkConfig::default()
    }
}

/// Goodput in Gbit/s of TLP payload for one run.
fn run(imp: Impairment, cfg: Config, seed: u64) -> f64 {
    let mut sim = Sim::new(seed);
    let f = sim.add_link(link(imp));
    let r = sim.add_link(link(imp));
    let a = sim.add_node(Session::new(cfg, 1).unwrap(), f);
    let b = sim.add_node(Session::new(cfg, 2).unwrap(), r);
    sim.connect(a, b);
    sim.add_flow(a, b, TLPS, PAYLOAD);
    assert!(
        sim.run(60_000_000),
        "{} window {} nak {}: not done",
        label(imp),
        cfg.window,
        cfg.nak
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
    reorder_frames: u32,
    gbps: Vec<f64>,
}

impl Row {
    fn color(&self) -> &'static str {
        const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
        if self.reorder_frames == 0 {
            return "#7f7f7f";
        }
        COLORS[WINDOWS.iter().position(|&w| w == self.window).unwrap_or(0) % COLORS.len()]
    }

    fn dash(&self) -> &'static str {
        match (self.nak, self.reorder_frames) {
            (false, _) => r#" stroke-dasharray="5,4""#,
            (true, 0) => r#" stroke-dasharray="2,3""#,
            (true, _) => "",
        }
    }

    fn label(&self) -> String {
        let mut l = format!(
            "window {}, NAK {}",
            self.window,
            if self.nak { "on" } else { "off" }
        );
        if self.reorder_frames == 0 {
            l.push_str(", no reorder buffer");
        }
        l
    }
}

fn main() {
    let write_docs = std::env::args().any(|a| a == "--write-docs");
    let default = Config::default();
    let mut configs: Vec<(u32, bool, u32)> = WINDOWS
        .iter()
        .flat_map(|&w| {
            [
                (w, true, default.reorder_frames),
                (w, false, default.reorder_frames),
            ]
        })
        .collect();
    configs.push((default.window, true, 0));
    let mut rows = Vec::new();
    for (window, nak, reorder_frames) in configs {
        let cfg = Config {
            window,
            nak,
            reorder_frames,
            retry_limit: 30,
            ..default
        };
        let gbps = COLUMNS
            .iter()
            .map(|&imp| median(SEEDS.iter().map(|&s| run(imp, cfg, s)).collect()))
            .collect();
        rows.push(Row {
            window,
            nak,
            reorder_frames,
            gbps,
        });
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

fn percent(p: f64) -> String {
    if p == 0.0 {
        "0".into()
    } else {
        format!("{}%", p * 100.0)
    }
}

fn label(imp: Impairment) -> String {
    if imp.reorder > 0.0 {
        format!("reorder {}", percent(imp.reorder))
    } else {
        format!("loss {}", percent(imp.loss))
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Goodput of {TLPS} MWr TLPs of {PAYLOAD} B over 10 Gbit/s, 5 us each way, the same \
         impairment on data and acknowledgements: a loss rate, or a share of frames held \
         back {REORDER_US} us (reordered: about 17 full frames overtake each); median of \
         seeds {SEEDS:?}. Gbit/s of TLP payload, and in parentheses the share of the same \
         configuration's lossless goodput. The reorder buffer holds up to the frames shown \
         (0: none, plain Go-Back-N); the default configuration is window {}, NAK on, {} \
         frames.\n",
        Config::default().window,
        Config::default().reorder_frames
    );
    let _ = write!(s, "| window | NAK | reorder buffer |");
    for imp in COLUMNS {
        let _ = write!(s, " {} |", label(imp));
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|---|---|{}", "---|".repeat(COLUMNS.len()));
    for r in rows {
        let _ = write!(
            s,
            "| {} | {} | {} |",
            r.window,
            if r.nak { "on" } else { "off" },
            r.reorder_frames
        );
        for g in &r.gbps {
            let _ = write!(s, " {:.2} ({:.0}%) |", g, 100.0 * g / r.gbps[0]);
        }
        let _ = writeln!(s);
    }
    s
}

/// Two panels of share-of-lossless curves: against loss, and against reordering (both
/// start from the lossless column).
fn svg(rows: &[Row]) -> String {
    let loss_cols: Vec<usize> = (0..COLUMNS.len())
        .filter(|&c| COLUMNS[c].reorder == 0.0)
        .collect();
    let reorder_cols: Vec<usize> = std::iter::once(0)
        .chain((0..COLUMNS.len()).filter(|&c| COLUMNS[c].reorder > 0.0))
        .collect();
    let panels = [
        (&loss_cols, "frame loss rate (each direction)", false),
        (&reorder_cols, "frames reordered (each direction)", true),
    ];
    let (w, h, left, top, pw, gap, bottom) = (1000.0, 400.0, 60.0, 40.0, 280.0, 60.0, 50.0);
    let ph = h - top - bottom;
    let y = |frac: f64| top + ph * (1.0 - frac.clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">EFE goodput vs loss and reordering (share of lossless)</text>"#,
        left + pw + gap / 2.0
    );
    for (p, (cols, axis, reordering)) in panels.iter().enumerate() {
        let x0 = left + p as f64 * (pw + gap);
        let x = |i: usize| x0 + pw * i as f64 / (cols.len() - 1) as f64;
        for k in 0..=5 {
            let frac = k as f64 / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" x2="{}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}%</text>"##,
                x0 + pw,
                x0 - 6.0,
                y(frac) + 4.0,
                (frac * 100.0) as u32,
                yy = y(frac)
            );
        }
        for (i, &c) in cols.iter().enumerate() {
            let v = if *reordering {
                COLUMNS[c].reorder
            } else {
                COLUMNS[c].loss
            };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x(i),
                top + ph + 18.0,
                percent(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{axis}</text>"#,
            x0 + pw / 2.0,
            h - 10.0
        );
        for r in rows {
            let (color, dash) = (r.color(), r.dash());
            let points: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("{:.1},{:.1}", x(i), y(r.gbps[c] / r.gbps[0])))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
        }
    }
    let lx = left + 2.0 * pw + gap + 20.0;
    for (k, r) in rows.iter().enumerate() {
        let (color, dash) = (r.color(), r.dash());
        let ly = top + 16.0 * k as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            r.label()
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}
