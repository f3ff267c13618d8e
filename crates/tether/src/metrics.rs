//! A bridge's counters in Prometheus's text exposition format (version 0.0.4), made
//! from the same JSON document `tether ctl stats` prints, so the two never differ:
//!
//! - a number at `a.b.c` of the document is the metric `tether_a_b_c`; a counter
//!   (every number but the [`GAUGES`]) gets the suffix `_total`;
//! - an array of objects (`slots`, `devices`, `sessions`, a device's `queues`) gives
//!   one sample per element, labelled with the element's names ([`LABEL_KEYS`]:
//!   `slot="0",gid="10",peer="02:..."`), under the array's name in the
//!   singular (`tether_session_efe_frames_out_total{gid="10",peer="..."}`); an element
//!   with neither is labelled with its index;
//! - the document's top-level strings (role, MAC, bridge id, front-end) and group are
//!   the labels of `tether_bridge_info`, whose value is 1;
//! - `true`/`false` are gauges of 1 and 0; other strings, nulls and arrays of numbers
//!   are left out.
//!
//! `# HELP` names the field of `ctl stats` a metric comes from (docs/cli.md says
//! what each counts).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// Numbers that are a present value, not a count since the bridge started.
pub const GAUGES: &[&str] = &[
    "srtt_us",
    "min_rtt_us",
    "rate_bytes_per_s",
    "queue_delay_max_us",
    "mtu",
    "ports",
    "in_use",
    "buffered",
    "buffered_peak",
    "completion_timeout_us",
    "generation",
    "size",
];

/// The fields of an array element that name it (strings or numbers): its labels.
/// Other strings (a device's phase, its BAR addresses) are states and values, not
/// names, and are left out: a label that changes would start a new series.
pub const LABEL_KEYS: &[&str] = &[
    "slot",
    "gid",
    "port",
    "id",
    "index",
    "box",
    "peer",
    "role",
    "bridge_id",
    "bdf",
    "vendor",
    "device",
];

/// One metric family: its type, where it comes from, and its samples.
struct Family {
    counter: bool,
    field: String,
    samples: Vec<(String, String)>,
}

#[derive(Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

/// A label value as the format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A name part with what a metric name may not hold replaced by `_`.
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `slots` -> `slot`, `queues` -> `queue`.
fn singular(s: &str) -> &str {
    s.strip_suffix('s').filter(|x| !x.is_empty()).unwrap_or(s)
}

fn labels_text(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", name_part(k), escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    fn sample(
        &mut self,
        name: &str,
        field: &str,
        counter: bool,
        labels: &[(String, String)],
        v: String,
    ) {
        let name = if counter {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        self.families
            .entry(name)
            .or_insert_with(|| Family {
                counter,
                field: field.to_string(),
                samples: Vec::new(),
            })
            .samples
            .push((labels_text(labels), v));
    }

    /// The numbers under `v`, named from `name`, at `field` of the document.
    fn walk(&mut self, name: &str, field: &str, key: &str, v: &Value, labels: &[(String, String)]) {
        match v {
            Value::Number(n) => {
                let counter = !GAUGES.contains(&key) && !n.is_f64() || key.ends_with("_sum_us");
                self.sample(name, field, counter, labels, n.to_string());
            }
            Value::Bool(b) => self.sample(name, field, false, labels, u8::from(*b).to_string()),
            Value::Object(m) => {
                for (k, x) in m {
                    let n = format!("{name}_{}", name_part(k));
                    self.walk(&n, &format!("{field}.{k}"), k, x, labels);
                }
            }
            Value::Array(a) => {
                let element = singular(name).to_string();
                for (i, x) in a.iter().enumerate() {
                    let Value::Object(m) = x else { continue };
                    let mut l = labels.to_vec();
                    for (k, y) in m.iter().filter(|(k, _)| LABEL_KEYS.contains(&k.as_str())) {
                        let value = match y {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => continue,
                        };
                        l.push((k.clone(), value));
                    }
                    if l.len() == labels.len() {
                        l.push((singular(key).to_string(), i.to_string()));
                    }
                    for (k, y) in m {
                        if LABEL_KEYS.contains(&k.as_str())
                            && matches!(y, Value::String(_) | Value::Number(_))
                        {
                            continue;
                        }
                        let n = format!("{element}_{}", name_part(k));
                        self.walk(&n, &format!("{field}[].{k}"), k, y, &l);
                    }
                }
            }
            Value::String(_) | Value::Null => {}
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} tether ctl stats: {}", f.field);
            let kind = if f.counter { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in &f.samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        }
        out
    }
}

/// The exposition text of a `stats` document.
pub fn exposition(stats: &Value) -> String {
    let mut e = Exposition::default();
    let Value::Object(root) = stats else {
        return String::new();
    };
    let mut info = Vec::new();
    for (k, v) in root {
        match v {
            Value::String(s) => info.push((k.clone(), s.clone())),
            Value::Number(n) if k == "gid" => info.push((k.clone(), n.to_string())),
            _ => {}
        }
    }
    e.sample(
        "tether_bridge_info",
        "role, mac, bridge_id, gid",
        false,
        &info,
        "1".into(),
    );
    for (k, v) in root {
        if matches!(v, Value::String(_)) || k == "gid" {
            continue;
        }
        e.walk(&format!("tether_{}", name_part(k)), k, k, v, &[]);
    }
    e.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `text` against the exposition format: every sample line a valid name,
    /// labels and a number; each family's samples together under its TYPE; counters
    /// named `_total`; no family twice. Returns the samples by name and labels.
    pub fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut current = String::new();
        let mut out = BTreeMap::new();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars().enumerate().all(|(i, c)| {
                    c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                })
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(valid_name(name), "{line}");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(
                    types.insert(name.into(), kind.into()).is_none(),
                    "twice: {line}"
                );
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                current = name.into();
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            let name = series.split('{').next().unwrap();
            assert_eq!(name, current, "sample away from its family: {line}");
            assert!(valid_name(name), "{line}");
            if let Some(l) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(l.starts_with('{') && l.ends_with('}'), "{line}");
                for pair in l[1..l.len() - 1].split("\",") {
                    let (k, v) = pair.split_once("=\"").expect(line);
                    assert!(valid_name(k), "{line}");
                    assert!(!v.trim_end_matches('"').contains('\n'), "{line}");
                }
            }
            let v: f64 = value.parse().expect(line);
            assert!(out.insert(series.to_string(), v).is_none(), "twice: {line}");
        }
        out
    }

    #[test]
    fn a_stats_document_becomes_typed_labelled_families() {
        let doc = serde_json::json!({
            "role": "iobox",
            "mac": "02:00:00:00:00:01",
            "gid": 10,
            "port": { "rx_packets": 5, "tx_bytes": 640 },
            "fabric": { "frames_in": 7, "peers_up": 1 },
            "switch": { "ports": 32, "in_use": 1, "stats": { "hot_adds": 2 } },
            "present": true,
            "slots": [
                { "slot": 0, "gid": 10, "vendor": "1de5", "phase": "Ready",
                  "function": { "dma_reads": 3 }, "model": { "buffered": 4096 } },
                { "slot": 1, "gid": 4093, "vendor": "1af4\"x\\",
                  "function": { "dma_reads": 0 }, "model": {} },
            ],
            "sessions": [
                { "gid": 10, "peer": "02:00:00:00:00:02", "devices": [0, 1],
                  "efe": { "frames_out": 9, "srtt_us": 18, "rate_bytes_per_s": 1.5e8 } },
            ],
            "queues": [ { "notifications": 2 }, { "notifications": 5 } ],
            "missing": null,
        });
        let text = exposition(&doc);
        let m = parse(&text);
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
        assert_eq!(
            get(r#"tether_bridge_info{gid="10",mac="02:00:00:00:00:01",role="iobox"}"#),
            1.0
        );
        assert_eq!(get("tether_port_rx_packets_total"), 5.0);
        assert_eq!(get("tether_port_tx_bytes_total"), 640.0);
        assert_eq!(get("tether_fabric_frames_in_total"), 7.0);
        assert_eq!(get("tether_switch_ports"), 32.0);
        assert_eq!(get("tether_switch_in_use"), 1.0);
        assert_eq!(get("tether_switch_stats_hot_adds_total"), 2.0);
        assert_eq!(get("tether_present"), 1.0);
        assert_eq!(
            get(r#"tether_slot_function_dma_reads_total{gid="10",slot="0",vendor="1de5"}"#),
            3.0
        );
        assert_eq!(
            get(r#"tether_slot_function_dma_reads_total{gid="4093",slot="1",vendor="1af4\"x\\"}"#),
            0.0
        );
        assert_eq!(
            get(r#"tether_slot_model_buffered{gid="10",slot="0",vendor="1de5"}"#),
            4096.0
        );
        let s = r#"{gid="10",peer="02:00:00:00:00:02"}"#;
        assert_eq!(get(&format!("tether_session_efe_frames_out_total{s}")), 9.0);
        assert_eq!(get(&format!("tether_session_efe_srtt_us{s}")), 18.0);
        assert_eq!(
            get(&format!("tether_session_efe_rate_bytes_per_s{s}")),
            1.5e8
        );
        assert_eq!(get(r#"tether_queue_notifications_total{queue="1"}"#), 5.0);
        assert!(!text.contains("devices"), "{text}");
        assert!(!text.contains("missing"), "{text}");
        assert!(!text.contains("phase"), "{text}");
        assert!(text.contains("# HELP tether_slot_function_dma_reads_total tether ctl stats: slots[].function.dma_reads"), "{text}");
    }

    #[test]
    fn what_is_not_a_document_gives_nothing() {
        assert_eq!(exposition(&serde_json::json!([1, 2])), "");
        assert_eq!(exposition(&serde_json::json!("x")), "");
    }
}
