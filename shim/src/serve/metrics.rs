//! `GET /metrics`, in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the acquire-latency histogram's buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Per bucket, then +Inf.
    counts: [AtomicU64; 13],
    sum_us: AtomicU64,
    from_pool: AtomicU64,
    cold: AtomicU64,
}

impl Metrics {
    pub fn acquired(&self, took: Duration, from_pool: bool) {
        let s = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let c = if from_pool {
            &self.from_pool
        } else {
            &self.cold
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The text page: `pools` as (image, ready, target, boot failures), `live` sandboxes.
    pub fn render(&self, pools: &[(String, usize, usize, u64)], live: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP box_pool_ready Warm VMs ready in a pool.\n# TYPE box_pool_ready gauge"
        );
        for (image, ready, _, _) in pools {
            let _ = writeln!(out, "box_pool_ready{{image=\"{}\"}} {ready}", escape(image));
        }
        let _ = writeln!(
            out,
            "# HELP box_pool_target Warm VMs a pool keeps.\n# TYPE box_pool_target gauge"
        );
        for (image, _, target, _) in pools {
            let _ = writeln!(
                out,
                "box_pool_target{{image=\"{}\"}} {target}",
                escape(image)
            );
        }
        let _ = writeln!(out, "# HELP box_boot_failures_total Pooled VMs that failed to boot or their health check.\n# TYPE box_boot_failures_total counter");
        for (image, _, _, f) in pools {
            let _ = writeln!(
                out,
                "box_boot_failures_total{{image=\"{}\"}} {f}",
                escape(image)
            );
        }
        let _ = writeln!(
            out,
            "# HELP box_sandboxes Sandboxes by state.\n# TYPE box_sandboxes gauge"
        );
        let _ = writeln!(out, "box_sandboxes{{state=\"running\"}} {live}");
        let _ = writeln!(out, "# HELP box_acquired_total Sandboxes handed out, by source.\n# TYPE box_acquired_total counter");
        let _ = writeln!(
            out,
            "box_acquired_total{{source=\"pool\"}} {}",
            self.from_pool.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "box_acquired_total{{source=\"cold\"}} {}",
            self.cold.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP box_acquire_seconds Request to a started sandbox.\n# TYPE box_acquire_seconds histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "box_acquire_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "box_acquire_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "box_acquire_seconds_sum {sum}\nbox_acquire_seconds_count {cum}"
        );
        out
    }
}

/// A label value as the text format wants it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative() {
        let m = Metrics::default();
        m.acquired(Duration::from_millis(3), true);
        m.acquired(Duration::from_millis(700), false);
        m.acquired(Duration::from_secs(100), false);
        let page = m.render(&[("a\"b".into(), 1, 2, 0)], 3);
        assert!(
            page.contains("box_acquire_seconds_bucket{le=\"0.005\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("box_acquire_seconds_bucket{le=\"1\"} 2\n"),
            "{page}"
        );
        assert!(
            page.contains("box_acquire_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{page}"
        );
        assert!(
            page.contains("box_pool_ready{image=\"a\\\"b\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("box_acquired_total{source=\"cold\"} 2\n"),
            "{page}"
        );
    }
}
