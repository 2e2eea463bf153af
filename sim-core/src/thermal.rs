//! First-order conductor heating (STANDARDS.md §8): temperature over time, R(T), and the
//! voltage drop the meter sees.
//!
//! τ·dT/dt = I²·R(T)·R_th − (T − T_amb) with R(T) = R20·(1 + α20·(T − 20)). The profile is
//! precomputed on a 1 s grid by exact exponential steps (R frozen at each step's start, which is
//! the "iterate R(T) at each step" form of §8) and linearly interpolated in between.

use crate::disturbance::ThermalDrift;
use crate::time::Seconds;

/// Grid step of the precomputed temperature profile, s.
pub const THERMAL_STEP: Seconds = 1.0;

/// Upper bound on stored points (≈ 11.6 days at 1 s); later times hold the last value, which
/// is the steady state for any realistic τ.
const MAX_POINTS: usize = 1_000_000;

/// Conductor temperature, resistance and voltage drop after the onset of a [`ThermalDrift`].
#[derive(Debug, Clone, PartialEq)]
pub struct ThermalProfile {
    drift: ThermalDrift,
    /// α20 used (the conductor's, unless overridden with [`ThermalProfile::with_alpha`]).
    alpha: f64,
    /// Temperature at k·THERMAL_STEP since onset, °C.
    temps: Vec<f64>,
}

impl ThermalProfile {
    /// Precompute the temperature over `drift.duration` (at least one step).
    pub fn new(drift: &ThermalDrift) -> Self {
        Self::with_alpha(drift, drift.conductor.alpha20())
    }

    /// Same as [`ThermalProfile::new`] with an explicit temperature coefficient α20 (1/K).
    pub fn with_alpha(drift: &ThermalDrift, alpha: f64) -> Self {
        let steps = if drift.duration.is_finite() && drift.duration > 0.0 {
            ((drift.duration / THERMAL_STEP).ceil() as usize).min(MAX_POINTS - 1)
        } else {
            1
        };
        let mut temps = Vec::with_capacity(steps + 1);
        let decay = if drift.tau > 0.0 {
            (-THERMAL_STEP / drift.tau).exp()
        } else {
            0.0
        };
        let heat = drift.current * drift.current * drift.thermal_resistance;
        let mut t = drift.initial;
        temps.push(t);
        for _ in 0..steps {
            let r = drift.r20 * (1.0 + alpha * (t - 20.0));
            let t_inf = drift.ambient + heat * r;
            t = t_inf + (t - t_inf) * decay;
            if !t.is_finite() {
                t = temps.last().copied().unwrap_or(drift.initial);
            }
            temps.push(t);
        }
        ThermalProfile {
            drift: *drift,
            alpha,
            temps,
        }
    }

    pub fn drift(&self) -> &ThermalDrift {
        &self.drift
    }

    /// Conductor temperature `t` seconds after onset, °C (initial before onset).
    pub fn temperature(&self, t: Seconds) -> f64 {
        if t.is_nan() || t <= 0.0 {
            return self.temps[0];
        }
        let x = t / THERMAL_STEP;
        let i = x.floor() as usize;
        if i + 1 >= self.temps.len() {
            return self.temps[self.temps.len() - 1];
        }
        let f = x - i as f64;
        self.temps[i] + (self.temps[i + 1] - self.temps[i]) * f
    }

    /// Loop resistance `t` seconds after onset, Ω.
    pub fn resistance(&self, t: Seconds) -> f64 {
        self.drift.r20 * (1.0 + self.alpha * (self.temperature(t) - 20.0))
    }

    /// Voltage drop along the conductor, I·(R(T)·cos φ + X·sin φ), V RMS.
    pub fn voltage_drop(&self, t: Seconds) -> f64 {
        let pf = self.drift.power_factor.clamp(0.0, 1.0);
        let sin_phi = (1.0 - pf * pf).sqrt();
        self.drift.current * (self.resistance(t) * pf + self.drift.x * sin_phi)
    }
}

/// R(T) = R20·(1 + α20·(T − 20)).
pub fn resistance_at(drift: &ThermalDrift, temperature: f64) -> f64 {
    drift.r20 * (1.0 + drift.conductor.alpha20() * (temperature - 20.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::disturbance::Conductor;

    fn drift() -> ThermalDrift {
        ThermalDrift {
            conductor: Conductor::Copper,
            r20: 0.05,
            x: 0.02,
            current: 100.0,
            power_factor: 0.9,
            ambient: 25.0,
            initial: 25.0,
            thermal_resistance: 0.08,
            tau: 600.0,
            duration: 8.0 * 3600.0,
        }
    }

    #[test]
    fn copper_at_60_degrees_is_15_7_percent_up() {
        let d = drift();
        let f = resistance_at(&d, 60.0) / d.r20;
        assert!((f - 1.1572).abs() < 1e-4, "{f}");
        let f90 = resistance_at(&d, 90.0) / d.r20;
        assert!((f90 - 1.2751).abs() < 1e-4, "{f90}");
    }

    #[test]
    fn steady_state_is_the_fixed_point() {
        let d = drift();
        let p = ThermalProfile::new(&d);
        // T = Ta + I²·R20·(1 + α(T − 20))·Rth, solved for T.
        let k = d.current * d.current * d.r20 * d.thermal_resistance;
        let a = d.conductor.alpha20();
        let t_inf = (d.ambient + k * (1.0 - 20.0 * a)) / (1.0 - k * a);
        let t_end = p.temperature(8.0 * 3600.0);
        assert!((t_end - t_inf).abs() < 1e-6, "{t_end} vs {t_inf}");
        assert!(t_inf > 65.0 && t_inf < 75.0, "{t_inf}");
        // Held beyond the profile.
        assert_eq!(p.temperature(1e9), t_end);
    }

    #[test]
    fn one_time_constant_gives_63_percent_without_feedback() {
        let d = drift();
        let p = ThermalProfile::with_alpha(&d, 0.0);
        let rise = d.current * d.current * d.r20 * d.thermal_resistance;
        let closed = |t: f64| d.ambient + rise * (1.0 - (-t / d.tau).exp());
        let at_tau = p.temperature(d.tau);
        assert!(
            (at_tau - closed(d.tau)).abs() < 1e-9,
            "{at_tau} vs {}",
            closed(d.tau)
        );
        assert!(((at_tau - d.ambient) / rise - 0.632_120_6).abs() < 1e-6);
        // Between grid points the interpolation error is tiny for τ ≫ 1 s.
        assert!((p.temperature(1234.5) - closed(1234.5)).abs() < 1e-3);
        // With α > 0 the conductor runs hotter.
        assert!(ThermalProfile::new(&d).temperature(d.tau) > at_tau);
    }

    #[test]
    fn voltage_drop_uses_r_of_t() {
        let d = drift();
        let p = ThermalProfile::new(&d);
        let sin_phi = (1.0f64 - 0.81).sqrt();
        let at0 = d.current * (d.r20 * (1.0 + 0.00393 * 5.0) * 0.9 + d.x * sin_phi);
        assert!((p.voltage_drop(0.0) - at0).abs() < 1e-12);
        assert!(p.voltage_drop(3600.0) > at0);
        // Linear interpolation between grid points.
        let mid = p.temperature(10.5);
        assert!((mid - 0.5 * (p.temperature(10.0) + p.temperature(11.0))).abs() < 1e-12);
    }
}
