//! A small Prometheus registry: labelled counters kept in atomics, rendered in the text
//! exposition format. Gauges that are read at scrape time (queue depths, outbox length) are
//! appended by the service's `/metrics` handler.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Latency buckets, in seconds.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Default)]
pub struct Registry {
    help: RwLock<BTreeMap<&'static str, &'static str>>,
    // name → labels → value: looked up by `&str`, so counting allocates nothing.
    series: RwLock<BTreeMap<&'static str, BTreeMap<String, Arc<AtomicU64>>>>,
    histogram_help: RwLock<BTreeMap<&'static str, &'static str>>,
    histograms: RwLock<BTreeMap<&'static str, BTreeMap<String, Arc<Histogram>>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a counter so it is rendered (at zero) before its first increment.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        self.help.write().unwrap().insert(name, help);
    }

    /// Adds `by` to the counter `name{labels}`; `labels` is `key="value",…` or empty.
    pub fn add(&self, name: &'static str, labels: &str, by: u64) {
        if let Some(c) = self.series.read().unwrap().get(name).and_then(|m| m.get(labels)) {
            c.fetch_add(by, Ordering::Relaxed);
            return;
        }
        self.series
            .write()
            .unwrap()
            .entry(name)
            .or_default()
            .entry(labels.to_owned())
            .or_default()
            .fetch_add(by, Ordering::Relaxed);
    }

    /// Declares a histogram (seconds).
    pub fn describe_histogram(&self, name: &'static str, help: &'static str) {
        self.histogram_help.write().unwrap().insert(name, help);
    }

    /// Records one observation, in seconds, into the histogram `name{labels}`.
    pub fn observe(&self, name: &'static str, labels: &str, seconds: f64) {
        let h = self.histograms.read().unwrap().get(name).and_then(|m| m.get(labels)).cloned();
        let h = match h {
            Some(h) => h,
            None => {
                self.histograms.write().unwrap().entry(name).or_default().entry(labels.to_owned()).or_default().clone()
            }
        };
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn inc(&self, name: &'static str, labels: &str) {
        self.add(name, labels, 1);
    }

    pub fn get(&self, name: &'static str, labels: &str) -> u64 {
        self.series
            .read()
            .unwrap()
            .get(name)
            .and_then(|m| m.get(labels))
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let help = self.help.read().unwrap();
        let series = self.series.read().unwrap();
        for (name, text) in help.iter() {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} counter");
            let mut any = false;
            for (labels, v) in series.get(name).into_iter().flatten() {
                let n = name;
                any = true;
                let v = v.load(Ordering::Relaxed);
                if labels.is_empty() {
                    let _ = writeln!(out, "{n} {v}");
                } else {
                    let _ = writeln!(out, "{n}{{{labels}}} {v}");
                }
            }
            if !any {
                let _ = writeln!(out, "{name} 0");
            }
        }
        let hhelp = self.histogram_help.read().unwrap();
        let hs = self.histograms.read().unwrap();
        for (name, text) in hhelp.iter() {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} histogram");
            for (labels, h) in hs.get(name).into_iter().flatten() {
                let n = name;
                let sep = if labels.is_empty() { "" } else { "," };
                for (i, le) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{n}_bucket{{{labels}{sep}le=\"{le}\"}} {}",
                        h.buckets[i].load(Ordering::Relaxed)
                    );
                }
                let count = h.count.load(Ordering::Relaxed);
                let _ = writeln!(out, "{n}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
                let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                let _ = writeln!(out, "{n}_sum{braces} {}", h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
                let _ = writeln!(out, "{n}_count{braces} {count}");
            }
        }
        out
    }
}

/// Appends one gauge sample.
pub fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let r = Registry::new();
        r.describe("x_total", "Things.");
        r.describe("y_total", "Other things.");
        r.inc("x_total", "outcome=\"ok\"");
        r.add("x_total", "outcome=\"ok\"", 2);
        let text = r.render();
        assert!(text.contains("# TYPE x_total counter"));
        assert!(text.contains("x_total{outcome=\"ok\"} 3"));
        assert!(text.contains("y_total 0"));
        assert_eq!(r.get("x_total", "outcome=\"ok\""), 3);
    }

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let r = Registry::new();
        r.describe_histogram("lat_seconds", "Latency.");
        r.observe("lat_seconds", "route=\"/a\"", 0.003);
        r.observe("lat_seconds", "route=\"/a\"", 0.2);
        let text = r.render();
        assert!(text.contains("lat_seconds_bucket{route=\"/a\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("lat_seconds_bucket{route=\"/a\",le=\"0.25\"} 2"), "{text}");
        assert!(text.contains("lat_seconds_bucket{route=\"/a\",le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("lat_seconds_count{route=\"/a\"} 2"), "{text}");
    }
}
