//! [`Metrics`]: request counts, latencies and batch sizes, rendered in the Prometheus
//! text format by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The paths metrics are kept for; any other path counts as `other`.
pub const PATHS: [&str; 6] = ["/project", "/embed", "/search", "/health", "/metrics", "/openapi.json"];

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// A latency histogram: counts per bucket (not cumulative), the sum and the count.
#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Counts {
    /// Responses by (path, status).
    responses: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    /// Calls of the core by path: (batches, requests in them, queries in them).
    batches: BTreeMap<&'static str, (u64, u64, u64)>,
}

/// The server's counters; shared by every request.
#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
    in_flight: AtomicI64,
}

/// The metrics label of a request path: itself if known, else `other`.
pub fn label(path: &str) -> &'static str {
    PATHS.iter().find(|p| **p == path).copied().unwrap_or("other")
}

impl Metrics {
    /// A request has started.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request has ended, answered or not.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request on `path` (a [`label`]) was answered with `status` after `elapsed`.
    pub fn finish(&self, path: &'static str, status: u16, elapsed: Duration) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.responses.entry((path, status)).or_default() += 1;
        let h = c.latency.entry(path).or_default();
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            h.buckets[i] += 1;
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The core ran once for `requests` requests holding `queries` queries on `path`.
    pub fn batch(&self, path: &'static str, requests: usize, queries: usize) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let b = c.batches.entry(path).or_default();
        *b = (b.0 + 1, b.1 + requests as u64, b.2 + queries as u64);
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        header(&mut out, "projroute_requests_in_flight", "gauge", "Requests being answered now.");
        let _ = writeln!(out, "projroute_requests_in_flight {}", self.in_flight.load(Ordering::Relaxed));
        header(&mut out, "projroute_http_responses_total", "counter", "Responses by path and status code.");
        for ((path, status), n) in &c.responses {
            let _ = writeln!(out, "projroute_http_responses_total{{path=\"{path}\",status=\"{status}\"}} {n}");
        }
        let name = "projroute_http_request_duration_seconds";
        header(&mut out, name, "histogram", "Time from the request's arrival to its response, by path.");
        for (path, h) in &c.latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(out, "{name}_bucket{{path=\"{path}\",le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{path=\"{path}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{path=\"{path}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{path=\"{path}\"}} {}", h.count);
        }
        let series = [
            ("projroute_batches_total", "Calls of the core (one per batch), by path."),
            ("projroute_batched_requests_total", "Requests answered by those calls, by path."),
            ("projroute_batched_queries_total", "Queries (rows or texts) in those calls, by path."),
        ];
        for (i, (name, help)) in series.iter().enumerate() {
            header(&mut out, name, "counter", help);
            for (path, b) in &c.batches {
                let n = [b.0, b.1, b.2][i];
                let _ = writeln!(out, "{name}{{path=\"{path}\"}} {n}");
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
