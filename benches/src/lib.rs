//! Benchmarks of tidings.
//!
//! - the load generator, `tidings-loadgen` (`src/bin/tidings-loadgen/`): drives any tidings
//!   deployment (or a Centrifugo server, for comparison) over its public HTTP and WebSocket API
//!   and reports send-to-receive latency, throughput, loss, duplicates and the server's memory
//!   and CPU
//! - criterion micro-benchmarks of the hot paths (`benches/hot_paths.rs`)
//! - `plot.py`: result files to SVG plots

pub mod server;

use serde_json::{json, Value};

/// Percentile `p` (0..=100) of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// p50/p90/p99/p99.9/max in milliseconds of samples in microseconds (sorted in place).
pub fn latency_summary(samples_us: &mut [u64]) -> Value {
    samples_us.sort_unstable();
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    json!({
        "count": samples_us.len(),
        "p50": ms(percentile(samples_us, 50.0)),
        "p90": ms(percentile(samples_us, 90.0)),
        "p99": ms(percentile(samples_us, 99.0)),
        "p999": ms(percentile(samples_us, 99.9)),
        "max": ms(samples_us.last().copied().unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_series() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 51);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn summary_is_in_milliseconds() {
        let mut v: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let s = latency_summary(&mut v);
        assert_eq!(s["count"], 1000);
        assert_eq!(s["p50"], 501.0);
        assert_eq!(s["max"], 1000.0);
    }
}
