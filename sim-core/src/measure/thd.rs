//! Total harmonic distortion over a window of whole fundamental cycles: one FFT, harmonic
//! subgroups (IEC 61000-4-7, STANDARDS.md §5.1) and the subgroup THD to the 50th order (§5.2).
//!
//! The window spans exactly `cycles` periods of the signal (it runs from zero crossing to zero
//! crossing), so harmonic h sits at bin `cycles · h` whatever the actual frequency. The samples
//! are not resampled: a window whose length is not a whole number of sample periods leaks a
//! little (well below the 0.01 percentage-point budget at the sample rates meters use).

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Highest harmonic order in the THD sum (IEC 61000-4-30 Ed. 3 Class A, IEEE 519).
pub const THD_MAX_ORDER: usize = 50;

/// Reusable FFT plans and buffers: no allocation once every window length seen has been
/// planned and the buffers have grown to the longest window.
pub struct ThdAnalyzer {
    planner: FftPlanner<f64>,
    /// Plans by window length; a window's length takes only a few values (±1 sample).
    plans: Vec<(usize, Arc<dyn Fft<f64>>)>,
    buf: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

impl std::fmt::Debug for ThdAnalyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThdAnalyzer")
            .field(
                "planned_lengths",
                &self.plans.iter().map(|p| p.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for ThdAnalyzer {
    fn default() -> Self {
        ThdAnalyzer {
            planner: FftPlanner::new(),
            plans: Vec::new(),
            buf: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl ThdAnalyzer {
    pub fn new() -> Self {
        Self::default()
    }

    fn plan(&mut self, len: usize) -> Arc<dyn Fft<f64>> {
        if let Some((_, p)) = self.plans.iter().find(|(l, _)| *l == len) {
            return Arc::clone(p);
        }
        let p = self.planner.plan_fft_forward(len);
        // Bounded: frequency drift can walk the length, keep the most recent few.
        if self.plans.len() >= 8 {
            self.plans.remove(0);
        }
        self.plans.push((len, Arc::clone(&p)));
        p
    }

    /// THD in % of the fundamental subgroup for `samples` spanning exactly `cycles` periods.
    /// `None` when the window is too short to hold the fundamental subgroup or the fundamental
    /// is zero.
    pub fn thd_percent(&mut self, samples: &[f32], cycles: usize) -> Option<f64> {
        let len = samples.len();
        if cycles == 0 || 2 * (cycles + 1) >= len {
            return None;
        }
        let fft = self.plan(len);
        self.buf.clear();
        self.buf
            .extend(samples.iter().map(|&x| Complex::new(f64::from(x), 0.0)));
        let scratch_len = fft.get_inplace_scratch_len();
        if self.scratch.len() < scratch_len {
            self.scratch.resize(scratch_len, Complex::new(0.0, 0.0));
        }
        fft.process_with_scratch(&mut self.buf, &mut self.scratch[..scratch_len]);
        // Only ratios matter, so the |X_k|·√2/L scaling to RMS amplitudes cancels.
        let subgroup = |k: usize| -> f64 {
            self.buf[k - 1].norm_sqr() + self.buf[k].norm_sqr() + self.buf[k + 1].norm_sqr()
        };
        let fundamental = subgroup(cycles);
        if fundamental <= 0.0 || !fundamental.is_finite() {
            return None;
        }
        let mut harmonics = 0.0;
        for h in 2..=THD_MAX_ORDER {
            let k = cycles * h;
            // Skip orders whose subgroup reaches Nyquist (the mirrored half of the spectrum).
            if 2 * (k + 1) >= len {
                break;
            }
            harmonics += subgroup(k);
        }
        Some(100.0 * (harmonics / fundamental).sqrt())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::f64::consts::PI;

    /// `cycles` periods of a unit fundamental plus `harmonics` (order, magnitude, phase).
    fn periodic(
        cycles: usize,
        per_cycle: usize,
        phase: f64,
        harmonics: &[(usize, f64, f64)],
    ) -> Vec<f32> {
        (0..cycles * per_cycle)
            .map(|n| {
                let th = 2.0 * PI * n as f64 / per_cycle as f64;
                let mut x = (th + phase).sin();
                for &(h, m, p) in harmonics {
                    x += m * (h as f64 * th + p).sin();
                }
                (325.0 * x) as f32
            })
            .collect()
    }

    #[test]
    fn five_percent_third_four_percent_fifth_is_6_403() {
        let x = periodic(12, 213, 0.3, &[(3, 0.05, 0.1), (5, 0.04, 2.0)]);
        let thd = ThdAnalyzer::new().thd_percent(&x, 12).unwrap();
        let expected = 100.0 * (0.05_f64.powi(2) + 0.04_f64.powi(2)).sqrt();
        assert!((expected - 6.403).abs() < 5e-4);
        assert!(
            (thd - expected).abs() < 0.01,
            "thd {thd} expected {expected}"
        );
    }

    #[test]
    fn pure_sine_has_no_distortion_and_orders_above_nyquist_are_skipped() {
        let mut a = ThdAnalyzer::new();
        assert!(a.thd_percent(&periodic(10, 256, 1.0, &[]), 10).unwrap() < 1e-4);
        // 32 samples per cycle: orders ≥ 16 are above Nyquist and must not be counted.
        let x = periodic(10, 32, 0.0, &[(3, 0.1, 0.0)]);
        assert!((a.thd_percent(&x, 10).unwrap() - 10.0).abs() < 0.01);
        assert_eq!(a.thd_percent(&x[..20], 10), None);
    }

    proptest! {
        #[test]
        fn thd_matches_definition(
            per_cycle in 128_usize..400,
            fifty_hz in any::<bool>(),
            phase in 0.0..(2.0 * PI),
            harmonics in prop::collection::vec((2_usize..=50, 0.0..0.2_f64, 0.0..(2.0 * PI)), 1..4),
        ) {
            let cycles = if fifty_hz { 10 } else { 12 };
            // One component per order, below Nyquist.
            let mut hs: Vec<(usize, f64, f64)> = Vec::new();
            for &(h, m, p) in &harmonics {
                if 2 * h < per_cycle && !hs.iter().any(|x| x.0 == h) {
                    hs.push((h, m, p));
                }
            }
            let x = periodic(cycles, per_cycle, phase, &hs);
            let expected = 100.0 * hs.iter().map(|h| h.1 * h.1).sum::<f64>().sqrt();
            let thd = ThdAnalyzer::new().thd_percent(&x, cycles).unwrap();
            prop_assert!((thd - expected).abs() < 0.01, "thd {} expected {}", thd, expected);
        }
    }
}
