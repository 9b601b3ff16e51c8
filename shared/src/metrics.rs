//! A small Prometheus registry: labelled counters kept in atomics, rendered in the text
//! exposition format. Gauges that are read at scrape time (queue depths, outbox length) are
//! appended by the service's `/metrics` handler.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Latency buckets, in seconds.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters and histograms are split into shards, each on cache lines of its own, and each
/// thread adds to one shard: the HTTP workers count every request, and adding to one shared
/// atomic would move its cache line between their cores on every request. Readers (a scrape)
/// sum the shards.
const SHARDS: usize = 8;

#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// This thread's shard (threads are given shards in turn as they first count).
fn shard() -> usize {
    thread_local! {
        static SHARD: usize = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
        };
    }
    SHARD.with(|s| *s)
}

/// A monotonic counter, sharded (one shard per thread, summed when read).
#[derive(Default)]
pub struct Counter {
    shards: [Padded<AtomicU64>; SHARDS],
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.shards[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
struct HistogramShard {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// One histogram series, sharded as a [`Counter`] is. Each observation lands in exactly one
/// bucket (the first whose bound holds it, none if it exceeds them all); the cumulative counts
/// Prometheus expects are summed when rendering, so recording costs three atomic additions
/// whatever the value.
#[derive(Default)]
pub struct Histogram {
    shards: [Padded<HistogramShard>; SHARDS],
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let s = &self.shards[shard()].0;
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_micros.fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    fn total(&self, field: impl Fn(&HistogramShard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| field(&s.0).load(Ordering::Relaxed)).sum()
    }
}

/// Gives each registry an identity that is never reused, for the per-thread memo below.
static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(1);

/// Series handles a thread has already looked up, by registry, metric and label key: a hot path
/// (every HTTP request, every proxied call) counts without formatting its labels or touching the
/// registry's locks, which the HTTP workers would otherwise contend for.
struct Memo {
    registry: u64,
    name: &'static str,
    key: (Box<str>, Box<str>, u16),
    counter: Arc<Counter>,
    histogram: Option<Arc<Histogram>>,
}

thread_local! {
    static MEMO: RefCell<Vec<Memo>> = const { RefCell::new(Vec::new()) };
}

/// More distinct label sets than this on one thread go the slow way (label cardinality is
/// bounded by routes, statuses and providers, so this is a guard, not a limit one meets).
const MEMO_CAP: usize = 1024;

pub struct Registry {
    id: u64,
    help: RwLock<BTreeMap<&'static str, &'static str>>,
    // name → labels → value: looked up by `&str`, so counting allocates nothing.
    series: RwLock<BTreeMap<&'static str, BTreeMap<String, Arc<Counter>>>>,
    histogram_help: RwLock<BTreeMap<&'static str, &'static str>>,
    histograms: RwLock<BTreeMap<&'static str, BTreeMap<String, Arc<Histogram>>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            id: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
            help: Default::default(),
            series: Default::default(),
            histogram_help: Default::default(),
            histograms: Default::default(),
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn counter(&self, name: &'static str, labels: &str) -> Arc<Counter> {
        if let Some(c) = self.series.read().unwrap().get(name).and_then(|m| m.get(labels)) {
            return c.clone();
        }
        self.series.write().unwrap().entry(name).or_default().entry(labels.to_owned()).or_default().clone()
    }

    fn histogram(&self, name: &'static str, labels: &str) -> Arc<Histogram> {
        if let Some(h) = self.histograms.read().unwrap().get(name).and_then(|m| m.get(labels)) {
            return h.clone();
        }
        self.histograms.write().unwrap().entry(name).or_default().entry(labels.to_owned()).or_default().clone()
    }

    /// Counts one event into the counter `name` and, if given, one observation into a histogram
    /// with the same labels. The labels are identified by `key` (two strings and a number, e.g.
    /// method and route and status) and formatted by `labels` only the first time this thread
    /// sees the key.
    pub fn count_keyed(
        &self,
        name: &'static str,
        histogram: Option<(&'static str, f64)>,
        key: (&str, &str, u16),
        labels: impl FnOnce() -> String,
    ) {
        let hit = MEMO.with(|m| {
            let memo = m.borrow();
            // The numbers first, then the names (the same literal is one pointer), then the
            // label strings: most entries are told apart without comparing any bytes.
            let found = memo.iter().find(|e| {
                e.registry == self.id
                    && e.key.2 == key.2
                    && e.histogram.is_some() == histogram.is_some()
                    && (std::ptr::eq(e.name, name) || e.name == name)
                    && *e.key.0 == *key.0
                    && *e.key.1 == *key.1
            })?;
            found.counter.add(1);
            if let (Some(h), Some((_, secs))) = (&found.histogram, histogram) {
                h.observe(secs);
            }
            Some(())
        });
        if hit.is_some() {
            return;
        }
        let labels = labels();
        let counter = self.counter(name, &labels);
        counter.add(1);
        let hist = histogram.map(|(hname, secs)| {
            let h = self.histogram(hname, &labels);
            h.observe(secs);
            h
        });
        MEMO.with(|m| {
            let mut memo = m.borrow_mut();
            if memo.len() < MEMO_CAP {
                memo.push(Memo {
                    registry: self.id,
                    name,
                    key: (key.0.into(), key.1.into(), key.2),
                    counter,
                    histogram: hist,
                });
            }
        });
    }

    /// Declares a counter so it is rendered (at zero) before its first increment.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        self.help.write().unwrap().insert(name, help);
    }

    /// Adds `by` to the counter `name{labels}`; `labels` is `key="value",…` or empty.
    pub fn add(&self, name: &'static str, labels: &str, by: u64) {
        self.counter(name, labels).add(by);
    }

    /// Declares a histogram (seconds).
    pub fn describe_histogram(&self, name: &'static str, help: &'static str) {
        self.histogram_help.write().unwrap().insert(name, help);
    }

    /// Records one observation, in seconds, into the histogram `name{labels}`.
    pub fn observe(&self, name: &'static str, labels: &str, seconds: f64) {
        self.histogram(name, labels).observe(seconds);
    }

    pub fn inc(&self, name: &'static str, labels: &str) {
        self.add(name, labels, 1);
    }

    pub fn get(&self, name: &'static str, labels: &str) -> u64 {
        self.series.read().unwrap().get(name).and_then(|m| m.get(labels)).map(|c| c.get()).unwrap_or(0)
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
                let v = v.get();
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
                let mut cumulative = 0;
                for (i, le) in BUCKETS.iter().enumerate() {
                    cumulative += h.total(|s| &s.buckets[i]);
                    let _ = writeln!(out, "{n}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
                }
                let count = h.total(|s| &s.count);
                let _ = writeln!(out, "{n}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
                let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                let _ = writeln!(out, "{n}_sum{braces} {}", h.total(|s| &s.sum_micros) as f64 / 1e6);
                let _ = writeln!(out, "{n}_count{braces} {count}");
            }
        }
        out
    }
}

/// Appends one counter (a total kept elsewhere) in the text format.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
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
        assert!(text.contains("lat_seconds_bucket{route=\"/a\",le=\"0.001\"} 0"), "{text}");
        assert!(text.contains("lat_seconds_bucket{route=\"/a\",le=\"10\"} 2"), "{text}");
    }

    #[test]
    fn keyed_counts_reach_their_own_registry_and_series() {
        let (a, b) = (Registry::new(), Registry::new());
        a.describe("req_total", "Requests.");
        a.describe_histogram("req_seconds", "Latency.");
        b.describe("req_total", "Requests.");
        let labels = |m: &str, r: &str, s: u16| format!("method=\"{m}\",route=\"{r}\",status=\"{s}\"");
        for _ in 0..3 {
            a.count_keyed("req_total", Some(("req_seconds", 0.002)), ("GET", "/x", 200), || labels("GET", "/x", 200));
        }
        a.count_keyed("req_total", Some(("req_seconds", 20.0)), ("GET", "/x", 500), || labels("GET", "/x", 500));
        b.count_keyed("req_total", None, ("GET", "/x", 200), || labels("GET", "/x", 200));
        assert_eq!(a.get("req_total", &labels("GET", "/x", 200)), 3);
        assert_eq!(a.get("req_total", &labels("GET", "/x", 500)), 1);
        assert_eq!(b.get("req_total", &labels("GET", "/x", 200)), 1);
        let text = a.render();
        assert!(text.contains("req_seconds_count{method=\"GET\",route=\"/x\",status=\"200\"} 3"), "{text}");
        // Above every bound: counted, in no finite bucket.
        assert!(text.contains("req_seconds_bucket{method=\"GET\",route=\"/x\",status=\"500\",le=\"10\"} 0"), "{text}");
        assert!(
            text.contains("req_seconds_bucket{method=\"GET\",route=\"/x\",status=\"500\",le=\"+Inf\"} 1"),
            "{text}"
        );
    }
}
