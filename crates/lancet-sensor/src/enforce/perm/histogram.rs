//! How long the decider took, as a histogram cheap enough to fill on
//! every permission event.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Exact buckets below this value (ns).
pub(super) const HIST_LINEAR: usize = 16;
/// Sub-buckets per power of two above it.
pub(super) const HIST_SUB: usize = 8;
pub(super) const HIST_BUCKETS: usize = HIST_LINEAR + (64 - 4) * HIST_SUB;

/// Fixed-size log2 histogram (8 sub-buckets per octave) of nanoseconds;
/// lock-free, no allocation.
pub(crate) struct Histogram {
    pub(super) buckets: [AtomicU64; HIST_BUCKETS],
    pub(super) max: AtomicU64,
    /// Sum of every value, for the Prometheus histogram's `_sum`.
    pub(super) sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), max: AtomicU64::new(0), sum: AtomicU64::new(0) }
    }
}

/// The decision-time histogram with power-of-two bounds, for Prometheus:
/// `buckets[i] = (bound, count)` counts the decisions that took at most
/// `bound` ns (cumulative), where each bound is `2^k - 1` ns: the log2
/// histogram's own octave edges, so every count is exact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionHistogram {
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_ns: u64,
}

impl Histogram {
    pub(super) fn index(v: u64) -> usize {
        if v < HIST_LINEAR as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros() as usize; // >= 4
        let sub = ((v >> (msb - 3)) & 7) as usize;
        HIST_LINEAR + (msb - 4) * HIST_SUB + sub
    }

    /// Largest value that lands in bucket `i`.
    pub(super) fn upper(i: usize) -> u64 {
        if i < HIST_LINEAR {
            return i as u64;
        }
        let msb = 4 + (i - HIST_LINEAR) / HIST_SUB;
        let sub = ((i - HIST_LINEAR) % HIST_SUB) as u64;
        let lower = (8 + sub) << (msb - 3);
        lower.saturating_add((1u64 << (msb - 3)) - 1)
    }

    pub(crate) fn record(&self, ns: u64) {
        self.buckets[Self::index(ns)].fetch_add(1, Relaxed);
        self.max.fetch_max(ns, Relaxed);
        self.sum.fetch_add(ns, Relaxed);
    }

    /// Cumulative counts at the octave edges `2^k - 1` ns for k in
    /// `from..=to` (see [`DecisionHistogram`]).
    pub(crate) fn octaves(&self, from: u32, to: u32) -> DecisionHistogram {
        let counts: [u64; HIST_BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        let mut out = DecisionHistogram { count: counts.iter().sum(), sum_ns: self.sum.load(Relaxed), buckets: Vec::new() };
        for k in from..=to.min(63) {
            let bound = (1u64 << k) - 1;
            let cum = counts.iter().enumerate().filter(|(i, _)| Self::upper(*i) <= bound).map(|(_, c)| c).sum();
            out.buckets.push((bound, cum));
        }
        out
    }

    /// The `q` quantile (upper bound of its bucket, at most the max); 0 when
    /// empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let counts: [u64; HIST_BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            if cum >= target {
                return Self::upper(i).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        for v in [0u64, 1, 15, 16, 17, 31, 32, 100, 1000, 12_345, 1 << 40, u64::MAX] {
            let i = Histogram::index(v);
            assert!(i < HIST_BUCKETS, "{v}");
            assert!(Histogram::upper(i) >= v, "{v}: upper {}", Histogram::upper(i));
            if i > 0 {
                assert!(Histogram::upper(i - 1) < v, "{v}: previous upper {}", Histogram::upper(i - 1));
            }
            // Within 12.5 % above 16.
            if v >= 16 {
                assert!((Histogram::upper(i) - v) as f64 <= v as f64 / 8.0, "{v}");
            }
        }
        let h = Histogram::default();
        // Octave edges count exactly: 3 values under 1023 ns, 1 over.
        let o = Histogram::default();
        for v in [5, 1000, 1023, 1024] {
            o.record(v);
        }
        let d = o.octaves(10, 11);
        assert_eq!(d.buckets, vec![(1023, 3), (2047, 4)]);
        assert_eq!((d.count, d.sum_ns), (4, 3052));
        assert_eq!(h.quantile(0.5), 0);
        for _ in 0..98 {
            h.record(10_000);
        }
        h.record(1_000_000);
        h.record(5_000_000);
        let p50 = h.quantile(0.5);
        assert!((10_000..=11_250).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((1_000_000..=1_125_000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 5_000_000);
        assert_eq!(h.max.load(Relaxed), 5_000_000);
    }
}
