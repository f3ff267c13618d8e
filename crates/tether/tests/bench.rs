//! `tether bench` runs end to end (tiny settings: what is checked is that every point
//! is measured and reported, never how fast).

mod common;

use common::*;

fn docs_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("performance.md"),
        "# P\n\nbefore\n<!-- tether bench: begin -->\nold\n<!-- tether bench: end -->\nafter\n",
    )
    .unwrap();
    d
}

fn check_report(out: &str, configs: &[&str], sizes: &[&str]) {
    assert!(out.contains("MMIO read round trip"), "{out}");
    assert!(
        out.contains("Heap allocations over the throughput points"),
        "{out}"
    );
    for c in configs {
        // A row per direction, two in the session table (host, box) and one in the
        // allocations table; poll-mode rows have one more in the ratio table when the
        // socket path ran too.
        let rows = out.matches(&format!("| {c} |")).count();
        assert!((5..=6).contains(&rows), "{c}: {rows} rows\n{out}");
    }
    for z in sizes {
        assert!(out.contains(&format!(" {z} |")), "{z}:\n{out}");
    }
}

#[test]
fn bench_over_memory_ports_writes_tables_and_plots() {
    let d = docs_dir();
    let out = run_ok(
        tether()
            .args([
                "bench",
                "--ports",
                "memory",
                "--sizes",
                "64,4096",
                "--tlp",
                "128",
                "--ms-per-point",
                "20",
                "--mmio-reads",
                "50",
                "--write-docs",
            ])
            .arg(d.path()),
    );
    check_report(
        &out,
        &[
            "memory 128 B TLPs, 1 TLP/frame",
            "memory 128 B TLPs, aggregation",
        ],
        &["64", "4K"],
    );
    let doc = std::fs::read_to_string(d.path().join("performance.md")).unwrap();
    assert!(
        doc.starts_with("# P\n\nbefore\n<!-- tether bench: begin -->\nCommand: `tether bench"),
        "{doc}"
    );
    assert!(
        doc.ends_with("<!-- tether bench: end -->\nafter\n"),
        "{doc}"
    );
    assert!(!doc.contains("old"), "{doc}");
    assert!(doc.contains("![perf-dma-read.svg](perf-dma-read.svg)"));
    for f in ["perf-dma-read.svg", "perf-dma-write.svg"] {
        let svg = std::fs::read_to_string(d.path().join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{f}");
        assert_eq!(svg.matches("<polyline").count(), 2, "{f}");
    }
    // The MMIO latency CDF: one line (memory ports, timed on the first run) that
    // reaches 1, next to the throughput plots.
    assert!(
        doc.contains("![perf-mmio-cdf.svg](perf-mmio-cdf.svg)"),
        "{doc}"
    );
    let cdf = std::fs::read_to_string(d.path().join("perf-mmio-cdf.svg")).unwrap();
    assert_eq!(cdf.matches("<polyline").count(), 1, "{cdf}");
    assert!(
        cdf.contains("fraction of reads") && cdf.contains("round trip (µs)"),
        "{cdf}"
    );
}

#[test]
fn bench_refuses_bad_arguments() {
    for (args, want) in [
        (&["--sizes", "0"][..], "transfer size"),
        (&["--sizes", "2097152"][..], "transfer size"),
        (&["--tlp", "100"][..], "TLP payload sizes"),
        (&["--mmio-reads", "0"][..], "--mmio-reads"),
        (&["--load-pair"][..], "--load-pair needs veth ports"),
    ] {
        let out = tether()
            .args(["bench", "--ports", "memory"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("performance.md"), "no markers\n").unwrap();
    let out = tether()
        .args([
            "bench",
            "--ports",
            "memory",
            "--sizes",
            "64",
            "--tlp",
            "128",
            "--aggregation",
            "true",
        ])
        .args(["--ms-per-point", "5", "--mmio-reads", "5", "--write-docs"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("markers"));
}

#[test]
fn bench_over_veth_compares_poll_mode_with_the_socket_path() {
    if !is_root() {
        return skip(
            "bench_over_veth_compares_poll_mode_with_the_socket_path",
            "needs root for network namespaces",
        );
    }
    let out = run_ok(tether().args([
        "bench",
        "--ports",
        "af-packet,socket",
        "--sizes",
        "4096",
        "--tlp",
        "256",
        "--ms-per-point",
        "50",
        "--mmio-reads",
        "100",
    ]));
    check_report(
        &out,
        &[
            "af_packet 256 B TLPs, 1 TLP/frame",
            "af_packet 256 B TLPs, aggregation",
            "socket 256 B TLPs, 1 TLP/frame",
            "socket 256 B TLPs, aggregation",
        ],
        &["4K"],
    );
    assert!(
        out.contains("Poll mode against the per-packet socket path"),
        "{out}"
    );
    // A ratio row per poll-mode configuration (two throughput rows, two session
    // rows, an allocations row and the ratio row).
    assert_eq!(
        out.matches("| af_packet 256 B TLPs, 1 TLP/frame |").count(),
        6,
        "{out}"
    );
}

#[test]
fn bench_times_mmio_while_a_second_pair_runs_dma() {
    if !is_root() {
        return skip(
            "bench_times_mmio_while_a_second_pair_runs_dma",
            "needs root for network namespaces",
        );
    }
    let out = run_ok(tether().args([
        "bench",
        "--ports",
        "af-packet",
        "--sizes",
        "4096",
        "--tlp",
        "256",
        "--aggregation",
        "true",
        "--ms-per-point",
        "50",
        "--mmio-reads",
        "400",
        "--load-pair",
    ]));
    assert!(
        out.contains("a second box and host pair on the same segment"),
        "{out}"
    );
    assert_eq!(out.matches("| af_packet | idle | ").count(), 1, "{out}");
    // The busy row carries the second pair's DMA rate, which must be a real one.
    let busy = out
        .lines()
        .find(|l| l.starts_with("| af_packet | DMA, "))
        .unwrap_or_else(|| panic!("no busy row:\n{out}"));
    let rate: f64 = busy["| af_packet | DMA, ".len()..]
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{busy}"));
    assert!(rate > 0.0, "{busy}");
    check_report(&out, &["af_packet 256 B TLPs, aggregation"], &["4K"]);
}
