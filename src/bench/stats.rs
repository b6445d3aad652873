//! The load generator's arithmetic: a Zipf sampler over ranks and exact latency percentiles.

use rand::Rng;

/// Zipf over ranks `0..n` (rank 0 the most frequent): P(k) ∝ 1 / (k + 1)^s.
/// A precomputed cumulative distribution, sampled by binary search.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n` must be at least 1 and `s` finite and at least 0 (0 is uniform).
    pub fn new(n: usize, s: f64) -> Zipf {
        assert!(n > 0, "Zipf needs at least one rank");
        assert!(s.is_finite() && s >= 0.0, "Zipf exponent must be >= 0");
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += (k as f64).powf(-s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        // Rounding must never leave the last bucket short of 1.
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Zipf { cdf }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// A rank in `0..len()`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// Latencies in microseconds, sorted once for exact percentiles.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    sorted: Vec<u64>,
}

impl Latencies {
    pub fn from_unsorted(mut samples: Vec<u64>) -> Latencies {
        samples.sort_unstable();
        Latencies { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Nearest-rank percentile: the smallest sample with at least `p`% of the samples at or
    /// below it. `p` is clamped to 0..=100; `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let p = p.clamp(0.0, 100.0);
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.sorted[rank.clamp(1, n) - 1])
    }

    pub fn max(&self) -> Option<u64> {
        self.sorted.last().copied()
    }

    pub fn mean(&self) -> Option<f64> {
        if self.sorted.is_empty() {
            return None;
        }
        Some(self.sorted.iter().map(|&v| v as f64).sum::<f64>() / self.sorted.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn zipf_samples_are_in_range_and_follow_one_over_k() {
        let n = 1_000;
        let zipf = Zipf::new(n, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 100_000;
        let mut counts = vec![0u64; n];
        for _ in 0..draws {
            let k = zipf.sample(&mut rng);
            assert!(k < n);
            counts[k] += 1;
        }
        // Rank 1 is the most frequent of all.
        let top = counts.iter().copied().max().unwrap();
        assert_eq!(counts[0], top);
        // P(k) = (1/k) / H_n, H_1000 ≈ 7.4855.
        let h: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
        for k in [1usize, 2, 3, 5, 10] {
            let expected = draws as f64 / (k as f64 * h);
            let got = counts[k - 1] as f64;
            assert!(
                (got - expected).abs() < 0.1 * expected,
                "rank {k}: {got} draws, expected about {expected:.0}"
            );
        }
        // Ranks 1 and 2: a ratio of about 2.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "ratio {ratio}");
        // The tail is reached.
        assert!(counts[n / 2..].iter().sum::<u64>() > 0);
    }

    #[test]
    fn zipf_is_reproducible_and_handles_one_rank() {
        let zipf = Zipf::new(100, 1.0);
        let a: Vec<usize> = {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            (0..50).map(|_| zipf.sample(&mut rng)).collect()
        };
        let b: Vec<usize> = {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            (0..50).map(|_| zipf.sample(&mut rng)).collect()
        };
        assert_eq!(a, b);
        let one = Zipf::new(1, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        assert!((0..100).all(|_| one.sample(&mut rng) == 0));
        // s = 0 is uniform: every rank of 4 is drawn about a quarter of the time.
        let uniform = Zipf::new(4, 0.0);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[uniform.sample(&mut rng)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let l = Latencies::from_unsorted((1..=100).rev().collect());
        assert_eq!(l.percentile(50.0), Some(50));
        assert_eq!(l.percentile(95.0), Some(95));
        assert_eq!(l.percentile(99.0), Some(99));
        assert_eq!(l.percentile(100.0), Some(100));
        assert_eq!(l.percentile(0.0), Some(1));
        assert_eq!(l.max(), Some(100));
        assert_eq!(l.mean(), Some(50.5));

        let l = Latencies::from_unsorted(vec![30, 10, 20, 40]);
        assert_eq!(l.percentile(50.0), Some(20));
        assert_eq!(l.percentile(50.1), Some(30));
        assert_eq!(l.percentile(75.0), Some(30));
        assert_eq!(l.percentile(99.0), Some(40));

        let l = Latencies::from_unsorted(vec![7]);
        assert_eq!(l.percentile(1.0), Some(7));
        assert_eq!(l.percentile(99.9), Some(7));

        let empty = Latencies::from_unsorted(Vec::new());
        assert_eq!(empty.percentile(50.0), None);
        assert_eq!(empty.max(), None);
        assert_eq!(empty.mean(), None);
    }
}
