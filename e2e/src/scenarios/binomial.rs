//! Exact binomial acceptance intervals, for asserting on random splits (weighted routes,
//! fault percentages) without a fudge factor: with probability `confidence` a correct
//! implementation lands inside.

/// The two-sided interval `[lo, hi]` for `X ~ Binomial(n, p)` at `confidence` (e.g. 0.999):
/// the tightest bounds with `P(X < lo) <= a` and `P(X > hi) <= a`, where `a` is half of
/// `1 - confidence`. Computed exactly from the probability mass function (in log space,
/// so large `n` does not underflow).
pub fn interval(n: u64, p: f64, confidence: f64) -> (u64, u64) {
    if p <= 0.0 {
        return (0, 0);
    }
    if p >= 1.0 {
        return (n, n);
    }
    let tail = (1.0 - confidence) / 2.0;
    // ln pmf(k+1) = ln pmf(k) + ln((n-k)/(k+1)) + ln(p/(1-p))
    let ratio = (p / (1.0 - p)).ln();
    let mut ln_pmf = n as f64 * (1.0 - p).ln();
    let pmf: Vec<f64> = (0..=n)
        .map(|k| {
            let here = ln_pmf.exp();
            if k < n {
                ln_pmf += ((n - k) as f64 / (k + 1) as f64).ln() + ratio;
            }
            here
        })
        .collect();
    let mut below = 0.0;
    let mut lo = 0;
    for (k, m) in pmf.iter().enumerate() {
        if below + m > tail {
            lo = k as u64;
            break;
        }
        below += m;
    }
    let mut above = 0.0;
    let mut hi = n;
    for (k, m) in pmf.iter().enumerate().rev() {
        if above + m > tail {
            hi = k as u64;
            break;
        }
        above += m;
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values computed with exact rational arithmetic (Python's math.comb).
    #[test]
    fn matches_exact_values() {
        assert_eq!(interval(1000, 0.1, 0.999), (70, 132));
        assert_eq!(interval(1000, 0.5, 0.999), (448, 552));
        assert_eq!(interval(100, 0.5, 0.999), (34, 66));
        assert_eq!(interval(10, 0.5, 0.9), (2, 8));
    }

    #[test]
    fn degenerate_probabilities() {
        assert_eq!(interval(50, 0.0, 0.999), (0, 0));
        assert_eq!(interval(50, 1.0, 0.999), (50, 50));
    }

    #[test]
    fn large_n_does_not_underflow() {
        let (lo, hi) = interval(100_000, 0.5, 0.999);
        assert!(lo > 49_000 && hi < 51_000, "{lo}..{hi}");
        assert_eq!(lo + hi, 100_000, "symmetric for p = 0.5");
    }

    proptest::proptest! {
        /// The interval contains the mean and widens with the confidence.
        #[test]
        fn contains_the_mean(n in 1u64..2_000, p in 0.01f64..0.99) {
            let (lo, hi) = interval(n, p, 0.99);
            let mean = n as f64 * p;
            proptest::prop_assert!(lo as f64 <= mean.ceil() && mean.floor() <= hi as f64);
            let (lo2, hi2) = interval(n, p, 0.999);
            proptest::prop_assert!(lo2 <= lo && hi <= hi2);
        }
    }
}
