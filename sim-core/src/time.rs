//! Time base: every timestamp in sim-core is `Seconds` (f64) since the scenario start.
//!
//! Sample `n` of a stream at `fs` Hz sits at `n as f64 / fs`. The same type carries virtual
//! time in sim mode and wall-clock offsets in live mode; sim-core never reads a clock itself.

/// Seconds since the start of the scenario (virtual or wall clock, chosen by the caller).
pub type Seconds = f64;

/// Time of sample `index` in a stream sampled at `sample_rate` Hz.
#[inline]
pub fn sample_time(index: u64, sample_rate: f64) -> Seconds {
    index as f64 / sample_rate
}

/// Index of the first sample at or after `t` in a stream sampled at `sample_rate` Hz.
#[inline]
pub fn first_sample_at_or_after(t: Seconds, sample_rate: f64) -> u64 {
    if t <= 0.0 {
        0
    } else {
        // Guard against 0.1 * 10 = 0.9999…: a sample within 1e-9 of `t` counts as at `t`.
        (t * sample_rate - 1e-9).ceil().max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_index_round_trip() {
        let fs = 12_800.0;
        for n in [0_u64, 1, 127, 12_800, 1_000_000] {
            assert_eq!(first_sample_at_or_after(sample_time(n, fs), fs), n);
        }
        assert_eq!(first_sample_at_or_after(0.1, 10.0), 1);
        assert_eq!(first_sample_at_or_after(-1.0, 10.0), 0);
    }
}
