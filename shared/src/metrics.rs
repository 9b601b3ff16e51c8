//! A small Prometheus registry: labelled counters kept in atomics, rendered in the text
//! exposition format. Gauges that are read at scrape time (queue depths, outbox length) are
//! appended by the service's `/metrics` handler.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub struct Registry {
    help: RwLock<BTreeMap<&'static str, &'static str>>,
    series: RwLock<BTreeMap<(&'static str, String), Arc<AtomicU64>>>,
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
        if let Some(c) = self.series.read().unwrap().get(&(name, labels.to_owned())) {
            c.fetch_add(by, Ordering::Relaxed);
            return;
        }
        self.series.write().unwrap().entry((name, labels.to_owned())).or_default().fetch_add(by, Ordering::Relaxed);
    }

    pub fn inc(&self, name: &'static str, labels: &str) {
        self.add(name, labels, 1);
    }

    pub fn get(&self, name: &'static str, labels: &str) -> u64 {
        self.series.read().unwrap().get(&(name, labels.to_owned())).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let help = self.help.read().unwrap();
        let series = self.series.read().unwrap();
        for (name, text) in help.iter() {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} counter");
            let mut any = false;
            for ((n, labels), v) in series.iter().filter(|((n, _), _)| n == name) {
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
}
