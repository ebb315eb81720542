//! The server's counters, rendered in the Prometheus text exposition format (version
//! 0.0.4). Hand-written: a few atomics and fixed-bucket histograms are all it takes, and
//! every update is lock-free except the per-route maps, which see one short lock per
//! request. `prometheus-client` is the crate to move to when the metric set grows (more
//! labels, OpenMetrics); for these counters it would replace little.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the request latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch size buckets, in images.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A histogram with fixed upper bounds; `+Inf` is implied.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative (the last slot is `+Inf`).
    counts: Vec<AtomicU64>,
    /// The sum of observations, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines; `labels` is `""` or `k="v",`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let sum = f64::from_bits(self.sum_bits.load(Ordering::Relaxed));
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Everything `/metrics` reports.
pub struct Metrics {
    /// `(route, status)` -> answered requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Route -> latency, from the first byte of the request to the response.
    latency: Mutex<BTreeMap<String, Histogram>>,
    in_flight: AtomicI64,
    images: AtomicU64,
    queue_depth: AtomicI64,
    batch_size: Histogram,
    inference_seconds: Histogram,
    /// Pixels of the images decoding now, and the most there ever were at once.
    decode_pixels: AtomicU64,
    decode_pixels_max: AtomicU64,
    decode_budget: AtomicU64,
    connections: AtomicI64,
    max_batch: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            in_flight: AtomicI64::new(0),
            images: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            batch_size: Histogram::new(BATCH_BUCKETS),
            inference_seconds: Histogram::new(LATENCY_BUCKETS),
            decode_pixels: AtomicU64::new(0),
            decode_pixels_max: AtomicU64::new(0),
            decode_budget: AtomicU64::new(0),
            connections: AtomicI64::new(0),
            max_batch: AtomicU64::new(0),
        }
    }
}

/// Escapes a label value as the exposition format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request is over, answered or not (its client may have left).
    pub fn request_left(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// One answered request. `route` must come from a fixed set (the router's patterns),
    /// never from the raw path, so the number of series stays bounded.
    pub fn request_finished(&self, route: &str, status: u16, elapsed: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route.to_string(), status)).or_insert(0) += 1;
        }
        if let Ok(mut latency) = self.latency.lock() {
            latency
                .entry(route.to_string())
                .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
                .observe(elapsed.as_secs_f64());
        }
    }

    /// One backbone run over `images` images.
    pub fn batch_done(&self, images: usize, elapsed: Duration) {
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        self.batch_size.observe(images as f64);
        self.inference_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as i64, Ordering::Relaxed);
    }

    /// An image of `pixels` got decode budget and starts decoding.
    pub fn decode_started(&self, pixels: u64) {
        let now = self.decode_pixels.fetch_add(pixels, Ordering::AcqRel) + pixels;
        self.decode_pixels_max.fetch_max(now, Ordering::AcqRel);
    }

    /// An image's decode has ended and its budget is given back.
    pub fn decode_finished(&self, pixels: u64) {
        self.decode_pixels.fetch_sub(pixels, Ordering::AcqRel);
    }

    pub fn decode_pixels_in_flight(&self) -> u64 {
        self.decode_pixels.load(Ordering::Acquire)
    }

    pub fn decode_pixels_in_flight_max(&self) -> u64 {
        self.decode_pixels_max.load(Ordering::Acquire)
    }

    pub fn set_decode_budget(&self, pixels: u64) {
        self.decode_budget.store(pixels, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set_max_batch(&self, images: usize) {
        self.max_batch.store(images as u64, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP graft_serve_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE graft_serve_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((route, status), n) in requests.iter() {
                let _ = writeln!(
                    out,
                    "graft_serve_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP graft_serve_request_duration_seconds Time from request to response, by route.\n");
        out.push_str("# TYPE graft_serve_request_duration_seconds histogram\n");
        if let Ok(latency) = self.latency.lock() {
            for (route, histogram) in latency.iter() {
                let labels = format!("route=\"{}\",", escape(route));
                histogram.render(&mut out, "graft_serve_request_duration_seconds", &labels);
            }
        }
        out.push_str("# HELP graft_serve_in_flight_requests Requests being answered now, this one included.\n");
        out.push_str("# TYPE graft_serve_in_flight_requests gauge\n");
        let _ = writeln!(
            out,
            "graft_serve_in_flight_requests {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP graft_serve_queue_depth Images admitted and not yet taken by the inference thread.\n");
        out.push_str("# TYPE graft_serve_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "graft_serve_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out.push_str("# HELP graft_serve_images_total Images classified.\n");
        out.push_str("# TYPE graft_serve_images_total counter\n");
        let _ = writeln!(
            out,
            "graft_serve_images_total {}",
            self.images.load(Ordering::Relaxed)
        );
        out.push_str("# HELP graft_serve_batch_size Images per backbone run.\n");
        out.push_str("# TYPE graft_serve_batch_size histogram\n");
        self.batch_size
            .render(&mut out, "graft_serve_batch_size", "");
        out.push_str("# HELP graft_serve_inference_seconds Time of one backbone and head run over a batch.\n");
        out.push_str("# TYPE graft_serve_inference_seconds histogram\n");
        self.inference_seconds
            .render(&mut out, "graft_serve_inference_seconds", "");
        let gauges: [(&str, &str, u64); 5] = [
            (
                "graft_serve_decode_pixels_in_flight",
                "Pixels of the images being decoded now (bounded by the decode budget).",
                self.decode_pixels_in_flight(),
            ),
            (
                "graft_serve_decode_pixels_in_flight_max",
                "The most pixels decoding at once since the server started.",
                self.decode_pixels_in_flight_max(),
            ),
            (
                "graft_serve_decode_budget_pixels",
                "Pixels all requests together may be decoding at once (--decode-budget-mpx).",
                self.decode_budget.load(Ordering::Relaxed),
            ),
            (
                "graft_serve_open_connections",
                "Client connections open now (at most --max-connections).",
                self.connections.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "graft_serve_max_batch",
                "Images per backbone run, at most (--max-batch).",
                self.max_batch.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        m.batch_done(1, Duration::from_millis(20));
        m.batch_done(3, Duration::from_millis(40));
        m.batch_done(100, Duration::from_millis(60));
        let text = m.render();
        assert!(
            text.contains("graft_serve_batch_size_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_batch_size_bucket{le=\"2\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_batch_size_bucket{le=\"4\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_batch_size_bucket{le=\"64\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_batch_size_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("graft_serve_batch_size_sum 104\n"), "{text}");
        assert!(text.contains("graft_serve_batch_size_count 3\n"), "{text}");
        assert!(text.contains("graft_serve_images_total 104\n"), "{text}");
    }

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let m = Metrics::default();
        for status in [200, 200, 503] {
            m.request_started();
            m.request_finished("/v1/classify", status, Duration::from_millis(30));
            m.request_left();
        }
        let text = m.render();
        assert!(
            text.contains("graft_serve_requests_total{route=\"/v1/classify\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_requests_total{route=\"/v1/classify\",status=\"503\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_request_duration_seconds_bucket{route=\"/v1/classify\",le=\"0.05\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_request_duration_seconds_count{route=\"/v1/classify\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_serve_in_flight_requests 0\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
